"""Several attacks at once: each one's accuracy, the pointwise worst case, intervals, flags, gaps, DDP.

A digits CNN trained for a few seconds; the attacks run on small, seeded subsets of its test set, and
AutoAttack as a one- or two-attack custom list (a second or so) except in the robustlip-eval test that
runs ``attack=autoattack`` as configured (the standard version) on 8 examples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from robustlip.attacks import PGD, AutoAttack
from robustlip.callbacks import RobustEvaluation
from robustlip.core.errors import ConfigError
from robustlip.evaluate import evaluate
from robustlip.evaluation import GradientMaskingWarning
from robustlip.evaluation.batches import seeded_subset
from robustlip.evaluation.streams import seeded
from robustlip.metrics import LocalLipschitz
from robustlip.metrics.intervals import wilson_interval
from robustlip.module import CheckpointedNet
from robustlip.train import train
from tests.conftest import FAST, compose_train_cfg, run_command
from tests.test_lipschitz import one_thread  # noqa: F401 - autouse fixture: one intra-op thread

EPS = 0.1
#: AutoAttack's first attack alone: enough to differ from PGD-10, cheap enough for every test.
CHEAP_AA = {"version": "custom", "attacks": ["apgd-ce"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A seconds-long robustlip-train run (its directory) and its network and data, 8-image eval batches."""
    run_dir = tmp_path_factory.mktemp("train")
    fast = [o for o in FAST if not o.startswith("+trainer.limit_train_batches")]
    cfg = compose_train_cfg(
        run_dir,
        [
            *fast,
            "trainer.max_epochs=3",
            "+trainer.limit_train_batches=10",
            "model.width=8",
            "data.test_size=96",
            "data.train_eval_size=32",
            "data.eval_batch_size=8",
        ],
    )
    train(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    module = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    net = instantiate(cfg.model)
    net.load_state_dict({k[4:]: v for k, v in module["state_dict"].items() if k.startswith("net.")})
    return run_dir, net.eval(), datamodule


def _run(net: nn.Module, datamodule, **kwargs) -> RobustEvaluation:
    evaluation = RobustEvaluation(**{"attack": None, "results_file": None, "evaluate_train": False, **kwargs})
    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=[evaluation],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
    )
    trainer.test(CheckpointedNet(net), datamodule=datamodule, verbose=False)
    return evaluation


def _per_example_correct(evaluation: RobustEvaluation, net: nn.Module, datamodule, name: str) -> Tensor:
    """Replays one attack over the evaluation's subset, batch by batch on that attack's own seeded stream."""
    model = CheckpointedNet(net)
    correct = []
    for batch_idx, (x, y) in enumerate(evaluation.test_subset_loader(datamodule)):
        # Each metric of a batch draws from its own stream (named after the metric, adv_acc/<attack>).
        with seeded(evaluation.seed, "test", batch_idx, x.device, f"adv_acc/{name}"):
            x_adv = evaluation.attacks[name](model, x, y)
            with torch.no_grad():
                logits = net(x_adv)
        correct.append(logits.argmax(1) == y)
    return torch.cat(correct)


def test_each_attack_and_the_pointwise_worst_case_on_the_same_examples(trained, tmp_path):
    _, net, datamodule = trained
    attacks = {"pgd": PGD(EPS), "autoattack": AutoAttack(EPS, **CHEAP_AA)}
    evaluation = _run(
        net,
        datamodule,
        attacks=attacks,
        n_examples=40,
        lipschitz=LocalLipschitz(EPS, steps=2),
        results_file=tmp_path / "results.json",
        attack_gap_warning=100.0,  # the gap warning has its own test
    )
    m = evaluation.metrics
    pgd = _per_example_correct(evaluation, net, datamodule, "pgd")
    aa = _per_example_correct(evaluation, net, datamodule, "autoattack")
    assert len(pgd) == len(aa) == 40
    assert m["test/adv_acc/pgd"] == pytest.approx(100 * pgd.double().mean().item())
    assert m["test/adv_acc/autoattack"] == pytest.approx(100 * aa.double().mean().item())
    assert m["test/adv_acc"] == pytest.approx(100 * (pgd & aa).double().mean().item()), (
        "the per-example minimum"
    )
    assert m["test/adv_acc"] <= min(m["test/adv_acc/pgd"], m["test/adv_acc/autoattack"])
    assert m["test/adv_acc/autoattack"] <= m["test/adv_acc/pgd"], (
        "APGD-CE is at least as strong as PGD-10 here"
    )
    assert 0 < m["test/adv_acc"] < m["test/acc"], "the attacks must matter and leave something"

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["examples"] == {"test": 40} and results["n_examples"] == 40
    for key in ("test/acc", "test/adv_acc", "test/adv_acc/pgd", "test/adv_acc/autoattack"):
        record = results["uncertainty"][key]
        correct = round(results["metrics"][key] * 40 / 100)
        low, high = wilson_interval(correct, 40)
        assert (record["n"], record["correct"]) == (40, correct)
        assert (record["ci95_low"], record["ci95_high"]) == pytest.approx((100 * low, 100 * high))
    lipschitz = results["uncertainty"]["test/lipschitz"]
    assert lipschitz["n"] == 40 and lipschitz["se"] > 0
    assert set(results["seconds"]["test"]) == {
        "acc",
        "adv_acc/pgd",
        "adv_acc/autoattack",
        "adv_acc",
        "lipschitz",
    }
    assert results["seconds"]["test"]["adv_acc/autoattack"] > 0
    masking = results["gradient_masking"]
    assert masking["flags"] == {}
    assert masking["pgd_minus_autoattack"] == pytest.approx(
        m["test/adv_acc/pgd"] - m["test/adv_acc/autoattack"]
    )
    assert masking["gaps_to_worst_case"]["pgd"] == pytest.approx(m["test/adv_acc/pgd"] - m["test/adv_acc"])
    assert results["attacks"]["autoattack"].startswith("AutoAttack(")


def test_the_subset_is_drawn_with_the_seed_and_shared_by_every_attack(trained):
    _, _, datamodule = trained
    test_set = datamodule.test_set
    one, again, other = (list(seeded_subset(test_set, 20, seed).indices) for seed in (0, 0, 1))
    assert one == again and one != other and one == sorted(one) and len(set(one)) == 20
    evaluation = RobustEvaluation(
        attack=None, attacks={"a": PGD(EPS), "b": PGD(EPS, steps=2)}, n_examples=20, seed=1
    )
    assert list(evaluation.test_subset_loader(datamodule).dataset.indices) == other


def test_a_weaker_attack_far_above_the_worst_case_warns(trained, tmp_path):
    # A PGD that cannot move is what a masked gradient looks like from outside: AutoAttack finds far more.
    _, net, datamodule = trained
    stuck = PGD(EPS, step_size=0.0, random_start=False)
    attacks = {"pgd": stuck, "autoattack": AutoAttack(EPS, **CHEAP_AA)}
    with pytest.warns(GradientMaskingWarning, match=r"test/adv_acc/pgd is .* points above the worst case"):
        evaluation = _run(
            net, datamodule, attacks=attacks, n_examples=24, results_file=tmp_path / "results.json"
        )
    masking = json.loads((tmp_path / "results.json").read_text())["gradient_masking"]
    assert masking["pgd_minus_autoattack"] > 3.0 and masking["gap_threshold"] == 3.0
    assert any("overestimates robustness" in line for line in masking["warnings"])
    assert evaluation.metrics["test/adv_acc/pgd"] == pytest.approx(evaluation.metrics["test/acc"])

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientMaskingWarning)
        quiet = _run(net, datamodule, attacks=attacks, n_examples=24, attack_gap_warning=100.0)
    assert quiet.sections["gradient_masking"]["warnings"] == []


class Softmax(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).softmax(dim=1)


def test_autoattack_flags_reach_results_json_and_the_log(trained, tmp_path):
    _, net, datamodule = trained
    with pytest.warns(GradientMaskingWarning, match="softmax_output"):
        _run(
            Softmax(net),
            datamodule,
            attack=AutoAttack(EPS, **CHEAP_AA),
            n_examples=16,
            results_file=tmp_path / "results.json",
        )
    flags = json.loads((tmp_path / "results.json").read_text())["gradient_masking"]["flags"]
    assert set(flags) == {"autoattack"} and set(flags["autoattack"]) == {"softmax_output"}
    assert flags["autoattack"]["softmax_output"]["batches"] == 2, "16 examples in batches of 8"


def test_n_examples_larger_than_the_test_set_fails_before_attacking(trained, tmp_path):
    run_dir, net, datamodule = trained
    with pytest.raises(
        ConfigError, match=r"callbacks.robust_evaluation.n_examples=500 is not allowed; the test set has 96"
    ):
        _run(net, datamodule, attack=PGD(EPS), n_examples=500)
    cfg = compose_train_cfg(
        tmp_path, [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "n_examples=97"], "eval"
    )
    with pytest.raises(ConfigError, match=r"^n_examples=97 is not allowed; the test set has 96 examples"):
        evaluate(cfg)
    cfg = compose_train_cfg(
        tmp_path,
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "attacks=[pgd,autoattack]",
            "attacks.autoattack.version=fast",
        ],
        "eval",
    )
    with pytest.raises(ConfigError, match=r"^attacks.autoattack.version='fast' is not allowed"):
        evaluate(cfg)


def test_eval_of_a_checkpoint_with_autoattack_as_configured(trained, tmp_path):
    """``robustlip-eval ckpt_path=... attack=autoattack`` on a small subset."""
    run_dir, _, _ = trained
    cfg = compose_train_cfg(
        tmp_path,
        [
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            "attack=autoattack",
            # The standard version's first two attacks: its full run (Square's 5,000 queries) is
            # tested on 12 examples in tests/test_autoattack.py.
            "attack.version=custom",
            "attack.attacks=[apgd-ce,apgd-t]",
            "n_examples=8",
            "evaluate_train=false",
            "lipschitz=off",
            "progress=false",
        ],
        "eval",
    )
    metrics = evaluate(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["attack"].startswith(
        "AutoAttack(norm=Linf, eps=0.1, version=custom, attacks=['apgd-ce', 'apgd-t']"
    )
    assert results["examples"] == {"test": 8}
    assert metrics["test/adv_acc"] <= metrics["test/acc"]
    assert results["gradient_masking"]["flags"] == {}
    assert "sanity" not in results, (
        "the gradient-masking probes vary PGD-like attacks; AutoAttack's flags replace them"
    )
    assert results["uncertainty"]["test/adv_acc"]["n"] == 8
    # RobustBench's model card beside results.json, with what the card itself does not carry.
    card = json.loads((tmp_path / "robustbench.json").read_text())
    assert (card["dataset"], card["threat_model"], card["eps"], card["n_examples"]) == ("digits", "Linf", "0.1", 8)
    assert card["autoattack_acc"] == str(round(metrics["test/adv_acc"], 2)) and card["subset"] == "seeded"
    assert card["flags"] == {} and len(card["autoattack_acc_ci95"]) == 2


def _lightning_eval(tmp_path: Path, name: str, ckpt: Path, devices: int) -> dict:
    """The RobustEvaluation callback under trainer.test on ``devices`` CPU processes (tests/_ddp_evaluation.py)."""
    results = tmp_path / name / "results.json"
    proc = run_command(str(Path(__file__).with_name("_ddp_evaluation.py")), [str(ckpt), str(results), str(devices)],
                       tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.mark.slow
def test_two_cpu_processes_give_the_single_process_numbers(trained, tmp_path):
    run_dir, _, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # 40 test and 32 training examples in batches of 8: 5 and 4 batches, dealt unevenly to two processes.
    single = _lightning_eval(tmp_path, "single", ckpt, 1)
    ddp = _lightning_eval(tmp_path, "ddp", ckpt, 2)
    assert ddp["metrics"] == single["metrics"]
    assert ddp["uncertainty"] == single["uncertainty"]
    assert ddp["examples"] == single["examples"] == {"test": 40, "train": 32}
    assert "apgd-ce" in ddp["attacks"]["autoattack"]
    # The library evaluator (robustlip-eval's) gives the adapter's numbers on the same points.
    from robustlip.attacks import PGD, AutoAttack
    from robustlip.evaluation import evaluate as measure
    from robustlip.metrics import LocalLipschitz
    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint

    loaded = load_checkpoint(ckpt)
    config = checkpoint_config(loaded)
    datamodule = instantiate(config["data"])
    library = measure(net_from_checkpoint(loaded, config), datamodule,
                      {"pgd": PGD(EPS), "autoattack": AutoAttack(EPS, version="custom", attacks=["apgd-ce"])},
                      lipschitz=LocalLipschitz(EPS, steps=1), n_examples=40, verbose=False)
    assert library.metrics == single["metrics"]


def test_training_runs_take_attacks_from_the_command_line(train_cfg):
    from robustlip.train import build_callbacks

    cfg = train_cfg(["attacks=[pgd,autoattack]", "data.eps=0.2", "callbacks.robust_evaluation.n_examples=50"])
    (evaluation,) = [c for c in build_callbacks(cfg) if isinstance(c, RobustEvaluation)]
    assert list(evaluation.attacks) == ["pgd", "autoattack"]
    assert evaluation.attacks["autoattack"].eps == 0.2 and evaluation.attacks["pgd"].eps == 0.2
    assert isinstance(evaluation.attack, PGD), "the run's attack still serves val/adv_acc"
    assert [m.name for m in evaluation.evaluator.measurements][:4] == [
        "acc",
        "adv_acc/pgd",
        "adv_acc/autoattack",
        "adv_acc",
    ]
    assert evaluation.n_examples == 50
    bad = train_cfg(
        ["attacks=[pgd,autoattack]", "attacks.autoattack.norm=l1", "attacks.autoattack.version=plus"]
    )
    with pytest.raises(
        ConfigError,
        match=r"^attacks.autoattack.version='plus' is not allowed with attacks.autoattack.norm='L1'",
    ):
        build_callbacks(bad)


def test_the_console_title_names_every_attack_of_the_worst_case():
    from robustlip.reporting.tables import evaluation_attack_label

    several = RobustEvaluation(attack=None, attacks={"pgd": PGD(EPS), "autoattack": AutoAttack(EPS)}, results_file=None)
    assert evaluation_attack_label(several.attacks, EPS) == (
        f"worst case of PGD-10 ℓ∞ ε={EPS:g} and AutoAttack (standard) ℓ∞ ε={EPS:g}"
    )
    assert evaluation_attack_label(RobustEvaluation(attack=PGD(EPS), results_file=None).attack, EPS) == f"PGD-10 ℓ∞ ε={EPS:g}"
