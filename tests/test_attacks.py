"""Attacks pinned to their definitions: the allowed set, the closed-form worst case of a linear model,
the ordering of attack strengths, and the contract with the model (no parameter gradients, modes kept)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from robustlip.attacks import (
    FGSM,
    PGD,
    KLDivergencePGD,
    LinfRenormThreat,
    LocalLinearityPGD,
    MultiTargeted,
    make_threat,
)
from robustlip.core.errors import ConfigError

EPS = {"inf": 0.1, "2": 0.5}


class BinaryLinear(nn.Module):
    """A linear binary classifier s(x) = wᵀx + b written as two logits (−s/2, s/2).

    Class 1 stands for y = +1 and class 0 for y = −1; the cross-entropy is then the logistic loss
    log(1 + exp(−y·s)), whose ℓ∞ worst case is x − ε·y·sign(w) when the box does not bind.
    """

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(dim, generator=generator)
        weight = weight + 0.1 * weight.sign()  # no coordinate with a vanishing sign
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.tensor(0.3))

    def score(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight + self.bias

    def forward(self, x: Tensor) -> Tensor:
        s = self.score(x)[:, None]
        return torch.cat([-s / 2, s / 2], dim=1)


class ModeRecorder(nn.Module):
    """Identity layer that records the training flag of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def small_net(num_classes: int = 10) -> nn.Module:
    """A tiny CNN with dropout and BatchNorm (the layers whose mode matters)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, num_classes),
    )


def batch_with_box_edges(n: int = 32) -> tuple[Tensor, Tensor]:
    """Images whose pixels are often exactly 0 or 1, where the box constraint binds."""
    torch.manual_seed(1)
    x = torch.rand(n, 1, 8, 8)
    x[x < 0.3] = 0.0
    x[x > 0.7] = 1.0
    return x, torch.randint(0, 10, (n,))


def all_attacks(norm: str) -> dict[str, object]:
    eps = EPS[norm]
    return {
        "pgd": PGD(eps, norm=norm),
        "pgd_restarts": PGD(eps, norm=norm, restarts=2, steps=3),
        "pgd_targeted": PGD(eps, norm=norm, targeted=True),
        "pgd_train_mode": PGD(eps, norm=norm, model_mode="train"),
        "fgsm": FGSM(eps, norm=norm),
        "multi_targeted": MultiTargeted(eps, norm=norm, steps=3),
        "trades_kl": KLDivergencePGD(eps, norm=norm),
        "llr_paper": LocalLinearityPGD(eps, norm=norm),
        "llr_faithful": LocalLinearityPGD(eps, norm=norm, faithful=True),
    }


def perturbation_norm(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(dim=1) if norm == "inf" else delta.norm(dim=1)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_every_attack_stays_in_the_eps_ball_and_the_pixel_box(norm):
    x, y = batch_with_box_edges()
    model = small_net()
    for name, attack in all_attacks(norm).items():
        x_adv = attack(model, x, y)
        assert x_adv.shape == x.shape, name
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
        assert perturbation_norm(x_adv, x, norm).max() <= EPS[norm] * (1 + 1e-5), name
        assert not x_adv.requires_grad, name
        assert (x_adv != x).any(), f"{name} did not move at all"


def test_llr_rescaling_threat_shrinks_the_whole_perturbation_instead_of_clipping():
    threat = LinfRenormThreat(eps=0.1)
    x = torch.full((1, 4), 0.5)
    projected = threat.project(x + torch.tensor([[0.2, 0.05, -0.1, 0.0]]), x)
    assert torch.allclose(projected - x, torch.tensor([[0.1, 0.025, -0.05, 0.0]]))
    stepped = threat.step(x, torch.tensor([[4.0, -2.0, 1.0, 0.0]]), step_size=0.05)
    assert torch.allclose(stepped - x, torch.tensor([[0.05, -0.025, 0.0125, 0.0]]))
    # Box first: a coordinate pushed past 1 is clamped, then the rest is rescaled.
    edge = torch.tensor([[0.95, 0.5]])
    out = threat.project(edge + torch.tensor([[0.3, 0.3]]), edge)
    assert out.max() <= 1.0 and (out - edge).abs().max() <= 0.1 + 1e-7


def test_unknown_norm_and_bad_budgets_fail_with_the_key_value_and_choices():
    with pytest.raises(ConfigError, match=r"norm='1'.*'inf', '2'"):
        make_threat("1", 0.1)
    with pytest.raises(ConfigError, match=r"eps=-0.1"):
        PGD(-0.1)
    with pytest.raises(ConfigError, match=r"attack.steps=0"):
        PGD(0.1, steps=0)
    with pytest.raises(ConfigError, match=r"attack.model_mode='test'"):
        PGD(0.1, model_mode="test")
    with pytest.raises(ConfigError, match=r"attack.random_start='normal'"):
        PGD(0.1, random_start="normal")


def test_configured_defaults_are_the_papers(train_cfg):
    pgd = instantiate(train_cfg(["attack=pgd"]).attack)
    assert (pgd.steps, pgd.step_size, pgd.start) == (10, pytest.approx(0.1 / 5), "uniform")
    mt = instantiate(train_cfg(["attack=multi_targeted"]).attack)
    assert (mt.inner.steps, mt.inner.step_size) == (20, pytest.approx(0.1 / 10))
    assert mt.inner.targeted and mt.inner.start == "uniform"


# --- the closed-form worst case of a linear model ---------------------------------------------------


def interior_linear_problem(n: int = 16, dim: int = 20) -> tuple[BinaryLinear, Tensor, Tensor, Tensor]:
    torch.manual_seed(2)
    model = BinaryLinear(dim)
    x = 0.2 + 0.6 * torch.rand(n, dim)  # at least ε from both box faces: the box never binds
    labels = torch.randint(0, 2, (n,))
    signed = labels.float() * 2 - 1  # y in {-1, +1}
    return model, x, labels, signed


def test_linf_pgd_finds_the_closed_form_worst_case_of_a_linear_model_and_its_loss():
    model, x, labels, y = interior_linear_problem()
    eps = 0.1
    worst = x - eps * y[:, None] * model.weight.detach().sign()
    x_adv = PGD(eps)(model, x, labels)
    assert torch.allclose(x_adv, worst, atol=1e-6)
    with torch.no_grad():
        margin = y * model.score(x)
        expected_loss = F.softplus(-margin + eps * model.weight.abs().sum())
        assert torch.allclose(F.cross_entropy(model(x_adv), labels, reduction="none"), expected_loss, atol=1e-5)


def test_fgsm_is_one_full_step_and_reaches_the_same_corner_on_a_linear_model():
    model, x, labels, y = interior_linear_problem()
    fgsm = FGSM(0.1)(model, x, labels)
    one_step = PGD(0.1, steps=1, step_size=0.1, random_start=False)(model, x, labels)
    assert torch.equal(fgsm, one_step)
    assert torch.allclose(fgsm, x - 0.1 * y[:, None] * model.weight.detach().sign(), atol=1e-6)


def test_l2_pgd_moves_along_the_weight_on_a_linear_model():
    model, x, labels, y = interior_linear_problem()
    eps = 0.05  # small enough that the box never binds
    x_adv = PGD(eps, norm="2", steps=20, random_start=False)(model, x, labels)
    direction = model.weight.detach() / model.weight.detach().norm()
    assert torch.allclose(x_adv, x - eps * y[:, None] * direction, atol=1e-4)


# --- strengths on a trained model ---------------------------------------------------------------------


def robust_accuracy(model: nn.Module, x_adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def mean_loss(model: nn.Module, x_adv: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x_adv), y).item()


def test_pgd_from_the_clean_point_is_at_least_as_strong_as_fgsm(trained_digits_model):
    model, x, y = trained_digits_model
    fgsm = FGSM(0.1)(model, x, y)
    pgd = PGD(0.1, steps=10, random_start=False)(model, x, y)
    assert mean_loss(model, pgd, y) >= mean_loss(model, fgsm, y)
    assert robust_accuracy(model, pgd, y) <= robust_accuracy(model, fgsm, y)


def test_multi_targeted_is_at_least_as_strong_as_untargeted_pgd(trained_digits_model):
    model, x, y = trained_digits_model
    torch.manual_seed(0)
    pgd_acc = robust_accuracy(model, PGD(0.1)(model, x, y), y)
    mt_acc = robust_accuracy(model, MultiTargeted(0.1)(model, x, y), y)
    assert mt_acc <= pgd_acc
    assert pgd_acc < 0.9, "eps=0.1 must be a real threat for a naturally trained digits model"


def test_restarts_never_weaken_pgd(trained_digits_model):
    model, x, y = trained_digits_model
    torch.manual_seed(0)
    single = PGD(0.1, steps=3)(model, x, y)
    torch.manual_seed(0)  # the first restart replays the single run exactly
    restarted = PGD(0.1, steps=3, restarts=3)(model, x, y)
    assert robust_accuracy(model, restarted, y) <= robust_accuracy(model, single, y)
    with torch.no_grad():
        fooled_once = model(single).argmax(1) != y
        assert (model(restarted).argmax(1) != y)[fooled_once].all()


def test_targeted_pgd_moves_predictions_towards_the_target(trained_digits_model):
    model, x, y = trained_digits_model
    target = (y + 1) % 10
    x_adv = PGD(0.3, steps=20, targeted=True)(model, x, target)
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == target).float().mean() > 0.5


# --- the contract with the model ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(all_attacks("inf")))
def test_attacks_leave_parameter_gradients_and_every_submodule_mode_unchanged(name):
    attack = all_attacks("inf")[name]
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, small_net())
    model.train()
    model[1][3].eval()  # a mixed state: dropout in eval, the rest in train
    modes_before = [m.training for m in model.modules()]
    first_param = next(model.parameters())
    first_param.grad = torch.full_like(first_param, 7.0)
    x, y = batch_with_box_edges(8)

    attack(model, x, y)

    assert [m.training for m in model.modules()] == modes_before
    assert torch.equal(first_param.grad, torch.full_like(first_param, 7.0))
    assert all(p.grad is None for p in list(model.parameters())[1:])
    expected_mode = attack.model_mode == "train"
    assert recorder.seen and all(seen == expected_mode for seen in recorder.seen)


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_attacks_work_inside_inference_mode_as_in_lightning_test_loops():
    model = linear_net().eval()
    with torch.inference_mode():
        x, y = batch_with_box_edges(8)
        for name, attack in all_attacks("inf").items():
            x_adv = attack(model, x, y)
            assert perturbation_norm(x_adv, x, "inf").max() <= 0.1 + 1e-6, name


def test_attacks_follow_the_input_dtype_and_device():
    model = linear_net().double().eval()
    x, y = batch_with_box_edges(4)
    for name, attack in all_attacks("inf").items():
        x_adv = attack(model, x.double(), y)
        assert x_adv.dtype == torch.float64 and x_adv.device == x.device, name


def test_eps_zero_returns_the_clean_input():
    model = small_net()
    x, y = batch_with_box_edges(4)
    for attack in (PGD(0.0), MultiTargeted(0.0), KLDivergencePGD(0.0)):
        assert torch.equal(attack(model, x, y), x)


def test_default_step_is_two_eps_over_steps():
    assert PGD(0.1).step_size == pytest.approx(0.02)
    assert PGD(0.1, steps=20).step_size == pytest.approx(0.01)
    assert LocalLinearityPGD(0.1).step_size == pytest.approx(0.05)
    assert FGSM(0.1).step_size == pytest.approx(0.1)
