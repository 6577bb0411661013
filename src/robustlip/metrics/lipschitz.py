"""The empirical local Lipschitz constant of the paper's Eq. 3, and the search the authors' code runs.

    L(f) = 1/n · Σ_i  max_{x'_i ∈ B(x_i, ε)}  ‖f(x_i) − f(x'_i)‖₁ / ‖x_i − x'_i‖∞          (f = raw logits)

Per example, x' is moved by ``steps`` sign steps on the ratio (``estimate_local_lip_v2``,
``lolip/utils.py`` L32-75 of github yangarbiter/robust-local-lipschitz; docs/authors-code.md §7):

* start at x' = x + 0.001·N(0, I) (not clipped: a zero perturbation would make the ratio 0/0);
* ``steps`` (10) times: gradient of the *batch-mean* ratio w.r.t. x' only, one sign step of
  ``step_size``, then projection onto the ε-ball around x and the pixel box [0, 1];
* the value is the ratio at the **final** iterate, not the best one seen (as the authors' code);
* the denominator is ‖x − x' + 10⁻⁶‖, the 10⁻⁶ added to every coordinate before the norm.

Two settings are where the paper and the authors' code part (docs/authors-code.md §13.1;
docs/evaluation.md, "Which search"):

* ``direction``: Eq. 3 asks for the maximum, so ``ascent`` steps *up* the ratio. The authors' code
  (``lolip/utils.py`` L56-67) takes ``loss = -ratio`` and *adds* step·sign(∂loss/∂x'): every step moves
  x' *down* the ratio, a ``descent``. The published "test lipschitz" columns of Tables 2-4 come from
  that descent. Default: ``descent`` with ``fidelity=faithful``, ``ascent`` with ``fidelity=paper``.
* ``step_size``: ε/5 as the paper's §5.1 says (``fidelity=paper``) or 0.003, the default the code never
  overrides (``lolip/utils.py`` L33, ``fidelity=faithful``).

An explicit ``direction`` / ``step_size`` wins over the fidelity's, so either search runs with either step.

The estimator returns one ratio per example, so a sum-state mean (``metrics.base.SumState``) of them does not depend
on how the data is batched: each example's sign step is the sign of its own gradient (the batch
mean only rescales it), so examples never interact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from robustlip.attacks.base import attack_context, input_gradient, model_mode
from robustlip.attacks.threat import canonical_norm, make_threat, norm_order
from robustlip.core.errors import check_choice, check_non_negative, check_positive_int
from robustlip.core.fidelity import fidelity_named
from robustlip.metrics.base import EvalBatch, ExampleMetric

#: Norms of the ratio: the paper uses ℓ1 on the logits and ℓ∞ on the inputs.
LIPSCHITZ_NORMS = ("1", "2", "inf")
#: ``ascent`` maximises the ratio (Eq. 3); ``descent`` is the authors' search (``lolip/utils.py`` L56-67).
DIRECTIONS = ("ascent", "descent")
#: Std of the Gaussian start around x (docs/authors-code.md §7).
INIT_STD = 1e-3
#: Added to every coordinate of x − x' before the bottom norm (docs/authors-code.md §7).
DENOMINATOR_OFFSET = 1e-6


def lipschitz_ratio(logits: Tensor, logits_prime: Tensor, x: Tensor, x_prime: Tensor, top: float, bottom: float) -> Tensor:
    """Per-example ‖f(x) − f(x')‖_top / ‖x − x' + 10⁻⁶‖_bottom on flattened tensors (docs/authors-code.md §7)."""
    numerator = torch.linalg.vector_norm((logits - logits_prime).flatten(1), ord=top, dim=1)
    denominator = torch.linalg.vector_norm((x - x_prime + DENOMINATOR_OFFSET).flatten(1), ord=bottom, dim=1)
    return numerator / denominator


class LocalLipschitz(ExampleMetric):
    """``estimator(model, x) -> per-example ratios``: Eq. 3's inner search (ascent or the authors' descent) on one batch.

    Built from config (``conf/lipschitz/local.yaml``); an evaluation metric named ``lipschitz``
    (``train/lipschitz``, ``test/lipschitz``) that plugs into ``RobustEvaluation(lipschitz=...)``.
    Runs the model in eval mode and restores each submodule's previous mode; takes gradients w.r.t.
    the input only (parameter ``.grad`` untouched); works inside Lightning's inference-mode loops.
    """

    def __init__(
        self,
        eps: float,
        steps: int = 10,
        step_size: float | None = None,
        fidelity: str = "paper",
        top_norm: str | int = 1,
        bottom_norm: str | int = "inf",
        init_std: float = INIT_STD,
        direction: str | None = None,
    ) -> None:
        self.fidelity = fidelity_named(fidelity, "lipschitz.fidelity")
        if direction is None:
            direction = self.fidelity.lipschitz_direction
        self.direction = check_choice("lipschitz.direction", direction, DIRECTIONS)
        self.bottom = norm_order(canonical_norm(bottom_norm, "lipschitz.bottom_norm", LIPSCHITZ_NORMS))
        # The search region is the bottom norm's ball ∩ [0, 1]: project and step like an attack would.
        self.threat = make_threat("inf" if self.bottom == math.inf else str(int(self.bottom)), eps)
        self.steps = check_positive_int("lipschitz.steps", steps)
        if step_size is None:
            step_size = self.fidelity.lipschitz_step(self.eps)
        self.step_size = check_non_negative("lipschitz.step_size", step_size)
        self.top = norm_order(canonical_norm(top_norm, "lipschitz.top_norm", LIPSCHITZ_NORMS))
        self.init_std = check_non_negative("lipschitz.init_std", init_std)

    @property
    def eps(self) -> float:
        """The radius of the search region, read from its threat model (the one place ε is stored)."""
        return self.threat.eps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(eps={self.eps}, steps={self.steps}, step_size={self.step_size:.4g}, "
            f"direction={self.direction}, fidelity={self.fidelity}, top_norm={self.top}, bottom_norm={self.bottom})"
        )

    name = "lipschitz"

    def per_example(self, batch: EvalBatch) -> Tensor:
        return self(batch.model, batch.x, batch.logits)

    def __call__(self, model: nn.Module, x: Tensor, logits: Tensor | None = None) -> Tensor:
        """Per-example ratio at the final iterate; ``logits`` (f(x) in eval mode) saves a forward pass."""
        return self.search(model, x, logits)[1]

    def search(self, model: nn.Module, x: Tensor, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The final iterate x' and its per-example ratio, both detached."""
        with attack_context(), model_mode(model, "eval"):
            # clone(): tensors made under inference mode cannot enter autograd.
            x = x.detach().clone()
            with torch.no_grad():
                clean = model(x) if logits is None else logits.detach().clone()
            clean = clean.float()

            def mean_ratio(z: Tensor) -> Tensor:
                return lipschitz_ratio(clean, model(z).float(), x, z, self.top, self.bottom).mean()

            # Descent steps along the gradient of −ratio, as the authors' loss = (−1)·ratio does; the
            # negation is exact in floating point, so the signs match theirs bit for bit.
            sign = 1.0 if self.direction == "ascent" else -1.0
            x_prime = x + self.init_std * torch.randn_like(x)
            for _ in range(self.steps):
                _, grad = input_gradient(mean_ratio, x_prime)
                x_prime = self.threat.project(self.threat.step(x_prime, sign * grad, self.step_size), x)
            with torch.no_grad():
                ratios = lipschitz_ratio(clean, model(x_prime).float(), x, x_prime, self.top, self.bottom)
        return x_prime.detach(), ratios.detach()
