"""The loggers of a run: built from ``conf/logger/``, history kept across resumes, wandb closed after every job.

Files come first (DESIGN.md, "Results"): the CSV logger is always on; wandb (online, offline or
disabled) is a view on top. Every entry point builds its loggers with :func:`build_loggers` and
closes wandb with :func:`finish_wandb` in a ``finally``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


def build_loggers(cfg: DictConfig, **overrides: Any) -> list[Any]:
    """One Lightning logger per node of ``cfg.logger`` with a ``_target_``; ``overrides`` go to every
    logger that has such a key in its config (e.g. ``group=`` for wandb)."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None or not node.get("_target_"):
            continue
        extra = {key: value for key, value in overrides.items() if key in node}
        loggers.append(instantiate(node, **extra))
    return loggers


def finish_wandb() -> None:
    """Close the wandb run of this job, or the next job of a multirun logs into it (DESIGN.md traps)."""
    wandb = sys.modules.get("wandb")
    if wandb is None:  # never imported by this process: no run to close, no settings cached
        return
    if wandb.run is not None:
        wandb.finish()
    # wandb caches its settings (WANDB_MODE, WANDB_DIR) for the life of the process; without a teardown
    # the next job of an in-process multirun would keep the first job's mode, e.g. stay "disabled".
    wandb.teardown()


def keep_csv_history(loggers: list[Any]) -> list[Path]:
    """Move an earlier ``metrics.csv`` of each CSVLogger aside (``metrics.part1.csv``, ...) before fitting.

    Lightning's CSV writer deletes an existing metrics.csv when it starts, so a resumed run (same run
    dir) would lose the metrics logged before the interruption. Returns the files kept.
    """
    from pytorch_lightning.loggers import CSVLogger

    kept = []
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        current = Path(logger.log_dir) / "metrics.csv"
        if current.is_file():
            n = 1
            while (target := current.with_name(f"metrics.part{n}.csv")).exists():
                n += 1
            current.rename(target)
            kept.append(target)
    return kept


