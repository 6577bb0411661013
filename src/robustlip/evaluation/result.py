"""What an evaluation returns: the numbers, how sure they are, what the attacks flagged, what each cost.

:class:`EvalResult` is plain data. ``to_json()`` is the body of ``results.json`` (the paper's metric
names, each number's ``uncertainty``, the ``examples`` of each split, the ``seconds`` of each metric,
the probes' sections and the ``warnings``); :meth:`EvalResult.write` puts it, and the probes' side files
(``eps_sweep.csv``/``.png``), into a folder. :meth:`EvalResult.robustbench_json` is the same evaluation
in the shape of RobustBench's model cards (``model_info/<dataset>/<threat model>/<name>.json`` in
github RobustBench/robustbench: ``clean_acc``, ``autoattack_acc``, ``eps`` as strings), plus what those
cards do not carry: the number of points, how they were picked, the intervals and the flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlip.core.files import write_json_atomic
from robustlip.core.results import RESULT_KEYS

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """The numbers of one evaluation (percent for accuracies), their uncertainty, flags, timings and sections."""

    metrics: dict[str, float]
    uncertainty: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Examples measured on each split.
    examples: dict[str, int] = field(default_factory=dict)
    #: Wall time of each metric on each split (the slowest process's), seconds.
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The probes' sections (``eps_sweep``, ``sanity``) and the attacks' ``gradient_masking`` section.
    sections: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: What was evaluated and how: the attacks' and the estimator's reprs, the seed, the budgets.
    setup: dict[str, Any] = field(default_factory=dict)
    #: False for what a stopped evaluation had measured when it stopped.
    complete: bool = True
    #: Objects that write side files next to results.json (the probes); not part of the JSON.
    writers: list[Any] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The body of results.json: metrics in the paper's order first, then everything that qualifies them."""
        ordered = {key: self.metrics[key] for key in RESULT_KEYS if key in self.metrics}
        ordered.update({key: value for key, value in self.metrics.items() if key not in ordered})
        return {
            **({} if self.complete else {"complete": False}),
            "metrics": ordered,
            "uncertainty": self.uncertainty,
            **self.setup,
            "examples": self.examples,
            "seconds": self.seconds,
            **({"warnings": list(self.warnings)} if self.warnings else {}),
            **self.sections,
        }

    def write(self, directory: str | Path, extra: dict[str, Any] | None = None, filename: str = "results.json") -> Path:
        """``<directory>/results.json`` (with ``extra`` entries at the end) and the probes' side files."""
        path = write_json_atomic(Path(directory) / filename, {**self.to_json(), **(extra or {})})
        for writer in self.writers:
            writer.write_files(path.parent)
        log.debug("wrote %s", path)
        return path

    # -- RobustBench's shape -------------------------------------------------------------------------
    def adversarial_key(self) -> tuple[str, str]:
        """(metric key, attack name) of the AutoAttack accuracy if AutoAttack ran, else of the adversarial accuracy."""
        attacks = self.setup.get("attacks") or {}
        for name, text in attacks.items():
            if str(text).startswith("AutoAttack("):
                return f"test/adv_acc/{name}", name
        if str(self.setup.get("attack", "")).startswith("AutoAttack("):
            return "test/adv_acc", "autoattack"
        return "test/adv_acc", "worst case" if attacks else "attack"

    def robustbench_json(self, *, eps: float | None, norm: str | None, dataset: str | None = None,
                         name: str | None = None, subset: str | None = None) -> dict[str, Any]:
        """This evaluation as a RobustBench model card, with the intervals, the number of points and the flags."""
        key, attack = self.adversarial_key()
        autoattack = attack != "attack" and attack != "worst case"
        card: dict[str, Any] = {
            "name": name,
            "dataset": dataset,
            "threat_model": {"inf": "Linf", "2": "L2", "1": "L1"}.get(str(norm), norm),
            "eps": None if eps is None else f"{eps:g}",
            "clean_acc": _percent(self.metrics.get("test/acc")),
            ("autoattack_acc" if autoattack else "adversarial_acc"): _percent(self.metrics.get(key)),
        }
        if not autoattack:
            card["adversarial_attack"] = self.setup.get("attack") if attack == "attack" else "pointwise worst case"
        card.update({
            "n_examples": self.examples.get("test"),
            "subset": subset,
            "clean_acc_ci95": _interval(self.uncertainty.get("test/acc")),
            ("autoattack_acc_ci95" if autoattack else "adversarial_acc_ci95"): _interval(self.uncertainty.get(key)),
            "flags": (self.sections.get("gradient_masking") or {}).get("flags", {}),
            "complete": self.complete,
        })
        return card


def _percent(value: float | None) -> str | None:
    """RobustBench writes accuracies as strings with two decimals (``str(round(acc * 100, 2))``)."""
    return None if value is None else str(round(float(value), 2))


def _interval(record: dict[str, Any] | None) -> list[float] | None:
    if not record or record.get("ci95_low") is None:
        return None
    return [round(float(record["ci95_low"]), 2), round(float(record["ci95_high"]), 2)]
