"""Reliability (docs/reliability.md): interrupted runs resume to the same numbers, bad input fails early in one line,
numerical faults keep the last good checkpoint, checkpoints are safe to load and secrets stay out of files.

Everything here uses the real CLI (``robustlip-train`` as a subprocess, or its ``main()`` in-process with
a real argv), real signals and real files; nothing of Lightning is mocked. Settings are tiny (digits,
a few batches) so the section stays within about two minutes on two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import Dataset

from robustlip.data.base import DatasetSplits, RobustDataModule
from robustlip.module import NonFiniteWeightsError
from robustlip.objectives.base import ObjectiveOutput
from robustlip.objectives.natural import Natural
from robustlip.runs.checkpoints import CheckpointError, check_compatible, load_checkpoint, resolve_ckpt_path
from robustlip.runs.config import to_plain_dict
from robustlip.train import build_module, train
from tests.conftest import FAST, TORCH_THREADS, error_lines, run_cli

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("robustlip-train"))


# -- helpers: objectives and a folder dataset that tests plug in through the config ----------------
class NaNAfter(Natural):
    """Natural training whose loss turns NaN after ``after`` calls (a loss that blows up mid-run)."""

    def __init__(self, after: int, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__(fidelity=fidelity, name=name)
        self.after, self.calls = int(after), 0

    def forward(self, model: nn.Module, x, y) -> ObjectiveOutput:
        out = super().forward(model, x, y)
        self.calls += 1
        if self.calls > self.after:
            out.loss = out.loss * float("nan")
            out.parts["natural"] = out.parts["natural"] * float("nan")
        return out


class PoisonGradients(Natural):
    """A finite loss whose gradient is NaN after ``after`` calls: d sqrt(z)/dz = inf at z = 0, times 0."""

    def __init__(self, after: int, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__(fidelity=fidelity, name=name)
        self.after, self.calls = int(after), 0

    def forward(self, model: nn.Module, x, y) -> ObjectiveOutput:
        out = super().forward(model, x, y)
        self.calls += 1
        if self.calls > self.after:
            zero = 0.0 * sum(p.sum() for p in model.parameters())
            out.loss = out.loss + torch.sqrt(zero)  # value unchanged and finite; gradient NaN
        return out


class FolderDigits(RobustDataModule):
    """A dataset read from ``data_dir`` with torchvision's ImageFolder, as folder-based datasets are."""

    name = "folder_digits"
    input_shape = (1, 8, 8)

    def build_datasets(self) -> DatasetSplits:
        from torchvision.datasets import ImageFolder

        train: Dataset = ImageFolder(str(self.data_dir / "train"))
        return DatasetSplits(train=train, train_eval=train, test=train)


class Evil:
    """An object whose unpickling runs code (writes a marker file): what weights_only must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code ran",))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir but Hydra's own .hydra/ and log (Hydra writes those before any task code)."""
    return {
        str(p.relative_to(run_dir)): _digest(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"
    }


# -- bad input: one line, before training, nothing lost ---------------------------------------------
def _module_checkpoint(train_cfg, path: Path, overrides: list[str]) -> Path:
    """A real checkpoint file (state_dict + the run config, as RobustClassifier stores them) of another net."""
    cfg = train_cfg(overrides)
    module = build_module(cfg)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": to_plain_dict(cfg)}}, path)
    return path


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    """A run directory that already holds an earlier run's results, config and checkpoint."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"metrics": {"test/acc": 97.5}}))
    (run_dir / "config.yaml").write_text("seed: 123\n")
    (run_dir / "checkpoints" / "best-epoch007.ckpt").write_bytes(b"earlier best checkpoint")
    return run_dir


BAD_INPUTS = {
    # id: (overrides, words the one error line must contain)
    "negative_eps": (["attack.eps=-0.1"], ["attack.eps=-0.1", ">= 0"]),
    "negative_data_eps": (["data.eps=-0.3"], ["data.eps=-0.3", ">= 0"]),
    "negative_beta": (["objective=trades", "objective.beta=-1"], ["objective.beta=-1", ">= 0"]),
    "unknown_norm": (["attack.norm=l3"], ["attack.norm='l3'", "'inf', '2'"]),
    "zero_steps": (["attack.steps=0"], ["attack.steps=0", "integer >= 1"]),
    "unknown_resume_mode": (["resume=sometimes"], ["resume='sometimes'", "'never', 'auto'"]),
    "ckpt_path_last_missing": (["ckpt_path=last"], ["ckpt_path=last", "no ", "last.ckpt"]),
    "missing_checkpoint_file": (["ckpt_path=/nonexistent/x.ckpt"], ["ckpt_path='/nonexistent/x.ckpt'", "does not exist"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_before_training_and_keeps_earlier_files(case, earlier_run, tmp_path, capsys, monkeypatch):
    overrides, words = BAD_INPUTS[case]
    before = _snapshot(earlier_run)
    code, _, err = run_cli("robustlip-train", [*overrides, f"hydra.run.dir={earlier_run}"], tmp_path, capsys, monkeypatch)
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    for word in words:
        assert word in line, line
    assert "Traceback" not in err
    assert _snapshot(earlier_run) == before, "a failing run must not touch what an earlier run wrote"
    assert not list(earlier_run.rglob("last.ckpt")) and not (earlier_run / "csv").exists()


def test_bad_checkpoints_are_refused_with_one_line(train_cfg, earlier_run, tmp_path, capsys, monkeypatch):
    """Another architecture, another number of classes, truncated, garbage, empty, pickled code."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    wide = _module_checkpoint(train_cfg, ckpts / "wide.ckpt", ["model.width=16"])
    five = _module_checkpoint(train_cfg, ckpts / "five.ckpt", ["model.num_classes=5"])
    truncated = ckpts / "truncated.ckpt"
    truncated.write_bytes(wide.read_bytes()[: wide.stat().st_size // 2])
    garbage = ckpts / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint " * 100)
    empty = ckpts / "empty.ckpt"
    empty.write_bytes(b"")
    marker = tmp_path / "code-ran.txt"
    evil = ckpts / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Evil(str(marker))}, evil)
    cases = {
        wide: ["another shape", "[16", "[32"],
        five: ["model.num_classes=5", "model.num_classes=10"],
        truncated: ["truncated or corrupt"],
        garbage: ["truncated or corrupt"],
        empty: ["is empty"],
        evil: ["refused", "arbitrary pickled code", "pathlib.PosixPath", "weights_only=True"],
    }
    before = _snapshot(earlier_run)
    for path, words in cases.items():
        code, _, err = run_cli("robustlip-train", [f"ckpt_path={path}", f"hydra.run.dir={earlier_run}"], tmp_path, capsys, monkeypatch)
        assert code == 2, (path.name, err[-2000:])
        (line,) = error_lines(err)
        assert f"ckpt_path='{path}'" in line or "ckpt_path holds" in line, line
        for word in words:
            assert word in line, (path.name, line)
        assert "Traceback" not in err
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert _snapshot(earlier_run) == before
    # The same refusal through the helper robustlip-eval uses.
    with pytest.raises(CheckpointError, match="arbitrary pickled code"):
        load_checkpoint(evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="model.num_classes"):
        check_compatible(torch.load(five, weights_only=True), train_cfg([]))


def test_missing_dataset_folder_is_one_line_naming_data_dir(earlier_run, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-dataset"
    code, _, err = run_cli("robustlip-train", 
        [f"data._target_={FolderDigits.__module__}.FolderDigits", f"data.data_dir={missing}", f"hydra.run.dir={earlier_run}"],
        tmp_path, capsys, monkeypatch,
    )
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    assert f"data.data_dir='{missing}'" in line and "No such file or directory" in line, line
    assert "Traceback" not in err


def test_unwritable_output_directory_is_one_line(earlier_run, tmp_path, capsys, monkeypatch):
    """A regular file where a directory should be: unwritable even for root (chmod is not)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli("robustlip-train", [f"hydra.run.dir={blocker}/run"], tmp_path, capsys, monkeypatch)
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    assert "hydra.run.dir" in line and str(blocker) in line and "Not a directory" in line, line
    before = _snapshot(earlier_run)
    code, _, err = run_cli("robustlip-train", [f"hydra.run.dir={earlier_run}", f"paths.output_dir={blocker}/out"], tmp_path, capsys, monkeypatch)
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    assert f"paths.output_dir='{blocker}/out' is not writable" in line, line
    assert _snapshot(earlier_run) == before


def test_resolve_ckpt_path_last_and_auto(tmp_path):
    assert resolve_ckpt_path(None, "never", tmp_path) is None
    assert resolve_ckpt_path(None, "auto", tmp_path) is None, "auto starts fresh when there is nothing to resume"
    with pytest.raises(CheckpointError, match="ckpt_path=last"):
        resolve_ckpt_path("last", "never", tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resolve_ckpt_path("last", "never", tmp_path) == str(last)
    assert resolve_ckpt_path(None, "auto", tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_2.ckpt"  # Lightning's SLURM requeue checkpoint, newer than last.ckpt
    hpc.write_bytes(b"y")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert resolve_ckpt_path(None, "auto", tmp_path) == str(hpc)
    assert resolve_ckpt_path("/some/where.ckpt", "auto", tmp_path) == "/some/where.ckpt", "an explicit path wins"


# -- numerical faults ---------------------------------------------------------------------------------
def test_nan_loss_stops_naming_step_and_parts_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.syspath_prepend(str(REPO))
    code, _, err = run_cli("robustlip-train", 
        [*FAST, "trainer.max_epochs=2", f"objective._target_={NaNAfter.__module__}.NaNAfter", "+objective.after=4",
         f"hydra.run.dir={run_dir}"],
        tmp_path, capsys, monkeypatch,
    )
    assert code == 1, err[-2000:]
    (line,) = error_lines(err)
    assert "training loss is nan at epoch 1, global step 4 (batch 1)" in line, line
    assert "loss parts: natural=nan" in line and "last good checkpoint is kept" in line, line
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 3), "last.ckpt must be the end of the last good epoch"
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    assert not (run_dir / "results.json").exists()


def test_non_finite_weights_never_overwrite_last_checkpoint(train_cfg, tmp_path):
    """A finite loss with a NaN gradient on the last batch: the epoch-end save must be refused."""
    train(train_cfg([*FAST, "evaluate=false"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    good = _digest(last)
    cfg = train_cfg([*FAST, "evaluate=false", "trainer.max_epochs=2", "ckpt_path=last",
                     f"objective._target_={PoisonGradients.__module__}.PoisonGradients", "+objective.after=2"])
    with pytest.raises(NonFiniteWeightsError, match=r"weights became non-finite .* epoch 1, global step 6"):
        train(cfg)
    assert _digest(last) == good, "last.ckpt was overwritten with NaN weights"


# -- determinism, safety, secrets ------------------------------------------------------------------------
DETERMINISM = [*FAST, "model.dropout=0.3", "attack.steps=3", "data.test_size=64", "data.train_eval_size=64"]


def test_same_seed_same_results_different_seed_different_results(train_cfg, tmp_path):
    def run(seed: int) -> tuple[dict, dict]:
        metrics = train(train_cfg([*DETERMINISM, f"seed={seed}"]))
        state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
        assert json.loads((tmp_path / "results.json").read_text())["metrics"] == pytest.approx(metrics)
        return metrics, state

    first, w1 = run(0)
    second, w2 = run(0)
    other, w3 = run(1)
    assert first == second, "same seed, different results.json"
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1), "seed does not reach the model"
    assert first != other, "different seeds gave identical results"


def test_checkpoints_load_weights_only_and_no_secret_is_written(train_cfg, tmp_path, monkeypatch):
    secret = "secret-xyz-0123456789"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # A user config that refers to the key (e.g. to pass it on) must not write it either.
    cfg = train_cfg([*FAST, "logger=wandb", "+wandb_api_key=${oc.env:WANDB_API_KEY}", "+tags_note=k-${oc.env:WANDB_API_KEY}"])
    train(cfg)
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        assert torch.load(ckpt, weights_only=True)["state_dict"], ckpt  # plain tensors and numbers only
        load_checkpoint(ckpt)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "the wandb offline run was not written"
    leaks = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaks, f"the API key was written to {leaks}"
    assert "<redacted>" in (tmp_path / "config.yaml").read_text()


# -- interruption: SIGTERM and SIGKILL, resumed to the same results.json ----------------------------------
#: Two epochs of 6 batches after which the interrupted runs must reach the same numbers; dropout makes
#: the training RNG matter, a random-start PGD makes the evaluation RNG matter.
RESUME = ["trainer.max_epochs=3", "data.batch_size=16", "+trainer.limit_train_batches=6", "+trainer.limit_val_batches=2",
          "data.train_eval_size=64", "data.test_size=64", "attack.steps=3", "model.dropout=0.2", "seed=3",
          "trainer.enable_progress_bar=false", "~callbacks.progress_bar"]


class SignalAt(pl.Callback):
    """Send this process a real signal after training batch ``batch`` of epoch ``epoch`` (as SLURM would)."""

    def __init__(self, epoch: int, batch: int, signum: int = int(signal.SIGTERM)) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    """results.json metrics and final weights of the run the interrupted ones must reproduce."""
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_train_cfg

    out = tmp_path_factory.mktemp("uninterrupted")
    metrics = train(compose_train_cfg(out, RESUME))
    GlobalHydra.instance().clear()
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == pytest.approx(metrics)
    return results, load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]


def _assert_same_run(run_dir: Path, uninterrupted: tuple[dict, dict]) -> None:
    expected, weights = uninterrupted
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["epochs_trained"] == expected["epochs_trained"] == 3
    final = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(weights[k], final[k]) for k in weights), "resumed weights differ from the uninterrupted run"
    assert resumed["metrics"] == expected["metrics"]


def test_sigterm_mid_epoch_saves_a_checkpoint_and_ckpt_path_last_resumes_exactly(uninterrupted, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    run_dir = tmp_path / "run"
    signal_at = [f"+callbacks.sigterm._target_={SignalAt.__module__}.SignalAt", "+callbacks.sigterm.epoch=1",
                 "+callbacks.sigterm.batch=2"]
    code, _, err = run_cli("robustlip-train", [*RESUME, *signal_at, f"hydra.run.dir={run_dir}"], tmp_path, capsys, monkeypatch)
    assert code == 143, err[-3000:]
    (line,) = error_lines(err)
    assert "interrupted by SIGTERM" in line and "ckpt_path=last" in line and str(run_dir) in line, line
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert (saved["epoch"], saved["global_step"], progress["completed"]) == (1, 9, 3), "not the state SIGTERM stopped at"
    assert not (run_dir / "results.json").exists()

    code, _, err = run_cli("robustlip-train", [*RESUME, f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    _assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_sigkill_after_an_epoch_resumes_with_resume_auto_exactly(uninterrupted, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    # The subprocess computes with the in-process runs' thread count: float sums follow it.
    env = {**os.environ, "ROBUSTLIP_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": str(TORCH_THREADS)}
    proc = subprocess.Popen([EXE, *RESUME, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not last.exists():  # atomic saves: once it exists, it is complete
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)["global_step"]
    assert killed_at < 18 and not (run_dir / "results.json").exists(), "killed too late to test anything"

    code, _, err = run_cli("robustlip-train", [*RESUME, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    _assert_same_run(run_dir, uninterrupted)
