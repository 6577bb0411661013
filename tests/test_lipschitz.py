"""The Eq. 3 estimator: right value where the answer is known, batching-invariant, and side-effect free."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustlip.metrics import LocalLipschitz, SumState
from robustlip.runs.errors import ConfigError


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
def test_linear_single_output_matches_the_l1_norm_of_its_weights(fidelity):
    # max over the ℓ∞ ball of |w·δ| / ‖δ‖∞ is ‖w‖₁, reached at δ ∝ sign(w): the sign ascent finds it.
    model = _linear(1)
    closed_form = model[1].weight.abs().sum().item()
    ratios = LocalLipschitz(eps=0.1, fidelity=fidelity)(model, _inputs())
    assert ratios.shape == (32,)
    assert ratios.mean().item() == pytest.approx(closed_form, rel=0.08)
    # A maximum can never be exceeded (up to the 1e-6 the denominator adds).
    assert ratios.max().item() <= closed_form * (1 + 1e-4)


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
