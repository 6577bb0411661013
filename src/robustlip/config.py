"""Where the Hydra configs live and how a run directory is prepared."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: conf/ ships inside the package as `robustlip.conf`; this reaches it in a checkout and when installed.
CONFIG_PATH = "pkg://robustlip.conf"


def config_dir() -> Path:
    """The directory of the packaged config tree (for --config-dir users and for tests)."""
    return Path(str(files("robustlip.conf")))


def to_plain_dict(cfg: DictConfig) -> dict:
    """The config resolved to plain Python values: what checkpoints and results.json may hold."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def save_resolved_config(cfg: DictConfig, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(to_plain_dict(cfg))))
    return path
