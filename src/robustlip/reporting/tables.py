"""Results as tables: the console table of one run, and the paper-style tables of many runs.

Files first (docs/architecture.md): every run leaves ``results.json`` and the resolved ``config.yaml``; the
report reads only those, so a sweep becomes a table with no wandb at all and from any launcher (local,
per GPU, SLURM). Rows are methods named by their objective (``Objective.label``: ``TRADES(β=6)``,
``RST(λ=.5)``) with the dropout value; runs that differ only by seed are averaged (mean ± std). A row
of one run shows its own uncertainty instead, from results.json's ``uncertainty``: ``48.60 ± 1.03``
is an accuracy and the half-width of its Wilson 95% interval, ``66.4 ± 0.9`` a Lipschitz estimate
and its standard error over examples.
Anything else that differs between two runs of one row (a swept lr, a different ε) splits the row and
is named in its label, so a table never silently averages different settings.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from robustlip.core.files import atomic_write
from robustlip.core.results import RESULT_KEYS
from robustlip.metrics.intervals import t_interval
from robustlip.runs import labels

log = logging.getLogger(__name__)

#: Column headers as the paper prints them.
HEADERS = {
    "train/acc": "train acc",
    "test/acc": "test acc",
    "train/adv_acc": "adv train acc",
    "test/adv_acc": "adv test acc",
    "train/lipschitz": "train lipschitz",
    "test/lipschitz": "test lipschitz",
    "gap": "gap",
    "adv_gap": "adv gap",
}

def header(key: str) -> str:
    """A column's header: the paper's name, ``adv test acc (autoattack)`` for one attack of several."""
    split, _, attack = key.partition("/adv_acc/")
    if attack and split in ("train", "test", "val"):
        return f"adv {split} acc ({attack})"
    return HEADERS.get(key, key)


#: What a ± means in the tables below (report.md prints it under the tables).
PLUS_MINUS_NOTE = (
    "Accuracies and gaps in %. ± is the std over distinct seeds where a row has several (runs that repeat a "
    "seed are averaged first); for a single seed it is the half-width of the Wilson 95% interval of an "
    "accuracy, the standard error of a Lipschitz estimate."
)


def error_bar(record: dict[str, Any] | None) -> float | None:
    """The ± of one run's number from its uncertainty record: Wilson half-width, else the standard error."""
    if not record:
        return None
    if record.get("ci95_low") is not None and record.get("ci95_high") is not None:
        return (float(record["ci95_high"]) - float(record["ci95_low"])) / 2.0
    se = record.get("se")
    return None if se is None else float(se)


@dataclass
class Run:
    """One finished run: where it is, its flattened resolved config and its final metrics."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]
    #: results.json's ``uncertainty``: per metric its n and Wilson interval (accuracies) or standard error.
    uncertainty: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: results.json's ``best`` section (``select_best=val``): the model of the best validation epoch,
    #: measured on test like the final one (``epoch``, ``metrics``, ``uncertainty``, ``robust_overfitting_gap``).
    best: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)


@dataclass
class Row:
    table: str
    method: str
    dropout: str
    sort_key: tuple
    runs: list[Run] = field(default_factory=list)
    extra: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} [{self.extra}]" if self.extra else self.method


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": value}; lists stay values (hashable as tuples)."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    out[key] = tuple(node) if isinstance(node, list) else node
    return out


def _load_config(run_dir: Path) -> dict[str, Any] | None:
    for candidate in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if candidate.is_file():
            try:
                cfg = OmegaConf.load(candidate)
                return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
            except Exception as exc:  # noqa: BLE001 - a broken file is reported, the rest goes on
                log.warning("skipping %s: %s", candidate, exc)
                return None
    return None


def find_runs(dirs: Iterable[str | Path]) -> tuple[list[Run], list[Path]]:
    """Every run below ``dirs`` with a results.json; also the run dirs that have none (incomplete)."""
    runs: list[Run] = []
    incomplete: list[Path] = []
    seen: set[Path] = set()
    for root in dirs:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"robustlip-report: no such directory: {root}")
        for results in sorted(root.rglob("results.json")):
            run_dir = results.parent.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            config = _load_config(run_dir)
            if config is None:
                log.warning("skipping %s: no config.yaml beside results.json", run_dir)
                continue
            try:
                payload = json.loads(results.read_text())
            except ValueError as exc:
                log.warning("skipping %s: %s", results, exc)
                continue
            metrics = payload.get("metrics", {})
            runs.append(Run(run_dir, flatten(config), {k: v for k, v in metrics.items() if v is not None},
                            dict(payload.get("uncertainty") or {}), dict(payload.get("best") or {})))
        for overrides in sorted(root.rglob(".hydra/overrides.yaml")):
            run_dir = overrides.parent.parent.resolve()
            finished = (run_dir / "results.json").exists() or (run_dir / "separation.json").exists()
            if run_dir not in seen and not finished:
                incomplete.append(run_dir)
    return runs, incomplete


def best_runs(runs: Sequence[Run]) -> tuple[list[Run], list[Run]]:
    """The runs as their best-validation-epoch model measured them (``checkpoint=best``), and the runs without one."""
    chosen = [Run(r.path, r.config, {k: v for k, v in r.best["metrics"].items() if v is not None},
                  dict(r.best.get("uncertainty") or {}), r.best) for r in runs if r.best.get("metrics")]
    return chosen, [r for r in runs if not r.best.get("metrics")]


def find_sweep_failures(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failed jobs listed by the sweep summaries (robustlip.runs.sweeps) below ``dirs``."""
    failures = []
    for root in dirs:
        for path in sorted(Path(root).rglob("sweep_summary.json")):
            summary = json.loads(path.read_text())
            for job in summary.get("jobs", []):
                if job.get("status") != "completed":
                    failures.append({"sweep": str(path.parent), **job})
    return failures


def find_separations(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Table 1 rows from the ``separation.json`` files robustlip-separation leaves (dataset from config.yaml)."""
    rows = []
    for root in dirs:
        for path in sorted(Path(root).rglob("separation.json")):
            payload = json.loads(path.read_text())
            config = flatten(_load_config(path.parent) or {})
            splits = payload.get("splits", {})
            rows.append({
                "dataset": config.get("data.name", path.parent.name),
                "eps": payload.get("eps", config.get("data.eps")),
                "train_train": splits.get("train_train", {}).get("min"),
                "test_train": splits.get("test_train", {}).get("min"),
                "dropped": len(config.get("drop_indices") or ()),
            })
    return rows


def separation_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 1: minimum train-train and test-train l_inf separation against eps."""
    def num(value: Any) -> str:
        return "–" if value is None else f"{float(value):.3f}"

    lines = ["### Table 1: separation (l_inf)", "",
             "| dataset | eps | min train-train | min test-train | train-train / 2 eps | dropped |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if not r["eps"] or r["train_train"] is None else f"{r['train_train'] / (2 * float(r['eps'])):.1f}"
        lines.append(f"| {r['dataset']} | {num(r['eps'])} | {num(r['train_train'])} | {num(r['test_train'])} | "
                     f"{ratio} | {r['dropped']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------------------
def unflatten(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The nested node below ``prefix`` of a flattened config ({"objective.beta": 6} -> {"beta": 6})."""
    node: dict[str, Any] = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "."):
            continue
        *parents, leaf = key[len(prefix) + 1:].split(".")
        target = node
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = list(value) if isinstance(value, tuple) else value
    return node


def method_label(run: Run) -> tuple[str, tuple]:
    """The paper's row name of a run and a key that sorts rows in the paper's order (:mod:`robustlip.runs.labels`).

    A robustlip-eval run of a model robustlip did not train (``evaluated_model`` in its config: a state
    dict, torchvision, timm, RobustBench) is named by that model's label, after the paper's methods.
    """
    node = unflatten(run.config, "objective")
    if not node and run.get("evaluated_model.label"):
        label = str(run.get("evaluated_model.label"))
        return label, (98, 0.0, label)
    return labels.method_label({"objective": node, "self_training": unflatten(run.config, "self_training")}, run.path)


def dropout_label(value: Any) -> str:
    """A model's dropout knob as a table cell: '0', '0.5', '0.25/0.5' (per layer kind), 'default'."""
    if value is None:
        return "default"
    if isinstance(value, (tuple, list)):
        return "/".join(f"{float(v):g}" for v in value)
    return f"{float(value):g}"


def _table_name(run: Run, table_by: Sequence[str]) -> str:
    parts = []
    for key in table_by:
        value = run.get(key)
        if value is None:
            continue
        text = str(value)
        parts.append(text.rsplit(".", 1)[-1] if key.endswith("_target_") else text)
    return " · ".join(parts) or "runs"


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignore) or key.endswith(".seed")


def group_rows(runs: Sequence[Run], table_by: Sequence[str], ignore: Sequence[str]) -> list[Row]:
    """Rows of the report: runs with the same table, method and dropout, split where settings differ."""
    base: dict[tuple, Row] = {}
    for run in runs:
        table = _table_name(run, table_by)
        method, order = method_label(run)
        dropout = dropout_label(run.get("model.dropout"))
        key = (table, method, dropout)
        if key not in base:
            base[key] = Row(table, method, dropout, (table, order, dropout))
        base[key].runs.append(run)
    rows: list[Row] = []
    for row in base.values():
        keys = set().union(*(r.config.keys() for r in row.runs))
        varying = sorted(
            k for k in keys
            if not _ignored(k, ignore) and len({repr(r.config.get(k)) for r in row.runs}) > 1
        )
        if not varying:
            rows.append(row)
            continue
        # Same method, different settings (not only seeds): one row per setting, named by it.
        split: dict[str, Row] = {}
        for run in row.runs:
            extra = ", ".join(f"{k}={run.config.get(k)}" for k in varying)
            if extra not in split:
                split[extra] = Row(row.table, row.method, row.dropout, row.sort_key + (extra,), extra=extra)
            split[extra].runs.append(run)
        rows.extend(split.values())
    rows.sort(key=lambda r: tuple(str(p) if not isinstance(p, (int, float)) else p for p in r.sort_key))
    return rows


def seed_values(row: Row, column: str) -> list[float]:
    """One value of ``column`` per distinct seed of the row: repeats of one seed are averaged first.

    Two runs of the same seed are one sample of the seed-to-seed spread, not two (deterministic runs
    repeat the same numbers), so the mean ± std and the count of a row are over distinct seeds.
    """
    by_seed: dict[Any, list[float]] = {}
    for run in row.runs:
        if column in run.metrics:
            by_seed.setdefault(repr(run.get("seed")), []).append(float(run.metrics[column]))
    return [statistics.fmean(values) for values in by_seed.values()]


def seed_count(row: Row) -> str:
    """The row's number of distinct seeds, with the number of runs when some seed ran more than once."""
    seeds = len({repr(run.get("seed")) for run in row.runs})
    return str(seeds) if seeds == len(row.runs) else f"{seeds} ({len(row.runs)} runs)"


def stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _cell(row: Row, column: str, decimals: int) -> str:
    values = seed_values(row, column)
    if not values:
        return "–"
    mean, std = stats(values)
    if std is None:  # one seed: its run's own uncertainty, when results.json has it
        std = error_bar(next(r for r in row.runs if column in r.metrics).uncertainty.get(column))
    return f"{mean:.{decimals}f}" if std is None else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_tables(rows: Sequence[Row], columns: Sequence[str], decimals: int) -> str:
    out: list[str] = []
    tables: dict[str, list[Row]] = {}
    for row in rows:
        tables.setdefault(row.table, []).append(row)
    for table, table_rows in tables.items():
        out += [f"### {table}", ""]
        out.append("| method | dropout | seeds | " + " | ".join(header(c) for c in columns) + " |")
        out.append("|---|---|---|" + "---|" * len(columns))
        for row in table_rows:
            cells = [row.label, row.dropout, seed_count(row)]
            cells += [_cell(row, c, decimals) for c in columns]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_csv(path: Path, rows: Sequence[Row], columns: Sequence[str]) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        header = ["table", "method", "dropout", "settings", "n_runs", "n_seeds"]
        for c in columns:
            # n, ci95_low/high (accuracies) and se (means) are one run's; empty for a row of several runs,
            # which has seeds_ci95_low/high instead (the Student-t interval of the mean over seeds).
            header += [f"{c} mean", f"{c} std", f"{c} n", f"{c} ci95_low", f"{c} ci95_high", f"{c} se",
                       f"{c} seeds_ci95_low", f"{c} seeds_ci95_high"]
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.table, row.method, row.dropout, row.extra, len(row.runs),
                               len({repr(run.get("seed")) for run in row.runs})]
            for c in columns:
                values = seed_values(row, c)
                if values:
                    mean, std = stats(values)
                    line += [f"{mean:.6g}", "" if std is None else f"{std:.6g}"]
                else:
                    line += ["", ""]
                record = row.runs[0].uncertainty.get(c) if len(row.runs) == 1 else None
                line += ["" if not record or record.get(k) is None else f"{record[k]:.6g}"
                         for k in ("n", "ci95_low", "ci95_high", "se")]
                # several seeds: the Student-t 95% interval of the mean over seeds
                _, low, high = t_interval(values) if len(values) > 1 else (None, None, None)
                line += ["", ""] if low is None else [f"{low:.6g}", f"{high:.6g}"]
            writer.writerow(line)


def attack_label(attack: Any, data_eps: float | None = None) -> str:
    """A short name of an evaluation attack for a table title: ``PGD-10 ℓ∞ ε=0.1``, ``FGSM ℓ∞ ε=0.1``.

    The attack's own ``label`` (attacks/base.py). When its ε is not ``data_eps``
    (``allow_eps_mismatch=true``) the title says so, since the Lipschitz estimate and the training
    objective use ``data.eps``.
    """
    if attack is None:
        return "no attack"
    text = attack.label
    if attack.eps is not None and data_eps is not None and abs(float(attack.eps) - float(data_eps)) > 1e-12:
        text += f" (≠ data.eps={float(data_eps):g}: allow_eps_mismatch)"
    return text


def evaluation_attack_label(attacks: Any, data_eps: float | None = None) -> str:
    """The title's attack: one attack's label, or the pointwise worst case over several attacks by name."""
    if isinstance(attacks, dict):
        return "worst case of " + " and ".join(attack_label(a, data_eps) for a in attacks.values())
    return attack_label(attacks, data_eps)


def result_keys(metrics: dict[str, float]) -> list[str]:
    """The paper's keys in the paper's order, each split's per-attack accuracies right after its adv_acc."""
    keys: list[str] = []
    for key in RESULT_KEYS:
        if key in metrics:
            keys.append(key)
        keys += [k for k in metrics if k.startswith(f"{key}/") and k not in keys]
    return keys + [k for k in metrics if k not in keys]


def lipschitz_note(estimator: Any) -> str | None:
    """A title line when the Lipschitz estimate is not the paper's Eq. 3 ascent: ``fidelity=faithful`` takes the
    authors' code's descent (docs/authors-code.md), which reports a smaller number; the table must say so."""
    if getattr(estimator, "direction", None) != "descent":
        return None
    return ("lipschitz: the authors' code's descent search (fidelity=faithful), not the paper's Eq. 3 ascent; "
            "its estimates are smaller (docs/authors-code.md)")


def print_results_table(metrics: dict[str, float], title: str | Sequence[str] = "results",
                        warnings: Sequence[str] = (), uncertainty: dict[str, dict[str, Any]] | None = None) -> None:
    """One run's numbers in the order of the paper's tables, each with its ± and number of examples.

    ± is the half-width of the Wilson 95% interval of an accuracy and the standard error of a mean.
    ``title`` lines are printed above the table as they are, never wrapped to the table's width (a run
    path stays one line that can be copied); ``warnings`` (e.g. a run that did not learn) below it.
    """
    from rich.console import Console
    from rich.table import Table

    uncertainty = uncertainty or {}
    console = Console()
    for line in [title] if isinstance(title, str) else title:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("±", justify="right")
    table.add_column("n", justify="right")
    for key in result_keys(metrics):
        unit = "" if "lipschitz" in key else " %"
        record = uncertainty.get(key) or {}
        bar = error_bar(record)
        table.add_row(key, f"{metrics[key]:.2f}{unit}", "" if bar is None else f"{bar:.2f}", str(record.get("n", "")))
    console.print(table)
    for warning in warnings:
        console.print(f"warning: {warning}", soft_wrap=True, markup=False, highlight=False, style="bold yellow")
