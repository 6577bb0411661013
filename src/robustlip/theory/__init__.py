"""Closed forms of the seed papers' theory: what a measured number is compared against, no training loop.

- :mod:`robustlip.theory.staircase` — the spline staircase of Raghunathan et al. (ICML 2020, §3–§5):
  the min-norm standard and augmented estimators, robust self-training, and the paper's error
  decomposition, solved exactly with numpy/scipy (docs/raghunathan.md).
- :mod:`robustlip.theory.tsipras` — the toy distribution of Tsipras et al. (ICLR 2019, §2): the
  Bayes-optimal and robust classifiers' standard and robust accuracies (docs/tsipras.md).
"""
