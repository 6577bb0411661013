"""robustlip-eval: a checkpoint alone reproduces the training run's numbers, and any attack can replace its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from robustlip.evaluate import evaluate
from robustlip.runs.checkpoints import CheckpointError
from robustlip.train import train
from tests.conftest import FAST, compose_train_cfg, run_command
from tests.test_lipschitz import one_thread  # noqa: F401 - autouse fixture: one intra-op thread


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A seconds-long robustlip-train run: its directory (checkpoint + results.json)."""
    run_dir = tmp_path_factory.mktemp("train")
    train(compose_train_cfg(run_dir, [*FAST, "model.width=8", "data.test_size=96", "data.train_eval_size=48"]))
    return run_dir


def _eval_cfg(out_dir: Path, ckpt: Path, *overrides: str):
    return compose_train_cfg(out_dir, [f"ckpt_path={ckpt}", "progress=false", *overrides], "eval")


def test_eval_of_the_checkpoint_reproduces_the_numbers_training_wrote(trained, tmp_path):
    written = json.loads((trained / "results.json").read_text())["metrics"]
    assert len(written) == 8
    metrics = evaluate(_eval_cfg(tmp_path, trained / "checkpoints" / "last.ckpt", "sanity.max_batches=1"))
    assert {k: metrics[k] for k in written} == pytest.approx(written, abs=1e-9)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"] == pytest.approx(written, abs=1e-9)
    assert results["checkpoint"].endswith("last.ckpt")
    assert "passed" in results["sanity"], "robustlip-eval runs the gradient-masking checks by default"
    assert (tmp_path / "config.yaml").read_text().count("${") == 0


def test_any_attack_and_patched_data_replace_the_checkpoints_own(trained, tmp_path):
    cfg = _eval_cfg(tmp_path, trained / "checkpoints" / "last.ckpt", "attack=fgsm", "+patch.data.test_size=32",
                    "sanity=null", "evaluate_train=false", "lipschitz=local", "lipschitz.steps=2")
    metrics = evaluate(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["attack"].startswith("FGSM(") and "eps=0.1" in results["attack"], "ε comes from the checkpoint's data"
    assert "steps=2" in results["lipschitz"]
    assert results["examples"] == {"test": 32}
    assert "sanity" not in results and "train/acc" not in metrics


def test_a_missing_checkpoint_fails_with_the_key_named(tmp_path):
    with pytest.raises(CheckpointError, match="ckpt_path"):
        evaluate(_eval_cfg(tmp_path, tmp_path / "nope.ckpt"))


@pytest.mark.slow
def test_cli_eps_sweep_writes_the_curve_as_csv_and_png(trained, tmp_path):
    proc = run_command("robustlip-eval", [
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "eps_sweep=[0,0.1,0.4]", "sanity=null",
        "evaluate_train=false", "lipschitz=off", "progress=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = list((tmp_path / "logs" / "eval" / "runs").iterdir())
    with (run_dir / "eps_sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["eps"]) for r in rows] == [0.0, 0.1, 0.4]
    assert float(rows[0]["adv_acc"]) >= float(rows[-1]["adv_acc"])
    assert (run_dir / "eps_sweep.png").stat().st_size > 1000
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eps_sweep"]["points"][1]["adv_acc"] == pytest.approx(results["metrics"]["test/adv_acc"])
    assert "test/lipschitz" not in results["metrics"], "lipschitz=off leaves the estimate out"
