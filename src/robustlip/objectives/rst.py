"""Robust self-training, RST (Raghunathan et al. 2020): labelled-only as Yang et al. run it
(docs/authors-code.md §5.3), or with unlabeled data as Carmon et al. (NeurIPS 2019) and Raghunathan et al.
(§5) define it.

L = CE(f(x), y) + λ · CE(f(x'), y), x' the same PGD attack as AT (``adversarial.madry_attack``). λ
multiplies the adversarial term with no (1 + λ) normalisation, as in the authors' code (docs/authors-code.md §13.7);
the paper sweeps λ ∈ {0.5, 1, 2}. λ = 0 is natural training.

Fidelity: ``paper`` attacks in eval mode and averages over the batch; ``faithful`` attacks in train mode
and sums (docs/authors-code.md §13.4, §13.6). The adversarial forward comes before the clean one, as in the authors'
code, so BatchNorm's running statistics see the batches in the same order. The logits returned for
the training accuracy are the adversarial ones (the authors' logging, docs/authors-code.md §4).

With unlabeled data (``self_training.teacher_ckpt``, a run setting, not this loss's): a naturally trained
robustlip checkpoint labels the pool of ``data.unlabeled`` once (robustlip/runs/self_training.py), and every
training batch holds ``self_training.unsup_fraction`` pseudo-labeled examples besides the labeled ones
(data/unlabeled.py). The loss is the same formula on the whole mixed batch — the natural and the robust
term on labeled and pseudo-labeled examples alike, as in Carmon et al.'s robust self-training — so this
module knows nothing of it; the data does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.core.errors import check_non_negative
from robustlip.objectives.adversarial import madry_attack
from robustlip.objectives.base import Objective, ObjectiveOutput


class RST(Objective):
    """L = CE(x) + λ·CE(PGD(x)), mean- or sum-reduced by fidelity."""

    name = "rst"
    title = "RST"
    table_order = 4

    def __init__(
        self,
        eps: float,
        lam: float = 1.0,
        norm: str = "inf",
        steps: int = 10,
        step_size: float | None = None,
        fidelity: str = "paper",
        name: str | None = None,
    ) -> None:
        super().__init__(fidelity, name)
        self.lam = check_non_negative("objective.lam", lam)
        self.attack = madry_attack(eps, norm, steps, step_size, self.fidelity)

    def label_knobs(self) -> list[tuple[str, float]]:
        return [("λ", self.lam)]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, fidelity={self.fidelity}, attack={self.attack!r}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x_adv = self.attack(model, x, y)
        adv_logits = model(x_adv)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        robust = F.cross_entropy(adv_logits, y, reduction="none")
        loss = self.reduce(natural) + self.lam * self.reduce(robust)
        parts = {"natural": natural.mean().detach(), "robust": robust.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=adv_logits, parts=parts)
