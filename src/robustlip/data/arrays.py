"""A whole dataset split as numpy arrays, for analyses that need every example at once (Table 1's separation).

Reading 70k images through ``__getitem__`` (PIL, transforms) takes longer than the exact nearest
neighbour search itself, so a torchvision dataset's raw uint8 storage is used directly when it provably
gives the same examples; otherwise the DataLoader reads it and 8-bit images are decoded back to levels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from robustlip.core.errors import ConfigError
from robustlip.metrics.separation import to_grid


def load_arrays(dataset: Dataset, batch_size: int = 2048, num_workers: int = 0,
                raw: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (flattened images, labels): uint8 levels when it holds 8-bit images, else float32.

    Reading 70k images through ``__getitem__`` (PIL, transforms) takes longer than the search
    itself, so a torchvision dataset's raw uint8 storage is used directly when it provably gives
    the same examples (see ``raw_storage``; ``raw=False`` never does). Otherwise the DataLoader
    reads it and the floats are decoded here (see ``to_grid``), halving the search's peak memory.
    """
    stored = raw_storage(dataset) if raw else None
    if stored is not None:
        return stored
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        xs.append(torch.as_tensor(x).float().numpy().reshape(len(x), -1))
        ys.append(torch.as_tensor(y).numpy().astype(np.int64))
    if not xs:
        raise ConfigError("the dataset split is empty; there is nothing to measure")
    images = np.concatenate(xs)
    del xs
    levels = to_grid(images)
    return (images if levels is None else levels), np.concatenate(ys)


def raw_storage(dataset: Dataset, checks: int = 64) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 images flattened in CHW order, labels) from a torchvision dataset's ``data`` array, or None.

    MNIST-style (N, H, W), CIFAR-style (N, H, W, C) and SVHN-style (N, C, H, W) storage, possibly
    behind a ``Subset``. Trusted only if ``checks`` examples spread over the set, read the normal way
    through ``__getitem__``, decode to exactly the same pixels and labels; any doubt returns None.
    """
    base, index = dataset, None
    if isinstance(dataset, Subset):
        base, index = dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)
    data = getattr(base, "data", None)
    labels = getattr(base, "targets", getattr(base, "labels", None))
    if data is None or labels is None or len(dataset) == 0:
        return None
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim not in (3, 4) or len(labels) != len(data):
        return None
    first = torch.as_tensor(dataset[0][0])
    if data.ndim == 3:
        data = data[:, None]
    elif data.shape[1:] != tuple(first.shape):
        data = data.transpose(0, 3, 1, 2)  # HWC storage, CHW tensors
    if data.shape[1:] != tuple(first.shape):
        return None
    if index is not None:
        data, labels = data[index], labels[index]
    images = np.ascontiguousarray(data).reshape(len(data), -1)
    labels = labels.astype(np.int64)
    for i in np.linspace(0, len(dataset) - 1, num=min(checks, len(dataset))).astype(int):
        x, y = dataset[int(i)]
        decoded = to_grid(torch.as_tensor(x).float().numpy().reshape(1, -1))
        if decoded is None or not np.array_equal(decoded[0], images[i]) or int(y) != labels[i]:
            return None
    return images, labels
