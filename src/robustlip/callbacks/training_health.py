"""Say when a run did not learn: accuracy that ends at chance, a loss that explodes (docs/reliability.md).

A dead run exits 0 and writes a results table like any other, so without a word it passes for a
result ("RST with λ=0.5 gets 10 % accuracy"). :class:`TrainingHealth` watches the training loss and the
validation accuracy and, at the end of fitting, names what went wrong and the likely cause with its fix
— most often a learning rate made for batch-mean losses used with ``fidelity=faithful``, whose losses
are batch *sums* (docs/objectives.md, "Fidelity"): the gradient is B times larger. The warnings go to
the log, to ``results.json`` (``warnings``) and under the final table.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch

from robustlip.core.fidelity import fidelity_named
from robustlip.core.results import chance_band

log = logging.getLogger(__name__)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return float(value) if isinstance(value, (int, float)) else None


#: The learning rate of a mean loss above which a summed (``fidelity=faithful``) loss is blamed: ten times
#: the presets' SGD rate 0.05. Below it (e.g. the documented lr=0.001 x B=64) the sum is not the likely cause.
SUMMED_LOSS_LR_LIMIT = 0.5


class TrainingHealth(pl.Callback):
    """Warnings for a run that ended at chance accuracy or whose training loss exploded.

    Args:
        num_classes: number of classes (chance is 1/num_classes).
        fidelity: the run's fidelity; ``faithful`` sums losses over the batch.
        lr: the optimizer's learning rate (named in the advice), None if unknown.
        batch_size: the training batch size (the factor a summed loss scales the gradient by).
        explode_factor: a step loss this many times the first step's counts as exploded.
    """

    def __init__(self, num_classes: int, fidelity: str = "paper", lr: float | None = None,
                 batch_size: int | None = None, explode_factor: float = 10.0) -> None:
        self.num_classes = int(num_classes)
        self.fidelity = fidelity_named(fidelity)
        self.lr = None if lr is None else float(lr)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.explode_factor = float(explode_factor)
        self.first_loss: float | None = None
        self.worst: tuple[float, int] | None = None  # (loss, global step)
        self.val_acc: float | None = None
        self.val_count: int | None = None
        self.train_acc: float | None = None
        self.warnings: list[str] = []

    # -- watching ---------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = _scalar(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        if loss is None or not math.isfinite(loss):
            return  # a non-finite loss stops the run with its own error (module.NonFiniteLossError)
        if self.first_loss is None:
            self.first_loss = loss
        if self.worst is None or loss > self.worst[0]:
            self.worst = (loss, trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = _scalar(trainer.callback_metrics.get("val/acc"))
        if value is not None:
            self.val_acc = value
            datamodule = getattr(trainer, "datamodule", None)
            val_set = getattr(datamodule, "val_set", None)
            self.val_count = len(val_set) if val_set is not None else None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        value = _scalar(trainer.callback_metrics.get("train/batch_acc"))
        if value is not None:
            self.train_acc = value

    def on_fit_end(self, trainer, pl_module) -> None:
        self.warnings = self.diagnose()
        for warning in self.warnings:
            log.warning(warning)

    # -- judging ----------------------------------------------------------------------------------
    def advice(self) -> str:
        """The likely cause of a dead run and its fix, from the run's own settings."""
        lr = f"optimizer.lr={self.lr:g}" if self.lr is not None else "the learning rate"
        summed_lr = None if self.lr is None or not self.batch_size else self.lr * self.batch_size
        if self.fidelity.sums_losses and self.batch_size and (summed_lr is None or summed_lr > SUMMED_LOSS_LR_LIMIT):
            smaller = f"optimizer.lr={self.lr / self.batch_size:.2g}" if self.lr is not None else "a smaller optimizer.lr"
            return (f"likely cause: fidelity=faithful sums the loss over the batch, so the gradient is {self.batch_size}x "
                    f"that of a mean and {lr} (made for mean losses) is too large; try {smaller} "
                    "(docs/objectives.md, 'Fidelity')")
        return (f"likely cause: {lr} is too large (or too small) for this objective, or too few epochs; try a 10x smaller "
                "optimizer.lr, or check the labels of the data")

    def check_accuracy(self, name: str, acc: float | None, n: int | None) -> str | None:
        """A warning when ``acc`` (percent) cannot be told from guessing, else None."""
        if acc is None:
            return None
        chance, ceiling = chance_band(self.num_classes, n)
        if acc > ceiling:
            return None
        return (f"{name} is {acc:.1f} %, chance level for {self.num_classes} classes ({chance:.1f} %): the model did not "
                f"learn; {self.advice()}")

    def diagnose(self) -> list[str]:
        warnings = []
        if self.first_loss is not None and self.worst is not None and self.first_loss > 0 \
                and self.worst[0] > self.explode_factor * self.first_loss:
            warnings.append(f"the training loss exploded: {self.first_loss:.3g} at the first step, {self.worst[0]:.3g} at "
                            f"global step {self.worst[1]}; {self.advice()}")
        accuracy = (self.check_accuracy("the final val/acc", self.val_acc, self.val_count)
                    if self.val_acc is not None else self.check_accuracy("the final train/batch_acc", self.train_acc, None))
        if accuracy is not None:
            warnings.append(accuracy)
        return warnings
