"""ResNet-50 for Restricted ImageNet: torchvision's network with the authors' dropout (docs/authors-code.md §3).

The authors copied torchvision's ResNet (7×7/2 stem, 3×3/2 max-pool, Bottleneck stages [3, 4, 6, 3],
global average pool, fc 2048 → C, Kaiming fan-out conv init, not pretrained), so we build exactly
torchvision's ``ResNet`` with a ``Bottleneck`` subclass. Their ``ResNet50_drop20/_drop50`` add
``F.dropout(p)`` inside a Bottleneck after conv2 → BN → ReLU and before conv3, and only in the
*non-first* block of each stage (the first is built without a drop rate): 12 of the 16 blocks.
``dropout`` is that p (0 for the paper's Table 3 network).

On the paper's 64×64 inputs the last feature map is 2×2. ``in_channels`` ≠ 3 replaces the stem conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from robustlip.core.errors import check_positive_int, check_probability
from robustlip.models.normalize import Normalize


class DropoutBottleneck(Bottleneck):
    """torchvision's Bottleneck with dropout between conv2's ReLU and conv3 (authors' ``resnet.py:L110``)."""

    drop_rate: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """Normalize → torchvision ResNet-50 (23.5M parameters for 9 classes)."""

    LAYERS = (3, 4, 6, 3)

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        dropout = check_probability("model.dropout", dropout)
        self.normalize = Normalize(mean, std)
        self.net = ResNet(DropoutBottleneck, list(self.LAYERS), num_classes=num_classes)
        if in_channels != 3:
            self.net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
        for stage in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
            for i, block in enumerate(stage):
                block.drop_rate = dropout if i > 0 else 0.0

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))
