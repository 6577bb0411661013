"""Closed forms of the seed papers' theory: small exact computations, no training loop.

- :mod:`robustlip.theory.staircase` — the spline staircase of Raghunathan et al. (ICML 2020, §3–§5):
  the min-norm standard and augmented estimators, robust self-training, and the paper's error
  decomposition, solved exactly with numpy/scipy (docs/raghunathan.md).
"""
