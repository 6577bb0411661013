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
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar
from torch import Tensor, nn

from robustlip.callbacks import EpsSweep, RobustEvaluation
from robustlip.cli import entry_point
from robustlip.reporting.tables import print_results_table
from robustlip.runs.checkpoints import CheckpointError, checkpoint_config, load_checkpoint
from robustlip.runs.config import instantiate_attacks, instantiate_group, save_resolved_config
from robustlip.runs.errors import ConfigError, check_non_negative, check_positive_int

log = logging.getLogger(__name__)


class CheckpointedNet(pl.LightningModule):
    """Just the trained network: ``test_step`` hands its clean logits to RobustEvaluation."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return {"logits": self.net(batch[0])}


def net_from_checkpoint(ckpt: dict[str, Any], train_config: dict[str, Any], key: str = "ckpt_path") -> nn.Module:
    """Rebuild the network from the checkpoint's ``model`` config and load its ``net.*`` weights."""
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
    sweep = list(cfg.eps_sweep) if cfg.get("eps_sweep") else None
    return RobustEvaluation(
        attack=instantiate_group(setup, "attack") if setup.attack is not None else None,
        attacks=instantiate_attacks(setup),
        n_examples=n_examples,
        attack_gap_warning=check_non_negative("attack_gap_warning", cfg.get("attack_gap_warning", 3.0)),
        lipschitz=instantiate(setup.lipschitz) if setup.lipschitz and setup.lipschitz.get("_target_") else None,
        evaluate_train=cfg.evaluate_train,
        results_file=output_dir / "results.json",
        seed=setup.seed,
        sanity=instantiate(cfg.sanity) if cfg.get("sanity") else None,
        eps_sweep=EpsSweep(sweep, max_batches=cfg.get("eps_sweep_max_batches")) if sweep else None,
        extra_results=extra,
    )


def _record(cfg: DictConfig, setup: DictConfig, train_config: dict[str, Any] | None = None) -> DictConfig:
    """config.yaml of the evaluation: what was evaluated and how (the chosen groups resolved into ``setup``).

    The checkpoint's ``model`` and ``objective`` are recorded too, so ``robustlip-report`` names an
    evaluation's row by its method, as it names the training run's.
    """
    own = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
           for key in ("ckpt_path", "evaluate_train", "eps_sweep", "sanity", "n_examples", "attack_gap_warning", "trainer")
           if key in cfg}
    trained = {key: (train_config or {}).get(key) for key in ("model", "objective") if (train_config or {}).get(key)}
    return OmegaConf.create({**own, **trained, **OmegaConf.to_container(setup)})


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` as ``cfg`` says; returns the metrics (also in ``results.json``)."""
    output_dir = Path(cfg.paths.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path)
    train_config = checkpoint_config(ckpt)
    setup = evaluation_setup(cfg, train_config)
    module = CheckpointedNet(net_from_checkpoint(ckpt, train_config))
    datamodule = instantiate(setup.data)
    n_examples = check_subset(cfg, datamodule)
    extra = {"checkpoint": str(Path(cfg.ckpt_path).expanduser().resolve()), "evaluated": OmegaConf.to_container(setup)}
    evaluation = build_evaluation(cfg, setup, output_dir, extra, n_examples)
    save_resolved_config(_record(cfg, setup, train_config), output_dir)
    callbacks: list[pl.Callback] = [evaluation]
    if cfg.trainer.get("enable_progress_bar", True):
        # Lightning's rich bar: the evaluation's own passes (n_examples, several devices) add their task to it.
        callbacks.append(RichProgressBar())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.is_global_zero:
        print_results_table(evaluation.metrics, title=f"{setup.data.get('name', 'data')} · {cfg.ckpt_path}",
                            uncertainty=evaluation.uncertainty)
    return evaluation.metrics


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: evaluate, and return a number for sweepers (adversarial test accuracy)."""
    return evaluate(cfg).get("test/adv_acc")


main = entry_point("eval", run)


if __name__ == "__main__":
    main()
