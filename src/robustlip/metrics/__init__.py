"""Measurements of a trained model: accuracies, the local Lipschitz estimate, data separation.

Every evaluation metric follows the small protocol of :mod:`robustlip.metrics.base` (name,
per-example values, reduce), so ``RobustEvaluation`` runs any of them.
"""

from robustlip.metrics.accuracy import AdversarialAccuracy, CleanAccuracy, CorrectFraction
from robustlip.metrics.base import EvalBatch, ExampleMetric, SumState
from robustlip.metrics.lipschitz import LocalLipschitz, lipschitz_ratio

__all__ = [
    "AdversarialAccuracy",
    "CleanAccuracy",
    "CorrectFraction",
    "EvalBatch",
    "ExampleMetric",
    "LocalLipschitz",
    "SumState",
    "lipschitz_ratio",
]
