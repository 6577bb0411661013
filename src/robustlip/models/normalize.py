"""Per-channel normalisation as the network's first layer.

Data stays in [0, 1] pixel space (docs/architecture.md, "Pixel space"): every ε, attack and Lipschitz estimate is in pixel
units, and the network standardises its own input. The authors' networks used no normalisation at
all (docs/authors-code.md §2); ``mean=0, std=1`` reproduces that exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants stored as buffers (they move with the module)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"model.mean has {len(mean)} channels but model.std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"model.std={list(std)} is not allowed; every entry must be > 0")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
