"""The weights of a network that is an affine map: what Tsipras et al. plot for linear classifiers.

A linear classifier in robustlip is a network like any other (``model=linear``: flatten, optional
normalisation and mask, one ``nn.Linear``), so its weights are read *through* the network rather
than from one layer: the logits of the zero image and of every unit image give W and b exactly for any
affine map, whatever wraps it. A random probe then tells an affine network from a non-linear one.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def affine_map(net: nn.Module, input_shape: tuple[int, ...], batch: int = 1024) -> tuple[Tensor, Tensor] | None:
    """(W, b) with net(x) = W·flatten(x) + b (W: classes × inputs), or None when ``net`` is not affine.

    Runs a float64 copy of the network in eval mode (dropout off) on the zero image, the unit images
    and three random images; the random ones must agree with W·x + b to 1e-6 of the logits' size.
    """
    net = copy.deepcopy(net).double().eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    n = math.prod(input_shape)
    zero = torch.zeros(1, *input_shape, device=device, dtype=torch.float64)
    bias = net(zero)[0]
    columns = []
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        units = torch.zeros(stop - start, n, device=device, dtype=torch.float64)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        columns.append(net(units.view(-1, *input_shape)) - bias)
    weights = torch.cat(columns).T.contiguous()  # classes × inputs
    # An input the network ignores (a masked pixel) differs from the zero image only by float64
    # round-off of different batch shapes; read it as exactly 0.
    weights[weights.abs() <= 1e-12 * float(weights.abs().max())] = 0.0
    probe = torch.rand(3, *input_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    predicted = probe.flatten(1) @ weights.T + bias
    scale = 1.0 + float(predicted.abs().max()) + float(bias.abs().max())
    if float((net(probe) - predicted).abs().max()) > 1e-6 * scale:
        return None
    return weights.cpu(), bias.cpu()


def binary_weights(weights: Tensor, bias: Tensor) -> tuple[Tensor, float]:
    """The one score of a two-class affine map: class 1 wins iff (W₁ − W₀)·x + (b₁ − b₀) > 0."""
    if weights.shape[0] != 2:
        raise ValueError(f"a binary score needs 2 classes, the map has {weights.shape[0]}")
    return weights[1] - weights[0], float(bias[1] - bias[0])
