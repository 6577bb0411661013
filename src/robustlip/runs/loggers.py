"""The loggers of a run: built from ``conf/logger/``, history kept across resumes, wandb closed after every job.

Files come first (docs/architecture.md, "Files first"): the CSV logger is always on; wandb (online, offline or
disabled) is a view on top. Every entry point builds its loggers with :func:`build_loggers` and
closes wandb with :func:`finish_wandb` in a ``finally``.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.utils import instantiate
from omegaconf import DictConfig

from robustlip.core.errors import ConfigError

#: WANDB_MODE values that need neither network nor an API key.
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")


def build_loggers(cfg: DictConfig, **overrides: Any) -> list[Any]:
    """One Lightning logger per node of ``cfg.logger`` with a ``_target_``; ``overrides`` go to every
    logger that has such a key in its config (e.g. ``group=`` for wandb)."""
    check_loggers(cfg)
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None or not node.get("_target_"):
            continue
        extra = {key: value for key, value in overrides.items() if key in node}
        loggers.append(instantiate(node, **extra))
    return loggers


def check_loggers(cfg: DictConfig) -> None:
    """What can be checked about the loggers without building them (a wandb key): called first thing by the commands."""
    for node in (cfg.get("logger") or {}).values():
        if node is not None and str(node.get("_target_")).endswith("WandbLogger") and not node.get("offline", False):
            check_wandb_credentials()


def _wandb_netrc_key() -> bool:
    """Whether the .netrc file wandb reads (``$NETRC``, ``~/.netrc``, ``~/_netrc``) has an entry for its host."""
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.is_file():
            try:
                return netrc.netrc(str(path)).authenticators(host) is not None
            except (netrc.NetrcParseError, OSError):
                return False
    return False


def check_wandb_credentials() -> None:
    """Refuse ``logger=wandb`` before anything is written when wandb could only fail: online, with no API key.

    Without a key in ``WANDB_API_KEY`` or in the .netrc entry ``wandb login`` writes, ``wandb.init`` stops
    the run at its first step with a traceback; ``WANDB_MODE=offline`` (sync later) or ``disabled`` need none.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in WANDB_LOCAL_MODES or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return
    if os.environ.get("WANDB_API_KEY") or _wandb_netrc_key():
        return
    raise ConfigError(
        "logger=wandb: no W&B API key (neither WANDB_API_KEY nor a `wandb login` entry in ~/.netrc) and WANDB_MODE is "
        f"{mode or 'not set'}; run with WANDB_MODE=offline (sync later with `wandb sync <run dir>/wandb/offline-run-*`) "
        "or WANDB_MODE=disabled, or log in with `wandb login`"
    )


def finish_wandb() -> None:
    """Close the wandb run of this job, or the next job of a multirun logs into it (docs/architecture.md, "Known traps")."""
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


