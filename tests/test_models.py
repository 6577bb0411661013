"""The paper's networks: exact sizes (docs/authors-code.md §3), dropout where the authors put it, and every
dataset/architecture pair composes through Hydra and runs a batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from robustlip.models import CNN1, CNN2, MLP, DigitsCNN, ResNet50, WideResNet
from tests._fake_datasets import relax_md5, write_fake


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


# -- parameter counts from docs/authors-code.md §3's layer lists, computed independently of the code -----------------------
def expected_cnn1(c: int) -> int:
    return conv(1, 32, 3) + conv(32, 64, 3) + linear(64 * 12 * 12, 128) + linear(128, c)


def expected_cnn2(c: int) -> int:
    convs = conv(1, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
    return convs + linear(64 * 4 * 4, 200) + linear(200, 200) + linear(200, c)


def expected_wrn(depth: int, k: int, c: int) -> int:
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = conv(3, 16, 3, bias=False)
    for stage in range(3):
        for i in range(n):
            cin = widths[stage] if i == 0 else widths[stage + 1]
            cout = widths[stage + 1]
            total += 2 * cin + conv(cin, cout, 3, False) + 2 * cout + conv(cout, cout, 3, False)
            total += conv(cin, cout, 1, False) if cin != cout else 0
    return total + 2 * widths[3] + linear(widths[3], c)  # final BN + fc; no sub_block1


def expected_resnet50(c: int) -> int:
    total = conv(3, 64, 7, False) + 2 * 64
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            total += conv(cin, width, 1, False) + 2 * width + conv(width, width, 3, False) + 2 * width
            total += conv(width, 4 * width, 1, False) + 2 * 4 * width
            if i == 0:  # projection shortcut (channels change in every stage's first block)
                total += conv(cin, 4 * width, 1, False) + 2 * 4 * width
            cin = 4 * width
    return total + linear(2048, c)


def test_parameter_counts_match_the_spec_layer_lists():
    assert expected_resnet50(1000) == 25_557_032  # the published torchvision ResNet-50 size: formula sanity
    assert n_params(CNN1(num_classes=10)) == expected_cnn1(10) == 1_199_882
    assert n_params(CNN2(num_classes=10)) == expected_cnn2(10) == 312_202
    assert n_params(WideResNet(num_classes=10, depth=40, widen_factor=10)) == expected_wrn(40, 10, 10)
    assert expected_wrn(40, 10, 10) == 55_841_754
    assert n_params(WideResNet(num_classes=10, depth=16, widen_factor=2)) == expected_wrn(16, 2, 10)
    assert n_params(ResNet50(num_classes=9)) == expected_resnet50(9) == 23_526_473


# -- forward and input gradient at each dataset's shape, with and without dropout ---------------------------
def _forward_and_input_grad(model: nn.Module, shape: tuple[int, ...], classes: int, train: bool) -> torch.Tensor:
    model.train(train)
    x = torch.rand(*shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (shape[0], classes)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, torch.zeros(shape[0], dtype=torch.long)), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    return logits


CASES = {  # name: (constructor, input shape, classes)
    "cnn1": (lambda p: CNN1(dropout=p), (4, 1, 28, 28), 10),
    "cnn2": (lambda p: CNN2(dropout=p), (4, 1, 28, 28), 10),
    "digits_cnn": (lambda p: DigitsCNN(dropout=p or 0.0), (4, 1, 8, 8), 10),
    "mlp": (lambda p: MLP(num_classes=2, in_features=784, dropout=p or 0.0), (4, 1, 28, 28), 2),
    "wrn_16_2": (lambda p: WideResNet(depth=16, widen_factor=2, dropout=p or 0.0), (2, 3, 32, 32), 10),
    "resnet50": (lambda p: ResNet50(num_classes=9, dropout=p or 0.0), (2, 3, 64, 64), 9),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_input_gradient_with_and_without_dropout(name):
    make, shape, classes = CASES[name]
    torch.manual_seed(0)
    off, on = make(0.0), make(0.3)
    if name == "cnn2":  # the authors zero-init CNN2's last layer: give it weights so dropout shows
        nn.init.normal_(off.classifier[-1].weight)
    on.load_state_dict(off.state_dict())  # same weights: only the dropout differs
    x = torch.rand(*shape)
    with torch.no_grad():  # eval first: the training passes below update BatchNorm statistics
        off.eval(), on.eval()
        torch.testing.assert_close(off(x), on(x))  # dropout is inactive in eval mode
        off.train(), on.train()
        # Without dropout, training-mode passes are deterministic; with it, two passes differ.
        assert torch.equal(off(x), off(x))
        assert not torch.equal(on(x), on(x))
    for model in (off, on):
        _forward_and_input_grad(model, shape, classes, train=True)


def test_wrn_40_10_runs_at_cifar_shape_with_dropout():
    torch.manual_seed(0)
    model = WideResNet(num_classes=10, depth=40, widen_factor=10, dropout=0.2)
    assert all(block.dropout == 0.2 for stage in (model.block1, model.block2, model.block3) for block in stage)
    assert sum(len(stage) for stage in (model.block1, model.block2, model.block3)) == 18  # n = 6 per stage
    _forward_and_input_grad(model, (1, 3, 32, 32), 10, train=True)


# -- dropout placement and initialisation as the authors --------------------------------------------------
def test_cnn1_layout_no_relu_after_conv2_and_the_authors_dropout():
    model = CNN1()  # dropout=None: the authors' 0.25 (channel-wise) and 0.5
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "MaxPool2d", "Dropout2d"]
    assert model.features[4].p == 0.25
    drops = [m for m in model.classifier if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5] and isinstance(model.classifier[3], nn.Dropout)
    model.eval()
    feats = model.features(torch.rand(8, 1, 28, 28))
    assert (feats < 0).any()  # no ReLU after conv2: pooled features can be negative
    model.train()
    torch.manual_seed(0)
    dropped = model.features(torch.rand(8, 1, 28, 28))
    whole = (dropped.flatten(2) == 0).all(-1)  # Dropout2d zeroes whole channels
    assert 0.1 < whole.float().mean() < 0.4
    assert CNN1(dropout=[0.1, 0.2]).features[4].p == 0.1 and CNN1(dropout=0).classifier[3].p == 0


def test_cnn2_init_and_dropout():
    model = CNN2()
    assert model.classifier[3].p == 0.5 and isinstance(model.classifier[3], nn.Dropout)
    assert torch.count_nonzero(model(torch.rand(3, 1, 28, 28))) == 0  # last layer zero-initialised
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    big = convs[-1].weight  # Kaiming normal, fan_in, ReLU gain: std sqrt(2 / (64*9))
    assert big.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def test_wrn_init_and_shortcut_on_activated_input():
    model = WideResNet(depth=16, widen_factor=4)
    conv1 = model.block2[0].conv1
    assert conv1.weight.std().item() == pytest.approx((2 / (9 * conv1.out_channels)) ** 0.5, rel=0.1)
    assert torch.count_nonzero(model.fc.bias) == 0
    assert model.block1[0].shortcut is not None and model.block1[1].shortcut is None
    assert not hasattr(model, "sub_block1")


def test_resnet50_dropout_only_in_non_first_bottlenecks():
    model = ResNet50(num_classes=9, dropout=0.2)
    rates = [[block.drop_rate for block in stage] for stage in (model.net.layer1, model.net.layer2,
                                                                 model.net.layer3, model.net.layer4)]
    assert rates == [[0.0, 0.2, 0.2], [0.0, 0.2, 0.2, 0.2], [0.0] + [0.2] * 5, [0.0, 0.2, 0.2]]
    # Dropout sits between conv2's ReLU and conv3: conv3 of a dropped block sees extra zeros.
    seen = {}
    block = model.net.layer1[1]
    block.conv3.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    block.drop_rate = 0.9
    model.train()
    model(torch.rand(2, 3, 64, 64))
    assert (seen["x"] == 0).float().mean() > 0.85


def test_normalization_is_inside_the_network():
    torch.manual_seed(0)
    raw = CNN1(dropout=0.0).eval()
    normed = CNN1(dropout=0.0, mean=[0.5], std=[0.25]).eval()
    weights = {k: v for k, v in raw.state_dict().items() if not k.startswith("normalize.")}
    normed.load_state_dict(weights, strict=False)  # the weights, not the normalisation buffers
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(normed(x), raw((x - 0.5) / 0.25))


# -- every dataset with its paper architectures composes and runs a batch ----------------------------------
PAIRS = {
    "digits": ["digits_cnn", "mlp"],
    "mnist": ["cnn1", "cnn2"],
    "fashion_mnist": ["cnn1", "cnn2"],
    "svhn": ["wrn_40_10"],
    "cifar10": ["wrn_40_10"],
    "restricted_imagenet": ["resnet50"],
    "tsipras": ["mlp", "cnn1"],
    "staircase": ["mlp"],
}
ARCH_CLASS = {"cnn1": CNN1, "cnn2": CNN2, "wrn_40_10": WideResNet, "resnet50": ResNet50, "mlp": MLP,
              "digits_cnn": DigitsCNN}


@pytest.mark.parametrize("data", sorted(PAIRS))
def test_every_dataset_and_paper_architecture_compose_and_run_a_batch(train_cfg, monkeypatch, data):
    relax_md5(monkeypatch)
    small = ["data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "data.val_size=0"]
    if data == "fashion_mnist":
        small.append("data.raw_dir=null")  # the fake files, even where the Debian package is installed
    for arch in PAIRS[data] + ["paper"]:
        cfg = train_cfg([f"data={data}", f"model={arch}", *small])
        if arch == "paper":
            model = instantiate(cfg.model)
            assert type(model) is ARCH_CLASS[cfg.data.paper.model]
            continue
        if "data_dir" in cfg.data:  # the synthetic sets are generated, not read
            write_fake(data, Path(cfg.data.data_dir))
        dm = instantiate(cfg.data)
        dm.setup()
        x, _y = next(iter(dm.train_dataloader()))
        assert x.shape[1:] == dm.input_shape and x.min() >= 0 and x.max() <= 1
        torch.manual_seed(0)
        model = instantiate(cfg.model).eval()
        with torch.no_grad():
            logits = model(x[:1])
        assert logits.shape == (1, dm.num_classes) and torch.isfinite(logits).all()
