"""robustlip-eval on any model: the same small network through every source gives the same numbers.

One network (torchvision's ResNet-18 with 10 classes, random weights, on a CIFAR-10 written in its real
on-disk format) is written in every source's own format: a robustlip checkpoint, a state dict (.pt), a
safetensors file, a TorchScript file, torchvision and timm by name with a local weights file, and
RobustBench's zoo (an entry registered for the test, its weights where ``robustbench.utils.load_model``
reads them). timm's ResNet-18 has torchvision's parameter names and arithmetic, so all seven must agree
to the last bit. Wrong inputs get one line each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from robustlip.core.errors import ConfigError
from robustlip.evaluate import evaluate
from robustlip.runs.checkpoints import CheckpointError
from tests._fake_datasets import relax_md5, write_cifar10
from tests.conftest import compose_train_cfg, error_lines, run_cli

#: The same measurements for every source: a short PGD at CIFAR-10's ε and a short Lipschitz search on 8 test points
#: (a ResNet-18 is the smallest network that torchvision and timm both name; a CPU pass over 8 images costs ~40 ms).
SAME = ["data=cifar10", "data.test_size=8", "data.eval_batch_size=8", "attack=pgd", "attack.steps=3", "lipschitz=local",
        "lipschitz.steps=1", "seed=0", "sanity=null", "evaluate_train=false", "progress=false", "device=cpu"]
ZOO_NAME = "Robustlip2026Test_R18"


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The network in every format, and a fake CIFAR-10 folder."""
    root = tmp_path_factory.mktemp("sources")
    write_cifar10(root / "data", per_batch=10, n_test=20)
    net = resnet18()
    weights = net.state_dict()
    torch.save(weights, root / "net.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in weights.items()}, str(root / "net.safetensors"))
    torch.jit.save(torch.jit.script(net), str(root / "net.torchscript.pt"))
    zoo = root / "models" / "cifar10" / "Linf"
    zoo.mkdir(parents=True)
    torch.save({"state_dict": weights}, zoo / f"{ZOO_NAME}.pt")
    # A robustlip-train checkpoint of the same network: net.* weights and the resolved run config.
    cfg = compose_train_cfg(root, ["data=cifar10", f"paths.data_dir={root / 'data'}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["model"] = {"_target_": "torchvision.models.resnet18", "num_classes": 10}
    torch.save({"state_dict": {f"net.{k}": v for k, v in weights.items()}, "hyper_parameters": {"config": config}},
               root / "last.ckpt")
    return {"root": root, "data": root / "data"}


@pytest.fixture
def robustbench_zoo(monkeypatch):
    """A RobustBench zoo entry for the test's network (the package's own registry, restored afterwards)."""
    from robustlip.runs.model_sources import robustbench_import

    robustbench_import()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    monkeypatch.setitem(zoo, ZOO_NAME, {"model": lambda: torchvision.models.resnet18(num_classes=10), "gdrive_id": "-"})


def _compose(out: Path, files: dict[str, Path], *overrides: str):
    cfg = compose_train_cfg(out, [*SAME, *overrides], "eval")
    cfg.paths.data_dir = str(files["data"])
    return cfg


SOURCES = {
    "checkpoint": ["ckpt_path={root}/last.ckpt"],
    "state_dict": ["source=state_dict", "source.arch._target_=torchvision.models.resnet18", "+source.arch.num_classes=10",
                   "source.weights={root}/net.pt"],
    "safetensors": ["source=state_dict", "source.arch._target_=torchvision.models.resnet18",
                    "+source.arch.num_classes=10", "source.weights={root}/net.safetensors"],
    "torchscript": ["source=torchscript", "source.path={root}/net.torchscript.pt"],
    "torchvision": ["source=torchvision", "source.name=resnet18", "source.weights={root}/net.pt", "source.mean=null",
                    "source.std=null"],
    "timm": ["source=timm", "source.name=resnet18", "source.weights={root}/net.safetensors", "source.mean=null",
             "source.std=null"],
    "robustbench": ["source=robustbench", f"source.name={ZOO_NAME}", "source.model_dir={root}/models"],
}


@pytest.mark.slow
def test_the_same_network_through_every_source_gives_identical_numbers(files, robustbench_zoo, monkeypatch, tmp_path):
    relax_md5(monkeypatch)
    results = {}
    for name, overrides in SOURCES.items():
        out = tmp_path / name
        evaluate(_compose(out, files, *(o.format(root=files["root"]) for o in overrides)))
        results[name] = json.loads((out / "results.json").read_text())
    # The table of this comparison (pytest -s shows it).
    print("\n| source | test/acc | test/adv_acc | test/lipschitz |\n|---|---|---|---|")
    for name, result in results.items():
        m = result["metrics"]
        print(f"| {name} | {m['test/acc']:.2f} | {m['test/adv_acc']:.2f} | {m['test/lipschitz']!r} |")
    reference = results["state_dict"]
    assert set(reference["metrics"]) == {"test/acc", "test/adv_acc", "test/lipschitz"}
    assert reference["examples"] == {"test": 8}
    for name, result in results.items():
        assert result["metrics"] == reference["metrics"], name
        assert result["uncertainty"] == reference["uncertainty"], name
        assert result["model"]["source"] == ("state_dict" if name == "safetensors" else name)
    assert results["robustbench"]["model"]["label"] == f"RobustBench {ZOO_NAME}"
    assert results["checkpoint"]["checkpoint"].endswith("last.ckpt")
    # The model's own data when the source knows it: a checkpoint evaluated on its own data needs no data=.
    config = (tmp_path / "timm" / "config.yaml").read_text()
    assert "label: timm resnet18" in config and "normalization: null" in config


def test_auto_normalisation_is_the_sources_metadata_and_equals_declaring_it(files, monkeypatch, tmp_path):
    relax_md5(monkeypatch)
    weights = f"source.weights={files['root']}/net.pt"
    evaluate(_compose(tmp_path / "auto", files, "source=torchvision", "source.name=resnet18", weights))
    evaluate(_compose(tmp_path / "declared", files, "source=state_dict", "source.arch._target_=torchvision.models.resnet18",
                      "+source.arch.num_classes=10", weights, "source.mean=[0.485,0.456,0.406]",
                      "source.std=[0.229,0.224,0.225]"))
    evaluate(_compose(tmp_path / "raw", files, "source=torchvision", "source.name=resnet18", weights, "source.mean=null",
                      "source.std=null"))
    auto, declared, raw = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("auto", "declared", "raw"))
    assert auto["model"]["normalization"]["from"] == "torchvision's ImageNet statistics"
    assert auto["metrics"] == declared["metrics"]
    assert auto["metrics"]["test/lipschitz"] != raw["metrics"]["test/lipschitz"], "the normalisation must be applied"


@pytest.mark.parametrize(
    ("overrides", "exception", "message"),
    [
        (["source=state_dict", "source.arch._target_=torchvision.models.resnet18", "+source.arch.num_classes=10",
          "source.weights=/nope/net.pt"], CheckpointError, r"^source.weights='/nope/net.pt' does not exist"),
        (["source=state_dict", "source.arch._target_=torchvision.models.resnet34", "+source.arch.num_classes=10",
          "source.weights={root}/net.pt"], CheckpointError,
         r"^source.weights: the weights do not fit torchvision.models.resnet34: missing 'layer1.2.conv1.weight'"),
        (["source=torchvision", "source.name=resnet18", "source.num_classes=5", "source.weights={root}/net.pt"],
         CheckpointError, r"fc.weight has shape \[10, 512\] in the file but \[5, 512\] in the architecture"),
        (["source=torchvision", "source.name=resnet81", "source.weights={root}/net.pt"], ConfigError,
         r"^source.name='resnet81' is not a torchvision model"),
        (["source=robustbench", "source.name=Carmon2019Unlabeled", "source.model_dir={root}/models"], CheckpointError,
         r"^source.model_dir=.*: no .*Carmon2019Unlabeled.pt; put the model's weights there or set source.download=true"),
        (["source=torchscript", "source.path={root}/net.pt"], CheckpointError, r"is not a TorchScript file"),
        (["source=state_dict", "source.arch._target_=torchvision.models.resnet18", "source.weights={root}/net.pt",
          "+source.arch.num_classes=10", "data=digits"], ConfigError,
         r"^data=digits: the model does not take its inputs of shape \[1, 8, 8\]"),
    ],
    ids=["missing-file", "other-architecture", "other-class-count", "unknown-name", "robustbench-no-download",
         "not-torchscript", "other-input-shape"],
)
def test_wrong_inputs_are_one_line_naming_the_key(files, robustbench_zoo, monkeypatch, tmp_path, overrides, exception,
                                                  message):
    relax_md5(monkeypatch)
    with pytest.raises(exception, match=message) as error:
        evaluate(_compose(tmp_path, files, *(o.format(root=files["root"]) for o in overrides)))
    assert "\n" not in str(error.value)
    assert not list(tmp_path.iterdir()), "a refused evaluation wrote files"


def test_a_model_with_other_outputs_or_a_checkpoint_of_other_data_is_refused_before_work(files, monkeypatch, tmp_path):
    relax_md5(monkeypatch)
    net = torchvision.models.resnet18(num_classes=5).eval()
    torch.save(net.state_dict(), tmp_path / "five.pt")
    with pytest.raises(ConfigError, match=r"^data=cifar10: the model returns \[2, 5\] for 2 images, not \[2, 10\]"):
        evaluate(_compose(tmp_path / "out", files, "source=state_dict", "source.arch._target_=torchvision.models.resnet18",
                          "+source.arch.num_classes=5", f"source.weights={tmp_path / 'five.pt'}"))
    # The checkpoint was made for cifar10 (its config says so): other data is refused before anything is loaded.
    ckpt = f"ckpt_path={files['root']}/last.ckpt"
    with pytest.raises(ConfigError, match=r"^data.name='svhn' is not the data this model was made for "
                                          r"\(data.name='cifar10'\).*allow_data_mismatch=true"):
        evaluate(_compose(tmp_path / "svhn", files, ckpt, "data=svhn"))
    assert not (tmp_path / "svhn").exists()


def test_no_data_for_a_foreign_model_and_no_checkpoint_are_one_line_each(files, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli("robustlip-eval", ["source=torchscript", f"source.path={files['root']}/net.torchscript.pt"],
                           tmp_path, capsys, monkeypatch)
    assert code == 2 and error_lines(err) == [(
        "error: data is required with source=torchscript: choose the data the model was made for, e.g. data=cifar10 "
        "(only a robustlip checkpoint knows its own)")]
    code, _, err = run_cli("robustlip-eval", [], tmp_path, capsys, monkeypatch)
    assert code == 2 and len(error_lines(err)) == 1 and "ckpt_path is required with source=checkpoint" in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("config.yaml"))


def test_unsafe_pickled_weights_are_refused(files, tmp_path):
    from robustlip.runs.model_sources import read_state_dict

    torch.save({"net": resnet18()}, tmp_path / "pickled.pt")  # a whole module: unpickling would run code
    with pytest.raises(CheckpointError, match=r"cannot be read as plain tensors .*weights_only=True"):
        read_state_dict(tmp_path / "pickled.pt", "source.weights")
