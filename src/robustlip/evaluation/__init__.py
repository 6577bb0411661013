"""The robust evaluation as a library: any model, any data, no Lightning inside (docs/evaluation.md).

``evaluate(model, data, attacks, ...) -> EvalResult`` measures what the paper's tables report, with
intervals, the attacks' flags and each metric's cost; ``Evaluator`` is the reusable object behind it
(robustlip-train's ``RobustEvaluation`` callback and robustlip-eval both run it). The probes (ε sweep,
gradient-masking checks) plug into it.
"""

from robustlip.evaluation.evaluator import EvaluationStopped, Evaluator, GuardedModel, Session, evaluate
from robustlip.evaluation.gradient_masking import GradientMaskingChecks, GradientMaskingWarning
from robustlip.evaluation.probes import EpsSweep, Probe
from robustlip.evaluation.result import EvalResult

__all__ = [
    "EpsSweep",
    "EvalResult",
    "EvaluationStopped",
    "Evaluator",
    "GradientMaskingChecks",
    "GradientMaskingWarning",
    "GuardedModel",
    "Probe",
    "Session",
    "evaluate",
]
