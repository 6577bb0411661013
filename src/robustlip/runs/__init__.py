"""Run bookkeeping the commands share: config composition, the run setup (data, attack), checkpoints and
model sources, loggers, sweeps, self-training's pseudo-labels, a run's name in the tables.

Everything here is about a run's inputs and outputs on disk, not about the science; the foundation it
stands on (errors, the atomic writer, the fidelity) is :mod:`robustlip.core`.
"""
