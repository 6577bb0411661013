"""Networks: each takes [0, 1] pixels, normalises inside, and has a ``dropout`` knob."""

from robustlip.models.cnn import CNN1, CNN2
from robustlip.models.digits_cnn import DigitsCNN
from robustlip.models.masked import InputMask
from robustlip.models.mlp import MLP
from robustlip.models.normalize import Normalize
from robustlip.models.paper import ARCHITECTURES, build_paper_model
from robustlip.models.resnet import DropoutBottleneck, ResNet50
from robustlip.models.wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "ARCHITECTURES",
    "CNN1",
    "CNN2",
    "MLP",
    "DigitsCNN",
    "DropoutBottleneck",
    "InputMask",
    "Normalize",
    "ResNet50",
    "WideBasicBlock",
    "WideResNet",
    "build_paper_model",
]
