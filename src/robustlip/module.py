"""RobustClassifier: the one LightningModule every method trains through (docs/architecture.md).

It owns the network, the training objective and the optimizer/scheduler factories; everything that
makes one method differ from another lives in the objective. It stores only plain hyper-parameters
(the resolved run config as a dict of primitives), so its checkpoints load with
``torch.load(weights_only=True)`` and the network can be rebuilt from the checkpoint alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn

from robustlip.objectives.base import Objective

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step and the loss parts."""

    #: Exit status of robustlip-train when it stops on it (robustlip.cli): a numerical fault.
    exit_code = 1


class NonFiniteWeightsError(NonFiniteLossError):
    """A checkpoint was about to be written with NaN/inf weights; refused so the last good one survives."""


def correct(logits: Tensor, y: Tensor) -> Tensor:
    """100.0 where the prediction is the label, else 0.0 (per example): its mean is the accuracy in percent."""
    return (logits.argmax(dim=1) == y).float() * 100.0


class RobustClassifier(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Only plain data goes into the checkpoint: the run config, already resolved to primitives.
        self.save_hyperparameters({"config": config or {}})
        # Percent of correct predictions (100 or 0 per example, averaged), the unit of every accuracy robustlip
        # reports: progress bar, CSV, wandb and results.json agree (no number of classes needed).
        self.train_acc = torchmetrics.MeanMetric()
        self.val_acc = torchmetrics.MeanMetric()
        self._last_parts: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        out = self.objective(self.net, x, y)
        # Kept as tensors (no device sync per step); formatted only if a checkpoint is refused.
        self._last_parts = {k: v.detach() for k, v in out.parts.items()}
        if not torch.isfinite(out.loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.parts.items())
            raise NonFiniteLossError(
                f"training loss is {out.loss.item()} at epoch {self.current_epoch}, global step "
                f"{self.global_step} (batch {batch_idx}); loss parts: {parts or 'none'}"
            )
        self.train_acc(correct(out.logits.detach(), y))
        self.log("train/loss", out.loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/batch_acc", self.train_acc, on_step=False, on_epoch=True)
        for name, value in out.parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)
        return out.loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_acc(correct(logits, y))
        self.log("val/loss", nn.functional.cross_entropy(logits, y), on_epoch=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """The clean logits, which RobustEvaluation reuses (its metrics are the test numbers)."""
        return {"logits": self.net(batch[0])}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write NaN/inf weights: a finite loss can still come with a non-finite gradient step,
        and the next save would replace the last good ``last.ckpt`` with a model that is lost for good."""
        bad = [
            name for name, t in checkpoint["state_dict"].items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
        if bad:
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in self._last_parts.items())
            raise NonFiniteWeightsError(
                f"weights became non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) by epoch "
                f"{self.current_epoch}, global step {self.global_step}; last loss parts: {parts or 'none'}; "
                "refusing to save this checkpoint"
            )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}


class CheckpointedNet(pl.LightningModule):
    """Just a trained network as a LightningModule: ``test_step`` hands its clean logits to RobustEvaluation
    (``trainer.test`` on any network; robustlip-eval itself runs the evaluator without Lightning)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"logits": self.net(batch[0])}
