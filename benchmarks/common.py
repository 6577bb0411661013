"""What the benchmark scripts share: devices and clocks, the benchmark nets, synthetic batches, the
framework run (RobustClassifier + objective through ``Trainer.fit``), the plain-PyTorch baseline and
markdown tables.

Conventions every script follows:

* ``--device auto`` picks CUDA when present; every clock reading is preceded by
  ``torch.cuda.synchronize()`` there, so the numbers are device time, not launch time.
* Timings that are compared are measured side by side: repeats of the competing variants are
  interleaved (A, B, C, A, B, C, ...) after one warm-up each, and the median of each is reported, so
  a load spike from another process hits every variant alike.
* Nothing is subtracted from a measurement.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from robustlip.callbacks.performance import PerformanceSwitches
from robustlip.module import RobustClassifier
from robustlip.runs.config import config_dir

# ---------------------------------------------------------------------------------------------------
# devices and clocks
# ---------------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Sample:
    """One measurement: wall seconds and this process's CPU seconds (all its threads) over the same span.

    On a shared machine the wall clock also counts the time other processes held the cores; the CPU
    time counts only this process's own work, so a ratio of CPU times is the steadier comparison there.
    """

    wall: float
    cpu: float


class Clock:
    """Start/stop wall and process-CPU clocks with the device drained at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Sample:
        synchronize(self.device)
        return Sample(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def timed(fn: Callable[[], Any], device: torch.device) -> Sample:
    clock = Clock(device)
    clock.start()
    fn()
    return clock.stop()


def interleaved(variants: dict[str, Callable[[], Sample]], repeats: int, warmup: int = 1) -> dict[str, list[Sample]]:
    """Run every variant ``warmup`` times, then ``repeats`` rounds of all of them in turn.

    Each variant returns the :class:`Sample` it measured itself; the lists of those are returned.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            samples[name].append(fn())
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def wall(samples: Sequence[Sample]) -> float:
    """Median wall seconds."""
    return median([s.wall for s in samples])


def cpu(samples: Sequence[Sample]) -> float:
    """Median process-CPU seconds."""
    return median([s.cpu for s in samples])


def spread(samples: Sequence[Sample]) -> str:
    """Relative half-range of the wall samples, a quick noise indicator for a table cell."""
    values = [s.wall for s in samples]
    mid = median(values)
    return f"±{50 * (max(values) - min(values)) / mid:.0f}%" if mid > 0 else "-"


def load_average() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


def machine_line(device: torch.device) -> str:
    """One line saying where the numbers come from (device, threads, load, versions)."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return (
        f"device: {where} · load avg (1/5/15 min): {load_average()} · torch {torch.__version__} · "
        f"pytorch-lightning {pl.__version__} · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


# ---------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    print(f"\n### {title}\n\n{markdown_table(headers, list(rows))}\n", flush=True)


# ---------------------------------------------------------------------------------------------------
# nets, data, objectives
# ---------------------------------------------------------------------------------------------------


@dataclass
class NetSpec:
    """A benchmark network: how to build it, its input shape and the ε of its dataset."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    eps: float


def cnn1_spec() -> NetSpec:
    from robustlip.models.cnn import CNN1

    return NetSpec("CNN1 (MNIST 1×28×28)", lambda: CNN1(num_classes=10), (1, 28, 28), 0.1)


def wrn_spec(depth: int, width: int) -> NetSpec:
    from robustlip.models.wide_resnet import WideResNet

    return NetSpec(
        f"WRN-{depth}-{width} (CIFAR 3×32×32)",
        lambda: WideResNet(num_classes=10, depth=depth, widen_factor=width),
        (3, 32, 32),
        0.031,
    )


def net_specs(names: Sequence[str], wrn_depth: int, wrn_width: int) -> list[NetSpec]:
    table = {"cnn1": cnn1_spec, "wrn": lambda: wrn_spec(wrn_depth, wrn_width)}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"--nets: unknown {unknown}; choose from {sorted(table)}")
    return [table[n]() for n in names]


def synthetic_batches(shape: tuple[int, int, int], batch_size: int, n_batches: int, seed: int = 0) -> TensorDataset:
    """``n_batches`` full batches of uniform [0, 1] images with random labels (10 classes)."""
    gen = torch.Generator().manual_seed(seed)
    n = batch_size * n_batches
    return TensorDataset(torch.rand(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def make_loader(dataset: TensorDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def compose_run_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/train.yaml composed as ``robustlip-train`` would, with its run directory in a temp folder."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustlip.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="robustlip-bench-")
        cfg.paths.data_dir = cfg.paths.output_dir
    GlobalHydra.instance().clear()
    return cfg


def objective_names() -> list[str]:
    """Every objective the config tree offers (``conf/objective/*.yaml``), natural first."""
    names = sorted(p.stem for p in (config_dir() / "objective").glob("*.yaml"))
    return sorted(names, key=lambda n: (n != "natural", n))


def build_objective(name: str, eps: float, fidelity: str = "paper") -> nn.Module:
    cfg = compose_run_config([f"objective={name}", f"data.eps={eps}", f"fidelity={fidelity}"])
    return instantiate(cfg.objective)


# ---------------------------------------------------------------------------------------------------
# the framework: RobustClassifier + objective through Trainer.fit
# ---------------------------------------------------------------------------------------------------


class LoopClock(pl.Callback):
    """Seconds from ``on_train_start`` to ``on_train_end``: every batch of the epoch with all of
    Lightning's per-step work (data fetching, hooks, logging, optimizer step), without the Trainer's
    one-off setup and teardown."""

    def __init__(self) -> None:
        self.sample = Sample(float("nan"), float("nan"))
        self._clock: Clock | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock = Clock(pl_module.device)
        self._clock.start()

    def on_train_end(self, trainer, pl_module) -> None:
        self.sample = self._clock.stop()


@dataclass
class FitTiming:
    loop: Sample  # on_train_start -> on_train_end
    fit: Sample  # the whole trainer.fit call (setup and teardown included)


class FrameworkRun:
    """One configuration of the framework, run again and again on the same network object.

    The network persists across repeats (so compiled code is reused, as in one long run); each
    repeat builds a new RobustClassifier and Trainer from the project's own config (conf/train.yaml:
    its trainer node, its optimizer, the CSV logger) and fits one epoch of ``loader``. Validation,
    checkpointing and the robust evaluation are per-epoch/test-time work and are switched off.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: nn.Module,
        loader: DataLoader,
        device: torch.device,
        precision: str = "32-true",
        perf: PerformanceSwitches | None = None,
        progress_bar: bool = False,
        log_every_n_steps: int | None = None,
    ) -> None:
        self.net, self.objective, self.loader, self.device = net, objective, loader, device
        self.precision, self.perf, self.progress_bar = precision, perf, progress_bar
        self.cfg = compose_run_config()
        self.log_every_n_steps = log_every_n_steps
        self.last: FitTiming | None = None
        self.fits: list[FitTiming] = []

    def __call__(self) -> Sample:
        cfg = self.cfg
        module = RobustClassifier(self.net, self.objective, optimizer=instantiate(cfg.optimizer), scheduler=None)
        clock = LoopClock()
        callbacks: list[pl.Callback] = [clock] + ([self.perf] if self.perf is not None else [])
        if self.progress_bar:
            callbacks.append(instantiate(cfg.callbacks.progress_bar))
        extra = {} if self.log_every_n_steps is None else {"log_every_n_steps": self.log_every_n_steps}
        trainer = instantiate(
            cfg.trainer,
            accelerator=self.device.type,
            precision=self.precision,
            max_epochs=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_progress_bar=self.progress_bar,
            callbacks=callbacks,
            logger=[instantiate(node) for node in cfg.logger.values()],
            **extra,
        )
        whole = Clock(self.device)
        whole.start()
        trainer.fit(module, train_dataloaders=self.loader)
        self.last = FitTiming(clock.sample, whole.stop())
        self.fits.append(self.last)
        return clock.sample


# ---------------------------------------------------------------------------------------------------
# the baseline: the same AT step written as a plain PyTorch loop
# ---------------------------------------------------------------------------------------------------


def plain_pgd_linf(net: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int) -> Tensor:
    """PGD-ℓ∞ by hand: uniform start, ``steps`` sign steps on the summed CE, projection, eval mode."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(net(x_adv).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


class PlainATLoop:
    """Madry AT (PGD-10, step ε/5, eval-mode attack, mean CE) over ``loader`` with SGD: no Lightning,
    no callbacks, no logging, no metrics. ``autocast`` mirrors ``bf16-mixed``."""

    def __init__(
        self,
        net: nn.Module,
        loader: DataLoader,
        device: torch.device,
        eps: float,
        steps: int = 10,
        lr: float = 0.05,
        momentum: float = 0.9,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.net = net.to(device)
        self.loader, self.device, self.eps, self.steps = loader, device, eps, steps
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=momentum)
        self.autocast_dtype = autocast_dtype

    def step(self, x: Tensor, y: Tensor) -> None:
        net = self.net
        net.eval()
        x_adv = plain_pgd_linf(net, x, y, self.eps, 2 * self.eps / self.steps, self.steps)
        net.train()
        loss = F.cross_entropy(net(x_adv), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def __call__(self) -> Sample:
        clock = Clock(self.device)
        clock.start()
        for x, y in self.loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.autocast_dtype is None:
                self.step(x, y)
            else:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    self.step(x, y)
        return clock.stop()


class UnitPass:
    """The unit of attack cost: one forward and one input-gradient backward (``torch.autograd.grad``
    w.r.t. the input only, no parameter gradients), eval mode, summed float32 CE; ``passes`` of them."""

    def __init__(self, net: nn.Module, x: Tensor, y: Tensor, device: torch.device, passes: int = 11) -> None:
        self.net, self.x, self.y, self.device, self.passes = net, x, y, device, passes

    def __call__(self) -> Sample:
        self.net.eval()
        clock = Clock(self.device)
        clock.start()
        for _ in range(self.passes):
            z = self.x.detach().requires_grad_(True)
            loss = F.cross_entropy(self.net(z).float(), self.y, reduction="sum")
            torch.autograd.grad(loss, z)
        return clock.stop()


def fresh_copy(template: nn.Module, device: torch.device) -> nn.Module:
    """An independent copy of ``template`` on ``device`` (same initial weights for every variant)."""
    return copy.deepcopy(template).to(device)


# ---------------------------------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--nets", default="cnn1,wrn", help="comma list of: cnn1, wrn")
    parser.add_argument("--wrn-depth", type=int, default=None, help="WRN depth (default 40 on CUDA, 10 on CPU)")
    parser.add_argument("--wrn-width", type=int, default=None, help="WRN widen factor (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def setup_from_args(args: argparse.Namespace) -> torch.device:
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.wrn_depth is None:
        args.wrn_depth = 40 if device.type == "cuda" else 10
    if args.wrn_width is None:
        args.wrn_width = 10 if device.type == "cuda" else 2
    torch.manual_seed(args.seed)
    return device


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def root() -> Path:
    return Path(__file__).resolve().parents[1]
