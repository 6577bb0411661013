"""robustlip-eval: the robust evaluation of any model, with the same code and files as training.

    robustlip-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    robustlip-eval ckpt_path=... attack=fgsm                      # any attack config
    robustlip-eval ckpt_path=... attacks=[pgd,autoattack] n_examples=1000   # each + pointwise worst case
    robustlip-eval ckpt_path=... eps_sweep=[0,0.05,0.1,0.2,0.3]   # + accuracy-vs-ε CSV and PNG
    robustlip-eval source=state_dict source.arch._target_=my_package.Net source.weights=net.pt data=cifar10
    robustlip-eval source=robustbench source.name=Carmon2019Unlabeled data=cifar10 attack=autoattack subset=first

The model comes from ``source`` (``conf/source/``: a robustlip checkpoint by default, a state dict or
safetensors file with its architecture, TorchScript, torchvision or timm by name, RobustBench's zoo;
``runs/model_sources.py``). A robustlip checkpoint carries its resolved training config, so the data,
the attack, the Lipschitz estimator and the seed default to the training run's (``data``/``attack``/
``lipschitz`` = null in ``conf/eval.yaml``) and ``results.json`` repeats the training run's numbers;
another model needs ``data=`` and is attacked with PGD-10 at ``data.eps`` unless told otherwise.

The measuring is :func:`robustlip.evaluation.evaluate`, the library function a notebook calls too;
this command adds the config, the checks before any work, the files and the resume: a stopped or
killed evaluation continues where it stopped when the same command is run again.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from robustlip.cli import entry_point, move_run_dir, run_dir_given, task_overrides
from robustlip.core.errors import (
    ConfigError,
    RunInterrupted,
    check_choice,
    check_integer,
    check_non_negative,
)
from robustlip.runs.config import config_dir, instantiate_attacks, instantiate_group, save_resolved_config
from robustlip.runs.setup import build_attack, prepare_data

if TYPE_CHECKING:
    from robustlip.evaluation import EvalResult, Evaluator
    from robustlip.runs.model_sources import LoadedModel

# torch, the evaluator and the model sources are imported inside the functions that use them, so that
# `robustlip-eval --help` and a config error answer without loading them (docs/performance.md).

log = logging.getLogger(__name__)

#: The folder of a run directory where a stopped evaluation keeps what it measured.
STATE_DIR = "evaluation_state"
#: Values of the ``resume`` key: continue a stopped evaluation of the same command, or always start afresh.
RESUME_MODES = ("auto", "never")
#: Overrides that do not make an evaluation another evaluation.
NOT_IDENTITY = ("resume", "progress", "hydra.run.dir")


def _node(cfg: DictConfig, key: str) -> Any:
    """A group chosen on the command line, unresolved (its ``${data.eps}`` must see the final data)."""
    node = cfg.get(key)
    return None if node is None else OmegaConf.to_container(node, resolve=False)


def _packaged(group: str, option: str) -> dict[str, Any]:
    """A config file of the package's tree, unresolved (robustlip's defaults for a model without a training config)."""
    return OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"), resolve=False)


def evaluation_setup(cfg: DictConfig, loaded: LoadedModel) -> DictConfig:
    """data, attack, lipschitz, fidelity and seed of this evaluation: the command line's, else the checkpoint's.

    A model without a training config (any source but ``checkpoint``) needs ``data=``; its attack is
    PGD-10 (``conf/attack/pgd.yaml``) and its estimator ``conf/lipschitz/local.yaml`` unless chosen.
    """
    from robustlip.runs.checkpoints import CheckpointError

    train_config = loaded.train_config
    own = bool(train_config)
    train_eval = (train_config.get("callbacks") or {}).get("robust_evaluation") or {}
    if cfg.get("data") is not None:
        data = OmegaConf.to_container(cfg.data, resolve=True)
    elif own and train_config.get("data") is not None:
        data = train_config["data"]
    elif own:
        raise CheckpointError("ckpt_path: the checkpoint's config has no data node; choose one, e.g. data=digits")
    else:
        made_for = (loaded.data or {}).get("name")
        raise ConfigError(f"data is required with source={loaded.description['source']}: choose the data the model was "
                          f"made for, e.g. data={made_for or 'cifar10'}")
    if cfg.get("attacks"):
        attack = None  # attacks=[...] replaces the single attack (the checkpoint's, or attack=...)
    elif cfg.get("attack") is not None:
        attack = _node(cfg, "attack")
    else:
        attack = train_config.get("attack") if own else _packaged("attack", "pgd")
    if cfg.get("lipschitz") is not None:
        lipschitz = _node(cfg, "lipschitz")
    else:
        lipschitz = train_eval.get("lipschitz") if own else _packaged("lipschitz", "local")
    setup = OmegaConf.create(
        {
            "fidelity": cfg.fidelity if cfg.get("fidelity") is not None else train_config.get("fidelity", "paper"),
            "seed": cfg.seed if cfg.get("seed") is not None else train_eval.get("seed", train_config.get("seed", 0)),
            "data": data,
            "attack": attack,
            "attacks": _node(cfg, "attacks") if cfg.get("attacks") else None,
            "lipschitz": lipschitz,
        }
    )
    for key, patch in (cfg.get("patch") or {}).items():
        if patch:
            setup[key] = OmegaConf.merge(setup[key] or {}, patch)
    OmegaConf.resolve(setup)
    return setup


def check_outputs(loaded: LoadedModel, datamodule: Any, data: DictConfig, device: Any) -> None:
    """One forward pass on two test images: the model must take them and return ``[N, num_classes]`` logits."""
    import torch

    x, _ = next(iter(datamodule.test_dataloader()))
    x = x[:2].to(device)
    try:
        with torch.no_grad():
            logits = loaded.net.to(device).eval()(x)
    except RuntimeError as exc:
        raise ConfigError(
            f"data={data.get('name')}: the model does not take its inputs of shape {list(x.shape[1:])} "
            f"({' '.join(str(exc).split())[:160]}); evaluate it on the data it was made for"
        ) from exc
    classes = data.get("num_classes")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or (classes is not None and logits.shape[1] != classes):
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"data={data.get('name')}: the model returns {shape} for 2 images, not [2, {classes}] "
                          f"logits for its {classes} classes; evaluate it on the data it was made for "
                          "(or wrap it to return logits)")


def _record(cfg: DictConfig, setup: DictConfig, loaded: LoadedModel) -> DictConfig:
    """config.yaml of the evaluation: what was evaluated and how (the chosen groups resolved into ``setup``).

    A checkpoint's ``model`` and ``objective`` are recorded too, so ``robustlip-report`` names an
    evaluation's row by its method, as it names the training run's; any other model by its label.
    """
    own = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
           for key in ("ckpt_path", "evaluate_train", "allow_eps_mismatch", "allow_data_mismatch", "eps_sweep", "sanity",
                       "n_examples", "subset", "train_examples", "attack_gap_warning", "device", "precision")
           if key in cfg}
    trained = {key: loaded.train_config.get(key) for key in ("model", "objective", "self_training")
               if loaded.train_config.get(key)}
    if "model" not in trained and loaded.architecture:
        trained["model"] = {"_target_": loaded.architecture}  # robustlip-report's tables are per dataset and network
    evaluated = {"evaluated_model": {"label": loaded.label, **loaded.description}}
    return OmegaConf.create({**own, **trained, **evaluated, **OmegaConf.to_container(setup)})


def build_attacks(cfg: DictConfig, setup: DictConfig) -> Any:
    """The evaluation's attack (or attacks by name); an ε other than ``data.eps`` only with ``allow_eps_mismatch``."""
    if setup.attacks:
        return instantiate_attacks(setup)
    if setup.attack is None:
        return None
    # Without data=..., the checkpoint's data is used: its ε moves with +patch.data.eps.
    return build_attack(setup, bool(cfg.get("allow_eps_mismatch", False)),
                        data_key="data.eps" if cfg.get("data") is not None else "+patch.data.eps")


def build_probes(cfg: DictConfig) -> list[Any]:
    from robustlip.evaluation import EpsSweep

    sweep = list(cfg.eps_sweep) if cfg.get("eps_sweep") else None
    return [
        *([instantiate_group(cfg, "sanity")] if cfg.get("sanity") else []),
        *([EpsSweep(sweep, max_batches=cfg.get("eps_sweep_max_batches"))] if sweep else []),
    ]


def resume_dir(cfg: DictConfig, output_dir: Path) -> Path:
    """Where this evaluation keeps what it measured: its run dir's, or, rerun with the same command, the stopped one's.

    With ``resume=auto`` and Hydra's fresh run dir, the newest run dir next to it that holds a stopped
    evaluation (a state, no results.json) and was started with the same overrides (but ``resume``) is
    continued in place: its files, its log. The state itself is only reused for the same weights, data
    and settings (robustlip.evaluation.store).
    """
    mode = check_choice("resume", cfg.get("resume", "auto"), RESUME_MODES)
    if mode == "auto" and not run_dir_given() and (overrides := task_overrides()) is not None:
        wanted = _identity(overrides)
        stopped = sorted((d for d in output_dir.parent.iterdir() if d.is_dir() and d != output_dir
                          and any((d / STATE_DIR).glob("state-*.pt")) and not (d / "results.json").exists()),
                         key=lambda d: d.stat().st_mtime, reverse=True) if output_dir.parent.is_dir() else []
        for candidate in stopped:
            try:
                theirs = [str(o) for o in OmegaConf.load(candidate / ".hydra" / "overrides.yaml")]
            except Exception as exc:  # noqa: BLE001 - a foreign folder is simply not a candidate
                log.debug("not resuming %s: %s", candidate, exc)
                continue
            if _identity(theirs) == wanted:
                log.info("resume=auto: continuing the stopped evaluation in %s", candidate)
                move_run_dir(candidate)
                with open_dict(cfg):
                    cfg.paths.output_dir = str(candidate)
                return candidate / STATE_DIR
    state = output_dir / STATE_DIR
    if mode == "never" and state.exists():
        import shutil

        shutil.rmtree(state)
    return state


def _identity(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_IDENTITY]


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate the model of ``cfg.source`` as ``cfg`` says; returns the metrics (also in ``results.json``)."""
    from robustlip.core.signals import stop_requests
    from robustlip.evaluation import EvaluationStopped, Evaluator
    from robustlip.evaluation.evaluator import resolve_device
    from robustlip.runs.checkpoints import check_same_data

    if cfg.get("seed") is not None:
        check_integer("seed", cfg.seed)
    kind = str(cfg.source.get("_target_", "")).rsplit(".", 1)[-1]
    if kind != "RobustlipCheckpoint" and cfg.get("data") is None:
        choice = _choice("source") or kind
        raise ConfigError(f"data is required with source={choice}: choose the data the model was made for, "
                          "e.g. data=cifar10 (only a robustlip checkpoint knows its own)")
    loaded = instantiate_group(cfg, "source").load()
    setup = evaluation_setup(cfg, loaded)
    # The model's own data unless allow_data_mismatch=true (a transfer evaluation, named in the title).
    transfer = check_same_data(loaded.data, setup.data, bool(cfg.get("allow_data_mismatch", False)))
    # The splits now, so a missing dataset or a too large data.test_size fails before any file is written.
    datamodule = prepare_data(setup)
    device = resolve_device(cfg.get("device", "auto"), loaded.net)
    check_outputs(loaded, datamodule, setup.data, device)
    evaluator = Evaluator(
        build_attacks(cfg, setup),
        lipschitz=instantiate_group(setup, "lipschitz") if setup.lipschitz and setup.lipschitz.get("_target_") else None,
        probes=build_probes(cfg),
        seed=setup.seed,
        attack_gap_warning=check_non_negative("attack_gap_warning", cfg.get("attack_gap_warning", 3.0)),
    )
    plan = evaluator.plan(datamodule, n_examples=cfg.get("n_examples"), subset=cfg.get("subset", "seeded"),
                          train=bool(cfg.evaluate_train), train_examples=cfg.get("train_examples", "auto"))
    state = resume_dir(cfg, Path(cfg.paths.output_dir))
    output_dir = Path(cfg.paths.output_dir)
    # Only now, with every check passed, does this command write into its run directory.
    save_resolved_config(_record(cfg, setup, loaded), output_dir)
    extra = {"model": {"label": loaded.label, **loaded.description},
             **({"checkpoint": loaded.description["path"]} if loaded.description["source"] == "checkpoint" else {}),
             **({"transfer": transfer} if transfer else {}),
             "evaluated": OmegaConf.to_container(setup)}
    with stop_requests() as stop:
        try:
            result = evaluator.run(loaded.net, plan, device=device, precision=str(cfg.get("precision", "32")),
                                   stop=stop.requested, resume_dir=str(state), progress=bool(cfg.get("progress", True)))
        except EvaluationStopped as stopped:
            partial = stopped.result.write(output_dir, extra, "results.partial.json") if stopped.result else None
            measured = ", ".join(f"{n} {split} examples" for split, n in (stopped.result.examples.items()
                                                                          if stopped.result else ()))
            raise RunInterrupted(
                f"interrupted by {stop.signal_name} during the evaluation; what was measured "
                f"({measured or 'nothing yet'}) is kept in {state} (numbers so far: {partial}); run the same "
                f"command again to continue where it stopped: {_command()}",
                exit_code=stop.exit_code,
            ) from None
    result.write(output_dir, extra)
    write_robustbench_card(result, output_dir, setup, loaded, cfg.get("subset", "seeded"))
    report(result, loaded, setup, evaluator, transfer, output_dir)
    return result.metrics


def _choice(group: str) -> str | None:
    """The option chosen for a config group (``source=timm`` -> ``timm``), None when not under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:
        return None


def _command() -> str:
    overrides = task_overrides()
    return "the same command" if overrides is None else shlex.join(["robustlip-eval", *overrides])


def write_robustbench_card(result: EvalResult, output_dir: Path, setup: DictConfig, loaded: LoadedModel,
                           subset: str) -> Path | None:
    """robustbench.json beside results.json when an AutoAttack ran: RobustBench's model card and our intervals."""
    from robustlip.core.files import write_json_atomic

    _, attack = result.adversarial_key()
    if attack in ("attack", "worst case"):
        return None
    norm = next((a.get("norm") for a in [setup.attack, *(setup.attacks or {}).values()]
                 if a and str(a.get("_target_", "")).endswith("AutoAttack")), None)
    from robustlip.attacks.autoattack import canonical_aa_norm

    card = result.robustbench_json(eps=float(setup.data.eps), norm=canonical_aa_norm(norm or "Linf").lower(),
                                   dataset=setup.data.get("name"), name=loaded.label, subset=subset)
    card["threat_model"] = canonical_aa_norm(norm or "Linf")
    return write_json_atomic(output_dir / "robustbench.json", card)


def report(result: EvalResult, loaded: LoadedModel, setup: DictConfig, evaluator: Evaluator, transfer: str | None,
           output_dir: Path) -> None:
    """The console table (titled with the model, the data and the attack), the sanity verdict, the files written."""
    from robustlip.core.files import print_written
    from robustlip.reporting.tables import evaluation_attack_label, lipschitz_note, print_results_table

    attacks = evaluator.attacks if evaluator.ensemble else next(iter(evaluator.attacks.values()), None)
    attack = evaluation_attack_label(attacks, setup.data.get("eps"))
    where = f"checkpoint: {loaded.description['path']}" if loaded.description["source"] == "checkpoint" else \
        f"model: {loaded.description['source']} {loaded.description.get('path') or loaded.description.get('weights') or ''}"
    title = [f"{loaded.label} · {setup.data.get('name', 'data')}{f' ({transfer})' if transfer else ''} · attack {attack}",
             where.rstrip(), *filter(None, [lipschitz_note(evaluator.lipschitz)])]
    print_results_table(result.metrics, title=title, uncertainty=result.uncertainty, warnings=result.warnings)
    sanity = result.sections.get("sanity")
    if sanity and sanity.get("checks"):
        failed = [name for name, check in sanity["checks"].items() if not check["passed"]]
        verdict = "passed" if not failed else "FAILED: " + ", ".join(failed)
        print(f"gradient-masking checks on {sanity['n']} test points: {verdict} "
              f"({len(sanity['checks']) - len(failed)} of {len(sanity['checks'])}; details in results.json's 'sanity')",
              flush=True)
    print_written(output_dir)


def run(cfg: DictConfig) -> float | None:
    """The Hydra task: evaluate, and return a number for sweepers (adversarial test accuracy)."""
    return evaluate(cfg).get("test/adv_acc")


main = entry_point("eval", run)


if __name__ == "__main__":
    main()
