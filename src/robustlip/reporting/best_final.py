"""The best and the final model of each row, and the robust-overfitting gap between them.

Runs trained with ``select_best=val`` carry in results.json a ``best`` section: the epoch whose model
had the highest adversarial accuracy on the *validation* split, that model measured on test exactly
as the final one is, and ``robust_overfitting_gap`` = best − final adversarial test accuracy (Rice et
al. 2020, arXiv:2002.11569). A gap near 0 says the reported final numbers are not an artefact of when
training stopped; a large one says the row's protocol (final, as Yang et al.; best, as most later
papers) must be named beside its numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from robustlip.metrics.intervals import t_interval
from robustlip.reporting.tables import Row

ADV = "test/adv_acc"


def _by_seed(row: Row, value) -> list[float]:
    """One number per distinct seed (repeats of a seed averaged), from runs that have a best section."""
    by_seed: dict[str, list[float]] = {}
    for run in row.runs:
        if run.best.get("metrics", {}).get(ADV) is not None and ADV in run.metrics:
            by_seed.setdefault(repr(run.get("seed")), []).append(float(value(run)))
    return [statistics.fmean(v) for v in by_seed.values()]


def _summary(values: Sequence[float], decimals: int) -> str:
    if not values:
        return "–"
    mean, low, high = t_interval(values)
    if math.isnan(low):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {(high - low) / 2:.{decimals}f}"


def markdown(rows: Sequence[Row], decimals: int = 2) -> str:
    """Per row: best epoch(s), best and final adversarial test accuracy and the gap (mean ± t-interval over seeds)."""
    lines = []
    for row in rows:
        best = _by_seed(row, lambda r: r.best["metrics"][ADV])
        if not best:
            continue
        final = _by_seed(row, lambda r: r.metrics[ADV])
        gap = _by_seed(row, lambda r: r.best["metrics"][ADV] - r.metrics[ADV])
        clean_best = _by_seed(row, lambda r: r.best["metrics"].get("test/acc", math.nan))
        clean_final = _by_seed(row, lambda r: r.metrics.get("test/acc", math.nan))
        epochs = sorted({int(r.best["epoch"]) for r in row.runs if r.best.get("epoch") is not None})
        last = sorted({int(r.best.get("final_epoch", -1)) for r in row.runs if r.best})
        lines.append(f"| {row.table} | {row.label} | {row.dropout} | {len(best)} | {', '.join(map(str, epochs))} "
                     f"| {', '.join(map(str, last))} | {_summary(clean_best, decimals)} | {_summary(clean_final, decimals)} "
                     f"| {_summary(best, decimals)} | {_summary(final, decimals)} | {_summary(gap, decimals)} |")
    if not lines:
        return ""
    return "\n".join([
        "## Best and final model", "",
        ("Best: the epoch with the highest adversarial accuracy on the validation split (select_best=val), never "
        "chosen on test; both models measured on the test set by the same evaluation. Gap: best − final adversarial "
        "test accuracy (robust overfitting). ± : Student-t 95% interval over seeds (none for one seed)."), "",
        ("| table | method | dropout | seeds | best epoch | final epoch | test acc (best) | test acc (final) "
        "| adv test acc (best) | adv test acc (final) | robust-overfitting gap |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *lines, ""])
