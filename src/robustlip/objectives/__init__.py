"""Training objectives: each a swappable ``nn.Module`` returning loss, logits and logged parts.

``objective=NAME`` in the config picks one: natural, gr, llr, at, trades, rst (see docs/objectives.md).
"""

from robustlip.objectives.adversarial import AdversarialTraining
from robustlip.objectives.base import Objective, ObjectiveOutput
from robustlip.objectives.gradient_reg import GradientRegularization
from robustlip.objectives.llr import LocalLinearity
from robustlip.objectives.natural import Natural
from robustlip.objectives.rst import RST
from robustlip.objectives.trades import TRADES

__all__ = [
    "RST",
    "TRADES",
    "AdversarialTraining",
    "GradientRegularization",
    "LocalLinearity",
    "Natural",
    "Objective",
    "ObjectiveOutput",
]
