"""Keep ``<run dir>/checkpoints/last.ckpt`` the newest resumable state of a run (docs/reliability.md).

:class:`ResumeCheckpoint` (added to every run by ``robustlip-train``) writes it

* at the end of every training epoch (Lightning 2.6's ``ModelCheckpoint(save_last=True)`` only
  rewrites last.ckpt when a top-k checkpoint was saved, i.e. when the monitored metric improved, so
  after a SIGKILL it could be several epochs old);
* on SIGTERM (what SLURM sends before preemption or at the time limit) and on SIGINT (Ctrl-C):
  Lightning's signal connector turns SIGTERM into ``SIGTERMException`` at the end of the current batch;
  :class:`SignalStop` makes the first Ctrl-C ask for exactly that stop (Lightning's own default would
  raise ``KeyboardInterrupt`` in the middle of a batch and save nothing), and this callback writes the
  full training state (weights, optimizer, loops, callbacks) at that batch.

Never on any other exception: a crash or a NaN must not replace the last good checkpoint.

:class:`SignalStop` also stops ``trainer.test`` (the robust evaluation) at the next batch, on SIGINT as
on SIGTERM: Lightning's test loop checks the flag between batches, and ``RobustEvaluation`` checks it
between the batches of the training-set measurement it runs after the test loop.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from robustlip.core.signals import EXIT_CODES, StopRequest
from robustlip.runs.checkpoints import last_checkpoint

log = logging.getLogger(__name__)

class SignalStop(pl.Callback):
    """The first Ctrl-C (SIGINT) asks the Trainer to stop at the end of the current batch, as SIGTERM does.

    The request sets the flag Lightning's SIGTERM handler sets, so the stop takes the same, tested path:
    ``SIGTERMException`` at the batch boundary, :class:`ResumeCheckpoint` saves. A second Ctrl-C aborts
    at once (Python's ``KeyboardInterrupt``), saving nothing. ``signal_name`` says which signal stopped
    the run (None: none this callback saw, i.e. SIGTERM if the Trainer stopped on one). The handling is
    :class:`robustlip.core.signals.StopRequest`'s, as in robustlip-eval.
    """

    def __init__(self) -> None:
        self.request: StopRequest | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        def raise_lightnings_flag() -> None:
            # The flag Lightning's own SIGTERM handler sets; its loops raise SIGTERMException at the batch end.
            trainer._signal_connector.received_sigterm = True

        self.request = StopRequest("stopping at the end of this batch and saving", "abort without saving",
                                   on_request=raise_lightnings_flag)
        self.request.install((signal.SIGINT,))  # SIGTERM is Lightning's own

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.request is not None:
            self.request.restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "")  # Lightning skips the teardown hooks when a loop raises

    @property
    def signal_name(self) -> str | None:
        return self.request.signal_name if self.request is not None else None

    def stopped_by(self) -> str:
        """The signal that stopped the Trainer: SIGINT if this callback saw one, else SIGTERM."""
        return self.signal_name or "SIGTERM"

    @property
    def exit_code(self) -> int:
        """128 + the number of the signal that stopped the Trainer (the shell's convention)."""
        return EXIT_CODES[self.stopped_by()]


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
        log.warning("stopped by a signal: saved %s at %s", self.path, self.position)
