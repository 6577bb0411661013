"""robustlip-train: one Hydra entry, kept thin — instantiate, fit, evaluate, write results (docs/architecture.md).

Reliability (docs/reliability.md): everything that can be checked is checked before the first batch
and before anything is written to the run directory (output dir writable, config values, dataset
present, checkpoint safe and compatible); config.yaml is written only after that. A known failure is
printed as one ``error: ...`` line by the shared entry wrapper (:mod:`robustlip.cli`): exit 2 for bad
input, 1 for a numerical fault, 143 after a SIGTERM checkpoint.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

from robustlip.cli import entry_point, move_run_dir, run_dir_given, task_overrides
from robustlip.core.errors import ConfigError, RunInterrupted, check_writable_dir
from robustlip.runs.config import instantiate_attacks, instantiate_group, save_resolved_config, to_plain_dict
from robustlip.runs.loggers import build_loggers, check_loggers, finish_wandb, keep_csv_history
from robustlip.runs.quiet import silence_known_noise
from robustlip.runs.setup import build_attack, prepare_data

if TYPE_CHECKING:
    import pytorch_lightning as pl

    from robustlip.module import RobustClassifier

# torch, Lightning and the science modules are imported inside the functions that use them, so that
# `robustlip-train --help`, `--cfg job` and a misspelled option answer without loading them
# (docs/performance.md, "Start-up of the commands").

log = logging.getLogger(__name__)

#: The console command of this module (named in the resume command it prints).
COMMAND = "robustlip-train"


def build_module(cfg: DictConfig) -> RobustClassifier:
    """The LightningModule of a run: network + objective + optimizer/scheduler factories."""
    from robustlip.module import RobustClassifier

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
    from robustlip.callbacks.reproducibility import ReproducibleRandomness
    from robustlip.callbacks.resume import ResumeCheckpoint

    callbacks: list[pl.Callback] = [ReproducibleRandomness(cfg.seed), ResumeCheckpoint(cfg.paths.output_dir)]
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or not node.get("_target_"):
            continue
        if name == "robust_evaluation" and not cfg.get("evaluate", True):
            continue
        if name == "progress_bar" and not cfg.trainer.get("enable_progress_bar", True):
            continue  # trainer.enable_progress_bar=false alone turns the bar off (Lightning refuses a bar callback then)
        extra = {"attack": build_attack(cfg, bool(cfg.get("allow_eps_mismatch", False)))} if _uses_run_attack(node) else {}
        if _uses_run_attacks(node):
            extra["attacks"] = instantiate_attacks(cfg)
        callbacks.append(instantiate_group(cfg, f"callbacks.{name}", **extra))
    perf = cfg.get("perf")
    if perf is not None and perf.get("_target_"):
        callbacks.append(instantiate_group(cfg, "perf"))
    return callbacks


def check_optimizer(module: RobustClassifier) -> None:
    """Build the optimizer and the scheduler once now (and drop them), so that a bad ``optimizer.lr`` or a run
    length the schedule cannot take fails before anything is written, not when ``trainer.fit`` starts."""
    try:
        module.configure_optimizers()
    except ConfigError:
        raise
    except ValueError as exc:  # torch's own range checks, e.g. "Invalid learning rate: -1"
        raise ConfigError(f"optimizer: {exc}") from exc


def build_trainer(cfg: DictConfig, **kwargs) -> pl.Trainer:
    """The Trainer of ``cfg.trainer``; a value Lightning refuses (``trainer.max_epochs=-2``) is one ConfigError line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(cfg.trainer, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, MisconfigurationException):
            raise ConfigError(f"trainer: {exc.__cause__}") from exc
        raise


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run directory: Hydra's, or — for ``ckpt_path=last`` without ``hydra.run.dir`` — the newest interrupted
    run of the same overrides next to it, where the run then continues (its files, its log)."""
    from robustlip.runs.checkpoints import find_interrupted_run, last_checkpoint

    output_dir = check_writable_dir("paths.output_dir", cfg.paths.output_dir)
    if str(cfg.get("ckpt_path")) != "last" or last_checkpoint(output_dir).is_file() or run_dir_given():
        return output_dir
    found = find_interrupted_run(output_dir.parent, task_overrides() or [], exclude=output_dir)
    log.info("ckpt_path=last: continuing the interrupted run %s", found)
    move_run_dir(found)
    with open_dict(cfg):
        cfg.paths.output_dir = str(found)  # every ${paths.output_dir} (checkpoints, logs, results) follows
    return check_writable_dir("paths.output_dir", found)


def resume_command(output_dir: os.PathLike | str) -> str:
    """The one command that resumes this run where it stopped: the same overrides, its run dir, ``ckpt_path=last``."""
    from robustlip.runs.checkpoints import same_run_overrides

    overrides = task_overrides()
    if overrides is None:  # not started from the command line
        return f"the same command plus hydra.run.dir={output_dir} ckpt_path=last"
    return shlex.join([COMMAND, *same_run_overrides(overrides), f"hydra.run.dir={output_dir}", "ckpt_path=last"])


def precheck(cfg: DictConfig) -> None:
    """The value checks that need no torch, run before torch is imported (a second instead of several).

    The same checks run again where the values are used (the threat model, the optimizer); these only
    make the common mistakes answer fast: a non-integer seed, an unknown fidelity, an ℓ∞ radius outside the
    pixel range (named by the key that was set: ``data.eps`` when ``attack.eps`` follows it), a negative
    learning rate, or a preset's learning rate that its resolver refuses (one line, not OmegaConf's trace).
    """
    from omegaconf.errors import InterpolationResolutionError

    from robustlip.core.errors import check_integer, check_linf_eps, check_non_negative
    from robustlip.core.fidelity import fidelity_named
    from robustlip.core.norms import is_linf
    from robustlip.runs.config import name_the_source, root_cause

    check_integer("seed", cfg.get("seed"))
    fidelity_named(cfg.get("fidelity", "paper"))
    for group in ("attack", "objective"):
        node = cfg.get(group)
        if node is None or not is_linf(node.get("norm", "inf")) or node.get("eps") is None:
            continue
        try:
            check_linf_eps(f"{group}.eps", node.eps)
        except ConfigError as exc:
            raise ConfigError(name_the_source(cfg, str(exc))) from None
    try:  # a preset's lr comes from a resolver, whose ConfigError is the line to show
        lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    except InterpolationResolutionError as exc:
        cause = root_cause(exc)
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"optimizer.lr: {' '.join(str(cause).split())}") from None
    if lr is not None:
        check_non_negative("optimizer.lr", lr)


def warn_without_gpu(cfg: DictConfig) -> None:
    """Say so when GPU settings (``perf=gpu``, a mixed precision, ``trainer.accelerator=gpu``) meet a machine
    without a GPU: the run goes on, on the CPU, where they bring nothing."""
    import torch

    if torch.cuda.is_available():
        return
    asked = [f"{key}={value}" for key, value in (("perf", _perf_choice()), ("trainer.precision", cfg.trainer.get("precision")),
                                                 ("trainer.accelerator", cfg.trainer.get("accelerator")))
             if value is not None and ((key == "perf" and value == "gpu") or (key == "trainer.precision" and "mixed" in str(value))
                                       or (key == "trainer.accelerator" and str(value) in ("gpu", "cuda")))]
    if asked:
        msg = (f"{' '.join(asked)} but there is no GPU here (torch.cuda.is_available() is False): the run goes on on "
               "the CPU, where these settings bring no speed (bf16 on a CPU is usually slower); leave them out on a CPU")
        log.warning(msg)
        print(f"warning: {msg}", flush=True)


def _perf_choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get("perf")
    except ValueError:
        return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one model as ``cfg`` says and return the final metrics (also in ``results.json``)."""
    precheck(cfg)
    import pytorch_lightning as pl

    from robustlip.callbacks.resume import SignalStop
    from robustlip.callbacks.robust_evaluation import RobustEvaluation
    from robustlip.callbacks.training_health import TrainingHealth
    from robustlip.reporting.tables import evaluation_attack_label, lipschitz_note, print_results_table
    from robustlip.runs.best_model import check_select_best, evaluate_best
    from robustlip.runs.checkpoints import (
        AtomicCheckpointIO,
        check_compatible,
        check_same_data,
        checkpoint_config,
        load_checkpoint,
        resolve_ckpt_path,
    )
    from robustlip.runs.labels import with_unlabeled
    from robustlip.runs.self_training import prepare_self_training

    check_loggers(cfg)
    warn_without_gpu(cfg)
    select_best = check_select_best(cfg)
    output_dir = resolve_run_dir(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.get("resume"), output_dir)
    ckpt = None
    if ckpt_path is not None:  # another dataset's checkpoint is refused before the data is even loaded
        ckpt = load_checkpoint(ckpt_path)
        check_same_data(checkpoint_config(ckpt).get("data"), OmegaConf.to_container(cfg.data, resolve=True),
                        opt_in=None, verb=f"{ckpt_path} resumes a training run: resume it on")
    silence_known_noise(resuming=ckpt_path is not None)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = prepare_data(cfg)
    module = build_module(cfg)
    check_optimizer(module)
    if ckpt_path is not None:
        check_compatible(ckpt, cfg, module, path=ckpt_path)
    # Self-training with unlabeled data: teacher checked, pool pseudo-labeled (cached in the run dir), batches mixed.
    self_training = cfg.get("self_training") or {}
    prepare_self_training(datamodule, output_dir, self_training.get("teacher_ckpt"), self_training.get("unsup_fraction", 0.5))
    callbacks = build_callbacks(cfg)
    stop = SignalStop()
    loggers = build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks=[*callbacks, stop], logger=loggers, plugins=[AtomicCheckpointIO()])
    # Only now, with every check passed, does this run write into the run directory.
    save_resolved_config(cfg, output_dir)
    kept = keep_csv_history(loggers)
    if ckpt is not None:  # one true line in place of Lightning's three resume alarms (robustlip.runs.quiet)
        earlier = f"; the metrics logged before are kept in {', '.join(str(k) for k in kept)}" if kept else ""
        msg = (f"resuming from {ckpt_path} (epoch {ckpt.get('epoch', '?')}, global step {ckpt.get('global_step', '?')}): "
               "weights, optimizer, schedule, data order and random states are restored, so the run continues exactly "
               f"as if it had not stopped{earlier}")
        log.info(msg)
    evaluation = next((c for c in callbacks if isinstance(c, RobustEvaluation)), None)
    health = next((c for c in callbacks if isinstance(c, TrainingHealth)), None)
    try:
        fit(trainer, module, datamodule, ckpt_path, output_dir, stop)
        metrics: dict[str, float] = {}
        uncertainty, best = None, None
        warnings = list(health.warnings) if health is not None else []
        if cfg.get("evaluate", True):
            if evaluation is not None and health is not None:  # into results.json, beside the test's own check
                evaluation.warnings.extend(health.warnings)
                evaluation.advice = health.advice()
            # The paper evaluates the final-epoch model (docs/authors-code.md §4); select_best=val also measures
            # the best-validation-epoch model, into results.json's `best` (robustlip.runs.best_model).
            final_evaluation(trainer, module, datamodule, evaluation, output_dir, stop)
            metrics = dict(evaluation.metrics) if evaluation is not None else {}
            warnings = list(evaluation.warnings) if evaluation is not None else warnings
            uncertainty = dict(evaluation.uncertainty) if evaluation is not None else None
            if select_best and evaluation is not None:
                best = evaluate_best(trainer, module, evaluation, measure=lambda: final_evaluation(
                    trainer, module, datamodule, evaluation, output_dir, stop))
        if trainer.is_global_zero and metrics:
            print_results_table(metrics, title=[
                f"{with_unlabeled(module.objective.label, self_training.get('teacher_ckpt'))} · {cfg.data.name} · attack {evaluation_attack_label(evaluation.attacks or evaluation.attack if evaluation else None, cfg.data.eps)}",
                f"run: {output_dir.resolve()}",
                *filter(None, [lipschitz_note(getattr(evaluation, "lipschitz", None))]),
            ], warnings=warnings, uncertainty=uncertainty)
            if best is not None and best["robust_overfitting_gap"] is not None:
                print(f"best model (epoch {best['epoch']} of {best['final_epoch']}, by val/adv_acc): adv test acc "
                      f"{best['metrics'].get('test/adv_acc', float('nan')):.2f} %, robust-overfitting gap "
                      f"(best − final) {best['robust_overfitting_gap']:+.2f} points; results.json's `best`")
        return metrics
    finally:
        finish_wandb()


def fit(trainer: pl.Trainer, module: RobustClassifier, datamodule: pl.LightningDataModule, ckpt_path: str | None,
        output_dir: os.PathLike | str, stop=None) -> None:
    """``trainer.fit``, with its known failures told in one line each: where the state is, how to go on."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from robustlip.callbacks.resume import ResumeCheckpoint
    from robustlip.module import NonFiniteLossError
    from robustlip.runs.checkpoints import last_checkpoint

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        name, code = _stopped_by(stop)
        saver = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
        where = f" at {saver.position}" if saver is not None and saver.position else ""
        raise RunInterrupted(
            f"interrupted by {name}{where}; the training state was saved to {last_checkpoint(output_dir)}. "
            f"Resume with: {resume_command(output_dir)}", exit_code=code,
        ) from None
    except NonFiniteLossError as exc:
        last = last_checkpoint(output_dir)
        kept = f"; the last good checkpoint is kept: {last}" if last.is_file() else "; no checkpoint had been saved yet"
        raise type(exc)(f"{exc}{kept}") from exc


def _stopped_by(stop) -> tuple[str, int]:
    """The signal that stopped the Trainer and the exit status it gives (SIGTERM, Lightning's own, without a SignalStop)."""
    from robustlip.core.signals import EXIT_CODES

    return (stop.stopped_by(), stop.exit_code) if stop is not None else ("SIGTERM", EXIT_CODES["SIGTERM"])


def final_evaluation(trainer: pl.Trainer, module: RobustClassifier, datamodule: pl.LightningDataModule,
                     evaluation, output_dir: os.PathLike | str, stop=None) -> None:
    """``trainer.test``; a SIGTERM or Ctrl-C stops it at the next batch, keeps what was measured and says how to finish."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from robustlip.runs.checkpoints import last_checkpoint

    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    except SIGTERMException:
        name, code = _stopped_by(stop)
        last = last_checkpoint(output_dir).resolve()
        partial = evaluation.partial_results_file() if evaluation is not None else None
        measured = ", ".join(f"{n} {split} examples" for split, n in (evaluation.partial or {}).get("examples", {}).items()) \
            if evaluation is not None else ""
        kept = f"; what was measured ({measured or 'nothing yet'}) is in {partial}" if partial is not None else ""
        raise RunInterrupted(
            f"interrupted by {name} during the final evaluation; training had finished and the final model is {last}"
            f"{kept}. Finish the evaluation with: {shlex.join(['robustlip-eval', f'ckpt_path={last}', 'sanity=null'])}",
            exit_code=code,
        ) from None


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: train, and return a number for sweepers that optimise (adversarial test accuracy)."""
    return train(cfg).get("test/adv_acc")


main = entry_point("train", run)


if __name__ == "__main__":
    main()
