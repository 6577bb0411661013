"""wandb as a view on top of the files (docs/architecture.md, "Files first"): what a dashboard needs to compare methods.

``WandbResults`` is a Lightning callback that, at the end of testing, puts the paper's final metrics
(and each attack's ``test/adv_acc/<name>`` when several ran) into the run summary, each with its
number of examples and its Wilson 95% interval (``<key>_n``, ``<key>_ci95_low``, ``<key>_ci95_high``;
a Lipschitz estimate its standard error, ``<key>_se``), logs them as a one-row ``wandb.Table`` (key ``results``; a workspace panel
concatenates the rows of all runs, one table per sweep), records the paper's row label (``method``,
e.g. ``TRADES(β=6)``) and ``dropout`` in the run config, and adds the job's Hydra overrides as tags.
The run *group* is fixed when the run starts, so sweeps set it on the command line
(``logger.wandb.group=<sweep name>``, as the scripts in multirun_sweeps/ do).

Without a ``WandbLogger`` it does nothing, so the default callbacks (conf/callbacks/default.yaml) include it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf

from robustlip.callbacks.robust_evaluation import RobustEvaluation
from robustlip.core.results import RESULT_KEYS
from robustlip.objectives.base import Objective
from robustlip.reporting.tables import dropout_label
from robustlip.runs.config import redact
from robustlip.runs.labels import with_unlabeled

log = logging.getLogger(__name__)

#: wandb rejects tags longer than 64 characters.
_MAX_TAG = 64


def hydra_overrides() -> list[str]:
    """The ``key=value`` overrides of the current Hydra job (the swept values in a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return []
        # Unresolved (iterating the ListConfig would resolve `${oc.env:...}`), and with secrets redacted.
        task = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    except Exception:  # noqa: BLE001 - no Hydra context (tests, notebooks): no tags
        return []
    return [_redact_override(str(o)) for o in task]


def _redact_override(override: str) -> str:
    """``key=value`` redacted by the same rules as a config entry (:func:`robustlip.runs.config.redact`)."""
    key, sep, value = override.partition("=")
    return f"{key}={redact({key: value})[key]}" if sep else redact(override)


def override_tags(overrides: list[str]) -> list[str]:
    """Overrides usable as tags: no paths or long values (wandb limits tags to 64 characters)."""
    tags = []
    for item in overrides:
        text = item.lstrip("+~")
        if "/" in text.split("=", 1)[-1] or len(text) > _MAX_TAG:
            continue
        tags.append(text)
    return tags


class WandbResults(pl.Callback):
    """Final metrics -> wandb run summary + ``results`` table + method/dropout config + override tags."""

    def __init__(self, table_key: str = "results", tag_overrides: bool = True) -> None:
        self.table_key = table_key
        self.tag_overrides = tag_overrides

    @staticmethod
    def _evaluation(trainer: pl.Trainer) -> RobustEvaluation | None:
        return next((c for c in trainer.callbacks if isinstance(c, RobustEvaluation)), None)

    @classmethod
    def _final_metrics(cls, trainer: pl.Trainer) -> dict[str, float]:
        evaluation = cls._evaluation(trainer)
        if evaluation is None:
            return {}
        keys = [*RESULT_KEYS, *sorted(k for k in evaluation.metrics if k.startswith(("test/adv_acc/", "train/adv_acc/")))]
        return {k: float(evaluation.metrics[k]) for k in keys if k in evaluation.metrics}

    @classmethod
    def _uncertainty(cls, trainer: pl.Trainer, keys: list[str]) -> dict[str, float]:
        """``<key>_n``, ``<key>_ci95_low``/``_ci95_high`` (accuracies) or ``<key>_se`` (means), flat for the summary."""
        evaluation = cls._evaluation(trainer)
        out: dict[str, float] = {}
        for key in keys:
            for field, value in ((evaluation.uncertainty.get(key) or {}) if evaluation else {}).items():
                if field in ("n", "ci95_low", "ci95_high", "se") and value is not None:
                    out[f"{key}_{field}"] = value
        return out

    @staticmethod
    def _row_label(pl_module: pl.LightningModule) -> tuple[str, str]:
        """The run's table row: its method and its model's dropout (as robustlip-report names them)."""
        objective = getattr(pl_module, "objective", None)
        config = pl_module.hparams.get("config") if hasattr(pl_module, "hparams") else None
        model = config.get("model") if isinstance(config, dict) else None
        dropout = dropout_label(model.get("dropout")) if isinstance(model, dict) else "?"
        teacher = (config.get("self_training") or {}).get("teacher_ckpt") if isinstance(config, dict) else None
        return (with_unlabeled(objective.label, teacher) if isinstance(objective, Objective) else "?"), dropout

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from pytorch_lightning.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        import wandb

        metrics = self._final_metrics(trainer)
        uncertainty = self._uncertainty(trainer, list(metrics))
        method, dropout = self._row_label(pl_module)
        overrides = hydra_overrides()
        for logger in loggers:
            run = logger.experiment
            run.config.update({"method": method, "dropout": dropout, "overrides": overrides}, allow_val_change=True)
            run.summary.update({**metrics, **uncertainty, "method": method, "dropout": dropout})
            keys = [*metrics, *uncertainty]
            columns = ["method", "dropout", *keys, "overrides"]
            row: list[Any] = [method, dropout, *[metrics.get(k, uncertainty.get(k)) for k in keys], " ".join(overrides)]
            run.log({self.table_key: wandb.Table(columns=columns, data=[row])})
            if self.tag_overrides:
                run.tags = tuple(dict.fromkeys([*(run.tags or ()), *override_tags(overrides), method]))
        log.info("wandb: final metrics in the run summary and the %r table", self.table_key)
