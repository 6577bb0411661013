"""Objectives pinned to their definitions: the limits that reduce to natural training, GR's closed form,
the paper/faithful differences of docs/authors-code.md §13, the model contract, and end-to-end runs of each method."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from robustlip.attacks import linearity_gap
from robustlip.core.errors import ConfigError
from robustlip.objectives import (
    RST,
    TRADES,
    AdversarialTraining,
    GradientRegularization,
    LocalLinearity,
    Natural,
    Objective,
)
from robustlip.train import train
from tests.conftest import FAST, run_command
from tests.test_attacks import ModeRecorder, interior_linear_problem
from tests.test_reference_code import authors_strades_step

OBJECTIVES = ["natural", "gr", "llr", "at", "trades", "rst"]


def tiny_net() -> nn.Module:
    """A deterministic network without dropout or BatchNorm, so train and eval mode agree."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def digits_like_batch(n: int = 12) -> tuple[Tensor, Tensor]:
    torch.manual_seed(3)
    return torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,))


def loss_and_grads(objective: Objective, model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = objective(model, x, y).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), [g.detach() for g in grads]


def assert_same_training_signal(objective: Objective, reference: Objective) -> None:
    model = tiny_net()
    x, y = digits_like_batch()
    loss, grads = loss_and_grads(objective, model, x, y)
    ref_loss, ref_grads = loss_and_grads(reference, model, x, y)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-6)


# --- limits that reduce to natural training ------------------------------------------------------------


@pytest.mark.parametrize("fidelity", ["paper", "faithful"])
def test_trades_with_beta_zero_is_natural_training(fidelity):
    assert_same_training_signal(TRADES(eps=0.1, beta=0.0, fidelity=fidelity), Natural(fidelity=fidelity))


@pytest.mark.parametrize("fidelity", ["paper", "faithful"])
def test_rst_with_lambda_zero_is_natural_training(fidelity):
    assert_same_training_signal(RST(eps=0.1, lam=0.0, fidelity=fidelity), Natural(fidelity=fidelity))


@pytest.mark.parametrize("fidelity", ["paper", "faithful"])
def test_adversarial_training_with_eps_zero_is_natural_training(fidelity):
    assert_same_training_signal(AdversarialTraining(eps=0.0, fidelity=fidelity), Natural(fidelity=fidelity))


def test_regularisers_with_zero_weight_are_natural_training():
    assert_same_training_signal(GradientRegularization(lam=0.0), Natural())
    assert_same_training_signal(LocalLinearity(eps=0.1, lam=0.0, mu=0.0), Natural())


def test_robust_terms_are_positive_when_switched_on():
    model = tiny_net()
    x, y = digits_like_batch()
    natural = Natural()(model, x, y).loss
    for objective in (TRADES(eps=0.1, beta=6.0), RST(eps=0.1, lam=1.0), AdversarialTraining(eps=0.1)):
        assert objective(model, x, y).loss > natural, objective.name


# --- GR: the closed form on a linear model -------------------------------------------------------------


def _linear_gr_closed_form(model, x, y, h: float, fidelity: str) -> tuple[Tensor, Tensor]:
    """(penalty per example, training loss) of GR on the logistic model, from its closed form.

    ℓ = softplus(−m), m = y·(wᵀx + b); ∇ₓℓ = −y·σ(−m)·w. Along v the margin moves by y·wᵀ(h·v):
    paper (TULIP, ℓ1 dual of the ℓ∞ threat): v = sign(∇ₓℓ)/√d = −y·sign(w)/√d, margin − h·‖w‖₁/√d;
    faithful (the authors): v = ∇ₓℓ/‖∇ₓℓ‖₂ = −y·w/‖w‖₂, margin − h·‖w‖₂.
    """
    with torch.no_grad():
        margin = y * model.score(x)
        w = model.weight
        shift = w.abs().sum() / math.sqrt(w.numel()) if fidelity == "paper" else w.norm()
        d = (F.softplus(-margin + h * shift) - F.softplus(-margin)) / h
        penalty = 0.5 * d.pow(2)
        ce = F.softplus(-margin)
        loss = ce.mean() + penalty.mean() if fidelity == "paper" else 2 * ce.sum() + penalty.sum()
    return penalty, loss


@pytest.mark.parametrize("fidelity", ["paper", "faithful"])
def test_gradient_penalty_equals_its_closed_form_on_a_linear_model(fidelity):
    model, x, labels, y = interior_linear_problem()
    for h in (1.0, 0.1, 0.01):
        out = GradientRegularization(lam=1.0, h=h, fidelity=fidelity)(model, x, labels)
        penalty, loss = _linear_gr_closed_form(model, x, y, h, fidelity)
        assert out.parts["reg"].item() == pytest.approx(penalty.mean().item(), rel=1e-5)
        assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)


def test_gradient_penalty_tends_to_half_the_squared_dual_norm_of_the_input_gradient():
    # h → 0: d → ∇ₓℓ·v. Paper (ℓ∞ threat): ‖∇ₓℓ‖₁/√d, the dual norm; faithful: ‖∇ₓℓ‖₂.
    model, x, labels, y = interior_linear_problem()
    with torch.no_grad():
        slope = torch.sigmoid(-y * model.score(x))  # ‖∇ₓℓ‖ = σ(−m)·‖w‖
        dual_l1 = slope * model.weight.abs().sum() / math.sqrt(x.shape[1])
        l2 = slope * model.weight.norm()
    paper = GradientRegularization(lam=1.0, h=1e-3, fidelity="paper")(model, x, labels)
    faithful = GradientRegularization(lam=1.0, h=1e-3, fidelity="faithful")(model, x, labels)
    assert paper.parts["reg"].item() == pytest.approx((0.5 * dual_l1.pow(2)).mean().item(), rel=1e-2)
    assert faithful.parts["reg"].item() == pytest.approx((0.5 * l2.pow(2)).mean().item(), rel=1e-2)
    # ‖g‖₁/√d < ‖g‖₂ unless |g| is constant: the two penalties really measure different norms.
    assert paper.parts["reg"].item() < faithful.parts["reg"].item()


def test_gr_step_and_direction_follow_the_fidelity():
    paper, faithful = GradientRegularization(), GradientRegularization(fidelity="faithful")
    assert (paper.h, paper.direction) == (0.01, "sign/sqrt(d)")  # TULIP's --h and --norm L1
    assert (faithful.h, faithful.direction) == (1.0, "l2")  # the authors' tulipce
    assert GradientRegularization(norm="2").direction == "l2"  # ℓ2 is its own dual
    assert GradientRegularization(h=0.5, fidelity="faithful").h == 0.5


def tulip_gradients(model: nn.Module, x: Tensor, y: Tensor, tik: float, h: float) -> list[Tensor]:
    """One training step of TULIP's ``cifar10/train.py`` (github cfinlay/tulip) with ``--norm L1``,
    first-order differences: mean CE + tik·mean(dl²)/2, v = sign(∂ mean CE/∂x)/√d."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    lx = F.cross_entropy(model(x), y, reduction="none")
    loss = lx.mean()
    dx = torch.autograd.grad(loss, x, retain_graph=True)[0]
    x.requires_grad_(False)
    v = dx.view(len(x), -1).sign() / math.sqrt(dx[0].numel())
    lf = F.cross_entropy(model(x + h * v.view(dx.shape)), y, reduction="none")
    dl = (lf - lx) / h
    loss = loss + tik * dl.pow(2).mean() / 2
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_paper_gr_applies_tulips_gradient():
    model = tiny_net()
    x, y = digits_like_batch()
    expected = tulip_gradients(model, x, y, tik=1.0, h=0.01)
    _, grads = loss_and_grads(GradientRegularization(lam=1.0, fidelity="paper"), model, x, y)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


def authors_tulip_gradients(model: nn.Module, x: Tensor, y: Tensor, lam: float, h: float) -> list[Tensor]:
    """The authors' ``tulip_loss`` (``lolip/models/torch_utils/tulip.py`` L12-56; docs/authors-code.md §5.5):
    S.backward() inside the loss, then L.backward() in the training loop; v = ∇S/‖∇S‖₂."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    per_example = F.cross_entropy(model(x), y, reduction="none")
    total = per_example.sum()
    total.backward(retain_graph=True)
    grad = x.grad.detach()
    direction = grad / grad.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    forward = F.cross_entropy(model(x + h * direction), y, reduction="none")
    penalty = 0.5 * ((forward - per_example) / h).pow(2).sum()
    (total + lam * penalty).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_faithful_gr_applies_the_authors_doubled_cross_entropy_gradient():
    model = tiny_net()
    x, y = digits_like_batch()
    expected = authors_tulip_gradients(model, x, y, lam=1.0, h=1.0)
    _, grads = loss_and_grads(GradientRegularization(lam=1.0, fidelity="faithful"), model, x, y)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)
    _, paper_grads = loss_and_grads(GradientRegularization(lam=1.0, h=1.0, fidelity="paper"), model, x, y)
    assert not torch.allclose(paper_grads[-1] * len(y), grads[-1], atol=1e-4), "paper mode counts CE once"


# --- TRADES: the authors' forward order and BatchNorm ------------------------------------------------


def bn_net() -> nn.Module:
    """A BatchNorm network (like WRN-40-10 and ResNet-50): every train-mode forward moves its running statistics."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def running_stats(model: nn.Module) -> list[Tensor]:
    bn = model[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_trades_ends_batchnorm_statistics_on_the_clean_batch_as_the_authors_code_in_both_fidelities():
    # float64: in float32 a sign step of the inner PGD can flip on a last-bit difference between two equal
    # computations done in another order (seen on CI), and the comparison would test rounding, not the code.
    x, y = digits_like_batch(16)
    x = x.double()
    reference = bn_net().double().train()
    torch.manual_seed(7)
    _, expected_loss = authors_strades_step(reference, x, y, eps=0.1, beta=6.0)
    expected = running_stats(reference)

    ours = bn_net().double().train()
    torch.manual_seed(7)
    out = TRADES(eps=0.1, beta=6.0, fidelity="faithful")(ours, x, y)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-9)
    for got, want in zip(running_stats(ours), expected):
        assert torch.allclose(got.double(), want.double(), rtol=1e-9, atol=1e-12)
    assert running_stats(ours)[2].item() == 3, "clean, adversarial, clean: three train-mode forwards"

    # Paper mode runs the same forwards (TRADES' reference order): the same statistics, the mean loss.
    paper = bn_net().double().train()
    torch.manual_seed(7)
    out = TRADES(eps=0.1, beta=6.0, fidelity="paper")(paper, x, y)
    assert out.loss.item() == pytest.approx(expected_loss.item() / len(y), rel=1e-9)
    for got, want in zip(running_stats(paper), expected):
        assert torch.allclose(got.double(), want.double(), rtol=1e-9, atol=1e-12)


# --- LLR -------------------------------------------------------------------------------------------------


def test_linearity_gap_of_a_quadratic_is_half_the_squared_step():
    x = torch.randn(5, 3)
    delta = torch.randn(5, 3)

    def loss(z: Tensor) -> Tensor:
        return 0.5 * z.pow(2).sum(1)

    gap = linearity_gap(loss(x + delta), loss(x), x, delta)  # ∇(½‖x‖²) = x
    assert torch.allclose(gap, 0.5 * delta.pow(2).sum(1), atol=1e-5)


def test_paper_llr_uses_the_input_gradient_and_faithful_llr_does_not():
    model = tiny_net()
    x, y = digits_like_batch()
    paper = {mu: loss_and_grads(LocalLinearity(eps=0.1, mu=mu), model, x, y)[0].item() for mu in (0.0, 10.0)}
    assert paper[10.0] > paper[0.0], "the μ|δᵀ∇ℓ| term must count in paper mode"
    faithful = {mu: loss_and_grads(LocalLinearity(eps=0.1, mu=mu, fidelity="faithful"), model, x, y)[0].item() for mu in (0.0, 10.0)}
    assert faithful[10.0] == pytest.approx(faithful[0.0]), "the authors' zeroed gradient makes μ inert"


def test_faithful_llr_is_cross_entropy_plus_lambda_cross_entropy_at_the_attack():
    model = tiny_net()
    x, y = digits_like_batch()
    objective = LocalLinearity(eps=0.1, lam=4.0, fidelity="faithful")
    torch.manual_seed(0)
    out = objective(model, x, y)
    torch.manual_seed(0)
    x_adv = objective.attack(model, x, y)
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, reduction="sum") + 4.0 * F.cross_entropy(model(x_adv), y, reduction="sum")
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --- fidelity: reductions and attack modes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda fidelity: Natural(fidelity=fidelity),
        lambda fidelity: TRADES(eps=0.1, beta=3.0, fidelity=fidelity),
        lambda fidelity: RST(eps=0.1, lam=2.0, fidelity=fidelity),
        lambda fidelity: AdversarialTraining(eps=0.1, fidelity=fidelity),
    ],
    ids=["natural", "trades", "rst", "at"],
)
def test_faithful_losses_are_batch_sums_of_the_paper_means(make: Callable[[str], Objective]):
    model = tiny_net()  # no dropout or BatchNorm: train-mode and eval-mode attacks coincide
    x, y = digits_like_batch()
    paper, _ = loss_and_grads(make("paper"), model, x, y)
    faithful, _ = loss_and_grads(make("faithful"), model, x, y)
    assert faithful.item() == pytest.approx(len(y) * paper.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("make", "attack_mode_by_fidelity"),
    [
        (lambda fidelity: AdversarialTraining(eps=0.1, fidelity=fidelity), {"paper": False, "faithful": True}),
        (lambda fidelity: RST(eps=0.1, fidelity=fidelity), {"paper": False, "faithful": True}),
        (lambda fidelity: TRADES(eps=0.1, fidelity=fidelity), {"paper": False, "faithful": False}),
        (lambda fidelity: LocalLinearity(eps=0.1, fidelity=fidelity), {"paper": False, "faithful": False}),
    ],
    ids=["at", "rst", "trades", "llr"],
)
def test_inner_attacks_run_in_the_mode_each_fidelity_prescribes(make, attack_mode_by_fidelity):
    for fidelity, attack_in_train_mode in attack_mode_by_fidelity.items():
        recorder = ModeRecorder()
        model = nn.Sequential(recorder, tiny_net()).train()
        objective = make(fidelity)
        objective(model, *digits_like_batch(4))
        attack_forwards = objective.attack.steps  # every step of the inner loop is one forward pass
        assert recorder.seen[:attack_forwards] == [attack_in_train_mode] * attack_forwards, fidelity
        assert recorder.seen[-1] is True, "the training loss is computed in train mode"
        assert model.training and all(m.training for m in model.modules()), "train mode is restored"


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objectives_never_touch_parameter_gradients(name, train_cfg):
    objective = instantiate(train_cfg([f"objective={name}"]).objective)
    model = tiny_net()
    out = objective(model, *digits_like_batch(4))
    assert all(p.grad is None for p in model.parameters())
    assert out.loss.requires_grad and out.loss.dim() == 0
    assert out.logits.shape == (4, 10)
    assert out.parts and all(v.dim() == 0 and not v.requires_grad for v in out.parts.values())


# --- configuration -------------------------------------------------------------------------------------


def test_configs_carry_the_papers_defaults(train_cfg):
    def build(name: str, *extra: str) -> Objective:
        return instantiate(train_cfg([f"objective={name}", *extra]).objective)

    trades = build("trades")
    assert (trades.beta, trades.attack.eps, trades.attack.steps) == (1.0, 0.1, 10)
    assert trades.attack.step_size == pytest.approx(0.02) and trades.attack.start == "gaussian"
    rst = build("rst", "objective.lam=0.5")
    assert rst.lam == 0.5 and rst.attack.start == "uniform" and rst.attack.model_mode == "eval"
    at = build("at", "fidelity=faithful")
    assert at.faithful and at.attack.model_mode == "train" and at.attack.step_size == pytest.approx(0.02)
    gr = build("gr")
    assert (gr.lam, gr.h, gr.norm) == (1.0, 0.01, "inf")
    assert build("gr", "fidelity=faithful").h == 1.0
    assert build("gr", "+experiment/method=gr", "fidelity=faithful").h == 1.0
    llr = build("llr", "data.eps=0.2")
    assert (llr.lam, llr.mu, llr.attack.steps, llr.attack.eps) == (4.0, 3.0, 2, 0.2)
    assert llr.attack.step_size == pytest.approx(0.1)
    assert build("trades", "objective.norm=2").attack.threat.norm == "2"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TRADES(eps=0.1, beta=-1.0), r"objective.beta=-1.0 .*>= 0"),
        (lambda: RST(eps=0.1, lam=-0.5), r"objective.lam=-0.5"),
        (lambda: GradientRegularization(h=0.0), r"objective.h=0.0"),
        (lambda: GradientRegularization(norm="1"), r"objective.norm='1' .*'inf', '2'"),
        (lambda: LocalLinearity(eps=0.1, mu=-3.0), r"objective.mu=-3.0"),
        (lambda: AdversarialTraining(eps=-0.1), r"objective.eps=-0.1"),
        (lambda: AdversarialTraining(eps=0.1, steps=0), r"objective.steps=0"),
        (lambda: TRADES(eps=0.1, norm="1"), r"objective.norm='1' .*'inf', '2'"),
        (lambda: RST(eps=0.1, step_size=-0.01), r"objective.step_size=-0.01"),
        (lambda: Natural(fidelity="exact"), r"fidelity='exact' .*'paper', 'faithful'"),
    ],
)
def test_bad_hyper_parameters_fail_at_construction_with_a_one_line_message(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


# --- end to end ----------------------------------------------------------------------------------------


def logged_columns(run_dir: Path) -> set[str]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return set(next(csv.reader(handle)))


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_trains_and_evaluates_end_to_end(name, train_cfg, tmp_path):
    cfg = train_cfg([*FAST, f"objective={name}", "data.test_size=32"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/adv_acc"] <= metrics["test/acc"] <= 100.0
    objective = instantiate(cfg.objective)
    parts = objective(tiny_net(), *digits_like_batch(2)).parts
    assert {f"train/{part}" for part in parts} | {"train/loss_epoch"} <= logged_columns(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gr", "llr", "at"])
def test_faithful_mode_trains_end_to_end(name, train_cfg):
    metrics = train(train_cfg([*FAST, f"objective={name}", "fidelity=faithful", "optimizer.lr=0.001", "data.test_size=32"]))
    assert 0.0 <= metrics["test/adv_acc"] <= 100.0


@pytest.mark.slow
def test_multirun_sweep_over_objectives(tmp_path):
    args = [
        "-m",
        "objective=natural,at,trades",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "data.train_eval_size=32",
        "data.test_size=32",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
    ]
    proc = run_command("robustlip-train", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "logs").rglob("results.json"))
    assert len(results) == 3
    for path in results:
        assert "test/adv_acc" in json.loads(path.read_text())["metrics"]
    swept = {OmegaConf.load(path.parent / "config.yaml").objective.name for path in results}
    assert swept == {"natural", "at", "trades"}
