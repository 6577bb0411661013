"""The best and the final model, honestly chosen: ``select_best=val``.

Which checkpoint a table reports decides its numbers by points: robust overfitting (Rice et al. 2020,
arXiv:2002.11569) puts the best epoch's adversarial accuracy well above the final one's, and a best
epoch picked by *test* accuracy reports a maximum over test evaluations, biased upwards. Yang et al.
report the final model, most later papers the best by held-out robust accuracy, so robustlip measures
both when asked: ``select_best=val`` keeps the checkpoint with the highest adversarial accuracy on the
validation split (``val/adv_acc``, the training attack, every ``val_every_n_epochs`` epochs), and after
the final model's evaluation runs the same full evaluation on the best one. results.json keeps the final
numbers where they always were and adds ``best``: the epoch, the validation score it was chosen by, the
checkpoint, the test numbers and the robust-overfitting gap (best − final adversarial test accuracy).
Off by default, which keeps Yang et al.'s protocol. ``select_best=test`` is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from robustlip.core.errors import ConfigError

log = logging.getLogger(__name__)

#: ``select_best`` values: off (the final model only, Yang et al.'s protocol) or the validation split.
CHOICES = (None, "val")
MONITOR = "val/adv_acc"


def check_select_best(cfg: DictConfig) -> str | None:
    """Validate ``select_best`` and, when it is ``val``, make the run keep the best ``val/adv_acc`` checkpoint.

    Sets what ``callbacks=adv_checkpoint`` sets (the validation attack every N epochs, N >= 1, and a
    checkpoint monitoring it on the same epochs), so the option alone is enough on any preset with a
    validation split.
    """
    choice = cfg.get("select_best")
    if choice == "test":
        raise ConfigError("select_best='test' is refused: a checkpoint chosen by test accuracy reports the best of "
                          "several looks at the test set (an optimistic number); use select_best=val with data.val_size > 0")
    if choice not in CHOICES:
        raise ConfigError(f"select_best={choice!r} is not allowed; choose one of {', '.join(map(repr, CHOICES))}")
    if choice is None:
        return None
    if not cfg.get("evaluate", True) or not (cfg.get("callbacks") or {}).get("robust_evaluation"):
        raise ConfigError("select_best=val needs the robust evaluation (evaluate=true and callbacks.robust_evaluation)")
    if not cfg.data.get("val_size"):
        raise ConfigError(f"select_best=val needs a validation split; data.val_size={cfg.data.get('val_size')!r} "
                          "(set data.val_size to a count or a fraction, e.g. data.val_size=0.1)")
    if cfg.get("attack") is None:
        raise ConfigError("select_best=val selects by adversarial validation accuracy and needs an attack (attack=null given)")
    evaluation = cfg.callbacks.robust_evaluation
    checkpoint = cfg.callbacks.get("model_checkpoint")
    if checkpoint is None:
        raise ConfigError("select_best=val keeps the best model with callbacks.model_checkpoint; it is null here")
    with open_dict(cfg):
        evaluation.val_every_n_epochs = max(1, int(evaluation.get("val_every_n_epochs") or 0))
        checkpoint.monitor = MONITOR
        checkpoint.mode = "max"
        checkpoint.save_top_k = 1
        checkpoint.filename = "best-adv-epoch{epoch:03d}"
        checkpoint.every_n_epochs = evaluation.val_every_n_epochs
    return choice


def best_checkpoint(trainer) -> tuple[Path, float] | None:
    """The path and ``val/adv_acc`` of the checkpoint the monitoring ModelCheckpoint kept; None if it kept none."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor == MONITOR and callback.best_model_path:
            score = callback.best_model_score
            return Path(callback.best_model_path), float(score) if score is not None else float("nan")
    return None


def evaluate_best(trainer, module, evaluation, measure: Callable[[], None]) -> dict[str, Any] | None:
    """Load the best checkpoint into ``module``, measure it on test like the final model, add ``best`` to results.json.

    ``measure`` is the final model's test pass (robustlip-train's ``final_evaluation``), run again on the
    best weights. Call after the final model's evaluation (results.json holds its numbers). The module keeps
    the best weights afterwards; the final ones stay in ``checkpoints/last.ckpt``.
    """
    import json

    from robustlip.core.files import write_json_atomic
    from robustlip.runs.checkpoints import load_checkpoint

    found = best_checkpoint(trainer)
    results_file = evaluation.results_file
    if found is None or results_file is None:
        log.warning("select_best=val: no best checkpoint was kept (did any validation epoch run?); results.json "
                    "has the final model only")
        return None
    path, score = found
    ckpt = load_checkpoint(path, "best checkpoint")
    module.load_state_dict(ckpt["state_dict"])
    evaluation.results_file = None  # the second test writes nothing itself: its numbers go into results.json's `best`
    try:
        measure()
    finally:
        evaluation.results_file = results_file
    if not trainer.is_global_zero:  # the test ran on every process; one writes
        return None
    final = json.loads(results_file.read_text())
    metrics = dict(evaluation.metrics)
    adv = "test/adv_acc"
    gap = metrics[adv] - final["metrics"][adv] if adv in metrics and final["metrics"].get(adv) is not None else None
    best = {
        "selected_by": MONITOR,
        "split": "val",
        # epochs trained when the best model was saved, and when training ended (both counted from 1)
        "epoch": int(ckpt["epoch"]) + 1,
        "final_epoch": int(final.get("epochs_trained", trainer.current_epoch)),
        MONITOR: score,
        "checkpoint": str(path),
        "metrics": metrics,
        "uncertainty": evaluation.uncertainty,
        "robust_overfitting_gap": gap,
    }
    write_json_atomic(results_file, {**final, "best": best})
    log.info("best model: epoch %d of %d by %s=%.2f; adversarial test accuracy %.2f (final %.2f), robust-overfitting "
             "gap %+.2f", best["epoch"], best["final_epoch"], MONITOR, score, metrics.get(adv, float("nan")),
             final["metrics"].get(adv) or float("nan"), gap if gap is not None else float("nan"))
    return best
