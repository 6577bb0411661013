"""robustlip-visualize: what a model "sees", as image grids (Tsipras et al., ICLR 2019, Sec. 3).

    robustlip-visualize ckpt_path=<run>/checkpoints/last.ckpt
    robustlip-visualize ckpt_path=... what=[gradients]                 # any subset, in any order
    robustlip-visualize ckpt_path=... large_eps.eps=2 large_eps.norm=inf

For any checkpoint written by robustlip-train (the network is rebuilt from the checkpoint's config, the
test images come from its data unless ``data=`` is given), three figures, each a PNG in the run dir:

* ``gradients.png`` — the gradient of the loss w.r.t. the input for ``per_class`` test images of every
  class, shown as image | gradient (clipped to ±3 standard deviations, grey = 0). Tsipras et al. find
  the gradients of standard models noise-like and those of adversarially trained ones aligned with
  perceptible features (their Fig. 2);
* ``large_eps.png`` — for one test image per class (rows), targeted PGD with a large budget towards
  every other class (columns; the diagonal is the original). For a robust model the examples take on
  features of the target class (their Fig. 3);
* ``interpolation.png`` — x + α·(x_adv − x) for α from 0 to 1, from an image to its large-ε example
  towards the next class (their Fig. 4).

``visualize.json`` records the checkpoint, the attack and, per figure, how often the large-ε examples
reach their target class, with the tensors' value ranges.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from robustlip.cli import entry_point
from robustlip.core.errors import (
    ConfigError,
    check_choice,
    check_integer,
    check_non_negative,
    check_positive_int,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from robustlip.attacks.pgd import PGD

# torch and the science modules are imported inside the functions that use them, so that
# `robustlip-visualize --help` and a bad value answer in about a second (docs/performance.md).

log = logging.getLogger(__name__)

WHAT = ("gradients", "large_eps", "interpolation")


# --------------------------------------------------------------------------------------------------
# the three computations (plain functions on a network and a batch: what the tests call)
# --------------------------------------------------------------------------------------------------
def class_examples(dataset: Any, num_classes: int, per_class: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` examples of every class of ``dataset``, class by class."""
    import torch

    picked: dict[int, list[Tensor]] = {c: [] for c in range(num_classes)}
    for i in range(len(dataset)):
        x, y = dataset[i]
        y = int(y)
        if len(picked[y]) < per_class:
            picked[y].append(torch.as_tensor(x))
        if all(len(v) == per_class for v in picked.values()):
            break
    missing = [c for c, v in picked.items() if len(v) < per_class]
    if missing:
        raise ConfigError(f"per_class={per_class} is not allowed: the test set has fewer images of class {missing[0]}")
    xs = [x for c in range(num_classes) for x in picked[c]]
    ys = [c for c in range(num_classes) for _ in range(per_class)]
    return torch.stack(xs), torch.tensor(ys)


def loss_gradients(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """∇ₓ of the cross-entropy of the true labels, per image (the network in eval mode)."""
    import torch.nn.functional as F

    from robustlip.attacks.base import attack_context, input_gradient

    was_training = net.training
    net.eval()
    try:
        with attack_context():
            _, grad = input_gradient(lambda z: F.cross_entropy(net(z), y, reduction="sum"), x)
    finally:
        net.train(was_training)
    return grad


def gradient_display(grad: Tensor, clip_std: float = 3.0) -> Tensor:
    """Each gradient mapped to [0, 1] for display: clipped to ±``clip_std`` of its std, 0 -> grey 0.5."""
    flat = grad.flatten(1)
    bound = (clip_std * flat.std(dim=1, keepdim=True)).clamp_min(1e-12)
    shown = 0.5 + 0.5 * (flat.clamp(-bound, bound) / bound)
    return shown.view_as(grad)


def targeted_examples(net: nn.Module, x: Tensor, targets: Tensor, attack: PGD) -> Tensor:
    """Targeted PGD examples of ``x`` towards ``targets`` (a targeted attack reads y as the target)."""
    if not attack.targeted:
        raise ValueError("targeted_examples needs a targeted attack")
    return attack(net, x, targets)


def large_eps_grid(net: nn.Module, x: Tensor, y: Tensor, num_classes: int, attack: PGD) -> tuple[Tensor, Tensor]:
    """For every image (row) an example towards every class (column; the image itself on its own class).

    Returns (grid of shape rows × classes × C × H × W, reached: rows × classes booleans, True on the
    diagonal when the image is classified correctly).
    """
    import torch

    rows = len(x)
    sources = x.repeat_interleave(num_classes, dim=0)
    targets = torch.arange(num_classes).repeat(rows)
    own = targets == y.repeat_interleave(num_classes)
    adv = targeted_examples(net, sources, targets, attack)
    adv[own] = sources[own]
    with torch.no_grad():
        reached = net.eval()(adv).argmax(1) == targets
    return adv.view(rows, num_classes, *x.shape[1:]), reached.view(rows, num_classes)


def interpolation(x: Tensor, x_adv: Tensor, steps: int) -> Tensor:
    """x + α·(x_adv − x) for ``steps`` values of α from 0 to 1: rows × steps × C × H × W."""
    import torch

    alphas = torch.linspace(0, 1, steps).view(1, steps, *([1] * (x.dim() - 1)))
    return x[:, None] + alphas * (x_adv - x)[:, None]


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
#: The default large-ε budget: ℓ2 ε = 4 on a 28×28 image (Tsipras et al.'s MNIST figures), scaled to the data's size
#: by the same root-mean-square change per pixel: ε = 4·√(pixels/784), 1.14 on 8×8 digits, 7.9 on CIFAR-10.
REFERENCE_L2_EPS, REFERENCE_PIXELS = 4.0, 784


def default_large_eps(in_features: int) -> float:
    return round(REFERENCE_L2_EPS * (int(in_features) / REFERENCE_PIXELS) ** 0.5, 2)


def _check(cfg: DictConfig, in_features: int | None = None) -> tuple[list[str], PGD]:
    """Every value that can be wrong, checked before anything is computed or written."""
    from robustlip.attacks.pgd import PGD

    what = cfg.what if isinstance(cfg.what, (list, tuple)) or OmegaConf.is_list(cfg.what) else [cfg.what]
    what = [str(w) for w in what]
    for w in what:
        if w not in WHAT:
            raise ConfigError(f"what={w!r} is not allowed; choose any of {', '.join(WHAT)}")
    if not what:
        raise ConfigError(f"what=[] is not allowed; choose any of {', '.join(WHAT)}")
    check_integer("seed", cfg.seed)
    check_positive_int("per_class", cfg.per_class)
    check_positive_int("interpolation.steps", cfg.interpolation.steps)
    if cfg.interpolation.steps < 2:
        raise ConfigError(f"interpolation.steps={cfg.interpolation.steps!r} is not allowed; it must be >= 2 (both ends)")
    eps = cfg.large_eps.eps
    if eps is None:  # sized to the data (default_large_eps); ℓ∞ has no such rule
        if str(cfg.large_eps.norm) != "2":
            raise ConfigError("large_eps.eps=null is only for large_eps.norm=2; give an ℓ∞ budget, e.g. large_eps.eps=0.3")
        eps = default_large_eps(in_features or REFERENCE_PIXELS)
    eps = check_non_negative("large_eps.eps", eps)
    norm = check_choice("large_eps.norm", str(cfg.large_eps.norm), ("inf", "2"))
    steps = check_positive_int("large_eps.steps", cfg.large_eps.steps)
    step_size = cfg.large_eps.step_size
    if step_size is not None:
        step_size = check_non_negative("large_eps.step_size", step_size)
    attack = PGD(eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=False, targeted=True)
    return what, attack


def visualize(cfg: DictConfig) -> dict[str, Any]:
    """Write the chosen figures for ``cfg.ckpt_path`` into the run dir; returns what visualize.json holds."""
    from hydra.utils import instantiate

    from robustlip.core.files import write_json_atomic
    from robustlip.reporting.image_grids import save_grid
    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint
    from robustlip.runs.config import save_resolved_config

    what, attack = _check(cfg)
    import torch

    output_dir = Path(cfg.paths.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path)
    train_config = checkpoint_config(ckpt)
    net = net_from_checkpoint(ckpt, train_config)
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else train_config.get("data")
    if data is None:
        raise ConfigError("ckpt_path: the checkpoint's config has no data node; choose one, e.g. data=fashion_mnist")
    if cfg.large_eps.eps is None:
        what, attack = _check(cfg, in_features=data.get("in_features"))
    datamodule = instantiate(data)
    datamodule.setup("test")
    num_classes = int(datamodule.num_classes)
    torch.manual_seed(int(cfg.seed))
    names = [str(n) for n in cfg.class_names] if cfg.get("class_names") else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"class_names has {len(names)} names but the data has {num_classes} classes")
    x, y = class_examples(datamodule.test_set, num_classes, int(cfg.per_class))
    # Every check passed: only now is anything written.
    save_resolved_config(cfg, output_dir)
    label = cfg.get("title") or f"{data.get('name', 'data')} · {train_config.get('objective', {}).get('name', '?')}"
    record: dict[str, Any] = {"checkpoint": str(Path(str(cfg.ckpt_path)).expanduser().resolve()), "attack": repr(attack),
                              "classes": names, "figures": {}}
    per = int(cfg.per_class)
    if "gradients" in what:
        grad = loss_gradients(net, x, y)
        shown = gradient_display(grad)
        pairs = torch.stack([x, shown], dim=1).view(num_classes, per * 2, *x.shape[1:])
        cols = [t for _ in range(per) for t in ("image", "gradient")]
        path = save_grid(output_dir / "gradients.png", pairs, names, cols, f"{label}: loss gradient w.r.t. the input")
        record["figures"]["gradients"] = {"file": path.name, "images": len(x),
                                          "gradient_abs_max": float(grad.abs().max())}
    first = x.view(num_classes, per, *x.shape[1:])[:, 0]
    first_y = torch.arange(num_classes)
    if "large_eps" in what or "interpolation" in what:
        grid, reached = large_eps_grid(net, first, first_y, num_classes, attack)
        off = ~torch.eye(num_classes, dtype=torch.bool)
        # In percent, as every accuracy robustlip prints and records (one unit per quantity).
        record["target_reached"] = round(100 * float(reached[off].float().mean()), 2)
        if "large_eps" in what:
            path = save_grid(output_dir / "large_eps.png", grid, [f"from {n}" for n in names], [f"to {n}" for n in names],
                             f"{label}: targeted PGD, ℓ{'∞' if attack.threat.norm == 'inf' else '2'} ε={attack.eps}")
            record["figures"]["large_eps"] = {"file": path.name, "target_reached": record["target_reached"],
                                              "min": float(grid.min()), "max": float(grid.max())}
        if "interpolation" in what:
            steps = int(cfg.interpolation.steps)
            nxt = (first_y + 1) % num_classes
            x_adv = grid[first_y, nxt]
            rows = min(int(cfg.interpolation.rows), num_classes)
            path_images = interpolation(first[:rows], x_adv[:rows], steps)
            alphas = [f"α={a:.2f}" for a in torch.linspace(0, 1, steps).tolist()]
            path = save_grid(output_dir / "interpolation.png", path_images,
                             [f"{names[i]}→{names[int(nxt[i])]}" for i in range(rows)], alphas,
                             f"{label}: image → large-eps example")
            record["figures"]["interpolation"] = {"file": path.name, "rows": rows, "steps": steps}
    write_json_atomic(output_dir / "visualize.json", record)
    for info in record["figures"].values():
        print(f"wrote {output_dir / info['file']}" + (f" (target reached {info['target_reached']:.0f} %)" if "target_reached" in info else ""))
    return record


#: Console entry ``robustlip-visualize`` (robustlip.cli: bad input is one ``error:`` line, exit 2).
main = entry_point("visualize", visualize)


if __name__ == "__main__":
    main()
