"""Shared fixtures: Hydra composition of the real config tree, tiny models and batches."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from sklearn.datasets import load_digits
from torch import Tensor, nn

#: Intra-op threads of every in-process run. Float sums follow the thread count, so a test that
#: compares an in-process run with a subprocess (tests/test_reliability.py) gives the subprocess the same.
TORCH_THREADS = 2
torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Give back the thread count after each test: a test that drops to one thread must not change the
    float rounding of the tests after it."""
    yield
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Give back the root logger's handlers after each test.

    A command run in-process (``main([...])``) lets Hydra configure logging with a handler on the
    stderr of that moment, which pytest closes after the test; a later test would then see
    "--- Logging error ---" tracebacks in its captured stderr.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def compose_train_cfg(tmp_path: Path, overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml as `robustlip-train` would, writing into ``tmp_path``.

    The Hydra runtime is populated (HydraConfig) so `${hydra:...}` interpolations resolve as in a real run.
    """
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustlip.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.job.num = 0
        cfg.hydra.runtime.choices = cfg.hydra.runtime.get("choices", {})
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path) -> Iterator:
    """A factory: ``train_cfg(["objective=at", ...])`` -> composed config writing into tmp_path."""

    def make(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
        return compose_train_cfg(tmp_path, overrides, config_name)

    yield make
    GlobalHydra.instance().clear()


#: Overrides that make an end-to-end run take seconds: tiny data slice, one epoch, no progress bar.
FAST = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "data.train_eval_size=64",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
]


@pytest.fixture(scope="module")
def trained_digits_model() -> tuple[nn.Module, Tensor, Tensor]:
    """A small CNN trained naturally for a few seconds on 8x8 digits, and 120 held-out images."""
    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]
    labels = torch.from_numpy(digits.target.astype(np.int64))
    torch.manual_seed(0)
    order = torch.randperm(len(labels))
    train_idx, test_idx = order[:1500], order[1500:1620]
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):
        for batch in train_idx.split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()
    x, y = images[test_idx], labels[test_idx]
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9, "the fixture model must be accurate"
    return model, x, y


ENTRIES = {"robustlip-train": "robustlip.train", "robustlip-eval": "robustlip.evaluate",
           "robustlip-separation": "robustlip.separation", "robustlip-visualize": "robustlip.visualize",
           "robustlip-staircase": "robustlip.staircase"}


def run_cli(command: str, args: list[str], tmp_path: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """``command args`` through its console entry in this process; (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(ENTRIES[command]).main
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTLIP_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [command, *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err


#: Where the console commands of this venv live (robustlip-train, robustlip-eval, ...).
BIN = Path(sys.executable).parent


def run_command(command: str, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``command args`` as a user runs it: its own process started in ``cwd``, run directories under ``cwd/logs``,
    wandb off, one intra-op thread (a second spinning thread on the 2-core machine slows tiny nets many times);
    ``env`` adds or replaces variables. ``command`` is a console command of this venv (``robustlip-train``) or
    a Python script's path. Never raises on a non-zero exit: the test reads ``returncode``."""
    full_env = {**os.environ, "ROBUSTLIP_LOG_DIR": str(Path(cwd) / "logs"), "WANDB_MODE": "disabled",
                "OMP_NUM_THREADS": "1", **(env or {})}
    argv = [sys.executable, command] if command.endswith(".py") else [str(BIN / command)]
    return subprocess.run([*argv, *args], cwd=cwd, env=full_env, check=False, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
