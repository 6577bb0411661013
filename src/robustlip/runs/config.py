"""Where the Hydra configs live, how a config node becomes an object, and how a run directory is written.

Three reliability rules live here (docs/reliability.md):

* :func:`instantiate_group` builds one config group and, when a constructor rejects a value with a
  :class:`~robustlip.core.errors.ConfigError`, re-raises that error itself (prefixed with the group, e.g.
  ``attack.norm='l3' is not allowed; ...``) instead of Hydra's ``InstantiationException`` wall;
* :func:`to_plain_dict` redacts secrets (keys that look like credentials, and the values of secret
  environment variables such as ``WANDB_API_KEY``), so no API key reaches config.yaml, a checkpoint's
  hyper-parameters, the CSV logger's hparams.yaml or wandb's config;
* :func:`save_resolved_config` writes config.yaml atomically, after validation, so a failing run
  never leaves a half-written or foreign config.yaml next to an earlier run's results.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from robustlip.core.errors import ConfigError
from robustlip.core.files import write_text_atomic

#: Config keys whose values are credentials, whatever group they sit in.
SECRET_KEY_PATTERN = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)
#: Environment variables whose values must never be written anywhere.
SECRET_ENV_VARS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY")
REDACTED = "<redacted>"


def config_dir() -> Path:
    """The directory of the packaged config tree (for --config-dir users and for tests)."""
    return Path(str(files("robustlip.conf")))


def _secret_values() -> list[str]:
    return [v for name in SECRET_ENV_VARS if len(v := os.environ.get(name, "")) >= 6]


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` with credential-like keys and secret environment values replaced by ``<redacted>``."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_KEY_PATTERN.search(k) and v not in (None, "") else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
    return value


def to_plain_dict(cfg: DictConfig) -> dict:
    """The config resolved to plain Python values, secrets redacted: what checkpoints and results may hold."""
    return redact(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))  # type: ignore[return-value]


def root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__``; OmegaConf re-raises a resolver's error without one, so follow
    ``__context__`` there (it holds the resolver's own exception)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or (exc.__context__ if isinstance(exc, InterpolationResolutionError) else None)
        if inner is None:
            break
        exc = inner
    return exc


def raw_node(cfg: DictConfig, dotted: str) -> Any:
    """The node at ``dotted``, reached without resolving any interpolation on the way (None when absent).

    ``OmegaConf.select`` resolves what it passes (``${data.eps}``), which fails or misleads on a config that
    is not composed yet (one option file of a group) or when the question is what the user wrote.
    """
    node: Any = cfg
    for part in dotted.split("."):
        if not OmegaConf.is_dict(node) or part not in node:
            return None
        node = node._get_node(part)
    return node


def _raw(cfg: DictConfig, dotted: str) -> Any:
    """The value at ``dotted`` as written, an interpolation left unresolved (None when absent)."""
    node = raw_node(cfg, dotted)
    return node._value() if hasattr(node, "_value") else node


def name_the_source(cfg: DictConfig, message: str) -> str:
    """``attack.eps=2 is not allowed; ...`` as ``data.eps=2 is not allowed (attack.eps is ${data.eps}); ...`` when
    the refused key only follows another (``attack.eps: ${data.eps}``): the key the user set is the one to fix."""
    match = re.match(r"^([\w.]+)=", message)
    if match is None:
        return message
    raw = _raw(cfg, match.group(1))
    ref = re.fullmatch(r"\$\{([\w.]+)\}", raw.strip()) if isinstance(raw, str) else None
    if ref is None:
        return message
    head, sep, tail = message.partition(";")
    head = ref.group(1) + head[len(match.group(1)):]
    return f"{head} ({match.group(1)} is ${{{ref.group(1)}}}){sep}{tail}"


def instantiate_group(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate`` the node at dotted ``key``, turning a rejected value into a ConfigError that names ``key``."""
    try:
        return instantiate(OmegaConf.select(cfg, key, throw_on_missing=True), **kwargs)
    except (InstantiationException, InterpolationResolutionError) as exc:  # the latter: a resolver's ConfigError
        cause = root_cause(exc)
        if isinstance(cause, ConfigError):
            message = str(cause)
            if not message.startswith(f"{key}."):
                message = f"{key}.{message}" if re.match(r"^[\w.]+=", message) else f"{key}: {message}"
            raise type(cause)(name_the_source(cfg, message)) from exc
        if isinstance(cause, (FileNotFoundError, NotADirectoryError)):
            raise ConfigError(f"{key}: {cause}") from exc
        raise


def instantiate_attacks(cfg: DictConfig, key: str = "attacks") -> dict[str, Any]:
    """``attacks=[pgd,autoattack]`` (the node ``{name: attack config}`` at ``key``) as ``{name: Attack}``.

    Each entry is built on its own, so a rejected value is named where it lives
    (``attacks.autoattack.version='fast' is not allowed; ...``). Empty or absent: ``{}``.
    """
    node = OmegaConf.select(cfg, key)
    built = {}
    for name in node or {}:
        try:
            built[str(name)] = instantiate_group(cfg, f"{key}.{name}")
        except ConfigError as exc:
            # The attack names its keys as a single attack's (attack.version); say where this one is.
            message = str(exc).replace(f"{key}.{name}.attack.", f"{key}.{name}.", 1).replace(" attack.", f" {key}.{name}.")
            raise type(exc)(message) from exc
    return built


def save_resolved_config(cfg: DictConfig, output_dir: str | Path) -> Path:
    """config.yaml of the run: resolved, secrets redacted, written atomically (call it after validation)."""
    return write_text_atomic(Path(output_dir) / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(to_plain_dict(cfg))))
