# Makes conf/ importable as `robustlip.conf`, so Hydra finds it via pkg://robustlip.conf in a checkout
# (editable install) and after a plain `pip install .` alike.
