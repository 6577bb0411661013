"""What a long evaluation has measured so far, kept on disk so that a stopped or killed one continues.

AutoAttack on 10,000 CIFAR-10 points takes hours on a GPU; a preemption must not cost them. After
each measured batch (at most every ``every_s`` seconds, and always when a stop is requested) the
evaluator writes the sum states of every split, the probes' counts, the attacks' records and the
indices of the batches already measured to ``<folder>/state-rank<r>of<w>.pt`` (atomically: a kill
during the write leaves the previous state). Rerun with the same arguments, it loads them and
measures only the batches that are missing. Every batch draws its randomness from its own seeded
stream (:mod:`robustlip.evaluation.streams`) and the sums are float64 kept exactly, so the resumed
evaluation ends with the numbers of an uninterrupted one.

The state is only reused for the same evaluation: its ``fingerprint`` (the model's weights, the data's
examples, the attacks, metrics, probes, seed, budgets, device type and precision) must match, else it
is set aside and the evaluation starts afresh (with a log line saying why).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlip.core.files import atomic_write

log = logging.getLogger(__name__)

#: Version of the state file's layout: a file of another layout is not read.
STATE_VERSION = 1


def fingerprint(*parts: Any, model: nn.Module | None = None) -> str:
    """A digest of ``parts`` (their reprs) and of every tensor of ``model``'s state dict (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
    if model is not None:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
    return digest.hexdigest()[:20]


class ResumeStore:
    """The state of one evaluation on one process, in a folder: load, save (throttled, atomic), clear."""

    def __init__(self, folder: str | Path, fingerprint: str, rank: int = 0, world_size: int = 1,
                 every_s: float = 2.0) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.path = self.folder / f"state-rank{rank}of{world_size}.pt"
        self.every_s = float(every_s)
        self._last_save = time.monotonic()
        self._unsaved = False

    def load(self) -> dict[str, Any] | None:
        """The state a stopped run of this same evaluation left, or None (none, another evaluation's, unreadable)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a broken state is set aside, the evaluation starts afresh
            log.warning("the saved evaluation state %s cannot be read (%s); starting afresh", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            log.warning("the saved evaluation state %s has another layout; starting afresh", self.path)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("the saved evaluation state %s belongs to another evaluation (other weights, data or "
                        "settings); starting afresh", self.path)
            return None
        return state

    def save(self, state: dict[str, Any], force: bool = False) -> bool:
        """Write ``state`` if ``force`` or ``every_s`` seconds passed since the last write; True if written."""
        self._unsaved = True
        if not force and time.monotonic() - self._last_save < self.every_s:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, binary=True) as handle:
            torch.save({"version": STATE_VERSION, "fingerprint": self.fingerprint, **state}, handle)
        self._last_save = time.monotonic()
        self._unsaved = False
        return True

    @property
    def unsaved(self) -> bool:
        """Whether the last state handed to :meth:`save` is not yet on disk."""
        return self._unsaved

    def clear(self) -> None:
        """The evaluation is complete: its state is no longer needed."""
        self.path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass
