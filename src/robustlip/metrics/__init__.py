"""Measurements of a trained model: accuracies, the local Lipschitz estimate, data separation."""

from robustlip.metrics.robust_accuracy import CorrectFraction, SumMean

__all__ = ["CorrectFraction", "SumMean"]
