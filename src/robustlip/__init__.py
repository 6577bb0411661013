"""robustlip: accuracy vs. robustness experiments (Yang et al., NeurIPS 2020) on Lightning + Hydra."""

__version__ = "0.1.0"
