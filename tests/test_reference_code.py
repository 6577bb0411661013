"""The authors' training code transcribed line by line, and robustlip's ``fidelity=faithful`` objectives
compared with it: loss, every parameter gradient and BatchNorm's running statistics.

Transcribed from github yangarbiter/robust-local-lipschitz at 656616a (``lolip/models/torch_model.py``
L128-235, the training loop; ``lolip/models/torch_utils/llr.py`` L9-80; ``lolip/models/torch_utils/trades.py``
L15-89; ``lolip/attacks/torch/projected_gradient_descent.py`` L13-44, L92-195 and
``lolip/attacks/torch/fast_gradient_method.py`` with cleverhans' ``optimize_linear``, whose ℓ∞ step is
``eps * sign(grad)``). Departures, none of which changes the arithmetic: no ``.cuda()``; random draws in
the inputs' dtype (the authors' ``torch.randn(x.shape)`` is float32, their inputs too); FGM's
``x.to(torch.float)`` is left out so the whole computation stays in float64; ``optimizer.zero_grad()``
becomes ``model.zero_grad()``. ``fidelity=paper`` TRADES is compared with TRADES' own reference code
(github yaodongyu/TRADES at 6e8e11b, ``trades.py`` L14-84).

The network has BatchNorm and dropout, so the comparison sees the order and mode of every forward
(each train-mode forward moves the running statistics and draws a dropout mask). Everything runs in
float64: at 1e-6 the test compares the code, not float32 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.objectives import RST, TRADES, AdversarialTraining, LocalLinearity, Objective

TOL = 1e-6
EPS = 0.1


def reference_net() -> nn.Module:
    """Small, with BatchNorm (running statistics) and dropout (a mask per train-mode forward), float64."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    ).double()


def batch(n: int = 16) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=generator, dtype=torch.float64), torch.randint(0, 10, (n,), generator=generator)


def running_stats(model: nn.Module) -> list[Tensor]:
    bn = model[1]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def sum_ce(outputs: Tensor, y: Tensor) -> Tensor:
    """``get_loss(..., reduction="sum")``: every loss of the authors' training loop."""
    return F.cross_entropy(outputs, y, reduction="sum")


# --- transcriptions ---------------------------------------------------------------------------------------


def authors_pgd(model_fn, x: Tensor, y: Tensor, eps: float, eps_iter: float, nb_iter: int) -> Tensor:
    """``projected_gradient_descent`` (ℓ∞, clip_min=0, clip_max=1, rand_init, loss_fn=None: mean CE),
    with ``fast_gradient_method`` as its inner step."""
    eta = torch.zeros_like(x).uniform_(-eps, eps)
    eta = torch.clamp(eta, -eps, eps)  # clip_eta, ℓ∞
    adv_x = torch.clamp(x + eta, 0, 1)
    for _ in range(nb_iter):
        # fast_gradient_method
        xg = adv_x.clone().detach().requires_grad_(True)
        loss = nn.CrossEntropyLoss()(model_fn(xg), y)
        loss.backward()
        adv_x = torch.clamp(xg + eps_iter * torch.sign(xg.grad), 0, 1)
        # back in projected_gradient_descent
        eta = torch.clamp(adv_x - x, -eps, eps)
        adv_x = torch.clamp(x + eta, 0, 1)
    return adv_x


def authors_at_step(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``torch_model.py`` L223-232, an ``adv`` loss name: train-mode PGD, then CE of the adversarial batch."""
    model.train()
    x = authors_pgd(model, x, y, eps=eps, eps_iter=eps / 5, nb_iter=10)
    model.zero_grad()
    outputs = model(x)
    return outputs, sum_ce(outputs, y)


def authors_rst_step(model: nn.Module, x: Tensor, y: Tensor, eps: float, beta: float) -> tuple[Tensor, Tensor]:
    """``torch_model.py`` L201-222, ``advbeta``: train-mode PGD, CE(adv) then CE(clean) in that order."""
    model.train()
    advx = authors_pgd(model, x, y, eps=eps, eps_iter=eps / 5, nb_iter=10)
    model.zero_grad()
    outputs = model(advx)
    adv_loss = sum_ce(outputs, y)
    loss = sum_ce(model(x), y) + beta * adv_loss
    return outputs, loss


def authors_sllr_step(model: nn.Module, x: Tensor, y: Tensor, eps: float, lambd: float, mu: float) -> tuple[Tensor, Tensor]:
    """``locally_linearity_regularization`` (ℓ∞, version "sum") as ``torch_model.py`` L181-200 calls it:
    step_size = ε/2, perturb_steps = 2."""
    norm, step_size, perturb_steps = math.inf, eps / 2, 2
    model.eval()
    batch_size = len(x)

    def model_grad(x):
        x.requires_grad_(True)
        lx = sum_ce(model(x), y)
        lx.backward()
        ret = x.grad
        x.grad.zero_()  # zeroes ret too: the same tensor
        x.requires_grad_(False)
        return ret

    def grad_dot(x, delta, model_grad):
        ret = torch.matmul(model_grad.flatten(start_dim=1), delta.flatten(start_dim=1).T)
        return torch.mean(ret)

    def g(x, delta, model_grad):
        ret = sum_ce(model(x + delta), y) - grad_dot(x, delta, model_grad)
        return torch.abs(ret)

    mg = model_grad(x)
    delta = (0.001 * torch.randn(x.shape, dtype=x.dtype)).detach().requires_grad_(True)
    optimizer_delta = torch.optim.SGD([delta], lr=step_size)
    for _ in range(perturb_steps):
        optimizer_delta.zero_grad()
        loss = (-1) * g(x, delta, mg)
        loss.backward()
        grad_norms = delta.grad.view(batch_size, -1).norm(p=norm, dim=1)
        delta.grad.div_(grad_norms.view(-1, 1, 1, 1))
        if (grad_norms == 0).any():
            delta.grad[grad_norms == 0] = torch.randn_like(delta.grad[grad_norms == 0])
        optimizer_delta.step()
        delta.data.add_(x)
        delta.data.clamp_(0, 1).sub_(x)
        delta.data.renorm_(p=norm, dim=0, maxnorm=eps)
    delta.requires_grad_(False)

    model.train()
    model.zero_grad()
    outputs = model(x)
    loss_natural = sum_ce(outputs, y)
    loss = loss_natural + lambd * g(x, delta, mg) + mu * grad_dot(x, delta, mg) * len(x)
    return outputs, loss


def authors_strades_step(model: nn.Module, x: Tensor, y: Tensor, eps: float, beta: float, steps: int = 10) -> tuple[Tensor, Tensor]:
    """``trades_loss`` (ℓ∞, version "sum"), step_size = 2ε/steps as ``torch_model.py`` L155-158 passes it."""
    step_size = eps * 2 / steps
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x)
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    model.zero_grad()
    outputs = model(x)
    loss_natural = sum_ce(outputs, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    loss = loss_natural + beta * batch_size * loss_robust
    return outputs, loss


def zhang_trades_step(model: nn.Module, x: Tensor, y: Tensor, eps: float, beta: float, steps: int = 10) -> tuple[Tensor, Tensor]:
    """``trades_loss`` of TRADES' reference code (ℓ∞ branch), step_size = 2ε/steps: mean CE, KL summed ÷ B,
    train-mode forwards clean → adversarial → clean (L79-82)."""
    step_size = eps * 2 / steps
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x)
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, dtype=x.dtype).detach()
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    model.zero_grad()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    loss = loss_natural + beta * loss_robust
    return logits, loss


# --- comparison -------------------------------------------------------------------------------------------


def one_step(run, seed: int = 7) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Loss, logits, parameter gradients and running statistics of one training step from a fresh network."""
    model = reference_net().train()
    x, y = batch()
    torch.manual_seed(seed)
    logits, loss = run(model, x.clone(), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss.detach(), logits.detach(), [g.detach() for g in grads], running_stats(model)


def ours(objective: Objective):
    def run(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        out = objective(model, x, y)
        return out.logits, out.loss

    return run


def assert_same_step(got, want) -> None:
    loss, logits, grads, stats = got
    ref_loss, ref_logits, ref_grads, ref_stats = want
    assert loss.item() == pytest.approx(ref_loss.item(), rel=TOL)
    assert torch.allclose(logits, ref_logits, rtol=TOL, atol=TOL)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=TOL, atol=TOL), (g - r).abs().max().item()
    for s, r in zip(stats, ref_stats):
        assert torch.equal(s, r) if s.dtype == torch.long else torch.allclose(s, r, rtol=TOL, atol=1e-12)


def test_faithful_at_is_the_authors_train_mode_pgd_step():
    want = one_step(lambda m, x, y: authors_at_step(m, x, y, eps=EPS))
    assert want[3][2].item() == 11, "ten attack forwards and one training forward, all in train mode"
    assert_same_step(one_step(ours(AdversarialTraining(eps=EPS, fidelity="faithful"))), want)


def test_faithful_rst_is_the_authors_advbeta_step():
    want = one_step(lambda m, x, y: authors_rst_step(m, x, y, eps=EPS, beta=2.0))
    assert want[3][2].item() == 12
    assert_same_step(one_step(ours(RST(eps=EPS, lam=2.0, fidelity="faithful"))), want)


def test_faithful_llr_is_the_authors_sllr_step_inner_loop_included():
    want = one_step(lambda m, x, y: authors_sllr_step(m, x, y, eps=EPS, lambd=4.0, mu=3.0))
    assert want[3][2].item() == 2, "the inner loop runs in eval mode; clean then perturbed in train mode"
    assert_same_step(one_step(ours(LocalLinearity(eps=EPS, lam=4.0, mu=3.0, fidelity="faithful"))), want)


def test_faithful_trades_is_the_authors_strades_step_gradients_included():
    want = one_step(lambda m, x, y: authors_strades_step(m, x, y, eps=EPS, beta=6.0))
    assert want[3][2].item() == 3
    assert_same_step(one_step(ours(TRADES(eps=EPS, beta=6.0, fidelity="faithful"))), want)


def test_paper_trades_is_trades_reference_step():
    want = one_step(lambda m, x, y: zhang_trades_step(m, x, y, eps=EPS, beta=6.0))
    assert want[3][2].item() == 3, "clean, adversarial, clean: TRADES' own order"
    assert_same_step(one_step(ours(TRADES(eps=EPS, beta=6.0, fidelity="paper"))), want)
