"""``model=paper``: the architecture the paper uses for the chosen dataset (docs/authors-code.md §8).

Each data config names its paper network in ``data.paper.model`` (cnn1 for MNIST, wrn_40_10 for
CIFAR-10/SVHN, resnet50 for Restricted ImageNet, ...). Hydra cannot let the data group select an
option of the model group (the data group is merged first; see docs/datasets.md), so this builder
reads the name instead: ``robustlip-train data=cifar10 model=paper`` trains WRN-40-10.
Normalisation defaults to mean 0 / std 1 per input channel: the authors' raw [0, 1] pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from robustlip.core.errors import check_choice
from robustlip.models.cnn import CNN1, CNN2
from robustlip.models.digits_cnn import DigitsCNN
from robustlip.models.mlp import MLP
from robustlip.models.resnet import ResNet50
from robustlip.models.wide_resnet import WideResNet

#: Architecture name (as in conf/model/<name>.yaml) -> constructor with the paper's settings.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "cnn1": CNN1,
    "cnn2": CNN2,
    "wrn_40_10": lambda **kw: WideResNet(depth=40, widen_factor=10, **kw),
    "resnet50": ResNet50,
    "digits_cnn": DigitsCNN,
    "mlp": MLP,
}


def build_paper_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    in_features: int | None = None,
    dropout: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build ``arch`` for the data's classes/channels; ``dropout=None`` keeps the architecture's default."""
    check_choice("data.paper.model", arch, ARCHITECTURES)
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "mean": list(mean) if mean is not None else [0.0] * in_channels,
        "std": list(std) if std is not None else [1.0] * in_channels,
    }
    if dropout is not None:
        kwargs["dropout"] = dropout
    if arch == "mlp" and in_features is not None:
        kwargs["in_features"] = in_features
    return ARCHITECTURES[arch](**kwargs)
