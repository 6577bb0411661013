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
import sys
import threading
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from robustlip.runs.checkpoints import last_checkpoint

log = logging.getLogger(__name__)

#: Exit status of a command stopped by a signal: 128 + the signal number (the shell's convention).
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class SignalStop(pl.Callback):
    """The first Ctrl-C (SIGINT) asks the Trainer to stop at the end of the current batch, as SIGTERM does.

    The request sets the flag Lightning's SIGTERM handler sets, so the stop takes the same, tested path:
    ``SIGTERMException`` at the batch boundary, :class:`ResumeCheckpoint` saves. A second Ctrl-C aborts
    at once (Python's ``KeyboardInterrupt``), saving nothing. ``signal_name`` says which signal stopped
    the run (None: none this callback saw, i.e. SIGTERM if the Trainer stopped on one).
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous = None
        self._installed = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.signal_name = None
        self._previous = signal.getsignal(signal.SIGINT)
        if self._previous == signal.SIG_IGN:
            return  # started with Ctrl-C ignored (a background job of a script, nohup): keep it so

        def request_stop(signum, frame) -> None:
            if self.signal_name == "SIGINT":  # the second Ctrl-C: abort now
                self._restore()
                raise KeyboardInterrupt
            self.signal_name = "SIGINT"
            # The flag Lightning's own SIGTERM handler sets; its loops raise SIGTERMException at the batch end.
            trainer._signal_connector.received_sigterm = True
            print("\nSIGINT: stopping at the end of this batch and saving (Ctrl-C again to abort without saving)",
                  file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, request_stop)
        self._installed = True

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()  # Lightning skips the teardown hooks when a loop raises

    def stopped_by(self) -> str:
        """The signal that stopped the Trainer: SIGINT if this callback saw one, else SIGTERM."""
        return self.signal_name or "SIGTERM"


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
