"""select_best=val: the best epoch is chosen on validation, never test; best and final both measured, the gap between them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from robustlip.callbacks.robust_evaluation import RobustEvaluation
from robustlip.core.errors import ConfigError
from robustlip.evaluate import evaluate
from robustlip.runs.best_model import check_select_best
from robustlip.train import train
from tests.conftest import compose_train_cfg
from tests.test_lipschitz import one_thread  # noqa: F401 - autouse fixture: one intra-op thread

#: A seconds-long natural run on digits with a validation split: 3 epochs, 96 test and 48 train points measured.
SMALL = ["trainer.max_epochs=3", "+trainer.limit_val_batches=2",
         "data.test_size=96", "data.train_eval_size=48", "trainer.enable_progress_bar=false",
         "~callbacks.progress_bar", "callbacks.robust_evaluation.lipschitz.steps=2"]
#: The validation split's adversarial accuracy per epoch, constructed so that validation picks epoch 2
#: while the test set, measured for real, ranks the epochs otherwise (asserted below).
SCRIPTED_VAL = [10.0, 30.0, 20.0]


@pytest.mark.parametrize(("overrides", "message"), [
    (["select_best=test"], "select_best='test' is refused: a checkpoint chosen by test accuracy reports the best of "),
    (["select_best=last"], "select_best='last' is not allowed; choose one of None, 'val'"),
    (["select_best=val", "data.val_size=0"], "select_best=val needs a validation split; data.val_size=0"),
])
def test_choosing_on_test_or_without_validation_is_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        check_select_best(compose_train_cfg(tmp_path, overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_select_best_off_by_default_and_val_monitors_the_validation_attack(tmp_path):
    assert check_select_best(compose_train_cfg(tmp_path)) is None
    cfg = compose_train_cfg(tmp_path, ["select_best=val"])
    assert check_select_best(cfg) == "val"
    assert cfg.callbacks.model_checkpoint.monitor == "val/adv_acc" and cfg.callbacks.model_checkpoint.mode == "max"
    assert cfg.callbacks.robust_evaluation.val_every_n_epochs == 1 == cfg.callbacks.model_checkpoint.every_n_epochs


class EveryEpoch(pl.Callback):
    """Keeps each epoch's model, so the test can see which epoch the *test* set would have picked."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.directory / f"epoch{trainer.current_epoch + 1}.ckpt")


@pytest.fixture(scope="module")
def constructed_run(tmp_path_factory):
    """A select_best=val run whose validation scores are SCRIPTED_VAL, each epoch's model kept aside."""
    run_dir = tmp_path_factory.mktemp("best")
    epochs = run_dir / "epochs"
    epochs.mkdir()
    patch = pytest.MonkeyPatch()

    def scripted(self, trainer, pl_module):
        if self._validating_adversarially(trainer):
            pl_module.log("val/adv_acc", torch.tensor(SCRIPTED_VAL[trainer.current_epoch]))

    import robustlip.train as train_module

    build = train_module.build_callbacks
    patch.setattr(RobustEvaluation, "on_validation_epoch_end", scripted)
    patch.setattr(train_module, "build_callbacks", lambda cfg: [*build(cfg), EveryEpoch(epochs)])
    try:
        final = train(compose_train_cfg(run_dir, ["select_best=val", *SMALL]))
    finally:
        patch.undo()
    return run_dir, final


def _eval(tmp_path: Path, ckpt: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_train_cfg(tmp_path, [f"ckpt_path={ckpt}", "progress=false", "sanity=null", *overrides], "eval")
    return evaluate(cfg)


def test_best_is_chosen_on_validation_even_where_test_would_pick_another(constructed_run, tmp_path):
    run_dir, final = constructed_run
    best = json.loads((run_dir / "results.json").read_text())["best"]
    assert best["epoch"] == 2 and best["selected_by"] == "val/adv_acc" and best["val/adv_acc"] == pytest.approx(30.0)
    assert best["final_epoch"] == 3 and Path(best["checkpoint"]).name == "best-adv-epoch001.ckpt"
    # The test set's ranking of the three epochs' models: epoch 2 is the best one's, epoch 3 the final one's
    # (each equal to robustlip-eval of its checkpoint, next test); epoch 1 measured here.
    first = _eval(tmp_path, run_dir / "epochs" / "epoch1.ckpt", "evaluate_train=false")["test/adv_acc"]
    test_adv = {1: first, 2: best["metrics"]["test/adv_acc"], 3: final["test/adv_acc"]}
    assert max(test_adv, key=test_adv.get) != 2, f"the construction needs test to prefer another epoch: {test_adv}"


def test_gap_is_best_minus_final_and_both_equal_robustlip_eval_of_their_checkpoints(constructed_run, tmp_path):
    run_dir, final = constructed_run
    results = json.loads((run_dir / "results.json").read_text())
    best = results["best"]
    assert best["robust_overfitting_gap"] == pytest.approx(best["metrics"]["test/adv_acc"] - results["metrics"]["test/adv_acc"])
    assert results["metrics"] == pytest.approx(final)  # results.json's top level stays the final model's
    of_last = _eval(tmp_path / "last", run_dir / "checkpoints" / "last.ckpt")
    of_best = _eval(tmp_path / "best", Path(best["checkpoint"]))
    assert {k: of_last[k] for k in results["metrics"]} == pytest.approx(results["metrics"], abs=1e-9)
    assert {k: of_best[k] for k in best["metrics"]} == pytest.approx(best["metrics"], abs=1e-9)
    assert set(best["uncertainty"]) >= {"test/acc", "test/adv_acc"}
