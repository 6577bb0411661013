"""RobustEvaluation: the eight numbers under every Lightning entry point, reproducibly, with honest attacks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from robustlip.attacks import PGD
from robustlip.callbacks import RobustEvaluation
from robustlip.core.results import RESULT_KEYS
from robustlip.evaluation import EpsSweep, Evaluator, GradientMaskingChecks, GradientMaskingWarning
from robustlip.metrics import LocalLipschitz
from robustlip.module import CheckpointedNet
from robustlip.train import build_callbacks, build_module
from tests.conftest import FAST, compose_train_cfg
from tests.test_lipschitz import one_thread  # noqa: F401 - autouse fixture: one intra-op thread


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A naturally trained small digits CNN (~96% test accuracy, a few CPU seconds) and a slice of its data."""
    cfg = compose_train_cfg(
        tmp_path_factory.mktemp("digits"), ["model.width=8", "data.test_size=128", "data.train_eval_size=64", "data.eval_batch_size=64"]
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(6):
        for x, y in datamodule.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return net.eval(), datamodule


def _test(net, datamodule, **kwargs) -> RobustEvaluation:
    evaluation = RobustEvaluation(**{"attack": PGD(eps=0.1), "results_file": None, **kwargs})
    trainer = pl.Trainer(accelerator="cpu", callbacks=[evaluation], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.test(CheckpointedNet(net), datamodule=datamodule, verbose=False)
    return evaluation


def test_fit_validate_and_test_work_even_with_inference_mode_left_on(train_cfg, tmp_path):
    cfg = train_cfg([*FAST, "trainer.max_epochs=2", "trainer.inference_mode=true", "callbacks=adv_checkpoint",
                     "data.test_size=64", "data.train_eval_size=32", "model.width=8"])
    datamodule, module, callbacks = instantiate(cfg.data), build_module(cfg), build_callbacks(cfg)
    evaluation = next(c for c in callbacks if isinstance(c, RobustEvaluation))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)

    trainer.fit(module, datamodule=datamodule)
    assert 0 <= trainer.callback_metrics["val/adv_acc"] <= 100
    # ModelCheckpoint monitored val/adv_acc (callbacks=adv_checkpoint) and kept the best epoch.
    assert any(p.name.startswith("best-adv-epoch") for p in (tmp_path / "checkpoints").iterdir())

    (validated,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert "val/adv_acc" in validated

    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = evaluation.metrics
    assert set(RESULT_KEYS) <= set(metrics), f"missing {set(RESULT_KEYS) - set(metrics)}"
    assert metrics["gap"] == pytest.approx(metrics["train/acc"] - metrics["test/acc"])
    assert metrics["adv_gap"] == pytest.approx(metrics["train/adv_acc"] - metrics["test/adv_acc"])
    assert metrics["test/adv_acc"] <= metrics["test/acc"] + 1e-9
    assert metrics["test/lipschitz"] > 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["metrics"]) == list(RESULT_KEYS)
    assert results["examples"] == {"test": 64, "train": 32}


def test_numbers_are_reproducible_and_probes_do_not_change_them(digits):
    net, datamodule = digits
    lipschitz = LocalLipschitz(eps=0.1)
    plain = _test(net, datamodule, lipschitz=lipschitz).metrics
    torch.rand(100)  # whatever ran before must not matter
    probed = _test(net, datamodule, lipschitz=lipschitz, eps_sweep=EpsSweep([0.05], max_batches=1)).metrics
    assert probed == plain
    other_seed = _test(net, datamodule, lipschitz=lipschitz, seed=1).metrics
    assert other_seed["test/lipschitz"] != plain["test/lipschitz"]


def test_attacking_validation_does_not_shift_the_training_random_stream(train_cfg):
    weights = []
    for every in (0, 1):
        cfg = train_cfg([*FAST, "evaluate=false", f"callbacks.robust_evaluation.val_every_n_epochs={every}",
                         "callbacks.model_checkpoint.monitor=null", "model.dropout=0.3", "model.width=8"])
        pl.seed_everything(0)
        module = build_module(cfg)
        trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=False)
        trainer.fit(module, datamodule=instantiate(cfg.data))
        weights.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_natural_model_has_near_zero_adversarial_accuracy_at_a_large_eps(digits, tmp_path):
    net, datamodule = digits
    sweep = EpsSweep([0.0, 0.1, 0.3, 0.5])
    evaluation = _test(net, datamodule, eps_sweep=sweep, evaluate_train=False, results_file=tmp_path / "results.json")
    points = evaluation.sections["eps_sweep"]["points"]
    accuracies = [p["adv_acc"] for p in points]
    assert accuracies[0] > 90, "the clean point is the model's test accuracy"
    assert accuracies[0] == pytest.approx(evaluation.metrics["test/acc"])
    assert accuracies[1] == pytest.approx(evaluation.metrics["test/adv_acc"])
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] <= 2.0
    csv_lines = (tmp_path / "eps_sweep.csv").read_text().splitlines()
    assert csv_lines[0] == "eps,adv_acc" and len(csv_lines) == 5
    assert (tmp_path / "eps_sweep.png").stat().st_size > 1000


def test_sanity_checks_pass_for_an_honest_attack(digits):
    net, datamodule = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        evaluation = _test(net, datamodule, sanity=GradientMaskingChecks(max_batches=1), evaluate_train=False)
    section = evaluation.sections["sanity"]
    assert section["passed"] is True, section["checks"]
    assert set(section["checks"]) == {"decreasing_in_eps", "near_zero_at_large_eps", "more_steps", "not_weaker_than_fgsm"}
    assert section["n"] == 64


def test_sanity_checks_flag_an_attack_that_cannot_move(digits, tmp_path):
    # A zero step size is what a masked gradient looks like from outside: the attack never moves.
    net, datamodule = digits
    stuck = PGD(eps=0.1, step_size=0.0, random_start=False)
    with pytest.warns(GradientMaskingWarning, match="near_zero_at_large_eps"):
        evaluation = _test(net, datamodule, attack=stuck, sanity=GradientMaskingChecks(max_batches=1),
                           evaluate_train=False, results_file=tmp_path / "results.json")
    sanity = json.loads((tmp_path / "results.json").read_text())["sanity"]
    assert sanity["passed"] is False
    assert not sanity["checks"]["near_zero_at_large_eps"]["passed"]
    assert not sanity["checks"]["not_weaker_than_fgsm"]["passed"]
    assert evaluation.metrics["test/adv_acc"] == pytest.approx(evaluation.metrics["test/acc"])


def test_per_process_shards_give_the_single_process_numbers_exactly(digits):
    # What makes multi-device evaluation exact: each process gets whole batches (no padding, no repeats),
    # with their single-process index, so even the seeded random starts are the same; the sums add up.
    net, datamodule = digits
    loader = datamodule.test_dataloader()
    evaluator = Evaluator(PGD(eps=0.1), lipschitz=LocalLipschitz(eps=0.1, steps=2))
    whole = evaluator.session(net, device="cpu")
    whole.run("test", loader, shard=(0, 1))
    shards = []
    for rank in range(3):
        session = evaluator.session(net, device="cpu")
        session.run("test", loader, shard=(rank, 3))
        assert session.done.get("test", []) == list(range(rank, len(loader), 3))
        shards.append(session.meter("test"))
    whole = whole.meters["test"]
    assert sum(s.count() for s in shards) == whole.count() == len(datamodule.test_set)
    for name in ("acc", "adv_acc", "lipschitz"):
        assert sum(float(s.states[name].sum) for s in shards) == pytest.approx(float(whole.states[name].sum), rel=1e-12)
        assert sum(float(s.states[name].sum_sq) for s in shards) == pytest.approx(
            float(whole.states[name].sum_sq), rel=1e-12
        )
    assert 0 < float(whole.states["adv_acc"].sum) < float(whole.states["acc"].sum), "PGD must matter here"


def test_results_json_goes_where_the_config_says(train_cfg, tmp_path):
    cfg = train_cfg([*FAST, "callbacks.robust_evaluation.results_file=" + str(tmp_path / "sub" / "r.json")])
    (evaluation,) = [c for c in build_callbacks(cfg) if isinstance(c, RobustEvaluation)]
    assert evaluation.results_file == Path(tmp_path / "sub" / "r.json")
    assert isinstance(evaluation.lipschitz, LocalLipschitz), "the default config measures train/test lipschitz"
    assert evaluation.seed == cfg.seed
