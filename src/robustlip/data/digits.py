"""scikit-learn's handwritten digits: real data that ships with scikit-learn, the embedded default.

1,797 grey-scale 8×8 images with integer intensities 0..16, scaled to [0, 1]. A fixed stratified
split (seeded, 25% test) stands in for an official test set; the validation split is carved out of
the training part by the base class.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from robustlip.data.base import DatasetSplits, RobustDataModule


class DigitsDataModule(RobustDataModule):
    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, *args, test_fraction: float = 0.25, split_seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)

    def build_datasets(self) -> DatasetSplits:
        digits = load_digits()
        images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
        labels = digits.target.astype(np.int64)
        x_tr, x_te, y_tr, y_te = train_test_split(
            images, labels, test_size=self.test_fraction, stratify=labels, random_state=self.split_seed
        )
        train = TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
        test = TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te))
        return DatasetSplits(train=train, train_eval=train, test=test)
