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

from robustlip.core.files import atomic_write
from robustlip.reporting.plots import pyplot


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
    # Inches per cell at 100 dpi: an 8×8 digit is drawn 90 px wide, labels and title at 9-10 pt stay readable, and
    # the figure is at least as wide as its title.
    cell, dpi = 0.9, 100
    width = max(cell * cols + 1.1, 0.085 * len(title) + 0.6)
    height = cell * rows + 0.8
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((1.0 / width, 0.05 / height, cell * cols / width, cell * rows / height))
    if canvas.shape[0] == 1:
        ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([1 + c * (w + 1) + (w - 1) / 2 for c in range(cols)])
    ax.set_xticklabels(col_labels, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(rows)])
    ax.set_yticklabels(row_labels, fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / height)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi)
    plt.close(fig)
    # A 128-colour palette: a third smaller than matplotlib's RGBA, and no visible loss on these grids.
    buffer.seek(0)
    with Image.open(buffer) as image, atomic_write(path, binary=True) as handle:
        image.convert("RGB").quantize(colors=128).save(handle, format="PNG", optimize=True)
    return Path(path)
