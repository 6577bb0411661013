"""robustlip-train: one Hydra entry, kept thin — instantiate, fit, evaluate, write results (DESIGN.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from robustlip.config import CONFIG_PATH, save_resolved_config, to_plain_dict
from robustlip.module import RobustClassifier
from robustlip.reporting import print_results_table

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> RobustClassifier:
    """The LightningModule of a run: network + objective + optimizer/scheduler factories."""
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("_target_") else None
    return RobustClassifier(
        net=instantiate(cfg.model),
        objective=instantiate(cfg.objective),
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        config=to_plain_dict(cfg),
    )


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if name == "robust_evaluation" and not cfg.get("evaluate", True):
            continue
        if node is not None and node.get("_target_"):
            callbacks.append(instantiate(node))
    perf = cfg.get("perf")
    if perf is not None and perf.get("_target_"):
        callbacks.append(instantiate(perf))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None and node.get("_target_")]


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one model as ``cfg`` says and return the final metrics (also in ``results.json``)."""
    output_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    save_resolved_config(cfg, output_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics: dict[str, float] = {}
        if cfg.get("evaluate", True):
            # The paper evaluates the final-epoch model (SPEC §4): no checkpoint selection here.
            trainer.test(module, datamodule=datamodule, verbose=False)
            evaluation = next((c for c in callbacks if hasattr(c, "metrics")), None)
            metrics = dict(evaluation.metrics) if evaluation is not None else {}
        if trainer.is_global_zero and metrics:
            print_results_table(metrics, title=f"{cfg.data.name} · {cfg.objective.name} · {output_dir}")
        return metrics
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    """Close the wandb run of this job, or the next job of a multirun logs into it (DESIGN.md traps)."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # A number for Hydra sweepers that optimise (e.g. Optuna): adversarial test accuracy.
    return metrics.get("test/adv_acc")


if __name__ == "__main__":
    main()
