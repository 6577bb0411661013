"""robustlip-report: run dirs -> the paper's table (md/csv) and plots, from files only (no wandb)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from robustlip.report import build_report, load_config, main
from robustlip.reporting.tables import Run, method_label

#: The objective classes a resolved config.yaml names (its ``_target_``), by ``objective.name``.
TARGETS = {"natural": "Natural", "gr": "GradientRegularization", "llr": "LocalLinearity", "at": "AdversarialTraining",
           "rst": "RST", "trades": "TRADES"}


def _objective(objective: dict) -> dict:
    """The objective node as config.yaml holds it: target, the data's ε for the methods that attack, the knobs."""
    attacks = objective["name"] in ("llr", "at", "rst", "trades")
    return {"_target_": f"robustlip.objectives.{TARGETS[objective['name']]}", **({"eps": 0.1} if attacks else {}), **objective}


def _run(root: Path, name: str, objective: dict, metrics: dict, seed: int = 0, dropout=0.0, **extra) -> Path:
    """A run dir as robustlip-train leaves it: resolved config.yaml + results.json (+ .hydra/overrides)."""
    run_dir = root / name
    objective = _objective(objective)
    (run_dir / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "data": {"name": "digits", "eps": 0.1, "seed": 0},
        "model": {"_target_": "robustlip.models.DigitsCNN", "dropout": dropout},
        "objective": objective,
        "optimizer": {"lr": extra.pop("lr", 0.05)},
        "paths": {"output_dir": str(run_dir)},
        **extra,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (run_dir / "results.json").write_text(json.dumps({"metrics": metrics}))
    return run_dir


def _metrics(test_acc: float, adv: float, lip: float) -> dict:
    return {"train/acc": 100.0, "test/acc": test_acc, "train/adv_acc": adv + 2, "test/adv_acc": adv,
            "train/lipschitz": lip, "test/lipschitz": lip, "gap": 100.0 - test_acc, "adv_gap": 2.0}


def _cfg(dirs, out: Path, *extra: str):
    return load_config([*map(str, dirs), f"out_dir={out}", *extra])


def test_rows_are_paper_methods_in_paper_order_with_seed_mean_and_std(tmp_path):
    sweep = tmp_path / "sweep"
    _run(sweep, "0", {"name": "trades", "beta": 6.0}, _metrics(97.0, 90.0, 3.0))
    _run(sweep, "1", {"name": "natural"}, _metrics(99.0, 60.0, 60.0), seed=0)
    _run(sweep, "2", {"name": "natural"}, _metrics(98.0, 58.0, 70.0), seed=1)
    _run(sweep, "3", {"name": "rst", "lam": 0.5}, _metrics(99.0, 95.0, 11.0))
    _run(sweep, "4", {"name": "at"}, _metrics(99.1, 96.0, 9.0))
    report = build_report(_cfg([sweep], tmp_path / "out"))
    labels = [row.label for row in report["rows"]]
    assert labels == ["Natural", "AT", "RST(λ=.5)", "TRADES(β=6)"]
    md = (tmp_path / "out" / "report.md").read_text()
    natural_line = next(line for line in md.splitlines() if line.startswith("| Natural"))
    # two seeds: mean ± sample std (98.5 ± 0.71 test acc, 65 ± 7.07 Lipschitz)
    assert "98.50 ± 0.71" in natural_line and "65.00 ± 7.07" in natural_line
    assert "| 2 |" in natural_line
    assert "| TRADES(β=6) | 0 | 1 | 100.00 | 97.00 | 90.00 | 3.00 | 3.00 | 2.00 |" in md
    with (tmp_path / "out" / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == labels
    assert float(rows[0]["test/acc mean"]) == pytest.approx(98.5)
    assert float(rows[0]["test/acc std"]) == pytest.approx(0.7071, abs=1e-3)
    assert rows[1]["test/acc std"] == ""


def test_plots_are_png_files_one_point_per_run(tmp_path):
    _run(tmp_path / "s", "a", {"name": "natural"}, _metrics(99.0, 60.0, 60.0))
    _run(tmp_path / "s", "b", {"name": "at"}, _metrics(98.0, 90.0, 5.0))
    report = build_report(_cfg([tmp_path / "s"], tmp_path / "out"))
    names = sorted(p.name for p in report["plots"])
    assert names == ["lipschitz_digits_DigitsCNN.png", "tradeoff_digits_DigitsCNN.png"]
    for path in report["plots"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dropout_and_differing_settings_split_rows_but_seeds_do_not(tmp_path):
    s = tmp_path / "s"
    _run(s, "a", {"name": "trades", "beta": 3.0}, _metrics(90.0, 60.0, 5.0), dropout=0.0)
    _run(s, "b", {"name": "trades", "beta": 3.0}, _metrics(91.0, 62.0, 4.0), dropout=0.5)
    _run(s, "c", {"name": "trades", "beta": 3.0}, _metrics(92.0, 63.0, 4.0), dropout=0.5, seed=1)
    _run(s, "d", {"name": "trades", "beta": 3.0}, _metrics(80.0, 50.0, 4.0), dropout=0.5, lr=0.5)
    rows = build_report(_cfg([s], tmp_path / "out"))["rows"]
    described = sorted((r.label, r.dropout, len(r.runs)) for r in rows)
    assert described == [
        ("TRADES(β=3)", "0", 1),
        ("TRADES(β=3) [optimizer.lr=0.05]", "0.5", 2),
        ("TRADES(β=3) [optimizer.lr=0.5]", "0.5", 1),
    ]


def test_failed_jobs_and_runs_without_results_are_listed(tmp_path):
    s = tmp_path / "s"
    _run(s, "0", {"name": "natural"}, _metrics(99.0, 60.0, 60.0))
    broken = s / "1" / ".hydra"
    broken.mkdir(parents=True)
    (broken / "overrides.yaml").write_text("- optimizer.lr=-1\n")
    (s / "sweep_summary.json").write_text(json.dumps({"jobs": [
        {"job": 1, "status": "failed", "overrides": ["optimizer.lr=-1"], "error": "ValueError: Invalid learning rate"},
    ]}))
    md = build_report(_cfg([s], tmp_path / "out"))["markdown"]
    assert "## Failed jobs" in md and "optimizer.lr=-1" in md and "Invalid learning rate" in md
    assert "## Runs without results.json" in md and str((s / "1").resolve()) in md


def test_method_labels_follow_the_paper():
    def label(objective):
        return method_label(Run(Path("."), {f"objective.{k}": v for k, v in _objective(objective).items()}, {}))[0]

    assert label({"name": "rst", "lam": 2.0}) == "RST(λ=2)"
    assert label({"name": "gr", "lam": 1.0}) == "GR"
    assert label({"name": "llr", "lam": 4.0, "mu": 3.0}) == "LLR"
    assert label({"name": "llr", "lam": 3.0, "mu": 6.0}) == "LLR(λ=3,μ=6)"


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no results.json" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "colums=[gap]"]) == 2
    assert "colums" in capsys.readouterr().err
    _run(tmp_path / "s", "a", {"name": "natural"}, _metrics(99.0, 60.0, 60.0))
    assert main([str(tmp_path / "s"), "columns=[gap,bogus]"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_separation_runs_make_table1(tmp_path):
    for name, eps, tt, te in [("mnist", 0.1, 0.737, 0.812), ("svhn", 0.031, 0.094, 0.110)]:
        run_dir = tmp_path / "sep" / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- data={name}\n")
        drops = [1, 2, 3] if name == "svhn" else []
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"name": name, "eps": eps}, "drop_indices": drops}))
        (run_dir / "separation.json").write_text(json.dumps(
            {"eps": eps, "splits": {"train_train": {"min": tt}, "test_train": {"min": te}}}))
    md = build_report(_cfg([tmp_path / "sep"], tmp_path / "out"))["markdown"]
    assert "| mnist | 0.100 | 0.737 | 0.812 | 3.7 | 0 |" in md
    assert "| svhn | 0.031 | 0.094 | 0.110 | 1.5 | 3 |" in md
    assert "without results.json" not in md


def test_repeats_of_one_seed_count_once_and_report_md_links_its_plots(tmp_path):
    s = tmp_path / "s"
    _run(s, "a", {"name": "natural"}, _metrics(99.0, 60.0, 60.0), seed=0)
    _run(s, "b", {"name": "natural"}, _metrics(97.0, 58.0, 70.0), seed=0)  # the same seed again
    _run(s, "c", {"name": "at"}, _metrics(98.0, 90.0, 5.0), seed=0)
    _run(s, "d", {"name": "at"}, _metrics(96.0, 88.0, 7.0), seed=1)
    report = build_report(_cfg([s], tmp_path / "out"))
    md = report["markdown"]
    natural = next(line for line in md.splitlines() if line.startswith("| Natural"))
    at = next(line for line in md.splitlines() if line.startswith("| AT"))
    # One seed run twice: one sample (the repeats averaged), no spread; two seeds: mean ± std of two.
    assert "| 1 (2 runs) | 100.00 | 98.00 |" in natural and "±" not in natural, natural
    assert "| 2 | 100.00 ± 0.00 | 97.00 ± 1.41 |" in at, at
    for plot in report["plots"]:
        assert f"]({plot.name})" in md and plot.parent == tmp_path / "out"


def test_the_tradeoff_legend_is_beside_the_data_and_inside_the_figure(tmp_path):
    from robustlip.reporting.plots import pyplot, scatter_figure
    from robustlip.reporting.tables import Row

    rows = [Row("digits", f"TRADES(β={b}) [optimizer.lr=0.01, model.width=64]", "0.5", ()) for b in (1, 3, 6)]
    points = [(row, [(90.0 + i, 60.0 + i)]) for i, row in enumerate(rows)]
    fig = scatter_figure("digits · DigitsCNN", points, "test acc (%)", False)
    fig.savefig(tmp_path / "p.png")  # lays the figure out
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box, axes, figure = legend.get_window_extent(renderer), fig.axes[0].get_window_extent(renderer), fig.bbox
    assert not box.overlaps(axes), "the legend covers the data"
    assert figure.x0 <= box.x0 and box.x1 <= figure.x1 and figure.y0 <= box.y0 and box.y1 <= figure.y1, "legend cut off"
    pyplot().close(fig)


def test_columns_of_several_attacks_are_named_after_their_attack(tmp_path):
    metrics = {**_metrics(95.0, 50.0, 10.0), "test/adv_acc/pgd": 52.0, "test/adv_acc/autoattack": 50.0}
    _run(tmp_path / "runs", "at", {"name": "at"}, metrics)
    text = build_report(_cfg([tmp_path / "runs"], tmp_path / "out",
                             "columns=[test/adv_acc/pgd,test/adv_acc/autoattack,test/adv_acc]"))["markdown"]
    assert "| method | dropout | seeds | adv test acc (pgd) | adv test acc (autoattack) | adv test acc |" in text
    assert "| AT | 0 | 1 | 52.00 | 50.00 | 50.00 |" in text
