"""What every command builds from its config before it measures: the data and the evaluation attack.

Both are built here once for robustlip-train, robustlip-eval, robustlip-separation and the sweep's
pre-flight check, so each rule has one owner:

* :func:`prepare_data` loads the splits now, so a missing dataset or a too large ``data.test_size``
  fails as one ``data.data_dir=...`` line before anything is written (docs/reliability.md);
* :func:`build_attack` refuses an evaluation attack whose ε is not ``data.eps`` (the ε of the training
  objective, the Lipschitz estimate and the paper's tables) unless ``allow_eps_mismatch=true``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from robustlip.core.errors import ConfigError, check_attack_eps
from robustlip.runs.config import instantiate_group

if TYPE_CHECKING:
    import pytorch_lightning as pl


def prepare_data(cfg: DictConfig) -> pl.LightningDataModule:
    """Build the DataModule of ``cfg.data`` and load its splits now, so a missing dataset fails before anything is written."""
    datamodule = instantiate_group(cfg, "data")
    try:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            datamodule.prepare_data()
        datamodule.setup("fit")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"data.data_dir={str(cfg.data.get('data_dir'))!r}: {exc}") from exc
    return datamodule


def build_attack(cfg: DictConfig, allow_eps_mismatch: bool = False, data_key: str = "data.eps") -> Any:
    """The attack of ``cfg.attack``; its ε must be ``cfg.data.eps`` unless ``allow_eps_mismatch``.

    ``data_key`` is how the user moves ``data.eps`` with this command (robustlip-eval of a checkpoint
    without ``data=``: ``+patch.data.eps``), so the error names the override that fixes it.
    """
    attack = instantiate_group(cfg, "attack")
    eps = getattr(attack, "eps", None)
    if eps is not None:
        check_attack_eps(eps, cfg.data.eps, allow_eps_mismatch, data_key=data_key)
    return attack
