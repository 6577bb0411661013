"""robustlip-train: one Hydra entry, kept thin — instantiate, fit, evaluate, write results (DESIGN.md).

Reliability (issue 9, docs/reliability.md): everything that can be checked is checked before the
first batch and before anything is written to the run directory (output dir writable, config values,
dataset present, checkpoint safe and compatible); config.yaml is written only after that. A known
failure is printed as one ``error: ...`` line (exit 2 for bad input, 1 for a numerical fault, 143 after
a SIGTERM checkpoint) — set ``HYDRA_FULL_ERROR=1`` for the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from robustlip.checkpointing import (
    AtomicCheckpointIO,
    check_compatible,
    last_checkpoint,
    load_checkpoint,
    resolve_ckpt_path,
)
from robustlip.config import CONFIG_PATH, instantiate_group, save_resolved_config, to_plain_dict
from robustlip.module import NonFiniteLossError, RobustClassifier
from robustlip.reliability import ReproducibleRandomness, ResumeCheckpoint, keep_csv_history
from robustlip.reporting import print_results_table
from robustlip.validation import ConfigError, check_writable_dir

log = logging.getLogger(__name__)

#: Exit codes of robustlip-train besides 0.
EXIT_BAD_INPUT, EXIT_NUMERICAL, EXIT_SIGTERM = 2, 1, 143


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


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [ReproducibleRandomness(cfg.seed), ResumeCheckpoint(cfg.paths.output_dir)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if name == "robust_evaluation" and not cfg.get("evaluate", True):
            continue
        if node is not None and node.get("_target_"):
            callbacks.append(instantiate_group(cfg, f"callbacks.{name}"))
    perf = cfg.get("perf")
    if perf is not None and perf.get("_target_"):
        callbacks.append(instantiate_group(cfg, "perf"))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None and node.get("_target_")]


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
    instantiate_group(cfg, "attack")  # checked here so a bad attack.* value is named as such
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
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
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
    wandb = sys.modules.get("wandb")
    if wandb is None:  # never imported by this process: no run to close, no settings cached
        return
    if wandb.run is not None:
        wandb.finish()
    # wandb caches its settings (WANDB_MODE, WANDB_DIR) for the life of the process; without a teardown
    # the next job of an in-process multirun would keep the first job's mode, e.g. stay "disabled".
    wandb.teardown()


def _error(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _describe_failure(cfg: DictConfig, exc: BaseException) -> tuple[str, int]:
    """The one line and the exit code for a known failure of a run."""
    if isinstance(exc, NonFiniteLossError):
        last = last_checkpoint(cfg.paths.output_dir)
        kept = f"; the last good checkpoint is kept: {last}" if last.is_file() else "; no checkpoint had been saved yet"
        return f"{exc}{kept}", EXIT_NUMERICAL
    return str(exc), EXIT_BAD_INPUT


def _multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra (a test calling run directly)
        return False


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: train, and turn known failures into one line.

    In a single run the line is printed and the process exits (no Hydra traceback); in a multirun the
    line is logged and the error re-raised, so Hydra marks this job failed and the sweep goes on.
    """
    try:
        metrics = train(cfg)
    except SIGTERMException:
        saved = last_checkpoint(cfg.paths.output_dir)
        _error(
            f"interrupted by SIGTERM; the training state was saved to {saved}. Resume with the same command plus "
            f"hydra.run.dir={cfg.paths.output_dir} ckpt_path=last (or resume=auto)"
        )
        raise SystemExit(EXIT_SIGTERM) from None
    except (ConfigError, NonFiniteLossError) as exc:
        message, code = _describe_failure(cfg, exc)
        if _multirun():
            log.error("error: %s", message)
            raise
        _error(message)
        raise SystemExit(code) from None
    # A number for Hydra sweepers that optimise (e.g. Optuna): adversarial test accuracy.
    return metrics.get("test/adv_acc")


_hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")(run)


def main(cfg: DictConfig | None = None) -> float | None:
    """Console entry ``robustlip-train``: Hydra's CLI, with errors raised before a job as one line too.

    Hydra prints its own traceback for failures outside the task (e.g. it cannot create the run
    directory). Unless the user set ``HYDRA_FULL_ERROR=1``, we ask Hydra to re-raise instead and print
    known failures as one ``error:`` line; unknown ones keep their traceback.
    """
    if cfg is not None:  # hydra.main's pass-through: main(cfg) runs the task directly
        return run(cfg)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        _hydra_main()
        return None
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except (ConfigError, NonFiniteLossError) as exc:  # re-raised by a failed multirun job
        _error(str(exc))
        sys.exit(EXIT_BAD_INPUT if isinstance(exc, ConfigError) else EXIT_NUMERICAL)
    except OSError as exc:  # Hydra could not create or write the run directory
        where = f" {exc.filename!r}" if exc.filename else ""
        _error(f"hydra.run.dir: cannot write the run directory{where} ({exc.strerror or exc}); choose a writable "
               "directory with hydra.run.dir=... or ROBUSTLIP_LOG_DIR=...")
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - everything else: Hydra's own compact message, else the traceback
        from hydra.errors import CompactHydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(exc, CompactHydraException):
            print(str(exc), file=sys.stderr)
            if isinstance(exc.__cause__, OmegaConfBaseException):
                print(str(exc.__cause__), file=sys.stderr)
        else:
            traceback.print_exc()
            print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
    return None


if __name__ == "__main__":
    main()
