"""Measurements of a trained model: accuracies, the local Lipschitz estimate, data separation."""

from robustlip.metrics.lipschitz import LocalLipschitz, lipschitz_ratio
from robustlip.metrics.robust_accuracy import CorrectFraction, SumMean

__all__ = ["CorrectFraction", "LocalLipschitz", "SumMean", "lipschitz_ratio"]
