"""RobustEvaluation: the numbers of the paper's tables, measured by one callback (DESIGN.md).

At test time it measures, on the test set (the batches of Lightning's test loop) and on the
un-augmented training set (``datamodule.train_eval_dataloader()``, the full set unless
``data.train_eval_size`` picks a fixed, seeded subset):

    train/acc, test/acc, train/adv_acc, test/adv_acc, train/lipschitz, test/lipschitz,
    gap = train/acc - test/acc, adv_gap = train/adv_acc - test/adv_acc        (percent, as the paper)

and writes them to every logger and to ``results.json``, with optional probes (the ε sweep, the
gradient-masking checks) in their own sections. Every accuracy comes with its number of examples and
a Wilson 95% interval, every mean (the Lipschitz estimate) with its standard error (``uncertainty``).

Several attacks (``attacks={"pgd": PGD(...), "autoattack": AutoAttack(...)}``) are all run on the
same examples: ``test/adv_acc/<name>`` is each one's accuracy and ``test/adv_acc`` the pointwise
worst case (an example counts as robust only if every attack failed on it), as RobustBench reports
it. Each attack's wall time, AutoAttack's own flags and each attack's distance to the worst case go
to ``results.json`` (``seconds``, ``gradient_masking``), with a warning when an attack overestimates
robustness by more than ``attack_gap_warning`` points. ``n_examples`` evaluates a subset of the test
set chosen with the evaluation's seed (the same examples for every attack, in every run).

During fitting it can also attack the validation set every ``val_every_n_epochs`` epochs and log
``val/adv_acc`` (monitor it with a ``ModelCheckpoint`` whose ``every_n_epochs`` is the same N;
``conf/callbacks/adv_checkpoint.yaml`` does that).

Reproducibility: every measurement of every batch (the attack's random start, the Lipschitz search's
start, each probe) draws from its own stream, seeded with ``(seed, split, batch index, measurement
name)`` inside ``torch.random.fork_rng``. So the numbers depend on the model, the data and the seed
only — not on what ran before (``robustlip-eval`` on a checkpoint reproduces the training run's
numbers), not on which other measurements ran (the Lipschitz estimate of a checkpoint is the same
whichever attack is chosen), and evaluating never shifts the training run's own random stream.

Exactness: counts and sums are sum-state torchmetrics. On one device (without ``n_examples``) the
test set comes from Lightning's test loop. On several, Lightning's distributed sampler would pad the
test set with repeated examples, so the callback instead deals the batches of
``datamodule.test_dataloader()`` (and of the training set) out to the processes itself — batch k to
process k mod world size, each batch with its single-process index and content — and sums the states.
Since every batch's randomness is seeded by that index, the numbers are those of one process, for
any number of devices. ``val/adv_acc`` is a monitoring signal and keeps Lightning's (padded)
validation shards.

Inference mode: attacks need autograd, so every update runs under ``torch.inference_mode(False)``
on cloned inputs; the callback works under ``trainer.fit``, ``validate`` and ``test`` even when the
Trainer's ``inference_mode`` is left on.
"""

from __future__ import annotations

import logging
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from robustlip.attacks.base import Attack
from robustlip.callbacks.eps_sweep import Probe
from robustlip.callbacks.gradient_masking import GradientMaskingWarning
from robustlip.metrics.accuracy import AdversarialAccuracy, CleanAccuracy, CorrectFraction, WorstCaseAccuracy
from robustlip.metrics.base import EvalBatch, ExampleMetric, SumState
from robustlip.runs.errors import ConfigError, check_non_negative, check_positive_int
from robustlip.runs.files import write_json_atomic
from robustlip.runs.results import RESULT_KEYS, chance_band, with_gaps

log = logging.getLogger(__name__)

#: Separate random streams for the three splits the callback attacks.
SPLIT_STREAMS = {"test": 0, "train": 1, "val": 2}


@contextmanager
def seeded(seed: int | None, split: str, batch_idx: int, device: torch.device, measurement: str = "") -> Iterator[None]:
    """Run a block on its own random stream, restoring the global one afterwards (None: no seeding).

    ``measurement`` (a metric's or probe's name) gives each measurement of a batch a stream of its own,
    so one measurement's draws never depend on how many another one made before it.
    """
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    stream = zlib.crc32(measurement.encode()) if measurement else 0
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed((int(seed) * 1_000_003 + SPLIT_STREAMS[split] * 7_919 + batch_idx + stream * 104_729) % (2**63))
        yield


@contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Metric states and attacks must not be inference tensors, whatever loop calls us."""
    with torch.inference_mode(False):
        yield


def batch_shard(loader: DataLoader, rank: int, world_size: int) -> tuple[DataLoader, list[int]]:
    """This process's share of ``loader``'s batches (batch k goes to process k mod world size).

    Returns the loader of those batches and their indices in the single-process order. Each batch
    holds exactly the examples it holds on one process, and unlike a DistributedSampler no example is
    repeated to even out the shards: summing the per-process states gives the one-process numbers,
    including the random starts (seeded by the batch index, see :func:`seeded`).
    """
    n, size = len(loader.dataset), loader.batch_size
    batches = [list(range(start, min(start + size, n))) for start in range(0, n, size)]
    mine = [k for k in range(len(batches)) if k % world_size == rank]
    shard = DataLoader(loader.dataset, batch_sampler=[batches[k] for k in mine], num_workers=loader.num_workers,
                       collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    return shard, mine


def seeded_subset(dataset: Dataset, n_examples: int | None, seed: int) -> Dataset:
    """``n_examples`` examples of ``dataset`` drawn with ``seed`` (in their original order); all of it for None."""
    if n_examples is None:
        return dataset
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))[:n_examples]
    return Subset(dataset, sorted(pick.tolist()))


def gather_objects(value: Any) -> list[Any]:
    """``value`` of every process (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


@contextmanager
def progress(trainer: pl.Trainer | None, total: int, description: str) -> Iterator[Any]:
    """A progress bar for the callback's own passes: a task in Lightning's RichProgressBar while it is
    live, else a rich bar of its own; nothing without a progress bar or off the main process."""
    bar = trainer.progress_bar_callback if trainer is not None and trainer.is_global_zero else None
    if bar is None or not total:
        yield lambda: None
        return
    live = getattr(bar, "progress", None)
    if live is not None and getattr(getattr(live, "live", None), "is_started", False):
        task = live.add_task(description, total=total)
        try:
            yield lambda: live.update(task, advance=1, refresh=True)
        finally:
            live.remove_task(task)
        return
    from rich.progress import Progress

    with Progress(transient=True) as own:
        task = own.add_task(description, total=total)
        yield lambda: own.advance(task)


class SplitMeter(nn.Module):
    """The sum states of every metric on one split: ``{name: (sum, count)}`` of per-example values."""

    def __init__(self, metrics: Iterable[ExampleMetric]) -> None:
        super().__init__()
        self.metrics = list(metrics)
        self.states = nn.ModuleDict({metric.name: SumState(metric) for metric in self.metrics})
        #: Wall time spent in each metric on this process (the attacks' cost), seconds.
        self.seconds: dict[str, float] = {metric.name: 0.0 for metric in self.metrics}

    def update(self, model: nn.Module, x: Tensor, y: Tensor, logits: Tensor | None = None,
               stream: Callable[[str], AbstractContextManager] | None = None) -> EvalBatch:
        """Measure one batch with every metric, in order; returns the batch (clean and adversarial logits).

        ``logits`` are f(x) if the caller already has them (e.g. from ``test_step``): the clean
        forward pass is done once per batch and shared by every metric. ``stream(name)``, if given, is
        the random stream each metric runs in.
        """
        with torch.no_grad():
            clean = model(x) if logits is None else logits
        batch = EvalBatch(model, x, y, clean)
        for metric in self.metrics:
            start = time.perf_counter()
            with stream(metric.name) if stream is not None else nullcontext():
                self.states[metric.name].update(metric.per_example(batch))
            self.seconds[metric.name] += time.perf_counter() - start
        return batch

    def summary(self, prefix: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """``({prefix/name: value}, {prefix/name: uncertainty})`` from the states summed over every process.

        Every process must call it (the sum is a collective); metrics that saw no example are left out.
        """
        values, records = {}, {}
        for name, state in self.states.items():
            value, record = state.summary()
            if record["n"] > 0:
                values[f"{prefix}/{name}"], records[f"{prefix}/{name}"] = value, record
        return values, records

    def compute(self, prefix: str) -> dict[str, float]:
        return self.summary(prefix)[0]

    def count(self) -> int:
        """Examples seen on this process (by the first metric, clean accuracy: every metric sees every example)."""
        return int(next(iter(self.states.values())).count) if self.states else 0

    def reset(self) -> None:
        for state in self.states.values():
            state.reset()
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def _batch_logits(outputs: Any) -> Tensor | None:
    """Clean logits a ``test_step`` returned (``{"logits": ...}``), so they are not recomputed."""
    if isinstance(outputs, dict) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"].detach().clone()
    return None


class RobustEvaluation(pl.Callback):
    """Clean/adversarial accuracy, local Lipschitz estimate and gaps of the paper's tables.

    Args:
        attack: the evaluation adversary (``conf/attack``); None measures clean accuracy only. With
            ``attacks`` given it only serves the validation signal ``val/adv_acc``.
        lipschitz: the Eq. 3 estimator (``metrics.LocalLipschitz``); None skips train/test lipschitz.
        evaluate_train: also measure the training set (``datamodule.train_eval_dataloader()``).
        results_file: where ``results.json`` goes (None: do not write).
        val_every_n_epochs: attack the validation set every N epochs of fitting and log
            ``val/adv_acc`` (0: never). ``trainer.validate()`` attacks whenever N > 0.
        val_max_batches: bound the validation attack to the first batches (cheap monitoring).
        seed: seed of the evaluation's random streams (None: use the global RNG, not reproducible).
        sanity: gradient-masking checks (``GradientMaskingChecks``), run on the test set.
        eps_sweep: an ``EpsSweep`` probe: adversarial accuracy for a list of ε, CSV + PNG.
        extra_results: extra entries for ``results.json`` (e.g. the evaluated checkpoint).
        metrics: more metrics (``metrics.base`` protocol) measured on both splits after the paper's
            three (``acc``, ``adv_acc``, ``lipschitz``); a mapping's keys are only config names.
        attacks: several test attacks by name (``conf/attacks``): ``adv_acc/<name>`` for each and
            ``adv_acc`` their pointwise worst case, on the same examples. Replaces ``attack`` at test time.
        n_examples: evaluate this many test examples, drawn with ``seed`` (None: the whole test set).
        attack_gap_warning: warn when an attack's accuracy exceeds the worst case by more than this
            many points (a weaker attack that overestimates robustness: a sign of gradient masking).
    """

    def __init__(
        self,
        attack: Attack | None,
        lipschitz: ExampleMetric | None = None,
        evaluate_train: bool = True,
        results_file: str | Path | None = "results.json",
        val_every_n_epochs: int = 0,
        val_max_batches: int | None = None,
        seed: int | None = 0,
        sanity: Probe | None = None,
        eps_sweep: Probe | None = None,
        extra_results: dict[str, Any] | None = None,
        metrics: Mapping[str, ExampleMetric] | Sequence[ExampleMetric] | None = None,
        attacks: Mapping[str, Attack] | None = None,
        n_examples: int | None = None,
        attack_gap_warning: float = 3.0,
    ) -> None:
        super().__init__()
        self.attack = attack
        self.lipschitz = lipschitz
        self.evaluate_train = evaluate_train
        self.results_file = None if results_file is None else Path(results_file)
        self.val_every_n_epochs = int(val_every_n_epochs)
        self.val_max_batches = val_max_batches
        self.seed = seed
        self.probes: list[Probe] = [p for p in (sanity, eps_sweep) if p is not None]
        if attack is not None:
            for probe in self.probes:  # what each probe can run with this attack, decided before any work
                probe.prepare(attack)
        self.extra_results = dict(extra_results or {})
        self.attacks: dict[str, Attack] = {str(k): v for k, v in (attacks or {}).items() if v is not None}
        for name in self.attacks:
            if not name or "." in name or "/" in name:
                raise ConfigError(f"attacks.{name}: an attack's name must be non-empty, without '.' or '/'")
        self.n_examples = None if n_examples is None else check_positive_int("callbacks.robust_evaluation.n_examples", n_examples)
        self.attack_gap_warning = check_non_negative("callbacks.robust_evaluation.attack_gap_warning", attack_gap_warning)
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
            raise ConfigError(f"callbacks.robust_evaluation.metrics: two metrics share a name in {names}; rename one")
        self.probe_attack, self.probe_source = self._probe_attack()
        if self.probe_attack is None:
            self.probes = []
        self.test_meter = SplitMeter(self.measurements)
        #: Warnings for results.json and the final table: a training run's (TrainingHealth's, added by
        #: robustlip-train before the test) and a test accuracy at chance; ``advice`` is appended to the latter.
        self.warnings: list[str] = []
        self.advice: str | None = None
        self.num_classes: int | None = None
        #: The meters of the splits measured so far in this test (kept when a signal stops it).
        self._meters: dict[str, SplitMeter] = {}
        self.partial: dict[str, Any] | None = None
        self.val_adv_acc = CorrectFraction()
        self.metrics: dict[str, float] = {}
        self.uncertainty: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, dict[str, float]] = {}
        self.sections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def _adversarial_metrics(self) -> list[ExampleMetric]:
        if not self.attacks:
            return [AdversarialAccuracy(self.attack)] if self.attack is not None else []
        per_attack = [AdversarialAccuracy(attack, name=f"adv_acc/{name}") for name, attack in self.attacks.items()]
        return [*per_attack, WorstCaseAccuracy([m.name for m in per_attack])]

    def _probe_attack(self) -> tuple[Attack | None, str | None]:
        """The attack the probes vary and its metric's name.

        The first attack whose variants exist (a threat model and a step, possibly inside a wrapper
        such as Multi-Targeted: PGD-like), else the single ``attack`` itself, whose probes then record
        which checks they skip and why. AutoAttack has its own checks (its flags): alone, the ε sweep
        and the gradient-masking probes are skipped, with a log line.
        """
        from robustlip.attacks.variants import unsupported

        if self.attacks:
            candidates = [(attack, f"adv_acc/{name}") for name, attack in self.attacks.items()]
        else:
            candidates = [(self.attack, AdversarialAccuracy.name)] if self.attack is not None else []
        for attack, source in candidates:
            if unsupported(attack, "eps") is None:
                return attack, source
        if not self.attacks and candidates and not getattr(self.attack, "reports_own_checks", False):
            return candidates[0]
        if self.probes and candidates:
            log.warning("the ε sweep and gradient-masking probes vary a PGD-like attack (threat model, step size); "
                        "none among %s: probes skipped", [type(a).__name__ for a, _ in candidates])
        return None, None

    # -- validation: a cheap robustness signal while training -----------------------------------
    def _validating_adversarially(self, trainer: pl.Trainer) -> bool:
        if self.attack is None or self.val_every_n_epochs <= 0 or trainer.sanity_checking:
            return False
        if trainer.state.fn == "validate":
            return True
        return (trainer.current_epoch + 1) % self.val_every_n_epochs == 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        with outside_inference_mode():
            self.val_adv_acc.to(pl_module.device)
            self.val_adv_acc.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._validating_adversarially(trainer):
            return
        if self.val_max_batches is not None and batch_idx >= self.val_max_batches:
            return
        with outside_inference_mode(), seeded(self.seed, "val", batch_idx, pl_module.device):
            x, y = (t.clone() for t in batch)
            x_adv = self.attack(pl_module, x, y)
            with torch.no_grad():
                self.val_adv_acc.update(pl_module(x_adv), y)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._validating_adversarially(trainer):
            return
        with outside_inference_mode():
            value = self.val_adv_acc.compute()
        pl_module.log("val/adv_acc", value, prog_bar=True, sync_dist=False)

    # -- test: the paper's numbers ----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse an ``n_examples`` larger than the test set before any training or attacking starts."""
        datamodule = getattr(trainer, "datamodule", None)
        if self.n_examples is None or datamodule is None:
            return
        if getattr(datamodule, "test_set", None) is None and hasattr(datamodule, "setup"):
            datamodule.setup("test")
        test_set = getattr(datamodule, "test_set", None)
        if test_set is not None and self.n_examples > len(test_set):
            raise ConfigError(
                f"callbacks.robust_evaluation.n_examples={self.n_examples} is not allowed; the test set has "
                f"{len(test_set)} examples "
                f"(choose n_examples <= {len(test_set)}, or null for all of them)"
            )

    def _own_test_pass(self, trainer: pl.Trainer) -> bool:
        """Several processes, or a subset: the callback runs the test pass itself (module docstring)."""
        return trainer.world_size > 1 or self.n_examples is not None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._meters = {"test": self.test_meter}
        with outside_inference_mode():
            self.test_meter.to(pl_module.device)
            self.test_meter.reset()
            for probe in self.probes:
                probe.to(pl_module.device)
                probe.reset()
        for attack in {id(a): a for a in [self.attack, *self.attacks.values()] if a is not None}.values():
            if hasattr(attack, "reset_records"):
                attack.reset_records()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._own_test_pass(trainer):
            return
        x, y = batch
        self._measure(pl_module, self.test_meter, x, y, "test", batch_idx, _batch_logits(outputs))

    def _measure(self, model, meter: SplitMeter, x, y, split: str, batch_idx: int, logits=None) -> None:
        def stream(name: str) -> AbstractContextManager:
            return seeded(self.seed, split, batch_idx, model.device, name)

        with outside_inference_mode():
            x, y = x.clone(), y.clone()
            batch = meter.update(model, x, y, logits, stream)
            self.num_classes = int(batch.logits.shape[1])
            if split == "test" and self.probe_attack is not None:
                adv = batch.adversarial.get(self.probe_source)
                for probe in self.probes:
                    if probe.wants(batch_idx):
                        with stream(f"probe:{probe.section}"):
                            probe.observe(model, x, y, self.probe_attack, batch.logits, adv)

    def measure_loader(
        self,
        model: pl.LightningModule,
        loader: Iterable,
        split: str,
        meter: SplitMeter | None = None,
        batch_ids: Sequence[int] | None = None,
        trainer: pl.Trainer | None = None,
    ) -> SplitMeter:
        """One pass over ``loader`` measuring every metric; ``batch_ids`` are the batches' seeding indices.

        With a ``trainer``, its SIGTERM/SIGINT flag is asked before every batch: a stop request ends the
        pass at once with Lightning's ``SIGTERMException``, what is measured so far kept.
        """
        with outside_inference_mode():
            meter = meter if meter is not None else SplitMeter(self.measurements).to(model.device)
        self._meters[split] = meter
        total = len(batch_ids) if batch_ids is not None else len(loader) if hasattr(loader, "__len__") else 0
        with progress(trainer, total, f"robust evaluation ({split})") as advance:
            for position, (x, y) in enumerate(loader):
                if trainer is not None and trainer.received_sigterm:
                    raise SIGTERMException
                batch_idx = batch_ids[position] if batch_ids is not None else position
                self._measure(model, meter, x.to(model.device), y.to(model.device), split, batch_idx)
                advance()
        return meter

    def _shard(self, loader: DataLoader, trainer: pl.Trainer) -> tuple[DataLoader, list[int]]:
        return batch_shard(loader, trainer.global_rank, trainer.world_size)

    def test_subset_loader(self, datamodule: Any) -> DataLoader:
        """The test loader, restricted to ``n_examples`` examples drawn with the evaluation's seed."""
        loader = datamodule.test_dataloader()
        if self.n_examples is None:
            return loader
        subset = seeded_subset(loader.dataset, self.n_examples, self.seed or 0)
        return DataLoader(subset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if self._own_test_pass(trainer):
            if datamodule is None:
                raise RuntimeError("RobustEvaluation on several devices or with n_examples runs "
                                   "datamodule.test_dataloader() itself; pass a datamodule to trainer.test")
            loader, ids = self._shard(self.test_subset_loader(datamodule), trainer)
            self.measure_loader(pl_module, loader, "test", self.test_meter, ids, trainer)
        with outside_inference_mode():
            metrics, self.uncertainty = self.test_meter.summary("test")
            seconds = {"test": dict(self.test_meter.seconds)}
            if self.evaluate_train and datamodule is not None and hasattr(datamodule, "train_eval_dataloader"):
                loader, ids = self._shard(datamodule.train_eval_dataloader(), trainer)
                train_meter = self.measure_loader(pl_module, loader, "train", None, ids, trainer)
                train_metrics, train_uncertainty = train_meter.summary("train")
                metrics.update(train_metrics)
                self.uncertainty.update(train_uncertainty)
                seconds["train"] = dict(train_meter.seconds)
            elif self.evaluate_train:
                log.warning("no datamodule with train_eval_dataloader(): train/* metrics and gaps are skipped")
            self.counts = {split: self.uncertainty[f"{split}/acc"]["n"] for split in ("test", "train")
                           if f"{split}/acc" in self.uncertainty}
            self.sections = {probe.section: probe.results() for probe in self.probes}
        # Wall time of the slowest process: what the evaluation cost in time.
        every = gather_objects(seconds)
        self.seconds = {split: {name: max(s[split][name] for s in every) for name in seconds[split]} for split in seconds}
        masking = self._gradient_masking(metrics, gather_objects(self._attack_flags()))
        if masking:
            self.sections["gradient_masking"] = masking
        self.metrics = with_gaps(metrics)
        self._check_chance()
        for name, value in self.metrics.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=True)
        if trainer.is_global_zero:
            for probe in self.probes:
                probe.report(self.sections[probe.section])
            for line in masking.get("warnings", []):
                log.warning(line)
                warnings.warn(line, GradientMaskingWarning, stacklevel=2)
            if self.results_file is not None:
                self.write_results(trainer)

    # -- a stop request (SIGTERM, Ctrl-C) during the evaluation: keep what is measured ------------
    def partial_results_file(self) -> Path | None:
        return None if self.results_file is None else self.results_file.with_name("results.partial.json")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "test" or not trainer.is_global_zero:
            return
        path = self.partial_results_file()
        if path is None:
            return
        with outside_inference_mode():
            metrics: dict[str, float] = {}
            counts = {}
            for split, meter in self._meters.items():
                if meter.count() > 0:
                    metrics.update(meter.compute(split))
                    counts[split] = meter.count()
        self.partial = {"complete": False, "metrics": with_gaps(metrics), "examples": counts,
                        "attack": repr(self.attack), "lipschitz": repr(self.lipschitz), "seed": self.seed,
                        **self.extra_results}
        write_json_atomic(path, self.partial)
        log.warning("evaluation stopped by a signal; what was measured (%s) is in %s",
                    ", ".join(f"{n} {k} examples" for k, n in counts.items()) or "nothing", path)

    def _check_chance(self) -> None:
        """Warn when the clean test accuracy cannot be told from guessing (a run that exits 0 but learned nothing)."""
        acc = self.metrics.get("test/acc")
        if acc is None or not self.num_classes or any("chance level" in w for w in self.warnings):
            return
        chance, ceiling = chance_band(self.num_classes, self.counts.get("test"))
        if acc <= ceiling:
            warning = (f"test/acc is {acc:.1f} %, chance level for {self.num_classes} classes ({chance:.1f} %): the model "
                       f"predicts no better than guessing{'; ' + self.advice if self.advice else ''}")
            log.warning(warning)
            self.warnings.append(warning)

    # -- AutoAttack's flags and the distance of each attack to the worst case ----------------------
    def _attack_flags(self) -> dict[str, dict[str, Any]]:
        named = self.attacks or ({getattr(self.attack, "name", "attack"): self.attack} if self.attack is not None else {})
        return {name: dict(attack.flags) for name, attack in named.items() if getattr(attack, "flags", None) is not None}

    def _gradient_masking(self, metrics: dict[str, float], flags_per_process: list[dict]) -> dict[str, Any]:
        """results.json's ``gradient_masking`` section: flags of every process merged, gaps, warning lines."""
        flags: dict[str, dict[str, Any]] = {}
        for process in flags_per_process:
            for attack, fired in process.items():
                for flag, entry in fired.items():
                    merged = flags.setdefault(attack, {}).setdefault(flag, {"batches": 0, "message": entry["message"]})
                    merged["batches"] += entry["batches"]
        has_flags = any(getattr(a, "flags", None) is not None for a in [self.attack, *self.attacks.values()])
        if len(self.attacks) < 2 and not has_flags:
            return {}
        section: dict[str, Any] = {"flags": flags, "warnings": []}
        for attack, fired in flags.items():
            for flag, entry in fired.items():
                section["warnings"].append(
                    f"{attack}: AutoAttack flag '{flag}' on {entry['batches']} batch(es): {entry['message']}"
                )
        worst = metrics.get("test/adv_acc")
        if len(self.attacks) >= 2 and worst is not None:
            gaps = {name: metrics[f"test/adv_acc/{name}"] - worst for name in self.attacks
                    if f"test/adv_acc/{name}" in metrics}
            section["gaps_to_worst_case"] = gaps
            section["gap_threshold"] = self.attack_gap_warning
            if "pgd" in self.attacks and "autoattack" in self.attacks:
                section["pgd_minus_autoattack"] = metrics["test/adv_acc/pgd"] - metrics["test/adv_acc/autoattack"]
            for name, gap in gaps.items():
                if gap > self.attack_gap_warning:
                    section["warnings"].append(
                        f"test/adv_acc/{name} is {gap:.1f} points above the worst case over all attacks "
                        f"(threshold {self.attack_gap_warning:g}): {name} overestimates robustness; "
                        "the model or its training attack may mask gradients"
                    )
        return section

    def write_results(self, trainer: pl.Trainer) -> Path:
        ordered = {key: self.metrics[key] for key in RESULT_KEYS if key in self.metrics}
        ordered.update({key: value for key, value in self.metrics.items() if key not in ordered})
        payload = {
            "metrics": ordered,
            "uncertainty": self.uncertainty,
            "attack": repr(self.attack),
            **({"attacks": {name: repr(attack) for name, attack in self.attacks.items()}} if self.attacks else {}),
            "lipschitz": repr(self.lipschitz),
            "seed": self.seed,
            "examples": self.counts,
            **({"n_examples": self.n_examples} if self.n_examples is not None else {}),
            "seconds": self.seconds,
            "epochs_trained": trainer.current_epoch,
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            **self.sections,
            **self.extra_results,
        }
        path = write_json_atomic(self.results_file, payload)
        for probe in self.probes:
            probe.write_files(path.parent)
        log.info("wrote %s", path)
        return path
