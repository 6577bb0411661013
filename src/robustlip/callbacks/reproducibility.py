"""Runs whose random draws are a function of ``(seed, epoch, batch)``, so they can stop anywhere and resume to the same numbers.

:class:`ReproducibleRandomness` (added to every run by ``robustlip-train``) replaces "whatever the
global RNG stream reached" by seeded draws:

* the training data order of epoch ``e`` is a permutation seeded by ``(seed, e)``, and a resumed
  epoch skips the batches it already trained on. Lightning 2.x restores the loop counters of a
  mid-epoch checkpoint but restarts a plain DataLoader from its first batch and draws a fresh shuffle
  from the global RNG (it warns "your dataloader is not resumable"); with this sampler the resumed
  epoch sees exactly the batches the interrupted one had left;
* the global RNGs (torch, numpy, random) are re-seeded before every training batch from
  ``(seed, epoch, batch_idx)``, before validation and before the test evaluation, so dropout,
  the random starts of training attacks and of evaluation attacks draw the same numbers whether or
  not the run was interrupted, and no RNG state has to travel in the checkpoint.

Saving the state to resume from is :mod:`robustlip.callbacks.resume`'s job.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler

log = logging.getLogger(__name__)


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed that depends on ``seed`` and every part (stable across processes and Python versions)."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and random — quietly, unlike ``pl.seed_everything``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EpochSeededSampler(Sampler[int]):
    """A shuffle that is a pure function of ``(seed, epoch)`` and can start at any batch of the epoch.

    ``position()`` returns ``(epoch, batches already trained in this epoch)``; it is read when the
    DataLoader starts iterating, i.e. at the first batch of an epoch or of a resumed epoch.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, position: Callable[[], tuple[int, int]]) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.position = position

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.position()
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        yield from order[done * self.batch_size :]


class ReproducibleRandomness(pl.Callback):
    """Seed data order and every training/evaluation step from ``(seed, epoch, batch)`` (see module doc)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = int(seed)
        self._trainer: pl.Trainer | None = None

    # -- data order ---------------------------------------------------------------------------
    def _position(self) -> tuple[int, int]:
        trainer = self._trainer
        assert trainer is not None
        # At the first fetch of an epoch, `ready` counts the batches already done (0, or k after a resume).
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def _install_sampler(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        loaders = trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
                continue
            batch_sampler = loader.batch_sampler
            inner = getattr(batch_sampler, "sampler", None)
            if isinstance(inner, EpochSeededSampler):
                continue
            # Only a plain shuffle is replaced; distributed or weighted samplers keep their own logic.
            if type(inner) is RandomSampler and not inner.replacement and inner.num_samples == len(inner.data_source):
                batch_sampler.sampler = EpochSeededSampler(
                    len(inner.data_source), self.seed, batch_sampler.batch_size, self._position
                )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_sampler(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install_sampler(trainer)  # a reloaded dataloader (reload_dataloaders_every_n_epochs) gets it too

    # -- per-step randomness ------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        seed_all(derive_seed(self.seed, "train", trainer.current_epoch, batch_idx))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_all(derive_seed(self.seed, "val", trainer.current_epoch, trainer.global_step))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The evaluation attacks' random starts: the same numbers for the same final model.
        seed_all(derive_seed(self.seed, "test"))
