"""Adversaries in pixel space: threat models, PGD, FGSM, the Multi-Targeted attack and AutoAttack.

Also the inner maximisations of TRADES and LLR, written on the same PGD loop.
"""

from robustlip.attacks.autoattack import AutoAttack
from robustlip.attacks.base import Attack, attack_context, input_gradient, model_mode
from robustlip.attacks.divergence import KLDivergencePGD, prediction_divergence
from robustlip.attacks.local_linearity import LocalLinearityPGD, directional_derivative, linearity_gap
from robustlip.attacks.multi_targeted import MultiTargeted
from robustlip.attacks.pgd import FGSM, PGD, default_step_size
from robustlip.attacks.threat import (
    L2Threat,
    LinfRenormThreat,
    LinfThreat,
    ThreatModel,
    canonical_norm,
    make_threat,
)

__all__ = [
    "FGSM",
    "PGD",
    "Attack",
    "AutoAttack",
    "KLDivergencePGD",
    "L2Threat",
    "LinfRenormThreat",
    "LinfThreat",
    "LocalLinearityPGD",
    "MultiTargeted",
    "ThreatModel",
    "attack_context",
    "canonical_norm",
    "default_step_size",
    "directional_derivative",
    "input_gradient",
    "linearity_gap",
    "make_threat",
    "model_mode",
    "prediction_divergence",
]
