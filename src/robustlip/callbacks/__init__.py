"""Callbacks that measure what the paper reports."""

from robustlip.callbacks.robust_eval import RobustEvaluation, with_gaps

__all__ = ["RobustEvaluation", "with_gaps"]
