"""Figures and the console table of robustlip-staircase (Raghunathan et al., ICML 2020, Figures 2 and 6a)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robustlip.reporting.plots import pyplot
from robustlip.theory.staircase import ESTIMATORS, Staircase

LABELS = {"std": "Std (θ_std)", "aug": "Aug (θ_aug)", "rst": "RST (θ_rst)"}
COLORS = {"std": "tab:blue", "aug": "tab:orange", "rst": "tab:green"}


def plot_fits(path: Path, problem: Staircase, example: dict[str, Any]) -> Path:
    """The paper's Figure 2: (a) Std vs Aug, (b) Std vs RST, on the staircase and its support."""
    plt = pyplot()
    lo, hi = float(problem.points.min()), float(problem.points.max())
    grid = np.linspace(lo - 0.25, hi + 0.25, 600)
    feats = problem.features(grid)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, other in zip(axes, ("aug", "rst")):
        for i in range(problem.num_stairs):
            pts = problem.points[problem.stair == i]
            ax.plot([pts.min(), pts.max()], [problem.slope * i] * 2, color="0.6", lw=3, zorder=1)
        ax.scatter(problem.points, problem.targets, s=1500 * problem.prob, facecolors="none", edgecolors="0.5",
                   zorder=2, label="P(t) (circle area)")
        ax.plot(grid, feats @ np.array(example["theta"]["std"]), color=COLORS["std"], ls="--", lw=2.5,
                label=LABELS["std"], zorder=3)
        ax.plot(grid, feats @ np.array(example["theta"][other]), color=COLORS[other], lw=2.5, label=LABELS[other],
                zorder=3)
        ax.scatter(example["labeled_points"], example["labeled_targets"], color="purple", s=40, zorder=4,
                   label="X_std")
        ax.scatter(example["extra_points"], example["extra_targets"], marker="x", color="tab:green", s=50, zorder=4,
                   label="X_ext")
        ax.set_xlabel("t")
        ax.set_title(f"Std vs {other.upper()}: L_std {example['std_error']['std']:.3f} vs "
                     f"{example['std_error'][other]:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("f_θ(t)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_errors(path: Path, rows: list[dict[str, Any]]) -> Path:
    """L_std and L_rob against n (mean ± s.e. over trials), and the augmentation's cost (Figure 6a)."""
    plt = pyplot()
    n = np.array([r["n"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, kind, title in ((axes[0], "std_error", "standard error L_std"), (axes[1], "robust_error", "robust error L_rob")):
        for est in ESTIMATORS:
            mean = np.array([r[f"{kind}/{est}_mean"] for r in rows])
            sem = np.array([r[f"{kind}/{est}_sem"] for r in rows])
            ax.errorbar(n, mean, yerr=sem, color=COLORS[est], marker="o", ms=3, capsize=2, label=LABELS[est])
        ax.set_xscale("log")
        # Symmetric-log y: errors fall by orders of magnitude with n and reach exactly 0 once every stair
        # is labeled (θ_aug = θ_rst = θ*), which a plain log axis would drop.
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)  # errors are >= 0; error bars of a mean near 0 would open the negative half
        ax.set_xlabel("labeled points n")
        ax.set_title(title)
        ax.legend(fontsize=8)
    diff = np.array([r["std_error/aug_mean"] - r["std_error/std_mean"] for r in rows])
    axes[2].plot(n, diff, marker="o", color="tab:red")
    axes[2].axhline(0, color="0.5", lw=1)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("labeled points n")
    axes[2].set_title("L_std(θ_aug) − L_std(θ_std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_staircase_table(rows: list[dict[str, Any]]) -> None:
    print("\nSpline staircase (Raghunathan et al. 2020): mean over trials, exact errors")
    head = f"{'n':>6} " + " ".join(f"{'L_std ' + e:>11}" for e in ESTIMATORS) + " " + \
        " ".join(f"{'L_rob ' + e:>11}" for e in ESTIMATORS) + f" {'aug>std':>9}"
    print(head)
    for r in rows:
        print(f"{r['n']:>6} " + " ".join(f"{r[f'std_error/{e}_mean']:>11.4f}" for e in ESTIMATORS) + " "
              + " ".join(f"{r[f'robust_error/{e}_mean']:>11.4f}" for e in ESTIMATORS)
              + f" {r['aug_worse_than_std']:>7.0f} %")
