"""Image grids with row and column labels: the figures of robustlip-visualize (docs/tsipras.md).

The cells are tiled into one image and drawn once, so a 10 × 10 grid of large-ε examples takes a
fraction of a second, and the PNGs stay small enough for docs/.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from robustlip.reporting.plots import pyplot
from robustlip.runs.files import atomic_write


def tile(images: Tensor, pad: int = 1) -> Tensor:
    """rows × cols × C × H × W images in [0, 1] as one C × H' × W' image, white lines between cells."""
    rows, cols, channels, h, w = images.shape
    canvas = torch.ones(channels, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[:, top : top + h, left : left + w] = images[r, c].detach().float().clamp(0, 1)
    return canvas


def save_grid(path: Path, images: Tensor, row_labels: list[str], col_labels: list[str], title: str) -> Path:
    """A rows × columns grid of [0, 1] images (shape rows × cols × C × H × W) with labels, as a small PNG.

    The cells are tiled into one image and drawn once (fast for a 10 × 10 grid), labels as text.
    """
    plt = pyplot()
    rows, cols, _, h, w = images.shape
    canvas = tile(images)
    cell = 0.8
    fig = plt.figure(figsize=(cell * cols + 1.0, cell * rows + 0.7))
    ax = fig.add_axes((0.9 / (cell * cols + 1.0), 0.05 / (cell * rows + 0.7), cell * cols / (cell * cols + 1.0),
                       cell * rows / (cell * rows + 0.7)))
    if canvas.shape[0] == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([1 + c * (w + 1) + (w - 1) / 2 for c in range(cols)])
    ax.set_xticklabels(col_labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(rows)])
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=8, y=1 - 0.05 / (cell * rows + 0.7))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # A 128-colour palette: a third smaller than matplotlib's RGBA, and no visible loss on these grids.
    buffer.seek(0)
    with Image.open(buffer) as image, atomic_write(path, binary=True) as handle:
        image.convert("RGB").quantize(colors=128).save(handle, format="PNG", optimize=True)
    return Path(path)
