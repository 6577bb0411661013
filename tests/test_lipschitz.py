"""The Eq. 3 estimator: right value where the answer is known, batching-invariant, and side-effect free."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustlip.core.errors import ConfigError
from robustlip.metrics import LocalLipschitz, SumState
from robustlip.metrics.lipschitz import INIT_STD, lipschitz_ratio


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second spinning thread makes tiny nets ~50x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _linear(out_features: int, weight: torch.Tensor | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, out_features))
    if weight is not None:
        with torch.no_grad():
            model[1].weight.copy_(weight)
    return model


def _inputs(n: int = 32) -> torch.Tensor:
    # Away from the box edges, so the whole ε-ball is reachable.
    return 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fidelity", ["paper", "faithful"])
def test_linear_single_output_ascent_matches_the_l1_norm_of_its_weights(fidelity):
    # max over the ℓ∞ ball of |w·δ| / ‖δ‖∞ is ‖w‖₁, reached at δ ∝ sign(w): the sign ascent finds it,
    # with the paper's step (ε/5) and with the code's (0.003).
    model = _linear(1)
    closed_form = model[1].weight.abs().sum().item()
    ratios = LocalLipschitz(eps=0.1, fidelity=fidelity, direction="ascent")(model, _inputs())
    assert ratios.shape == (32,)
    assert ratios.mean().item() == pytest.approx(closed_form, rel=0.08)
    # A maximum can never be exceeded (up to the 1e-6 the denominator adds).
    assert ratios.max().item() <= closed_form * (1 + 1e-4)


def test_linear_single_output_descent_moves_down_from_the_random_start():
    # The authors' search lowers the ratio: on a linear map it ends far below the maximum ‖w‖₁ and, on
    # average, below where it started (x + 0.001·N(0, I); one sign step may overshoot for an example).
    model, x = _linear(1), _inputs()
    closed_form = model[1].weight.abs().sum().item()
    torch.manual_seed(0)
    noise = INIT_STD * torch.randn_like(x)
    start = lipschitz_ratio(model(x), model(x + noise), x, x + noise, 1.0, math.inf)
    torch.manual_seed(0)
    descended = LocalLipschitz(eps=0.1, fidelity="faithful")(model, x)
    assert descended.mean().item() < start.mean().item()
    assert descended.mean().item() < 0.1 * closed_form


def test_rank_one_multi_output_matches_its_closed_form():
    # f(x) = u wᵀx: ‖f(x) − f(x')‖₁ = ‖u‖₁ |w·δ|, so the constant is ‖u‖₁ ‖w‖₁.
    g = torch.Generator().manual_seed(2)
    u, w = torch.randn(10, 1, generator=g), torch.randn(1, 64, generator=g)
    model = _linear(10, u @ w)
    estimate = LocalLipschitz(eps=0.1)(model, _inputs()).mean().item()
    assert estimate == pytest.approx((u.abs().sum() * w.abs().sum()).item(), rel=0.08)


def _small_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 64, 10)
    )


def test_mean_does_not_depend_on_the_batch_size():
    model, x = _small_cnn(), _inputs(48)
    estimator = LocalLipschitz(eps=0.1)
    means = []
    for batch in (48, 16, 5):
        meter = SumState(estimator)
        torch.manual_seed(0)
        for chunk in x.split(batch):
            meter.update(estimator(model, chunk))
        means.append(meter.compute().item())
    # Examples never interact; only the 0.001-std start noise is drawn differently per batching.
    assert means[1] == pytest.approx(means[0], rel=0.02)
    assert means[2] == pytest.approx(means[0], rel=0.02)


def test_search_stays_in_the_ball_and_the_box_and_touches_no_parameter_gradient():
    model = _small_cnn().train()
    x = torch.rand(8, 1, 8, 8)
    x_prime, ratios = LocalLipschitz(eps=0.1).search(model, x)
    assert (x_prime - x).abs().max() <= 0.1 + 1e-6
    assert x_prime.min() >= 0 and x_prime.max() <= 1
    assert torch.all(ratios > 0)
    assert model.training, "the model's train mode must be restored"
    assert all(p.grad is None for p in model.parameters())


def test_value_is_computed_in_eval_mode_so_dropout_does_not_enter_it():
    model, x = _small_cnn(), _inputs(8)
    torch.manual_seed(0)
    from_train_mode = LocalLipschitz(eps=0.1)(model.train(), x)
    torch.manual_seed(0)
    from_eval_mode = LocalLipschitz(eps=0.1)(model.eval(), x)
    assert torch.equal(from_train_mode, from_eval_mode)


def test_works_inside_inference_mode_as_lightning_test_loops_run():
    model = _small_cnn()
    with torch.inference_mode():
        x = _inputs(4).clone()
        ratios = LocalLipschitz(eps=0.1)(model, x)
    assert torch.isfinite(ratios).all()


def test_step_size_follows_the_fidelity_switch():
    assert LocalLipschitz(eps=0.1, fidelity="paper").step_size == pytest.approx(0.02)  # ε/5, the paper
    assert LocalLipschitz(eps=0.1, fidelity="faithful").step_size == pytest.approx(0.003)  # the authors' code
    assert LocalLipschitz(eps=0.1, fidelity="faithful", step_size=0.01).step_size == pytest.approx(0.01)


def test_precomputed_clean_logits_give_the_same_ratios():
    model, x = _small_cnn().eval(), _inputs(8)
    torch.manual_seed(0)
    fresh = LocalLipschitz(eps=0.1)(model, x)
    torch.manual_seed(0)
    reused = LocalLipschitz(eps=0.1)(model, x, model(x).detach())
    assert torch.allclose(fresh, reused)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"fidelity": "exact"}, "lipschitz.fidelity"), ({"top_norm": 3}, "lipschitz.top_norm"), ({"steps": 0}, "lipschitz.steps")],
)
def test_bad_settings_fail_with_the_key_named(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        LocalLipschitz(eps=0.1, **kwargs)


# --- the authors' search, transcribed --------------------------------------------------------------


def authors_estimate_local_lip_v2(model: nn.Module, X: torch.Tensor, epsilon: float, step_size: float = 0.003,
                                  perturb_steps: int = 10, batch_size: int = 16) -> float:
    """``estimate_local_lip_v2`` of the authors' ``lolip/utils.py`` (L10-27, L32-75) with top_norm=1,
    btm_norm=inf, on CPU tensors: loss = −ratio, x' += step·sign(∂loss/∂x'), clip to the ε-ball, then to
    [0, 1]; the value is the summed ratio at the final iterate over the number of examples."""

    def local_lip(x, xp, reduction="mean"):
        model.eval()
        down = torch.flatten(x - xp, start_dim=1)
        top = torch.flatten(model(x), start_dim=1) - torch.flatten(model(xp), start_dim=1)
        ret = torch.norm(top, dim=1, p=1) / torch.norm(down + 1e-6, dim=1, p=math.inf)
        return torch.mean(ret) if reduction == "mean" else torch.sum(ret)

    model.eval()
    total_loss = 0.0
    for start in range(0, len(X), batch_size):
        x = X[start:start + batch_size]
        x_adv = x + 0.001 * torch.randn(x.shape)
        for _ in range(perturb_steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = (-1) * local_lip(x, x_adv)
            loss.backward()
            eta = step_size * x_adv.grad.data.sign().detach()
            x_adv = x_adv.data.detach() + eta.detach()
            eta = torch.clamp(x_adv.data - x.data, -epsilon, epsilon)
            x_adv = x.data.detach() + eta.detach()
            x_adv = torch.clamp(x_adv, 0, 1.0)
        total_loss += local_lip(x, x_adv, reduction="sum").item()
    model.zero_grad(set_to_none=True)
    return total_loss / len(X)


def _estimate(estimator: LocalLipschitz, model: nn.Module, X: torch.Tensor, batch_size: int = 16) -> float:
    meter = SumState(estimator)
    for chunk in X.split(batch_size):
        meter.update(estimator(model, chunk))
    return meter.compute().item()


def _lenet_like() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3), nn.Linear(6 * 3 * 3, 32),
        nn.Tanh(), nn.Linear(32, 10),
    )


@pytest.mark.parametrize("eps", [0.1, 0.031, 0.005])
def test_faithful_estimate_is_the_authors_function(eps):
    model = _lenet_like()
    # Whole [0, 1] range, so the box clip of L67 is exercised as well as the ball clip of L65-66.
    X = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(11)
    expected = authors_estimate_local_lip_v2(model, X, epsilon=eps)
    torch.manual_seed(11)
    faithful = LocalLipschitz(eps=eps, fidelity="faithful")
    assert (faithful.direction, faithful.step_size) == ("descent", pytest.approx(0.003))
    assert _estimate(faithful, model, X) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # Eq. 3's maximum (ascent, step ε/5) can only find a larger ratio than the authors' descent.
    torch.manual_seed(11)
    paper = _estimate(LocalLipschitz(eps=eps, fidelity="paper"), model, X)
    assert paper >= expected
    # Ascending is what the authors' function would do with the sign of its loss flipped: not the same number.
    torch.manual_seed(11)
    assert _estimate(LocalLipschitz(eps=eps, fidelity="faithful", direction="ascent"), model, X) > expected


def test_direction_defaults_from_the_fidelity_and_an_explicit_one_wins():
    assert LocalLipschitz(eps=0.1, fidelity="paper").direction == "ascent"
    assert LocalLipschitz(eps=0.1, fidelity="faithful").direction == "descent"
    assert LocalLipschitz(eps=0.1, fidelity="paper", direction="descent").direction == "descent"
    # results.json records repr(estimator): the search must be readable off it.
    assert "direction=descent" in repr(LocalLipschitz(eps=0.1, fidelity="faithful"))
    assert "direction=ascent" in repr(LocalLipschitz(eps=0.1, fidelity="faithful", direction="ascent"))


def test_bad_direction_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"lipschitz.direction='up' is not allowed; choose one of 'ascent', 'descent'") as err:
        LocalLipschitz(eps=0.1, direction="up")
    assert "\n" not in str(err.value)


def test_direction_is_a_config_key(train_cfg):
    from hydra.utils import instantiate

    node = train_cfg(["fidelity=faithful"]).callbacks.robust_evaluation.lipschitz
    assert instantiate(node).direction == "descent"
    node = train_cfg(["fidelity=faithful", "callbacks.robust_evaluation.lipschitz.direction=ascent"]).callbacks.robust_evaluation.lipschitz
    assert instantiate(node).direction == "ascent"
