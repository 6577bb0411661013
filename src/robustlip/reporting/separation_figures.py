"""Figures and the console table of a separation analysis (the paper's Table 1, Figure 3 and Appendix D)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robustlip.metrics.separation import NearestOtherClass
from robustlip.reporting.plots import pyplot


def plot_histogram(path: Path, result: NearestOtherClass, eps: float, split: str, dataset: str) -> Path:
    """Figure 3's style: 20 bins on [0, 1], bar heights are fractions, dashed lines at the raw min and 2ε."""
    plt = pyplot()
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


def plot_pairs(path: Path, pairs: list[dict], x_train: np.ndarray, x_query: np.ndarray,
                shape: tuple[int, ...], split: str) -> Path:
    """The closest pairs, query left and training neighbour right, 4 pairs per row."""
    plt = pyplot()
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


def print_separation_table(payload: dict[str, Any]) -> None:
    """Table 1's rows for this dataset on stdout."""
    tt, te = payload["splits"]["train_train"], payload["splits"]["test_train"]
    print(f"\nSeparation of {payload['dataset']} (exact ℓ∞, pixel units)")
    print(f"  adversarial perturbation ε      {payload['eps']:.3f}")
    for name, stats in (("Train-Train", tt), ("Test-Train", te)):
        skipped = f", raw min {stats['raw_min']:.3f}, {stats['skip_smallest']} smallest skipped" if stats.get("skip_smallest") else ""
        label = f"minimum {name} separation"
        print(f"  {label:<32}{stats['min']:.3f}   (mean {stats['mean']:.3f}, n={stats['count']}{skipped})")
