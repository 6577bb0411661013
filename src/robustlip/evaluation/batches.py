"""Which examples an evaluation sees, in which batches, on which process.

* **Subsets.** ``n_examples`` examples of a split, by one of two rules: ``seeded`` (robustlip's: drawn
  with the evaluation's seed, kept in their original order, the same ones for every attack and in every
  run with that seed) or ``first`` (RobustBench's: the first ``n_examples`` points of the split, as
  ``robustbench.eval.benchmark`` takes them).
* **Batches.** A pass is a list of batches, each a list of example indices and an index that seeds its
  random streams (:mod:`robustlip.evaluation.streams`). The batches of one process are a share of those
  of one process: batch k goes to process k mod the world size, with its content and its index, and
  unlike a ``DistributedSampler`` no example is repeated to even out the shards, so summing the
  processes' sum states gives the one-process numbers exactly. A resumed evaluation leaves out the
  batches it already measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from robustlip.core.errors import ConfigError, check_choice

#: How ``n_examples`` picks its examples: robustlip's seeded draw or RobustBench's first points.
SUBSET_RULES = ("seeded", "first")


def check_subset_size(n_examples: int, size: int, key: str = "n_examples", split: str = "test") -> None:
    """Refuse ``n_examples`` above the split's ``size`` in one line: silently measuring fewer than asked for
    would report a number on another sample than the one named."""
    if n_examples > size:
        raise ConfigError(f"{key}={n_examples} is not allowed; the {split} set has {size} examples "
                          f"(choose {key} <= {size}, or null for all of them)")


def subset(dataset: Dataset, n_examples: int | None, seed: int = 0, rule: str = "seeded", key: str = "n_examples",
           split: str = "test") -> Dataset:
    """``n_examples`` examples of ``dataset`` picked by ``rule`` (in their original order); all of it for None;
    more than it has is refused (:func:`check_subset_size`)."""
    rule = check_choice("subset", rule, SUBSET_RULES)
    if n_examples is None:
        return dataset
    size = len(dataset)
    check_subset_size(n_examples, size, key, split)
    if rule == "first":
        return Subset(dataset, list(range(n_examples)))
    pick = torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))[:n_examples]
    return Subset(dataset, sorted(pick.tolist()))


def seeded_subset(dataset: Dataset, n_examples: int | None, seed: int) -> Dataset:
    """``n_examples`` examples of ``dataset`` drawn with ``seed`` (in their original order); all of it for None."""
    return subset(dataset, n_examples, seed, "seeded")


def batch_indices(size: int, batch_size: int) -> list[list[int]]:
    """The batches of a sequential pass over ``size`` examples: ``[[0..b-1], [b..2b-1], ...]``."""
    return [list(range(start, min(start + batch_size, size))) for start in range(0, size, batch_size)]


def process() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def loader_of(loader: DataLoader, batches: Sequence[Sequence[int]]) -> DataLoader:
    """A loader over ``loader``'s dataset yielding exactly ``batches``, with its workers and collate function."""
    return DataLoader(loader.dataset, batch_sampler=[list(b) for b in batches], num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def batch_shard(loader: DataLoader, rank: int, world_size: int, skip: Sequence[int] = ()) -> tuple[DataLoader, list[int]]:
    """This process's share of ``loader``'s batches (batch k to process k mod world size), less the ``skip`` ones.

    Returns the loader of those batches and their indices in the single-process order.
    """
    batches = batch_indices(len(loader.dataset), loader.batch_size)
    done = set(skip)
    mine = [k for k in range(len(batches)) if k % world_size == rank and k not in done]
    return loader_of(loader, [batches[k] for k in mine]), mine


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process (a one-element list without a process group)."""
    if process()[1] == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
