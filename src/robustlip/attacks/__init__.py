"""Adversaries in pixel space: threat models, PGD, FGSM and the Multi-Targeted attack."""

from robustlip.attacks.base import Attack, attack_context, input_gradient, model_mode
from robustlip.attacks.pgd import FGSM, PGD
from robustlip.attacks.threat import L2Threat, LinfThreat, ThreatModel, make_threat

__all__ = [
    "Attack",
    "FGSM",
    "L2Threat",
    "LinfThreat",
    "PGD",
    "ThreatModel",
    "attack_context",
    "input_gradient",
    "make_threat",
    "model_mode",
]
