"""robustlip-eval: the robust evaluation of a saved checkpoint, with the same code and files as training.

    robustlip-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    robustlip-eval ckpt_path=... attack=fgsm                      # any attack config
    robustlip-eval ckpt_path=... attacks=[pgd,autoattack] n_examples=1000   # each + pointwise worst case
    robustlip-eval ckpt_path=... eps_sweep=[0,0.05,0.1,0.2,0.3]   # + accuracy-vs-ε CSV and PNG
    robustlip-eval ckpt_path=... data=digits +patch.data.test_size=100

The checkpoint carries the resolved training config (``hyper_parameters.config``); the network is
rebuilt from its ``model`` node and the data, attack and Lipschitz estimator default to the ones the
training run used (``data``/``attack``/``lipschitz`` = null in ``conf/eval.yaml``), as does the
evaluation seed. So, with the defaults, ``results.json`` here repeats the training run's numbers.
The metrics loop is ``RobustEvaluation``'s, run by ``trainer.test`` on a thin LightningModule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from robustlip.cli import entry_point
from robustlip.runs.config import instantiate_attacks, instantiate_group, save_resolved_config
from robustlip.runs.errors import (
    ConfigError,
    RunInterrupted,
    check_attack_eps,
    check_non_negative,
    check_positive_int,
)

if TYPE_CHECKING:
    from torch import nn

    from robustlip.callbacks import RobustEvaluation

# torch, Lightning and the callbacks are imported inside the functions that use them, so that
# `robustlip-eval --help` and a config error answer without loading them (docs/performance.md).

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``CheckpointedNet`` lives in :mod:`robustlip.module`; it is imported on first use, not at start-up."""
    if name == "CheckpointedNet":
        from robustlip.module import CheckpointedNet

        return CheckpointedNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def net_from_checkpoint(ckpt: dict[str, Any], train_config: dict[str, Any], key: str = "ckpt_path") -> nn.Module:
    """Rebuild the network from the checkpoint's ``model`` config and load its ``net.*`` weights."""
    from hydra.utils import instantiate

    from robustlip.runs.checkpoints import CheckpointError

    if "model" not in train_config:
        raise CheckpointError(f"{key}: the checkpoint has no hyper_parameters.config.model; it was not written by robustlip-train")
    net = instantiate(train_config["model"])
    weights = {name[len("net."):]: t for name, t in ckpt["state_dict"].items() if name.startswith("net.")}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{key}: weights do not fit model._target_={train_config['model'].get('_target_')!r}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return net.eval()


def _node(cfg: DictConfig, key: str) -> Any:
    """A group chosen on the command line, unresolved (its ``${data.eps}`` must see the final data)."""
    node = cfg.get(key)
    return None if node is None else OmegaConf.to_container(node, resolve=False)


def evaluation_setup(cfg: DictConfig, train_config: dict[str, Any]) -> DictConfig:
    """data, attack, lipschitz, fidelity and seed of this evaluation: the command line's, else the checkpoint's."""
    from robustlip.runs.checkpoints import CheckpointError

    train_eval = (train_config.get("callbacks") or {}).get("robust_evaluation") or {}
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else train_config.get("data")
    if data is None:
        raise CheckpointError("ckpt_path: the checkpoint's config has no data node; choose one, e.g. data=digits")
    setup = OmegaConf.create(
        {
            "fidelity": cfg.fidelity if cfg.get("fidelity") is not None else train_config.get("fidelity", "paper"),
            "seed": cfg.seed if cfg.get("seed") is not None else train_eval.get("seed", train_config.get("seed", 0)),
            "data": data,
            # attacks=[...] replaces the single attack (the checkpoint's, or attack=...).
            "attack": None if cfg.get("attacks") else
            _node(cfg, "attack") if cfg.get("attack") is not None else train_config.get("attack"),
            "attacks": _node(cfg, "attacks") if cfg.get("attacks") else None,
            "lipschitz": _node(cfg, "lipschitz") if cfg.get("lipschitz") is not None else train_eval.get("lipschitz"),
        }
    )
    for key, patch in (cfg.get("patch") or {}).items():
        if patch:
            setup[key] = OmegaConf.merge(setup[key] or {}, patch)
    OmegaConf.resolve(setup)
    return setup


def check_subset(cfg: DictConfig, datamodule: Any) -> int | None:
    """``n_examples`` as a count no larger than the test set (checked before any attack runs)."""
    n_examples = cfg.get("n_examples")
    if n_examples is None:
        return None
    check_positive_int("n_examples", n_examples)
    datamodule.setup("test")
    size = len(datamodule.test_set)
    if n_examples > size:
        raise ConfigError(f"n_examples={n_examples} is not allowed; the test set has {size} examples "
                          f"(choose n_examples <= {size}, or null for all of them)")
    return n_examples


def build_evaluation(cfg: DictConfig, setup: DictConfig, output_dir: Path, extra: dict[str, Any],
                     n_examples: int | None = None) -> RobustEvaluation:
    """The RobustEvaluation of this command; a bad value of any of its parts is one line naming its key."""
    from robustlip.callbacks import EpsSweep, RobustEvaluation

    sweep = list(cfg.eps_sweep) if cfg.get("eps_sweep") else None
    attack = instantiate_group(setup, "attack") if setup.attack is not None else None
    if attack is not None and hasattr(attack, "eps"):
        check_attack_eps(attack.eps, setup.data.eps, bool(cfg.get("allow_eps_mismatch", False)))
    return RobustEvaluation(
        attack=attack,
        attacks=instantiate_attacks(setup),
        n_examples=n_examples,
        attack_gap_warning=check_non_negative("attack_gap_warning", cfg.get("attack_gap_warning", 3.0)),
        lipschitz=instantiate_group(setup, "lipschitz") if setup.lipschitz and setup.lipschitz.get("_target_") else None,
        evaluate_train=cfg.evaluate_train,
        results_file=output_dir / "results.json",
        seed=setup.seed,
        sanity=instantiate_group(cfg, "sanity") if cfg.get("sanity") else None,
        eps_sweep=EpsSweep(sweep, max_batches=cfg.get("eps_sweep_max_batches")) if sweep else None,
        extra_results=extra,
    )


def _record(cfg: DictConfig, setup: DictConfig, train_config: dict[str, Any] | None = None) -> DictConfig:
    """config.yaml of the evaluation: what was evaluated and how (the chosen groups resolved into ``setup``).

    The checkpoint's ``model`` and ``objective`` are recorded too, so ``robustlip-report`` names an
    evaluation's row by its method, as it names the training run's.
    """
    own = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
           for key in ("ckpt_path", "evaluate_train", "allow_eps_mismatch", "eps_sweep", "sanity", "n_examples", "attack_gap_warning", "trainer")
           if key in cfg}
    trained = {key: (train_config or {}).get(key) for key in ("model", "objective") if (train_config or {}).get(key)}
    return OmegaConf.create({**own, **trained, **OmegaConf.to_container(setup)})


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` as ``cfg`` says; returns the metrics (also in ``results.json``)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from robustlip.callbacks.resume import EXIT_CODES, SignalStop
    from robustlip.module import CheckpointedNet
    from robustlip.reporting.tables import evaluation_attack_label, print_results_table
    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint
    from robustlip.train import prepare_data

    output_dir = Path(cfg.paths.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path)
    train_config = checkpoint_config(ckpt)
    setup = evaluation_setup(cfg, train_config)
    module = CheckpointedNet(net_from_checkpoint(ckpt, train_config))
    # The splits now, so a missing dataset or a too large data.test_size fails before any file is written.
    datamodule = prepare_data(setup)
    extra = {"checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()), "evaluated": OmegaConf.to_container(setup)}
    n_examples = check_subset(cfg, datamodule)
    evaluation = build_evaluation(cfg, setup, output_dir, extra, n_examples)
    save_resolved_config(_record(cfg, setup, train_config), output_dir)
    stop = SignalStop()
    callbacks: list[pl.Callback] = [evaluation, stop]
    if cfg.trainer.get("enable_progress_bar", True):
        from pytorch_lightning.callbacks import RichProgressBar

        # Lightning's rich bar: the evaluation's own passes (n_examples, several devices) add their task to it.
        callbacks.append(RichProgressBar())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False)
    try:
        trainer.test(module, datamodule=datamodule, verbose=False)
    except SIGTERMException:
        measured = ", ".join(f"{n} {split} examples" for split, n in (evaluation.partial or {}).get("examples", {}).items())
        raise RunInterrupted(
            f"interrupted by {stop.stopped_by()} during the evaluation; what was measured ({measured or 'nothing yet'}) "
            f"is in {evaluation.partial_results_file()}; run the same command again to evaluate everything",
            exit_code=EXIT_CODES[stop.stopped_by()],
        ) from None
    if trainer.is_global_zero:
        attack = evaluation_attack_label(evaluation, setup.data.get("eps"))
        print_results_table(evaluation.metrics, title=[
            f"{_method(train_config)} · {setup.data.get('name', 'data')} · attack {attack}",
            f"checkpoint: {extra['checkpoint']}",
        ], uncertainty=evaluation.uncertainty)
        print_written(output_dir)
    return evaluation.metrics


def _method(train_config: dict[str, Any]) -> str:
    """The checkpoint's method as the tables name it (``TRADES(β=6)``), or its objective's name."""
    from hydra.utils import instantiate

    node = train_config.get("objective") or {}
    try:
        return instantiate(node).label
    except Exception:  # noqa: BLE001 - a title must not fail on another version's objective
        return str(node.get("name", "?"))


def print_written(output_dir: Path) -> None:
    """Say where the files of this command went (the folder, then the files in it)."""
    hidden = {".hydra"}
    names = sorted(p.name for p in Path(output_dir).iterdir() if p.name not in hidden and p.suffix != ".log")
    print(f"wrote {Path(output_dir).resolve()}/: {', '.join(names)}", flush=True)


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: evaluate, and return a number for sweepers (adversarial test accuracy)."""
    return evaluate(cfg).get("test/adv_acc")


main = entry_point("eval", run)


if __name__ == "__main__":
    main()
