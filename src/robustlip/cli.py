"""The one wrapper every console entry point uses: Hydra's CLI, known failures as one line, exit codes.

An entry module (``train.py``, ``evaluate.py``, ``separation.py``, ...) defines its task
``task(cfg) -> value`` and exposes ``main = entry_point("<config name>", task)``. The wrapper

* runs the task under ``hydra.main`` (overrides, ``--help``, ``--cfg job``, ``-m`` multiruns);
* turns a *known* failure, any exception with an ``exit_code`` attribute (``ConfigError`` 2, a
  non-finite loss 1, an interrupted run 143), into one ``error: ...`` line on stderr and that exit
  code. In a multirun the line is logged and the error re-raised, so Hydra marks that job failed and
  the sweep goes on;
* prints Hydra's own message for a config it cannot compose (a misspelled group option lists the
  choices) and exits 1, and names the run directory when Hydra cannot create it (exit 2);
* leaves unknown errors their traceback. ``HYDRA_FULL_ERROR=1`` shows Hydra's full trace as usual.

It imports only Hydra and OmegaConf, so ``--help`` and config errors answer without loading torch.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: conf/ ships inside the package as `robustlip.conf`; this reaches it in a checkout and when installed.
CONFIG_PATH = "pkg://robustlip.conf"
EXIT_BAD_INPUT = 2


def print_error(message: str) -> None:
    """One ``error:`` line on stderr (whitespace and newlines of the message folded)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a known failure (its class's ``exit_code``), None for an unknown one."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else None


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra (a test calling the task directly)
        return False


def entry_point(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
    """``main()`` of a console script running ``task`` on the composed ``conf/<config_name>.yaml``."""

    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
            if _multirun():
                log.error("error: %s", exc)
                raise
            print_error(str(exc))
            raise SystemExit(code) from None

    hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)(run)

    def main(cfg: DictConfig | None = None) -> Any:
        if cfg is not None:  # hydra.main's pass-through: main(cfg) runs the task directly
            return run(cfg)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return hydra_main()
        # Ask Hydra to re-raise instead of printing its own traceback, and print known failures as one line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            hydra_main()
        except Exception as exc:  # noqa: BLE001 - every failure ends here, as one line or a traceback
            sys.exit(_report(exc))
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        return None

    main.__doc__ = f"Console entry: the task on conf/{config_name}.yaml, errors as one line."
    return main


def _report(exc: BaseException) -> int:
    """Print what went wrong as briefly as is honest; return the exit code."""
    from hydra.errors import CompactHydraException, ConfigCompositionException
    from omegaconf.errors import OmegaConfBaseException

    code = exit_code(exc)
    if code is not None:  # re-raised by a failed multirun job
        print_error(str(exc))
        return code
    # Before OSError: Hydra's MissingConfigException (a misspelled option) is also an IOError.
    if isinstance(exc, (CompactHydraException, ConfigCompositionException)):
        print(str(exc), file=sys.stderr)
        if isinstance(exc.__cause__, OmegaConfBaseException):
            print(str(exc.__cause__), file=sys.stderr)
        return 1
    if isinstance(exc, OSError):  # Hydra could not create or write the run directory
        where = f" {exc.filename!r}" if exc.filename else ""
        print_error(f"hydra.run.dir: cannot write the run directory{where} ({exc.strerror or exc}); choose a writable "
                    "directory with hydra.run.dir=... or ROBUSTLIP_LOG_DIR=...")
        return EXIT_BAD_INPUT
    traceback.print_exc()
    print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
    return 1
