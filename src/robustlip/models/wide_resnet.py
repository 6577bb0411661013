"""WideResNet as the authors use it for CIFAR-10 and SVHN (the TRADES/Zagoruyko code, docs/authors-code.md §3).

Depth D and widen factor k give n = (D − 4)/6 pre-activation blocks per stage, channels
[16, 16k, 32k, 64k], stage strides 1, 2, 2. Block: BN → ReLU → conv3×3(stride) → BN → ReLU →
dropout(p) → conv3×3, plus an identity shortcut, or — when the channel count changes — a 1×1
strided conv applied to the *activated* input (the BN-ReLU output then also replaces x). Head:
BN → ReLU → global average pool → linear 64k → C.

Init as the authors: conv weights N(0, √(2 / (k_h·k_w·out_channels))), BN weight 1 / bias 0, linear
bias 0 (linear weight left at PyTorch's default).

Deliberate differences from the authors' file, none of which changes the function computed:
* their ``sub_block1`` (a second first stage built in ``__init__`` but never called in ``forward``)
  is dropped, so the parameter count is that of the network that actually runs;
* the final ``avg_pool2d(8)`` (which assumes 32×32 inputs) is a global average pool — identical on
  32×32, and it lets the net run at other sizes;
* the stem takes ``in_channels`` (the authors hard-code 3).

``dropout`` is the authors' ``dropRate`` in every block: 0 for ``WRN_40_10``, 0.2 for
``WRN_40_10_drop20`` (CIFAR-10, Table 4) and 0.5 for ``WRN_40_10_drop50`` (SVHN, Table 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.core.errors import ConfigError, check_positive_int, check_probability
from robustlip.models.normalize import Normalize


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    """WRN-D-k (default WRN-40-10: 55.8M parameters for 10 classes)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        depth: int = 40,
        widen_factor: int = 10,
        dropout: float = 0.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        check_positive_int("model.num_classes", num_classes)
        check_positive_int("model.widen_factor", widen_factor)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"model.depth={depth!r} is not allowed; WideResNet needs depth = 6n + 4 with n >= 1")
        dropout = check_probability("model.dropout", dropout)
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = self._stage(n, channels[0], channels[1], 1, dropout)
        self.block2 = self._stage(n, channels[1], channels[2], 2, dropout)
        self.block3 = self._stage(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    @staticmethod
    def _stage(n: int, in_planes: int, out_planes: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
            for i in range(n)
        ])

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
