"""A researcher's first hour: every mistake gets the right one-line answer and leaves nothing behind.

The commands run through their real console entries (``main()`` with a real argv, in this process, so
the checks cost no interpreter start-up); ``tests/test_reliability.py`` has the faults of long runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from robustlip.attacks.base import Attack
from tests.conftest import error_lines, run_cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A seconds-long training run's last.ckpt (digits, a narrow CNN)."""
    from hydra.core.global_hydra import GlobalHydra

    from robustlip.train import train
    from tests.conftest import FAST, compose_train_cfg

    run_dir = tmp_path_factory.mktemp("trained")
    train(compose_train_cfg(run_dir, [*FAST, "model.width=8", "data.test_size=32", "data.train_eval_size=32",
                                      "attack.steps=2", "callbacks.robust_evaluation.lipschitz.steps=2"]))
    GlobalHydra.instance().clear()
    return run_dir / "checkpoints" / "last.ckpt"


# -- 2. a misspelled option or key: Hydra's own message, exit 2 (bad input), for every command --------------
MISSPELLED = [
    ("robustlip-train", ["objective=trade"], "objective/trade", ["trades", "natural", "rst"]),
    ("robustlip-train", ["data=digit"], "data/digit", ["digits", "fashion_mnist"]),
    ("robustlip-train", ["trainer.max_epoch=3"], "max_epoch", []),
    ("robustlip-eval", ["ckpt_path=x.ckpt", "attack=pgdd"], "attack/pgdd", ["pgd", "fgsm", "multi_targeted"]),
    ("robustlip-separation", ["data=digit"], "data/digit", ["digits", "mnist"]),
]


@pytest.mark.parametrize(("command", "args", "named", "options"), MISSPELLED,
                         ids=[f"{c}-{a[-1]}" for c, a, _, _ in MISSPELLED])
def test_a_misspelled_option_gets_hydras_message_with_the_choices_and_exit_2(command, args, named, options, tmp_path,
                                                                              capsys, monkeypatch):
    code, _, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert named in err and err.startswith("error: "), err
    for option in options:
        assert f"\t{option}\n" in err, err
    assert "run directory" not in err and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists(), "a config Hydra cannot compose must not create a run directory"


def test_reliability_doc_states_the_exit_code_of_a_composition_error():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| misspelled key")]
    assert "exit 2" in row, row


# -- 7. a failed check leaves no run directory, no log, no parent folder it created --------------------------
@pytest.mark.parametrize(("command", "args"), [
    ("robustlip-train", ["attack.eps=-1"]),
    ("robustlip-train", ["trainer.max_epochs=-1"]),
    ("robustlip-train", ["trainer.max_epochs=-2"]),
    ("robustlip-train", ["optimizer.lr=-1"]),
    ("robustlip-eval", ["ckpt_path=/nonexistent/last.ckpt"]),
], ids=["train-eps", "train-epochs-1", "train-epochs-2", "train-lr", "eval-ckpt"])
def test_a_failed_check_leaves_nothing_behind(command, args, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert len(error_lines(err)) == 1, err
    assert not (tmp_path / "logs").exists(), sorted(str(p) for p in (tmp_path / "logs").rglob("*"))


def test_a_failed_check_in_an_existing_folder_removes_nothing(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    code, _, err = run_cli("robustlip-train", ["attack.eps=-1", f"hydra.run.dir={run_dir}"], tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert run_dir.is_dir(), "a folder the user made must survive a failed run"


# -- 6. nonsense values: ε above the pixel range, an attack ε that is not data.eps, more examples than there are --
@pytest.mark.parametrize(("command", "args", "words"), [
    ("robustlip-train", ["attack.eps=2"], ["attack.eps=2", "[0, 1]", "pixel"]),
    ("robustlip-train", ["objective=at", "objective.eps=1.5"], ["objective.eps=1.5", "[0, 1]"]),
    ("robustlip-train", ["attack.eps=0.2"], ["attack.eps=0.2", "data.eps=0.1", "allow_eps_mismatch=true"]),
    ("robustlip-train", ["data.test_size=1000"], ["data.test_size=1000", "test set", "450 examples"]),
    ("robustlip-train", ["data.train_eval_size=5000"], ["data.train_eval_size=5000", "1212 examples"]),
    ("robustlip-train", ["data.eps=2"], ["data.eps=2 is not allowed (attack.eps is ${data.eps})", "[0, 1]"]),
    ("robustlip-train", ["seed=1.5"], ["seed=1.5", "integer"]),
    ("robustlip-eval", ["ckpt_path=x.ckpt", "seed=1.5"], ["seed=1.5", "integer"]),
], ids=["linf-eps-above-1", "objective-eps-above-1", "eps-mismatch", "test-size", "train-eval-size", "data-eps",
        "seed", "eval-seed"])
def test_nonsense_values_are_refused_in_one_line_before_training(command, args, words, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    for word in words:
        assert word in line, line
    assert "Epoch" not in out and not (tmp_path / "logs").exists()


# -- 8. one line for a checkpoint folder and for wandb without a key; percent everywhere ---------------------------
def test_eval_of_a_directory_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli("robustlip-eval", [f"ckpt_path={tmp_path}"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert f"ckpt_path='{tmp_path}' is not a file" in line, line


def test_wandb_without_key_or_mode_is_one_line_naming_offline_mode(tmp_path, capsys, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    code, _, err = run_cli("robustlip-train", ["logger=wandb"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert "logger=wandb" in line and "WANDB_MODE=offline" in line, line
    assert not (tmp_path / "logs").exists()
    # A `wandb login` entry in ~/.netrc is a key: the check lets the run through (to wandb itself).
    from robustlip.runs.loggers import check_wandb_credentials

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789abcdef\n")
    check_wandb_credentials()


def test_every_accuracy_is_in_percent(checkpoint):
    """val/acc (the progress bar's) and train/batch_acc are logged in percent, as test/acc and results.json."""
    import csv

    with (checkpoint.parents[1] / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for key in ("val/acc", "train/batch_acc"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values, key
        # A fraction is at most 1; ten digit classes put even an untrained net near 10 %.
        assert all(1.0 < v <= 100.0 for v in values), (key, values)


# -- 1. every attack works with robustlip-eval's defaults; what can run is decided before any work ---------------
class StepFreeAttack(Attack):
    """An attack with a radius but no threat model, steps or step size (as an external attack library's, wrapped)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.radius = eps
        self.calls = 0

    @property
    def eps(self) -> float:
        return self.radius

    def perturb(self, model, x, y):
        self.calls += 1
        return x.clone()


def test_multi_targeted_runs_with_the_default_sanity_checks_and_an_eps_sweep(checkpoint, tmp_path, capsys, monkeypatch):
    import json

    code, _, err = run_cli("robustlip-eval", [
        f"ckpt_path={checkpoint}", "attack=multi_targeted", "attack.steps=2", "+patch.data.test_size=16",
        "evaluate_train=false", "lipschitz=off", "eps_sweep=[0,0.2]", "progress=false",
    ], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    (results_file,) = (tmp_path / "logs").rglob("results.json")
    results = json.loads(results_file.read_text())
    assert results["attack"].startswith("MultiTargeted(") and "steps=2" in results["attack"]
    assert set(results["sanity"]["checks"]) == {"decreasing_in_eps", "near_zero_at_large_eps", "more_steps",
                                                "not_weaker_than_fgsm"}
    assert "skipped" not in results["sanity"]
    assert [p["eps"] for p in results["eps_sweep"]["points"]] == [0.0, 0.2]
    # The variants are Multi-Targeted attacks around a changed inner PGD, not plain PGDs.
    from hydra.utils import instantiate

    from robustlip.attacks.variants import fgsm_like, with_eps, with_steps

    attack = instantiate({"_target_": "robustlip.attacks.MultiTargeted", "eps": 0.1, "steps": 20})
    wider, longer = with_eps(attack, 0.2), with_steps(attack, 40)
    assert type(wider).__name__ == "MultiTargeted" and wider.eps == 0.2 and attack.eps == 0.1
    assert wider.inner.step_size == pytest.approx(2 * attack.inner.step_size)
    assert longer.inner.steps == 40 and attack.inner.steps == 20
    assert fgsm_like(attack).eps == 0.1


def test_an_attack_without_variants_skips_the_checks_that_need_them_and_refuses_a_sweep_up_front(
        checkpoint, tmp_path, caplog):
    import json
    import logging

    from omegaconf import open_dict

    from robustlip.core.errors import ConfigError
    from robustlip.evaluate import evaluate
    from tests.conftest import compose_train_cfg

    def cfg(*overrides: str):
        c = compose_train_cfg(tmp_path, [f"ckpt_path={checkpoint}", "+patch.data.test_size=16", "evaluate_train=false",
                                         "lipschitz=off", "progress=false", *overrides], "eval")
        with open_dict(c):
            c.attack = {"_target_": f"{__name__}.StepFreeAttack", "eps": 0.1}
        return c

    with pytest.raises(ConfigError, match=r"eps_sweep: attack=StepFreeAttack cannot be run at other radii"):
        evaluate(cfg("eps_sweep=[0,0.2]"))
    assert not list(tmp_path.iterdir()), "the sweep was refused after writing files"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        evaluate(cfg())
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["sanity"]["skipped"]) == {"decreasing_in_eps", "near_zero_at_large_eps", "more_steps",
                                                 "not_weaker_than_fgsm"}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 4 and all("StepFreeAttack has no" in line for line in skipped), skipped


# -- 10. each measurement has its own random stream ------------------------------------------------------------
def test_the_lipschitz_estimate_of_a_checkpoint_does_not_depend_on_the_attack(checkpoint, tmp_path):
    from robustlip.evaluate import evaluate
    from tests.conftest import compose_train_cfg

    def lipschitz(attack: str) -> float:
        out = tmp_path / attack
        cfg = compose_train_cfg(out, [f"ckpt_path={checkpoint}", f"attack={attack}", "+patch.data.test_size=32",
                                      "evaluate_train=false", "sanity=null", "lipschitz=local", "lipschitz.steps=3",
                                      "progress=false"], "eval")
        return evaluate(cfg)["test/lipschitz"]

    assert lipschitz("pgd") == lipschitz("fgsm"), "the Lipschitz estimate changed with the attack that ran before it"


# -- 9. output that is easy to use: the table names the method, the attack and the run; files are named -----------
def test_eval_and_separation_titles_and_the_files_they_wrote(checkpoint, tmp_path, capsys,
                                                              monkeypatch):
    code, out, err = run_cli("robustlip-eval", [f"ckpt_path={checkpoint}", "attack=fgsm", "+patch.data.test_size=16",
                                                "sanity=null", "evaluate_train=false", "lipschitz=off",
                                                "eps_sweep=[0,0.1]", f"hydra.run.dir={tmp_path / 'ev'}"],
                             tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert "Natural · digits · attack FGSM ℓ∞ ε=0.1" in out.splitlines(), out
    assert f"wrote {tmp_path / 'ev'}/: config.yaml, eps_sweep.csv, eps_sweep.png, results.json" in out.splitlines(), out

    code, out, err = run_cli("robustlip-separation", ["engine=torch", "closest_pairs=2", f"hydra.run.dir={tmp_path / 'sep'}"],
                             tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    (wrote,) = [line for line in out.splitlines() if line.startswith("wrote ")]
    assert wrote.startswith(f"wrote {tmp_path / 'sep'}/: ") and "separation.json" in wrote and "train_train_hist.png" in wrote


def test_an_eps_mismatch_allowed_on_purpose_is_named_in_the_title(checkpoint, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli("robustlip-eval", [f"ckpt_path={checkpoint}", "attack=fgsm", "+patch.attack.eps=0.2",
                                                "allow_eps_mismatch=true", "+patch.data.test_size=16", "sanity=null",
                                                "evaluate_train=false", "lipschitz=off"], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert "attack FGSM ℓ∞ ε=0.2 (≠ data.eps=0.1: allow_eps_mismatch)" in out, out


# -- 3. a run that learned nothing says so: in the final table, the log and results.json ---------------------------
def test_a_run_at_chance_warns_in_table_log_and_results_under_a_title_naming_method_attack_and_run(
        tmp_path, capsys, monkeypatch):
    import json

    from tests.conftest import FAST

    run_dir = tmp_path / ("a-run-folder-with-a-long-name-" * 3) / "dead"
    code, out, err = run_cli("robustlip-train", [*FAST, "objective=trades", "objective.beta=6", "objective.steps=1",
                                                 "optimizer.lr=0", "attack.steps=2", "data.test_size=64",
                                                 "callbacks.robust_evaluation.lipschitz=null", f"hydra.run.dir={run_dir}"],
                             tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    # 9. the title: method with its knob, data, attack with steps, norm and ε; the run path whole on its own line.
    assert "TRADES(β=6) · digits · attack PGD-2 ℓ∞ ε=0.1" in lines, out
    assert f"run: {run_dir}" in lines, "the run path must be one line, whole"
    # 3. lr=0 learns nothing: said under the table, in the log and in results.json, with the likely cause.
    table_warnings = [line for line in lines if line.startswith("warning: ")]
    assert table_warnings and all("chance level for 10 classes" in w for w in table_warnings), out
    assert "optimizer.lr=0" in table_warnings[0] and "likely cause" in table_warnings[0], table_warnings
    results = json.loads((run_dir / "results.json").read_text())
    assert any("chance level" in w for w in results["warnings"]), results.get("warnings")
    assert "chance level" in (run_dir / "train.log").read_text()


def test_health_names_an_exploding_loss_and_the_summed_loss_fix():
    from robustlip.callbacks.training_health import TrainingHealth

    health = TrainingHealth(num_classes=10, fidelity="faithful", lr=0.05, batch_size=64)
    health.first_loss, health.worst, health.val_acc, health.val_count = 147.0, (1556.0, 9), 10.2, 180
    first, second = health.diagnose()
    assert "the training loss exploded: 147 at the first step, 1.56e+03 at global step 9" in first
    assert "fidelity=faithful sums the loss over the batch" in first and "optimizer.lr=0.00078" in first
    assert second.startswith("the final val/acc is 10.2 %, chance level for 10 classes (10.0 %)")
    # A summed loss whose lr was already scaled down (0.001 x 64 = a mean-loss 0.064) is not blamed again.
    scaled = TrainingHealth(num_classes=10, fidelity="faithful", lr=0.001, batch_size=64)
    scaled.first_loss, scaled.worst, scaled.val_acc, scaled.val_count = 147.0, (150.0, 3), 10.2, 180
    (dead,) = scaled.diagnose()
    assert "sums the loss" not in dead and "optimizer.lr=0.001 is too large (or too small)" in dead
    assert "too few epochs" in dead
    healthy = TrainingHealth(num_classes=10, lr=0.05, batch_size=64)
    healthy.first_loss, healthy.worst, healthy.val_acc, healthy.val_count = 2.3, (2.4, 1), 91.0, 180
    assert healthy.diagnose() == []
    # Chance is judged with the sampling noise of the split: 14 % of 45 examples is chance, of 4500 it is not.
    assert healthy.check_accuracy("acc", 14.0, 45) is not None and healthy.check_accuracy("acc", 14.0, 4500) is None


# -- 4. Ctrl-C saves like SIGTERM and names the command that resumes; a signal stops the final evaluation at once ---
class SignalOnce:
    """A callback sending this process a real signal once (a marker file remembers it), after training batch
    ``batch`` of epoch ``epoch`` or after test batch ``test_batch`` — as a user's Ctrl-C or SLURM would."""

    def __new__(cls, *args, **kwargs):
        import pytorch_lightning as pl

        class _SignalOnce(pl.Callback):
            def __init__(self, signum: int, marker: str, epoch: int = -1, batch: int = -1, test_batch: int = -1) -> None:
                self.signum, self.marker, self.epoch, self.batch, self.test_batch = signum, Path(marker), epoch, batch, test_batch

            def _send(self) -> None:
                import os

                if not self.marker.exists():
                    self.marker.touch()
                    os.kill(os.getpid(), self.signum)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
                    self._send()

            def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
                if batch_idx == self.test_batch:
                    self._send()

        return _SignalOnce(*args, **kwargs)


def _signal_args(tmp_path: Path, signum: int, **where: int) -> list[str]:
    return [f"+callbacks.signal._target_={__name__}.SignalOnce", f"+callbacks.signal.signum={signum}",
            f"+callbacks.signal.marker={tmp_path / 'signal-sent'}", *(f"+callbacks.signal.{k}={v}" for k, v in where.items())]


SMALL = ["trainer.max_epochs=2", "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "attack.steps=1",
         "data.test_size=64", "data.train_eval_size=64", "data.eval_batch_size=32",
         "callbacks.robust_evaluation.lipschitz=null", "trainer.enable_progress_bar=false"]


@pytest.fixture
def foreground_ctrl_c():
    """Ctrl-C as a terminal delivers it. A test run started in the background (`cmd &`, nohup) inherits SIGINT
    ignored, which SignalStop rightly keeps as it is; the tests of Ctrl-C are about the foreground case."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_like_sigterm_prints_the_resume_command_and_ckpt_path_last_finds_the_run(
        tmp_path, capsys, monkeypatch, foreground_ctrl_c):
    import shlex
    import signal

    from robustlip.runs.checkpoints import load_checkpoint

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    args = [*SMALL, *_signal_args(tmp_path, int(signal.SIGINT), epoch=1, batch=0)]
    code, _, err = run_cli("robustlip-train", args, tmp_path, capsys, monkeypatch)
    assert code == 130, err[-3000:]
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err[-3000:]
    (line,) = error_lines(err)
    assert "interrupted by SIGINT at epoch 1, global step 4, batch 1 of the epoch" in line, line
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    command = line.split("Resume with: ", 1)[1]
    assert shlex.split(command) == ["robustlip-train", *args, f"hydra.run.dir={run_dir}", "ckpt_path=last"], command
    saved = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 4), "not the state Ctrl-C stopped at"

    # A new shell, the same overrides, ckpt_path=last and no run dir: the interrupted run continues in its own folder.
    code, out, err = run_cli("robustlip-train", [*args, "ckpt_path=last"], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    assert [p.name for p in (tmp_path / "logs" / "train" / "runs").iterdir()] == [run_dir.name]
    assert (run_dir / "results.json").is_file() and f"run: {run_dir}" in out
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_ckpt_path_last_names_the_interrupted_runs_it_could_mean(tmp_path):
    import os

    from robustlip.runs.checkpoints import CheckpointError, find_interrupted_run

    def interrupted(name: str, overrides: list[str], age: float) -> Path:
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "checkpoints" / "last.ckpt", (1e9 + age, 1e9 + age))
        return run

    older = interrupted("a", ["objective=at"], 0)
    newer = interrupted("b", ["objective=at", "resume=auto"], 10)
    other = interrupted("c", ["objective=trades"], 20)
    assert find_interrupted_run(tmp_path, ["objective=at", "ckpt_path=last"]) == newer
    (newer / "results.json").write_text("{}")  # finished: not a candidate
    assert find_interrupted_run(tmp_path, ["objective=at", "ckpt_path=last"]) == older
    with pytest.raises(CheckpointError, match="no interrupted run .* was started with these overrides") as err:
        find_interrupted_run(tmp_path, ["objective=gr", "ckpt_path=last"])
    assert str(other) in str(err.value) and "objective=trades" in str(err.value) and str(older) in str(err.value)


def test_a_signal_during_the_final_evaluation_stops_at_once_keeps_the_test_numbers_and_says_how_to_finish(
        tmp_path, capsys, monkeypatch):
    import json
    import shlex
    import signal

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    run_dir = tmp_path / "run"
    # SIGTERM after the last test batch: the training-set measurement that follows must not start.
    args = [*SMALL, "trainer.max_epochs=1", *_signal_args(tmp_path, int(signal.SIGTERM), test_batch=1),
            f"hydra.run.dir={run_dir}"]
    code, _, err = run_cli("robustlip-train", args, tmp_path, capsys, monkeypatch)
    assert code == 143, err[-3000:]
    (line,) = error_lines(err)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "interrupted by SIGTERM during the final evaluation" in line and str(last) in line, line
    assert shlex.split(line.split("Finish the evaluation with: ", 1)[1]) == ["robustlip-eval", f"ckpt_path={last}",
                                                                              "sanity=null"]
    partial = json.loads((run_dir / "results.partial.json").read_text())
    assert partial["complete"] is False and partial["examples"] == {"test": 64}, partial["examples"]
    assert set(partial["metrics"]) == {"test/acc", "test/adv_acc"}
    assert not (run_dir / "results.json").exists(), "an unfinished evaluation must not look finished"


# -- 11. the package declares every config folder, so `pip install .` is silent --------------------------------------
def test_every_config_folder_is_a_declared_package():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"robustlip." + ".".join(d.relative_to(root).parts) for d in (root / "conf").rglob("*")
               if d.is_dir() and not d.name.startswith(("_", ".")) and any(d.glob("*.yaml"))}
    assert folders - declared == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(folders - declared)}"


# -- issue 24: a missing value, another dataset's checkpoint, and advice that works when followed ------------------
def test_a_missing_mandatory_value_is_one_line_with_an_example_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli("robustlip-visualize", [], tmp_path, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert "ckpt_path is required" in line and "robustlip-visualize ckpt_path=logs/train/runs/" in line, line
    assert not (tmp_path / "logs").exists()


def test_a_checkpoint_of_another_dataset_is_refused_by_train_and_eval_before_any_work(checkpoint, tmp_path, capsys,
                                                                                      monkeypatch):
    for command, extra in (("robustlip-train", []), ("robustlip-eval", [])):
        code, out, err = run_cli(command, [f"ckpt_path={checkpoint}", "data=fashion_mnist", *extra], tmp_path, capsys,
                                 monkeypatch)
        assert code == 2 and "Traceback" not in err, err
        (line,) = error_lines(err)
        assert "data.name='fashion_mnist' is not the data this model was made for (data.name='digits')" in line, line
        assert "data=digits" in line, line
        assert ("allow_data_mismatch=true" in line) == (command == "robustlip-eval"), line
        assert "Epoch" not in out and not (tmp_path / "logs").exists()


#: (command, bad arguments, the advice its error line must hold, the arguments that follow it)
ADVICE = [
    ("robustlip-train", ["trainer.max_epoch=3"], "did you mean trainer.max_epochs=3?", ["trainer.max_epochs=3"]),
    ("robustlip-train", ["objective.eps=0.05"], "e.g. objective=at objective.eps=0.05",
     ["objective=at", "objective.eps=0.05"]),
    ("robustlip-train", ["attacks=[pgd,foo]"], "choose from autoattack, fgsm, multi_targeted, pgd, pgd_l2",
     ["attacks=[pgd,fgsm]"]),
    ("robustlip-train", ["data.eps=2"], "data.eps=2 is not allowed (attack.eps is ${data.eps})", None),
    ("robustlip-train", ["attack_gap_warning=0"], "did you mean callbacks.robust_evaluation.attack_gap_warning=0?",
     ["callbacks.robust_evaluation.attack_gap_warning=0"]),
]


@pytest.mark.parametrize(("command", "args", "advice", "followed"), ADVICE, ids=[a[1][0] for a in ADVICE])
def test_every_suggestion_of_a_config_error_works_when_followed(command, args, advice, followed, tmp_path, capsys,
                                                                monkeypatch):
    code, _, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert advice in line, line
    assert "+" not in line.split(";")[-1] or "+patch" in line, f"no '+key' advice that adds a key nothing reads: {line}"
    if followed:
        code, _, err = run_cli(command, [*followed, "--cfg", "job"], tmp_path, capsys, monkeypatch)
        assert code == 0, err


def test_eval_advice_on_the_attacks_eps_works_when_followed(checkpoint, tmp_path, capsys, monkeypatch):
    base = [f"ckpt_path={checkpoint}", "n_examples=16", "sanity=null", "evaluate_train=false", "lipschitz=off",
            "progress=false"]
    code, _, err = run_cli("robustlip-eval", [*base, "attack.eps=0.2"], tmp_path, capsys, monkeypatch)
    (line,) = error_lines(err)
    assert code == 2 and "attack=pgd attack.eps=0.2" in line and "+patch.attack.eps=0.2" in line, line
    code, _, err = run_cli("robustlip-eval", [*base, "attack=pgd", "attack.eps=0.2"], tmp_path, capsys, monkeypatch)
    (line,) = error_lines(err)
    assert code == 2 and "set +patch.data.eps=0.2 to move them all" in line, line
    code, out, err = run_cli("robustlip-eval", [*base, "attack=pgd", "attack.eps=0.2", "+patch.data.eps=0.2"], tmp_path,
                             capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert "attack PGD-10 ℓ∞ ε=0.2" in out, out


def test_gpu_settings_without_a_gpu_say_so(tmp_path, capsys, monkeypatch):
    import torch

    from robustlip.train import warn_without_gpu
    from tests.conftest import compose_train_cfg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warn_without_gpu(compose_train_cfg(tmp_path, ["perf=gpu", "trainer.precision=bf16-mixed"]))
    out = capsys.readouterr().out
    assert "warning: perf=gpu trainer.precision=bf16-mixed but there is no GPU here" in out, out
    warn_without_gpu(compose_train_cfg(tmp_path, []))
    assert "no GPU" not in capsys.readouterr().out


def test_known_harmless_noise_is_silenced_and_own_warnings_are_one_line(capsys):
    import logging
    import warnings

    from robustlip.evaluation import GradientMaskingWarning
    from robustlip.runs.quiet import silence_known_noise

    silence_known_noise(resuming=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", category=UserWarning, message="(?!`isinstance|Checkpoint|Experiment|You're)")
        silence_known_noise(resuming=True)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", stacklevel=1)
        warnings.warn("Checkpoint directory /x/checkpoints exists and is not empty.", stacklevel=1)
        warnings.warn("Experiment logs directory /x/csv exists and is not empty. Previous log files ...", stacklevel=1)
        warnings.warn("You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not "
                      "resumable. This can cause unreliable results", stacklevel=1)
    assert not caught, [str(w.message) for w in caught]
    record = logging.LogRecord("pytorch_lightning.utilities.rank_zero", logging.INFO, "", 0,
                               "💡 Tip: For seamless cloud logging ... litlogger", None, None)
    assert not logging.getLogger("pytorch_lightning.utilities.rank_zero").filter(record)
    assert warnings.formatwarning("pgd is 4 points above", GradientMaskingWarning, "x.py", 1) == \
        "warning: pgd is 4 points above\n"


def test_help_answers_without_torch_and_without_hydra_boilerplate_or_rest_markup(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    code = ("import sys, robustlip.visualize, robustlip.tsipras, robustlip.train, robustlip.evaluate; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported at --help time: {out}"
    code, out, _ = run_cli("robustlip-visualize", ["--help"], tmp_path, capsys, monkeypatch)
    assert code == 0 and out.startswith("robustlip-visualize: set any key") and "powered by Hydra" not in out, out[:300]
    from robustlip.tsipras import main as tsipras

    assert tsipras(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":mod:" not in out and "report.md, table.csv" in out, out


def test_one_unit_per_quantity_shares_in_percent(capsys):
    from robustlip.reporting.staircase_figures import ESTIMATORS, print_staircase_table
    from robustlip.theory.staircase import Staircase, sweep
    from robustlip.visualize import default_large_eps

    assert default_large_eps(784) == 4.0 and default_large_eps(64) == 1.14  # ℓ2 budget sized to the image
    row = {"n": 22, "aug_worse_than_std": 65.0, **{f"{kind}_error/{e}_mean": 0.5 for kind in ("std", "robust")
                                                     for e in ESTIMATORS}}
    print_staircase_table([row])
    assert capsys.readouterr().out.splitlines()[-1].endswith("65 %")
    share = sweep(Staircase(), [22], 4, None, 0)[0]["aug_worse_than_std"]
    assert share in (0.0, 25.0, 50.0, 75.0, 100.0), share


def test_a_sweep_without_its_dataset_fails_once_before_any_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTLIP_DATA_DIR", str(tmp_path / "no_data"))
    code, out, err = run_cli("robustlip-train", ["-m", "data=mnist", "seed=0,1"], tmp_path, capsys, monkeypatch)
    assert code == 2, err[-2000:]
    (line,) = error_lines(err)
    assert "data=mnist: no train-images-idx3-ubyte" in line and "no job was started" in line, line
    assert "Launching" not in out + err and not (tmp_path / "logs").exists()


def test_a_faithful_lipschitz_search_is_named_in_the_title():
    from robustlip.metrics.lipschitz import LocalLipschitz
    from robustlip.reporting.tables import lipschitz_note

    assert "descent" in lipschitz_note(LocalLipschitz(eps=0.1, fidelity="faithful"))
    assert lipschitz_note(LocalLipschitz(eps=0.1, fidelity="paper")) is None


def test_the_progress_bar_shows_two_short_metrics_that_fit_80_columns():
    from robustlip.callbacks.progress import BAR_WIDTH, compact_metrics

    shown = compact_metrics({"train/loss_step": 2.2614, "val/acc": 76.2963, "train/loss_epoch": 2.28, "v_num": 0})
    assert shown == {"loss": "2.261", "val acc": "76.3 %"}
    # "Epoch 14/14 " + bar + " 60/60 0:01:10 • 0:00:00 " + "loss: 2.261 val acc: 76.3 %": one 80-column line
    assert 12 + BAR_WIDTH + 24 + len("loss: 2.261 val acc: 100.0 %") <= 80
