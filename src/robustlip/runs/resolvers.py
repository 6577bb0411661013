"""OmegaConf resolvers the config tree uses; registered whenever ``robustlip.conf`` is composed.

``${robustlip.num_classes:FULL,CLASSES}``: a dataset's class count, or ``len(data.classes)`` when a
subset of labels is selected (docs/datasets.md).

``${robustlip.mean_loss_lr:LR,OPTIMIZER,FIDELITY,BATCH[,METHOD]}`` and
``${robustlip.mean_loss_weight_decay:WD,OPTIMIZER,FIDELITY,BATCH}`` turn optimizer settings tuned for
the authors' *summed* batch losses into the settings that take the same steps on the *mean* losses of
``fidelity=paper`` (docs/sweeps.md, "Learning rates and fidelity"). Every loss of the authors' code
is a batch sum (``lolip/models/torch_model.py`` L105-108 of github yangarbiter/robust-local-lipschitz),
so its gradient is B times the mean loss's (B = batch size). Then, per optimizer:

* SGD (with or without momentum): θ ← θ − η·(B·g + λ·θ) = θ − (B·η)·(g + (λ/B)·θ), so the mean loss
  takes the same steps with lr × B and weight decay ÷ B;
* Adam-type with weight decay added to the gradient (Adam, Adamax, NAdam, RAdam): the update is
  invariant to scaling the whole gradient (up to its ε), and B·g + λ·θ = B·(g + (λ/B)·θ): lr unchanged,
  weight decay ÷ B;
* AdamW (decoupled weight decay θ ← θ − η·λ·θ, independent of the gradient's scale): both unchanged.

``fidelity=faithful`` keeps the summed losses, so the values pass through unchanged (whatever the
optimizer). With ``fidelity=paper`` an optimizer outside these families has no known equivalent: a
ConfigError names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from robustlip.core.errors import ConfigError
from robustlip.core.fidelity import fidelity_named

#: Optimizers whose step scales with the gradient: lr × B and weight decay ÷ B.
LINEAR_OPTIMIZERS = ("torch.optim.SGD",)
#: Scale-invariant optimizers with weight decay added to the gradient: lr unchanged, weight decay ÷ B.
ADAPTIVE_COUPLED = ("torch.optim.Adam", "torch.optim.Adamax", "torch.optim.NAdam", "torch.optim.RAdam")
#: Scale-invariant optimizers with decoupled weight decay: both unchanged.
ADAPTIVE_DECOUPLED = ("torch.optim.AdamW",)
KNOWN_OPTIMIZERS = LINEAR_OPTIMIZERS + ADAPTIVE_COUPLED + ADAPTIVE_DECOUPLED


def _check(optimizer: str, fidelity: str, batch_size: int) -> bool:
    """True when the setting must be converted (fidelity=paper); validates the other arguments."""
    converts = not fidelity_named(fidelity).sums_losses
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size!r} is not allowed; it must be an integer >= 1")
    if converts and optimizer not in KNOWN_OPTIMIZERS:
        raise ConfigError(
            f"optimizer._target_={optimizer!r} is not allowed with a preset's summed-loss settings; "
            f"choose one of {', '.join(map(repr, KNOWN_OPTIMIZERS))} or set optimizer.lr explicitly"
        )
    return converts


def mean_loss_lr(lr: float | None, optimizer: str, fidelity: str, batch_size: int, method: str | None = None) -> float:
    """The learning rate that takes the summed-loss step ``lr`` on this fidelity's loss (module docstring).

    ``lr`` None: the preset's table of the authors' rates (``data.paper.lr``) has none for ``method``, a
    method of the user's own; the error says how to give one.
    """
    if lr is None:
        raise ConfigError(
            f"optimizer.lr: this preset takes each method's learning rate from data.paper.lr, which has none for "
            f"objective.name={method!r}; set optimizer.lr=<lr> on the command line, or add {method}: <lr> to "
            "paper.lr in the dataset's config"
        )
    if _check(optimizer, fidelity, batch_size) and optimizer in LINEAR_OPTIMIZERS:
        return float(lr) * batch_size
    return float(lr)


def mean_loss_weight_decay(weight_decay: float, optimizer: str, fidelity: str, batch_size: int) -> float:
    """The weight decay that gives the summed-loss one's step on this fidelity's loss (module docstring)."""
    if _check(optimizer, fidelity, batch_size) and optimizer not in ADAPTIVE_DECOUPLED:
        return float(weight_decay) / batch_size
    return float(weight_decay)


def num_classes(full: int, classes: Sequence[Any] | None = None) -> int:
    """``${robustlip.num_classes:10,${data.classes}}``: the dataset's class count, or len(data.classes).

    A DataModule with ``classes`` relabels the chosen labels 0..k-1 (docs/datasets.md), so every node
    that interpolates ``${data.num_classes}`` (a model's output layer, above all) must see k.
    """
    return int(full) if classes is None else len(classes)


def register_resolvers() -> None:
    """Register the resolvers once per process (composition calls this; repeated calls are no-ops)."""
    for name, function in (
        ("robustlip.mean_loss_lr", mean_loss_lr),
        ("robustlip.mean_loss_weight_decay", mean_loss_weight_decay),
        ("robustlip.num_classes", num_classes),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
