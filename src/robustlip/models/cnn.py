"""The paper's two MNIST networks, CNN1 (the authors' CNN001) and CNN2 (CNN002), docs/authors-code.md §3.

Both expect 28×28 inputs (their first linear layer is sized for it) and contain dropout in every
run of the paper (docs/authors-code.md §13 item 12). The ``dropout`` knob therefore defaults to the authors' values:

* CNN1: ``dropout=None`` → channel-wise Dropout2d(0.25) after the pooling and Dropout(0.5) after the
  first linear layer; a number p puts p at both places; a pair ``[p_conv, p_fc]`` sets each;
  ``0`` removes both.
* CNN2: one Dropout after the first linear layer; ``dropout=None`` → 0.5 (the authors' value).

The authors applied ``Dropout2d`` to CNN1's 2-D hidden vector; old PyTorch treated that as ordinary
element-wise dropout, so we use ``nn.Dropout`` there (same behaviour, no warning).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustlip.core.errors import ConfigError, check_positive_int, check_probability
from robustlip.models.normalize import Normalize


def _dropout_pair(value: float | Sequence[float] | None, default: tuple[float, float]) -> tuple[float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        p = check_probability("model.dropout", value)
        return p, p
    values = list(value)
    if len(values) != 2:
        raise ConfigError(f"model.dropout={values!r} is not allowed; give null, one number or [p_conv, p_fc]")
    return check_probability("model.dropout[0]", values[0]), check_probability("model.dropout[1]", values[1])


class CNN1(nn.Module):
    """CNN001 (docs/authors-code.md §3): conv32 → ReLU → conv64 (no ReLU) → max-pool → Dropout2d → fc128 → ReLU → Dropout → fc.

    1,199,882 parameters for 10 classes. Default PyTorch initialisation, as the authors.
    """

    AUTHORS_DROPOUT = (0.25, 0.5)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float | Sequence[float] | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        p_conv, p_fc = _dropout_pair(dropout, self.AUTHORS_DROPOUT)
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            # No ReLU here: the authors' CNN001 differs from the PyTorch MNIST example (docs/authors-code.md §3).
            nn.MaxPool2d(2),
            nn.Dropout2d(p_conv),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(),
            nn.Dropout(p_fc),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))


class CNN2(nn.Module):
    """CNN002, the TRADES small CNN (docs/authors-code.md §3): 4 convs (32, 32, 64, 64), 2 max-pools, fc 200-200-C.

    312,202 parameters for 10 classes. Init as the authors: conv weights Kaiming-normal (fan_in,
    ReLU gain) with zero biases, the last linear layer's weight and bias zero, other linears default.
    """

    AUTHORS_DROPOUT = 0.5

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        dropout: float | None = None,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        p = self.AUTHORS_DROPOUT if dropout is None else check_probability("model.dropout", dropout)
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 200),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(200, 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier[-1].weight)
        nn.init.zeros_(self.classifier[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))
