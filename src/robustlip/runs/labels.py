"""The name a run goes by in every table: its method's row (``TRADES(β=6)``, ``RST(λ=1)+unlabeled``).

One rule for robustlip-train's console title, robustlip-eval's title of a checkpoint, the wandb summary
and robustlip-report's rows, so the same run is the same row everywhere. The name comes from the
objective itself (``Objective.label`` and ``Objective.sort_key``, built from the run's config), with
``+unlabeled`` when a teacher's pseudo-labels were mixed into the batches (``self_training.teacher_ckpt``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


def with_unlabeled(method: str, teacher_ckpt: Any) -> str:
    """``method``, or ``method+unlabeled`` for a run that trained on a teacher's pseudo-labels too."""
    return f"{method}+unlabeled" if teacher_ckpt not in (None, "") else method


def method_label(config: Mapping[str, Any], where: Any = "a run") -> tuple[str, tuple]:
    """The row name of a run's (nested, resolved) config and a key that sorts rows in the paper's order.

    A config whose objective cannot be built here (another version's) is named by its objective's
    ``name``, with a warning naming ``where``; a run written before self-training had keys of its own
    kept the teacher in the RST objective's node.
    """
    node = dict(config.get("objective") or {})
    name = str(node.get("name", "?"))
    legacy_teacher = node.pop("teacher_ckpt", None)  # never an argument of the objective now
    node.pop("unsup_fraction", None)
    teacher = (config.get("self_training") or {}).get("teacher_ckpt") or legacy_teacher
    if node.get("_target_"):
        from hydra.utils import instantiate

        try:
            objective = instantiate(node)
            return with_unlabeled(objective.label, teacher), (*objective.sort_key, name)
        except Exception as exc:  # noqa: BLE001 - a title or a report must not die on one foreign run
            log.warning("%s: objective %s cannot be built here (%s); its row is named %r", where,
                        node.get("_target_"), exc, name)
    return with_unlabeled(name, teacher), (99, 0.0, name)
