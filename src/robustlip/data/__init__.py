"""DataModules: every one yields images in [0, 1] and carries its paper defaults."""

from robustlip.data.base import DatasetSplits, RobustDataModule
from robustlip.data.digits import DigitsDataModule
from robustlip.data.restricted_imagenet import RestrictedImageNetDataModule
from robustlip.data.synthetic import StaircaseDataModule, TsiprasDataModule
from robustlip.data.vision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "DatasetSplits",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "RestrictedImageNetDataModule",
    "RobustDataModule",
    "SVHNDataModule",
    "StaircaseDataModule",
    "TorchvisionDataModule",
    "TsiprasDataModule",
]
