"""Every measurement of every batch on a random stream of its own, so a number depends on nothing that ran before.

An attack's random start, the Lipschitz search's start and each probe draw, batch by batch, from a
stream seeded with ``(seed, split, batch index, measurement name)`` inside ``torch.random.fork_rng``.
So the numbers depend on the model, the data and the seed only: not on what ran before (an
evaluation of a checkpoint reproduces the training run's numbers), not on which other measurements
ran (the Lipschitz estimate is the same whichever attack is chosen), not on how the batches are
dealt out to processes (each batch is seeded by its single-process index), and not on whether an
evaluation was stopped and resumed in between. Evaluating never shifts the caller's own random stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Separate random streams for the three splits an evaluation attacks.
SPLIT_STREAMS = {"test": 0, "train": 1, "val": 2}


def stream_seed(seed: int, split: str, batch_idx: int, measurement: str = "") -> int:
    """The seed of one measurement's stream on one batch (the formula every robustlip version has used)."""
    stream = zlib.crc32(measurement.encode()) if measurement else 0
    return (int(seed) * 1_000_003 + SPLIT_STREAMS[split] * 7_919 + batch_idx + stream * 104_729) % (2**63)


@contextmanager
def seeded(seed: int | None, split: str, batch_idx: int, device: torch.device, measurement: str = "") -> Iterator[None]:
    """Run a block on its own random stream, restoring the global one afterwards (None: no seeding).

    ``measurement`` (a metric's or probe's stream name) gives each measurement of a batch a stream of
    its own, so one measurement's draws never depend on how many another one made before it.
    """
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(stream_seed(seed, split, batch_idx, measurement))
        yield
