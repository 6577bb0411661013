"""Restricted ImageNet: 9 super-classes of ILSVRC2012 at 64×64, as the authors build it (docs/authors-code.md §2).

Construction (the authors' ``scripts/restrictedImgNet.py``, same sets as Tsipras et al.): every
ImageNet class whose index in the standard, wnid-sorted order of the 1000 classes falls in a
half-open range belongs to one super-class:

    dog [151,269) · cat [281,286) · frog [30,33) · turtle [33,38) · bird [80,101) ·
    primate [365,383) · fish [389,398) · crab [118,122) · insect [300,320)

— 203 ImageNet classes. Labels follow the alphabetical order of the super-class names, as
``ImageFolder`` gives the authors' copied folders: bird=0, cat=1, crab=2, dog=3, fish=4, frog=5,
insect=6, primate=7, turtle=8. Train comes from ILSVRC2012 train, test from ILSVRC2012 val
(50 per class → 10,150 images).

Class balance: docs/authors-code.md §2 copies *every* image of the 203 classes, so the super-classes are as
unbalanced as their class counts (dog: 118 classes, frog: 3) and nothing re-weights or re-samples
them. ``balance: null`` reproduces that (default). ``balance: undersample`` is an explicit,
non-paper option: a seeded subsample of the *training* images down to the smallest super-class
(the test set is never altered).

Two folder layouts are read with torchvision's ``ImageFolder``:

* ``imagenet``: ``<root>/{train,val}/<wnid>/*.JPEG`` (val re-sorted into wnid folders, the usual
  layout). The wnid → index map is the sorted list of the 1000 wnids: taken from ``wnids_file``
  (one wnid per line as its first token, e.g. ILSVRC's ``LOC_synset_mapping.txt``) when given, else
  from the train folder, which must then hold all 1000 class folders.
* ``superclass``: ``<root>/{train,val}/<bird|cat|...>/*`` — the authors' copied tree.
``layout: auto`` picks ``superclass`` when the train folder's sub-folders are the 9 names.

Transforms (docs/authors-code.md §2): train Resize(72) → RandomCrop(64, padding=8) → [0,1] tensor (no flip); test
and the train-evaluation view Resize(72) → CenterCrop(64). They are the authors' own torchvision
(v1) transforms on PIL images (``lolip/datasets/__init__.py`` L63-83 at 656616a, github
yangarbiter/robust-local-lipschitz), not their ``v2`` tensor counterparts: PIL's resize filter rounds
differently from the tensor one (pixels off by 1/255, enough to move a Table 1 minimum distance by a
grey level), ``v2.ToDtype`` multiplies by 1/255 where ``ToTensor`` divides by 255, and ``v2.RandomCrop``
draws its offsets in another order. tests/test_data.py checks both views bit for bit. The authors measured train metrics on
randomly cropped images; ``train_eval_random_crop: true`` reproduces that (docs/authors-code.md §13 item 9).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision import transforms as tv1

from robustlip.core.errors import ConfigError, check_choice
from robustlip.data.base import DatasetSplits, RobustDataModule

#: Super-class -> half-open range of wnid-sorted ImageNet indices (docs/authors-code.md §2).
SUPERCLASS_RANGES: dict[str, tuple[int, int]] = {
    "dog": (151, 269),
    "cat": (281, 286),
    "frog": (30, 33),
    "turtle": (33, 38),
    "bird": (80, 101),
    "primate": (365, 383),
    "fish": (389, 398),
    "crab": (118, 122),
    "insect": (300, 320),
}
#: Label order: alphabetical, as ImageFolder orders the authors' super-class folders.
SUPERCLASSES: tuple[str, ...] = tuple(sorted(SUPERCLASS_RANGES))


def superclass_of_index(index: int) -> str | None:
    """The super-class of the ImageNet class at wnid-sorted ``index``, or None if it is not used."""
    for name, (lo, hi) in SUPERCLASS_RANGES.items():
        if lo <= index < hi:
            return name
    return None


def wnid_to_superclass(wnids: list[str]) -> dict[str, int]:
    """Map the wnids of the 1000 ImageNet classes to super-class labels (only the 203 used ones)."""
    ordered = sorted(wnids)
    if len(ordered) != 1000 or len(set(ordered)) != 1000:
        raise ConfigError(
            f"Restricted ImageNet needs the 1000 ImageNet wnids to find the class ranges, got {len(set(ordered))}; "
            f"set data.wnids_file to a list of the 1000 wnids (e.g. LOC_synset_mapping.txt)"
        )
    mapping = {}
    for index, wnid in enumerate(ordered):
        name = superclass_of_index(index)
        if name is not None:
            mapping[wnid] = SUPERCLASSES.index(name)
    return mapping


class _SuperclassFolder(datasets.ImageFolder):
    """ImageFolder over wnid folders whose label is the wnid's super-class (many folders → one label)."""

    def __init__(self, root: str, class_to_idx: dict[str, int], **kwargs: Any) -> None:
        self._given = class_to_idx
        # A wnid folder may be empty (a partial copy); what must not be empty is the whole split.
        super().__init__(root, allow_empty=True, **kwargs)
        if not self.samples:
            raise FileNotFoundError(f"no image of a Restricted ImageNet class under {root}")

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        present = {p.name for p in Path(directory).iterdir() if p.is_dir()}
        used = {wnid: label for wnid, label in self._given.items() if wnid in present}
        if not used:
            raise FileNotFoundError(f"no folder of a Restricted ImageNet wnid under {directory}")
        return list(SUPERCLASSES), used


class RestrictedImageNetDataModule(RobustDataModule):
    name = "restricted_imagenet"
    num_classes = 9
    input_shape = (3, 64, 64)

    def __init__(
        self,
        *args: Any,
        layout: str = "auto",
        wnids_file: str | Path | None = None,
        train_split: str = "train",
        test_split: str = "val",
        resize: int = 72,
        crop: int = 64,
        padding: int = 8,
        balance: str | None = None,
        train_eval_random_crop: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.layout = check_choice("data.layout", layout, ("auto", "imagenet", "superclass"))
        self.wnids_file = Path(wnids_file).expanduser() if wnids_file else None
        self.train_split, self.test_split = str(train_split), str(test_split)
        self.resize, self.crop, self.padding = int(resize), int(crop), int(padding)
        self.input_shape = (3, self.crop, self.crop)
        self.balance = check_choice("data.balance", balance, (None, "undersample"))
        self.train_eval_random_crop = bool(train_eval_random_crop)

    # -- transforms (docs/authors-code.md §2) ------------------------------------------------------------------
    def train_transform(self) -> tv1.Compose:
        return tv1.Compose([tv1.Resize(self.resize), tv1.RandomCrop(self.crop, padding=self.padding), tv1.ToTensor()])

    def test_transform(self) -> tv1.Compose:
        return tv1.Compose([tv1.Resize(self.resize), tv1.CenterCrop(self.crop), tv1.ToTensor()])

    # -- folders ---------------------------------------------------------------------------------
    def _split_dir(self, split: str) -> Path:
        path = self.data_dir / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"data={self.name}: no folder {path}; point data.data_dir at a tree with {self.train_split}/ and "
                f"{self.test_split}/ holding wnid (or super-class) folders (see docs/datasets.md)"
            )
        return path

    def resolved_layout(self) -> str:
        if self.layout != "auto":
            return self.layout
        names = {p.name for p in self._split_dir(self.train_split).iterdir() if p.is_dir()}
        return "superclass" if names and names <= set(SUPERCLASSES) else "imagenet"

    def class_map(self) -> dict[str, int]:
        """wnid -> super-class label, from ``wnids_file`` or the train folder's 1000 class folders."""
        if self.wnids_file is not None:
            if not self.wnids_file.is_file():
                raise FileNotFoundError(f"data.wnids_file={self.wnids_file} does not exist; give a list of the 1000 wnids")
            lines = self.wnids_file.read_text().split("\n")
            wnids = [line.split()[0] for line in lines if line.strip()]
        else:
            wnids = [p.name for p in self._split_dir(self.train_split).iterdir() if p.is_dir()]
        return wnid_to_superclass(wnids)

    def _folder(self, split: str, transform: Any) -> Dataset:
        root = str(self._split_dir(split))
        if self.resolved_layout() == "superclass":
            folder = datasets.ImageFolder(root, transform=transform)
            if tuple(folder.classes) != SUPERCLASSES:
                raise FileNotFoundError(f"data={self.name}: {root} must hold the 9 folders {', '.join(SUPERCLASSES)}")
            return folder
        return _SuperclassFolder(root, self.class_map(), transform=transform)

    def build_datasets(self) -> DatasetSplits:
        train = self._folder(self.train_split, self.train_transform())
        # Same file list, other transform: built once and re-wrapped would share state, so build twice.
        eval_tf = self.train_transform() if self.train_eval_random_crop else self.test_transform()
        train_eval = self._folder(self.train_split, eval_tf)
        test = self._folder(self.test_split, self.test_transform())
        if self.balance == "undersample":
            keep = self.undersample_indices(train.targets)
            train, train_eval = Subset(train, keep), Subset(train_eval, keep)
        return DatasetSplits(train=train, train_eval=train_eval, test=test)

    def undersample_indices(self, targets: list[int]) -> list[int]:
        """A seeded subset of training indices with the same count for every super-class."""
        labels = torch.as_tensor(targets)
        counts = torch.bincount(labels, minlength=self.num_classes)
        smallest = int(counts[counts > 0].min())
        generator = torch.Generator().manual_seed(self.seed + 3)
        keep: list[int] = []
        for c in range(self.num_classes):
            idx = torch.nonzero(labels == c).flatten()
            keep += idx[torch.randperm(len(idx), generator=generator)[:smallest]].tolist()
        return sorted(keep)
