"""robustlip-train: one Hydra entry, kept thin — instantiate, fit, evaluate, write results (DESIGN.md).

Reliability (docs/reliability.md): everything that can be checked is checked before the first batch
and before anything is written to the run directory (output dir writable, config values, dataset
present, checkpoint safe and compatible); config.yaml is written only after that. A known failure is
printed as one ``error: ...`` line by the shared entry wrapper (:mod:`robustlip.cli`): exit 2 for bad
input, 1 for a numerical fault, 143 after a SIGTERM checkpoint.
"""

from __future__ import annotations

import logging
import os

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from robustlip.callbacks.reproducibility import ReproducibleRandomness
from robustlip.callbacks.resume import ResumeCheckpoint
from robustlip.callbacks.robust_evaluation import RobustEvaluation
from robustlip.cli import entry_point
from robustlip.module import NonFiniteLossError, RobustClassifier
from robustlip.reporting.tables import print_results_table
from robustlip.runs.checkpoints import (
    AtomicCheckpointIO,
    check_compatible,
    last_checkpoint,
    load_checkpoint,
    resolve_ckpt_path,
)
from robustlip.runs.config import instantiate_attacks, instantiate_group, save_resolved_config, to_plain_dict
from robustlip.runs.errors import ConfigError, RunInterrupted, check_writable_dir
from robustlip.runs.loggers import build_loggers, finish_wandb, keep_csv_history

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> RobustClassifier:
    """The LightningModule of a run: network + objective + optimizer/scheduler factories."""
    scheduler = (
        instantiate_group(cfg, "scheduler") if cfg.get("scheduler") and cfg.scheduler.get("_target_") else None
    )
    return RobustClassifier(
        net=instantiate_group(cfg, "model"),
        objective=instantiate_group(cfg, "objective"),
        optimizer=instantiate_group(cfg, "optimizer"),
        scheduler=scheduler,
        config=to_plain_dict(cfg),
    )


def _uses_run_attack(node: DictConfig) -> bool:
    """Whether a callback's ``attack`` is the run's own (``${attack}``), which is then built once, as ``attack``."""
    return "attack" in node and OmegaConf.to_container(node, resolve=False)["attack"] == "${attack}"


def _uses_run_attacks(node: DictConfig) -> bool:
    """Whether a callback's ``attacks`` are the run's ``attacks=[...]``, then built as ``attacks.<name>``."""
    return "attacks" in node and OmegaConf.to_container(node, resolve=False)["attacks"] == "${oc.select:attacks,null}"


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Every callback of a run: seeded randomness and resumable checkpoints first, then ``cfg.callbacks`` and ``perf``.

    The evaluation attack is built from ``cfg.attack`` (so a bad ``attack.*`` value is named as such),
    and only when the robust evaluation runs.
    """
    callbacks: list[pl.Callback] = [ReproducibleRandomness(cfg.seed), ResumeCheckpoint(cfg.paths.output_dir)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or not node.get("_target_"):
            continue
        if name == "robust_evaluation" and not cfg.get("evaluate", True):
            continue
        extra = {"attack": instantiate_group(cfg, "attack")} if _uses_run_attack(node) else {}
        if _uses_run_attacks(node):
            extra["attacks"] = instantiate_attacks(cfg)
        callbacks.append(instantiate_group(cfg, f"callbacks.{name}", **extra))
    perf = cfg.get("perf")
    if perf is not None and perf.get("_target_"):
        callbacks.append(instantiate_group(cfg, "perf"))
    return callbacks


def prepare_data(cfg: DictConfig) -> pl.LightningDataModule:
    """Build the DataModule and load its splits now, so a missing dataset fails before anything is written."""
    datamodule = instantiate_group(cfg, "data")
    try:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            datamodule.prepare_data()
        datamodule.setup("fit")
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"data.data_dir={str(cfg.data.get('data_dir'))!r}: {exc}") from exc
    return datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one model as ``cfg`` says and return the final metrics (also in ``results.json``)."""
    output_dir = check_writable_dir("paths.output_dir", cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume"), output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = prepare_data(cfg)
    module = build_module(cfg)
    if ckpt_path is not None:
        check_compatible(load_checkpoint(ckpt_path), cfg, module, path=ckpt_path)
        log.info("resuming from %s", ckpt_path)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    # Only now, with every check passed, does this run write into the run directory.
    save_resolved_config(cfg, output_dir)
    keep_csv_history(loggers)
    try:
        fit(trainer, module, datamodule, ckpt_path, output_dir)
        metrics: dict[str, float] = {}
        if cfg.get("evaluate", True):
            # The paper evaluates the final-epoch model (docs/authors-code.md §4): no checkpoint selection here.
            trainer.test(module, datamodule=datamodule, verbose=False)
            evaluation = next((c for c in callbacks if isinstance(c, RobustEvaluation)), None)
            metrics = dict(evaluation.metrics) if evaluation is not None else {}
        if trainer.is_global_zero and metrics:
            print_results_table(metrics, title=f"{cfg.data.name} · {cfg.objective.name} · {output_dir}",
                                uncertainty=evaluation.uncertainty if evaluation is not None else None)
        return metrics
    finally:
        finish_wandb()


def fit(trainer: pl.Trainer, module: RobustClassifier, datamodule: pl.LightningDataModule, ckpt_path: str | None,
        output_dir: os.PathLike | str) -> None:
    """``trainer.fit``, with its two known failures told in one line each: where the state is, how to go on."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        raise RunInterrupted(
            f"interrupted by SIGTERM; the training state was saved to {last_checkpoint(output_dir)}. Resume with the "
            f"same command plus hydra.run.dir={output_dir} ckpt_path=last (or resume=auto)"
        ) from None
    except NonFiniteLossError as exc:
        last = last_checkpoint(output_dir)
        kept = f"; the last good checkpoint is kept: {last}" if last.is_file() else "; no checkpoint had been saved yet"
        raise type(exc)(f"{exc}{kept}") from exc


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: train, and return a number for sweepers that optimise (adversarial test accuracy)."""
    return train(cfg).get("test/adv_acc")


main = entry_point("train", run)


if __name__ == "__main__":
    main()
