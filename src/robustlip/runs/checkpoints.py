"""Checkpoints that are safe to load, checked before use, and written so a crash never leaves half a file.

Checkpoints travel between people and survive preemptions, so every load goes through
:func:`load_checkpoint`: ``torch.load(weights_only=True)`` only (a file that needs arbitrary pickled
code is refused, since unpickling it could run that code), and a missing, empty, truncated or corrupt
file becomes one :class:`CheckpointError` line that names the file and what is wrong with it instead of
a zip-reader traceback. :func:`check_compatible` compares a checkpoint with the run about to use it
(architecture, number of classes, tensor shapes) so a wrong file fails before training, not inside
``load_state_dict`` after minutes of data loading. ``robustlip-eval`` uses the same two
functions.

:func:`resolve_ckpt_path` turns the ``ckpt_path`` / ``resume`` keys of ``train.yaml`` into a file:
``ckpt_path=last`` is ``<run dir>/checkpoints/last.ckpt`` (an error when it is missing: the user asked
for it), ``resume=auto`` takes the newest of ``last.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt``
when one exists and starts fresh otherwise (what a requeued job wants).

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the *same* directory and
renames it into place, so SIGKILL or a full disk during a save leaves the previous ``last.ckpt``
intact (Lightning's own transaction writes through the system temp dir, which is a copy, not a rename,
when ``/tmp`` is another file system).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from robustlip.core.errors import ConfigError, check_choice
from robustlip.core.files import atomic_write

#: Values of the ``resume`` key of train.yaml.
RESUME_MODES = ("never", "auto")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or made for another model."""


def checkpoint_dir(output_dir: str | Path) -> Path:
    """Where ModelCheckpoint (conf/callbacks/default.yaml) writes: ``<run dir>/checkpoints``."""
    return Path(output_dir) / "checkpoints"


def last_checkpoint(output_dir: str | Path) -> Path:
    return checkpoint_dir(output_dir) / "last.ckpt"


def load_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a Lightning checkpoint with ``weights_only=True`` on the CPU, or raise one clear CheckpointError.

    ``key`` is the config key the path came from, so the message names it (``ckpt_path=...``).
    """
    path = Path(path).expanduser()
    where = f"{key}={str(path)!r}"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist; give the path of a .ckpt file written by robustlip-train")
    if not path.is_file():
        raise CheckpointError(f"{where} is not a file; give the path of a .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where} is empty (0 bytes): the save was interrupted; use another checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises the same error for a pickled class ("Unsupported global") and for bytes that are
        # not a pickle at all ("Unsupported operand"): only the first is code we refuse to run.
        if "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{where} was refused: it needs arbitrary pickled code to load ({_unsafe_globals(path, exc)}), and "
                "unpickling it could run that code. robustlip loads checkpoints with torch.load(weights_only=True) "
                "only; re-save the file from a trusted source as plain tensors and numbers"
            ) from exc
        raise CheckpointError(
            f"{where} is truncated or corrupt and cannot be read (not a torch checkpoint: {_unpickler_reason(exc)}); "
            "use another checkpoint, e.g. the best-*.ckpt next to it"
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{where} is truncated or corrupt and cannot be read ({type(exc).__name__}: {_one_line(exc)}); "
            "use another checkpoint, e.g. the best-*.ckpt next to it"
        ) from exc
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        found = sorted(ckpt)[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(
            f"{where} is not a Lightning checkpoint of robustlip-train (no 'state_dict'; found {found})"
        )
    return dict(ckpt)


def _unpickler_reason(exc: BaseException) -> str:
    """torch's short reason ("Unsupported operand 110") without its advice to load with weights_only=False."""
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", str(exc), re.DOTALL)
    return _one_line(ValueError(found.group(1))) if found and found.group(1) else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _unsafe_globals(path: Path, exc: BaseException) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - the message is a courtesy; fall back to torch's text
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return "objects of " + ", ".join(names) if names else "non-tensor objects"


def checkpoint_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved run config stored by RobustClassifier (empty when the file has none)."""
    hparams = ckpt.get("hyper_parameters") or {}
    config = hparams.get("config") if isinstance(hparams, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else {}


def net_from_checkpoint(ckpt: Mapping[str, Any], train_config: Mapping[str, Any], key: str = "ckpt_path") -> torch.nn.Module:
    """Rebuild the network from the checkpoint's ``model`` config and load its ``net.*`` weights (eval mode)."""
    from hydra.utils import instantiate

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


def _select(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


#: What must agree between a checkpoint and the run that loads it: the network and its output layer.
COMPATIBILITY_KEYS = ("model._target_", "model.num_classes", "data.num_classes", "data.in_channels")


def check_compatible(
    ckpt: Mapping[str, Any],
    cfg: Mapping[str, Any] | Any,
    module: torch.nn.Module | None = None,
    key: str = "ckpt_path",
    path: str | Path | None = None,
) -> None:
    """Raise CheckpointError when ``ckpt`` was made for another network than ``cfg`` (and ``module``) describe.

    Compares the architecture and the number of classes/channels recorded in the checkpoint's config,
    then, when ``module`` is given, every tensor name and shape of its state_dict, so a mismatch is
    named (``net.fc.weight has shape [10, 64] in the checkpoint but [5, 64] here``) before training.
    """
    from omegaconf import DictConfig, OmegaConf

    if path is not None:
        key = f"{key}={str(path)!r}"

    here = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    there = checkpoint_config(ckpt)
    for dotted in COMPATIBILITY_KEYS:
        mine, theirs = _select(here, dotted), _select(there, dotted)
        if mine is not None and theirs is not None and mine != theirs:
            raise CheckpointError(
                f"{key} holds a checkpoint for {dotted}={theirs!r} but this run has {dotted}={mine!r}; "
                f"use a checkpoint trained with {dotted}={mine!r} or set {dotted}={theirs!r}"
            )
    if module is None:
        return
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in ckpt["state_dict"].items() if hasattr(t, "shape")}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{key} holds a checkpoint of another architecture: missing {missing[:3]}, unexpected {unexpected[:3]} "
            f"(model._target_={_select(there, 'model._target_')!r} in the checkpoint, "
            f"{_select(here, 'model._target_')!r} here)"
        )
    for name, shape in expected.items():
        if stored[name] != shape:
            raise CheckpointError(
                f"{key} holds a checkpoint of another shape: {name} has shape {list(stored[name])} in the checkpoint "
                f"but {list(shape)} here (check model.* and data.num_classes against the checkpoint's config)"
            )


#: What must agree between the data a model was made for and the data it is run on: the dataset, its classes and
#: its input shape (channels, pixels).
DATA_KEYS = ("name", "num_classes", "in_channels", "in_features")


def check_same_data(made_for: Mapping[str, Any] | None, data: Mapping[str, Any] | Any, allow: bool = False,
                    opt_in: str | None = "allow_data_mismatch=true for a deliberate transfer evaluation",
                    verb: str = "evaluate it on") -> str | None:
    """Refuse data other than the model's own (name, classes, input shape) in one line, before any work.

    ``made_for`` is the data node the model was trained with (a checkpoint's ``data``), ``data`` the one of
    this run. ``allow`` lets a deliberate transfer through (``opt_in`` names the key; None: no opt-in,
    as for resuming a training run). Returns the title's note for a transfer (None for the model's own data).
    """
    made_for = made_for or {}
    differ = [(key, made_for[key], data.get(key)) for key in DATA_KEYS
              if made_for.get(key) is not None and data.get(key) is not None and made_for[key] != data.get(key)]
    if not differ:
        return None
    key, theirs, mine = differ[0]
    if not allow:
        name = made_for.get("name", theirs)
        other = f", or set {opt_in}" if opt_in else ""
        raise CheckpointError(
            f"data.{key}={mine!r} is not the data this model was made for (data.{key}={theirs!r}); "
            f"{verb} data={name}{other}"
        )
    return f"transfer: made for {made_for.get('name', '?')}, evaluated on {data.get('name', '?')}"


def resolve_ckpt_path(ckpt_path: str | None, resume: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint file a run starts from, or None for a fresh start.

    ``ckpt_path``: None, ``last`` (``<run dir>/checkpoints/last.ckpt``, which must exist) or a path.
    ``resume``: ``never`` or ``auto`` (newest of last.ckpt and Lightning's ``hpc_ckpt_*.ckpt`` in the
    run dir when ``ckpt_path`` is not given; a fresh start when there is none).
    """
    mode = check_choice("resume", resume or "never", RESUME_MODES)
    if ckpt_path not in (None, ""):
        if str(ckpt_path) == "last":
            path = last_checkpoint(output_dir)
            if not path.is_file():
                raise CheckpointError(
                    f"ckpt_path=last, but there is no {path}; resume in the run directory of the interrupted run "
                    "(hydra.run.dir=<that dir>), or use resume=auto to start fresh when no checkpoint exists"
                )
            return str(path)
        return str(Path(str(ckpt_path)).expanduser())
    if mode == "auto":
        candidates = [last_checkpoint(output_dir), *Path(output_dir).glob("hpc_ckpt_*.ckpt")]
        existing = [p for p in candidates if p.is_file()]
        if existing:
            return str(max(existing, key=lambda p: p.stat().st_mtime))
    return None


#: Overrides that do not make a run another run: how it starts, not what it trains.
RESUME_KEYS = ("ckpt_path", "resume")


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``: the key a command-line override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def same_run_overrides(overrides: list[str]) -> list[str]:
    """The overrides that define a run (its ``ckpt_path`` and ``resume`` left out), in order."""
    return [o for o in overrides if override_key(o) not in RESUME_KEYS]


def _run_overrides(run_dir: Path) -> list[str] | None:
    """The task overrides a run was started with (Hydra's ``.hydra/overrides.yaml``), None when unreadable."""
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # noqa: BLE001 - a foreign or broken folder is simply not a candidate
        return None


def find_interrupted_run(runs_dir: str | Path, overrides: list[str], exclude: str | Path | None = None) -> Path:
    """The newest interrupted run below ``runs_dir`` started with the same ``overrides``, for ``ckpt_path=last``.

    Interrupted: it has ``checkpoints/last.ckpt`` and no ``results.json``. Same: the same task overrides
    but ``ckpt_path``/``resume`` (a resumed command adds ``ckpt_path=last``). When none matches, the
    error names the interrupted runs there and how to pick one.
    """
    runs_dir = Path(runs_dir)
    exclude = Path(exclude).resolve() if exclude is not None else None
    wanted = same_run_overrides(overrides)
    interrupted = sorted(
        (d for d in runs_dir.iterdir() if d.is_dir() and d.resolve() != exclude
         and last_checkpoint(d).is_file() and not (d / "results.json").exists()),
        key=lambda d: last_checkpoint(d).stat().st_mtime, reverse=True,
    ) if runs_dir.is_dir() else []
    for run_dir in interrupted:
        theirs = _run_overrides(run_dir)
        if theirs is not None and same_run_overrides(theirs) == wanted:
            return run_dir
    if not interrupted:
        raise CheckpointError(
            f"ckpt_path=last, but there is no interrupted run (a checkpoints/last.ckpt without results.json) in "
            f"{runs_dir}; resume in the run directory of the interrupted run (hydra.run.dir=<that dir>), or use "
            "resume=auto to start fresh when no checkpoint exists"
        )
    listed = "; ".join(f"{d} ({' '.join(same_run_overrides(_run_overrides(d) or [])) or 'no overrides'})"
                       for d in interrupted[:5])
    raise CheckpointError(
        f"ckpt_path=last: no interrupted run in {runs_dir} was started with these overrides "
        f"({' '.join(wanted) or 'none'}); the interrupted runs there are: {listed}; resume one with its own "
        "overrides plus hydra.run.dir=<its dir> ckpt_path=last"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through a temporary file in the target directory and an atomic rename (fsync'ed).

    A reader (or a resumed run) sees either the previous complete file or the new complete file,
    never a partial one, whatever kills the process mid-save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path, binary=True) as handle:
            torch.save(checkpoint, handle)
