"""The training progress bar, one line in an 80-column terminal. A wider bar wraps and repeats itself on every refresh.

Lightning's RichProgressBar shows a 40-character bar, the speed and every logged metric under its full
name (``train/loss_step``, ``val/acc``, ``train/loss_epoch``, ``v_num``), which wraps onto three more lines
at 80 columns. This one shows a 16-character bar, no speed column, and two short metrics: the batch loss
and the last validation accuracy (in percent, as everywhere).
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
)
from rich.progress import TextColumn

#: What the bar shows, under which short name, in this order.
SHOWN = {"train/loss_step": "loss", "train/loss": "loss", "val/acc": "val acc"}
BAR_WIDTH = 16


def compact_metrics(items: dict[str, Any]) -> dict[str, Any]:
    """The bar's metrics: ``SHOWN``'s keys under their short names, numbers rounded (val acc to 0.1 %)."""
    shown: dict[str, Any] = {}
    for key, name in SHOWN.items():
        if key in items and name not in shown:
            value = items[key]
            if isinstance(value, (int, float)):
                value = f"{value:.1f} %" if name == "val acc" else f"{value:.3f}"
            shown[name] = value
    return shown


class CompactProgressBar(RichProgressBar):
    """RichProgressBar that fits one 80-column line (see the module doc)."""

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        return compact_metrics(super().get_metrics(trainer, pl_module))

    def configure_columns(self, trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(bar_width=BAR_WIDTH, complete_style=self.theme.progress_bar,
                            finished_style=self.theme.progress_bar_finished, pulse_style=self.theme.progress_bar_pulse),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
        ]
