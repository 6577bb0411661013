"""One-line, early, named errors for bad configuration values (docs/architecture.md, "Errors").

Every known failure class carries the ``exit_code`` its entry point exits with (robustlip.cli).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""

    #: Exit status of an entry point that stops on it (robustlip.cli): bad input.
    exit_code = 2


class RunInterrupted(RuntimeError):
    """A run stopped by a signal after saving its state; the message says how to resume it.

    The exit code is 128 + the signal's number, the shell's convention: 143 for SIGTERM, 130 for SIGINT.
    """

    exit_code = 143

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)


def print_error(message: str) -> None:
    """One ``error:`` line on stderr (whitespace and newlines of the message folded)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a known failure (its class's ``exit_code``), None for an unknown one."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else None


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_non_negative(key: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ConfigError(f"{key}={value!r} is not allowed; it must be a number >= 0")
    return float(value)


def check_positive_int(key: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}={value!r} is not allowed; it must be an integer >= 1")
    return value


def check_integer(key: str, value: Any) -> int:
    """An integer (``seed=1.5`` is refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} is not allowed; it must be an integer")
    return value


def check_linf_eps(key: str, eps: Any) -> float:
    """An ℓ∞ radius in pixel units: a number in [0, 1] (inputs are images in [0, 1]; models normalise inside)."""
    eps = check_non_negative(key, eps)
    if eps > 1.0:
        raise ConfigError(
            f"{key}={eps:g} is not allowed; an ℓ∞ radius is in pixel units and must be in [0, 1] "
            "(inputs are in [0, 1]; the paper's radii are 0.1 to 0.3 for MNIST, 0.031 for CIFAR-10)"
        )
    return eps


def check_probability(key: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value!r} is not allowed; it must be a number in [0, 1)")
    return float(value)


def check_attack_eps(attack_eps: float, data_eps: float, allow_mismatch: bool, key: str = "attack.eps",
                     data_key: str = "data.eps") -> bool:
    """Refuse an evaluation attack whose ε differs from ``data.eps`` unless the user said so; True when it differs.

    ``data.eps`` is the ε of the training objective, the Lipschitz estimate and the paper's tables; an
    attack at another radius makes ``results.json`` mix two radii. ``allow_mismatch`` (the
    ``allow_eps_mismatch`` key) lets it through, and the results table then names the radius. ``data_key`` is how
    this command moves ``data.eps`` (robustlip-eval without ``data=``: ``+patch.data.eps``).
    """
    differs = abs(float(attack_eps) - float(data_eps)) > 1e-12
    if differs and not allow_mismatch:
        raise ConfigError(
            f"{key}={attack_eps:g} differs from data.eps={data_eps:g}, the ε of the training objective, the Lipschitz "
            f"estimate and the paper's tables; set {data_key}={attack_eps:g} to move them all, or add "
            "allow_eps_mismatch=true to evaluate at another ε on purpose"
        )
    return differs


def check_writable_dir(key: str, path: str | Path) -> Path:
    """Create ``path`` if needed and prove it takes a file, so an unwritable run directory fails before training.

    Checked by writing and removing a probe file: permission bits alone do not tell (root, ACLs,
    read-only mounts, a regular file where a directory should be).
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{key}={str(path)!r} is not writable ({reason}); choose a directory you can write to "
            "(hydra.run.dir=..., or ROBUSTLIP_LOG_DIR=... for the default run directories)"
        ) from exc
    return path
