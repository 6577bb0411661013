"""Small datasets written in the real on-disk formats that torchvision reads (no network).

IDX (MNIST/Fashion-MNIST), the CIFAR-10 python pickles, SVHN's .mat files and an ImageNet-style
folder tree of small images. Each writer returns the arrays it wrote so tests can compare pixels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0) -> dict:
    """The four MNIST IDX files (optionally .gz) in ``folder``; returns {train: (x, y), test: (x, y)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for name, arr in zip(IDX_NAMES[train], (x, y)):
            data = _idx_bytes(arr)
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                (folder / name).write_bytes(data)
        out["train" if train else "test"] = (x, y)
    return out


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 20, seed: int = 0) -> dict:
    """``root/cifar-10-batches-py`` with 5 training pickles, the test pickle and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x, "labels": y, "batch_label": f"training batch {i} of 5"}, f)
        xs.append(x)
        ys += y
    x_te = rng.integers(0, 256, size=(n_test, 3072), dtype=np.uint8)
    y_te = [int(v) for v in np.arange(n_test) % 10]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": x_te, "labels": y_te, "batch_label": "testing batch 1 of 1"}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    to_chw = lambda a: a.reshape(-1, 3, 32, 32)
    return {"train": (to_chw(np.concatenate(xs)), np.array(ys)), "test": (to_chw(x_te), np.array(y_te))}


def write_svhn(root: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    """``root/{train,test}_32x32.mat`` as in the Stanford release: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # digit 0 is stored as 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (np.transpose(x, (3, 2, 0, 1)), y.flatten() % 10)
    return out


def fake_wnids() -> list[str]:
    """1000 wnid-like names whose sorted order is their index order."""
    return [f"n{i:08d}" for i in range(1000)]


def write_image_tree(root: Path, folders: dict[str, int], size: tuple[int, int] = (90, 80), seed: int = 0,
                     ext: str = "JPEG", empty: list[str] | None = None) -> None:
    """``root/<folder>/img_k.<ext>``: ``folders[name]`` random RGB images per folder, plus empty folders."""
    rng = np.random.default_rng(seed)
    for name, count in folders.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img_{k}.{ext}", format="JPEG" if ext == "JPEG" else "PNG")
    for name in empty or []:
        (root / name).mkdir(parents=True, exist_ok=True)


def relax_md5(monkeypatch) -> None:
    """Our fake CIFAR/SVHN files cannot match the real files' md5 sums: check that they exist instead."""
    import os

    import torchvision

    exists = lambda fpath, md5=None: os.path.isfile(fpath)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def write_fake(name: str, data_dir: Path) -> None:
    """Small files for data config ``name`` where its config points (data_dir as the config resolves it)."""
    if name in ("mnist", "fashion_mnist"):
        write_idx(data_dir / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw")
    elif name == "cifar10":
        write_cifar10(data_dir)
    elif name == "svhn":
        write_svhn(data_dir)
    elif name == "restricted_imagenet":
        counts = {"bird": 2, "cat": 1, "crab": 1, "dog": 3, "fish": 1, "frog": 1, "insect": 1, "primate": 1, "turtle": 1}
        write_image_tree(data_dir / "train", counts, ext="png")
        write_image_tree(data_dir / "val", {k: 1 for k in counts}, ext="png")
