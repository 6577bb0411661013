"""Published numbers as data (conf/references/) and robustlip-report's "Did it reproduce?" on constructed runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from robustlip.metrics.intervals import Accuracy, t_interval
from robustlip.report import build_report
from robustlip.reporting.references import available, load_reference, load_references
from robustlip.runs.config import config_dir
from tests.test_report import _cfg, _metrics, _run


def _results(run_dir: Path, metrics: dict, uncertainty: dict | None = None, best: dict | None = None) -> Path:
    payload = {"metrics": metrics, "uncertainty": uncertainty or {}, **({"best": best} if best else {})}
    (run_dir / "results.json").write_text(json.dumps(payload))
    return run_dir


def _wilson(percent_correct: int, n: int = 10000) -> dict:
    """A results.json uncertainty record of an accuracy of ``percent_correct``/100 on ``n`` examples."""
    return Accuracy(percent_correct * n // 10000, n).as_dict()


def test_every_reference_parses_and_every_number_has_a_source():
    assert {"yang2020", "robustbench"} <= set(available())
    experiments = {p.stem for p in (config_dir() / "experiment").glob("*.yaml")}
    for name in available():
        numbers = load_reference(name)
        assert numbers, name
        for n in numbers:
            assert n.preset in experiments, (name, n.preset)
            assert f"row {n.method}" in n.source and " · column " in n.source, n.source
    yang = load_reference("yang2020")
    # Tables 2 and 3: four blocks of 10 rows x 6 columns; Table 4: two datasets of 10 rows x 5 columns.
    assert len(yang) == 4 * 60 + 2 * 50
    cell = next(n for n in yang if n.preset == "table2_mnist_cnn1" and n.method == "TRADES(β=6)" and n.column == "test/adv_acc")
    assert cell.value == 93.68 and cell.source.startswith("Table 2 · CNN1")
    svhn = {(n.method, n.dropout): n.value for n in yang if n.preset == "table4_svhn" and n.column == "test/adv_acc"}
    assert svhn[("TRADES(β=3)", "0.5")] == 62.41 and svhn[("Natural", "0")] == 2.66
    bench = load_reference("robustbench")
    assert all("@78fcc9e" in n.source and ".json" in n.source for n in bench)
    assert {n.column for n in bench} == {"test/acc", "test/adv_acc/autoattack"}


def test_reference_rows_are_named_as_robustlip_names_its_method_rows():
    """Each method row of conf/experiment/method/ builds an objective whose label a reference row uses."""
    labels = set()
    with initialize_config_dir(str(config_dir()), version_base=None):
        for method in sorted(p.stem for p in (config_dir() / "experiment" / "method").glob("*.yaml")):
            cfg = compose("train", overrides=[f"+experiment/method={method}"])
            labels.add(instantiate(cfg.objective).label)
    published = {n.method for n in load_references(available())}
    assert published - labels == {"RST+unlabeled (Carmon et al. 2019)"}  # context only: no robustlip preset trains it


def test_a_malformed_reference_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("paper: X\ncitation: Y\npresets:\n  table2_mnist_cnn1:\n    table: T\n    columns: {test/acc: a, gap: b}\n"
                   "    rows:\n      - {method: AT, values: [1.0]}\n")
    with pytest.raises(ValueError, match="has 1 values for 2 columns") as err:
        load_reference(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown reference 'nope'; allowed"):
        load_reference("nope")


def test_t_interval_of_three_seeds_uses_students_t():
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and (high - low) / 2 == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
    assert t_interval([5.0])[0] == 5.0


def test_report_says_reproduces_inside_and_differs_outside_our_interval(tmp_path):
    sweep = tmp_path / "sweep"
    preset = {"task_name": "table2_mnist_cnn1"}
    # TRADES(β=6), one run: 93.50% adversarial accuracy on 10,000 examples, Wilson ± ~0.48 covers the paper's 93.68.
    trades = _run(sweep, "trades", {"name": "trades", "beta": 6.0}, {}, **preset)
    _results(trades, _metrics(97.5, 93.5, 3.0), {"test/adv_acc": _wilson(9350), "test/acc": _wilson(9750)})
    # AT, one run: 95.00% — the paper's 97.21 is far outside the interval.
    at = _run(sweep, "at", {"name": "at"}, {}, **preset)
    _results(at, _metrics(99.3, 95.0, 9.0), {"test/adv_acc": _wilson(9500)})
    # Natural, three seeds 59, 60, 61: mean 60 ± 2.48 (t, 2 dof) covers 59.83; test acc 98.0 ± 0 does not cover 99.20.
    for seed, adv in enumerate((59.0, 60.0, 61.0)):
        _run(sweep, f"nat{seed}", {"name": "natural"}, _metrics(98.0, adv, 67.0), seed=seed, **preset)
    report = build_report(_cfg([sweep], tmp_path / "out"))
    md = report["markdown"]
    assert "## Did it reproduce?" in md and "### table2_mnist_cnn1 vs Yang et al. 2020 (Table 2 · CNN1)" in md
    with (tmp_path / "out" / "comparison.csv").open() as handle:
        rows = {(r["method"], r["column"]): r for r in csv.DictReader(handle)}
    assert rows[("TRADES(β=6)", "test/adv_acc")]["verdict"] == "reproduces"
    assert rows[("TRADES(β=6)", "test/acc")]["verdict"] == "reproduces"  # 97.50 inside 97.50 ± 0.31
    assert rows[("AT", "test/adv_acc")]["verdict"] == "differs"
    assert float(rows[("AT", "test/adv_acc")]["difference"]) == pytest.approx(95.0 - 97.21)
    assert rows[("Natural", "test/adv_acc")]["verdict"] == "reproduces"
    assert rows[("Natural", "test/adv_acc")]["interval"] == "t over 3 seeds"
    assert rows[("Natural", "test/acc")]["verdict"] == "differs"
    assert rows[("AT", "gap")]["verdict"] == "no interval"  # one run's gap has no interval to judge by
    assert rows[("GR", "test/acc")]["verdict"] == "not run" and rows[("GR", "test/acc")]["ours_mean"] == ""
    assert rows[("TRADES(β=6)", "test/adv_acc")]["source"] == "Table 2 · CNN1 · row TRADES(β=6) · column adv test acc"
    natural = next(line for line in md.splitlines() if line.startswith("| Natural |") and "→" in line)
    assert "| 3 |" in natural and "59.83 → 60.00 ± 2.48 (+0.17) ✓" in natural
    assert "97.21 → 95.00 ± 0.43 (-2.21) ✗" in md
    assert "⚠ one seed only: AT, TRADES(β=6)" in md
    assert (tmp_path / "out" / "parity_table2_mnist_cnn1_Yang_et_al_2020.png").stat().st_size > 0
    with (tmp_path / "out" / "table.csv").open() as handle:
        natural_csv = next(r for r in csv.DictReader(handle) if r["method"] == "Natural")
    assert float(natural_csv["test/adv_acc seeds_ci95_low"]) == pytest.approx(60.0 - 2.4841, abs=1e-3)
    # A preset nobody ran is not compared unless asked for.
    assert "table2_mnist_cnn2" not in md


def test_presets_show_the_published_table_with_empty_measured_cells(tmp_path):
    report = build_report(_cfg([], tmp_path / "out", "presets=[table2_mnist_cnn1]"))
    assert len(report["comparisons"]) == 60 and all(c.verdict == "not run" for c in report["comparisons"])
    assert "| TRADES(β=6) |  | – | 97.50 → – | 97.54 → – | 93.68 → – |" in report["markdown"]
    with pytest.raises(ValueError, match=r"report.presets: no published numbers for \['quick_table2'\]; allowed"):
        build_report(_cfg([], tmp_path / "out", "presets=[quick_table2]"))
    with pytest.raises(ValueError, match="report.checkpoint='last' is not allowed; allowed: \\['final', 'best'\\]"):
        build_report(_cfg([], tmp_path / "out", "presets=[table2_mnist_cnn1]", "checkpoint=last"))


def test_checkpoint_best_reads_the_best_section_and_the_gap_is_reported(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, (best_adv, final_adv) in enumerate(((92.0, 90.0), (93.0, 90.0), (94.0, 90.0))):
        run = _run(sweep, f"t{seed}", {"name": "trades", "beta": 6.0}, {}, seed=seed, task_name="table2_mnist_cnn1")
        best = {"selected_by": "val/adv_acc", "epoch": 3 + seed, "final_epoch": 9,
                "metrics": _metrics(97.5, best_adv, 3.0), "robust_overfitting_gap": best_adv - final_adv}
        _results(run, _metrics(97.0, final_adv, 3.0), best=best)
    _run(sweep, "plain", {"name": "at"}, _metrics(99.0, 96.0, 9.0), task_name="table2_mnist_cnn1")
    final = build_report(_cfg([sweep], tmp_path / "final"))
    assert "## Best and final model" in final["markdown"]
    line = next(x for x in final["markdown"].splitlines() if x.startswith("| digits") and "TRADES" in x)
    # best 93 ± 2.48, final 90 ± 0 (three equal seeds), gap 3 ± 2.48 over three seeds; best epochs 3, 4, 5 of 9
    assert "| 3 | 3, 4, 5 | 9 |" in line and "| 93.00 ± 2.48 | 90.00 ± 0.00 | 3.00 ± 2.48 |" in line
    best = build_report(_cfg([sweep], tmp_path / "best", "checkpoint=best"))
    assert [r.label for r in best["rows"]] == ["TRADES(β=6)"]
    assert "Runs without a best model" in best["markdown"] and "plain" in best["markdown"]
    adv = next(c for c in best["comparisons"] if c.published.method == "TRADES(β=6)" and c.published.column == "test/adv_acc")
    assert adv.mean == pytest.approx(93.0) and adv.verdict == "reproduces"  # 93.68 inside 93 ± 2.48
