"""Silence what is known to be harmless, so that what a run prints is worth reading.

* Lightning's "💡 Tip: ... litlogger" advertisement, printed by every Trainer;
* torch's ``_pytree`` deprecation (``isinstance(treespec, LeafSpec)``), raised inside Lightning;
* when resuming, Lightning's three alarms that do not apply here: the checkpoint folder "is not empty"
  (it holds this run's own checkpoints), the CSV log folder's "Previous log files ... will be deleted"
  (:func:`robustlip.runs.loggers.keep_csv_history` moved the earlier metrics.csv aside first) and "your
  dataloader is not resumable" (:class:`robustlip.callbacks.reproducibility.ReproducibleRandomness`
  restores the data order and every random state, so a resumed run is bit-identical to an
  uninterrupted one: tests/test_reliability.py). The train command says that instead, in one true line.
"""

from __future__ import annotations

import logging
import warnings

#: Warnings (regular expressions matched from the start of the message) that are always harmless.
ALWAYS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # A small data set has fewer batches per epoch than log_every_n_steps: the epoch's metrics are logged anyway.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)
#: Warnings that are harmless when this run resumes from its own checkpoint.
ON_RESUME = (
    r"Checkpoint directory .* exists and is not empty",
    r"Experiment logs directory .* exists and is not empty",
    r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
)
#: Log records of Lightning's that advertise rather than inform.
ADVERTISEMENTS = ("💡 Tip:",)
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                     "lightning_fabric.utilities.rank_zero")


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERTISEMENTS)


_FILTER = _DropAdvertisements()


#: robustlip's own warnings: shown as one ``warning: ...`` line, not with the file and source line that raised them.
OWN_WARNINGS = ("GradientMaskingWarning",)
_format = warnings.formatwarning


def _one_line(message, category, filename, lineno, line=None) -> str:
    if category.__name__ in OWN_WARNINGS:
        return f"warning: {message}\n"
    return _format(message, category, filename, lineno, line)


def silence_known_noise(resuming: bool = False) -> None:
    """Install the filters (idempotent); ``resuming`` adds the resume alarms."""
    warnings.formatwarning = _one_line
    for pattern in ALWAYS + (ON_RESUME if resuming else ()):
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
