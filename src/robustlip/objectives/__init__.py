"""Training objectives: each a swappable ``nn.Module`` returning loss, logits and logged parts."""

from robustlip.objectives.base import FIDELITIES, Objective, ObjectiveOutput
from robustlip.objectives.natural import Natural

__all__ = ["FIDELITIES", "Natural", "Objective", "ObjectiveOutput"]
