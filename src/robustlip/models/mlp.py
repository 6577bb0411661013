"""A fully connected network for inputs that are not images: the synthetic sets (tsipras, staircase).

Flatten → [Linear → ReLU → Dropout] × len(hidden) → Linear. ``in_features`` is the data's C·H·W
(``${data.in_features}``), so the same config runs on the 1-value staircase and on 28×28 images.
The authors' code also defines an MLP (unused in the paper, docs/authors-code.md §3); this one is ours.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from robustlip.core.errors import check_positive_int, check_probability
from robustlip.models.normalize import Normalize


class MLP(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        in_features: int = 784,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        check_positive_int("model.in_features", in_features)
        dropout = check_probability("model.dropout", dropout)
        if len(mean) not in (1, in_channels):
            raise ValueError(f"model.mean has {len(mean)} channels but the data has {in_channels}")
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, check_positive_int(f"model.hidden[{i}]", h)), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
