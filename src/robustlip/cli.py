"""The one wrapper every console entry point uses: Hydra's CLI, known failures as one line, exit codes.

An entry module (``train.py``, ``evaluate.py``, ``separation.py``, ...) defines its task
``task(cfg) -> value`` and exposes ``main = entry_point("<config name>", task)``. The wrapper

* runs the task under ``hydra.main`` (overrides, ``--help``, ``--cfg job``, ``-m`` multiruns);
* turns a *known* failure, any exception with an ``exit_code`` attribute (``ConfigError`` 2, a
  non-finite loss 1, an interrupted run 143), into one ``error: ...`` line on stderr and that exit
  code. In a multirun the line is logged and the error re-raised, so Hydra marks that job failed and
  the sweep goes on;
* prints Hydra's own message for a config it cannot compose (a misspelled group option lists the
  choices, a misspelled key is named) and exits 2, as for any other bad input; names the run
  directory when Hydra cannot create it (exit 2);
* leaves no litter: Hydra creates the run directory (and its ``.hydra/`` and log file) before the task
  starts, so when a single run stops on a known failure and the task itself wrote nothing there, the
  directory is removed again, if this run created it (:class:`RunDirectoryRecord` notes that), with
  the empty parent folders it created (docs/reliability.md, "Bad input and faults");
* leaves unknown errors their traceback. ``HYDRA_FULL_ERROR=1`` shows Hydra's full trace as usual.

It imports only Hydra and OmegaConf, so ``--help`` and config errors answer without loading torch.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from robustlip.core.errors import exit_code, print_error

log = logging.getLogger(__name__)

#: conf/ ships inside the package as `robustlip.conf`; this reaches it in a checkout and when installed.
CONFIG_PATH = "pkg://robustlip.conf"
EXIT_BAD_INPUT = 2


def plain_help(doc: str | None) -> str:
    """A module docstring as terminal help: reST markup (``code``, :mod:`x`) removed."""
    import re

    text = (doc or "").strip()
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra (a test calling the task directly)
        return False


class RunDirectoryRecord(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): notes, before Hydra creates the run directory of a
    single run, whether it already existed and which of its parent folders did not, so that a run that
    fails its checks can remove what Hydra created for it and nothing else."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _created.clear()
        run_dir = OmegaConf.select(config, "hydra.run.dir", default=None)
        if run_dir is None:
            return
        path = Path(str(run_dir)).expanduser().absolute()
        new = []
        while not path.exists() and path != path.parent:
            new.append(path)
            path = path.parent
        _created.extend(new)  # the run dir first, then the parents this run will create


#: Folders Hydra creates for the current single run (the run dir first), as noted by RunDirectoryRecord.
_created: list[Path] = []


def _hydra_files(run_dir: Path) -> set[Path]:
    """What Hydra itself writes into a run dir before the task starts: ``.hydra/`` and the job's log file."""
    from hydra.core.hydra_config import HydraConfig

    own = set()
    try:
        subdir = HydraConfig.get().output_subdir
    except ValueError:
        subdir = ".hydra"
    if subdir:
        own.add(run_dir / str(subdir))
    for handler in logging.getLogger().handlers:
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).parent == run_dir:
            own.add(Path(filename))
    return own


def remove_untouched_run_dir() -> Path | None:
    """Remove the run dir Hydra created for this run when the task wrote nothing into it; return it if removed.

    Only a directory this run created (noted by :class:`RunDirectoryRecord`) that holds nothing but
    Hydra's own ``.hydra/`` and log file is removed, then each parent folder this run created while
    it is empty. Anything else — an earlier run's folder, a file the task wrote — stays.
    """
    if not _created:
        return None
    run_dir = _created[0]
    if not run_dir.is_dir():
        return None
    own = _hydra_files(run_dir)
    if any(entry not in own for entry in run_dir.iterdir()):
        return None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "baseFilename", None) and Path(handler.baseFilename) in own:
            handler.close()
            root.removeHandler(handler)
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in _created[1:]:
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
    _created.clear()
    return run_dir


def run_dir_given() -> bool:
    """Whether the run directory was chosen (``hydra.run.dir=...``, or a multirun's job folder) rather than being
    Hydra's new timestamped one."""
    from hydra.core.hydra_config import HydraConfig

    if _multirun():
        return True
    try:
        return any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in HydraConfig.get().overrides.hydra)
    except ValueError:  # not under Hydra: the caller chose paths.output_dir itself
        return True


def task_overrides() -> list[str] | None:
    """The command line's task overrides (what ``.hydra/overrides.yaml`` records), None when not under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:
        return None


def move_run_dir(new_dir: Path) -> None:
    """Continue this run in ``new_dir`` (an earlier run's folder): the log file follows, and the fresh folder Hydra
    created for this run is removed again when nothing but Hydra's own files are in it."""
    if _created:
        fresh = _created[0]
        for handler in logging.getLogger().handlers:
            filename = getattr(handler, "baseFilename", None)
            if filename and Path(filename).parent == fresh and isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    handler.close()
                    old, new = Path(filename), Path(new_dir) / Path(filename).name
                    with new.open("a") as target:  # what was logged before the move goes along
                        target.write(old.read_text() if old.is_file() else "")
                    old.unlink(missing_ok=True)
                    # A closed FileHandler opens its (new) file again at the next record, in mode "a".
                    handler.baseFilename, handler.mode = str(new), "a"
                finally:
                    handler.release()
        if fresh.is_dir() and all(entry.name == ".hydra" for entry in fresh.iterdir()):
            shutil.rmtree(fresh, ignore_errors=True)
            for parent in _created[1:]:
                try:
                    parent.rmdir()
                except OSError:
                    break
    _created.clear()


#: What a mandatory key (``???`` in conf/) looks like when given, for the one line that asks for it.
EXAMPLES = {
    "ckpt_path": "logs/train/runs/<run>/checkpoints/last.ckpt",
    "source.weights": "net.pt",
    "source.path": "model.pt",
    "source.name": "Carmon2019Unlabeled",
    "source.arch._target_": "my_package.Net",
}


class MissingValue(ValueError):
    """A mandatory key (``???``) left unset: bad input, one line."""

    exit_code = EXIT_BAD_INPUT


def _command() -> str:
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "robustlip-<command>"


def missing_message(key: str) -> str:
    example = EXAMPLES.get(key, "...")
    return f"{key} is required and has no default; give it, e.g. {_command()} {key}={example}"


def check_mandatory(cfg: DictConfig) -> None:
    """Refuse a config with a mandatory value (``???``) unset, naming the key and an example, before any work."""
    missing = _missing_keys(cfg)
    if missing:
        raise MissingValue(missing_message(missing[0]))


def _keys_named(node: Any, name: str, prefix: str = "") -> list[str]:
    """The dotted keys below ``node`` whose last part is ``name`` (nothing resolved), shortest first."""
    found = []
    if not OmegaConf.is_dict(node):
        return found
    for key in node:
        child = node._get_node(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if str(key) == name and prefix:
            found.append(dotted)
        if OmegaConf.is_dict(child) and not child._is_none() and not child._is_interpolation():
            found.extend(_keys_named(child, name, dotted))
    return sorted(found, key=len)


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose value is ``???``, found without resolving any interpolation (robustlip-eval's
    ``${data.eps}`` may point at a node the checkpoint fills in later)."""
    found = []
    if OmegaConf.is_dict(node):
        items = [(str(k), node._get_node(k)) for k in node]
    elif OmegaConf.is_list(node):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return found
    for key, child in items:
        dotted = f"{prefix}.{key}" if prefix else key
        if OmegaConf.is_config(child) and not child._is_none() and not child._is_interpolation():
            found.extend(_missing_keys(child, dotted))
        elif child is not None and child._is_missing() and not child._is_interpolation():
            found.append(dotted)
    return found


def entry_point(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
    """``main()`` of a console script running ``task`` on the composed ``conf/<config_name>.yaml``."""

    def run(cfg: DictConfig) -> Any:
        try:
            check_mandatory(cfg)
            return task(cfg)
        except Exception as exc:
            from omegaconf.errors import MissingMandatoryValue

            if isinstance(exc, MissingMandatoryValue):  # read inside the task (e.g. through an interpolation)
                exc = MissingValue(missing_message(str(exc.full_key)))
            code = exit_code(exc)
            if code is None:
                raise
            if _multirun():
                log.error("error: %s", exc)
                raise
            remove_untouched_run_dir()
            print_error(str(exc))
            raise SystemExit(code) from None
        finally:
            _created.clear()

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
        try:
            better = _composition_advice(exc)
        except Exception:  # advice is a courtesy: Hydra's own message below then
            log.debug("no advice for %r", exc, exc_info=True)
            better = None
        if better:
            print_error(better)
            return EXIT_BAD_INPUT
        # Hydra's own message (it lists the options of a misspelled group), without the search path.
        message = str(exc).split("\nConfig search path:")[0].rstrip()
        print(f"error: {message}", file=sys.stderr)
        if isinstance(exc.__cause__, OmegaConfBaseException):
            print(str(exc.__cause__), file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(exc, BrokenPipeError):  # `robustlip-train --help | head`: the reader has gone, nothing is wrong
        return 0
    if isinstance(exc, OSError):  # Hydra could not create or write the run directory
        where = f" {exc.filename!r}" if exc.filename else ""
        print_error(f"hydra.run.dir: cannot write the run directory{where} ({exc.strerror or exc}); choose a writable "
                    "directory with hydra.run.dir=... or ROBUSTLIP_LOG_DIR=...")
        return EXIT_BAD_INPUT
    traceback.print_exc()
    print("\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
    return 1


def _override(key: str) -> str:
    """The command line's ``key=value`` (``+``/``~`` stripped), or ``key=...`` when it is not there."""
    for arg in sys.argv[1:]:
        name, sep, value = arg.partition("=")
        if sep and name.lstrip("+~") == key:
            return f"{key}={value}"
    return f"{key}=..."


def _group_options(group: str) -> list[str]:
    """The options of a config group of the packaged tree (``conf/<group>/*.yaml``), [] when it is no group."""
    from robustlip.runs.config import config_dir

    folder = config_dir() / group
    return sorted(f.stem for f in folder.glob("*.yaml")) if folder.is_dir() else []


def _options_with(group: str, rest: str) -> list[str]:
    """The options of ``group`` whose config has the dotted key ``rest``."""
    from robustlip.runs.config import config_dir, raw_node

    found = []
    for option in _group_options(group):
        try:
            node = OmegaConf.load(config_dir() / group / f"{option}.yaml")
        except Exception as exc:  # noqa: BLE001 - an unreadable option is simply not offered
            log.debug("option %s/%s not read: %s", group, option, exc)
            continue
        if raw_node(node, rest) is not None:  # an interpolation (${data.eps}) must not be resolved
            found.append(option)
    return found


def _composition_advice(exc: BaseException) -> str | None:
    """A one-line answer for a config Hydra cannot compose, when a better one than Hydra's exists.

    Hydra advises ``+key=value`` for any unknown key, which adds a key nothing reads (or one the
    constructor refuses). Instead: a misspelled key gets the close key (``trainer.max_epochs=3``); a key of
    a group option that lacks it, the options that have it (``objective=at objective.eps=0.05``); a
    key of a group chosen by nobody, how to choose one; an unknown option of a list group, the options.
    Every suggestion works when followed (tests/test_first_hour.py follows each).
    """
    import difflib
    import re

    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and not exc.options:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        options = _group_options(group)
        if options:
            return f"{group}: no option {option!r}; choose from {', '.join(options)}"
        return None
    cause = exc.__cause__
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or "not in struct" not in str(cause):
        return None
    match = re.search(r"Could not override '([^']+)'", str(exc))
    key = match.group(1) if match else str(getattr(cause, "full_key", "") or "")
    if not key:
        return None
    given = _override(key)
    value = given.split("=", 1)[1]
    parent = getattr(cause, "parent_node", None)
    missing = str(getattr(cause, "full_key", "") or key)
    group, _, rest = key.partition(".")
    if missing != key and "." not in missing and rest and _group_options(group):
        # ``attack.eps=0.2`` where no attack is chosen (robustlip-eval uses the checkpoint's)
        has = sorted(_options_with(group, rest) or _group_options(group), key=lambda o: o != "pgd")
        patch = f", or change the checkpoint's with +patch.{key}={value}" if group in ("data", "attack", "lipschitz") \
            and parent is not None and "allow_data_mismatch" in parent else ""
        return f"{given}: no {group} is chosen here, so it has no key {rest!r}; choose one first, e.g. " \
               f"{group}={has[0]} {given}{patch}"
    keys = [str(k) for k in parent] if parent is not None and hasattr(parent, "keys") else []
    name = missing.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    where = missing.rsplit(".", 1)[0] if "." in missing else ""
    if close:
        fixed = f"{where}.{close[0]}" if where else close[0]
        return f"{given}: no such key; did you mean {fixed}={value}?"
    elsewhere = _keys_named(parent._get_root(), name) if not where and parent is not None \
        and hasattr(parent, "_get_root") else []
    if elsewhere:  # the key lives deeper: attack_gap_warning -> callbacks.robust_evaluation.attack_gap_warning
        return f"{given}: no such key; did you mean {elsewhere[0]}={value}?"
    if rest and (has := [o for o in _options_with(group, rest)]):
        return f"{given}: this {group} has no key {rest!r}; the {group} options that have it: {', '.join(has)} " \
               f"(e.g. {group}={has[0]} {given})"
    listed = f"; the keys of {where}: {', '.join(keys)}" if where and keys else ""
    return f"{given}: no such key{listed} (robustlip's composed config: {_command()} --cfg job)"
