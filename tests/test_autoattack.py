"""AutoAttack through the official code: at least as strong as PGD-10, its flags, and robustlip's attack contract.

The full standard version runs once, on 12 examples (~7 s of one CPU thread, mostly Square's 5,000
queries on the points that survive); the other tests use a one- or two-attack custom list, which costs
a second or less.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from robustlip.attacks import PGD, AutoAttack
from robustlip.core.errors import ConfigError
from tests.test_attacks import ModeRecorder, batch_with_box_edges, small_net

EPS = 0.1


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


@pytest.fixture(scope="module")
def standard_run(trained_digits_model):
    """PGD-10 and AutoAttack (standard) on the same 12 held-out digits, eps = 0.1."""
    torch.set_num_threads(1)
    model, x, y = trained_digits_model
    x, y = x[:12], y[:12]
    torch.manual_seed(0)
    x_pgd = PGD(EPS, steps=10)(model, x, y)
    attack = AutoAttack(EPS, version="standard", seed=0)
    x_aa = attack(model, x, y)
    return model, x, y, x_pgd, x_aa, attack


def test_standard_autoattack_is_at_least_as_strong_as_pgd10_on_the_same_examples(standard_run):
    model, _, y, x_pgd, x_aa, _ = standard_run
    assert accuracy(model, x_aa, y).sum() <= accuracy(model, x_pgd, y).sum()


def test_apgd_ce_and_apgd_t_beat_pgd10_on_60_examples(trained_digits_model):
    """The standard version's first two attacks (where nearly all its strength is) on more examples."""
    model, x, y = trained_digits_model
    x, y = x[:60], y[:60]
    torch.manual_seed(0)
    pgd_correct = accuracy(model, PGD(EPS, steps=10)(model, x, y), y)
    x_aa = AutoAttack(EPS, version="custom", attacks=["apgd-ce", "apgd-t"])(model, x, y)
    aa_correct = accuracy(model, x_aa, y)
    assert pgd_correct.float().mean() < 0.9, "eps=0.1 must be a real threat for a naturally trained model"
    assert aa_correct.sum() <= pgd_correct.sum()
    # AutoAttack only attacks what the model gets right: a clean mistake stays the clean image.
    clean_wrong = ~accuracy(model, x, y)
    assert torch.equal(x_aa[clean_wrong], x[clean_wrong])


def test_standard_autoattack_stays_in_the_eps_ball_and_the_pixel_box_and_raises_no_flag(standard_run):
    _, x, _, _, x_aa, attack = standard_run
    assert x_aa.shape == x.shape and x_aa.dtype == x.dtype
    assert (x_aa - x).abs().amax() <= EPS + 1e-6
    assert x_aa.min() >= 0 and x_aa.max() <= 1
    assert attack.flags == {}, "an ordinary deterministic logit model must not be flagged"
    assert attack.seconds > 0


class Softmax(nn.Module):
    """A model that returns probabilities instead of logits: gradients vanish where it is confident."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(dim=1)


class InputNoise(nn.Module):
    """A randomised model: fresh Gaussian noise on the input at every call, also in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x + 0.05 * torch.randn_like(x))


@pytest.mark.parametrize(
    ("wrap", "expected"),
    [(Softmax, {"softmax_output"}), (InputNoise, {"randomized"}), (lambda m: m, set())],
    ids=["softmax", "randomised", "plain"],
)
def test_autoattack_flags_fire_for_softmax_outputs_and_randomised_models(
    trained_digits_model, wrap, expected
):
    model, x, y = trained_digits_model
    attack = AutoAttack(EPS, version="custom", attacks=["apgd-ce"])
    attack(wrap(model), x[:20], y[:20])
    assert set(attack.flags) == expected
    for entry in attack.flags.values():
        assert entry["batches"] == 1 and "flags_doc.md" in entry["message"]
    attack.reset_records()
    assert attack.flags == {} and attack.seconds == 0.0


def test_flags_count_the_batches_they_fired_in(trained_digits_model):
    model, x, y = trained_digits_model
    attack = AutoAttack(EPS, version="custom", attacks=["apgd-ce"])
    for batch in (slice(0, 10), slice(10, 20)):
        attack(Softmax(model), x[batch], y[batch])
    attack(model, x[20:30], y[20:30])
    assert attack.flags["softmax_output"]["batches"] == 2


def test_fewer_than_ten_classes_targets_every_wrong_class_and_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    x, _ = batch_with_box_edges(16)
    y = model(x).argmax(1).detach()  # all correct before the attack, so APGD-T has work to do
    attack = AutoAttack(0.01, version="custom", attacks=["apgd-t"])
    x_adv = attack(model, x, y)  # the official code alone fails here: it targets 9 runner-up classes
    assert (x_adv - x).abs().amax() <= 0.01 + 1e-6
    assert set(attack.flags) == {"too_few_classes"}


def test_autoattack_keeps_the_attack_contract_modes_parameter_grads_and_the_callers_rng():
    recorder = ModeRecorder()
    model = nn.Sequential(recorder, small_net())
    model.train()
    first_param = next(model.parameters())
    first_param.grad = torch.full_like(first_param, 7.0)
    modes_before = [m.training for m in model.modules()]
    x, y = batch_with_box_edges(8)
    attack = AutoAttack(EPS, version="custom", attacks=["apgd-ce", "fab-t"], seed=3)

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    attack(model, x, y)
    assert torch.equal(torch.rand(3), expected_next), "AutoAttack's reseeding must not leak to the caller"

    assert [m.training for m in model.modules()] == modes_before
    assert recorder.seen and not any(recorder.seen), "the search must see the model in eval mode"
    assert torch.equal(first_param.grad, torch.full_like(first_param, 7.0))
    assert all(p.grad is None for p in list(model.parameters())[1:]), (
        "FAB's backward must not reach parameters"
    )
    assert all(p.requires_grad for p in model.parameters())


def test_same_seed_same_adversarial_examples(trained_digits_model):
    model, x, y = trained_digits_model
    runs = [
        AutoAttack(EPS, version="custom", attacks=["apgd-ce"], seed=1)(model, x[:20], y[:20])
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_autoattack_runs_inside_inference_mode_and_under_bf16_autocast(trained_digits_model):
    model, x, y = trained_digits_model
    x, y = x[:20], y[:20]
    attack = AutoAttack(EPS, version="custom", attacks=["apgd-ce"])
    with torch.inference_mode():
        x_inf = x.clone()
        assert (attack(model, x_inf, y) - x).abs().amax() <= EPS + 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        x_adv = attack(model, x, y)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().amax() <= EPS + 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert accuracy(model, x_adv, y).float().mean() < accuracy(model, x, y).float().mean()


def test_inputs_outside_the_pixel_box_are_refused():
    model = small_net().eval()
    x, y = batch_with_box_edges(4)
    with pytest.raises(ValueError, match=r"inputs in \[0, 1\]"):
        AutoAttack(EPS, version="custom", attacks=["apgd-ce"])(model, x - 0.5, y)


def test_eps_zero_returns_the_clean_input():
    model = small_net().eval()
    x, y = batch_with_box_edges(4)
    assert torch.equal(AutoAttack(0.0)(model, x, y), x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"version": "fast"},
            "attack.version='fast' is not allowed; choose one of 'standard', 'plus', 'rand'",
        ),
        ({"norm": "l1", "version": "plus"}, "attack.version='plus' is not allowed with attack.norm='L1'"),
        ({"norm": "l1", "version": "rand"}, "attack.version='rand' is not allowed with attack.norm='L1'"),
        ({"norm": "L3"}, "attack.norm='L3' is not allowed; choose one of 'Linf', 'L2', 'L1'"),
        ({"eps": -0.1}, "attack.eps=-0.1 is not allowed; it must be a number >= 0"),
        ({"version": "custom"}, "attack.attacks=None is not allowed with attack.version='custom'"),
        (
            {"version": "custom", "attacks": ["pgd"]},
            "attack.attacks='pgd' is not allowed; choose one of 'apgd-ce'",
        ),
        (
            {"attacks": ["apgd-ce"]},
            "attack.attacks=['apgd-ce'] is not allowed with attack.version='standard'",
        ),
        ({"num_classes": 2}, "runs apgd-t, which needs at least 4 classes; the model has 2"),
        ({"version": "rand", "num_classes": 2}, "runs apgd-dlr, which needs at least 3 classes"),
        ({"seed": 1.5}, "attack.seed=1.5 is not allowed; it must be an integer"),
    ],
)
def test_bad_settings_fail_early_with_one_line_naming_the_key(kwargs, message):
    kwargs = {"eps": EPS, **kwargs}
    with pytest.raises(ConfigError) as error:
        AutoAttack(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_l1_with_the_standard_version_is_accepted():
    assert AutoAttack(EPS, norm="l1").aa_norm == "L1"
    assert AutoAttack(EPS, norm="inf").aa_norm == "Linf" and AutoAttack(EPS, norm=2).aa_norm == "L2"
    # The attack contract's norm is robustlip's one spelling, as for PGD (attacks/base.py).
    assert [AutoAttack(EPS, norm=n).norm for n in ("l1", "Linf", 2)] == ["1", "inf", "2"]


def test_config_group_takes_eps_and_classes_from_the_data(train_cfg):
    attack = instantiate(train_cfg(["attack=autoattack", "data=digits", "data.eps=0.2"]).attack)
    assert isinstance(attack, AutoAttack)
    assert (attack.eps, attack.aa_norm, attack.version, attack.seed) == (0.2, "Linf", "standard", 0)
    assert attack.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert attack.num_classes == 10
