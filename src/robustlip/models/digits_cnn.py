"""A small CNN for scikit-learn's 8×8 digits, the quickstart's network.

Two 3×3 convolutions (padded, so 8×8 stays 8×8), one max-pool to 4×4 and a two-layer head; dropout
sits where the paper's CNN1 puts it (after the pooling and after the first linear layer, docs/authors-code.md §3).
About 140k parameters: it trains in seconds on a CPU and still has enough capacity to show the gap
between natural and adversarial training.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustlip.core.errors import check_positive_int, check_probability
from robustlip.models.normalize import Normalize


class DigitsCNN(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        dropout: float = 0.0,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        check_positive_int("model.width", width)
        dropout = check_probability("model.dropout", dropout)
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # Identity on 8×8 digits; lets the same net run on 28×28 images for quick presets.
            nn.AdaptiveAvgPool2d(4),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
