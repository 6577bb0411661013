"""The spellings a config may use for each norm, known without torch (robustlip-train's checks before torch loads)."""

from __future__ import annotations

import math
from typing import Any

#: The spellings a config may use for each norm, by canonical name.
NORM_SPELLINGS: dict[str, tuple] = {
    "inf": ("inf", "linf", "Linf", math.inf),
    "2": (2, "2", "l2", "L2"),
    "1": (1, "1", "l1", "L1"),
}


def is_linf(norm: Any) -> bool:
    """Whether ``norm`` spells the ℓ∞ norm."""
    return norm in NORM_SPELLINGS["inf"]
