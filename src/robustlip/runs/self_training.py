"""Robust self-training with unlabeled data: the teacher, its pseudo-labels, and their cache beside the run.

Part of robustlip-train's run setup, after the data is loaded and before anything is written. Its keys
are the run's, not an objective's: with ``self_training.teacher_ckpt`` (``objective=rst
self_training.teacher_ckpt=... data.train_size=... data.unlabeled=true``, docs/raghunathan.md):

1. the teacher is loaded with the project's safe loader (``torch.load(weights_only=True)``,
   robustlip/runs/checkpoints.py) and must have been trained on the same dataset with the same classes —
   anything else is one ``CheckpointError`` line naming ``self_training.teacher_ckpt``;
2. it labels the pool of ``data.unlabeled`` once, in eval mode, in batches (data/unlabeled.py);
3. the labels are cached as ``pseudo_labels.pt`` in the run directory, keyed by the teacher file's
   SHA-256 and the pool's indices, so a resumed run reuses them and a changed teacher or pool
   recomputes them; ``pseudo_labels.json`` records how many there are and how often they agree
   with the pool's true labels (known here because the pool is held-out training data; never used
   for training);
4. the DataModule then mixes them into every batch at ``self_training.unsup_fraction``.

The objective is untouched: its loss runs on the mixed batches (RST's is Carmon et al.'s), and the
run's row in every table is named ``<method>+unlabeled``
(:mod:`robustlip.runs.labels`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from robustlip.core.errors import ConfigError, check_probability
from robustlip.core.files import atomic_write, write_json_atomic
from robustlip.data.base import dataset_labels
from robustlip.data.unlabeled import pseudo_label
from robustlip.runs.checkpoints import CheckpointError, checkpoint_config, load_checkpoint

log = logging.getLogger(__name__)

KEY = "self_training.teacher_ckpt"
FRACTION_KEY = "self_training.unsup_fraction"
CACHE_FILE = "pseudo_labels.pt"
SUMMARY_FILE = "pseudo_labels.json"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_teacher(path: str | Path, datamodule: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher network of checkpoint ``path`` and its run config, checked against ``datamodule``.

    The teacher's own architecture is rebuilt from the config stored in its checkpoint (it need not be
    the student's). Its dataset, classes and number of classes must be this run's: a teacher of
    another task would hand out labels of the wrong meaning.
    """
    where = f"{KEY}={str(path)!r}"
    ckpt = load_checkpoint(path, key=KEY)
    config = checkpoint_config(ckpt)
    data, model = config.get("data") or {}, config.get("model") or {}
    if not model.get("_target_"):
        raise CheckpointError(f"{where} holds no model config (not written by robustlip-train); a teacher must be a "
                              "robustlip checkpoint")
    mine = {"data.name": datamodule.name, "data.num_classes": datamodule.num_classes,
            "data.classes": datamodule.classes}
    theirs = {"data.name": data.get("name"), "data.num_classes": data.get("num_classes"),
              "data.classes": data.get("classes")}
    for key in ("data.name", "data.num_classes", "data.classes"):
        if theirs[key] != mine[key] and not (key == "data.num_classes" and theirs[key] is None):
            raise CheckpointError(
                f"{where} is a teacher for {key}={theirs[key]!r} but this run has {key}={mine[key]!r}; use a "
                f"checkpoint trained on {key}={mine[key]!r}"
            )
    net = instantiate(model)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: its weights do not fit its own model config ({' '.join(str(exc).split())[:200]})") from exc
    objective = (config.get("objective") or {}).get("name")
    if objective not in (None, "natural"):
        log.warning("%s was trained with objective=%s; Carmon et al.'s teacher is trained naturally", where, objective)
    if data.get("train_size") is None:
        log.warning("%s was trained on the whole training split: its labels saw the unlabeled pool", where)
    return net, config


def _read_cache(path: Path, fingerprint: dict[str, Any]) -> torch.Tensor | None:
    """The cached labels when the cache belongs to this teacher file and this pool; else None."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is recomputed, not fatal
        log.warning("ignoring unreadable %s; recomputing the pseudo-labels", path)
        return None
    same = (
        isinstance(cache, dict)
        and cache.get("teacher_sha256") == fingerprint["teacher_sha256"]
        and torch.equal(cache.get("indices", torch.empty(0)), fingerprint["indices"])
    )
    return cache["labels"] if same else None


def _write_cache(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through the one atomic writer: never half a cache."""
    with atomic_write(path, binary=True) as handle:
        torch.save(payload, handle)


def pool_indices(datamodule: Any) -> torch.Tensor:
    """Indices of the unlabeled pool in the dataset's training split (what the cache is keyed by)."""
    return torch.as_tensor(list(datamodule.unlabeled_eval_set.indices), dtype=torch.long)


def prepare_self_training(datamodule: Any, output_dir: str | Path, teacher_ckpt: str | None = None,
                          unsup_fraction: float = 0.5, device: str | torch.device | None = None) -> dict[str, Any] | None:
    """With a teacher, pseudo-label the pool and make the DataModule mix it into every batch; else no-op.

    The arguments are the run's ``self_training`` keys. Returns the summary written to
    ``pseudo_labels.json`` (None without a teacher).
    """
    teacher = str(teacher_ckpt) if teacher_ckpt not in (None, "") else None
    unsup_fraction = check_probability(FRACTION_KEY, unsup_fraction)
    if not teacher:
        if getattr(datamodule, "unlabeled_set", None) is not None:
            log.warning("data.unlabeled is set but %s is not: the unlabeled pool is not used", KEY)
        return None
    if getattr(datamodule, "unlabeled_set", None) is None:
        raise ConfigError(f"{KEY}={teacher!r} needs an unlabeled pool: set data.train_size=<number of labels> and "
                          "data.unlabeled=true (or a pool size)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    net, config = load_teacher(teacher, datamodule)  # checks the file and the task before any work
    fingerprint = {"teacher_sha256": file_sha256(Path(teacher).expanduser()), "indices": pool_indices(datamodule)}
    cache = output_dir / CACHE_FILE
    labels = _read_cache(cache, fingerprint)
    reused = labels is not None
    if labels is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        labels = pseudo_label(net, datamodule.unlabeled_eval_set, batch_size=datamodule.eval_batch_size, device=device,
                              num_workers=datamodule.num_workers)
        _write_cache(cache, {"labels": labels, "teacher": str(teacher), **fingerprint})
    truth = dataset_labels(datamodule.unlabeled_eval_set)
    summary = {
        "teacher": str(teacher),
        "teacher_sha256": fingerprint["teacher_sha256"],
        "teacher_objective": (config.get("objective") or {}).get("name"),
        "teacher_train_size": (config.get("data") or {}).get("train_size"),
        "pool_size": len(labels),
        "labeled_size": len(datamodule.train_set),
        "unsup_fraction": unsup_fraction,
        # Held-out truth, for the record only: how good the teacher's labels are.
        "agreement_with_true_labels": float((labels == truth).double().mean()) * 100.0,
        "per_class_counts": torch.bincount(labels, minlength=datamodule.num_classes).tolist(),
        "reused_cache": reused,
    }
    write_json_atomic(output_dir / SUMMARY_FILE, summary)
    log.info("pseudo-labels for %d unlabeled examples (%s; %.2f%% agree with the held-out labels)",
             len(labels), "cached" if reused else "computed", summary["agreement_with_true_labels"])
    datamodule.use_pseudo_labels(labels, unsup_fraction)
    return summary
