"""The one way robustlip writes a file: through a temporary file in the same folder and an atomic rename.

A reader, a resumed run or a report sees either the previous complete file or the new complete file,
never half of one, whatever kills the process mid-write (SIGKILL, a full disk). The temporary file
lives in the target's own folder because a rename is atomic only within one file system (Lightning's
own transaction writes through the system temp dir, which is a copy when ``/tmp`` is elsewhere).
Files get the usual permissions (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask_permissions(path: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_write(path: str | Path, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it is fsync'ed and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _umask_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` with tensors/numpy scalars as Python numbers and NaN/inf as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):
        return jsonable(value.item())
    return value


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> Path:
    with atomic_write(path) as handle:
        json.dump(jsonable(payload), handle, indent=2, sort_keys=False)
        handle.write("\n")
    return Path(path)


def print_written(output_dir: str | Path) -> None:
    """Say where the files of a command went (the folder, then the files in it; Hydra's own and logs left out)."""
    hidden = {".hydra"}
    names = sorted(p.name for p in Path(output_dir).iterdir() if p.name not in hidden and p.suffix != ".log")
    print(f"wrote {Path(output_dir).resolve()}/: {', '.join(names)}", flush=True)
