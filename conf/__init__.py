# Makes conf/ importable as `robustlip.conf`, so Hydra finds it via pkg://robustlip.conf in a checkout
# (editable install) and after a plain `pip install .` alike.
# Importing it (which every composition of this tree does, from the command line or hydra.compose)
# registers the resolvers the configs use, e.g. ${robustlip.mean_loss_lr:...} in the table presets.
from robustlip.runs.resolvers import register_resolvers

register_resolvers()
