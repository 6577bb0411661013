"""Speed switches for the network, applied by one Lightning callback (``perf=...``, docs/performance.md).

``conf/perf/default.yaml`` builds nothing; ``perf=fast`` builds :class:`PerformanceSwitches`, which,
when the Trainer sets up (before the optimizer is built and before any DDP wrapping):

* ``channels_last``: moves the network's 4-d parameters and buffers to the NHWC memory format. The
  inputs need no conversion: a convolution whose weight is channels_last runs channels_last and
  returns channels_last output (and input gradients) even for an NCHW input, on CPU (oneDNN) and
  CUDA (cuDNN) alike, so every later layer follows. Parameters keep their identity (``Module.to``
  rewrites ``param.data``), so optimizers and checkpoints see the same tensors under the same names.
* ``compile``: compiles the network in place with :meth:`torch.nn.Module.compile`. Unlike
  ``net = torch.compile(net)`` this keeps the module object and its ``state_dict`` keys (no
  ``_orig_mod.`` prefix), so checkpoints written with and without the switch load into each other.
  Attacks call the same network, so the input-gradient passes (10 of the 11 passes of a PGD-10 AT
  step) run compiled too; train/eval mode and ``requires_grad`` of the input are guarded on, so
  each combination compiles once.
* ``matmul_precision``: :func:`torch.set_float32_matmul_precision` (``high`` lets fp32 matmuls and
  convolutions use TF32 tensor cores on Ampere and newer GPUs; leave it ``null`` for exact fp32).

Mixed precision is Lightning's own switch, ``trainer.precision=bf16-mixed``; the attacks keep their
arithmetic in float32 under it (the loss is cast to float32, ``x_adv``, the sign step and the
projection are float32 tensors; see tests/test_performance.py). cuDNN autotuning is
``trainer.benchmark=true``; DataLoader workers and pinned memory are ``data.num_workers``,
``data.pin_memory`` and ``data.persistent_workers``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from robustlip.core.errors import ConfigError, check_choice

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = (None, "highest", "high", "medium")


def target_network(pl_module: nn.Module) -> nn.Module:
    """The network the switches act on: ``pl_module.net`` for a RobustClassifier, else the module itself."""
    net = getattr(pl_module, "net", None)
    return net if isinstance(net, nn.Module) else pl_module


def is_compiled(module: nn.Module) -> bool:
    """Whether :meth:`nn.Module.compile` has been called on ``module``."""
    return getattr(module, "_compiled_call_impl", None) is not None


def apply_switches(
    net: nn.Module,
    channels_last: bool = False,
    compile: bool = False,
    compile_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Apply the network switches in place and return ``net`` (idempotent: safe to call per stage)."""
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile and not is_compiled(net):
        net.compile(**(compile_options or {}))
    return net


class PerformanceSwitches(pl.Callback):
    """Apply channels_last / ``torch.compile`` / matmul precision to the network of a run.

    Args:
        channels_last: convert the network's 4-d tensors to ``torch.channels_last``.
        compile: compile the network in place (``nn.Module.compile``).
        compile_mode: ``torch.compile``'s ``mode`` (``null`` = its default).
        compile_backend: ``torch.compile``'s ``backend`` (``inductor``; ``aot_eager`` skips code
            generation, for debugging or machines without a C++ compiler).
        compile_dynamic: ``torch.compile``'s ``dynamic`` (``null`` = recompile once, then go dynamic).
        matmul_precision: ``null`` leaves PyTorch's setting alone; ``highest``/``high``/``medium``
            set :func:`torch.set_float32_matmul_precision`.
    """

    def __init__(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        compile_dynamic: bool | None = None,
        matmul_precision: str | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("channels_last", channels_last), ("compile", compile)):
            if not isinstance(value, bool):
                raise ConfigError(f"perf.{key}={value!r} is not allowed; use true or false")
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = check_choice("perf.compile_mode", compile_mode, COMPILE_MODES)
        if not isinstance(compile_backend, str) or not compile_backend:
            raise ConfigError(f"perf.compile_backend={compile_backend!r} is not allowed; name a torch.compile backend")
        if compile and compile_backend not in torch.compiler.list_backends(exclude_tags=()):
            raise ConfigError(
                f"perf.compile_backend={compile_backend!r} is not allowed; choose one of "
                f"{', '.join(map(repr, torch.compiler.list_backends(exclude_tags=())))}"
            )
        self.compile_backend = compile_backend
        self.compile_dynamic = compile_dynamic
        self.matmul_precision = check_choice("perf.matmul_precision", matmul_precision, MATMUL_PRECISIONS)

    @property
    def compile_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"backend": self.compile_backend, "dynamic": self.compile_dynamic}
        if self.compile_mode is not None:
            options["mode"] = self.compile_mode
        return options

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(channels_last={self.channels_last}, compile={self.compile}, "
            f"compile_options={self.compile_options}, matmul_precision={self.matmul_precision})"
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.matmul_precision is not None:
            torch.set_float32_matmul_precision(self.matmul_precision)
        apply_switches(target_network(pl_module), self.channels_last, self.compile, self.compile_options)
