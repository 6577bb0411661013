"""InputMask: a network that sees only some input pixels (Tsipras et al., ICLR 2019, Sec. 4).

Tsipras et al. train a *standard* classifier on only the features whose correlation with the label
exceeds a threshold and find it about as robust as adversarial training. The mask has to be part of
the network, not of the data: a pixel zeroed in the data would still reach the network at test
time, where the adversary perturbs it. Here every masked pixel is multiplied by 0 before the wrapped
network, so neither training nor any attack can use it, and the mask is a buffer: it travels in the
checkpoint, and robustlip-eval and robustlip-visualize see the same network that was trained.

The mask starts all ones (the wrapped network unchanged); ``callbacks.feature_selection.CorrelationMask``
fills it from the training set before fitting.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlip.core.errors import check_positive_int


class InputMask(nn.Module):
    def __init__(self, net: nn.Module, in_features: int = 784, in_channels: int = 1) -> None:
        super().__init__()
        self.net = net
        self.in_channels = check_positive_int("model.in_channels", in_channels)
        self.register_buffer("mask", torch.ones(check_positive_int("model.in_features", in_features)))

    def set_mask(self, keep: Tensor) -> None:
        """Keep the inputs where ``keep`` is true (one value per input, C·H·W of them)."""
        keep = keep.flatten()
        if keep.numel() != self.mask.numel():
            raise ValueError(f"the mask has {self.mask.numel()} inputs, got {keep.numel()}")
        self.mask.copy_(keep.to(self.mask))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.flatten(1) * self.mask).view_as(x))
