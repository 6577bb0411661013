"""The tables and figures of Tsipras et al. (ICLR 2019) from finished runs (the robustlip-tsipras command).

Each report reads the run folders below the given directories (results.json + config.yaml, and
checkpoints/last.ckpt for ``features``), returns its Markdown and writes ``table.csv`` and its PNG
figures into ``out_dir``:

* ``toy_report``: every run of experiment=tsipras_toy, its measured accuracies next to the closed forms
  of its ``tsipras`` results section (callbacks/tsipras.py);
* ``train_size_report``: test and adversarial test accuracy per (dataset, method, data.train_size), mean ±
  std over seeds, one figure per dataset;
* ``features_report``: the linear models of experiment=tsipras_features, their weights against each
  pixel's correlation with the label, and the masked natural models next to AT.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustlip.core.files import atomic_write
from robustlip.reporting.plots import pyplot
from robustlip.reporting.tables import Run, find_runs, method_label, stats
from robustlip.theory.tsipras import TsiprasSetting, robust_accuracy_bound

log = logging.getLogger(__name__)

class ReportError(ValueError):
    """A report that cannot be made from the given directories (one line, the reason)."""


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------
def model_name(run: Run) -> str:
    target = str(run.get("model._target_", "?")).rsplit(".", 1)[-1]
    if target == "MLP":
        hidden = run.get("model.hidden")
        return "linear" if not hidden else f"MLP{list(hidden)}"
    if target == "InputMask":
        return "linear (masked)"
    return target


def method_name(run: Run) -> str:
    """The run's row name, as every report names it (the objective's own label: Natural, AT, ...)."""
    return method_label(run)[0]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds; 0 for a single value (these tables print ± 0.00)."""
    mean, std = stats(values)
    return mean, 0.0 if std is None else std


def _pct(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{decimals}f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _runs(dirs: Sequence[str | Path]) -> list[Run]:
    runs, incomplete = find_runs(dirs)
    for path in incomplete:
        log.warning("no results.json in %s (unfinished or failed run): left out", path)
    return runs


# --------------------------------------------------------------------------------------------------
# 1. the toy distribution against its closed forms
# --------------------------------------------------------------------------------------------------
TOY_HEADER = [
    "model", "method", "test acc", "closed form (its weights)", "adv test acc", "closed form (its weights)",
    "Thm 2.1 max adv acc (its std acc)", "Bayes acc", "Bayes adv acc", "robust classifier acc (p)", "within tolerance",
]


def toy_report(dirs: Sequence[str | Path], out_dir: Path) -> dict[str, Any]:
    """One row per run of experiment=tsipras_toy: measured (percent) and closed-form values side by side."""
    rows, sections = [], []
    for run in _runs(dirs):
        section = json.loads((run.path / "results.json").read_text()).get("tsipras")
        if section is None:
            continue
        model_row = next(r for r in section["rows"] if r["classifier"] == "this model")
        own = model_row.get("closed_form") or {}
        forms = section["closed_form"]
        # Theorem 2.1 bounds the population: use the population accuracy of a linear model's weights.
        setting = section["setting"]
        standard = own.get("standard_acc", model_row["measured"]["standard_acc"])
        theory = TsiprasSetting(p=setting["p"], eta=setting["eta"], d=setting["d"], eps=setting["eps_features"])
        bound = {"applies": theory.eps >= 2 * theory.eta,
                 "max_robust_acc": None if standard is None else robust_accuracy_bound(theory, standard)}
        rows.append([
            model_name(run), method_name(run),
            _pct(model_row["measured"]["standard_acc"]), _pct(own.get("standard_acc")),
            _pct(model_row["measured"]["robust_acc"]), _pct(own.get("robust_acc")),
            _pct(bound.get("max_robust_acc")) if bound.get("applies") else "–",
            _pct(forms["bayes_standard_acc"]), _pct(forms["bayes_robust_acc"]), _pct(forms["robust_classifier_acc"]),
            {True: "yes", False: "NO", None: "–"}[model_row.get("within_tolerance")],
        ])
        sections.append((run, section))
    if not rows:
        raise ReportError(f"robustlip-tsipras toy: no results.json with a tsipras section below {', '.join(map(str, dirs))}")
    rows.sort(key=lambda r: (r[0] != "linear", r[0], r[1] != "Natural", r[1]))
    setting = sections[0][1]["setting"]
    references = _markdown(
        ["reference classifier", "test acc (this test set)", "closed form", "adv test acc (this test set)", "closed form"],
        [[r["classifier"], _pct(r["measured"]["standard_acc"]), _pct(r["closed_form"]["standard_acc"]),
          _pct(r["measured"]["robust_acc"]), _pct(r["closed_form"]["robust_acc"])]
         for r in sections[0][1]["rows"] if r["classifier"] != "this model"],
    )
    tol = sections[0][1]["tolerance"]
    intro = (
        f"p = {setting['p']}, d = {setting['d']}, η = {setting['eta']:.4f}, ε = {setting['eps_features']:.4f} "
        f"(2η = {setting['two_eta']:.4f}; {setting['eps_pixels']} in pixels), {setting['n_test']} test examples; "
        f"accuracies in percent; tolerance = {tol['z']} binomial standard errors at n = {tol['n_test']}."
    )
    text = "\n\n".join([
        intro,
        _markdown(TOY_HEADER, rows),
        references,
    ])
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "table.csv", TOY_HEADER, rows)
    return {"markdown": text, "figures": []}


# --------------------------------------------------------------------------------------------------
# 2. accuracy against training-set size
# --------------------------------------------------------------------------------------------------
SIZE_HEADER = ["dataset", "train size", "method", "seeds", "test acc", "adv test acc"]


def train_size_points(runs: Sequence[Run]) -> dict[tuple[str, str], dict[int, dict[str, list[float]]]]:
    """(dataset, method) -> train size -> metric -> values over seeds (percent)."""
    points: dict[tuple[str, str], dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs:
        size = run.get("data.train_size")
        if not isinstance(size, int):
            log.warning("skipping %s: data.train_size=%r is not a count of examples", run.path, size)
            continue
        for key in ("test/acc", "test/adv_acc"):
            if key in run.metrics:
                points[(str(run.get("data.name")), method_name(run))][int(size)][key].append(run.metrics[key])
    return points


def train_size_report(dirs: Sequence[str | Path], out_dir: Path) -> dict[str, Any]:
    points = train_size_points(_runs(dirs))
    if not points:
        raise ReportError(f"robustlip-tsipras train_size: no run with data.train_size below {', '.join(map(str, dirs))}")
    rows = []
    for (dataset, method), by_size in sorted(points.items()):
        for size, metrics in sorted(by_size.items()):
            cells = []
            for key in ("test/acc", "test/adv_acc"):
                mean, std = mean_std(metrics[key]) if metrics[key] else (math.nan, math.nan)
                cells.append(f"{mean:.2f} ± {std:.2f}")
            rows.append([dataset, size, method, len(metrics["test/acc"]), *cells])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "table.csv", SIZE_HEADER, rows)
    figures = []
    plt = pyplot()
    for dataset in sorted({d for d, _ in points}):
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        for (name, method), by_size in sorted(points.items()):
            if name != dataset:
                continue
            sizes = sorted(by_size)
            for ax, key in zip(axes, ("test/acc", "test/adv_acc")):
                stats = [mean_std(by_size[s][key]) for s in sizes]
                ax.errorbar(sizes, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=method)
        for ax, title in zip(axes, ("standard test accuracy", "adversarial test accuracy")):
            ax.set_xscale("log")
            ax.set_xlabel("training examples")
            ax.set_ylabel("%")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"{dataset}: accuracy vs train size (mean ± std over seeds)", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"train_size_{dataset}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        figures.append(path)
    return {"markdown": _markdown(SIZE_HEADER, rows), "figures": figures}


# --------------------------------------------------------------------------------------------------
# 3. which features each model uses
# --------------------------------------------------------------------------------------------------
# abs(ρ), not |ρ|: a "|" inside a cell would split it into two columns of the markdown table.
FEATURE_HEADER = ["method", "pixels used", "test acc", "adv test acc", "L1 weight share on abs(ρ) > 0.3"]


def _threshold(run: Run) -> float | None:
    return run.get("callbacks.correlation_mask.threshold")


def linear_weights(run: Run) -> torch.Tensor:
    """The binary score's pixel weights (W₁ − W₀) of a run's final checkpoint."""
    from robustlip.metrics.linear import affine_map, binary_weights
    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint

    ckpt = load_checkpoint(run.path / "checkpoints" / "last.ckpt")
    config = checkpoint_config(ckpt)
    net = net_from_checkpoint(ckpt, config)
    shape = (int(config["data"]["in_channels"]), *_side(config))
    affine = affine_map(net, shape)
    if affine is None:
        raise ReportError(f"robustlip-tsipras features: {run.path} is not a linear model (model={model_name(run)})")
    return binary_weights(*affine)[0].float()


def _side(config: dict[str, Any]) -> tuple[int, int]:
    side = math.isqrt(int(config["data"]["in_features"]) // int(config["data"]["in_channels"]))
    return side, side


def training_correlation(run: Run) -> torch.Tensor:
    """Each pixel's correlation with the label on the run's own training split (its config.yaml's data)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from robustlip.metrics.correlation import pixel_label_correlation

    data = OmegaConf.load(run.path / "config.yaml").data
    datamodule = instantiate(data)
    datamodule.setup("fit")
    return pixel_label_correlation(datamodule.train_eval_dataloader()).float()


def weight_share(weights: torch.Tensor, corr: torch.Tensor, above: float) -> float:
    """Share of the weights' L1 mass on pixels with |correlation| > ``above``."""
    return float(weights.abs()[corr.abs() > above].sum() / weights.abs().sum().clamp_min(1e-12))


def features_report(dirs: Sequence[str | Path], out_dir: Path) -> dict[str, Any]:
    runs = [r for r in _runs(dirs) if r.get("data.classes") is not None and model_name(r).startswith("linear")]
    if not runs:
        raise ReportError(f"robustlip-tsipras features: no linear run with data.classes below {', '.join(map(str, dirs))}")
    corr = training_correlation(runs[0])
    rows, weights = [], {}
    for run in sorted(runs, key=lambda r: (r.get("seed"), _threshold(r) is not None, _threshold(r) or 0, method_name(r))):
        w = linear_weights(run)
        threshold = _threshold(run)
        label = method_name(run) if threshold is None else f"{method_name(run)}, abs(ρ) > {threshold}"
        used = int((w.abs() > 0).sum()) if threshold is not None else int(w.numel())
        rows.append([label, used, f"{run.metrics.get('test/acc', math.nan):.2f}",
                     f"{run.metrics.get('test/adv_acc', math.nan):.2f}", f"{weight_share(w, corr, 0.3):.3f}"])
        if threshold is None:
            weights.setdefault(method_name(run), w)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "table.csv", FEATURE_HEADER, rows)
    figures = []
    if weights:
        figures += _weight_figures(out_dir, corr, weights, _side({"data": {
            "in_features": runs[0].get("data.in_features"), "in_channels": runs[0].get("data.in_channels")}}))
    classes = runs[0].get("data.classes")
    text = (f"data={runs[0].get('data.name')}, classes {list(classes)} (relabelled 0, 1), ε = {runs[0].get('attack.eps')}; "
            "accuracies in percent.\n\n" + _markdown(FEATURE_HEADER, rows))
    return {"markdown": text, "figures": figures}


def _weight_figures(out_dir: Path, corr: torch.Tensor, weights: dict[str, torch.Tensor], side: tuple[int, int]) -> list[Path]:
    plt = pyplot()
    colours = {"Natural": "tab:blue", "AT": "tab:red"}
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name, w in weights.items():
        ax.scatter(corr.numpy(), (w / w.abs().max()).numpy(), s=4, alpha=0.6, label=name, color=colours.get(name))
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("correlation of the pixel with the label")
    ax.set_ylabel("weight / max |weight|")
    ax.legend(markerscale=3)
    ax.set_title("linear classifier: weight vs correlation", fontsize=10)
    fig.tight_layout()
    scatter = out_dir / "weights_vs_correlation.png"
    fig.savefig(scatter, dpi=90)
    plt.close(fig)
    panels = [("correlation ρ", corr)] + [(f"{name} weights", w) for name, w in weights.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.5))
    for ax, (title, values) in zip(axes, panels):
        bound = float(values.abs().max()) or 1.0
        ax.imshow(values.view(*side).numpy(), cmap="coolwarm", vmin=-bound, vmax=bound)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    maps = out_dir / "weight_maps.png"
    fig.savefig(maps, dpi=90)
    plt.close(fig)
    return [scatter, maps]


REPORTS = {"toy": toy_report, "train_size": train_size_report, "features": features_report}
