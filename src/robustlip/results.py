"""results.json: the files-first record of a run (DESIGN.md, "Results")."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

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


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_jsonable(payload), handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
