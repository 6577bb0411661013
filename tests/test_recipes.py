"""The three recipes of docs/architecture.md, tried as a contributor would: an objective, an attack and a
metric written outside the package (here, in this test module), each with one config file in a user's
config folder, run end to end through the real CLI, touching no file of the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks.base import Attack
from robustlip.metrics.base import EvalBatch, ExampleMetric
from robustlip.objectives.base import Objective, ObjectiveOutput
from tests.conftest import run_command

ROOT = Path(__file__).resolve().parents[1]
#: The user's own classes (tests.test_recipes.*) importable by the commands, as from a project of theirs.
USER_CODE = {"PYTHONPATH": str(ROOT)}


class LabelSmoothing(Objective):
    """Recipe 1, an objective: cross-entropy with label smoothing; its table row names the smoothing."""

    name = "smooth"
    title = "Smooth"
    table_order = 6

    def __init__(self, smoothing: float = 0.1, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__(fidelity, name)
        self.smoothing = float(smoothing)

    def label_knobs(self) -> list[tuple[str, float]]:
        return [("α", self.smoothing)]

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.smoothing)
        return ObjectiveOutput(loss=self.reduce(ce), logits=logits, parts={"smoothed": ce.mean().detach()})


class Unperturbed(Attack):
    """Recipe 2, an attack: returns the input itself, so its adversarial accuracy must equal clean accuracy."""

    def __init__(self, eps: float, model_mode: str = "eval") -> None:
        super().__init__(model_mode)
        self.eps = eps

    def __repr__(self) -> str:
        return f"Unperturbed(eps={self.eps})"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return x.clone()


class Top2Accuracy(ExampleMetric):
    """Recipe 3, a metric: whether the label is among the two largest logits (percent over the split)."""

    name = "top2_acc"

    def per_example(self, batch: EvalBatch) -> Tensor:
        top2 = batch.logits.topk(2, dim=1).indices
        return 100.0 * (top2 == batch.y[:, None]).any(dim=1).double()


CONFIGS = {
    "objective/smooth.yaml": "_target_: tests.test_recipes.LabelSmoothing\nname: smooth\nsmoothing: 0.2\nfidelity: ${fidelity}\n",
    "attack/unperturbed.yaml": "_target_: tests.test_recipes.Unperturbed\neps: ${data.eps}\n",
    "metric/top2.yaml": "_target_: tests.test_recipes.Top2Accuracy\n",
}


@pytest.mark.slow
def test_a_new_objective_attack_and_metric_run_end_to_end_from_a_users_config_folder(tmp_path):
    conf = tmp_path / "myconf"
    for name, text in CONFIGS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    run_dir = tmp_path / "run"
    done = run_command("robustlip-train", [
        "--config-dir", str(conf), "objective=smooth", "attack=unperturbed",
        "+metric@callbacks.robust_evaluation.metrics.top2=top2",
        "trainer.max_epochs=2", "data.train_eval_size=200", "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar", f"hydra.run.dir={run_dir}",
    ], tmp_path, env=USER_CODE, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["metrics"]
    # The objective trained the model (far above the 10% of chance on digits) and was built from its config.
    assert metrics["test/acc"] > 50.0
    assert "smoothing: 0.2" in (run_dir / "config.yaml").read_text()
    # The attack ran as the evaluation adversary: an unperturbed input is classified as the clean one.
    assert results["attack"] == "Unperturbed(eps=0.1)"
    assert metrics["test/adv_acc"] == metrics["test/acc"] and metrics["train/adv_acc"] == metrics["train/acc"]
    # The metric was measured on both splits, and the label is never less often in the top 2 than in the top 1.
    for split in ("train", "test"):
        assert metrics[f"{split}/acc"] <= metrics[f"{split}/top2_acc"] <= 100.0
    # The report names the row by the objective's own label, and shows the new metric as a column.
    report = run_command("robustlip-report", [str(run_dir), f"out_dir={tmp_path / 'report'}", "plots=false",
                                       "columns=[test/acc,test/top2_acc]"], tmp_path, env=USER_CODE)
    assert report.returncode == 0, report.stderr[-2000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| test acc | test/top2_acc |" in markdown
    # A single run shows its own uncertainty: the Wilson half-width of an accuracy, and for the new
    # metric (a mean, by the protocol's default) its standard error.
    uncertainty = results["uncertainty"]
    acc_bar = (uncertainty["test/acc"]["ci95_high"] - uncertainty["test/acc"]["ci95_low"]) / 2
    top2_se = uncertainty["test/top2_acc"]["se"]
    assert uncertainty["test/top2_acc"]["n"] == uncertainty["test/acc"]["n"] and top2_se > 0
    assert (f"| Smooth(α=.2) | 0 | 1 | {metrics['test/acc']:.2f} ± {acc_bar:.2f} | "
            f"{metrics['test/top2_acc']:.2f} ± {top2_se:.2f} |") in markdown


def test_the_recipe_classes_follow_the_protocols_directly():
    # The same three objects without Hydra: what a unit test of a new part looks like.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    out = LabelSmoothing(smoothing=0.0)(model, x, y)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))
    assert LabelSmoothing(smoothing=0.5).label == "Smooth(α=.5)"
    assert torch.equal(Unperturbed(eps=0.1)(model, x, y), x)
    logits = model(x)
    top2 = Top2Accuracy().per_example(EvalBatch(model, x, y, logits))
    assert top2.shape == (5,) and set(top2.tolist()) <= {0.0, 100.0}
