"""Callbacks that measure what the paper reports, and the probes they can run on the test set."""

from robustlip.callbacks.probes import EpsSweep, Probe
from robustlip.callbacks.robust_eval import RobustEvaluation, SplitMeter, with_gaps
from robustlip.callbacks.sanity import GradientMaskingChecks, GradientMaskingWarning

__all__ = [
    "EpsSweep",
    "GradientMaskingChecks",
    "GradientMaskingWarning",
    "Probe",
    "RobustEvaluation",
    "SplitMeter",
    "with_gaps",
]
