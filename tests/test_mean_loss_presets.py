"""Table presets in both fidelities take the same optimizer steps: the authors' settings are for summed
batch losses (fidelity=faithful); fidelity=paper averages, and the presets convert lr and weight decay
(``robustlip.runs.resolvers``) so that training follows the same trajectory."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from robustlip.core.errors import ConfigError
from robustlip.runs.config import config_dir, instantiate_group
from robustlip.runs.resolvers import mean_loss_lr, mean_loss_weight_decay
from tests.conftest import error_lines, run_cli

TABLE_PRESETS = sorted(p.stem for p in (config_dir() / "experiment").glob("table*.yaml"))
STEPS = 4


def trajectory(optimizer_factory, mean_grads: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Parameters after the optimizer's steps when each gradient is ``scale`` × the mean-loss gradient."""
    param = torch.nn.Parameter(torch.linspace(-1.0, 1.0, mean_grads[0].numel(), dtype=torch.float64))
    optimizer = optimizer_factory([param])
    for grad in mean_grads:
        param.grad = scale * grad.clone()
        optimizer.step()
    return param.detach()


def mean_gradients(n: int = 7) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=generator, dtype=torch.float64) for _ in range(STEPS)]


def test_every_table_preset_is_covered():
    assert {"table2_mnist_cnn1", "table2_mnist_cnn2", "table3_cifar10", "table3_restricted_imagenet",
            "table4_cifar10", "table4_svhn"} <= set(TABLE_PRESETS)


@pytest.mark.parametrize("experiment", TABLE_PRESETS)
def test_table_preset_takes_the_same_steps_in_both_fidelities(experiment, train_cfg):
    for method in ("natural", "rst_lam05"):  # the two lr classes of the WRN presets (1e-2 and 1e-3)
        cfgs = {fidelity: train_cfg([f"experiment={experiment}", f"+experiment/method={method}", f"fidelity={fidelity}"])
                for fidelity in ("faithful", "paper")}
        faithful, paper = cfgs["faithful"], cfgs["paper"]
        batch = faithful.data.batch_size
        assert paper.data.batch_size == batch
        # faithful keeps the authors' numbers, as they are written in the dataset's `paper` block
        assert faithful.optimizer.lr == faithful.data.paper.lr[faithful.objective.name]
        if faithful.optimizer._target_ == "torch.optim.SGD":
            assert paper.optimizer.lr == pytest.approx(batch * faithful.optimizer.lr)
        else:
            assert paper.optimizer.lr == faithful.optimizer.lr  # Adam is scale-invariant
        # The effective step: summed-loss gradients (B × mean) under faithful, mean-loss gradients under paper.
        grads = mean_gradients()
        summed = trajectory(instantiate(faithful.optimizer), grads, scale=batch)
        averaged = trajectory(instantiate(paper.optimizer), grads, scale=1.0)
        start = trajectory(instantiate(paper.optimizer), [g * 0 for g in grads], scale=1.0)
        assert not torch.allclose(summed, start), "the preset must move the parameters"
        assert torch.allclose(averaged, summed, rtol=1e-6, atol=1e-12), f"{experiment} {method}"


@pytest.mark.parametrize("target", ["torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW"])
def test_weight_decay_conversion_keeps_the_step_with_a_nonzero_decay(target):
    batch, lr, decay = 64, 1e-3, 5e-2
    factory = {"torch.optim.SGD": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd),
               "torch.optim.Adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
               "torch.optim.AdamW": lambda p, lr, wd: torch.optim.AdamW(p, lr=lr, weight_decay=wd)}[target]
    grads = mean_gradients()
    summed = trajectory(lambda p: factory(p, lr, decay), grads, scale=batch)
    paper_lr = mean_loss_lr(lr, target, "paper", batch)
    paper_wd = mean_loss_weight_decay(decay, target, "paper", batch)
    averaged = trajectory(lambda p: factory(p, paper_lr, paper_wd), grads, scale=1.0)
    assert torch.allclose(averaged, summed, rtol=1e-6, atol=1e-9)
    # Without the conversion the mean loss takes different steps (for SGD, 64x smaller ones), except with
    # AdamW, whose decoupled decay does not see the gradient's scale: nothing to convert there.
    unconverted = trajectory(lambda p: factory(p, lr, decay), grads, scale=1.0)
    if target == "torch.optim.AdamW":
        assert (paper_lr, paper_wd) == (lr, decay)
    else:
        assert not torch.allclose(unconverted, summed, rtol=1e-4)
    # faithful passes the authors' values through
    assert (mean_loss_lr(lr, target, "faithful", batch), mean_loss_weight_decay(decay, target, "faithful", batch)) == (lr, decay)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1e-2, "torch.optim.LBFGS", "paper", 64), r"optimizer._target_='torch.optim.LBFGS' is not allowed"),
        ((1e-2, "torch.optim.SGD", "exact", 64), r"fidelity='exact' is not allowed; choose one of 'paper', 'faithful'"),
        ((1e-2, "torch.optim.SGD", "paper", 0), r"data.batch_size=0 is not allowed"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(args, message):
    with pytest.raises(ConfigError, match=message) as err:
        mean_loss_lr(*args)
    assert "\n" not in str(err.value)


def test_resolver_errors_surface_as_the_config_error_when_the_optimizer_is_built(train_cfg):
    # What robustlip-train does: one `error:` line naming the key, not OmegaConf's wrapped traceback.
    cfg = train_cfg(["experiment=table4_svhn", "optimizer._target_=torch.optim.LBFGS", "fidelity=paper"])
    with pytest.raises(ConfigError, match="optimizer._target_='torch.optim.LBFGS' is not allowed") as err:
        instantiate_group(cfg, "optimizer")
    assert "\n" not in str(err.value)
    # faithful passes the authors' numbers through whatever the optimizer
    cfg = train_cfg(["experiment=table4_svhn", "optimizer._target_=torch.optim.LBFGS", "fidelity=faithful"])
    assert OmegaConf.select(cfg, "optimizer.lr") == cfg.data.paper.lr.natural


@pytest.mark.parametrize(("overrides", "line"), [
    (["optimizer._target_=torch.optim.LBFGS", "fidelity=paper"],
     "error: optimizer._target_='torch.optim.LBFGS' is not allowed with a preset's summed-loss settings"),
    (["fidelity=exact"], "error: fidelity='exact' is not allowed; choose one of 'paper', 'faithful'"),
    # A method of the user's own has no entry in the authors' table of learning rates.
    (["objective.name=smooth"], ("error: optimizer.lr: this preset takes each method's learning rate from "
                                "data.paper.lr, which has none for objective.name='smooth'; set optimizer.lr=<lr>")),
])
def test_a_preset_refuses_a_setting_it_cannot_take_in_one_line_before_anything_is_written(
        overrides, line, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, err = run_cli("robustlip-train", ["experiment=table4_svhn", *overrides, f"hydra.run.dir={run_dir}"],
                           tmp_path, capsys, monkeypatch)
    assert code == 2 and len(error_lines(err)) == 1 and error_lines(err)[0].startswith(line), err[-2000:]
    assert "Traceback" not in err and not run_dir.exists()
