"""The shared base of every DataModule: splits, loaders and the train-evaluation subset.

Every tensor a DataModule yields is an image in [0, 1] (docs/architecture.md, "Pixel space"); normalisation
belongs to the network. Subclasses only say how to build the three datasets (``build_datasets``);
this base class derives the deterministic validation split, the DataLoaders and the *un-augmented*
view of the training set that the robust evaluation measures train accuracy on (docs/authors-code.md §9.2).

Two knobs shape the data of any dataset (docs/datasets.md, "Class subsets and training-set size"):
``classes`` keeps only the listed labels, relabelled 0..k-1 in the given order (a binary task such as
Tsipras et al.'s weight-distribution figure on two Fashion-MNIST classes), and ``train_size`` keeps a
seeded, stratified subset of the training split (the low-data regime of Tsipras et al., Sec. 2),
drawn after the validation split so that val and test stay the same for every size. With
``train_size``, ``unlabeled`` makes the rest of the training split an unlabeled pool (all of it, or a
seeded random subset of a given size) for robust self-training (data/unlabeled.py, docs/raghunathan.md).

Each dataset carries its paper defaults as class attributes (ε, number of classes, input shape),
which the config files repeat so that ``data=cifar10`` alone gives the paper's setting. The rest of
the paper's setting for a dataset (architecture, optimizer, lr per method, epochs, schedule; docs/authors-code.md §8)
is not the data's to apply — Hydra merges the data group before the optimizer/trainer groups — so it
travels as the plain ``paper`` mapping of the data config (``${data.paper.*}``), see docs/datasets.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from robustlip.core.errors import ConfigError, check_non_negative, check_positive_int

log = logging.getLogger(__name__)


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
        train_size: float | None = None,
        classes: Sequence[int] | None = None,
        unlabeled: bool | int | None = None,
    ) -> None:
        super().__init__()
        # name/num_classes/in_channels are in the config so other groups can interpolate them
        # (${data.num_classes}); a fixed dataset must agree with its own.
        self.name = name or self.name
        #: The chosen labels of the original dataset, in the order that gives the new labels 0..k-1.
        self.classes = self._check_classes(classes)
        own_classes = len(self.classes) if self.classes is not None else self.num_classes
        if num_classes is not None and num_classes != own_classes:
            having = f"data.classes={self.classes} gives {own_classes}" if self.classes is not None else f"it has {own_classes}"
            raise ConfigError(f"data.num_classes={num_classes!r} is not allowed for data={self.name}; {having}")
        self.num_classes = own_classes
        if in_channels is not None and in_channels != self.input_shape[0] and not self.variable_shape:
            raise ConfigError(f"data.in_channels={in_channels!r} is not allowed for data={self.name}; it has {self.input_shape[0]}")
        # in_features (C·H·W) lets an MLP interpolate ${data.in_features}; it must agree with the shape.
        if in_features is not None and in_features != self.in_features and not self.variable_shape:
            raise ConfigError(f"data.in_features={in_features!r} is not allowed for data={self.name}; it has {self.in_features}")
        # ``paper`` (the paper's setting for this dataset: network, lr per method, epochs) is read by the
        # presets and model=paper through ${data.paper.*} interpolation; the DataModule itself needs none of it.
        del paper
        self.data_dir = Path(data_dir).expanduser()
        # ``eps`` is the setting's radius, written once here in the config and read by the attack, the objective
        # and the Lipschitz estimate through ${data.eps}; the DataModule only refuses a negative one early.
        check_non_negative("data.eps", eps)
        self.batch_size = check_positive_int("data.batch_size", batch_size)
        self.eval_batch_size = check_positive_int("data.eval_batch_size", eval_batch_size)
        if not (isinstance(val_size, int) and val_size >= 0) and not (isinstance(val_size, float) and 0 <= val_size < 1):
            raise ConfigError(f"data.val_size={val_size!r} is not allowed; use a count >= 0 or a fraction in [0, 1)")
        self.val_size = val_size
        self.train_eval_size = None if train_eval_size is None else check_positive_int(
            "data.train_eval_size", train_eval_size
        )
        self.test_size = None if test_size is None else check_positive_int("data.test_size", test_size)
        self.train_size = self._check_train_size(train_size)
        self.unlabeled = self._check_unlabeled(unlabeled)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.seed = int(seed)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None
        self.unlabeled_set: Dataset | None = None
        self.unlabeled_eval_set: Dataset | None = None
        self.pseudo_labeled_set: Dataset | None = None
        self.mixed_sampler: Any = None

    def _check_classes(self, classes: Sequence[int] | None) -> list[int] | None:
        """The labels of ``data.classes`` as plain ints; each must be a label of this dataset, once."""
        if classes is None:
            return None
        values = list(_plain(classes)) if isinstance(classes, (Sequence, ListConfig)) and not isinstance(classes, str) else None
        if not values or any(not isinstance(c, int) or isinstance(c, bool) for c in values):
            raise ConfigError(f"data.classes={_plain(classes)!r} is not allowed; give a non-empty list of integer labels, e.g. [0, 6]")
        bad = [c for c in values if not 0 <= c < self.num_classes]
        if bad:
            raise ConfigError(
                f"data.classes={values} is not allowed for data={self.name}: label {bad[0]} does not exist; "
                f"its labels are 0..{self.num_classes - 1}"
            )
        if len(set(values)) != len(values):
            raise ConfigError(f"data.classes={values} is not allowed; each label may appear once")
        return values

    @staticmethod
    def _check_train_size(train_size: float | None) -> int | float | None:
        if train_size is None:
            return None
        if isinstance(train_size, bool) or not (
            (isinstance(train_size, int) and train_size >= 1) or (isinstance(train_size, float) and 0 < train_size <= 1)
        ):
            raise ConfigError(f"data.train_size={train_size!r} is not allowed; use a count >= 1, a fraction in (0, 1] or null")
        return train_size

    def _check_unlabeled(self, unlabeled: bool | int | None) -> bool | int:
        """``data.unlabeled``: false/null (no pool), true (every training example outside train_size) or a count."""
        if unlabeled is None or unlabeled is False:
            return False
        if unlabeled is not True and (not isinstance(unlabeled, int) or unlabeled < 1):
            raise ConfigError(f"data.unlabeled={unlabeled!r} is not allowed; use false, true (the whole rest of the "
                              "training split) or a count >= 1")
        if self.train_size is None:
            raise ConfigError(f"data.unlabeled={unlabeled!r} needs data.train_size: the unlabeled pool is the training "
                              "split outside the labeled subset (e.g. data.train_size=1000 data.unlabeled=true)")
        return unlabeled

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
        if self.classes is not None:
            splits = self._select_classes(splits)
        n = len(splits.train)
        n_val = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n:
            raise ConfigError(f"data.val_size={self.val_size!r} leaves no training data ({n} examples in total)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        pool_idx: list[int] = []
        if self.train_size is not None:
            labeled_idx = self._stratified(train_idx, dataset_labels(splits.train_eval))
            if self.unlabeled:
                pool_idx = self._pool(sorted(set(train_idx) - set(labeled_idx)))
            train_idx = labeled_idx
        self.train_set = Subset(splits.train, train_idx)
        # The pool twice, like the training set: the training view, and the plain one a teacher labels.
        self.unlabeled_set = Subset(splits.train, pool_idx) if pool_idx else None
        self.unlabeled_eval_set = Subset(splits.train_eval, pool_idx) if pool_idx else None
        # Validation images come from the un-augmented view: val metrics should not be noisy.
        self.val_set = Subset(splits.train_eval, val_idx)
        train_eval_size = self.train_eval_size
        if self.train_size is not None and train_eval_size is not None and train_eval_size > len(train_idx):
            # A preset's training-metrics size is a budget for full training sets; a train_size sweep
            # (Tsipras et al.'s 50 examples) measures its whole, smaller training set instead.
            log.info("data.train_eval_size=%d is more than data.train_size=%d: training metrics use all %d examples",
                     train_eval_size, self.train_size, len(train_idx))
            train_eval_size = None
        self.train_eval_set = self._first(Subset(splits.train_eval, train_idx), train_eval_size, self.seed + 1,
                                          "data.train_eval_size", "training set (after the validation split)")
        self.test_set = self._first(splits.test, self.test_size, self.seed + 2, "data.test_size", "test set")

    def _pool(self, outside: list[int]) -> list[int]:
        """The unlabeled pool: all of ``outside``, or a seeded random subset of ``data.unlabeled`` of them.

        Random, not stratified: the labels of unlabeled data are unknown, so a subset may not use them.
        """
        if not outside:
            raise ConfigError(f"data.unlabeled={self.unlabeled!r}: data.train_size={self.train_size!r} leaves no training "
                              f"example of data={self.name} outside the labeled subset")
        if self.unlabeled is True:
            return outside
        if self.unlabeled > len(outside):
            raise ConfigError(f"data.unlabeled={self.unlabeled!r} is larger than the {len(outside)} training examples "
                              f"outside data.train_size={self.train_size!r}; use at most {len(outside)} or true")
        pick = torch.randperm(len(outside), generator=torch.Generator().manual_seed(self.seed + 5))[: self.unlabeled]
        return sorted(outside[i] for i in pick.tolist())

    def use_pseudo_labels(self, labels: Tensor, unsup_fraction: float) -> None:
        """Train on the labeled set and the pool with ``labels``, ``unsup_fraction`` of each batch from the pool."""
        from robustlip.data.unlabeled import MixedBatchSampler, PseudoLabeled

        if self.unlabeled_set is None:
            raise ConfigError("pseudo-labels need an unlabeled pool: set data.train_size=<labels> and data.unlabeled=true")
        self.pseudo_labeled_set = PseudoLabeled(self.unlabeled_set, labels)
        self.mixed_sampler = MixedBatchSampler(len(self.train_set), len(self.unlabeled_set), self.batch_size,
                                               unsup_fraction)

    def _select_classes(self, splits: DatasetSplits) -> DatasetSplits:
        """Keep the examples of ``self.classes`` in every split, relabelled by their position in the list."""
        mapping = {c: i for i, c in enumerate(self.classes or [])}

        def keep(dataset: Dataset) -> list[int]:
            labels = dataset_labels(dataset)
            chosen = torch.zeros_like(labels, dtype=torch.bool)
            for c in mapping:
                chosen |= labels == c
            return torch.nonzero(chosen).flatten().tolist()

        # train and train_eval are two views of one list of examples: the same indices serve both.
        train_idx, test_idx = keep(splits.train_eval), keep(splits.test)
        if not train_idx:
            raise ConfigError(f"data.classes={self.classes} selects no training example of data={self.name}")
        return DatasetSplits(
            train=ClassSubset(splits.train, train_idx, mapping),
            train_eval=ClassSubset(splits.train_eval, train_idx, mapping),
            test=ClassSubset(splits.test, test_idx, mapping),
        )

    def _stratified(self, train_idx: list[int], labels: Tensor) -> list[int]:
        """``train_size`` of ``train_idx``, each class in proportion to its share, drawn from ``seed``.

        Every class's examples are shuffled (seeded) and the j-th of a class of n_c examples gets the
        key (j + ½)/n_c; the subset is the ``train_size`` smallest keys. So each class has its
        proportional count up to one example, and a smaller subset is always part of a larger one of
        the same seed (a train-size sweep adds examples instead of redrawing them).
        """
        n = len(train_idx)
        size = self.train_size if isinstance(self.train_size, int) else max(1, round(self.train_size * n))
        if size > n:
            raise ConfigError(
                f"data.train_size={self.train_size!r} is larger than the training split of data={self.name} "
                f"({n} examples after data.val_size={self.val_size!r}); use at most {n} or a fraction in (0, 1]"
            )
        idx = torch.as_tensor(train_idx, dtype=torch.long)
        split_labels = labels[idx]
        generator = torch.Generator().manual_seed(self.seed + 4)
        keys = torch.empty(n, dtype=torch.float64)
        for c in torch.unique(split_labels).tolist():
            members = torch.nonzero(split_labels == c).flatten()
            shuffled = members[torch.randperm(len(members), generator=generator)]
            keys[shuffled] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
        # Sorted by key, ties (equally large classes) broken by label.
        order = np.lexsort((split_labels.numpy(), keys.numpy()))
        return sorted(idx[torch.from_numpy(order[:size])].tolist())

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
        if self.mixed_sampler is not None:  # robust self-training: labeled and pseudo-labeled in every batch
            return DataLoader(
                ConcatDataset([self.train_set, self.pseudo_labeled_set]),
                batch_sampler=self.mixed_sampler,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.persistent_workers,
            )
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def train_eval_dataloader(self) -> DataLoader:
        """The training set without augmentation, in a fixed order: what train/acc is measured on."""
        return self._loader(self.train_eval_set, self.eval_batch_size, shuffle=False)


class ClassSubset(Dataset):
    """The examples ``indices`` of ``dataset`` with their labels mapped by ``mapping`` (old -> new)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], mapping: Mapping[int, int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.mapping = dict(mapping)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.dataset[self.indices[i]]
        return x, self.mapping[int(y)]

    @property
    def targets(self) -> Tensor:
        """The new labels of all examples, without loading an image."""
        old = dataset_labels(self.dataset)[torch.as_tensor(self.indices, dtype=torch.long)]
        return torch.as_tensor([self.mapping[int(c)] for c in old], dtype=torch.long)


def dataset_labels(dataset: Dataset) -> Tensor:
    """Every label of ``dataset`` as a LongTensor, read from its label store when it has one.

    torchvision's classes keep ``targets`` (``labels`` for SVHN), a TensorDataset its second tensor;
    a Subset maps its parent's labels. Any other dataset is read item by item (loads every input).
    """
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    for attr in ("targets", "labels"):
        store = getattr(dataset, attr, None)
        if store is not None:
            return torch.as_tensor(store.tolist() if hasattr(store, "tolist") else list(store), dtype=torch.long)
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _plain(node: Any) -> Any:
    """A Hydra DictConfig/ListConfig (or a plain container) as plain dicts and lists."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node
