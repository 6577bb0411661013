"""robustlip: accuracy vs. robustness experiments (Yang et al., NeurIPS 2020) on Lightning + Hydra."""

__version__ = "0.1.0"

# Registers the OmegaConf resolvers of conf/ (e.g. ${robustlip.num_classes:...}) for every entry point.
from robustlip.runs import resolvers as _resolvers  # noqa: F401
