"""robustlip-report: run directories -> the paper's tables (Markdown, CSV) and trade-off plots.

    robustlip-report logs/sweeps/quick_table2/<stamp> [out_dir=...] [title=...] [columns=[...]] [plots=false]
        [references=[yang2020,robustbench]] [presets=[table2_mnist_cnn1]] [checkpoint=final|best]

Reads only the files runs leave (``results.json``, ``config.yaml``, ``separation.json``, sweep
summaries); the tables are :mod:`robustlip.reporting.tables`, the plots :mod:`robustlip.reporting.plots`, the
published numbers beside ours (``conf/references/``, "Did it reproduce?") :mod:`robustlip.reporting.comparison`,
the best and the final model of ``select_best=val`` runs :mod:`robustlip.reporting.best_final`.
Not a Hydra app on purpose: it writes no run directory of its own and takes directories as
positional arguments; ``key=value`` arguments override ``conf/report.yaml`` like Hydra overrides.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robustlip.core.errors import print_error
from robustlip.core.files import write_text_atomic
from robustlip.reporting import best_final, comparison
from robustlip.reporting.plots import write_parity_plots, write_plots
from robustlip.reporting.references import load_references
from robustlip.reporting.tables import (
    HEADERS,
    PLUS_MINUS_NOTE,
    best_runs,
    find_runs,
    find_separations,
    find_sweep_failures,
    group_rows,
    markdown_tables,
    separation_markdown,
    write_csv,
)
from robustlip.runs.config import config_dir

log = logging.getLogger(__name__)

#: Which model's numbers a report reads: the final epoch's (Yang et al.'s protocol) or the best validation epoch's.
CHECKPOINTS = ("final", "best")


def build_report(cfg: DictConfig) -> dict[str, Any]:
    """Read the runs under ``cfg.dirs`` and write report.md, table.csv and plots to ``cfg.out_dir``."""
    dirs = [Path(d) for d in cfg.dirs]
    presets = [str(p) for p in cfg.presets]
    if not dirs and not presets:
        raise ValueError("robustlip-report: give at least one directory (a sweep dir or a run dir), or presets=[...]")
    checkpoint = str(cfg.checkpoint)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"report.checkpoint={checkpoint!r} is not allowed; allowed: {list(CHECKPOINTS)}")
    numbers = load_references(cfg.references)
    unknown_presets = sorted(set(presets) - {n.preset for n in numbers})
    if unknown_presets:
        raise ValueError(f"report.presets: no published numbers for {unknown_presets}; "
                         f"allowed: {sorted({n.preset for n in numbers})}")
    runs, incomplete = find_runs(dirs)
    final_runs = runs
    without_best: list = []
    if checkpoint == "best":  # every table and comparison below reads the best-validation-epoch model
        runs, without_best = best_runs(runs)
    failures = find_sweep_failures(dirs)
    if not cfg.out_dir and not dirs:
        raise ValueError("robustlip-report: with no directory, say where the report goes: out_dir=...")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else dirs[0] / "report"
    # The paper's columns, and any other metric the runs measured (e.g. test/top2_acc of an added metric).
    known = [*HEADERS, *sorted({key for run in runs for key in run.metrics} - set(HEADERS))]
    unknown = [c for c in cfg.columns if c not in known]
    if unknown:
        raise ValueError(f"report.columns: unknown {unknown}; allowed: {known}")
    separations = find_separations(dirs)
    if not final_runs and not separations and not presets:
        raise FileNotFoundError(f"robustlip-report: no results.json or separation.json below {[str(d) for d in dirs]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = group_rows(runs, list(cfg.table_by), list(cfg.ignore_keys))
    title = cfg.title or (f"robustlip report ({len(runs)} runs)" if runs or not presets
                          else f"published tables of {', '.join(presets)} (nothing run yet)")
    text = [f"# {title}", ""]
    if checkpoint == "best":
        text += ["Every number below is the best-validation-epoch model's (checkpoint=best).", ""]
    if separations:
        text.append(separation_markdown(separations))
    if rows:
        text.append(markdown_tables(rows, list(cfg.columns), int(cfg.decimals)))
        text.append(PLUS_MINUS_NOTE)
    best_rows = group_rows(final_runs, list(cfg.table_by), list(cfg.ignore_keys))
    if best_final.markdown(best_rows, int(cfg.decimals)):
        text += ["", best_final.markdown(best_rows, int(cfg.decimals))]
    comparisons = comparison.compare(rows, numbers, presets)
    if comparisons:
        text += ["", comparison.markdown(comparisons, int(cfg.decimals), checkpoint)]
    if without_best:
        text += ["", "## Runs without a best model (trained without select_best=val; left out)", ""]
        text += [f"- {r.path}" for r in without_best]
    if failures:
        text += ["", "## Failed jobs", ""]
        text += [f"- job {f['job']} of {f['sweep']}: `{' '.join(f['overrides'])}` — {f.get('error')}" for f in failures]
    if incomplete:
        text += ["", "## Runs without results.json", ""] + [f"- {p}" for p in incomplete]
    plots = [*write_plots(out_dir, rows), *write_parity_plots(out_dir, comparisons)] if cfg.plots else []
    if plots:  # report.md sits next to its plots: relative links show them in any Markdown viewer
        text += ["", "## Plots", ""] + [f"![{path.stem}]({path.name})" for path in plots]
    markdown = "\n".join(text) + "\n"
    write_text_atomic(out_dir / "report.md", markdown)
    write_csv(out_dir / "table.csv", rows, list(cfg.columns))
    if comparisons:
        comparison.write_comparison_csv(out_dir / "comparison.csv", comparisons, checkpoint)
    return {"out_dir": out_dir, "markdown": markdown, "rows": rows, "runs": runs, "plots": plots,
            "failures": failures, "incomplete": incomplete, "separations": separations,
            "comparisons": comparisons}


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
        print("usage: robustlip-report DIR... [out_dir=...] [title=...] [columns=[...]] [plots=false] "
              "[references=[...]] [presets=[...]] [checkpoint=final|best]")
        print(OmegaConf.to_yaml(OmegaConf.load(config_dir() / "report.yaml")))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build_report(load_config(argv))
    except (ValueError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        print_error(str(exc))
        return 2
    print(report["markdown"])
    extra = ", comparison.csv" if report["comparisons"] else ""
    print(f"wrote {report['out_dir'] / 'report.md'}, table.csv{extra} and {len(report['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
