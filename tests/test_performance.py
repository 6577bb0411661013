"""The speed switches (docs/performance.md): each runs end-to-end, none changes what is computed or saved.

* ``perf=fast`` (channels_last + torch.compile of the net) trains and evaluates through
  ``robustlip.train.train``; the checkpoint it writes has the same keys as a plain run's and loads
  into a plain network with ``weights_only=True``. The compile backend is ``aot_eager`` here (Dynamo
  and AOTAutograd, the parts that could break the input-gradient attacks) so the test takes seconds;
  the benchmarks run the real ``inductor`` backend.
* ``trainer.precision=bf16-mixed`` trains end-to-end, and under autocast the attacks keep their
  arithmetic in float32: ``x_adv`` is float32, inside the ε-ball and the [0, 1] box, and moves by exact
  multiples of the step, although the network itself runs in bfloat16.
* DataLoader workers / pinned memory (``data.num_workers``, ``data.pin_memory``,
  ``data.persistent_workers``) run end-to-end.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from robustlip.attacks import FGSM, PGD
from robustlip.callbacks.performance import PerformanceSwitches, apply_switches, is_compiled, target_network
from robustlip.core.errors import ConfigError
from robustlip.models import DigitsCNN
from robustlip.train import train
from tests.conftest import FAST

#: Dynamo + AOTAutograd without C++ code generation: what compile changes, in seconds.
AOT_EAGER = ["perf.compile_backend=aot_eager"]


def _digits_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return DigitsCNN(width=8)


def _conv_weights(net: nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.dim() == 4]


def _checkpoint_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


# -- the switches themselves ------------------------------------------------------------------------


def test_switches_keep_state_dict_keys_values_and_outputs() -> None:
    plain = _digits_net()
    fast = _digits_net()
    keys = list(plain.state_dict())
    apply_switches(fast, channels_last=True, compile=True, compile_options={"backend": "aot_eager"})

    assert is_compiled(fast) and not is_compiled(plain)
    assert list(fast.state_dict()) == keys  # no `_orig_mod.` prefix
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(fast))
    # A weight with one input channel is contiguous in both layouts, so only the others can tell.
    assert all(not w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(plain) if w.shape[1] > 1)
    # Same weights, same function: the switches change the layout and the code, not the math.
    for (name, a), b in zip(plain.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(5, 1, 8, 8)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    # Checkpoints cross over in both directions.
    plain.load_state_dict(fast.state_dict())
    fast.load_state_dict(_digits_net(seed=1).state_dict())
    torch.testing.assert_close(fast(x), _digits_net(seed=1).eval()(x), rtol=1e-4, atol=1e-5)


def test_switches_are_idempotent_and_keep_parameter_identity() -> None:
    net = _digits_net()
    params = list(net.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        apply_switches(net, channels_last=True, compile=True, compile_options={"backend": "aot_eager"})
    assert all(a is b for a, b in zip(params, net.parameters()))
    assert optimizer.param_groups[0]["params"][0] is next(net.parameters())


def test_channels_last_net_gives_input_gradients_of_the_input_shape() -> None:
    net = apply_switches(_digits_net(), channels_last=True).eval()
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(x), torch.arange(4)), x)
    assert grad.shape == x.shape and grad.dtype == torch.float32


def test_callback_targets_the_net_of_a_robust_classifier() -> None:
    outer = nn.Module()
    outer.net = _digits_net()
    assert target_network(outer) is outer.net
    bare = _digits_net()
    assert target_network(bare) is bare


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"compile_mode": "fastest"}, "perf.compile_mode"),
        ({"matmul_precision": "low"}, "perf.matmul_precision"),
        ({"compile": True, "compile_backend": "no-such-backend"}, "perf.compile_backend"),
        ({"channels_last": "yes"}, "perf.channels_last"),
    ],
)
def test_bad_switch_values_fail_at_construction_naming_the_key(kwargs, key) -> None:
    with pytest.raises(ConfigError, match=key):
        PerformanceSwitches(**kwargs)


def test_perf_configs_compose_and_default_builds_nothing(train_cfg) -> None:
    assert not train_cfg().perf.get("_target_")
    fast = instantiate(train_cfg(["perf=fast"]).perf)
    assert fast.channels_last and fast.compile and fast.compile_backend == "inductor"
    gpu = instantiate(train_cfg(["perf=gpu"]).perf)
    assert gpu.channels_last and gpu.compile and gpu.matmul_precision == "high"


# -- bf16: the attack's arithmetic stays float32 -----------------------------------------------------


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_attack_under_bf16_autocast_keeps_x_adv_float32_in_ball_and_box(norm: str) -> None:
    net = _digits_net().eval()
    seen: list[torch.dtype] = []
    net.classifier.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    torch.manual_seed(0)
    # Pixels at the box edges too, where the projection must clamp.
    x = torch.rand(16, 1, 8, 8)
    x[:4] = 0.0
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    eps = 0.1 if norm == "inf" else 0.5
    attack = PGD(eps=eps, norm=norm, steps=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = attack(net, x, y)

    assert seen and all(dtype == torch.bfloat16 for dtype in seen), "the network did not run in bf16"
    assert x_adv.dtype == torch.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "inf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    assert (size > 0).any(), "the attack did not move"


def test_fgsm_under_bf16_autocast_takes_exact_float32_sign_steps() -> None:
    net = _digits_net().eval()
    x = torch.full((8, 1, 8, 8), 0.5)  # far from the box: the step is not clipped
    y = torch.randint(0, 10, (8,))
    eps = 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = FGSM(eps=eps)(net, x, y)
    step = (x_adv - x) / eps
    # A float32 sign step moves each pixel by exactly ±ε (or 0): no bf16 rounding of x_adv.
    assert x_adv.dtype == torch.float32
    torch.testing.assert_close(step.abs()[step != 0], torch.ones_like(step[step != 0]), rtol=0, atol=1e-6)
    # The bf16 gradient points the same way as the float32 one on almost every pixel.
    with torch.no_grad():
        fp32 = FGSM(eps=eps)(net, x, y)
    agree = ((fp32 - x).sign() == (x_adv - x).sign()).float().mean().item()
    assert agree > 0.9


# -- end to end through robustlip.train.train ---------------------------------------------------------


def test_perf_fast_trains_and_checkpoints_compatibly(train_cfg, tmp_path: Path) -> None:
    cfg = train_cfg(FAST + ["perf=fast", *AOT_EAGER])
    metrics = train(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    state = _checkpoint_state(Path(cfg.paths.output_dir))
    plain_keys = {f"net.{k}" for k in instantiate(cfg.model).state_dict()}
    assert plain_keys <= set(state), "a compiled/channels_last run must save the plain network's keys"
    assert not any("_orig_mod" in k for k in state)
    # ...and its weights load into a network built without any switch.
    fresh = instantiate(cfg.model)
    fresh.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})


def test_bf16_mixed_trains_end_to_end(train_cfg) -> None:
    metrics = train(train_cfg(FAST + ["trainer.precision=bf16-mixed"]))
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["test/adv_acc"] <= 100.0


def test_dataloader_workers_and_pinned_memory_run_end_to_end(train_cfg) -> None:
    overrides = ["data.num_workers=1", "data.pin_memory=true", "data.persistent_workers=true", "evaluate=false"]
    train(train_cfg(FAST + overrides))
