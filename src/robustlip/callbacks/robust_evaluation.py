"""RobustEvaluation: the evaluator (robustlip.evaluation) inside Lightning's loops, for robustlip-train.

The numbers of the paper's tables are measured by :class:`robustlip.evaluation.Evaluator`, which knows
nothing of Lightning; this callback only feeds it Lightning's batches and writes what it returns:

* **test** (``trainer.test``): each batch of Lightning's test loop, with the clean logits ``test_step``
  returned (so ``limit_test_batches`` and ``data.test_size`` apply). With ``n_examples`` (a seeded
  subset) or on several devices the callback runs the pass itself over ``datamodule.test_dataloader()``,
  dealing whole batches out to the processes (batch k to process k mod world size, no padding), so the
  numbers are those of one process;
* **train**: then the un-augmented training set (``datamodule.train_eval_dataloader()``), likewise;
* the numbers go to every logger, to ``results.json`` (``write_results``) and to ``metrics``;
* **validation** (``val_every_n_epochs``): a cheap robustness signal while fitting, ``val/adv_acc``, on
  Lightning's own (padded) validation shards; monitor it with a ``ModelCheckpoint`` whose
  ``every_n_epochs`` is the same N (``conf/callbacks/adv_checkpoint.yaml``).

A stop request (SIGTERM, Ctrl-C: Lightning's flag) ends the test within one forward pass of the model,
even inside an attack; what was measured goes to ``results.partial.json``. Attacks need autograd, so
every measurement runs outside inference mode on cloned inputs: the callback works under
``trainer.fit``, ``validate`` and ``test`` even when the Trainer's ``inference_mode`` is left on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from robustlip.attacks.base import Attack
from robustlip.core.errors import check_positive_int
from robustlip.core.files import write_json_atomic
from robustlip.evaluation.batches import check_subset_size, subset
from robustlip.evaluation.evaluator import EvaluationStopped, Evaluator, Session, outside_inference_mode
from robustlip.evaluation.probes import Probe
from robustlip.evaluation.result import EvalResult
from robustlip.evaluation.streams import seeded
from robustlip.metrics.accuracy import CorrectFraction
from robustlip.metrics.base import ExampleMetric

log = logging.getLogger(__name__)

#: How a training run sets the test budget (robustlip-eval and the API call it n_examples).
N_EXAMPLES_KEY = "callbacks.robust_evaluation.n_examples"


def lightning_progress(trainer: pl.Trainer) -> Callable[[int, str], Any]:
    """A progress factory for the evaluator: a task in Lightning's live RichProgressBar, else a rich bar of its own;
    nothing without a progress bar or off the main process."""

    @contextmanager
    def progress(total: int, description: str) -> Iterator[Callable[[], None]]:
        bar = trainer.progress_bar_callback if trainer.is_global_zero else None
        if bar is None or not total:
            yield lambda: None
            return
        live = getattr(bar, "progress", None)  # RichProgressBar's rich.Progress while it is drawing
        if live is not None and getattr(getattr(live, "live", None), "is_started", False):
            task = live.add_task(description, total=total)
            try:
                yield lambda: live.update(task, advance=1, refresh=True)
            finally:
                live.remove_task(task)
            return
        from robustlip.evaluation.evaluator import rich_progress

        with rich_progress(total, description) as advance:
            yield advance

    return progress


class RobustEvaluation(pl.Callback):
    """Clean/adversarial accuracy, local Lipschitz estimate and gaps of the paper's tables, in Lightning's loops.

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
        self.attacks: dict[str, Attack] = {str(k): v for k, v in (attacks or {}).items() if v is not None}
        self.evaluator = Evaluator(
            self.attacks if self.attacks else attack,
            lipschitz=lipschitz,
            metrics=metrics or (),
            probes=[p for p in (sanity, eps_sweep) if p is not None],
            seed=seed,
            attack_gap_warning=attack_gap_warning,
        )
        self.lipschitz = lipschitz
        self.evaluate_train = evaluate_train
        self.results_file = None if results_file is None else Path(results_file)
        self.val_every_n_epochs = int(val_every_n_epochs)
        self.val_max_batches = val_max_batches
        self.seed = seed
        self.extra_results = dict(extra_results or {})
        self.n_examples = None if n_examples is None else check_positive_int(N_EXAMPLES_KEY, n_examples)
        #: Warnings for results.json and the final table: a training run's (TrainingHealth's, added by
        #: robustlip-train before the test) and a test accuracy at chance; ``advice`` is appended to the latter.
        self.warnings: list[str] = []
        self.advice: str | None = None
        self.val_adv_acc = CorrectFraction()
        self.session: Session | None = None
        #: The last test's result (``metrics``, ``uncertainty``, ``sections``... read it through the properties).
        self.result: EvalResult | None = None
        self.partial: dict[str, Any] | None = None

    # -- the last test's numbers ---------------------------------------------------------------------
    @property
    def metrics(self) -> dict[str, float]:
        return self.result.metrics if self.result is not None else {}

    @property
    def uncertainty(self) -> dict[str, dict[str, Any]]:
        return self.result.uncertainty if self.result is not None else {}

    @property
    def sections(self) -> dict[str, Any]:
        return self.result.sections if self.result is not None else {}

    @property
    def seconds(self) -> dict[str, dict[str, float]]:
        return self.result.seconds if self.result is not None else {}

    @property
    def counts(self) -> dict[str, int]:
        return self.result.examples if self.result is not None else {}

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
        datamodule.setup("test")
        check_subset_size(self.n_examples, len(datamodule.test_set), key=N_EXAMPLES_KEY)  # the evaluation's own check

    def _own_test_pass(self, trainer: pl.Trainer) -> bool:
        """Several processes, or a subset: the callback runs the test pass itself (module docstring)."""
        return trainer.world_size > 1 or self.n_examples is not None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.result, self.partial = None, None
        self.session = self.evaluator.session(pl_module, device=pl_module.device, stop=lambda: trainer.received_sigterm,
                                              progress=lightning_progress(trainer))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._own_test_pass(trainer):
            return
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        with self._stop_as_sigterm():
            self.session.measure("test", batch_idx, batch[0], batch[1], logits)

    def test_subset_loader(self, datamodule: Any) -> DataLoader:
        """The test loader, restricted to ``n_examples`` examples drawn with the evaluation's seed."""
        loader = datamodule.test_dataloader()
        if self.n_examples is None:
            return loader
        picked = subset(loader.dataset, self.n_examples, self.seed or 0, key=N_EXAMPLES_KEY)
        return DataLoader(picked, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
                          collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        shard = (trainer.global_rank, trainer.world_size)
        with self._stop_as_sigterm():
            if self._own_test_pass(trainer):
                if datamodule is None:
                    raise RuntimeError("RobustEvaluation on several devices or with n_examples runs "
                                       "datamodule.test_dataloader() itself; pass a datamodule to trainer.test")
                self.session.run("test", self.test_subset_loader(datamodule), shard=shard)
            if self.evaluate_train and datamodule is not None and hasattr(datamodule, "train_eval_dataloader"):
                self.session.run("train", datamodule.train_eval_dataloader(), shard=shard)
            elif self.evaluate_train:
                log.warning("no datamodule with train_eval_dataloader(): train/* metrics and gaps are skipped")
        self.result = self.session.result(self.warnings, self.advice, report=trainer.is_global_zero)
        self.warnings = list(self.result.warnings)
        for name, value in self.metrics.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=True)
        if trainer.is_global_zero and self.results_file is not None:
            self.write_results(trainer)

    @contextmanager
    def _stop_as_sigterm(self) -> Iterator[None]:
        """A stop inside the evaluator becomes Lightning's own stop, which the commands already handle."""
        try:
            yield
        except EvaluationStopped as stopped:
            self._keep_partial(stopped.result or self.session.partial())
            raise SIGTERMException from None

    # -- a stop request (SIGTERM, Ctrl-C) during the evaluation: keep what is measured ------------
    def partial_results_file(self) -> Path | None:
        return None if self.results_file is None else self.results_file.with_name("results.partial.json")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning's test loop stops between batches on its own flag: keep what the session measured then.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "test" and self.partial is None \
                and self.session is not None:
            self._keep_partial(self.session.partial())

    def _keep_partial(self, result: EvalResult) -> None:
        self.partial = {**result.to_json(), **self.extra_results}
        path = self.partial_results_file()
        if path is None or self.session is None or torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        write_json_atomic(path, self.partial)
        log.warning("evaluation stopped by a signal; what was measured (%s) is in %s",
                    ", ".join(f"{n} {k} examples" for k, n in result.examples.items()) or "nothing", path)

    def write_results(self, trainer: pl.Trainer) -> Path:
        extra = {**({"n_examples": self.n_examples} if self.n_examples is not None else {}),
                 "epochs_trained": trainer.current_epoch, **self.extra_results}
        return self.result.write(self.results_file.parent, extra, self.results_file.name)
