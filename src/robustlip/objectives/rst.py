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

With unlabeled data (``teacher_ckpt``): a naturally trained robustlip checkpoint labels the pool of
``data.unlabeled`` once (robustlip/runs/self_training.py), and every training batch holds ``unsup_fraction``
pseudo-labeled examples besides the labeled ones (data/unlabeled.py). The loss is the same formula on
the whole mixed batch — the natural and the robust term on labeled and pseudo-labeled examples alike,
as in Carmon et al.'s robust self-training — so this module's forward does not change; the data does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.objectives.adversarial import madry_attack
from robustlip.objectives.base import Objective, ObjectiveOutput
from robustlip.runs.errors import check_non_negative, check_probability


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
        teacher_ckpt: str | None = None,
        unsup_fraction: float = 0.5,
    ) -> None:
        super().__init__(fidelity, name)
        self.lam = check_non_negative("objective.lam", lam)
        self.attack = madry_attack(eps, norm, steps, step_size, self.faithful)
        #: A naturally trained checkpoint that pseudo-labels data.unlabeled; None: labelled-only RST.
        self.teacher_ckpt = str(teacher_ckpt) if teacher_ckpt not in (None, "") else None
        self.unsup_fraction = check_probability("objective.unsup_fraction", unsup_fraction)

    def label_knobs(self) -> list[tuple[str, float]]:
        return [("λ", self.lam)]

    @property
    def label(self) -> str:
        """``RST(λ=1)``, or ``RST(λ=1)+unlabeled`` with a teacher: a row of its own in every report."""
        return f"{super().label}+unlabeled" if self.teacher_ckpt else super().label

    def extra_repr(self) -> str:
        teacher = f", teacher_ckpt={self.teacher_ckpt!r}, unsup_fraction={self.unsup_fraction}" if self.teacher_ckpt else ""
        return f"lam={self.lam}, fidelity={self.fidelity}, attack={self.attack!r}{teacher}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x_adv = self.attack(model, x, y)
        adv_logits = model(x_adv)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        robust = F.cross_entropy(adv_logits, y, reduction="none")
        loss = self.reduce(natural) + self.lam * self.reduce(robust)
        parts = {"natural": natural.mean().detach(), "robust": robust.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=adv_logits, parts=parts)
