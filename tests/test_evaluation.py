"""The evaluator as a library: three lines from a notebook, budgets that say what they cover, a stop within one
forward pass even inside AutoAttack, and a stopped (or killed) evaluation that resumes to the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from robustlip.attacks import PGD, AutoAttack
from robustlip.evaluation import EvaluationStopped, Evaluator, evaluate
from robustlip.evaluation.batches import seeded_subset
from robustlip.metrics import LocalLipschitz
from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint
from robustlip.train import train
from tests.conftest import FAST, compose_train_cfg
from tests.test_lipschitz import one_thread  # noqa: F401 - autouse fixture: one intra-op thread

EPS = 0.1
#: AutoAttack's first attack alone (APGD-CE, 100 iterations a batch): inside AutoAttack, and a second or so.
CHEAP_AA = {"version": "custom", "attacks": ["apgd-ce"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained for a few seconds (its checkpoint), its network and its data in batches of 8."""
    run_dir = tmp_path_factory.mktemp("train")
    fast = [o for o in FAST if not o.startswith("+trainer.limit_train_batches")]
    cfg = compose_train_cfg(run_dir, [*fast, "trainer.max_epochs=3", "+trainer.limit_train_batches=10", "model.width=8",
                                      "data.test_size=96", "data.train_eval_size=32", "data.eval_batch_size=8"])
    train(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(ckpt)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return ckpt, net_from_checkpoint(loaded, checkpoint_config(loaded)), datamodule


class Counting:
    """Counts the network's forward passes (a hook: the network, and so its fingerprint, stays the same);
    from ``stop_at`` passes on, ``stop()`` says a signal arrived."""

    def __init__(self, net: nn.Module, stop_at: int | None = None) -> None:
        self.net, self.stop_at, self.calls = net, stop_at, 0
        self.hook = net.register_forward_pre_hook(self.count)

    def count(self, module, inputs) -> None:
        self.calls += 1

    def stop(self) -> bool:
        return self.stop_at is not None and self.calls >= self.stop_at

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()


def _measure(net, datamodule, **options):
    attacks = {"pgd": PGD(EPS), "autoattack": AutoAttack(EPS, **CHEAP_AA)}
    return evaluate(net, datamodule, attacks, lipschitz=LocalLipschitz(EPS, steps=2), n_examples=40, verbose=False,
                    **options)


def test_three_lines_from_a_notebook(trained_digits_model):
    model, x, y = trained_digits_model
    result = evaluate(model, (x, y), PGD(EPS), n_examples=100, verbose=False)
    assert set(result.metrics) == {"test/acc", "test/adv_acc"}
    assert result.examples == {"test": 100}
    assert result.metrics["test/adv_acc"] < result.metrics["test/acc"]
    record = result.uncertainty["test/adv_acc"]
    assert record["n"] == 100 and record["ci95_low"] < result.metrics["test/adv_acc"] < record["ci95_high"]
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["metrics"] == result.metrics and payload["attack"].startswith("PGD(")
    assert payload["subset"] == "seeded" and payload["n_examples"] == 100


def test_subsets_first_points_or_seeded_draw(trained_digits_model):
    _, x, y = trained_digits_model
    evaluator = Evaluator(PGD(EPS), seed=3)
    first = evaluator.plan((x, y), n_examples=30, subset="first").loaders["test"].dataset
    seeded = evaluator.plan((x, y), n_examples=30).loaders["test"].dataset
    assert list(first.indices) == list(range(30)), "RobustBench's rule: the first n_examples points"
    assert list(seeded.indices) == list(seeded_subset(first.dataset, 30, 3).indices) != list(range(30))


def test_the_training_set_has_its_own_budget_bounded_for_expensive_attacks(trained):
    _, _, datamodule = trained
    cheap = Evaluator(PGD(EPS)).plan(datamodule, n_examples=20)
    assert len(cheap.loaders["train"].dataset) == 32, "cheap attacks measure the whole training set, as the paper"
    expensive = Evaluator({"pgd": PGD(EPS), "autoattack": AutoAttack(EPS)})
    bounded = expensive.plan(datamodule, n_examples=20)
    assert len(bounded.loaders["train"].dataset) == 20, "AutoAttack sees as many training points as test points"
    text = bounded.describe(expensive)
    assert "train: 20 points of 32 (seeded subset), bounded because autoattack is expensive" in text
    assert "test: 20 points of 96 (seeded subset)" in text
    assert len(expensive.plan(datamodule, n_examples=20, train_examples=None).loaders["train"].dataset) == 32
    assert len(expensive.plan(datamodule, train_examples=8).loaders["train"].dataset) == 8
    from robustlip.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^train_examples=33 is not allowed; the train set has 32 examples"):
        expensive.plan(datamodule, train_examples=33)


def test_a_stop_inside_autoattack_ends_the_evaluation_at_the_next_forward_pass(trained):
    _, net, datamodule = trained
    with Counting(net) as whole:
        _measure(net, datamodule, train=False)
    # PGD, the Lipschitz search and the clean pass of the first batches take a few dozen forward passes; AutoAttack's
    # APGD runs 100 iterations per batch: stop at a pass well inside it.
    stop_at = whole.calls // 3
    with Counting(net, stop_at=stop_at) as counting, pytest.raises(EvaluationStopped) as stopped:
        _measure(net, datamodule, train=False, stop=counting.stop)
    assert counting.calls == stop_at, "no forward pass ran after the stop was requested"
    partial = stopped.value.result
    assert not partial.complete and partial.examples["test"] % 8 == 0 and partial.examples["test"] < 40


def test_a_stopped_evaluation_resumes_to_the_numbers_of_an_uninterrupted_one(trained, tmp_path, caplog):
    _, net, datamodule = trained
    reference = _measure(net, datamodule)
    state = tmp_path / "state"
    kept = []
    for stop_at in (150, 500):  # stopped twice inside a batch's AutoAttack, after some metrics took their share
        with Counting(net, stop_at=stop_at) as counting, pytest.raises(EvaluationStopped) as stopped:
            _measure(net, datamodule, stop=counting.stop, resume_dir=str(state))
        kept.append(sum(stopped.value.result.examples.values()))
        assert any(state.glob("state-*.pt")), "what was measured is kept on disk"
    assert 0 < kept[0] < kept[1] < 72, f"each run continued from the last and stopped before the end: {kept}"
    with caplog.at_level("INFO"):
        resumed = _measure(net, datamodule, resume_dir=str(state))
    assert "resuming the evaluation where it stopped" in caplog.text
    assert resumed.metrics == reference.metrics
    assert resumed.uncertainty == reference.uncertainty
    assert resumed.examples == reference.examples == {"test": 40, "train": 32}
    assert resumed.sections == reference.sections
    assert not state.exists(), "a complete evaluation leaves no state behind"
    # A state of another evaluation (another seed here) is set aside, not mixed in.
    with Counting(net, stop_at=150) as counting, pytest.raises(EvaluationStopped):
        _measure(net, datamodule, stop=counting.stop, resume_dir=str(state))
    other = evaluate(net, datamodule, {"pgd": PGD(EPS), "autoattack": AutoAttack(EPS, **CHEAP_AA)},
                     lipschitz=LocalLipschitz(EPS, steps=2), n_examples=40, seed=1, verbose=False, resume_dir=str(state))
    assert "belongs to another evaluation" in caplog.text
    assert other.examples == {"test": 40, "train": 32}


def test_robustbench_card_carries_the_intervals_the_points_and_the_flags(trained):
    _, net, datamodule = trained
    result = evaluate(net, datamodule, AutoAttack(EPS, **CHEAP_AA), n_examples=24, subset="first", train=False,
                      verbose=False)
    card = result.robustbench_json(eps=EPS, norm="inf", dataset="digits", name="digits-cnn", subset="first")
    assert card["clean_acc"] == str(round(result.metrics["test/acc"], 2))
    assert card["autoattack_acc"] == str(round(result.metrics["test/adv_acc"], 2))
    assert (card["threat_model"], card["eps"], card["n_examples"], card["subset"]) == ("Linf", "0.1", 24, "first")
    low, high = card["autoattack_acc_ci95"]
    assert low <= result.metrics["test/adv_acc"] <= high and card["flags"] == {}


def _eval_cli(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("robustlip-eval")
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pattern: str, folder: Path, timeout: float = 300.0) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = list(folder.rglob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} in {folder} after {timeout} s")


@pytest.mark.slow
def test_a_killed_and_a_terminated_robustlip_eval_continue_when_run_again(trained, tmp_path):
    ckpt, _, _ = trained
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTLIP_LOG_DIR": str(tmp_path / "logs")}
    args = [f"ckpt_path={ckpt}", "attacks=[pgd,autoattack]", "attacks.autoattack.version=custom",
            # Square's 5,000 queries make each batch take a while: the signals arrive inside AutoAttack.
            "attacks.autoattack.attacks=[apgd-ce,square]", "n_examples=40", "sanity=null", "lipschitz=local",
            "lipschitz.steps=2",
            "progress=false"]
    reference = _eval_cli([*args, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path, env)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-2000:]
    expected = json.loads((tmp_path / "reference" / "results.json").read_text())

    # SIGKILL after the first batches are on disk: nothing runs at exit, the state on disk is all that is left.
    killed = _eval_cli(args, tmp_path, env)
    state = _wait_for("state-rank0of1.pt", tmp_path / "logs")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    # SIGTERM while it continues: it stops within seconds, keeps what it measured and says how to go on.
    saved = state.stat().st_mtime_ns
    terminated = _eval_cli(args, tmp_path, env)
    end = time.monotonic() + 300
    while state.stat().st_mtime_ns == saved and time.monotonic() < end:  # it resumed and measured more
        time.sleep(0.2)
    terminated.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = terminated.wait(timeout=120)
    stopped_in = time.monotonic() - started
    err = terminated.stderr.read()
    assert code == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "interrupted by SIGTERM during the evaluation" in lines[0]
    assert "run the same command again to continue where it stopped" in lines[0]
    assert stopped_in < 30, f"took {stopped_in:.1f} s to stop"
    # The same command again: it finds the stopped run (same overrides) and finishes it there.
    finished = _eval_cli(args, tmp_path, env)
    assert finished.wait(timeout=600) == 0, finished.stderr.read()[-2000:]
    runs = [d for d in (tmp_path / "logs" / "eval" / "runs").iterdir() if (d / "results.json").exists()]
    assert len(runs) == 1 and runs[0] == state.parent.parent, "continued in the stopped run's own folder"
    resumed = json.loads((runs[0] / "results.json").read_text())
    assert resumed["metrics"] == expected["metrics"]
    assert resumed["uncertainty"] == expected["uncertainty"]
    assert not state.exists()


def test_report_puts_an_evaluated_foreign_model_beside_the_trained_runs(trained, tmp_path):
    """A network robustlip did not train (here the same digits CNN as a plain state dict) is a row of its own."""
    from robustlip.evaluate import evaluate as evaluate_command
    from robustlip.report import build_report, load_config

    ckpt, net, _ = trained
    torch.save(net.state_dict(), tmp_path / "net.pt")
    same = ["data=digits", "data.test_size=96", "data.train_eval_size=32", "data.eval_batch_size=8", "sanity=null",
            "progress=false", "attack=pgd", "lipschitz=local", "seed=0"]
    own = evaluate_command(compose_train_cfg(tmp_path / "evals" / "own", [f"ckpt_path={ckpt}", *same], "eval"))
    foreign = evaluate_command(compose_train_cfg(tmp_path / "evals" / "foreign", [
        "source=state_dict", "source.arch._target_=robustlip.models.DigitsCNN", "+source.arch.width=8",
        f"source.weights={tmp_path / 'net.pt'}", *same], "eval"))
    assert foreign == own, "the same network, data and seed: the same numbers, whatever the source"
    build_report(load_config([str(tmp_path / "evals"), f"out_dir={tmp_path / 'report'}", "table_by=[data.name]"]))
    text = (tmp_path / "report" / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines()
            if line.startswith(("| Natural ", "| DigitsCNN "))}
    assert set(rows) == {"Natural", "DigitsCNN"}, text
    assert rows["Natural"][4:] == rows["DigitsCNN"][4:], "one table, the same numbers in both rows"
