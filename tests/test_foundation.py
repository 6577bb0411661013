"""The foundation: configs compose and instantiate, a quickstart run writes every file it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from robustlip.runs.config import config_dir
from robustlip.train import build_module, train
from tests.conftest import FAST, run_command

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and not p.name.startswith("_"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "objective", "attack", "optimizer", "scheduler", "trainer", "logger", "callbacks"])
def test_every_option_of_every_group_composes_and_instantiates(train_cfg, group):
    for option in _options(group):
        cfg = train_cfg([f"{group}={option}"])
        node = cfg[group]
        if group in ("logger", "callbacks"):
            assert all("_target_" in n for n in node.values() if n is not None), option
            continue
        if group == "trainer":
            assert node._target_ == "pytorch_lightning.Trainer"
            continue
        if not node.get("_target_"):
            continue
        if group == "model":
            # Every network takes a batch at its dataset's shape (the matching data config is composed by model presets).
            continue
        obj = instantiate(node)
        if group == "optimizer":
            assert callable(obj)
        assert obj is not None


def test_experiment_presets_compose(train_cfg):
    for option in _options("experiment"):
        cfg = train_cfg([f"experiment={option}"])
        assert cfg.data._target_


def test_misspelled_key_fails_before_training(train_cfg):
    with pytest.raises(ConfigCompositionException):
        train_cfg(["trainer.max_epoch=3"])


def test_unknown_group_option_fails_with_hydra_message(train_cfg):
    with pytest.raises(ConfigCompositionException, match="objective"):
        train_cfg(["objective=does_not_exist"])


def test_quickstart_slice_writes_every_promised_file(train_cfg, tmp_path):
    metrics = train(train_cfg(FAST))
    for key in ("train/acc", "test/acc", "test/adv_acc", "gap"):
        assert key in metrics
        assert 0.0 <= metrics[key] <= 100.0 or key == "gap"
    assert metrics["gap"] == pytest.approx(metrics["train/acc"] - metrics["test/acc"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["test/adv_acc"] == pytest.approx(metrics["test/adv_acc"])
    assert (tmp_path / "config.yaml").read_text().count("${") == 0, "config.yaml must be resolved"
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert any(p.name.startswith("best-") for p in (tmp_path / "checkpoints").iterdir())
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_checkpoint_loads_with_weights_only_and_rebuilds_the_net(train_cfg, tmp_path):
    cfg = train_cfg(FAST)
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    assert config["objective"]["name"] == "natural"
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"])


@pytest.mark.slow
def test_cli_override_run_from_an_unrelated_directory(tmp_path):
    proc = run_command(
        "robustlip-train",
        ["trainer.max_epochs=1", "optimizer.lr=0.05", "seed=1", "+trainer.limit_train_batches=2",
         "data.train_eval_size=32", "data.test_size=32"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/adv_acc" in proc.stdout
    (results,) = list((tmp_path / "logs").rglob("results.json"))
    assert json.loads(results.read_text())["metrics"]["test/acc"] >= 0


def test_cli_rejects_misspelled_key_before_training(tmp_path):
    proc = run_command("robustlip-train", ["trainer.max_epoch=3"], tmp_path)
    assert proc.returncode != 0
    assert "max_epoch" in proc.stderr
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_user_config_dir_is_searched(tmp_path):
    user_conf = tmp_path / "myconf" / "optimizer"
    user_conf.mkdir(parents=True)
    (user_conf / "my_sgd.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nlr: 0.123\n")
    exe = Path(sys.executable).with_name("robustlip-train")
    proc = subprocess.run(
        [str(exe), "--config-dir", str(tmp_path / "myconf"), "optimizer=my_sgd", "--cfg", "job"],
        cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lr: 0.123" in proc.stdout


def test_wandb_offline_and_disabled_need_no_network(train_cfg, tmp_path, monkeypatch):
    for mode in ("disabled", "offline"):
        monkeypatch.setenv("WANDB_MODE", mode)
        monkeypatch.setenv("WANDB_DIR", str(tmp_path))
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        cfg = train_cfg([*FAST, "logger=wandb", "tags=[unit]"])
        assert cfg.logger.wandb.group == "digits-natural"
        train(cfg)
        import wandb

        assert wandb.run is None, "every job must call wandb.finish()"
        offline_runs = list(tmp_path.rglob("offline-run-*"))
        assert bool(offline_runs) == (mode == "offline"), (mode, offline_runs)


def test_a_non_editable_install_finds_its_configs(tmp_path):
    """`pip install .` (a wheel, no source tree): conf/ must ship inside the package as robustlip.conf."""
    root = Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "-v", "-w", str(tmp_path / "wheel")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    # The build is silent: every conf/ folder is a declared package, the license an SPDX string.
    noise = [line for line in (build.stdout + build.stderr).splitlines()
             if "BuildBackendWarning" in line or "SetuptoolsDeprecationWarning" in line or "is absent from the" in line]
    assert not noise, noise[:5]
    (wheel,) = (tmp_path / "wheel").glob("robustlip-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import robustlip, hydra\n"
        "from hydra import compose, initialize_config_module\n"
        "from robustlip.runs.config import config_dir\n"
        "with initialize_config_module('robustlip.conf', version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['objective=trades', 'experiment=table4_svhn'])\n"
        "print(robustlip.__file__)\nprint(config_dir())\nprint(cfg.objective.name, cfg.data.name)\n"
    )
    # PYTHONPATH comes before the editable install of this checkout, so the wheel's copy is imported.
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, conf, names = proc.stdout.strip().splitlines()[-3:]
    assert Path(module_file).is_relative_to(site) and Path(conf).is_relative_to(site), proc.stdout
    assert names == "trades svhn"
