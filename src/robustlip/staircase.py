"""robustlip-staircase: Raghunathan et al. (ICML 2020)'s spline staircase, every estimator in closed form.

Sweeps the number of labeled points n and, for each n, averages over ``sweep.trials`` draws the exact
standard error L_std and robust error L_rob of the min-norm standard estimator θ_std, the augmented
estimator θ_aug (adversarial training's augmentation) and robust self-training θ_rst with
``sweep.num_unlabeled`` unlabeled draws (:mod:`robustlip.theory.staircase`; docs/raghunathan.md).
Files first, like every command (docs/architecture.md), in the run directory:

- ``results.json`` — the setting, one row per n (means and standard errors, the two terms of the
  paper's Theorem 1, how often each of the paper's inequalities failed on a single draw), and the
  fitted example of the figure;
- ``results.csv`` — the same rows as a table;
- ``fitted_functions.png`` — the paper's Figure 2: θ_aug fits the local steps and loses the global
  trend, θ_rst keeps both;
- ``error_vs_n.png`` — L_std and L_rob against n, and L_std(θ_aug) − L_std(θ_std) (the paper's Figure 6a).

With ``logger=wandb`` the rows and the two figures also go to wandb.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from robustlip.cli import entry_point
from robustlip.core.errors import ConfigError, check_positive_int, check_writable_dir
from robustlip.core.files import atomic_write, print_written, write_json_atomic
from robustlip.reporting.staircase_figures import plot_errors, plot_fits, print_staircase_table
from robustlip.runs.config import instantiate_group, save_resolved_config
from robustlip.runs.loggers import build_loggers, finish_wandb
from robustlip.theory.staircase import ESTIMATORS, Staircase, sweep

log = logging.getLogger(__name__)

#: Columns of results.csv after n and trials.
CSV_METRICS = [f"{kind}/{est}_{stat}" for kind in ("std_error", "robust_error") for est in ESTIMATORS
               for stat in ("mean", "sem")] + [
    "benefit_mean", "interaction_mean", "aug_worse_than_std",
    "violations/std_rst_le_std", "violations/rob_rst_le_std", "violations/rob_rst_le_aug",
]


def _shown(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def check_trials(sweep_cfg: DictConfig, ns: list[int]) -> list[int]:
    """Draws for each n: ``sweep.trials``, or ``sweep.trials_large_n`` for n >= ``sweep.large_n`` (the
    authors' Figure 6a draws 2,000 times for n < 400 and 25 times above); each >= 2, for the error bars."""
    counts = {}
    for key in ("trials", "trials_large_n"):
        count = check_positive_int(f"sweep.{key}", sweep_cfg.get(key, 2) if key == "trials_large_n" else sweep_cfg[key])
        if count < 2:
            raise ConfigError(f"sweep.{key}={count!r} is not allowed; it must be >= 2 (the error bars need two draws)")
        counts[key] = count
    large_n = sweep_cfg.get("large_n")
    if large_n is None:  # one count for every n
        return [counts["trials"]] * len(ns)
    large_n = check_positive_int("sweep.large_n", large_n)
    return [counts["trials_large_n"] if n >= large_n else counts["trials"] for n in ns]


def check_unlabeled(key: str, value: Any) -> int | None:
    """A number of unlabeled draws, or null: the exact expectation over the input distribution."""
    return None if value is None else check_positive_int(key, value)


def check_sweep(cfg: DictConfig, problem: Staircase) -> tuple[list[int], list[int], int | None, list[int]]:
    """The sweep's sizes, trials per size, unlabeled draws and the figure's labeled stairs, range-checked by name."""
    ns = cfg.sweep.n
    if not OmegaConf.is_list(ns) or len(ns) == 0 or not all(isinstance(v, int) and v >= 1 for v in ns):
        raise ConfigError(f"sweep.n={_shown(ns)!r} is not allowed; give a non-empty list of integers >= 1, e.g. [22,50,100]")
    ns = [int(v) for v in ns]
    trials = check_trials(cfg.sweep, ns)
    unlabeled = check_unlabeled("sweep.num_unlabeled", cfg.sweep.num_unlabeled)
    labeled = cfg.example.labeled
    if (not OmegaConf.is_list(labeled) or len(labeled) == 0
            or not all(isinstance(v, int) and 0 <= v < problem.num_stairs for v in labeled)):
        raise ConfigError(f"example.labeled={_shown(labeled)!r} "
                          f"is not allowed; give a non-empty list of stairs in [0, {problem.num_stairs})")
    return ns, trials, unlabeled, [int(v) for v in labeled]


def fit_example(problem: Staircase, stairs: list[int], num_unlabeled: int | None, seed: int,
                consistency: bool = True) -> dict[str, Any]:
    """The figure's fit: the clean points of ``stairs`` labeled (the paper's Figure 2 uses t = 0, 1, 2, 3)."""
    m = len(problem.offsets)
    labeled = np.array([s * m for s in stairs])  # the clean point of each stair
    counts = (problem.prob if num_unlabeled is None
              else problem.sample_counts(num_unlabeled, np.random.default_rng(seed + 1)))
    std = problem.theta_std(labeled)
    thetas = {"std": std, "aug": problem.theta_aug(labeled),
              "rst": problem.theta_rst(labeled, counts, consistency=consistency, theta_std=std)}
    extra = np.setdiff1d(problem.perturbation_set(labeled), labeled)
    return {
        "labeled_points": problem.points[labeled].tolist(),
        "labeled_targets": problem.targets[labeled].tolist(),
        "extra_points": problem.points[extra].tolist(),
        "extra_targets": problem.targets[extra].tolist(),
        "theta": {k: v.tolist() for k, v in thetas.items()},
        "theta_star": problem.theta_star.tolist(),
        "std_error": {k: problem.std_error(v) for k, v in thetas.items()},
        "robust_error": {k: problem.robust_error(v) for k, v in thetas.items()},
    }


def staircase(cfg: DictConfig) -> dict[str, Any]:
    """Run the sweep as ``cfg`` says, write the files, return the contents of results.json."""
    output_dir = check_writable_dir("paths.output_dir", cfg.paths.output_dir)
    problem: Staircase = instantiate_group(cfg, "staircase")
    ns, trials, num_unlabeled, stairs = check_sweep(cfg, problem)
    # The figure's fit may use its own draws (Figure 2: 10,000); by default the sweep's.
    example_unlabeled = check_unlabeled("example.num_unlabeled", cfg.example.get("num_unlabeled", num_unlabeled))
    consistency = bool(cfg.sweep.get("consistency", True))
    save_resolved_config(cfg, output_dir)
    log.info("staircase: %d stairs, %s perturbations (eps=%g), %d features; n=%s, trials=%s",
             problem.num_stairs, problem.perturbation, problem.eps, problem.dim, ns, trials)
    rows = sweep(problem, ns, trials, num_unlabeled, int(cfg.seed), consistency=consistency)
    example = fit_example(problem, stairs, example_unlabeled, int(cfg.seed), consistency=consistency)
    payload = {
        "setting": {
            "name": cfg.get("setting_name"),
            "num_stairs": problem.num_stairs, "eps": problem.eps, "perturbation": problem.perturbation,
            "shift_prob": problem.shift_prob, "error_shift_prob": problem.error_shift_prob,
            "stair_weights": problem.stair_weights.tolist(), "features": problem.dim, "knots": problem.knots.tolist(),
            "penalty_ridge": problem.penalty_ridge, "rst_anchor": problem.rst_anchor, "trials": trials,
            "num_unlabeled": num_unlabeled, "example_num_unlabeled": example_unlabeled, "consistency": consistency,
            "seed": int(cfg.seed),
        },
        # For sweep summaries and loggers: the smallest n, where the paper's effect is largest.
        "metrics": {k: v for k, v in rows[0].items() if k.endswith("_mean")},
        "rows": rows,
        "example": example,
    }
    write_json_atomic(output_dir / "results.json", payload)
    _write_csv(output_dir / "results.csv", rows)
    figures = {
        "fitted_functions": plot_fits(output_dir / "fitted_functions.png", problem, example),
        "error_vs_n": plot_errors(output_dir / "error_vs_n.png", rows),
    }
    print_staircase_table(rows)
    _log_to_loggers(cfg, rows, figures)
    print_written(output_dir)
    return payload


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["n", "trials", *CSV_METRICS])
        for row in rows:
            writer.writerow([row["n"], row["trials"], *(row[k] for k in CSV_METRICS)])


# ----------------------------------------------------------------------------------------------------
# Loggers
# ----------------------------------------------------------------------------------------------------
def _log_to_loggers(cfg: DictConfig, rows: list[dict[str, Any]], figures: dict[str, Path]) -> None:
    """Each row to every configured logger (step = its index in the sweep), figures to wandb."""
    # The shared wandb group names a dataset and an objective; this run has neither.
    for logger in build_loggers(cfg, group="staircase"):
        for step, row in enumerate(rows):
            logger.log_metrics({k: float(v) for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        if hasattr(logger, "log_image"):
            for key, file in figures.items():
                logger.log_image(key=key, images=[str(file)])
        logger.finalize("success")


def run(cfg: DictConfig) -> float:
    """The Hydra task; returns the augmentation's cost at the smallest n (a number for sweepers)."""
    try:
        row = staircase(cfg)["rows"][0]
    finally:
        finish_wandb()
    return float(row["std_error/aug_mean"] - row["std_error/std_mean"])


main = entry_point("staircase", run)


if __name__ == "__main__":
    main()
