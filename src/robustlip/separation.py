"""robustlip-separation: is the dataset r-separated? The paper's Table 1 and Figure 3 for any DataModule.

For every training example (train–train) and every test example (test–train): the exact ℓ∞ distance
to the nearest training example of another class (:mod:`robustlip.metrics.separation`). Written to
the run directory, files first (docs/architecture.md, "Files first"):

- ``separation.json`` — per split: min (Table 1, after skipping the ``skip_smallest`` smallest
  distances), raw_min, the rule, mean, median, 1st percentile, count, the dataset's ε, and the
  closest cross-class pairs with indices, labels and distance;
- ``{split}_distances.npy`` / ``{split}_nearest.npy`` — per example, indexed like the dataset
  (NaN / -1 where an example was dropped);
- ``{split}_hist.png`` — Figure 3: 20 bins on [0, 1], fractions, dashed lines at the min and at 2ε;
- ``{split}_closest_pairs.png`` — the closest pairs side by side (Appendix D finds duplicates and
  mislabelled images this way); ``drop_indices`` then removes such training examples and recomputes.

With ``logger=wandb`` the summary numbers and the images also go to wandb.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from robustlip.cli import entry_point
from robustlip.core.files import write_json_atomic
from robustlip.runs.config import save_resolved_config
from robustlip.runs.loggers import build_loggers, check_loggers, finish_wandb
from robustlip.runs.setup import prepare_data

# numpy, numba, torch and matplotlib are imported inside `separation`, so that `robustlip-separation --help`
# and a config error answer without loading them (docs/performance.md).

log = logging.getLogger(__name__)


def separation(cfg: DictConfig) -> dict[str, Any]:
    """Compute both splits as ``cfg`` says, write the files, return the contents of separation.json."""
    import numpy as np

    from robustlip.data.arrays import load_arrays
    from robustlip.metrics.separation import (
        check_skip_smallest,
        closest_pairs,
        kept_indices,
        nearest_other_class,
        summarize,
    )
    from robustlip.reporting.separation_figures import plot_histogram, plot_pairs, print_separation_table

    check_loggers(cfg)
    output_dir = Path(cfg.paths.output_dir)
    skip = check_skip_smallest(cfg.get("skip_smallest"))
    # The checks first (dataset present, loggers usable), then the first file (docs/reliability.md).
    datamodule = prepare_data(cfg)
    # The shared wandb group names a training objective; a separation run has none.
    loggers = build_loggers(cfg, group=f"{cfg.data.name}-separation")
    save_resolved_config(cfg, output_dir)
    workers = int(cfg.data.get("num_workers", 0))
    x_train, y_train = load_arrays(datamodule.train_eval_set, num_workers=workers)
    x_test, y_test = load_arrays(datamodule.test_set, num_workers=workers)
    keep = kept_indices(len(x_train), cfg.get("drop_indices"))
    x_ref, y_ref = x_train[keep], y_train[keep]
    eps = float(cfg.data.eps)
    k = int(cfg.get("closest_pairs", 16))
    log.info("separation of %s: %d training (%d dropped) and %d test examples",
             cfg.data.name, len(x_train), len(x_train) - len(keep), len(x_test))

    queries = {"train_train": (x_ref, y_ref, keep), "test_train": (x_test, y_test, np.arange(len(x_test)))}
    payload: dict[str, Any] = {
        "dataset": str(cfg.data.name),
        "eps": eps,
        "two_eps": 2 * eps,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "drop_indices": sorted(int(i) for i in cfg.get("drop_indices") or []),
        "splits": {},
    }
    images: dict[str, dict[str, Any]] = {"train_train": {}, "test_train": {}}
    for split, (xq, yq, qid) in queries.items():
        start = time.perf_counter()
        result = nearest_other_class(xq, yq, x_ref, y_ref, engine=str(cfg.get("engine", "auto")),
                                     device=cfg.get("device"))
        seconds = time.perf_counter() - start
        n_all = len(x_train) if split == "train_train" else len(x_test)
        distances = np.full(n_all, np.nan)
        nearest = np.full(n_all, -1, dtype=np.int64)
        distances[qid] = result.distance
        nearest[qid] = np.where(result.index >= 0, keep[np.maximum(result.index, 0)], -1)
        np.save(output_dir / f"{split}_distances.npy", distances)
        np.save(output_dir / f"{split}_nearest.npy", nearest)
        pairs = closest_pairs(result, yq, y_ref, k, query_ids=qid, ref_ids=keep, symmetric=split == "train_train")
        payload["splits"][split] = {
            **summarize(result.distance, skip[split], query_ids=qid, split=split),
            "eps": eps,
            "closest_pairs": pairs,
            "engine": {"grid": result.grid, "device": result.device, "seconds": round(seconds, 3)},
        }
        log.info("%s: min %.4f, mean %.4f (%s on %s, %.1f s)", split, payload["splits"][split]["min"],
                 payload["splits"][split]["mean"], result.grid, result.device, seconds)
        images[split]["hist"] = plot_histogram(output_dir / f"{split}_hist.png", result, eps, split, cfg.data.name)
        images[split]["pairs"] = plot_pairs(output_dir / f"{split}_closest_pairs.png", pairs, x_train,
                                             x_test if split == "test_train" else x_train,
                                             tuple(datamodule.input_shape), split)
    write_json_atomic(output_dir / "separation.json", payload)
    print_separation_table(payload)
    _log_to_loggers(loggers, payload, output_dir)
    from robustlip.core.files import print_written

    print_written(output_dir)
    return payload


def summary_metrics(payload: dict[str, Any]) -> dict[str, float]:
    """Flat ``split/statistic`` numbers for loggers (wandb summary, CSV)."""
    metrics = {"eps": payload["eps"]}
    for split, stats in payload["splits"].items():
        for key in ("min", "raw_min", "mean", "median", "p01", "count"):
            metrics[f"{split}/{key}"] = float(stats[key])
    return metrics


def _log_to_loggers(loggers: list[Any], payload: dict[str, Any], output_dir: Path) -> None:
    """Send the summary to every configured logger, and the figures to wandb when it is one of them."""
    metrics = summary_metrics(payload)
    for logger in loggers:
        logger.log_metrics(metrics)
        if hasattr(logger, "log_image"):
            for split in payload["splits"]:
                logger.log_image(key=f"{split}/histogram", images=[str(output_dir / f"{split}_hist.png")])
                logger.log_image(key=f"{split}/closest_pairs", images=[str(output_dir / f"{split}_closest_pairs.png")])
            logger.experiment.summary.update(metrics)
        logger.finalize("success")


def run(cfg: DictConfig) -> float:
    """The Hydra task: the separation of ``cfg.data``; returns the Table 1 train–train minimum for sweepers."""
    try:
        return separation(cfg)["splits"]["train_train"]["min"]
    finally:
        finish_wandb()


main = entry_point("separation", run)


if __name__ == "__main__":
    main()
