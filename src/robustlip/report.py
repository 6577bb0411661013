"""robustlip-report: run directories -> the paper's tables (Markdown, CSV) and trade-off plots.

Files first (DESIGN.md): every run leaves ``results.json`` and the resolved ``config.yaml``; this
reads only those, so a sweep becomes a table with no wandb at all and from any launcher (local, per
GPU, SLURM). Rows are methods labelled as the paper does (``TRADES(β=6)``, ``RST(λ=.5)``) with the
dropout value; runs that differ only by seed are averaged (mean ± std). Anything else that differs
between two runs of one row (a swept lr, a different ε) splits the row and is named in its label, so
a table never silently averages different settings.

Not a Hydra app on purpose: it writes no run directory of its own and takes directories as
positional arguments; ``key=value`` arguments override ``conf/report.yaml`` like Hydra overrides.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robustlip.config import config_dir

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
#: The paper's row order (Tables 2-4).
METHOD_ORDER = {"natural": 0, "gr": 1, "llr": 2, "at": 3, "rst": 4, "trades": 5}
_NAMES = {"natural": "Natural", "gr": "GR", "llr": "LLR", "at": "AT", "rst": "RST", "trades": "TRADES"}
_METHOD_PARAMS = {"rst": ("lam", "λ"), "trades": ("beta", "β")}


@dataclass
class Run:
    """One finished run: where it is, its flattened resolved config and its final metrics."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, float]

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
                metrics = json.loads(results.read_text()).get("metrics", {})
            except ValueError as exc:
                log.warning("skipping %s: %s", results, exc)
                continue
            runs.append(Run(run_dir, flatten(config), {k: v for k, v in metrics.items() if v is not None}))
        for overrides in sorted(root.rglob(".hydra/overrides.yaml")):
            run_dir = overrides.parent.parent.resolve()
            finished = (run_dir / "results.json").exists() or (run_dir / "separation.json").exists()
            if run_dir not in seen and not finished:
                incomplete.append(run_dir)
    return runs, incomplete


def find_sweep_failures(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failed jobs listed by the sweep summaries (robustlip.sweep) below ``dirs``."""
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
def _num(value: Any) -> str:
    """0.5 -> '.5' as the paper writes λ, 3.0 -> '3'."""
    text = f"{float(value):g}"
    return text[1:] if text.startswith("0.") else text


def method_label(run: Run) -> tuple[str, tuple]:
    """The paper's row name of a run, and a key that sorts rows in the paper's order."""
    name = str(run.get("objective.name", "?"))
    order = METHOD_ORDER.get(name, len(METHOD_ORDER))
    label = _NAMES.get(name, name)
    param = 0.0
    if name in _METHOD_PARAMS:
        key, symbol = _METHOD_PARAMS[name]
        value = run.get(f"objective.{key}")
        if value is not None:
            param = float(value)
            label = f"{label}({symbol}={_num(value)})"
    elif name == "gr" and float(run.get("objective.lam", 1.0)) != 1.0:
        param = float(run.get("objective.lam"))
        label = f"GR(λ={_num(param)})"
    elif name == "llr":
        lam, mu = run.get("objective.lam"), run.get("objective.mu")
        if lam is not None and mu is not None and (float(lam), float(mu)) != (4.0, 3.0):
            param = float(lam)
            label = f"LLR(λ={_num(lam)},μ={_num(mu)})"
    return label, (order, param, name)


def _dropout(run: Run) -> str:
    value = run.get("model.dropout")
    if value is None:
        return "default"
    if isinstance(value, tuple):
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
        dropout = _dropout(run)
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


def stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single run)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def _cell(values: Sequence[float], decimals: int) -> str:
    if not values:
        return "–"
    mean, std = stats(values)
    return f"{mean:.{decimals}f}" if std is None else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def markdown_tables(rows: Sequence[Row], columns: Sequence[str], decimals: int) -> str:
    out: list[str] = []
    tables: dict[str, list[Row]] = {}
    for row in rows:
        tables.setdefault(row.table, []).append(row)
    for table, table_rows in tables.items():
        out += [f"### {table}", ""]
        out.append("| method | dropout | seeds | " + " | ".join(HEADERS.get(c, c) for c in columns) + " |")
        out.append("|---|---|---|" + "---|" * len(columns))
        for row in table_rows:
            cells = [row.label, row.dropout, str(len(row.runs))]
            cells += [_cell([r.metrics[c] for r in row.runs if c in r.metrics], decimals) for c in columns]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_csv(path: Path, rows: Sequence[Row], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["table", "method", "dropout", "settings", "n_runs"]
        for c in columns:
            header += [f"{c} mean", f"{c} std"]
        writer.writerow(header)
        for row in rows:
            line: list[Any] = [row.table, row.method, row.dropout, row.extra, len(row.runs)]
            for c in columns:
                values = [r.metrics[c] for r in row.runs if c in r.metrics]
                if values:
                    mean, std = stats(values)
                    line += [f"{mean:.6g}", "" if std is None else f"{std:.6g}"]
                else:
                    line += ["", ""]
            writer.writerow(line)


def _slug(text: str) -> str:
    """A file-name-safe table name: 'digits · DigitsCNN' -> 'digits_DigitsCNN'."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in text).split()) or "runs"


def write_plots(out_dir: Path, rows: Sequence[Row]) -> list[Path]:
    """Per table: test acc vs adv test acc, and test Lipschitz vs adv test acc, one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
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
            ax.legend(fontsize="small", loc="best")
            fig.tight_layout()
            path = out_dir / f"{name}_{_slug(table)}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def build_report(cfg: DictConfig) -> dict[str, Any]:
    """Read the runs under ``cfg.dirs`` and write report.md, table.csv and plots to ``cfg.out_dir``."""
    dirs = [Path(d) for d in cfg.dirs]
    if not dirs:
        raise ValueError("robustlip-report: give at least one directory (a sweep dir or a run dir)")
    runs, incomplete = find_runs(dirs)
    failures = find_sweep_failures(dirs)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else dirs[0] / "report"
    unknown = [c for c in cfg.columns if c not in HEADERS]
    if unknown:
        raise ValueError(f"report.columns: unknown {unknown}; allowed: {list(HEADERS)}")
    separations = find_separations(dirs)
    if not runs and not separations:
        raise FileNotFoundError(f"robustlip-report: no results.json or separation.json below {[str(d) for d in dirs]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = group_rows(runs, list(cfg.table_by), list(cfg.ignore_keys))
    title = cfg.title or f"robustlip report ({len(runs)} runs)"
    text = [f"# {title}", ""]
    if separations:
        text.append(separation_markdown(separations))
    if rows:
        text.append(markdown_tables(rows, list(cfg.columns), int(cfg.decimals)))
        text.append("Accuracies and gaps in %; mean ± std over seeds where a row has several runs.")
    if failures:
        text += ["", "## Failed jobs", ""]
        text += [f"- job {f['job']} of {f['sweep']}: `{' '.join(f['overrides'])}` — {f.get('error')}" for f in failures]
    if incomplete:
        text += ["", "## Runs without results.json", ""] + [f"- {p}" for p in incomplete]
    markdown = "\n".join(text) + "\n"
    (out_dir / "report.md").write_text(markdown)
    write_csv(out_dir / "table.csv", rows, list(cfg.columns))
    plots = write_plots(out_dir, rows) if cfg.plots else []
    return {"out_dir": out_dir, "markdown": markdown, "rows": rows, "runs": runs, "plots": plots,
            "failures": failures, "incomplete": incomplete, "separations": separations}


def load_config(argv: Sequence[str]) -> DictConfig:
    """conf/report.yaml + positional directories + ``key=value`` overrides."""
    cfg = OmegaConf.load(config_dir() / "report.yaml")
    dirs = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    unknown = set(OmegaConf.from_dotlist(overrides).keys()) - set(OmegaConf.load(config_dir() / "report.yaml").keys())
    if unknown:
        raise ValueError(f"robustlip-report: unknown keys {sorted(unknown)}; see conf/report.yaml")
    cfg.dirs = [*cfg.dirs, *dirs]
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("usage: robustlip-report DIR... [out_dir=...] [title=...] [columns=[...]] [plots=false]")
        print(OmegaConf.to_yaml(OmegaConf.load(config_dir() / "report.yaml")))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build_report(load_config(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(report["markdown"])
    print(f"wrote {report['out_dir'] / 'report.md'}, table.csv and {len(report['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
