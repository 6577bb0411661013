"""The spline staircase of Raghunathan et al. (ICML 2020) in closed form (robustlip.theory.staircase) and
its command robustlip-staircase: estimators against brute-force solves, the paper's inequalities on a
sweep, Theorem 1's decomposition against direct computation, the files the command writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from robustlip.core.errors import ConfigError
from robustlip.staircase import staircase as run_staircase
from robustlip.theory.staircase import Staircase, constrained_lstsq, second_difference_penalty, sweep
from tests.conftest import run_command

PAPER = Staircase()  # Figure 6a's population (splines/spline_tradeoff.py)
#: One shift probability for draws and errors: the setting in which θ_rst is the Σ-projection of θ_std.
ONE_SHIFT = Staircase(error_shift_prob=None)
#: The authors' labeled sizes for 10 stairs (splines/spline_tradeoff.py get_num_examples).
PAPER_NS = [22, 30, 35, 40, 50, 80, 100, 200, 300, 400, 500, 1000]


# ------------------------------------------------------------------------------------------------
# The setting
# ------------------------------------------------------------------------------------------------
def test_paper_setting_has_the_authors_basis_and_a_well_specified_truth():
    p = PAPER
    assert p.dim == 2 * p.num_stairs + 2  # 22 cubic B-splines for 10 stairs, as the authors' get_P(2s+2)
    assert p.prob.sum() == pytest.approx(1.0)
    assert p.stair_weights[0] / p.stair_weights[-1] == pytest.approx(20.0)  # 1/5 vs 0.01
    grid = np.linspace(p.points.min(), p.points.max(), 301)
    basis = p.features(grid)
    assert (basis >= -1e-12).all() and np.allclose(basis.sum(axis=1), 1.0)  # B-splines: partition of unity
    # θ* reproduces the staircase at every point and perturbation: zero standard and robust error.
    assert np.allclose(p.design @ p.theta_star, p.targets, atol=1e-10)
    assert abs(p.std_error(p.theta_star)) < 1e-20 and p.robust_error(p.theta_star) < 1e-20
    # Σ is the second moment of the features under the input distribution (one shift probability).
    rng = np.random.default_rng(0)
    draws = ONE_SHIFT.features(ONE_SHIFT.points[ONE_SHIFT.sample(200_000, rng)])
    assert np.allclose(draws.T @ draws / len(draws), ONE_SHIFT.sigma, atol=5e-3)


def test_penalty_is_the_sum_of_squared_second_differences():
    theta = np.random.default_rng(1).normal(size=9)
    assert theta @ second_difference_penalty(9) @ theta == pytest.approx(np.sum(np.diff(theta, n=2) ** 2))


def test_constrained_lstsq_equals_the_kkt_solution():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(12, 7)), rng.normal(size=12)
    c, d = rng.normal(size=(3, 7)), rng.normal(size=3)
    kkt = np.block([[2 * a.T @ a, c.T], [c, np.zeros((3, 3))]])
    expected = np.linalg.solve(kkt, np.concatenate([2 * a.T @ b, d]))[:7]
    assert np.allclose(constrained_lstsq(c, d, design=a, target=b), expected, atol=1e-10)
    with pytest.raises(ValueError, match="inconsistent"):
        constrained_lstsq(np.vstack([c, c[:1]]), np.concatenate([d, [d[0] + 1.0]]))


# ------------------------------------------------------------------------------------------------
# The published settings against the authors' scripts (github p-lambda/robust_tradeoff at 3999ed4)
# ------------------------------------------------------------------------------------------------
def authors_get_feats(x: np.ndarray, knots: np.ndarray, left_offset: int) -> np.ndarray:
    """``get_feats`` of splines/spline_tradeoff.py (L80-103; ``left_offset=0``) and splines/fig2_spline.py
    (L73-97, whose left padding is ``aug - M - 1 - knots[0]``: ``left_offset=1``); ``np.int`` → ``int``."""
    x = x[:, np.newaxis]
    m_order = 4
    aug = np.arange(1, m_order)
    knots = np.r_[aug - m_order - left_offset - knots[0], knots, aug + knots[-1]]
    bases = (x >= knots[:-1]).astype(int) * (x < knots[1:]).astype(int)
    maxi = len(knots) - 1
    for m in range(2, m_order + 1):
        maxi -= 1
        left = (x - knots[:maxi]) * bases[:, :maxi] / (knots[m - 1:maxi + m - 1] - knots[:maxi])
        right = (knots[m:maxi + m] - x) * bases[:, 1:maxi + 1] / (knots[m:maxi + m] - knots[1:maxi + 1])
        bases = left + right
    return bases


def authors_knots(num_stairs: int, adv_eps: float = 0.5) -> np.ndarray:
    return np.sort(np.r_[np.arange(num_stairs), np.arange(num_stairs) + adv_eps])


def authors_test_mse(theta_feats, num_stairs: int, weights: np.ndarray, x_noise: float, robust: bool) -> float:
    """``test_mse`` of spline_tradeoff.py (L146-173), noiseless (noise_eps = 0), slope 1: per stair, x_noise on
    i + ε and 1 − x_noise on i (standard), or the larger of the two (robust)."""
    total = []
    for i in range(num_stairs):
        err_shifted, err_clean = ((float(theta_feats(np.array([t]))[0]) - i) ** 2 for t in (i + 0.5, float(i)))
        total.append(max(err_shifted, err_clean) if robust else x_noise * err_shifted + (1 - x_noise) * err_clean)
    return float(np.sum(np.asarray(total) * weights))


def composed_problem(train_cfg, *overrides: str) -> tuple[Staircase, object]:
    from robustlip.runs.config import instantiate_group

    cfg = train_cfg(list(overrides), config_name="staircase")
    return instantiate_group(cfg, "staircase"), cfg


def test_default_setting_is_figure_6a_of_spline_tradeoff(train_cfg):
    from robustlip.staircase import check_sweep

    p, cfg = composed_problem(train_cfg)
    assert cfg.setting_name == "figure6a" and p == PAPER
    # x_noise = 0.01: generate_x_noise shifts with probability 0.01 · ½, test_mse weights the shift by 0.01.
    assert (p.shift_prob, p.error_shift_prob, p.num_stairs) == (0.005, 0.01, 10)
    ns, trials, unlabeled, _ = check_sweep(cfg, p)
    assert ns == PAPER_NS and unlabeled == 50000
    assert trials == [2000] * 9 + [25] * 3  # num_trials = 25 if j > 8 else 2000
    assert np.allclose(p.features(p.points), authors_get_feats(p.points, authors_knots(10), 0), atol=1e-12)
    # Both errors equal the authors' test_mse on any θ (their θ* fits every support point: y = ⌊t⌋).
    theta = p.theta_std(np.array([0, 2, 4, 8]))
    weights = np.r_[[0.2] * 5, [0.01] * 5] / 1.05
    for robust, ours in ((False, p.std_error(theta)), (True, p.robust_error(theta))):
        expected = authors_test_mse(lambda t: p.features(t) @ theta, 10, weights, 0.01, robust)
        assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # The sampler: a draw is a perturbation with probability 0.005.
    assert p.prob.reshape(10, 2)[:, 1].sum() == pytest.approx(0.005)


@pytest.mark.slow
def test_figure_2_setting_is_fig2_spline(train_cfg):
    p, cfg = composed_problem(train_cfg, "setting=figure2")
    assert (p.num_stairs, p.shift_prob, p.rst_anchor, cfg.example.num_unlabeled) == (7, 0.05, "floor", 10000)
    assert list(cfg.example.labeled) == [0, 1, 2, 3]
    knots = authors_knots(7)
    assert np.allclose(p.design, authors_get_feats(p.points, knots, 1), atol=1e-12)  # its own padding: -4, -3, -2
    assert p.dim == 16
    # θ_rst as fig2_spline.py L158-170 poses it: θ_std read at ⌊u⌋, fitted at ⌊u⌋, consistent on every draw.
    labeled = np.array([0, 1, 2, 3]) * 2
    rng = np.random.default_rng(0)
    draws = p.sample(10000, rng)
    u = p.points[draws]
    std = p.theta_std(labeled)
    at_floor, at_shift = p.features(np.floor(u)), p.features(np.floor(u) + 0.5)
    fitted = p.features(np.r_[np.floor(p.points[labeled]), np.floor(p.points[labeled]) + 0.5])
    constraints = np.vstack([fitted, at_floor - at_shift])
    rhs = np.r_[p.targets[labeled], p.targets[labeled], np.zeros(len(u))]
    theirs = constrained_lstsq(constraints, rhs, design=at_floor, target=at_floor @ std, penalty=p.penalty)
    ours = p.theta_rst(labeled, np.bincount(draws, minlength=len(p.points)), theta_std=std)
    assert np.allclose(p.design @ ours, p.design @ theirs, atol=1e-8)
    # Read at the draw itself instead (spline_tradeoff.py's anchor), the fit is another one.
    elsewhere = Staircase(**{**_fields(p), "rst_anchor": "point"})
    point = elsewhere.theta_rst(labeled, np.bincount(draws, minlength=len(p.points)), theta_std=std)
    assert not np.allclose(p.design @ point, p.design @ theirs, atol=1e-6)


def _fields(p: Staircase) -> dict:
    return {name: getattr(p, name) for name in ("num_stairs", "eps", "perturbation", "shift_prob", "heavy_stairs",
                                                "heavy_weight", "light_weight", "slope", "penalty_ridge",
                                                "error_shift_prob", "left_pad_shift", "rst_anchor")}


def test_shift_probability_0_1_is_a_named_variant(train_cfg):
    p, cfg = composed_problem(train_cfg, "setting=shift01")
    assert (p.shift_prob, p.error_shift_prob, cfg.sweep.trials, cfg.sweep.large_n) == (0.1, None, 500, None)
    assert np.allclose(p.error_prob, p.prob)


# ------------------------------------------------------------------------------------------------
# Each estimator against a brute-force solve on a tiny instance
# ------------------------------------------------------------------------------------------------
TINY = Staircase(num_stairs=4, heavy_stairs=2)


def _slsqp(objective, constraints: np.ndarray, rhs: np.ndarray, dim: int) -> np.ndarray:
    """A general-purpose constrained optimiser from zero: no use of the closed forms under test.

    SLSQP needs independent equality constraints: a consistent system Aθ = r is replaced by the same
    equations in the basis of A's column space (UᵣᵀAθ = Uᵣᵀr), which has the same solutions.
    """
    u, s, _ = np.linalg.svd(constraints, full_matrices=False)
    basis = u[:, s > 1e-10 * s[0]]
    constraints, rhs = basis.T @ constraints, basis.T @ rhs
    result = minimize(objective, np.zeros(dim), method="SLSQP",
                      constraints=[{"type": "eq", "fun": lambda th: constraints @ th - rhs, "jac": lambda th: constraints}],
                      options={"ftol": 1e-14, "maxiter": 2000})
    assert result.success, result.message
    return result.x


def _norm(p: Staircase):
    return lambda th: float(th @ p.penalty @ th)


def test_std_and_aug_equal_brute_force_min_norm():
    p = TINY
    labeled = np.array([0, 2, 3])  # t = 0, t = 1, t = 1.5 (a shifted input of stair 1)
    brute_std = _slsqp(_norm(p), p.design[labeled], p.targets[labeled], p.dim)
    assert np.allclose(p.theta_std(labeled), brute_std, atol=1e-5)
    # θ_aug also fits every perturbation of the labeled stairs (stairs 0 and 1: t = 0, .5, 1, 1.5), same targets.
    fitted = np.flatnonzero(np.isin(p.stair, [0, 1]))
    brute_aug = _slsqp(_norm(p), p.design[fitted], p.targets[fitted], p.dim)
    assert np.allclose(p.theta_aug(labeled), brute_aug, atol=1e-5)
    assert not np.allclose(brute_std, brute_aug, atol=1e-3)  # the augmentation changes the estimate


@pytest.mark.parametrize("consistency", [True, False])
def test_rst_equals_brute_force_constrained_least_squares(consistency):
    p = TINY
    labeled = np.array([0, 2])
    counts = np.array([50, 3, 40, 2, 7, 1, 6, 0])  # unlabeled draws per support point (stair-major)
    std = p.theta_std(labeled)
    rst = p.theta_rst(labeled, counts, consistency=consistency)
    rows = [p.design[np.flatnonzero(np.isin(p.stair, [0, 1]))]]
    if consistency:  # every stair an unlabeled draw hit predicts the same at t and t + eps
        rows += [p.design[2 * i + 1] - p.design[2 * i] for i in range(p.num_stairs) if counts[2 * i:2 * i + 2].sum()]
    constraints = np.vstack(rows)
    rhs = np.concatenate([p.targets[np.isin(p.stair, [0, 1])], np.zeros(len(constraints) - 4)])

    def objective(th):
        return float(counts @ (p.design @ (th - std)) ** 2)

    brute = _slsqp(objective, constraints, rhs, p.dim)
    assert objective(rst) <= objective(brute) + 1e-7
    assert np.allclose(constraints @ rst, rhs, atol=1e-9)
    # The argmin is unique where unlabeled draws fell (ties are directions none of them sees).
    seen = counts > 0
    assert np.allclose(p.design[seen] @ rst, p.design[seen] @ brute, atol=1e-4)
    # Among the minimisers θ_rst has the least norm: brute force over them (objective pinned to its minimum).
    pinned = np.vstack([constraints, p.design[counts > 0]])
    smallest = _slsqp(_norm(p), pinned, np.concatenate([rhs, p.design[counts > 0] @ rst]), p.dim)
    assert rst @ p.penalty @ rst <= smallest @ p.penalty @ smallest + 1e-7


# ------------------------------------------------------------------------------------------------
# The paper's inequalities for every n of the sweep
# ------------------------------------------------------------------------------------------------
def test_rst_never_loses_standard_error_and_beats_aug_robust_error_at_every_n():
    # The expectation over unlabeled inputs taken exactly (the limit of many unlabeled draws), and L_std weighting
    # the inputs as the draws do: then θ_rst is the Σ-projection of θ_std and the inequalities hold on every draw.
    rows = sweep(ONE_SHIFT, PAPER_NS, trials=150, num_unlabeled=None, seed=0)
    for row in rows:
        # On every single draw: L_std(θ_rst) ≤ L_std(θ_std), and L_rob(θ_rst) ≤ L_rob(θ_std).
        assert row["violations/std_rst_le_std"] == 0, row
        assert row["violations/rob_rst_le_std"] == 0, row
        assert row["std_error/rst_mean"] <= row["std_error/std_mean"] + 1e-12
        # L_rob(θ_rst) ≤ L_rob(θ_aug) at every n of the sweep (mean over the draws).
        assert row["robust_error/rst_mean"] <= row["robust_error/aug_mean"] + 1e-12, row
    # The tradeoff the theory explains: with few labels, augmentation raises the standard error ...
    assert rows[0]["std_error/aug_mean"] > 1.5 * rows[0]["std_error/std_mean"]
    # ... and the gap closes as n grows (a draw that labels every stair gives θ_aug = θ_rst = θ*).
    assert abs(rows[-1]["std_error/aug_mean"] - rows[-1]["std_error/std_mean"]) < 0.01 * rows[0]["std_error/aug_mean"]
    every_stair = np.arange(PAPER.num_stairs) * len(PAPER.offsets)
    assert PAPER.std_error(PAPER.theta_aug(every_stair)) < 1e-20
    assert PAPER.robust_error(PAPER.theta_rst(every_stair, PAPER.sample_counts(1000, np.random.default_rng(0)))) < 1e-20
    assert PAPER.robust_error(PAPER.theta_std(every_stair)) > 1e-3  # the clean points alone do not pin the steps


# ------------------------------------------------------------------------------------------------
# Theorem 1: L_std(θ_std) − L_std(θ_aug) = vᵀΣv + 2wᵀΣv
# ------------------------------------------------------------------------------------------------
def _orthogonal_projector(rows: np.ndarray) -> np.ndarray:
    """Projection onto the row space of ``rows``, by the pseudo-inverse."""
    return np.linalg.pinv(rows) @ rows


@pytest.mark.parametrize("n", [22, 50])
def test_decomposition_against_direct_computation(n):
    # A definite norm (ridge) so that θ ↦ M^{1/2}θ turns every min-norm interpolant into an orthogonal projection.
    p = Staircase(penalty_ridge=1e-4)
    values, vectors = np.linalg.eigh(p.penalty)
    root, inv_root = (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T
    sigma_rot = inv_root @ p.sigma @ inv_root
    star_rot = root @ p.theta_star
    rng = np.random.default_rng(n)
    for _ in range(5):
        labeled = p.sample(n, rng)
        aug_points = np.union1d(labeled, p.perturbation_set(labeled))
        proj_std = _orthogonal_projector(p.design[np.unique(labeled)] @ inv_root)
        proj_aug = _orthogonal_projector(p.design[aug_points] @ inv_root)
        eye = np.eye(p.dim)
        v = (eye - proj_std) @ proj_aug @ star_rot
        w = (eye - proj_aug) @ star_rot
        formula = v @ sigma_rot @ v + 2 * w @ sigma_rot @ v
        direct = p.std_error(p.theta_std(labeled)) - p.std_error(p.theta_aug(labeled))
        assert formula == pytest.approx(direct, rel=1e-6, abs=1e-9)
        terms = p.tradeoff_terms(labeled)  # the library's v, w (in parameter coordinates)
        assert terms["benefit"] == pytest.approx(v @ sigma_rot @ v, rel=1e-6, abs=1e-9)
        assert terms["interaction"] == pytest.approx(2 * w @ sigma_rot @ v, rel=1e-6, abs=1e-9)
    # And with the paper's semi-definite penalty (no ridge) the two terms still add up to the difference.
    labeled = PAPER.sample(n, rng)
    terms = PAPER.tradeoff_terms(labeled)
    direct = PAPER.std_error(PAPER.theta_std(labeled)) - PAPER.std_error(PAPER.theta_aug(labeled))
    assert terms["benefit"] >= 0
    assert terms["benefit"] + terms["interaction"] == pytest.approx(direct, rel=1e-8, abs=1e-10)


# ------------------------------------------------------------------------------------------------
# Bad values and the command
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "named"), [
    ({"perturbation": "two_sided", "eps": 0.5}, "staircase.eps=0.5"),
    ({"perturbation": "sideways"}, "staircase.perturbation='sideways'"),
    ({"num_stairs": 1}, "staircase.num_stairs=1"),
    ({"shift_prob": 1.0}, "staircase.shift_prob=1.0"),
    ({"error_shift_prob": -0.1}, "staircase.error_shift_prob=-0.1"),
    ({"rst_anchor": "ceil"}, "staircase.rst_anchor='ceil'"),
    ({"left_pad_shift": -1}, "staircase.left_pad_shift=-1"),
])
def test_bad_setting_is_one_named_error(kwargs, named):
    with pytest.raises(ConfigError) as info:
        Staircase(**kwargs)
    assert str(info.value).startswith(named) and "\n" not in str(info.value)


def test_two_sided_perturbations_stay_consistent():
    p = Staircase(perturbation="two_sided", eps=1 / 3)
    assert p.dim == 3 * p.num_stairs + 2
    assert np.allclose(p.design @ p.theta_star, p.targets, atol=1e-9)
    labeled = np.array([0, 3, 6])
    rst = p.theta_rst(labeled, p.sample_counts(5000, np.random.default_rng(0)))
    assert p.std_error(rst) <= p.std_error(p.theta_std(labeled)) + 1e-12


def test_staircase_command_writes_results_and_figures(train_cfg):
    cfg = train_cfg(["sweep.n=[22,100]", "sweep.trials=5", "sweep.num_unlabeled=2000"], config_name="staircase")
    payload = run_staircase(cfg)
    out = Path(cfg.paths.output_dir)
    on_disk = json.loads((out / "results.json").read_text())
    assert [r["n"] for r in on_disk["rows"]] == [22, 100] and on_disk["setting"]["features"] == 22
    assert on_disk["rows"] == json.loads(json.dumps(payload["rows"]))
    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["n"]) for r in table] == [22, 100]
    assert float(table[1]["robust_error/aug_mean"]) == pytest.approx(on_disk["rows"][1]["robust_error/aug_mean"])
    example = on_disk["example"]
    assert example["labeled_points"] == [0.0, 1.0, 2.0, 3.0] and example["extra_points"] == [0.5, 1.5, 2.5, 3.5]
    assert example["std_error"]["aug"] > example["std_error"]["std"] > example["std_error"]["rst"]  # Figure 2
    for png in ("fitted_functions.png", "error_vs_n.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").is_file()


def test_staircase_command_rejects_a_bad_value_with_one_line(tmp_path):
    proc = run_command("robustlip-staircase", ["sweep.trials=1"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: sweep.trials=1 is not allowed; it must be >= 2 (the error bars need two draws)"]
