"""Every Lightning callback of robustlip: the robust evaluation (an adapter over robustlip.evaluation),
reproducibility, resumable checkpoints, the training health check, performance switches and the wandb results view."""

from robustlip.callbacks.feature_selection import CorrelationMask
from robustlip.callbacks.performance import PerformanceSwitches
from robustlip.callbacks.reproducibility import ReproducibleRandomness
from robustlip.callbacks.resume import ResumeCheckpoint
from robustlip.callbacks.robust_evaluation import RobustEvaluation
from robustlip.callbacks.training_health import TrainingHealth
from robustlip.callbacks.tsipras import TsiprasTheory
from robustlip.callbacks.wandb_results import WandbResults

__all__ = [
    "CorrelationMask",
    "PerformanceSwitches",
    "ReproducibleRandomness",
    "ResumeCheckpoint",
    "RobustEvaluation",
    "TrainingHealth",
    "TsiprasTheory",
    "WandbResults",
]
