"""Did it reproduce? Our rows beside the published numbers, each judged by our own interval.

A published number *reproduces* when it lies inside the 95% interval of ours and *differs* when it
lies outside. Our interval is the honest one for what was run: with one run, the Wilson interval of
the accuracy over the test examples (a Lipschitz estimate: ±1.96 standard errors), which says
nothing about another seed, hence a warning; with several seeds, the Student-t interval of the mean
over seeds (``metrics.intervals.t_interval``). A number with no interval (the gaps of one run) is
shown but not judged. Rows of a preset's table that were not run keep the published values with
empty measured cells, so a report can be read before the GPU runs fill it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from robustlip.core.files import atomic_write
from robustlip.metrics.intervals import t_interval, z_value
from robustlip.reporting.references import Published
from robustlip.reporting.tables import Row, header, seed_values

REPRODUCES, DIFFERS, UNJUDGED, NOT_RUN = "reproduces", "differs", "no interval", "not run"
MARKS = {REPRODUCES: "✓", DIFFERS: "✗", UNJUDGED: "·", NOT_RUN: ""}


@dataclass(frozen=True)
class Comparison:
    """One published number and ours: mean, its 95% interval, how the interval was made, the verdict."""

    published: Published
    seeds: int = 0
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    interval: str = ""

    @property
    def difference(self) -> float:
        return self.mean - self.published.value

    @property
    def verdict(self) -> str:
        if not self.seeds:
            return NOT_RUN
        if math.isnan(self.low) or math.isnan(self.high):
            return UNJUDGED
        return REPRODUCES if self.low <= self.published.value <= self.high else DIFFERS


def row_preset(row: Row) -> str | None:
    """The preset a row ran (its runs' ``task_name``), which names its published table."""
    names = {str(run.get("task_name")) for run in row.runs}
    return names.pop() if len(names) == 1 else None


def ours(row: Row, column: str) -> tuple[int, float, float, float, str]:
    """(seeds, mean, low, high, interval kind) of one column of a row; (0, nan...) when not measured."""
    values = seed_values(row, column)
    if not values:
        return 0, math.nan, math.nan, math.nan, ""
    if len(values) > 1:
        mean, low, high = t_interval(values)
        return len(values), mean, low, high, f"t over {len(values)} seeds"
    run = next(r for r in row.runs if column in r.metrics)
    record = run.uncertainty.get(column) or {}
    mean = values[0]
    if record.get("ci95_low") is not None and record.get("ci95_high") is not None:
        return 1, mean, float(record["ci95_low"]), float(record["ci95_high"]), f"Wilson, n={record.get('n')}"
    if record.get("se") is not None and not math.isnan(float(record["se"])):
        half = z_value() * float(record["se"])
        return 1, mean, mean - half, mean + half, "±1.96 se"
    return 1, mean, math.nan, math.nan, ""


def compare(rows: Sequence[Row], numbers: Sequence[Published], presets: Sequence[str] = ()) -> list[Comparison]:
    """Every published number of the presets that were run (or are named in ``presets``), with ours where a row matches."""
    by_row: dict[tuple[str, str, str | None], Row] = {}
    for row in rows:
        preset = row_preset(row)
        if preset is not None and not row.extra:  # a row split by a swept setting is not the paper's row
            by_row[(preset, row.method, row.dropout)] = row
    wanted = {preset for preset, _, _ in by_row} | set(presets)
    out: list[Comparison] = []
    for number in numbers:
        if number.preset not in wanted:
            continue
        row = next((r for (p, m, d), r in by_row.items() if p == number.preset and m == number.method
                    and (number.dropout is None or number.dropout == d)), None)
        if row is None:
            out.append(Comparison(number))
            continue
        seeds, mean, low, high, kind = ours(row, number.column)
        out.append(Comparison(number, seeds, mean, low, high, kind))
    return out


def _num(value: float, decimals: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{decimals}f}"


def _cell(c: Comparison, decimals: int) -> str:
    if not c.seeds:
        return f"{c.published.value:.{decimals}f} → –"
    half = (c.high - c.low) / 2.0
    ours_text = _num(c.mean, decimals) + ("" if math.isnan(half) else f" ± {half:.{decimals}f}")
    return f"{c.published.value:.{decimals}f} → {ours_text} ({c.difference:+.{decimals}f}) {MARKS[c.verdict]}".rstrip()


def markdown(comparisons: Sequence[Comparison], decimals: int = 2, checkpoint: str = "final") -> str:
    """The "Did it reproduce?" section: per preset and paper, the published → ours table and a tally."""
    if not comparisons:
        return ""
    out = ["## Did it reproduce?", "",
           (f"Each cell: published → ours ± half-width of our 95% interval (ours − published), {checkpoint} model. "
           "✓ reproduces: the published number lies inside our interval; ✗ differs: outside it; · no interval "
           "to judge by. One seed: the Wilson interval over test examples (Lipschitz: ±1.96 se), which ignores "
           "seed-to-seed variation; several seeds: mean ± Student-t interval over seeds. – : not run here."), ""]
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault((c.published.preset, c.published.paper), []).append(c)
    for (preset, paper), group in groups.items():
        columns = list(dict.fromkeys(c.published.column for c in group))
        table = group[0].published.source.split(" · row ")[0]
        out += [f"### {preset} vs {paper} ({table})", ""]
        out.append("| method | dropout | seeds | " + " | ".join(header(col) for col in columns) + " |")
        out.append("|---|---|---|" + "---|" * len(columns))
        rows: dict[tuple[str, str | None], list[Comparison]] = {}
        for c in group:
            rows.setdefault((c.published.method, c.published.dropout), []).append(c)
        one_seed = []
        for (method, dropout), cells in rows.items():
            by_column = {c.published.column: c for c in cells}
            seeds = max(c.seeds for c in cells)
            if seeds == 1:
                one_seed.append(method + (f" (dropout {dropout})" if dropout else ""))
            text = [_cell(by_column[col], decimals) if col in by_column else "" for col in columns]
            out.append(f"| {method} | {dropout or ''} | {seeds or '–'}{' ⚠' if seeds == 1 else ''} | "
                       + " | ".join(text) + " |")
        tally = {v: sum(c.verdict == v for c in group) for v in (REPRODUCES, DIFFERS, UNJUDGED, NOT_RUN)}
        out += ["", (f"{tally[REPRODUCES]} reproduce, {tally[DIFFERS]} differ, {tally[UNJUDGED]} without an interval, "
                    f"{tally[NOT_RUN]} not run (of {len(group)} published numbers).")]
        if one_seed:
            out.append(f"⚠ one seed only: {', '.join(one_seed)} — the interval covers the test sample, not "
                       "another training run; run SEEDS=0,1,2 before calling a row reproduced.")
        notes = sorted({f"{c.published.method}: {c.published.note}" for c in group if c.published.note})
        out += [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out)


def write_comparison_csv(path: Path, comparisons: Sequence[Comparison], checkpoint: str = "final") -> None:
    """comparison.csv: one line per published number, with ours, the interval, the verdict and the source."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["preset", "paper", "method", "dropout", "column", "published", "checkpoint", "seeds",
                         "ours_mean", "ours_ci95_low", "ours_ci95_high", "interval", "difference", "verdict", "source"])
        for c in comparisons:
            p = c.published
            writer.writerow([p.preset, p.paper, p.method, p.dropout or "", p.column, f"{p.value:g}", checkpoint, c.seeds,
                             *("" if math.isnan(v) else f"{v:.6g}" for v in (c.mean, c.low, c.high)), c.interval,
                             "" if math.isnan(c.mean) else f"{c.difference:.6g}", c.verdict, p.source])

