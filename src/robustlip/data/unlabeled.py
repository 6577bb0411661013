"""Unlabeled data for robust self-training: pseudo-labeled images and batches that mix them with labels.

Carmon et al., "Unlabeled Data Improves Adversarial Robustness" (NeurIPS 2019), and Raghunathan et al.
(ICML 2020, §5) train on labeled examples together with unlabeled ones labeled by a standard
(naturally trained) teacher; every batch holds a fixed share ``unsup_fraction`` of pseudo-labeled
examples (0.5 in both papers). This module holds the pieces that are about data only:

- :func:`pseudo_label` — the teacher's predictions on a dataset, once, in eval mode, batched;
- :class:`PseudoLabeled` — a dataset's images with those labels in place of its own;
- :class:`MixedBatchSampler` — batches of ``ConcatDataset([labeled, pseudo_labeled])`` with exactly
  ``round(batch_size · unsup_fraction)`` pseudo-labeled examples each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from robustlip.core.errors import ConfigError, check_probability


@torch.no_grad()
def pseudo_label(net: nn.Module, dataset: Dataset, batch_size: int = 512, device: str | torch.device = "cpu",
                 num_workers: int = 0) -> Tensor:
    """argmax of ``net`` on every example of ``dataset`` (in order), in eval mode; the net's mode is restored.

    Eval mode because a teacher's label must not depend on the batch it happens to share (BatchNorm's
    batch statistics) or on a dropout draw.
    """
    was_training = net.training
    net.eval()
    net.to(device)
    labels = []
    try:
        for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
            labels.append(net(x.to(device)).argmax(dim=1).cpu())
    finally:
        net.train(was_training)
    return torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


class PseudoLabeled(Dataset):
    """The images of ``dataset`` with ``labels[i]`` as the label of example i (its own label is never read)."""

    def __init__(self, dataset: Dataset, labels: Tensor) -> None:
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} pseudo-labels for a dataset of {len(dataset)} examples")
        self.dataset = dataset
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | int]:
        x, own = self.dataset[i]
        label = self.labels[i]
        # The same type as the dataset's own labels (an int from torchvision, a 0-d tensor from a
        # TensorDataset), so labeled and pseudo-labeled examples collate into one batch.
        return x, (label.to(own.dtype) if torch.is_tensor(own) else int(label))


class MixedBatchSampler(Sampler[list[int]]):
    """Index batches for ``ConcatDataset([labeled, unlabeled])``: indices ≥ ``n_labeled`` are unlabeled.

    An epoch is one pass over the labeled examples in a fresh random order, ``batch_size − u`` of them
    per batch with ``u = round(batch_size · unsup_fraction)`` unlabeled examples alongside (the last,
    smaller batch keeps the same ratio, rounded). Unlabeled examples are drawn without replacement from
    a random permutation of the pool that carries over between epochs, so a large pool is covered
    before any of it repeats. Shuffles are seeded from torch's global generator, so
    ``seed_everything`` makes them reproducible, as for a shuffling DataLoader.
    """

    def __init__(self, n_labeled: int, n_unlabeled: int, batch_size: int, unsup_fraction: float) -> None:
        unsup_fraction = check_probability("self_training.unsup_fraction", unsup_fraction)
        self.unlabeled_per_batch = round(batch_size * unsup_fraction)
        self.labeled_per_batch = batch_size - self.unlabeled_per_batch
        if self.labeled_per_batch < 1:
            raise ConfigError(
                f"self_training.unsup_fraction={unsup_fraction!r} leaves no labeled example in a batch of "
                f"data.batch_size={batch_size}; use a smaller fraction or a larger batch"
            )
        if n_labeled < 1 or (self.unlabeled_per_batch and n_unlabeled < 1):
            raise ValueError(f"cannot mix {n_labeled} labeled and {n_unlabeled} unlabeled examples")
        self.n_labeled, self.n_unlabeled = n_labeled, n_unlabeled
        self.batch_size, self.unsup_fraction = batch_size, unsup_fraction
        self._pool: Tensor | None = None
        self._pool_pos = 0

    def __len__(self) -> int:
        return math.ceil(self.n_labeled / self.labeled_per_batch)

    def _next_unlabeled(self, count: int, generator: torch.Generator) -> list[int]:
        taken: list[int] = []
        while len(taken) < count:
            if self._pool is None or self._pool_pos >= len(self._pool):
                self._pool, self._pool_pos = torch.randperm(self.n_unlabeled, generator=generator), 0
            step = min(count - len(taken), len(self._pool) - self._pool_pos)
            taken += (self._pool[self._pool_pos:self._pool_pos + step] + self.n_labeled).tolist()
            self._pool_pos += step
        return taken

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        labeled = torch.randperm(self.n_labeled, generator=generator).tolist()
        ratio = self.unlabeled_per_batch / self.labeled_per_batch
        for start in range(0, self.n_labeled, self.labeled_per_batch):
            chunk = labeled[start:start + self.labeled_per_batch]
            count = self.unlabeled_per_batch if len(chunk) == self.labeled_per_batch else round(len(chunk) * ratio)
            yield chunk + self._next_unlabeled(count, generator)
