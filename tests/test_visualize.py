"""robustlip-visualize: input gradients, large-ε targeted examples and interpolations of any checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from robustlip.attacks.pgd import PGD
from robustlip.visualize import (
    class_examples,
    gradient_display,
    interpolation,
    large_eps_grid,
    loss_gradients,
    visualize,
)
from tests.conftest import compose_train_cfg


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A digits MLP trained for two epochs: enough for targeted attacks to have somewhere to go."""
    from robustlip.train import train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    cfg = compose_train_cfg(run, ["model=mlp", "trainer.max_epochs=2", "evaluate=false", "trainer.enable_progress_bar=false",
                                  "~callbacks.progress_bar"])
    try:
        train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return run / "checkpoints" / "last.ckpt"


def _net_and_data(checkpoint: Path):
    from hydra.utils import instantiate

    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    config = checkpoint_config(ckpt)
    datamodule = instantiate(config["data"])
    datamodule.setup("test")
    return net_from_checkpoint(ckpt, config), datamodule


def test_the_three_computations_keep_their_definitions(checkpoint):
    torch.manual_seed(0)
    net, datamodule = _net_and_data(checkpoint)
    x, y = class_examples(datamodule.test_set, 10, 2)
    assert x.shape == (20, 1, 8, 8) and y.tolist() == [c for c in range(10) for _ in range(2)]
    # The gradient is the input gradient of the summed cross-entropy: equal to autograd's, per image.
    grad = loss_gradients(net, x, y)
    z = x.clone().requires_grad_(True)
    F.cross_entropy(net(z), y, reduction="sum").backward()
    torch.testing.assert_close(grad, z.grad)
    shown = gradient_display(grad)
    assert shown.shape == x.shape and shown.min() >= 0 and shown.max() <= 1
    # Large-ε targeted PGD: inside the ε-ball and the pixel box, the originals on the diagonal, and most
    # off-diagonal examples reach their target class.
    attack = PGD(eps=3.0, norm="2", steps=20, random_start=False, targeted=True)
    first, first_y = x[::2], y[::2]
    grid, reached = large_eps_grid(net, first, first_y, 10, attack)
    assert grid.shape == (10, 10, 1, 8, 8) and reached.shape == (10, 10)
    assert grid.min() >= 0 and grid.max() <= 1
    delta = (grid - first[:, None]).flatten(2).norm(dim=2)
    assert float(delta.max()) <= 3.0 + 1e-4
    for i in range(10):
        assert torch.equal(grid[i, i], first[i])
    off = ~torch.eye(10, dtype=torch.bool)
    assert reached[off].float().mean() > 0.8
    # The interpolation starts at the image and ends at its example, in equal steps.
    path = interpolation(first[:3], grid[torch.arange(3), torch.arange(1, 4)], 5)
    assert path.shape == (3, 5, 1, 8, 8)
    torch.testing.assert_close(path[:, 0], first[:3])
    torch.testing.assert_close(path[:, -1], grid[torch.arange(3), torch.arange(1, 4)])
    torch.testing.assert_close(path[:, 2], (first[:3] + grid[torch.arange(3), torch.arange(1, 4)]) / 2)


def test_the_command_writes_three_grids_of_the_right_size(checkpoint, tmp_path):
    cfg = compose_train_cfg(tmp_path, [f"ckpt_path={checkpoint}", "per_class=1", "large_eps.steps=10",
                                       "interpolation.steps=4", "interpolation.rows=3"], config_name="visualize")
    try:
        record = visualize(cfg)
    finally:
        GlobalHydra.instance().clear()
    sizes = {}
    for name in ("gradients", "large_eps", "interpolation"):
        png = tmp_path / f"{name}.png"
        assert png.stat().st_size < 200_000  # small enough for docs/
        sizes[name] = Image.open(png).size
    # Columns × rows of 8×8 cells: gradients 2 × 10, large-ε 10 × 10, interpolation 4 × 3.
    (gw, gh), (lw, lh), (iw, ih) = sizes["gradients"], sizes["large_eps"], sizes["interpolation"]
    assert lw > gw and lh == pytest.approx(gh, rel=0.05) and ih < lh / 2 and iw < lw
    saved = json.loads((tmp_path / "visualize.json").read_text())
    assert saved["figures"]["large_eps"]["target_reached"] == record["target_reached"]
    assert 0 <= saved["figures"]["large_eps"]["min"] and saved["figures"]["large_eps"]["max"] <= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [("large_eps.eps=-1", "large_eps.eps=-1 is not allowed; it must be a number >= 0"),
     ("what=[gradients,saliency]", "what='saliency' is not allowed; choose any of gradients, large_eps, interpolation"),
     ("per_class=500", "per_class=500 is not allowed: the test set has fewer images of class 0")],
)
def test_bad_input_is_one_line(checkpoint, tmp_path, capsys, monkeypatch, override, message):
    from robustlip.visualize import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["robustlip-visualize", f"ckpt_path={checkpoint}", override,
                                      f"hydra.run.dir={tmp_path / 'vis'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    GlobalHydra.instance().clear()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and errors == [f"error: {message}"]
    assert not list((tmp_path / "vis").glob("*.png"))
