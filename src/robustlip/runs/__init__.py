"""Run bookkeeping: config composition helpers, one-line errors, checkpoints, results files, loggers and sweeps.

Everything here is about a run's inputs and outputs on disk, not about the science: every file a run
writes goes through :func:`robustlip.core.files.atomic_write`.
"""
