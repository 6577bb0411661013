"""Tsipras et al. (ICLR 2019) as experiments: closed forms, the toy trade-off, train size, feature use.

The closed forms are checked against an independent derivation and against Monte Carlo on the data
the DataModule generates, with tolerances of a few binomial standard errors at the sample size; the
experiments run small on a fixed seed and check what the paper's argument guarantees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from robustlip.core.errors import ConfigError
from robustlip.data import TsiprasDataModule
from robustlip.metrics.correlation import pixel_label_correlation
from robustlip.metrics.linear import affine_map, binary_weights
from robustlip.theory.tsipras import (
    TsiprasSetting,
    averaging_robust_accuracy,
    averaging_standard_accuracy,
    bayes_robust_accuracy,
    bayes_standard_accuracy,
    bayes_weights,
    binomial_tolerance,
    linear_rule_accuracy,
    normal_cdf,
    robust_accuracy_bound,
    robust_classifier_accuracy,
)
from tests.conftest import compose_train_cfg


# -- closed forms -------------------------------------------------------------------------------------------
def test_bayes_accuracy_matches_the_likelihood_ratio_derivation():
    # Independent derivation: predict +1 iff log(p/(1-p))·x1 + 2η·S > 0 with S = Σxᵢ ~ N(±dη, d), i.e.
    # S > -c·x1 with c = log(p/(1-p))/(2η).
    for p, d in ((0.95, 783), (0.7, 50), (0.99, 10)):
        eta = 3 / math.sqrt(d)
        s = TsiprasSetting(p=p, eta=eta, d=d)
        c = math.log(p / (1 - p)) / (2 * eta)
        expected = p * normal_cdf((d * eta + c) / math.sqrt(d)) + (1 - p) * normal_cdf((d * eta - c) / math.sqrt(d))
        assert bayes_standard_accuracy(s) == pytest.approx(expected, abs=1e-12)
        # Every weak feature moved by ε = 2η against y and x1 by ε too: S -> S - 2ηd, x1 -> x1 - ε.
        eps = 2 * eta
        attacked = TsiprasSetting(p=p, eta=eta, d=d, eps=eps)
        rob = p * normal_cdf((d * eta - eps * d + c * (1 - eps)) / math.sqrt(d)) + (1 - p) * normal_cdf(
            (d * eta - eps * d - c * (1 + eps)) / math.sqrt(d)
        )
        assert bayes_robust_accuracy(attacked) == pytest.approx(rob, abs=1e-12)
    default = TsiprasSetting(p=0.95, eta=3 / math.sqrt(783), d=783, eps=2 * 3 / math.sqrt(783))
    # The paper's picture: near-perfect standard accuracy, robust accuracy near 0, the robust classifier at p.
    assert bayes_standard_accuracy(default) > 0.999 and bayes_robust_accuracy(default) < 0.01
    assert robust_classifier_accuracy(default) == 0.95
    assert averaging_standard_accuracy(default) == pytest.approx(normal_cdf(3.0))
    assert averaging_robust_accuracy(default) == pytest.approx(normal_cdf(-3.0))


def test_no_linear_rule_beats_theorem_2_1():
    """Theorem 2.1: standard accuracy 1 - δ forces robust accuracy <= p/(1-p)·δ at ε >= 2η, for any rule."""
    s = TsiprasSetting(p=0.9, eta=3 / math.sqrt(30), d=30, eps=2 * 3 / math.sqrt(30))
    generator = torch.Generator().manual_seed(0)
    for mix in torch.linspace(0, 1, 11).tolist():
        for _ in range(5):
            weak = torch.rand(s.d, generator=generator, dtype=torch.float64) * mix
            a1 = (1 - mix) * 3 + float(torch.rand(1, generator=generator))
            bias = float(torch.randn(1, generator=generator)) * 0.3
            std = linear_rule_accuracy(s, a1, weak, bias, eps=0.0)
            rob = linear_rule_accuracy(s, a1, weak, bias)
            assert rob <= robust_accuracy_bound(s, std) + 1e-9
    assert robust_accuracy_bound(TsiprasSetting(p=0.9, eta=0.1, d=30, eps=0.1), 0.99) == 1.0  # ε < 2η: no bound


def test_closed_forms_match_monte_carlo_on_the_generated_data():
    dm = TsiprasDataModule(side=6, n_train=1, n_test=20000, val_size=0, seed=5)
    dm.setup()
    x, y = dm.test_set.tensors
    features = (x.flatten(1).double() - 0.5) / dm.scale
    sign = (y * 2 - 1).double()
    eps = 2 * dm.eta
    s = TsiprasSetting(p=dm.p, eta=dm.eta, d=dm.d, eps=eps)
    n = len(y)
    a1, a = bayes_weights(s)
    generator = torch.Generator().manual_seed(1)
    rules = {
        "bayes": (torch.tensor([a1] + [a] * s.d, dtype=torch.float64), 0.0),
        "random": (torch.randn(s.d + 1, generator=generator, dtype=torch.float64) + 0.3, 0.2),
    }
    for weights, bias in rules.values():
        for radius in (0.0, eps):
            attacked = features - radius * torch.sign(weights)[None] * sign[:, None]
            measured = float((((attacked @ weights) + bias) * sign > 0).double().mean())
            form = linear_rule_accuracy(s, float(weights[0]), weights[1:], bias, eps=radius)
            assert abs(measured - form) <= binomial_tolerance(form, n), (measured, form)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^eps=-0\.1 is not allowed; it must be >= 0$"):
        TsiprasSetting(p=0.95, eta=0.1, d=10, eps=-0.1)
    with pytest.raises(ConfigError, match="p=0.3"):
        TsiprasSetting(p=0.3, eta=0.1, d=10)


# -- experiments, run small -----------------------------------------------------------------------------------
def _train(tmp_path: Path, overrides: list[str]) -> dict:
    from robustlip.train import train

    torch.set_num_threads(1)
    cfg = compose_train_cfg(tmp_path, overrides)
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return json.loads((tmp_path / "results.json").read_text())


def _toy(side: int) -> list[str]:
    eta = 3 / math.sqrt(side * side - 1)
    return ["experiment=tsipras_toy", f"data.side={side}", f"data.in_features={side * side}", "data.n_train=3000",
            f"data.eps={2 * eta * 0.125 * 1.0001}", "trainer.max_epochs=3", "+trainer.limit_val_batches=1"]


def test_toy_linear_models_match_their_closed_forms_and_the_paper(tmp_path):
    natural = _train(tmp_path / "natural", _toy(28))["tsipras"]
    at = _train(tmp_path / "at", [*_toy(28), "objective=at"])["tsipras"]
    n = natural["setting"]["n_test"]
    assert n == 2000 and natural["setting"]["eps_features"] >= natural["setting"]["two_eta"]
    for section in (natural, at):
        rows = {r["classifier"]: r for r in section["rows"]}
        # Each measured accuracy (the PGD evaluation for the model, the exact attack for the references) is
        # within 4 binomial standard errors of the closed form for the same rule.
        assert all(r["within_tolerance"] for r in rows.values()), rows
        assert rows["this model"]["closed_form"] is not None
    model = lambda s: next(r for r in s["rows"] if r["classifier"] == "this model")
    p, bayes = natural["closed_form"]["robust_classifier_acc"], natural["closed_form"]["bayes_standard_acc"]
    # Natural training finds a near-Bayes rule that the ε = 2η attack breaks (Sec. 2.1) ...
    assert model(natural)["measured"]["standard_acc"] >= bayes - 0.02
    assert model(natural)["measured"]["robust_acc"] <= 0.05
    # ... AT keeps the robust feature only: standard and robust accuracy both ≈ p (Theorem 2.2).
    tol = binomial_tolerance(p, n)
    assert abs(model(at)["measured"]["standard_acc"] - p) <= tol + 0.01
    assert abs(model(at)["measured"]["robust_acc"] - p) <= tol + 0.01
    assert model(at)["weights"]["robust_share_of_l1"] > 10 * model(natural)["weights"]["robust_share_of_l1"]


def test_train_size_sweep_is_reported_with_seeds_and_more_data_helps(tmp_path, capsys):
    from robustlip.tsipras import main as tsipras_main

    base = ["experiment=tsipras_train_size", "trainer.max_steps=40", "data.train_eval_size=64"]
    acc = {}
    for size, seed in ((20, 0), (20, 1), (600, 0)):
        acc[(size, seed)] = _train(tmp_path / "sweep" / f"{size}_{seed}", [*base, f"data.train_size={size}", f"seed={seed}",
                                                                          f"data.seed={seed}"])["metrics"]["test/acc"]
    # Nested stratified subsets of one seed: 30x more examples, same steps, clearly better (digits MLP).
    assert acc[(600, 0)] > acc[(20, 0)] + 10
    assert tsipras_main(["train_size", str(tmp_path / "sweep"), f"out_dir={tmp_path / 'report'}"]) == 0
    out = capsys.readouterr().out
    mean = (acc[(20, 0)] + acc[(20, 1)]) / 2
    std = abs(acc[(20, 0)] - acc[(20, 1)]) / math.sqrt(2)
    assert f"| digits | 20 | Natural | 2 | {mean:.2f} ± {std:.2f} |" in out
    assert f"| digits | 600 | Natural | 1 | {acc[(600, 0)]:.2f} ± 0.00 |" in out
    assert (tmp_path / "report" / "train_size_digits.png").stat().st_size > 1000


def test_features_masked_natural_training_is_more_robust_and_at_weights_correlated_pixels(tmp_path, capsys):
    from robustlip.reporting.tables import find_runs
    from robustlip.reporting.tsipras import linear_weights, training_correlation, weight_share
    from robustlip.tsipras import main as tsipras_main

    base = ["experiment=tsipras_features", "data=digits", "data.classes=[3,8]", "trainer.max_epochs=8",
            "data.batch_size=32", "data.train_eval_size=null"]
    _train(tmp_path / "runs" / "natural", base)
    _train(tmp_path / "runs" / "at", [*base, "objective=at"])
    masked = _train(tmp_path / "runs" / "masked", [*base, "callbacks.correlation_mask.threshold=0.5"])
    runs = {r.path.name: r for r in find_runs([tmp_path / "runs"])[0]}
    corr = training_correlation(runs["natural"])
    w = {name: linear_weights(run) for name, run in runs.items()}
    keep = corr.abs() > 0.5
    assert masked["feature_selection"]["pixels_kept"] == int(keep.sum()) > 0
    assert torch.all(w["masked"][~keep] == 0) and torch.all(w["masked"][keep] != 0)
    # The robust model puts more of its weight on strongly correlated pixels; the model that can only
    # use those pixels is more robust than the natural one (Tsipras et al., Sec. 4).
    assert weight_share(w["at"], corr, 0.5) > weight_share(w["natural"], corr, 0.5)
    adv = {name: run.metrics["test/adv_acc"] for name, run in runs.items()}
    assert adv["masked"] > adv["natural"] and adv["at"] > adv["natural"]
    assert tsipras_main(["features", str(tmp_path / "runs"), f"out_dir={tmp_path / 'report'}"]) == 0
    out = capsys.readouterr().out
    assert f"| Natural, abs(ρ) > 0.5 | {int(keep.sum())} |" in out
    # Every row of the markdown table has the header's number of cells (no "|" inside a cell).
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(runs) and len({line.count("|") for line in table}) == 1
    for figure in ("weights_vs_correlation.png", "weight_maps.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 1000


def test_linear_weights_are_read_through_any_affine_wrapping():
    from robustlip.models import MLP, InputMask

    torch.manual_seed(0)
    net = InputMask(MLP(num_classes=2, in_features=16, hidden=[], mean=[0.3], std=[0.2]), in_features=16)
    net.set_mask(torch.arange(16) % 3 != 0)
    weights, bias = affine_map(net, (1, 4, 4))
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(x.flatten(1).double() @ weights.T + bias, net(x).double(), atol=1e-5, rtol=0)
    v, _c = binary_weights(weights, bias)
    assert torch.all(v[torch.arange(16) % 3 == 0] == 0)
    assert affine_map(MLP(num_classes=2, in_features=16, hidden=[8]), (1, 4, 4)) is None
    labels = torch.tensor([0, 1, 0, 1])
    pixels = torch.stack([labels.float(), 1 - labels.float(), torch.zeros(4), torch.tensor([1.0, 0, 0, 0])], 1)
    corr = pixel_label_correlation([(pixels, labels)])
    torch.testing.assert_close(corr[:3], torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    assert corr[3] == pytest.approx(-1 / math.sqrt(3))


def test_bad_inputs_of_the_experiments_are_one_line(tmp_path, capsys):
    from robustlip.callbacks.feature_selection import CorrelationMask
    from robustlip.callbacks.tsipras import TsiprasTheory
    from robustlip.tsipras import main as tsipras_main

    with pytest.raises(ConfigError, match=r"^callbacks\.tsipras_theory needs data=tsipras; this run has data=digits$"):
        TsiprasTheory(eps=0.1, data_name="digits")
    with pytest.raises(ConfigError, match=r"^attack\.eps=-0\.1 is not allowed"):
        TsiprasTheory(eps=-0.1)
    with pytest.raises(ConfigError, match="needs two classes"):
        CorrelationMask(threshold=0.2, num_classes=10)
    with pytest.raises(ConfigError, match=r"threshold=1\.5 is not allowed"):
        CorrelationMask(threshold=1.5)
    assert tsipras_main(["toy", str(tmp_path)]) == 2
    assert tsipras_main(["sizes", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "no results.json with a tsipras section" in errors[0] and "choose one of" in errors[1]
