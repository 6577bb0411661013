"""CorrelationMask: train on only the pixels that correlate with the label (Tsipras et al., Sec. 4).

Before fitting, the callback measures every pixel's Pearson correlation ρ with the label on the
training examples (``datamodule.train_eval_dataloader()``: the training split, un-augmented) and keeps
the pixels with |ρ| > ``threshold`` in the network's ``InputMask`` (``model=masked_linear``). The
result is a *standard* classifier that cannot use weakly correlated pixels, which Tsipras et al. find
about as robust as adversarial training. ``threshold: null`` keeps every pixel (the mask stays all ones),
so natural and adversarial baselines run through the same network.

results.json gets a ``feature_selection`` section: the threshold, how many pixels were kept and the
correlations' range, so a report can put robust accuracy against the number of pixels used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from robustlip.core.errors import ConfigError
from robustlip.core.results import add_results_section
from robustlip.metrics.correlation import pixel_label_correlation

log = logging.getLogger(__name__)


class CorrelationMask(pl.Callback):
    """Fill the network's input mask with |corr(pixel, label)| > ``threshold`` before training.

    Args:
        threshold: keep the pixels whose absolute correlation with the label exceeds it (None: all).
        num_classes: ``${data.num_classes}``; the correlation with a label needs a two-class task.
        results_file: the run's results.json, to which the ``feature_selection`` section is added.
    """

    section = "feature_selection"

    def __init__(self, threshold: float | None = None, num_classes: int = 2, results_file: str | Path | None = None) -> None:
        super().__init__()
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1):
            raise ConfigError(f"callbacks.correlation_mask.threshold={threshold!r} is not allowed; use a number in [0, 1) or null")
        if threshold is not None and num_classes != 2:
            raise ConfigError(
                f"data.num_classes={num_classes!r} is not allowed with callbacks.correlation_mask.threshold; the correlation "
                "with the label needs two classes, e.g. data.classes=[0,6]"
            )
        self.threshold = None if threshold is None else float(threshold)
        self.results_file = None if results_file is None else Path(results_file)
        self.summary: dict[str, Any] = {"threshold": self.threshold}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.threshold is not None and not hasattr(getattr(pl_module, "net", None), "set_mask"):
            raise ConfigError(
                "callbacks.correlation_mask.threshold needs a network with an input mask; use model=masked_linear"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        if self.threshold is None:
            self.summary = {"threshold": None, "pixels_kept": int(net.mask.sum()) if hasattr(net, "mask") else None}
            return
        corr = pixel_label_correlation(trainer.datamodule.train_eval_dataloader())
        keep = corr.abs() > self.threshold
        if not bool(keep.any()):
            raise ConfigError(
                f"callbacks.correlation_mask.threshold={self.threshold} keeps no pixel; the largest |correlation| is "
                f"{float(corr.abs().max()):.3f}"
            )
        net.set_mask(keep)
        self.summary = {
            "threshold": self.threshold,
            "pixels_kept": int(keep.sum()),
            "pixels": int(keep.numel()),
            "max_abs_correlation": float(corr.abs().max()),
        }
        log.info("correlation mask: %d of %d pixels have |corr| > %s", keep.sum(), keep.numel(), self.threshold)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.results_file is not None:
            add_results_section(self.results_file, self.section, self.summary)

