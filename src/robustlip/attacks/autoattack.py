"""AutoAttack (Croce & Hein, ICML 2020) through the official code, behind robustlip's attack contract.

The search is Croce & Hein's own implementation, as packaged on PyPI by its authors (``pyautoattack``,
the code of github fra31/auto-attack that RobustBench's leaderboards run) — not a re-implementation.
This module only adapts it to ``attack(model, x, y) -> x_adv`` (``attacks/base.py``):

* **versions** ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus`` (adds APGD-DLR and FAB with
  restarts), ``rand`` (APGD-CE and APGD-DLR with 20-sample EOT, for randomised models) and
  ``custom`` (the ``attacks`` you list, e.g. ``[apgd-ce, apgd-t]`` as a cheaper subset);
* **the model** runs in eval mode, its logits are cast to fp32 (under ``bf16-mixed`` the network still
  runs in bf16, as it does when evaluated; AutoAttack's losses, sorting and step-size rules see fp32),
  parameter ``requires_grad`` is switched off during the search (FAB calls ``.backward()``, which
  would otherwise accumulate into the parameters' ``.grad``) and restored afterwards;
* **randomness**: AutoAttack reseeds the global torch generators with ``seed``; the caller's
  generator state is restored afterwards, so running it does not shift a training run's random stream;
* **the flags** of AutoAttack's ``checks`` module (a randomised or dynamic model, softmax outputs, too
  few classes for the targeted attacks, zero gradients, Square stronger than the white-box attacks;
  see ``flags_doc.md`` in fra31/auto-attack) are logged by AutoAttack as warnings; they are captured
  here into :attr:`AutoAttack.flags` for results.json, and still reach the log;
* **fewer than 10 classes**: the standard/plus versions target the 9 runner-up classes, which do not
  exist with fewer than 10 classes (the official code then fails with an index error); the targeted
  attacks here use every wrong class instead (``num_classes - 1``), and the ``too_few_classes`` flag
  records it. The DLR losses need at least 3 classes (untargeted) or 4 (targeted): with fewer, a
  version that uses them is refused with a one-line error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyautoattack import AutoAttack as OfficialAutoAttack
from pyautoattack import checks as official_checks
from torch import Tensor, nn

from robustlip.attacks.base import Attack
from robustlip.attacks.threat import NORM_SPELLINGS
from robustlip.core.errors import ConfigError, check_choice, check_non_negative, check_positive_int

VERSIONS = ("standard", "plus", "rand", "custom")
#: The attacks the official code knows, for ``version=custom``.
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: The official versions' attack lists (``AutoAttack._set_version`` in fra31/auto-attack).
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
#: Versions the official code defines for each norm: only ``standard`` has an ℓ1 setting.
NORM_VERSIONS = {"Linf": VERSIONS, "L2": VERSIONS, "L1": ("standard", "custom")}
#: How many classes each attack needs: DLR uses the 3rd largest logit, targeted DLR the 4th.
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
#: The logger the official code writes its flags to.
LOGGER_NAME = "auto-attack"
#: Flag names, keyed by a piece of the official message (``checks.py`` in fra31/auto-attack).
FLAG_PATTERNS = (
    ("randomized defense", "randomized"),
    ("probability distribution", "softmax_output"),
    ("dynamic defense", "dynamic"),
    ("classes", "too_few_classes"),
    ("zero gradient", "zero_gradients"),
    ("Square Attack has decreased", "square_stronger"),
)


#: AutoAttack's names of robustlip's canonical norms (attacks/threat.py).
AA_NORM_NAMES = {"inf": "Linf", "2": "L2", "1": "L1"}


def canonical_aa_norm(norm: str | float) -> str:
    """AutoAttack's spelling of a norm ("Linf", "L2", "L1") for any of robustlip's spellings."""
    name = next((name for name, spellings in NORM_SPELLINGS.items() if norm in spellings), None)
    if name is not None:
        return AA_NORM_NAMES[name]
    raise ConfigError(f"attack.norm={norm!r} is not allowed; choose one of 'Linf', 'L2', 'L1'")


def flag_name(message: str) -> str:
    """The short name of one of AutoAttack's warnings ("other" for a message this module does not know)."""
    for pattern, name in FLAG_PATTERNS:
        if pattern in message:
            return name
    return "other"


class _FlagCollector(logging.Handler):
    """Records AutoAttack's warnings; the records still propagate to the application's log."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _FloatLogits(nn.Module):
    """The network seen by AutoAttack: the same forward pass, logits cast to fp32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).float()


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters out of autograd for the search, so ``.backward()`` inside the attack leaves ``.grad`` alone."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextmanager
def _caller_rng_restored(device: torch.device) -> Iterator[None]:
    """AutoAttack calls ``torch.manual_seed(seed)``; give the caller its generator state back afterwards."""
    devices = []
    if torch.cuda.is_available():
        devices = sorted({torch.cuda.current_device(), *([device.index] if device.type == "cuda" else [])})
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def _captured_flags() -> Iterator[_FlagCollector]:
    """Collect the official logger's warnings; quiet its per-batch info lines unless a user set its level."""
    logger = logging.getLogger(LOGGER_NAME)
    collector = _FlagCollector()
    previous_level = logger.level
    if previous_level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous_level)


class AutoAttack(Attack):
    """AutoAttack under an ℓ∞, ℓ2 (or ℓ1) ball of radius ``eps`` in pixel space, inputs in [0, 1].

    ``flags`` maps each AutoAttack warning that fired to how many calls (batches) it fired in and its
    first message; ``seconds`` is the wall time spent in the official code. Both accumulate over calls
    until :meth:`reset_records`.
    """

    reports_own_checks = True
    expensive = True

    def __init__(
        self,
        eps: float,
        norm: str | float = "Linf",
        version: str = "standard",
        seed: int = 0,
        attacks: Sequence[str] | None = None,
        num_classes: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(model_mode="eval")
        self._eps = check_non_negative("attack.eps", eps)
        #: The norm as AutoAttack spells it ("Linf", "L2", "L1").
        self.aa_norm = canonical_aa_norm(norm)
        self.version = check_choice("attack.version", version, VERSIONS)
        if self.version not in NORM_VERSIONS[self.aa_norm]:
            allowed = ", ".join(map(repr, NORM_VERSIONS[self.aa_norm]))
            raise ConfigError(
                f"attack.version={version!r} is not allowed with attack.norm={self.aa_norm!r}; "
                f"the official AutoAttack defines {allowed} for it"
            )
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"attack.seed={seed!r} is not allowed; it must be an integer")
        self.seed = seed
        if self.version == "custom":
            if not attacks:
                raise ConfigError(
                    f"attack.attacks={attacks!r} is not allowed with attack.version='custom'; "
                    f"list some of {', '.join(map(repr, ATTACK_NAMES))}"
                )
            self.attacks = tuple(check_choice("attack.attacks", a, ATTACK_NAMES) for a in attacks)
        else:
            if attacks:
                raise ConfigError(
                    f"attack.attacks={list(attacks)!r} is not allowed with attack.version={version!r}; "
                    "its attacks are fixed (use attack.version=custom to choose them)"
                )
            self.attacks = VERSION_ATTACKS[self.version]
        self.num_classes = (
            None if num_classes is None else check_positive_int("attack.num_classes", num_classes)
        )
        if self.num_classes is not None:
            self._check_classes(self.num_classes)
        self.batch_size = None if batch_size is None else check_positive_int("attack.batch_size", batch_size)
        self.reset_records()

    def __repr__(self) -> str:
        return (
            f"AutoAttack(norm={self.aa_norm}, eps={self.eps}, version={self.version}, "
            f"attacks={list(self.attacks)}, seed={self.seed})"
        )

    @property
    def eps(self) -> float:
        return self._eps

    @property
    def norm(self) -> str:
        return next(name for name, spelling in AA_NORM_NAMES.items() if spelling == self.aa_norm)

    @property
    def title(self) -> str:
        return f"AutoAttack ({self.version})"

    @property
    def flags(self) -> dict[str, dict[str, Any]]:
        return self._flags

    def reset_records(self) -> None:
        """Forget the flags and the wall time gathered so far (one evaluation's worth)."""
        super().reset_records()
        self._flags: dict[str, dict[str, Any]] = {}

    def records(self) -> dict[str, Any]:
        return {**super().records(), "flags": {name: dict(entry) for name, entry in self._flags.items()}}

    def restore_records(self, records: dict[str, Any]) -> None:
        super().restore_records(records)
        self._flags = {name: dict(entry) for name, entry in (records.get("flags") or {}).items()}

    def _check_classes(self, num_classes: int) -> None:
        for name, needed in MIN_CLASSES.items():
            if name in self.attacks and num_classes < needed:
                raise ConfigError(
                    f"attack.version={self.version!r} runs {name}, which needs at least {needed} classes; "
                    f"the model has {num_classes} (use attack.version=custom attack.attacks=[apgd-ce,fab,square])"
                )

    def _record(self, messages: list[str]) -> None:
        fired: dict[str, str] = {}
        for message in messages:
            fired.setdefault(flag_name(message), message)
        for name, message in fired.items():
            entry = self._flags.setdefault(name, {"batches": 0, "message": message})
            entry["batches"] += 1

    def _official(self, model: nn.Module, device: torch.device, num_classes: int) -> OfficialAutoAttack:
        attacks = list(self.attacks) if self.version == "custom" else None
        adversary = OfficialAutoAttack(
            model,
            attacks=attacks,
            device=device,
            eps=self.eps,
            norm=self.aa_norm,
            seed=self.seed,
            version=self.version,
        )
        if self.version == "custom":
            # The official defaults for a custom list are its own constructor's (5 restarts for APGD and
            # FAB); a custom list here means "these attacks as the standard version runs them".
            adversary.apgd.n_restarts = 1
            adversary.fab.n_restarts = 1
            adversary.apgd_targeted.n_restarts = 1
            adversary.fab.n_target_classes = 9
            adversary.apgd_targeted.n_target_classes = 9
        targets = num_classes - 1
        if adversary.apgd_targeted.n_target_classes > targets or adversary.fab.n_target_classes > targets:
            # Let the official check word the flag, then use every wrong class (see the module docstring).
            official_checks.check_n_classes(
                num_classes,
                list(self.attacks),
                adversary.apgd_targeted.n_target_classes,
                adversary.fab.n_target_classes,
                logger=adversary.logger,
            )
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, targets)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, targets)
        return adversary

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"AutoAttack needs inputs in [0, 1] (it clips to that box); got [{x.min().item():.3g}, "
                f"{x.max().item():.3g}] — normalise inside the model, not in the data"
            )
        if self.eps == 0 or len(x) == 0:
            return x
        network = _FloatLogits(model)
        with torch.no_grad():
            num_classes = network(x[:1]).shape[1]
        self._check_classes(num_classes)
        # The dynamic-defense check counts calls in a module-level dict that the official code never
        # resets; reset it so one dynamic model does not flag every later one.
        for key in official_checks.funcs:
            official_checks.funcs[key] = 0
        start = time.perf_counter()
        with _captured_flags() as collector, _frozen_parameters(model), _caller_rng_restored(x.device):
            adversary = self._official(network, x.device, num_classes)
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size or len(x))
        self.seconds += time.perf_counter() - start
        self._record(collector.messages)
        return x_adv.to(x.dtype)
