"""results.json: the files-first record of a run (docs/architecture.md): the metric names of the paper's tables and the gaps derived from them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robustlip.core.files import write_json_atomic

#: The metric names of the paper's tables, in the order the tables show them.
RESULT_KEYS = (
    "train/acc",
    "test/acc",
    "train/adv_acc",
    "test/adv_acc",
    "train/lipschitz",
    "test/lipschitz",
    "gap",
    "adv_gap",
)


def with_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """Add the paper's generalization gaps (train − test, in percentage points) when both sides exist."""
    out = dict(metrics)
    if "train/acc" in out and "test/acc" in out:
        out["gap"] = out["train/acc"] - out["test/acc"]
    if "train/adv_acc" in out and "test/adv_acc" in out:
        out["adv_gap"] = out["train/adv_acc"] - out["test/adv_acc"]
    return out


def add_results_section(path: str | Path, name: str, section: dict[str, Any]) -> Path:
    """Add (or replace) one top-level section of a run's results.json (created if absent), atomically.

    For callbacks that report after RobustEvaluation wrote the file (e.g. the closed forms of
    callbacks/tsipras.py): the metrics and every other section stay as they are.
    """
    path = Path(path)
    payload = json.loads(path.read_text()) if path.is_file() else {}
    payload[name] = section
    return write_json_atomic(path, payload)


def chance_band(num_classes: int, n: int | None) -> tuple[float, float]:
    """Chance accuracy (percent) of guessing among ``num_classes``, and the highest accuracy that is still chance.

    The band is three binomial standard errors of n examples around chance (at least 2 points): an
    accuracy inside it cannot be told from guessing.
    """
    p = 1.0 / max(int(num_classes), 1)
    spread = 3.0 * 100.0 * math.sqrt(p * (1.0 - p) / n) if n else 0.0
    return 100.0 * p, 100.0 * p + max(2.0, spread)
