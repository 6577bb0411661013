"""RobustEvaluation: the numbers of the paper's tables, measured by one callback (DESIGN.md).

At test time it measures, on the test set (the batches of Lightning's test loop) and on the
un-augmented training set (``datamodule.train_eval_dataloader()``, the full set unless
``data.train_eval_size`` picks a fixed, seeded subset):

    train/acc, test/acc, train/adv_acc, test/adv_acc, train/lipschitz, test/lipschitz,
    gap = train/acc - test/acc, adv_gap = train/adv_acc - test/adv_acc        (percent, as the paper)

and writes them to every logger and to ``results.json``, with optional probes (the ε sweep, the
gradient-masking checks) in their own sections. During fitting it can also attack the validation set
every ``val_every_n_epochs`` epochs and log ``val/adv_acc`` (monitor it with a ``ModelCheckpoint``
whose ``every_n_epochs`` is the same N; ``conf/callbacks/adv_checkpoint.yaml`` does that).

Reproducibility: every measurement of every batch (the attack's random start, the Lipschitz search's
start, each probe) draws from its own stream, seeded with ``(seed, split, batch index, measurement
name)`` inside ``torch.random.fork_rng``. So the numbers depend on the model, the data and the seed
only — not on what ran before (``robustlip-eval`` on a checkpoint reproduces the training run's
numbers), not on which other measurements ran (the Lipschitz estimate of a checkpoint is the same
whichever attack is chosen), and evaluating never shifts the training run's own random stream.

Exactness: counts and sums are sum-state torchmetrics. On one device the test set comes from
Lightning's test loop. On several, Lightning's distributed sampler would pad the test set with
repeated examples, so the callback instead splits ``datamodule.test_dataloader()`` (and the training
set) into disjoint per-process shards itself and sums the states: exact for any number of devices.
``val/adv_acc`` is a monitoring signal and keeps Lightning's (padded) validation shards.

Inference mode: attacks need autograd, so every update runs under ``torch.inference_mode(False)``
on cloned inputs; the callback works under ``trainer.fit``, ``validate`` and ``test`` even when the
Trainer's ``inference_mode`` is left on.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from robustlip.attacks.base import Attack
from robustlip.callbacks.eps_sweep import Probe
from robustlip.metrics.accuracy import AdversarialAccuracy, CleanAccuracy, CorrectFraction
from robustlip.metrics.base import EvalBatch, ExampleMetric, SumState
from robustlip.runs.errors import ConfigError
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


def unrepeated_shard(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """This process's disjoint share (every ``world_size``-th example) of ``loader``, in the same order.

    Unlike a DistributedSampler, no example is repeated to even out the shards, so summing the
    per-process counts gives the exact total.
    """
    if world_size <= 1:
        return loader
    shard = Subset(loader.dataset, range(rank, len(loader.dataset), world_size))
    return DataLoader(shard, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)


class SplitMeter(nn.Module):
    """The sum states of every metric on one split: ``{name: (sum, count)}`` of per-example values."""

    def __init__(self, metrics: Iterable[ExampleMetric]) -> None:
        super().__init__()
        self.metrics = list(metrics)
        self.states = nn.ModuleDict({metric.name: SumState(metric) for metric in self.metrics})

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
            with stream(metric.name) if stream is not None else nullcontext():
                self.states[metric.name].update(metric.per_example(batch))
        return batch

    def compute(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/{name}": state.compute().item() for name, state in self.states.items() if state.count > 0}

    def count(self) -> int:
        """Examples seen (by the first metric, clean accuracy: every metric sees every example)."""
        return int(next(iter(self.states.values())).count) if self.states else 0

    def reset(self) -> None:
        for state in self.states.values():
            state.reset()


def _batch_logits(outputs: Any) -> Tensor | None:
    """Clean logits a ``test_step`` returned (``{"logits": ...}``), so they are not recomputed."""
    if isinstance(outputs, dict) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"].detach().clone()
    return None


class RobustEvaluation(pl.Callback):
    """Clean/adversarial accuracy, local Lipschitz estimate and gaps of the paper's tables.

    Args:
        attack: the evaluation adversary (``conf/attack``); None measures clean accuracy only.
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
        extra = list(metrics.values()) if isinstance(metrics, Mapping) else list(metrics or [])
        #: The metric objects measured on every split, in order (the attack's random start first).
        self.measurements: list[ExampleMetric] = [
            CleanAccuracy(),
            *([AdversarialAccuracy(attack)] if attack is not None else []),
            *([lipschitz] if lipschitz is not None else []),
            *(m for m in extra if m is not None),
        ]
        names = [m.name for m in self.measurements]
        if len(set(names)) != len(names):
            raise ConfigError(f"callbacks.robust_evaluation.metrics: two metrics share a name in {names}; rename one")
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
        self.sections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

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
    def _own_test_pass(self, trainer: pl.Trainer) -> bool:
        """Several processes: shard the test set ourselves (see the module docstring)."""
        return trainer.world_size > 1

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._meters = {"test": self.test_meter}
        with outside_inference_mode():
            self.test_meter.to(pl_module.device)
            self.test_meter.reset()
            for probe in self.probes:
                probe.to(pl_module.device)
                probe.reset()

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
            if split == "test" and self.attack is not None:
                adv = batch.adversarial.get(AdversarialAccuracy.name)
                for probe in self.probes:
                    if probe.wants(batch_idx):
                        with stream(f"probe:{probe.section}"):
                            probe.observe(model, x, y, self.attack, batch.logits, adv)

    def measure_loader(self, model: pl.LightningModule, loader: Iterable, split: str, meter: SplitMeter | None = None,
                       should_stop: Callable[[], bool] | None = None) -> SplitMeter:
        """One pass over ``loader`` measuring the same three numbers as the test loop.

        ``should_stop`` is asked before every batch (the Trainer's SIGTERM/SIGINT flag): a stop request
        ends the pass at once with Lightning's ``SIGTERMException``, what is measured so far kept.
        """
        with outside_inference_mode():
            meter = meter if meter is not None else SplitMeter(self.measurements).to(model.device)
        self._meters[split] = meter
        for batch_idx, (x, y) in enumerate(loader):
            if should_stop is not None and should_stop():
                raise SIGTERMException
            self._measure(model, meter, x.to(model.device), y.to(model.device), split, batch_idx)
        return meter

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        rank, world = trainer.global_rank, trainer.world_size
        if self._own_test_pass(trainer):
            if datamodule is None:
                raise RuntimeError("RobustEvaluation on several devices shards datamodule.test_dataloader() itself; "
                                   "pass a datamodule to trainer.test, not bare dataloaders")
            self.measure_loader(pl_module, unrepeated_shard(datamodule.test_dataloader(), rank, world), "test", self.test_meter,
                                should_stop=lambda: trainer.received_sigterm)
        with outside_inference_mode():
            metrics = self.test_meter.compute("test")
            self.counts = {"test": self.test_meter.count()}
            if self.evaluate_train and datamodule is not None and hasattr(datamodule, "train_eval_dataloader"):
                loader = unrepeated_shard(datamodule.train_eval_dataloader(), rank, world)
                train_meter = self.measure_loader(pl_module, loader, "train", should_stop=lambda: trainer.received_sigterm)
                metrics.update(train_meter.compute("train"))
                self.counts["train"] = train_meter.count()
            elif self.evaluate_train:
                log.warning("no datamodule with train_eval_dataloader(): train/* metrics and gaps are skipped")
            self.sections = {probe.section: probe.results() for probe in self.probes}
        self.metrics = with_gaps(metrics)
        self._check_chance()
        for name, value in self.metrics.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=True)
        if trainer.is_global_zero:
            for probe in self.probes:
                probe.report(self.sections[probe.section])
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

    def write_results(self, trainer: pl.Trainer) -> Path:
        ordered = {key: self.metrics[key] for key in RESULT_KEYS if key in self.metrics}
        ordered.update({key: value for key, value in self.metrics.items() if key not in ordered})
        payload = {
            "metrics": ordered,
            "attack": repr(self.attack),
            "lipschitz": repr(self.lipschitz),
            "seed": self.seed,
            "examples": self.counts,
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

