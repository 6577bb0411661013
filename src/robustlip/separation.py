"""robustlip-separation: is the dataset r-separated? The paper's Table 1 and Figure 3 for any DataModule.

For every training example (train–train) and every test example (test–train): the exact ℓ∞ distance
to the nearest training example of another class (:mod:`robustlip.metrics.separation`). Written to
the run directory, files first (DESIGN.md, "Results"):

- ``separation.json`` — per split: min (Table 1), mean, median, 1st percentile, count, the dataset's
  ε, and the closest cross-class pairs with indices, labels and distance;
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

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Subset

from robustlip.config import CONFIG_PATH, save_resolved_config
from robustlip.metrics.separation import (
    NearestOtherClass,
    closest_pairs,
    nearest_other_class,
    summarize,
    to_grid,
)
from robustlip.results import write_json_atomic
from robustlip.train import _finish_wandb  # one wandb.finish() rule for every entry point
from robustlip.validation import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train_train", "test_train")


def load_arrays(dataset: Dataset, batch_size: int = 2048, num_workers: int = 0,
                raw: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as (flattened images, labels): uint8 levels when it holds 8-bit images, else float32.

    Reading 70k images through ``__getitem__`` (PIL, transforms) takes longer than the search
    itself, so a torchvision dataset's raw uint8 storage is used directly when it provably gives
    the same examples (see ``raw_storage``; ``raw=False`` never does). Otherwise the DataLoader
    reads it and the floats are decoded here (see ``to_grid``), halving the search's peak memory.
    """
    stored = raw_storage(dataset) if raw else None
    if stored is not None:
        return stored
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        xs.append(torch.as_tensor(x).float().numpy().reshape(len(x), -1))
        ys.append(torch.as_tensor(y).numpy().astype(np.int64))
    if not xs:
        raise ConfigError("the dataset split is empty; there is nothing to measure")
    images = np.concatenate(xs)
    del xs
    levels = to_grid(images)
    return (images if levels is None else levels), np.concatenate(ys)


def raw_storage(dataset: Dataset, checks: int = 64) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 images flattened in CHW order, labels) from a torchvision dataset's ``data`` array, or None.

    MNIST-style (N, H, W), CIFAR-style (N, H, W, C) and SVHN-style (N, C, H, W) storage, possibly
    behind a ``Subset``. Trusted only if ``checks`` examples spread over the set, read the normal way
    through ``__getitem__``, decode to exactly the same pixels and labels; any doubt returns None.
    """
    base, index = dataset, None
    if isinstance(dataset, Subset):
        base, index = dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)
    data = getattr(base, "data", None)
    labels = getattr(base, "targets", getattr(base, "labels", None))
    if data is None or labels is None or len(dataset) == 0:
        return None
    data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim not in (3, 4) or len(labels) != len(data):
        return None
    first = torch.as_tensor(dataset[0][0])
    if data.ndim == 3:
        data = data[:, None]
    elif data.shape[1:] != tuple(first.shape):
        data = data.transpose(0, 3, 1, 2)  # HWC storage, CHW tensors
    if data.shape[1:] != tuple(first.shape):
        return None
    if index is not None:
        data, labels = data[index], labels[index]
    images = np.ascontiguousarray(data).reshape(len(data), -1)
    labels = labels.astype(np.int64)
    for i in np.linspace(0, len(dataset) - 1, num=min(checks, len(dataset))).astype(int):
        x, y = dataset[int(i)]
        decoded = to_grid(torch.as_tensor(x).float().numpy().reshape(1, -1))
        if decoded is None or not np.array_equal(decoded[0], images[i]) or int(y) != labels[i]:
            return None
    return images, labels


def kept_indices(n_train: int, drop_indices: Any) -> np.ndarray:
    """Training positions left after ``drop_indices``; an index out of range is a config error."""
    drop = np.asarray(list(drop_indices or []), dtype=np.int64)
    bad = drop[(drop < 0) | (drop >= n_train)]
    if len(bad):
        raise ConfigError(
            f"drop_indices={bad.tolist()!r} is not allowed; indices must lie in [0, {n_train}) (the training set)"
        )
    keep = np.ones(n_train, dtype=bool)
    keep[drop] = False
    return np.flatnonzero(keep)


def separation(cfg: DictConfig) -> dict[str, Any]:
    """Compute both splits as ``cfg`` says, write the files, return the contents of separation.json."""
    output_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, output_dir)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
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
    images: dict[str, dict[str, np.ndarray]] = {"train_train": {}, "test_train": {}}
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
            **summarize(result.distance),
            "eps": eps,
            "closest_pairs": pairs,
            "engine": {"grid": result.grid, "device": result.device, "seconds": round(seconds, 3)},
        }
        log.info("%s: min %.4f, mean %.4f (%s on %s, %.1f s)", split, payload["splits"][split]["min"],
                 payload["splits"][split]["mean"], result.grid, result.device, seconds)
        images[split]["hist"] = _plot_histogram(output_dir / f"{split}_hist.png", result, eps, split, cfg.data.name)
        images[split]["pairs"] = _plot_pairs(output_dir / f"{split}_closest_pairs.png", pairs, x_train,
                                             x_test if split == "test_train" else x_train,
                                             tuple(datamodule.input_shape), split)
    write_json_atomic(output_dir / "separation.json", payload)
    _print_table(payload)
    _log_to_loggers(cfg, payload, output_dir)
    return payload


# ----------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------
def _plot_histogram(path: Path, result: NearestOtherClass, eps: float, split: str, dataset: str) -> Path:
    """Figure 3's style: 20 bins on [0, 1], bar heights are fractions, dashed lines at min and 2ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.distance[np.isfinite(result.distance)]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(d, bins=20, range=(0.0, 1.0), weights=np.full(len(d), 1.0 / max(1, len(d))), color="tab:blue")
    ax.axvline(2 * eps, color="tab:red", linestyle="--", label=f"2ε = {2 * eps:.3g}")
    if len(d):
        ax.axvline(d.min(), color="black", linestyle="--", label=f"min = {d.min():.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("ℓ∞ distance to the nearest other-class training example")
    ax.set_ylabel("fraction of examples")
    ax.set_title(f"{dataset}: {split.replace('_', '–')}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _as_image(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A flattened example back to an (H, W) or (H, W, 3) float image in [0, 1] for imshow."""
    img = flat.astype(np.float32) / (255.0 if flat.dtype == np.uint8 else 1.0)
    img = img.reshape(shape)
    return img[0] if shape[0] == 1 else np.transpose(img, (1, 2, 0))


def _plot_pairs(path: Path, pairs: list[dict], x_train: np.ndarray, x_query: np.ndarray,
                shape: tuple[int, ...], split: str) -> Path:
    """The closest pairs, query left and training neighbour right, 4 pairs per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = 4
    rows = max(1, -(-len(pairs) // per_row))
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2 * per_row * 1.1, rows * 1.35), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    query_name = "train" if split == "train_train" else "test"
    for n, pair in enumerate(pairs):
        r, c = divmod(n, per_row)
        left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
        for ax, img, title in (
            (left, x_query[pair["query_index"]], f"{query_name} {pair['query_index']}\ny={pair['query_label']}"),
            (right, x_train[pair["train_index"]], f"train {pair['train_index']}\ny={pair['train_label']}"),
        ):
            ax.imshow(_as_image(img, shape), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=6)
        left.text(1.05, -0.08, f"d={pair['distance']:.3f}", transform=left.transAxes, fontsize=6, ha="center")
    fig.suptitle(f"closest cross-class pairs ({split.replace('_', '–')})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------
def _print_table(payload: dict[str, Any]) -> None:
    """Table 1's rows for this dataset on stdout."""
    tt, te = payload["splits"]["train_train"], payload["splits"]["test_train"]
    print(f"\nSeparation of {payload['dataset']} (exact ℓ∞, pixel units)")
    print(f"  adversarial perturbation ε      {payload['eps']:.3f}")
    print(f"  minimum Train-Train separation  {tt['min']:.3f}   (mean {tt['mean']:.3f}, n={tt['count']})")
    print(f"  minimum Test-Train separation   {te['min']:.3f}   (mean {te['mean']:.3f}, n={te['count']})")


def summary_metrics(payload: dict[str, Any]) -> dict[str, float]:
    """Flat ``split/statistic`` numbers for loggers (wandb summary, CSV)."""
    metrics = {"eps": payload["eps"]}
    for split, stats in payload["splits"].items():
        for key in ("min", "mean", "median", "p01", "count"):
            metrics[f"{split}/{key}"] = float(stats[key])
    return metrics


def _log_to_loggers(cfg: DictConfig, payload: dict[str, Any], output_dir: Path) -> None:
    """Send the summary to every configured logger, and the figures to wandb when it is one of them."""
    metrics = summary_metrics(payload)
    for node in (cfg.get("logger") or {}).values():
        if node is None or not node.get("_target_"):
            continue
        # The shared wandb group names a training objective; a separation run has none.
        extra = {"group": f"{cfg.data.name}-separation"} if "group" in node else {}
        logger = instantiate(node, **extra)
        logger.log_metrics(metrics)
        if hasattr(logger, "log_image"):
            for split in SPLITS:
                logger.log_image(key=f"{split}/histogram", images=[str(output_dir / f"{split}_hist.png")])
                logger.log_image(key=f"{split}/closest_pairs", images=[str(output_dir / f"{split}_closest_pairs.png")])
            logger.experiment.summary.update(metrics)
        logger.finalize("success")
    _finish_wandb()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="separation")
def main(cfg: DictConfig) -> float:
    payload = separation(cfg)
    # A number for sweepers: the Table 1 train–train minimum.
    return payload["splits"]["train_train"]["min"]


if __name__ == "__main__":
    main()
