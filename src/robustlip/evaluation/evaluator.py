"""The robust evaluation as a library object: any model, any data, no Lightning inside.

    from robustlip.attacks import PGD, AutoAttack
    from robustlip.evaluation import evaluate
    result = evaluate(model, (x_test, y_test), {"pgd": PGD(eps=8 / 255), "autoattack": AutoAttack(eps=8 / 255)},
                      n_examples=1000, subset="first")
    result.metrics["test/adv_acc"], result.uncertainty["test/adv_acc"], result.to_json()

What it measures on each split (``test``; ``train`` when asked, e.g. a DataModule's un-augmented
training set) is what the paper's tables report, in percent like the paper: ``acc``, ``adv_acc`` (with
several attacks ``adv_acc/<name>`` for each and ``adv_acc`` their pointwise worst case: an example
counts as robust only if every attack failed on it, as RobustBench reports an ensemble),
``lipschitz`` (Eq. 3) and any extra metric, then ``gap`` and ``adv_gap``; every accuracy with its
number of examples and Wilson 95% interval, every mean with its standard error; each metric's wall
time; the probes' sections (ε sweep, gradient-masking checks) and the attacks' own flags.

* **Reproducible.** Each measurement of each batch draws from its own seeded stream
  (:mod:`robustlip.evaluation.streams`): the numbers depend on the model, the data and ``seed`` only.
* **Exact on several processes.** Under an initialised ``torch.distributed`` process group each process
  measures its share of the batches (batch k on process k mod world size, no padding) and the sum
  states are summed: the numbers are those of one process (:mod:`robustlip.evaluation.batches`).
* **Stops in seconds, resumes to the same numbers.** ``stop()`` (e.g. "a SIGTERM arrived") is asked
  before every forward pass of the model, so a stop comes within one forward pass, even inside
  AutoAttack's sub-attacks; :class:`EvaluationStopped` carries what was measured. With ``resume_dir``
  the measured batches are kept on disk and a rerun with the same arguments measures only the rest
  (:mod:`robustlip.evaluation.store`).
* **Budgets that say what they cover.** ``n_examples`` bounds the test set (``subset="seeded"``:
  drawn with the seed; ``"first"``: RobustBench's first points); ``train_examples`` bounds the
  training set, and by default (``"auto"``) bounds it to the test budget when an attack is expensive
  (AutoAttack): a whole training set under AutoAttack costs hours. What each split will see is said
  before any work, and a time estimate after the first batch.

The Lightning callback :class:`robustlip.callbacks.RobustEvaluation` is a thin adapter over
:class:`Evaluator`: ``robustlip-train`` and ``robustlip-eval`` measure with the same code.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustlip.attacks.base import Attack, model_mode
from robustlip.attacks.variants import unsupported
from robustlip.core.errors import ConfigError, check_choice, check_non_negative, check_positive_int
from robustlip.core.results import chance_band, with_gaps
from robustlip.evaluation.batches import batch_indices, gather_objects, loader_of, process, subset
from robustlip.evaluation.gradient_masking import GradientMaskingWarning, attack_comparison, merge_flags
from robustlip.evaluation.meters import SplitMeter
from robustlip.evaluation.probes import Probe
from robustlip.evaluation.result import EvalResult
from robustlip.evaluation.store import ResumeStore, fingerprint
from robustlip.evaluation.streams import seeded
from robustlip.metrics.accuracy import AdversarialAccuracy, CleanAccuracy, WorstCaseAccuracy
from robustlip.metrics.base import ExampleMetric

log = logging.getLogger(__name__)

#: Precisions of the model's forward pass (Lightning's names): autocast dtype, None for float32.
PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
#: Splits in the order they are measured and reported.
SPLITS = ("test", "train")

Progress = Callable[[int, str], AbstractContextManager[Callable[[], None]]]


class EvaluationStopped(Exception):
    """A stop was requested (SIGTERM, Ctrl-C) during an evaluation; ``result`` is what it had measured."""

    def __init__(self, result: EvalResult | None = None) -> None:
        super().__init__("evaluation stopped by a request")
        self.result = result


class GuardedModel(nn.Module):
    """The model as the measurements see it: a requested stop ends the evaluation at the next forward pass.

    Every attack, however long (AutoAttack's Square runs 5,000 queries on one batch), calls the model
    over and over: asking ``stop()`` there stops any of them within one forward pass, where a check
    between batches would wait for the whole batch. ``autocast`` runs the forward pass in bf16/fp16
    (the attacks cast the logits to float32 for their own arithmetic).
    """

    def __init__(self, model: nn.Module, stop: Callable[[], bool] | None = None, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.stop = stop
        self.autocast = autocast

    def forward(self, x: Tensor) -> Tensor:
        if self.stop is not None and self.stop():
            raise EvaluationStopped
        if self.autocast is None:
            return self.model(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast):
            return self.model(x)


@contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Metric states and attacks must not be inference tensors, whatever loop calls us."""
    with torch.inference_mode(False):
        yield


@contextmanager
def rich_progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar (the command line's); ``advance()`` moves it by one batch."""
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


@contextmanager
def no_progress(total: int, description: str) -> Iterator[Callable[[], None]]:
    yield lambda: None


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: a time estimate as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Evaluator:
    """What to measure: attacks, metrics, probes and the seed, built once and run on any model and data.

    Args:
        attacks: one attack (its accuracy is ``adv_acc``), several by name (``adv_acc/<name>`` each and
            ``adv_acc`` their pointwise worst case, on the same examples), or None (clean accuracy only).
        lipschitz: the Eq. 3 estimator (``metrics.LocalLipschitz``); None skips the Lipschitz estimate.
        metrics: more metrics (``metrics.base`` protocol), measured on every split after the paper's.
        probes: test-set probes (``EpsSweep``, ``GradientMaskingChecks``): they vary the first PGD-like
            attack; what they cannot run with the attacks given is decided here, before any work.
        seed: seed of the evaluation's random streams (None: the global RNG, not reproducible).
        attack_gap_warning: with several attacks, warn when one is more than this many points above the
            worst case (it overestimates robustness: a sign of gradient masking).
    """

    def __init__(
        self,
        attacks: Attack | Mapping[str, Attack] | None = None,
        *,
        lipschitz: ExampleMetric | None = None,
        metrics: Sequence[ExampleMetric] | Mapping[str, ExampleMetric] = (),
        probes: Sequence[Probe] = (),
        seed: int | None = 0,
        attack_gap_warning: float = 3.0,
    ) -> None:
        #: Several attacks by name (each one's accuracy and their worst case), or one attack alone.
        self.ensemble = isinstance(attacks, Mapping)
        if isinstance(attacks, Mapping):
            self.attacks = {str(name): attack for name, attack in attacks.items() if attack is not None}
            for name in self.attacks:
                if not name or "." in name or "/" in name:
                    raise ConfigError(f"attacks.{name}: an attack's name must be non-empty, without '.' or '/'")
        elif attacks is not None:
            self.attacks = {type(attacks).__name__.lower(): attacks}
        else:
            self.attacks = {}
        for name, attack in self.attacks.items():
            if not isinstance(attack, Attack):
                raise ConfigError(f"attacks.{name}: a {type(attack).__name__} is not a robustlip attack; subclass "
                                  "robustlip.attacks.Attack (perturb(model, x, y) -> x_adv) to declare what the "
                                  "evaluation needs (docs/architecture.md, 'Add an attack')")
        self.lipschitz = lipschitz
        self.seed = seed
        self.attack_gap_warning = check_non_negative("attack_gap_warning", attack_gap_warning)
        extra = list(metrics.values()) if isinstance(metrics, Mapping) else list(metrics or [])
        #: The metric objects measured on every split, in order (the attacks' random starts first).
        self.measurements: list[ExampleMetric] = [
            CleanAccuracy(),
            *self._adversarial_metrics(),
            *([lipschitz] if lipschitz is not None else []),
            *(m for m in extra if m is not None),
        ]
        names = [m.name for m in self.measurements]
        if len(set(names)) != len(names):
            raise ConfigError(f"metrics: two metrics share a name in {names}; rename one")
        self.probes = list(probes)
        self.probe_attack, self.probe_source = self._probe_attack()
        if self.probe_attack is None:
            self.probes = []
        for probe in self.probes:  # what each probe can run with this attack, decided before any work
            probe.prepare(self.probe_attack)

    @property
    def expensive(self) -> bool:
        """Whether an attack costs hundreds of forward passes per example (AutoAttack)."""
        return any(attack.expensive for attack in self.attacks.values())

    def _adversarial_metrics(self) -> list[ExampleMetric]:
        if not self.ensemble:
            return [AdversarialAccuracy(attack) for attack in self.attacks.values()]
        per_attack = [AdversarialAccuracy(attack, name=f"adv_acc/{name}") for name, attack in self.attacks.items()]
        return [*per_attack, WorstCaseAccuracy([m.name for m in per_attack])] if per_attack else []

    def _probe_attack(self) -> tuple[Attack | None, str | None]:
        """The attack the probes vary and its metric's name.

        The first attack whose ε variants exist (a threat model and a step, possibly inside a wrapper such
        as Multi-Targeted: PGD-like), else a single attack itself, whose probes then record which checks
        they skip and why. AutoAttack has its own checks (its flags): alone, the probes are skipped.
        """
        candidates = [(attack, f"adv_acc/{name}" if self.ensemble else AdversarialAccuracy.name)
                      for name, attack in self.attacks.items()]
        for attack, source in candidates:
            if unsupported(attack, "eps") is None:
                return attack, source
        if not self.ensemble and candidates and not candidates[0][0].reports_own_checks:
            return candidates[0]
        if self.probes and candidates:
            log.warning("the ε sweep and gradient-masking probes vary a PGD-like attack (threat model, step size); "
                        "none among %s: probes skipped", [type(a).__name__ for a, _ in candidates])
        return None, None

    def describe(self) -> dict[str, Any]:
        """What this evaluator measures, as results.json records it (the reprs of the attacks and the estimator)."""
        single = next(iter(self.attacks.values())) if self.attacks and not self.ensemble else None
        return {
            "attack": repr(single),
            **({"attacks": {name: repr(attack) for name, attack in self.attacks.items()}} if self.ensemble else {}),
            "lipschitz": repr(self.lipschitz),
            "seed": self.seed,
        }

    def plan(self, data: Any, *, n_examples: int | None = None, subset: str = "seeded", train: Any = True,
             train_examples: int | str | None = "auto", batch_size: int = 256) -> Plan:
        """Which points each split will see, checked before any work (a budget larger than its split is one line).

        Args:
            data: a DataModule with ``test_dataloader()`` (and ``train_eval_dataloader()``), a DataLoader, a
                Dataset of ``(x, y)`` or an ``(x, y)`` pair of tensors: the test data.
            n_examples: test examples to measure (None: all), picked by ``subset``: ``seeded`` (drawn with the
                seed) or ``first`` (RobustBench's: the first points).
            train: also measure a training set: True takes a DataModule's ``train_eval_dataloader()`` (nothing
                for other data), False none, or the training data itself in any form ``data`` takes.
            train_examples: training examples: ``auto`` (all of them, or as many as the test points when an
                attack is expensive), None (all) or a number; picked like the test examples.
            batch_size: for data given as a Dataset or tensors (a DataLoader or DataModule keeps its own).
        """
        rule = check_choice("subset", subset, ("seeded", "first"))
        seed = self.seed or 0
        test_loader, train_loader = _loaders(data, train, batch_size)
        full = {"test": len(test_loader.dataset)}
        loaders = {"test": limited(test_loader, n_examples, seed, rule, "n_examples", "test")}
        if train_loader is not None:
            full["train"] = len(train_loader.dataset)
            budget = train_budget(train_examples, self, len(loaders["test"].dataset))
            if train_examples == "auto" and budget is not None:
                budget = min(budget, full["train"])
            loaders["train"] = limited(train_loader, budget, seed, rule, "train_examples", "train")
        return Plan(loaders, full, rule, n_examples)

    def run(self, model: nn.Module, plan: Plan, *, device: str | torch.device | None = None, precision: str = "32",
            stop: Callable[[], bool] | None = None, resume_dir: str | None = None, progress: bool = False,
            verbose: bool = True, warnings_before: Sequence[str] = ()) -> EvalResult:
        """Measure ``model`` on the points of ``plan``.

        Args:
            device: None (where the model is), ``auto`` (the GPU if there is one) or a device name.
            precision: ``32``, ``bf16-mixed`` or ``16-mixed`` for the model's forward pass.
            stop: asked before every forward pass; True ends the evaluation with :class:`EvaluationStopped`.
            resume_dir: keep the measured batches in this folder and continue from them when rerun.
            progress: show a progress bar; verbose: print the plan and the time estimates (else log them).
            warnings_before: warnings to put first in the result's (e.g. a training run's health).
        """
        device = resolve_device(device, model)
        model = model.to(device)
        say = _printer(verbose)
        say(plan.describe(self))
        store = None
        if resume_dir is not None:
            rank, world_size = process()
            store = ResumeStore(resume_dir, fingerprint(
                self.describe(), [type(m).__name__ for m in self.measurements], [repr(p) for p in self.probes],
                {split: _data_identity(loader) for split, loader in plan.loaders.items()}, device.type, precision,
                model=model), rank, world_size)
        session = self.session(model, device=device, stop=stop, precision=precision, store=store,
                               progress=rich_progress if progress else None, say=say)
        with model_mode(model, "eval"):
            for split, loader in plan.loaders.items():
                session.run(split, loader)
            result = session.result(warnings_before)
        result.setup.update({"n_examples": plan.n_examples, "subset": plan.rule,
                             **({"train_examples": result.examples.get("train")} if "train" in plan.loaders else {})})
        if store is not None:
            store.clear()
        return result

    def session(self, model: nn.Module, *, device: torch.device | str | None = None, stop: Callable[[], bool] | None = None,
                precision: str | None = None, store: ResumeStore | None = None, progress: Progress | None = None,
                say: Callable[[str], None] | None = None) -> Session:
        """One evaluation of ``model``: feed it batches (:meth:`Session.measure`) or loaders (:meth:`Session.run`)."""
        return Session(self, model, device=device, stop=stop, precision=precision, store=store, progress=progress, say=say)


class Session:
    """One evaluation of one model by an :class:`Evaluator`: the sum states of each split, the probes, the store."""

    def __init__(self, evaluator: Evaluator, model: nn.Module, *, device: torch.device | str | None = None,
                 stop: Callable[[], bool] | None = None, precision: str | None = None, store: ResumeStore | None = None,
                 progress: Progress | None = None, say: Callable[[str], None] | None = None) -> None:
        self.evaluator = evaluator
        self.device = torch.device(device) if device is not None else model_device(model)
        autocast = PRECISIONS[check_choice("precision", str(precision or "32"), tuple(PRECISIONS))]
        self.model = GuardedModel(model, stop, autocast)
        self.stop = stop
        self.store = store
        self.progress = progress or no_progress
        self.say = say or log.info
        self.meters: dict[str, SplitMeter] = {}
        #: The batches measured so far on each split (their seeding indices), kept by the store.
        self.done: dict[str, list[int]] = {}
        self.num_classes: int | None = None
        with outside_inference_mode():
            for attack in evaluator.attacks.values():
                attack.reset_records()
            for probe in evaluator.probes:
                probe.to(self.device)
                probe.reset()
        state = store.load() if store is not None else None
        if state is not None:
            self._restore(state)

    # -- the state a stopped evaluation keeps -----------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "splits": {split: meter.snapshot() for split, meter in self.meters.items()},
            "done": {split: list(ids) for split, ids in self.done.items()},
            "probes": [probe.snapshot() for probe in self.evaluator.probes],
            "attacks": {name: attack.records() for name, attack in self.evaluator.attacks.items()},
            "num_classes": self.num_classes,
        }

    def _restore(self, state: dict[str, Any], announce: bool = True) -> None:
        with outside_inference_mode():
            for split, meter in self.meters.items():
                if split not in state["splits"]:
                    meter.reset()  # started after the snapshot: it had measured nothing then
            for split, snapshot in state["splits"].items():
                self.meter(split).restore(snapshot)
            for probe, snapshot in zip(self.evaluator.probes, state["probes"]):
                probe.restore(snapshot)
        for name, records in state["attacks"].items():
            self.evaluator.attacks[name].restore_records(records)
        self.done = {split: list(ids) for split, ids in state["done"].items()}
        self.num_classes = state["num_classes"]
        if announce:
            measured = ", ".join(f"{self.meters[s].count()} {s} examples" for s in self.meters) or "nothing"
            self.say(f"resuming the evaluation where it stopped: {measured} already measured")

    def save(self, force: bool = False) -> None:
        if self.store is not None:
            self.store.save(self.state(), force=force)

    # -- measuring ----------------------------------------------------------------------------------
    def meter(self, split: str) -> SplitMeter:
        if split not in self.meters:
            with outside_inference_mode():
                self.meters[split] = SplitMeter(self.evaluator.measurements).to(self.device)
        return self.meters[split]

    def measure(self, split: str, batch_idx: int, x: Tensor, y: Tensor, logits: Tensor | None = None) -> None:
        """Measure one batch (already on the device) with every metric; the probes see the test batches."""
        evaluator = self.evaluator

        def stream(name: str) -> AbstractContextManager:
            return seeded(evaluator.seed, split, batch_idx, self.device, name)

        # A batch counts whole or not at all: a stop in its middle (after some metrics or probes took their
        # share) puts every state back as it was, so the kept state and the batches marked done agree.
        before = self.state() if self.stop is not None else None
        try:
            with outside_inference_mode():
                x, y = x.clone(), y.clone()
                logits = None if logits is None else logits.detach().clone()
                batch = self.meter(split).update(self.model, x, y, logits, stream)
                self.num_classes = int(batch.logits.shape[1])
                if split == "test" and evaluator.probe_attack is not None:
                    adv = batch.adversarial.get(evaluator.probe_source)
                    for probe in evaluator.probes:
                        if probe.wants(batch_idx):
                            with stream(f"probe:{probe.section}"):
                                probe.observe(self.model, x, y, evaluator.probe_attack, batch.logits, adv)
        except EvaluationStopped:
            if before is not None:
                self._restore(before, announce=False)
            raise
        self.done.setdefault(split, []).append(batch_idx)

    def run(self, split: str, loader: DataLoader, *, limit_batches: int | None = None,
            shard: tuple[int, int] | None = None) -> None:
        """One pass over ``loader`` (sequential batches) on this process's share, less the batches already measured.

        ``limit_batches`` keeps only the first batches (Lightning's ``limit_test_batches``); ``shard`` is
        (rank, world size), by default this process's in ``torch.distributed``. A requested stop raises
        :class:`EvaluationStopped` with what was measured, after keeping it in the store.
        """
        rank, world_size = shard if shard is not None else process()
        batches = batch_indices(len(loader.dataset), loader.batch_size)[:limit_batches]
        done = set(self.done.get(split, []))
        mine = [k for k in range(len(batches)) if k % world_size == rank and k not in done]
        # Every process holds a meter for every split it was asked to run, even with no batch of its own
        # (32 points in one batch on two processes): the sums in result() are collectives that all must join.
        self.meter(split)
        if not mine:
            return
        total = sum(len(batches[k]) for k in mine)
        with self.progress(len(mine), f"robust evaluation ({split})") as advance:
            started = time.perf_counter()
            try:
                for position, (x, y) in enumerate(loader_of(loader, [batches[k] for k in mine])):
                    if self.stop is not None and self.stop():
                        raise EvaluationStopped
                    self.measure(split, mine[position], x.to(self.device), y.to(self.device))
                    if position == 0 and len(mine) > 1:
                        elapsed = time.perf_counter() - started
                        self.say(f"{split}: the first batch ({len(x)} points) took {elapsed:.1f} s; "
                                 f"about {duration(elapsed * total / len(x))} for this split's {total} points")
                    self.save()
                    advance()
            except EvaluationStopped:
                self.save(force=True)
                raise EvaluationStopped(self.partial()) from None
        self.save(force=True)

    # -- the numbers ----------------------------------------------------------------------------------
    def partial(self) -> EvalResult:
        """What this process measured so far (no collective: usable while stopping)."""
        with outside_inference_mode():
            metrics: dict[str, float] = {}
            examples = {}
            for split in SPLITS:
                meter = self.meters.get(split)
                if meter is not None and meter.count() > 0:
                    metrics.update(meter.compute(split))
                    examples[split] = meter.count()
        return EvalResult(with_gaps(metrics), examples=examples, setup=self.evaluator.describe(), complete=False)

    def result(self, warnings_before: Sequence[str] = (), advice: str | None = None, report: bool = True) -> EvalResult:
        """The numbers over every process (a collective: every process calls it), and the warnings they give.

        ``warnings_before`` (e.g. a training run's health warnings) come first in the result's warnings;
        ``advice`` is appended to a chance-level warning. With ``report`` the warnings reach the log
        (and the probes' and the attacks' as :class:`GradientMaskingWarning`) on the first process.
        """
        evaluator = self.evaluator
        with outside_inference_mode():
            metrics: dict[str, float] = {}
            uncertainty: dict[str, dict[str, Any]] = {}
            seconds = {}
            for split in SPLITS:
                if split in self.meters:
                    values, records = self.meters[split].summary(split)
                    metrics.update(values)
                    uncertainty.update(records)
                    seconds[split] = dict(self.meters[split].seconds)
            sections = {probe.section: probe.results() for probe in evaluator.probes}
        # Wall time of the slowest process: what the evaluation cost in time.
        every = gather_objects(seconds)
        seconds = {split: {name: max(s[split][name] for s in every if split in s) for name in seconds[split]}
                   for split in seconds}
        flags = merge_flags(gather_objects({name: attack.flags for name, attack in evaluator.attacks.items()
                                            if attack.flags}))
        masking = attack_comparison(evaluator.attacks, metrics, flags, evaluator.attack_gap_warning, evaluator.ensemble)
        if masking:
            sections["gradient_masking"] = masking
        examples = {split: uncertainty[f"{split}/acc"]["n"] for split in SPLITS if f"{split}/acc" in uncertainty}
        result = EvalResult(with_gaps(metrics), uncertainty, examples, seconds, sections, list(warnings_before),
                            evaluator.describe(), writers=list(evaluator.probes))
        chance = self._chance_warning(result, advice)
        if chance is not None:
            result.warnings.append(chance)
        if report and process()[0] == 0:
            for probe in evaluator.probes:
                probe.report(sections[probe.section])
            for line in masking.get("warnings", []):
                warnings.warn(line, GradientMaskingWarning, stacklevel=2)
            if chance is not None:
                log.warning(chance)
        return result

    def _chance_warning(self, result: EvalResult, advice: str | None) -> str | None:
        """A test accuracy that cannot be told from guessing: a run that exits 0 but learned nothing."""
        acc = result.metrics.get("test/acc")
        if acc is None or not self.num_classes or any("chance level" in w for w in result.warnings):
            return None
        chance, ceiling = chance_band(self.num_classes, result.examples.get("test"))
        if acc > ceiling:
            return None
        return (f"test/acc is {acc:.1f} %, chance level for {self.num_classes} classes ({chance:.1f} %): the model "
                f"predicts no better than guessing{'; ' + advice if advice else ''}")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """``None``: where the model is; ``"auto"``: the GPU when there is one; else the device named."""
    if device is None:
        return model_device(model)
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={str(device)!r} is not allowed: this machine has no CUDA GPU (use device=cpu or auto)")
    return device


def as_loader(data: Any, batch_size: int, key: str = "data") -> DataLoader:
    """A sequential DataLoader of ``(x, y)`` batches from a DataLoader, a Dataset or an ``(x, y)`` pair of tensors."""
    if isinstance(data, DataLoader):
        if data.batch_size is None:
            raise ConfigError(f"{key}: a DataLoader with a batch_sampler cannot be dealt out in batches; "
                              "give its dataset or a loader with batch_size")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ConfigError(f"{key}: {len(x)} inputs but {len(y)} labels")
        data = TensorDataset(x, y)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise ConfigError(f"{key}: {type(data).__name__} is not data an evaluation can read; give a DataLoader, "
                      "a Dataset of (x, y), an (x, y) pair of tensors, or a DataModule with test_dataloader()")


def limited(loader: DataLoader, n_examples: int | None, seed: int, rule: str, key: str, split: str) -> DataLoader:
    """``loader`` restricted to ``n_examples`` of its examples (``rule``: seeded or first), same batch size and workers."""
    if n_examples is None:
        return loader
    picked = subset(loader.dataset, check_positive_int(key, n_examples), seed, rule, key, split)
    return DataLoader(picked, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


def train_budget(train_examples: int | str | None, evaluator: Evaluator, test_size: int) -> int | None:
    """How many training examples to measure: ``auto`` is all of them, or the test budget with an expensive attack."""
    if train_examples == "auto":
        return test_size if evaluator.expensive else None
    return None if train_examples is None else check_positive_int("train_examples", train_examples)


@dataclass
class Plan:
    """Which points each split will see: the loaders of the passes, the sizes they were picked from, the rule."""

    loaders: dict[str, DataLoader]
    #: The size of each split before ``n_examples``/``train_examples`` picked from it.
    full: dict[str, int]
    rule: str
    n_examples: int | None = None

    def describe(self, evaluator: Evaluator) -> str:
        """One line per split, said before any work: how many points each attack will see."""
        attacks = ", ".join(f"{name} ({attack.label})" for name, attack in evaluator.attacks.items()) or "no attack"
        extra = "".join(f", {m.name}" for m in evaluator.measurements
                        if not isinstance(m, (CleanAccuracy, AdversarialAccuracy, WorstCaseAccuracy)))
        worst = " (and their pointwise worst case)" if evaluator.ensemble and len(evaluator.attacks) > 1 else ""
        lines = [f"evaluation: clean accuracy, {attacks}{worst}{extra}"]
        for split, loader in self.loaders.items():
            n, of = len(loader.dataset), self.full[split]
            note = f" of {of} ({self.rule} subset)" if of != n else ""
            if split == "train" and of != n and evaluator.expensive:
                note += (", bounded because " + ", ".join(name for name, a in evaluator.attacks.items() if a.expensive)
                         + " is expensive (train_examples=null measures all)")
            lines.append(f"  {split}: {n} points{note}, each seen by every attack above")
        if evaluator.probes:
            lines.append("  probes on the test points: " + ", ".join(p.section for p in evaluator.probes))
        return "\n".join(lines)


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Attack | Mapping[str, Attack] | None = None,
    *,
    lipschitz: ExampleMetric | None = None,
    metrics: Sequence[ExampleMetric] = (),
    probes: Sequence[Probe] = (),
    seed: int | None = 0,
    attack_gap_warning: float = 3.0,
    n_examples: int | None = None,
    subset: str = "seeded",
    train: Any = True,
    train_examples: int | str | None = "auto",
    batch_size: int = 256,
    **options: Any,
) -> EvalResult:
    """Evaluate ``model`` (inputs in [0, 1], logits out) on ``data`` under ``attacks``: numbers, intervals, flags, times.

    Args:
        model: any ``nn.Module`` mapping images in [0, 1] to logits ``[N, num_classes]`` (normalise inside it).
        data: the test data: a DataModule with ``test_dataloader()`` (and ``train_eval_dataloader()``), a
            DataLoader, a Dataset of ``(x, y)`` or an ``(x, y)`` pair of tensors.
        attacks: one attack, several by name, or None; lipschitz, metrics, probes, seed,
            attack_gap_warning: what to measure (see :class:`Evaluator`).
        n_examples, subset, train, train_examples, batch_size: which points (see :meth:`Evaluator.plan`).
        options: how to run (``device``, ``precision``, ``stop``, ``resume_dir``, ``progress``, ``verbose``,
            ``warnings_before``; see :meth:`Evaluator.run`).
    """
    evaluator = Evaluator(attacks, lipschitz=lipschitz, metrics=metrics, probes=probes, seed=seed,
                          attack_gap_warning=attack_gap_warning)
    plan = evaluator.plan(data, n_examples=n_examples, subset=subset, train=train, train_examples=train_examples,
                          batch_size=batch_size)
    return evaluator.run(model, plan, **options)


def _loaders(data: Any, train: Any, batch_size: int) -> tuple[DataLoader, DataLoader | None]:
    if hasattr(data, "test_dataloader"):
        if hasattr(data, "setup"):
            data.setup("test")  # a DataModule's splits (robustlip's load once; calling it again is free)
        test = as_loader(data.test_dataloader(), batch_size)
        if train is True:
            train = data.train_eval_dataloader() if hasattr(data, "train_eval_dataloader") else None
    else:
        test = as_loader(data, batch_size)
        train = None if train is True else train
    return test, (None if train is None or train is False else as_loader(train, batch_size, "train"))


def _data_identity(loader: DataLoader) -> tuple:
    """What identifies the examples of a pass cheaply: their number, the batch size, the first batch's bytes."""
    first = next(iter(loader_of(loader, batch_indices(len(loader.dataset), loader.batch_size)[:1])), None)
    digest = hashlib.sha256()
    for tensor in first or ():
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return len(loader.dataset), loader.batch_size, digest.hexdigest()[:20]


def _printer(verbose: bool) -> Callable[[str], None]:
    if not verbose:
        return log.info

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return say


__all__ = ["EvaluationStopped", "Evaluator", "GuardedModel", "Session", "evaluate"]
