"""MNIST, Fashion-MNIST, SVHN and CIFAR-10 through torchvision's dataset classes (docs/authors-code.md §2).

Every image leaves as a float tensor in [0, 1] (``ToImage`` + ``ToDtype(scale=True)``, the /255 of
the authors' loaders); there is no mean/std normalisation here (docs/architecture.md, "Pixel space").

Data is read from ``data_dir`` in torchvision's own layout (``<data_dir>/MNIST/raw``,
``<data_dir>/FashionMNIST/raw``, ``<data_dir>/cifar-10-batches-py``, ``<data_dir>/train_32x32.mat``).
``download=true`` fetches it in ``prepare_data`` (run once per node by Lightning); with
``download=false`` a missing dataset fails in ``setup`` with a one-line ``FileNotFoundError`` naming
the folder and the fix, instead of torchvision's generic "Dataset not found".

MNIST-format sets also take a ``raw_dir``: a folder holding the four original IDX files (``.gz`` or
not), e.g. Debian's ``dataset-fashion-mnist`` package in /usr/share/datasets/fashion-mnist. They are
decompressed once into torchvision's layout under ``data_dir`` (torchvision reads only uncompressed
IDX files) and then read by torchvision's class as usual.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from robustlip.data.base import DatasetSplits, RobustDataModule

#: The four IDX files of every MNIST-format dataset, as torchvision expects them in ``raw/``.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def to_unit_tensor() -> v2.Compose:
    """PIL/uint8 image -> float32 CHW tensor in [0, 1]: the authors' ``/255`` (docs/authors-code.md §2)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class TorchvisionDataModule(RobustDataModule):
    """A DataModule over a torchvision dataset class with train/test splits.

    Subclasses say which class (``dataset_class``), how it is called for a split (``make``) and,
    optionally, the training augmentation (``train_transform``). ``train_eval`` is always the
    un-augmented training set, so train accuracy is measured as docs/authors-code.md §9.2 does.
    """

    dataset_class: type[Dataset]
    #: What to tell a user whose data is missing: where the files are expected.
    expected_layout: str = ""

    def __init__(self, *args: Any, download: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.download = bool(download)

    # -- what a subclass provides ---------------------------------------------------------------
    def make(self, train: bool, transform: Any, download: bool) -> Dataset:
        return self.dataset_class(str(self.data_dir), train=train, transform=transform, download=download)

    def train_transform(self) -> Any:
        return to_unit_tensor()

    # -- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download once (Lightning calls this on one process per node) when ``download=true``."""
        if self.download:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.make(True, None, download=True)
            self.make(False, None, download=True)

    def build_datasets(self) -> DatasetSplits:
        plain = to_unit_tensor()
        try:
            train = self.make(True, self.train_transform(), download=False)
            train_eval = self.make(True, plain, download=False)
            test = self.make(False, plain, download=False)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise self.missing_error(err) from None
        return DatasetSplits(train=train, train_eval=train_eval, test=test)

    def missing_error(self, err: Exception) -> FileNotFoundError:
        where = self.data_dir / self.expected_layout if self.expected_layout else self.data_dir
        return FileNotFoundError(
            f"data={self.name}: dataset not found or corrupted at {where} ({err}); put the files there, "
            f"point data.data_dir (or ROBUSTLIP_DATA_DIR) at the folder that holds them, or set data.download=true"
        )


class MNISTDataModule(TorchvisionDataModule):
    """MNIST, 60,000/10,000 grey 28×28 images, no augmentation (docs/authors-code.md §2, Table 2: ε = 0.1)."""

    name = "mnist"
    num_classes = 10
    input_shape = (1, 28, 28)
    dataset_class = datasets.MNIST

    def __init__(self, *args: Any, raw_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw_dir = Path(raw_dir).expanduser() if raw_dir else None

    @property
    def expected_layout(self) -> str:  # type: ignore[override]
        return f"{self.dataset_class.__name__}/raw"

    @property
    def raw_folder(self) -> Path:
        """Where torchvision's class looks for the uncompressed IDX files."""
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def link_raw_dir(self) -> bool:
        """Decompress/copy the IDX files of ``raw_dir`` into torchvision's layout; True if done or not needed.

        Files already in place are kept. Each file is written to a temporary name and renamed, so
        concurrent processes never see a half-written file.
        """
        if all((self.raw_folder / f).is_file() for f in IDX_FILES):
            return True
        if self.raw_dir is None or not self.raw_dir.is_dir():
            return False
        sources = {}
        for f in IDX_FILES:
            found = [p for p in (self.raw_dir / f, self.raw_dir / f"{f}.gz") if p.is_file()]
            if not found:
                return False
            sources[f] = found[0]
        self.raw_folder.mkdir(parents=True, exist_ok=True)
        for f, src in sources.items():
            dst = self.raw_folder / f
            if dst.is_file():
                continue
            tmp = dst.with_name(f"{f}.tmp{os.getpid()}")
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)
            os.replace(tmp, dst)
        return True

    def prepare_data(self) -> None:
        if not self.link_raw_dir():
            super().prepare_data()

    def build_datasets(self) -> DatasetSplits:
        self.link_raw_dir()
        return super().build_datasets()

    def missing_error(self, err: Exception) -> FileNotFoundError:
        raw = f" nor IDX files in data.raw_dir={self.raw_dir}" if self.raw_dir is not None else ""
        return FileNotFoundError(
            f"data={self.name}: no {', '.join(IDX_FILES)} in {self.raw_folder}{raw}; "
            f"set data.raw_dir (or data.data_dir) to the folder that holds them, or set data.download=true"
        )


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST, 60,000/10,000 grey 28×28 images of clothes; MNIST's format and setting.

    Not in the paper: it runs the MNIST setting (ε = 0.1, CNN1/CNN2, docs/authors-code.md §8). ``raw_dir`` defaults
    (in conf/data/fashion_mnist.yaml) to the Debian package's /usr/share/datasets/fashion-mnist.
    """

    name = "fashion_mnist"
    dataset_class = datasets.FashionMNIST


class SVHNDataModule(TorchvisionDataModule):
    """SVHN, 73,257/26,032 colour 32×32 images; ``extra`` unused, no augmentation (docs/authors-code.md §2).

    torchvision maps the digit 0 (label 10 in the .mat files) to class 0, as the authors' loader does.
    """

    name = "svhn"
    num_classes = 10
    input_shape = (3, 32, 32)
    dataset_class = datasets.SVHN
    expected_layout = "{train,test}_32x32.mat"

    def make(self, train: bool, transform: Any, download: bool) -> Dataset:
        split = "train" if train else "test"
        return datasets.SVHN(str(self.data_dir), split=split, transform=transform, download=download)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10, 50,000/10,000 colour 32×32 images with the authors' ``aug01`` (docs/authors-code.md §2).

    ``aug01`` = RandomCrop(32, padding=4, zero padding) + RandomHorizontalFlip(0.5), on the training
    stream only; the test set and the train-evaluation view are plain. ``augment=false`` turns it off
    (the proof-of-concept runs of docs/authors-code.md §11 train without it).
    """

    name = "cifar10"
    num_classes = 10
    input_shape = (3, 32, 32)
    dataset_class = datasets.CIFAR10
    expected_layout = "cifar-10-batches-py"

    def __init__(self, *args: Any, augment: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.augment = bool(augment)

    def train_transform(self) -> Any:
        if not self.augment:
            return to_unit_tensor()
        return v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(0.5),
                           v2.ToDtype(torch.float32, scale=True)])
