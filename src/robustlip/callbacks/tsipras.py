"""TsiprasTheory: each measured accuracy on ``data=tsipras`` next to the closed form it should match.

After the robust evaluation of a run on Tsipras et al.'s distribution (ICLR 2019, Sec. 2; docs/tsipras.md)
this callback adds a ``tsipras`` section to ``results.json``:

* ``setting``: p, η, d, the radius in pixels and in features (ε/scale), the number of test examples;
* ``closed_form``: the Bayes-optimal classifier's standard and robust accuracy, the robust classifier
  sign(x₁)'s accuracy p, the averaging classifier's two accuracies (``theory.tsipras``);
* ``rows``: one row per classifier with ``measured`` and ``closed_form`` side by side — the trained
  model (its measured test/acc and test/adv_acc; when it is affine, also the population accuracies of
  its own weights), and the Bayes, robust and averaging rules run on the same test set under the exact
  worst-case ℓ∞ attack of a linear rule (every pixel moved by ε against the sign of its weight);
* ``tolerance``: z binomial standard errors at this test-set size, and whether each measured value
  with a closed form of its own is within it;
* ``theorem_2_1_bound``: the most robust accuracy the model's standard accuracy allows — the population
  accuracy of its weights when it is affine (the theorem is about the population), else the measured one.

Measured values are fractions here (results.json's ``metrics`` keep the paper's percent).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from robustlip.core.errors import ConfigError, check_non_negative
from robustlip.core.results import add_results_section
from robustlip.metrics.linear import affine_map, binary_weights
from robustlip.theory.tsipras import (
    TsiprasSetting,
    binomial_tolerance,
    closed_forms,
    linear_rule_accuracy,
    robust_accuracy_bound,
)

log = logging.getLogger(__name__)


def _all(loader: DataLoader) -> tuple[Tensor, Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


class TsiprasTheory(pl.Callback):
    """Closed forms of Tsipras et al. next to the measured accuracies of a ``data=tsipras`` run.

    Args:
        eps: the evaluation attack's radius in pixels (``${attack.eps}``).
        norm: the evaluation attack's norm; the closed forms are for ℓ∞ (``inf``).
        data_name: ``${data.name}``, checked at construction so a wrong dataset fails before training.
        results_file: the run's results.json (written first by RobustEvaluation).
        z: standard errors of the tolerance between a measured accuracy and its closed form.
    """

    section = "tsipras"

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        data_name: str = "tsipras",
        results_file: str | Path | None = "results.json",
        z: float = 4.0,
    ) -> None:
        super().__init__()
        if data_name != "tsipras":
            raise ConfigError(f"callbacks.tsipras_theory needs data=tsipras; this run has data={data_name}")
        if str(norm) != "inf":
            raise ConfigError(f"attack.norm={norm!r} is not allowed with callbacks.tsipras_theory; its closed forms are for 'inf'")
        self.eps = check_non_negative("attack.eps", eps)
        self.results_file = None if results_file is None else Path(results_file)
        self.z = check_non_negative("callbacks.tsipras_theory.z", z)
        self.results: dict[str, Any] = {}

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        evaluation = next((c for c in trainer.callbacks if hasattr(c, "metrics") and hasattr(c, "attack")), None)
        metrics = dict(getattr(evaluation, "metrics", {}) or {})
        # RobustClassifier keeps the network as .net (module.py); a bare network is its own net.
        self.results = self.compute(getattr(pl_module, "net", pl_module), datamodule, metrics)
        if trainer.is_global_zero and self.results_file is not None:
            add_results_section(self.results_file, self.section, self.results)
            log.info("wrote the %s section of %s", self.section, self.results_file)

    @torch.no_grad()
    def compute(self, net: torch.nn.Module, datamodule: Any, metrics: dict[str, float]) -> dict[str, Any]:
        """The section for the network ``net`` measured on ``datamodule``'s test set (``metrics`` in percent)."""
        scale = float(datamodule.scale)
        setting = TsiprasSetting(p=datamodule.p, eta=datamodule.eta, d=datamodule.d, eps=self.eps / scale)
        x, y = _all(datamodule.test_dataloader())
        n = len(y)
        sign = (y * 2 - 1).double()
        # Only the robust feature and the d weak ones, back in feature units; clean and attacked.
        features = ((x.flatten(1).double() - 0.5) / scale)

        def rule(a: Tensor, bias: float = 0.0) -> dict[str, float]:
            """A linear rule on the features of this test set: clean, and under the worst ℓ∞ attack."""
            shifted = x.flatten(1).double() - self.eps * torch.sign(a)[None, :] * sign[:, None]
            attacked = (shifted.clamp(0.0, 1.0) - 0.5) / scale
            correct = lambda f: float(((f @ a + bias) * sign > 0).double().mean())
            return {"standard_acc": correct(features), "robust_acc": correct(attacked)}

        forms = closed_forms(setting)
        a1, a = float(torch.log(torch.tensor(setting.p / (1 - setting.p)))), 2 * setting.eta
        references = {
            "Bayes-optimal": (torch.tensor([a1] + [a] * setting.d, dtype=torch.float64),
                              forms["bayes_standard_acc"], forms["bayes_robust_acc"]),
            "robust sign(x1)": (torch.tensor([1.0] + [0.0] * setting.d, dtype=torch.float64),
                                forms["robust_classifier_acc"], forms["robust_classifier_acc"]),
            "averaging": (torch.tensor([0.0] + [1.0] * setting.d, dtype=torch.float64),
                          forms["averaging_standard_acc"], forms["averaging_robust_acc"]),
        }
        rows = []
        measured_std = metrics.get("test/acc")
        measured_rob = metrics.get("test/adv_acc")
        model_row: dict[str, Any] = {
            "classifier": "this model",
            "measured": {
                "standard_acc": None if measured_std is None else measured_std / 100,
                "robust_acc": None if measured_rob is None else measured_rob / 100,
            },
            "closed_form": None,
        }
        affine = affine_map(net, tuple(x.shape[1:]))
        if affine is not None and affine[0].shape[0] == 2:
            v, c0 = binary_weights(*affine)
            # pixel = 0.5 + scale·feature: the score in features has weights scale·v and bias c0 + 0.5·Σv.
            a_feat, bias = scale * v, c0 + 0.5 * float(v.sum())
            model_row["closed_form"] = {
                "standard_acc": linear_rule_accuracy(setting, float(a_feat[0]), a_feat[1:], bias, eps=0.0),
                "robust_acc": linear_rule_accuracy(setting, float(a_feat[0]), a_feat[1:], bias),
            }
            weak = a_feat[1:]
            model_row["weights"] = {
                "robust_feature": float(a_feat[0]),
                "weak_mean": float(weak.mean()),
                "weak_l1": float(weak.abs().sum()),
                "robust_share_of_l1": float(a_feat[0].abs() / a_feat.abs().sum()),
            }
        rows.append(model_row)
        for name, (weights, std_form, rob_form) in references.items():
            rows.append({"classifier": name, "measured": rule(weights),
                         "closed_form": {"standard_acc": std_form, "robust_acc": rob_form}})
        for row in rows:
            row["within_tolerance"] = None
            if row["closed_form"] is None:
                continue
            checks = []
            for key in ("standard_acc", "robust_acc"):
                got, want = row["measured"][key], row["closed_form"][key]
                if got is not None:
                    checks.append(abs(got - want) <= binomial_tolerance(want, n, self.z))
            row["within_tolerance"] = all(checks) if checks else None
        section = {
            "setting": {"p": setting.p, "eta": setting.eta, "d": setting.d, "scale": scale,
                        "eps_pixels": self.eps, "eps_features": setting.eps, "two_eta": 2 * setting.eta, "n_test": n},
            "closed_form": forms,
            "rows": rows,
            "tolerance": {"z": self.z, "n_test": n,
                          "bayes_standard_acc": binomial_tolerance(forms["bayes_standard_acc"], n, self.z),
                          "robust_classifier_acc": binomial_tolerance(forms["robust_classifier_acc"], n, self.z)},
        }
        own = model_row["closed_form"]
        standard = own["standard_acc"] if own is not None else (None if measured_std is None else measured_std / 100)
        if standard is not None:
            section["theorem_2_1_bound"] = {
                "standard_acc": standard,
                "from": "closed form of its weights" if own is not None else "measured",
                "max_robust_acc": robust_accuracy_bound(setting, standard),
                "applies": setting.eps >= 2 * setting.eta,
            }
        return section
