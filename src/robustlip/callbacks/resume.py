"""Keep ``<run dir>/checkpoints/last.ckpt`` the newest resumable state of a run (docs/reliability.md).

:class:`ResumeCheckpoint` (added to every run by ``robustlip-train``) writes it

* at the end of every training epoch (Lightning 2.6's ``ModelCheckpoint(save_last=True)`` only
  rewrites last.ckpt when a top-k checkpoint was saved, i.e. when the monitored metric improved, so
  after a SIGKILL it could be several epochs old);
* on SIGTERM (what SLURM sends before preemption or at the time limit): Lightning's signal connector
  turns SIGTERM into ``SIGTERMException`` at the end of the current batch, and this callback writes the
  full training state (weights, optimizer, loops, callbacks) at that batch.

Never on any other exception: a crash or a NaN must not replace the last good checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from robustlip.runs.checkpoints import last_checkpoint

log = logging.getLogger(__name__)


class ResumeCheckpoint(pl.Callback):
    """Save the whole training state to ``<run dir>/checkpoints/last.ckpt`` every epoch and on SIGTERM."""

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__()
        self.path = last_checkpoint(output_dir)
        self.saved: Path | None = None
        self.position = ""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After validation and ModelCheckpoint's top-k bookkeeping of this epoch, so their state is in it.
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            # A crash or a NaN must not overwrite the last good checkpoint with the state that failed.
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        self.position = f"epoch {trainer.current_epoch}, global step {trainer.global_step}, batch {batches} of the epoch"
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved = self.path
        log.warning("SIGTERM: saved %s at %s", self.path, self.position)
