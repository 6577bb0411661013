"""Plots of results: the trade-off scatter of a report, and the accuracy-vs-ε curve of an evaluation.

Every figure is drawn with matplotlib's Agg backend, so it works on machines without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robustlip.reporting.tables import Row


def pyplot():
    """matplotlib.pyplot on the Agg backend (works on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    """A file-name-safe table name: 'digits · DigitsCNN' -> 'digits_DigitsCNN'."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in text).split()) or "runs"


def scatter_figure(table: str, points: Sequence[tuple[Row, list[tuple[float, float]]]], x_label: str, log_x: bool):
    """One trade-off scatter: a marker per row, a point per run; the legend beside the axes, never over the data.

    Constrained layout with the legend placed outside on the right sizes the figure around the legend,
    so long row labels (``TRADES(β=6) [optimizer.lr=0.01], dropout 0.5``) are neither over the points nor cut off.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.8), layout="constrained")
    markers = "osD^v<>pPX*h"
    for i, (row, pts) in enumerate(points):
        label = row.label if row.dropout in ("0", "default") else f"{row.label}, dropout {row.dropout}"
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, marker=markers[i % len(markers)])
    xs = [p[0] for _, pts in points for p in pts]
    if log_x and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("adversarial test acc (%)")
    ax.set_title(table)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize="small")
    return fig


def write_plots(out_dir: Path, rows: Sequence[Row]) -> list[Path]:
    """Per table: test acc vs adv test acc, and test Lipschitz vs adv test acc, one point per run."""
    plt = pyplot()
    written: list[Path] = []
    tables: dict[str, list[Row]] = {}
    for row in rows:
        tables.setdefault(row.table, []).append(row)
    specs = [
        ("tradeoff", "test/acc", "test acc (%)", False),
        ("lipschitz", "test/lipschitz", "test local Lipschitz (Eq. 3)", True),
    ]
    for table, table_rows in tables.items():
        for name, x_key, x_label, log_x in specs:
            points = [
                (row, [(r.metrics[x_key], r.metrics["test/adv_acc"]) for r in row.runs
                       if x_key in r.metrics and "test/adv_acc" in r.metrics])
                for row in table_rows
            ]
            points = [(row, pts) for row, pts in points if pts]
            if not points:
                continue
            fig = scatter_figure(table, points, x_label, log_x)
            path = out_dir / f"{name}_{_slug(table)}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def plot_curve(points: list[dict[str, float]], path: Path, title: str = "adversarial accuracy vs ε") -> Path:
    """Adversarial accuracy against the radius (``points``: ``{"eps", "adv_acc"}`` dicts)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([p["eps"] for p in points], [p["adv_acc"] for p in points], marker="o")
    ax.set_xlabel("ε (pixel units)")
    ax.set_ylabel("adversarial test accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_parity_plots(out_dir: Path, comparisons: Sequence) -> list[Path]:
    """Ours against published, one point per measured number with our 95% interval, per preset and paper.

    Points on the diagonal reproduce exactly; an error bar that crosses it reproduces within our
    interval. Accuracies and gaps (%) share one panel; Lipschitz estimates, orders of magnitude apart,
    get a log-log panel of their own.
    """
    plt = pyplot()
    groups: dict[tuple[str, str], list] = {}
    for c in comparisons:
        if c.seeds:
            groups.setdefault((c.published.preset, c.published.paper), []).append(c)
    written: list[Path] = []
    for (preset, paper), group in groups.items():
        panels = [("accuracies and gaps (%)", [c for c in group if "lipschitz" not in c.published.column], False),
                  ("local Lipschitz (Eq. 3)", [c for c in group if "lipschitz" in c.published.column], True)]
        panels = [p for p in panels if p[1]]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), layout="constrained", squeeze=False)
        for ax, (name, points, log) in zip(axes[0], panels):
            for column in dict.fromkeys(c.published.column for c in points):
                pts = [c for c in points if c.published.column == column]
                low = [c.mean - c.low if c.low == c.low else 0.0 for c in pts]
                high = [c.high - c.mean if c.high == c.high else 0.0 for c in pts]
                ax.errorbar([c.published.value for c in pts], [c.mean for c in pts], yerr=[low, high], fmt="o",
                            capsize=3, label=column)
            values = [v for c in points for v in (c.published.value, c.mean)]
            lo, hi = min(values), max(values)
            ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
            if log and lo > 0:
                ax.set_xscale("log")
                ax.set_yscale("log")
            ax.set_xlabel(f"published ({paper})")
            ax.set_ylabel("ours (95% interval)")
            ax.set_title(name, fontsize="medium")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"{preset}: ours vs {paper}")
        path = out_dir / f"parity_{_slug(preset)}_{_slug(paper)}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
