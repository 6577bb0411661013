"""The shared base of every DataModule: splits, loaders and the train-evaluation subset.

Every tensor a DataModule yields is an image in [0, 1] (DESIGN.md, "Pixel space"); normalisation
belongs to the network. Subclasses only say how to build the three datasets (``build_datasets``);
this base class derives the deterministic validation split, the DataLoaders and the *un-augmented*
view of the training set that the robust evaluation measures train accuracy on (docs/authors-code.md §9.2).

Each dataset carries its paper defaults as class attributes (ε, number of classes, input shape),
which the config files repeat so that ``data=cifar10`` alone gives the paper's setting. The rest of
the paper's setting for a dataset (architecture, optimizer, lr per method, epochs, schedule; docs/authors-code.md §8)
is not the data's to apply — Hydra merges the data group before the optimizer/trainer groups — so it
travels as the plain ``paper`` mapping of the data config (``${data.paper.*}``), see docs/datasets.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from robustlip.runs.errors import ConfigError, check_non_negative, check_positive_int


@dataclass
class DatasetSplits:
    """What a subclass builds: the training set twice (augmented, and plain for evaluation) and the test set."""

    train: Dataset
    train_eval: Dataset
    test: Dataset


class RobustDataModule(pl.LightningDataModule):
    """Splits a training set into train/val deterministically and serves [0, 1] images."""

    name: str = "dataset"
    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)
    #: Synthetic sets choose their number of classes and shape from the config.
    variable_shape: bool = False

    def __init__(
        self,
        data_dir: str | Path = "data",
        name: str | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        in_features: int | None = None,
        eps: float = 0.1,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        val_size: float = 0.1,
        train_eval_size: int | None = None,
        test_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        paper: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # name/num_classes/in_channels are in the config so other groups can interpolate them
        # (${data.num_classes}); a fixed dataset must agree with its own.
        self.name = name or self.name
        for key, given, own in (("num_classes", num_classes, self.num_classes), ("in_channels", in_channels, self.input_shape[0])):
            if given is not None and given != own and not self.variable_shape:
                raise ConfigError(f"data.{key}={given!r} is not allowed for data={self.name}; it has {own}")
        if num_classes is not None:
            self.num_classes = check_positive_int("data.num_classes", num_classes)
        # in_features (C·H·W) lets an MLP interpolate ${data.in_features}; it must agree with the shape.
        if in_features is not None and in_features != self.in_features and not self.variable_shape:
            raise ConfigError(f"data.in_features={in_features!r} is not allowed for data={self.name}; it has {self.in_features}")
        # ``paper`` (the paper's setting for this dataset: network, lr per method, epochs) is read by the
        # presets and model=paper through ${data.paper.*} interpolation; the DataModule itself needs none of it.
        del paper
        self.data_dir = Path(data_dir).expanduser()
        self.eps = check_non_negative("data.eps", eps)
        self.batch_size = check_positive_int("data.batch_size", batch_size)
        self.eval_batch_size = check_positive_int("data.eval_batch_size", eval_batch_size)
        if not (isinstance(val_size, int) and val_size >= 0) and not (isinstance(val_size, float) and 0 <= val_size < 1):
            raise ConfigError(f"data.val_size={val_size!r} is not allowed; use a count >= 0 or a fraction in [0, 1)")
        self.val_size = val_size
        self.train_eval_size = None if train_eval_size is None else check_positive_int(
            "data.train_eval_size", train_eval_size
        )
        self.test_size = None if test_size is None else check_positive_int("data.test_size", test_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.seed = int(seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None

    @property
    def in_features(self) -> int:
        """Number of input values per example (C·H·W): the width of an MLP's first layer."""
        return math.prod(self.input_shape)

    # -- what a subclass provides -------------------------------------------------------------
    def build_datasets(self) -> DatasetSplits:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = self.build_datasets()
        n = len(splits.train)
        n_val = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n:
            raise ConfigError(f"data.val_size={self.val_size!r} leaves no training data ({n} examples in total)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        self.train_set = Subset(splits.train, train_idx)
        # Validation images come from the un-augmented view: val metrics should not be noisy.
        self.val_set = Subset(splits.train_eval, val_idx)
        self.train_eval_set = self._first(Subset(splits.train_eval, train_idx), self.train_eval_size, self.seed + 1,
                                          "data.train_eval_size", "training set (after the validation split)")
        self.test_set = self._first(splits.test, self.test_size, self.seed + 2, "data.test_size", "test set")

    @staticmethod
    def _first(dataset: Dataset, size: int | None, seed: int, key: str = "size", what: str = "set") -> Dataset:
        """A fixed, seeded subset of ``size`` examples (the whole set when ``size`` is None).

        A size larger than the set is refused rather than silently cut: a table would otherwise report
        numbers over fewer examples than the user asked for.
        """
        if size is not None and size > len(dataset):
            raise ConfigError(
                f"{key}={size} is larger than the {what}, which has {len(dataset)} examples; choose at most "
                f"{len(dataset)}, or null for all of them"
            )
        if size is None or size == len(dataset):
            return dataset
        pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
        return Subset(dataset, sorted(pick.tolist()))

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def train_eval_dataloader(self) -> DataLoader:
        """The training set without augmentation, in a fixed order: what train/acc is measured on."""
        return self._loader(self.train_eval_set, self.eval_batch_size, shuffle=False)
