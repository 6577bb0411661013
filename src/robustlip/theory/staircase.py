"""The spline staircase of Raghunathan et al., "Understanding and Mitigating the Tradeoff Between
Robustness and Accuracy" (ICML 2020), solved in closed form.

Why this exists: the paper's claim is that adversarial training can raise the *standard* error even
when the model is well specified, the perturbations keep the label, and nothing is non-convex — and
that robust self-training (RST) with unlabeled data removes that cost. On a linear model over a cubic
spline basis every estimator is a (constrained) least-norm problem, so each number below is exact
linear algebra, not the outcome of an optimiser.

The setting (paper §3, Figure 2; the authors' code, github p-lambda/robust_tradeoff at 3999ed4,
``splines/spline_tradeoff.py``):

- **inputs** ``t`` on a discrete support: stair ``i ∈ {0..s-1}`` has weight ∝ ``heavy_weight`` for the
  first ``heavy_stairs`` stairs and ∝ ``light_weight`` after them (1/5 and 0.01: a dense start and a
  rare tail); the input is the stair itself, or, with probability ``shift_prob``, one of its
  perturbations ``i + o`` (o = ε for ``one_sided``, the paper's {⌊t⌋, ⌊t⌋ + ε} with ε = 1/2;
  o ∈ {−ε, +ε} for ``two_sided``, which needs ε < 1/2 to stay on the stair). The authors' scripts take
  an ``x_noise`` and shift with probability ``x_noise / 2`` (``generate_x_noise`` shifts a masked draw
  only when a fair coin says so) but weight the shifted point by ``x_noise`` itself in the standard
  error (``test_mse``): ``error_shift_prob`` is that second probability (None: ``shift_prob``). Figure
  6a (``spline_tradeoff.py``, x_noise = 0.01) is ``shift_prob = 0.005``, ``error_shift_prob = 0.01``;
- **target** the staircase ``y = slope · i`` on stair i, noiseless, and locally flat: every
  perturbation keeps the target (*consistent* perturbations);
- **features** ``x = X(t)``: cubic B-splines (order 4) on the knots = the support points, padded with
  three unit-spaced knots on each side (``2s + 2`` functions for one-sided perturbations);
  ``left_pad_shift`` moves the left three out (``fig2_spline.py``'s ``get_feats`` pads with −4, −3, −2
  where ``spline_tradeoff.py``'s pads with −3, −2, −1: shift 1);
- **norm** ``θᵀPθ`` with ``P = DᵀD``, D the second differences of the coefficients (the P-spline
  smoothness penalty of the authors' ``get_P``), plus ``penalty_ridge · I`` (0 by default; > 0 makes
  the norm definite, which the rotated form of the paper's Theorem 1 needs);
- **θ\\*** the min-norm interpolant of the whole support: well specified, ``X(t)ᵀθ* = y(t)`` at every
  support point and perturbation.

Estimators for labeled inputs ``X_std`` (paper §4–§5):

- ``θ_std = argmin {θᵀPθ : X_std θ = y_std}``;
- ``θ_aug = argmin {θᵀPθ : X_std θ = y_std, X_ext θ = y_ext}``, X_ext the perturbations of the labeled
  points with the same target (adversarial training's augmentation);
- ``θ_rst = argmin {E_x[(xᵀθ − xᵀθ_std)²] : X_std θ = y_std, X_ext θ = y_ext}``, the expectation over
  unlabeled draws, and — as the authors' ``solve_rst`` does — robust consistency on them,
  ``X(t̃)ᵀθ = X(t)ᵀθ`` for every perturbation t̃ of an unlabeled t (the β → ∞ limit of the paper's
  robust-consistency term; ``consistency=False`` drops it). Ties (directions the objective does not
  see) go to the smallest θᵀPθ. ``rst_anchor`` says where θ_std's prediction is read for an unlabeled u:
  ``point``, at u itself (``spline_tradeoff.py``: ``y_u = X(u)θ_std``), or ``floor``, at its stair ⌊u⌋
  (``fig2_spline.py``: ``y_u = X(⌊u⌋)θ_std``, fitted by X(⌊u⌋)θ).

Errors: ``L_std(θ) = (θ − θ*)ᵀΣ(θ − θ*)`` with Σ = E[xxᵀ] over the support (shifted points weighted by
``error_shift_prob``), and
``L_rob(θ) = E_t[max_{t̃ ∈ T(t)} (X(t̃)ᵀ(θ − θ*))²]`` (the perturbation set T(t) = every point of t's stair).
The paper's Theorem 1: ``L_std(θ_std) − L_std(θ_aug) = vᵀΣv + 2wᵀΣv`` with ``v = Π_std^⊥ Π_aug θ*`` and
``w = Π_aug^⊥ θ*``, Π the (P-orthogonal) projections that map θ* to the min-norm interpolants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.interpolate import BSpline

from robustlip.core.errors import ConfigError, check_choice

PERTURBATIONS = ("one_sided", "two_sided")
#: Where RST reads θ_std's prediction for an unlabeled draw u: at u, or at its stair ⌊u⌋ (module docstring).
RST_ANCHORS = ("point", "floor")
#: Cubic splines: B-splines of degree 3 (order 4).
DEGREE = 3
#: The estimators the sweep compares, in the order tables and plots show them.
ESTIMATORS = ("std", "aug", "rst")


def bspline_features(t: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis at ``t`` on the *padded* knot vector ``knots``: shape (len(t), len(knots) − 4).

    Outside the base interval [knots[3], knots[-4]] the polynomial pieces are extended, so plots can
    run a little past the support.
    """
    t = np.atleast_1d(np.asarray(t, dtype=float))
    return BSpline.design_matrix(t, np.asarray(knots, dtype=float), DEGREE, extrapolate=True).toarray()


def second_difference_penalty(dim: int) -> np.ndarray:
    """``P = DᵀD`` with ``D`` the (dim−2)×dim second-difference matrix: Σ_j (θ_j − 2θ_{j+1} + θ_{j+2})²."""
    d = np.diff(np.eye(dim), n=2, axis=0)
    return d.T @ d


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """R with RᵀR = matrix, for a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def constrained_lstsq(
    constraints: np.ndarray,
    rhs: np.ndarray,
    design: np.ndarray | None = None,
    target: np.ndarray | None = None,
    penalty: np.ndarray | None = None,
    rcond: float = 1e-10,
) -> np.ndarray:
    """``argmin ‖design·θ − target‖²`` subject to ``constraints·θ = rhs``; ties by the least θᵀ·penalty·θ, then ‖θ‖.

    Exact, by nested null spaces: each stage minimises over the affine set the previous stages left
    free, so the answer is the lexicographic minimum (objective first, norm second) rather than a
    trade-off with a small weight. With no ``design`` it is the min-norm interpolant. Inconsistent
    constraints (no θ satisfies them) raise ValueError.
    """
    constraints = np.atleast_2d(np.asarray(constraints, dtype=float))
    rhs = np.asarray(rhs, dtype=float).ravel()
    dim = constraints.shape[1]
    theta = np.zeros(dim)
    free = np.eye(dim)
    stages: list[tuple[np.ndarray, np.ndarray]] = [(constraints, rhs)]
    if design is not None:
        stages.append((np.atleast_2d(np.asarray(design, dtype=float)), np.asarray(target, dtype=float).ravel()))
    if penalty is not None:
        stages.append((_sqrt_psd(np.asarray(penalty, dtype=float)), np.zeros(dim)))
    stages.append((np.eye(dim), np.zeros(dim)))
    for number, (matrix, goal) in enumerate(stages):
        if free.shape[1] == 0:
            break
        # One truncated SVD per stage: the directions it treats as null are exactly the ones left free,
        # so a tiny singular value can never produce a huge step in a direction a later stage owns.
        u, s, vt = np.linalg.svd(matrix @ free, full_matrices=True)
        rank = int((s > rcond * max(1.0, s[0] if len(s) else 0.0)).sum())
        residual = goal - matrix @ theta
        theta = theta + free @ (vt[:rank].T @ ((u[:, :rank].T @ residual) / s[:rank]))
        if number == 0:
            scale = max(1.0, float(np.abs(rhs).max(initial=0.0)))
            if np.abs(constraints @ theta - rhs).max(initial=0.0) > 1e-8 * scale:
                raise ValueError("the constraints are inconsistent: no parameter fits all of them")
        free = free @ vt[rank:].T
    return theta


@dataclass(frozen=True)
class Staircase:
    """The population of the spline staircase and its exact quantities (see the module docstring)."""

    num_stairs: int = 10
    eps: float = 0.5
    perturbation: str = "one_sided"
    shift_prob: float = 0.005
    heavy_stairs: int = 5
    heavy_weight: float = 0.2
    light_weight: float = 0.01
    slope: float = 1.0
    penalty_ridge: float = 0.0
    #: The shifted points' weight in L_std; None: ``shift_prob``. Figure 6a: 0.01 (module docstring).
    error_shift_prob: float | None = 0.01
    left_pad_shift: float = 0.0
    rst_anchor: str = "point"
    #: The config prefix of the keys named in error messages.
    key: str = field(default="staircase", compare=False, repr=False)

    def __post_init__(self) -> None:
        k = self.key
        if not isinstance(self.num_stairs, int) or isinstance(self.num_stairs, bool) or self.num_stairs < 2:
            raise ConfigError(f"{k}.num_stairs={self.num_stairs!r} is not allowed; it must be an integer >= 2")
        if not isinstance(self.heavy_stairs, int) or not 0 <= self.heavy_stairs <= self.num_stairs:
            raise ConfigError(
                f"{k}.heavy_stairs={self.heavy_stairs!r} is not allowed; it must be an integer in [0, {self.num_stairs}]"
            )
        check_choice(f"{k}.perturbation", self.perturbation, PERTURBATIONS)
        top = 1.0 if self.perturbation == "one_sided" else 0.5
        if not isinstance(self.eps, (int, float)) or not 0 < self.eps < top:
            raise ConfigError(
                f"{k}.eps={self.eps!r} is not allowed; {self.perturbation} perturbations stay on their stair only for "
                f"0 < eps < {top:g}"
            )
        if not isinstance(self.shift_prob, (int, float)) or not 0 <= self.shift_prob < 1:
            raise ConfigError(f"{k}.shift_prob={self.shift_prob!r} is not allowed; it must be a number in [0, 1)")
        if self.error_shift_prob is not None and (
                not isinstance(self.error_shift_prob, (int, float)) or not 0 <= self.error_shift_prob < 1):
            raise ConfigError(f"{k}.error_shift_prob={self.error_shift_prob!r} is not allowed; it must be null or a "
                              "number in [0, 1)")
        if not isinstance(self.left_pad_shift, (int, float)) or self.left_pad_shift < 0:
            raise ConfigError(f"{k}.left_pad_shift={self.left_pad_shift!r} is not allowed; it must be a number >= 0")
        check_choice(f"{k}.rst_anchor", self.rst_anchor, RST_ANCHORS)
        for name in ("heavy_weight", "light_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{k}.{name}={value!r} is not allowed; it must be a number > 0")
        if not isinstance(self.penalty_ridge, (int, float)) or self.penalty_ridge < 0:
            raise ConfigError(f"{k}.penalty_ridge={self.penalty_ridge!r} is not allowed; it must be a number >= 0")

    # -- the population ------------------------------------------------------------------------
    @property
    def offsets(self) -> tuple[float, ...]:
        """Offsets of a stair's points from the stair: 0 (the clean input) first, then the perturbations."""
        return (0.0, float(self.eps)) if self.perturbation == "one_sided" else (0.0, -float(self.eps), float(self.eps))

    @cached_property
    def stair_weights(self) -> np.ndarray:
        w = np.array([self.heavy_weight] * self.heavy_stairs + [self.light_weight] * (self.num_stairs - self.heavy_stairs))
        return w / w.sum()

    @cached_property
    def stair(self) -> np.ndarray:
        """The stair of each support point (support points are stair-major: stair 0's points first)."""
        return np.repeat(np.arange(self.num_stairs), len(self.offsets))

    @cached_property
    def points(self) -> np.ndarray:
        """The input value ``t`` of each support point."""
        return self.stair + np.tile(np.array(self.offsets), self.num_stairs)

    def _point_prob(self, shift: float) -> np.ndarray:
        m = len(self.offsets)
        share = np.array([1.0 - shift] + [shift / (m - 1)] * (m - 1))
        return np.repeat(self.stair_weights, m) * np.tile(share, self.num_stairs)

    @cached_property
    def prob(self) -> np.ndarray:
        """P(t = point), the distribution labeled and unlabeled draws come from: the stair's weight, times
        1 − shift_prob for the clean point and shift_prob split evenly over its perturbations."""
        return self._point_prob(self.shift_prob)

    @cached_property
    def error_prob(self) -> np.ndarray:
        """The weights of L_std: as :attr:`prob`, with ``error_shift_prob`` (the authors' ``test_mse``)."""
        return self._point_prob(self.shift_prob if self.error_shift_prob is None else self.error_shift_prob)

    @cached_property
    def targets(self) -> np.ndarray:
        return self.slope * self.stair.astype(float)

    @cached_property
    def knots(self) -> np.ndarray:
        """The padded knot vector: the support points plus three unit-spaced knots beyond each end."""
        inner = np.unique(self.points)
        pad = np.arange(1, DEGREE + 1, dtype=float)
        return np.concatenate([inner[0] - pad[::-1] - self.left_pad_shift, inner, inner[-1] + pad])

    def features(self, t: np.ndarray | Sequence[float]) -> np.ndarray:
        return bspline_features(np.asarray(t, dtype=float), self.knots)

    @cached_property
    def design(self) -> np.ndarray:
        """X(t) of every support point, one row each."""
        return self.features(self.points)

    @property
    def dim(self) -> int:
        return self.design.shape[1]

    @cached_property
    def penalty(self) -> np.ndarray:
        return second_difference_penalty(self.dim) + self.penalty_ridge * np.eye(self.dim)

    @cached_property
    def theta_star(self) -> np.ndarray:
        """The min-norm interpolant of every support point: the well-specified truth."""
        return constrained_lstsq(self.design, self.targets, penalty=self.penalty)

    @cached_property
    def sigma(self) -> np.ndarray:
        """Σ = E[xxᵀ] over the inputs L_std weights (:attr:`error_prob`)."""
        return self.design.T @ (self.error_prob[:, None] * self.design)

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``n`` labeled draws from the input distribution (a multiset of support points)."""
        return rng.choice(len(self.points), size=n, p=self.prob)

    def sample_counts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """How many of ``n`` unlabeled draws fall on each support point (all RST needs of them)."""
        return rng.multinomial(n, self.prob)

    def perturbation_set(self, indices: np.ndarray) -> np.ndarray:
        """Every support point of the stairs of ``indices``: T(t) for each t, as sorted unique indices."""
        stairs = np.unique(self.stair[np.asarray(indices, dtype=int)])
        return np.flatnonzero(np.isin(self.stair, stairs))

    # -- errors --------------------------------------------------------------------------------
    def std_error(self, theta: np.ndarray) -> float:
        """L_std(θ) = (θ − θ*)ᵀΣ(θ − θ*)."""
        delta = np.asarray(theta) - self.theta_star
        return float(delta @ self.sigma @ delta)

    def robust_error(self, theta: np.ndarray) -> float:
        """L_rob(θ) = E_t[max over t's stair of (X(t̃)ᵀθ − y)²]: the worst perturbation of each draw."""
        sq = (self.design @ (np.asarray(theta) - self.theta_star)) ** 2
        worst = sq.reshape(self.num_stairs, len(self.offsets)).max(axis=1)
        return float(self.stair_weights @ worst)

    # -- estimators ----------------------------------------------------------------------------
    def min_norm(self, indices: np.ndarray) -> np.ndarray:
        """argmin {θᵀPθ : X(t_i)ᵀθ = y_i for the support points ``indices``}."""
        indices = np.unique(np.asarray(indices, dtype=int))  # a repeated point is the same constraint
        return constrained_lstsq(self.design[indices], self.targets[indices], penalty=self.penalty)

    def theta_std(self, labeled: np.ndarray) -> np.ndarray:
        return self.min_norm(labeled)

    def theta_aug(self, labeled: np.ndarray) -> np.ndarray:
        """Fits the labeled points and all their perturbations (same targets)."""
        return self.min_norm(np.union1d(np.asarray(labeled, dtype=int), self.perturbation_set(labeled)))

    def theta_rst(self, labeled: np.ndarray, unlabeled_counts: np.ndarray, consistency: bool = True,
                  theta_std: np.ndarray | None = None) -> np.ndarray:
        """argmin Σ_u (X(u)ᵀθ − X(u)ᵀθ_std)² over the unlabeled draws u, subject to the labeled points and
        their perturbations, and (``consistency``) equal predictions on every stair an unlabeled draw hit."""
        counts = np.asarray(unlabeled_counts, dtype=float)
        if counts.shape != self.points.shape or (counts < 0).any():
            raise ValueError("unlabeled_counts must hold one non-negative count per support point")
        if self.rst_anchor == "floor":  # every draw of a stair is read at, and fitted at, the stair's clean point
            m = len(self.offsets)
            per_stair = counts.reshape(self.num_stairs, m).sum(axis=1)
            counts = np.zeros_like(counts)
            counts[::m] = per_stair
        std = self.theta_std(labeled) if theta_std is None else theta_std
        fitted = np.union1d(np.asarray(labeled, dtype=int), self.perturbation_set(labeled))
        rows, rhs = [self.design[fitted]], [self.targets[fitted]]
        if consistency:
            m = len(self.offsets)
            hit = counts.reshape(self.num_stairs, m).sum(axis=1) > 0
            for i in np.flatnonzero(hit):
                block = self.design[i * m:(i + 1) * m]
                rows.append(block[1:] - block[0])
                rhs.append(np.zeros(m - 1))
        seen = counts > 0
        weight = np.sqrt(counts[seen])[:, None]
        design = weight * self.design[seen]
        return constrained_lstsq(np.vstack(rows), np.concatenate(rhs), design=design, target=design @ std,
                                 penalty=self.penalty)

    # -- the paper's Theorem 1 -------------------------------------------------------------------
    def project(self, indices: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Π θ: the min-norm parameter that agrees with θ on the support points ``indices``.

        In the coordinates where the norm is Euclidean (θ ↦ P^{1/2}θ) this is the orthogonal
        projection onto the row space of those points' features: the paper's Π_std / Π_aug.
        """
        indices = np.unique(np.asarray(indices, dtype=int))
        return constrained_lstsq(self.design[indices], self.design[indices] @ theta, penalty=self.penalty)

    def tradeoff_terms(self, labeled: np.ndarray) -> dict[str, float | np.ndarray]:
        """v = Π_std^⊥ Π_aug θ*, w = Π_aug^⊥ θ* and the two terms of L_std(θ_std) − L_std(θ_aug).

        ``benefit`` = vᵀΣv ≥ 0 (what fitting the extra points gains), ``interaction`` = 2wᵀΣv (negative
        when the extra points pull the fit the wrong way along a costly direction of Σ).
        """
        labeled = np.asarray(labeled, dtype=int)
        aug_points = np.union1d(labeled, self.perturbation_set(labeled))
        p_aug = self.project(aug_points, self.theta_star)
        v = p_aug - self.project(labeled, p_aug)
        w = self.theta_star - p_aug
        return {"v": v, "w": w, "benefit": float(v @ self.sigma @ v), "interaction": float(2 * w @ self.sigma @ v)}


# ----------------------------------------------------------------------------------------------------
# The sweep over the number of labeled points (the paper's Figure 6a)
# ----------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    """Exact errors of the three estimators on one draw of n labeled and the unlabeled points."""

    n: int
    std_error: dict[str, float]
    robust_error: dict[str, float]
    benefit: float
    interaction: float


def run_trial(problem: Staircase, n: int, num_unlabeled: int | None, rng: np.random.Generator,
              consistency: bool = True) -> Trial:
    """One draw of n labeled points; ``num_unlabeled`` unlabeled draws for RST, or None for the exact
    expectation over the input distribution (the limit of infinitely many unlabeled draws)."""
    labeled = problem.sample(n, rng)
    counts = problem.prob if num_unlabeled is None else problem.sample_counts(num_unlabeled, rng)
    std = problem.theta_std(labeled)
    thetas = {"std": std, "aug": problem.theta_aug(labeled),
              "rst": problem.theta_rst(labeled, counts, consistency=consistency, theta_std=std)}
    terms = problem.tradeoff_terms(labeled)
    return Trial(
        n=n,
        std_error={k: problem.std_error(v) for k, v in thetas.items()},
        robust_error={k: problem.robust_error(v) for k, v in thetas.items()},
        benefit=float(terms["benefit"]),
        interaction=float(terms["interaction"]),
    )


def summarize_trials(trials: Sequence[Trial]) -> dict[str, float | int]:
    """Mean and standard error of the mean of every error over trials with the same n, plus how often
    each inequality failed on a single draw (beyond rounding) and the largest excess.

    With the exact expectation over inputs (``num_unlabeled=None``), L_std(θ_rst) ≤ L_std(θ_std) holds on
    every draw (θ_rst is the Σ-projection of θ_std onto an affine set that holds θ*), and so does
    L_rob(θ_rst) ≤ L_rob(θ_std) with robust consistency on every stair (then L_rob(θ_rst) = L_std(θ_rst)).
    With finitely many unlabeled draws the projection is in the empirical Σ̂ and the first can fail by a
    little; L_rob(θ_rst) ≤ L_rob(θ_aug) is counted too — it need not hold on every draw.
    """
    out: dict[str, float | int] = {"n": trials[0].n, "trials": len(trials)}

    def stats(name: str, values: np.ndarray) -> None:
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_sem"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")

    for kind in ("std_error", "robust_error"):
        for est in ESTIMATORS:
            stats(f"{kind}/{est}", np.array([getattr(t, kind)[est] for t in trials]))
    stats("benefit", np.array([t.benefit for t in trials]))
    stats("interaction", np.array([t.interaction for t in trials]))
    std_gap = np.array([t.std_error["rst"] - t.std_error["std"] for t in trials])
    rob_gap = np.array([t.robust_error["rst"] - t.robust_error["aug"] for t in trials])
    rob_std_gap = np.array([t.robust_error["rst"] - t.robust_error["std"] for t in trials])
    tol = 1e-9
    out["violations/std_rst_le_std"] = int((std_gap > tol).sum())
    out["violations/rob_rst_le_std"] = int((rob_std_gap > tol).sum())
    out["violations/rob_rst_le_aug"] = int((rob_gap > tol).sum())
    out["max_excess/std_rst_minus_std"] = float(std_gap.max())
    out["max_excess/rob_rst_minus_aug"] = float(rob_gap.max())
    # In percent of the trials, as every share robustlip prints and records (one unit per quantity).
    out["aug_worse_than_std"] = round(100 * float(np.mean([t.std_error["aug"] > t.std_error["std"] + tol for t in trials])), 2)
    return out


def sweep(problem: Staircase, ns: Sequence[int], trials: int | Sequence[int], num_unlabeled: int | None, seed: int,
          consistency: bool = True) -> list[dict[str, float | int]]:
    """One summary row per n; every trial draws its own labeled and unlabeled points from ``seed``.

    ``trials`` is one count for every n, or one per n (the authors draw 2,000 times for n < 400 and 25
    times above, ``spline_tradeoff.py`` L393-396).
    """
    per_n = [int(trials)] * len(ns) if isinstance(trials, (int, np.integer)) else [int(t) for t in trials]
    if len(per_n) != len(ns):
        raise ValueError(f"trials has {len(per_n)} counts for {len(ns)} sizes; give one count or one per size")
    rng = np.random.default_rng(seed)
    return [summarize_trials([run_trial(problem, int(n), num_unlabeled, rng, consistency) for _ in range(count)])
            for n, count in zip(ns, per_n)]
