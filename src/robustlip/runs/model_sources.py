"""Where a model to evaluate comes from: robustlip's checkpoints and everyone else's.

``robustlip-eval source=<kind>`` (``conf/source/``) builds one of these; ``load()`` returns the network
that the evaluator measures, its row name, what results.json records about it, and the data it was
made for when the source knows it. Every source gives a network that takes images in [0, 1] (pixel
space: every ε is in pixel units): a model that expects normalised input gets a declared
``mean``/``std`` layer in front, from the config or, with ``auto``, from the source's own metadata
(timm's ``pretrained_cfg``, torchvision's ImageNet statistics).

| kind | what | weights |
|---|---|---|
| ``checkpoint`` | a ``robustlip-train`` checkpoint: its network rebuilt from its own config | the checkpoint's ``net.*`` |
| ``state_dict`` | any ``nn.Module`` by ``_target_`` (``arch``) | a ``.pt``/``.pth`` state dict or ``.safetensors`` |
| ``torchscript`` | a TorchScript file (``torch.jit.save``) | inside the file |
| ``torchvision`` | ``torchvision.models.get_model(name, num_classes=...)`` | a local file, as for ``state_dict`` |
| ``timm`` | ``timm.create_model(name, num_classes=...)`` (pip extra ``timm``) | a local file, as for ``state_dict`` |
| ``robustbench`` | RobustBench's model zoo by name, dataset and threat model (pip extra ``robustbench``), read from ``model_dir`` | ``<model_dir>/<dataset>/<threat model>/<name>.pt``; downloaded only with ``download=true`` |

Weights are read with ``torch.load(weights_only=True)`` (or safetensors): a file that needs pickled code
is refused. Wrong inputs are one line each: a missing file, weights that do not fit the architecture
(the first mismatched key named), an unknown architecture name.
"""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlip.core.errors import ConfigError
from robustlip.models.normalize import Normalize
from robustlip.runs.checkpoints import (
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    net_from_checkpoint,
)
from robustlip.runs.labels import method_label

log = logging.getLogger(__name__)

#: ImageNet's per-channel statistics, which every torchvision classification weight was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: RobustBench's datasets and threat models, and the robustlip dataset of each (None: robustlip has none).
ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": None, "imagenet": None}
ROBUSTBENCH_THREATS = ("Linf", "L2", "corruptions")


@dataclass
class LoadedModel:
    """A network ready to evaluate (inputs in [0, 1]) and what is known about it."""

    net: nn.Module
    #: Its name in titles and report rows (``TRADES(β=6)``, ``torchvision resnet18``).
    label: str
    #: What results.json and config.yaml record about it (the source, its files, the normalisation).
    description: dict[str, Any]
    #: The data it was made for, as far as the source knows (a checkpoint's whole data node; RobustBench's dataset).
    data: dict[str, Any] | None = None
    #: A robustlip checkpoint's resolved training config (its data, attack, Lipschitz estimator and seed).
    train_config: dict[str, Any] = field(default_factory=dict)
    #: The network's class or constructor as a dotted name, where the source knows it (``torchvision.models.resnet18``).
    architecture: str | None = None


def read_state_dict(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save``d state dict (``{"state_dict": ...}`` too)."""
    path = Path(path).expanduser()
    where = f"{key}={str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where} does not exist; give the path of a weights file (.pt, .pth or .safetensors)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ConfigError(f"{where}: reading .safetensors needs the safetensors package "
                              "(pip install 'robustlip[models]')") from exc
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{where} is not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where} cannot be read as plain tensors ({type(exc).__name__}: {text}); robustlip "
                              "loads weights with torch.load(weights_only=True) or safetensors only") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{where} holds no state dict (a mapping of names to tensors); save model.state_dict()")
    return dict(loaded)


def load_weights(net: nn.Module, weights: Mapping[str, torch.Tensor], key: str, arch: str) -> nn.Module:
    """``net`` with ``weights`` loaded strictly; a key or shape that does not fit is named in one line."""
    expected = net.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(f"{key}: the weights do not fit {arch}: {first} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys); is it the right architecture?")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{key}: the weights do not fit {arch}: {name} has shape {list(weights[name].shape)} "
                                  f"in the file but {list(tensor.shape)} in the architecture (check num_classes)")
    net.load_state_dict(dict(weights))
    return net


class ModelSource(ABC):
    """Base of the sources: builds the network, then puts the declared normalisation in front of it.

    ``mean``/``std``: None (the network takes [0, 1] pixels itself), ``auto`` (the source's own
    metadata, if it has any) or per-channel lists.
    """

    kind = "source"

    def __init__(self, mean: Sequence[float] | str | None = None, std: Sequence[float] | str | None = None) -> None:
        if (mean is None) != (std is None) or (mean == "auto") != (std == "auto"):
            raise ConfigError(f"source.mean={mean!r} and source.std={std!r}: give both, or both auto, or neither")
        self.mean, self.std = mean, std

    @abstractmethod
    def build(self) -> LoadedModel:
        """The network as the source gives it (before normalisation) and what is known about it."""

    def auto_normalization(self, net: nn.Module) -> tuple[Sequence[float], Sequence[float], str] | None:
        """(mean, std, where from) of the source's own metadata; None where it has none."""
        return None

    def load(self) -> LoadedModel:
        loaded = self.build()
        normalization = None
        if self.mean == "auto":
            found = self.auto_normalization(loaded.net)
            if found is not None:
                normalization = {"mean": list(found[0]), "std": list(found[1]), "from": found[2]}
        elif self.mean is not None:
            normalization = {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std], "from": "config"}
        if normalization is not None:
            try:
                loaded.net = nn.Sequential(Normalize(normalization["mean"], normalization["std"]), loaded.net)
            except ValueError as exc:
                raise ConfigError(f"source: {exc}") from exc
        loaded.description["normalization"] = normalization
        loaded.net.eval()
        return loaded


class RobustlipCheckpoint(ModelSource):
    """A checkpoint of ``robustlip-train``: the network rebuilt from the checkpoint's own config."""

    kind = "checkpoint"

    def __init__(self, path: str | None, mean: Sequence[float] | str | None = None,
                 std: Sequence[float] | str | None = None) -> None:
        super().__init__(mean, std)
        if path in (None, ""):
            raise ConfigError("ckpt_path is required with source=checkpoint: the checkpoint to evaluate, e.g. "
                              "robustlip-eval ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt "
                              "(another model: source=state_dict|torchscript|torchvision|timm|robustbench)")
        self.path = str(path)

    def build(self) -> LoadedModel:
        ckpt = load_checkpoint(self.path)
        config = checkpoint_config(ckpt)
        net = net_from_checkpoint(ckpt, config)
        path = str(Path(self.path).expanduser().resolve())
        label, _ = method_label(config, self.path)  # as the tables name it: TRADES(β=6)
        return LoadedModel(net, label, {"source": self.kind, "path": path}, config.get("data"), config)


class StateDictModel(ModelSource):
    """Any ``nn.Module`` by ``_target_`` (``arch``) with a weights file (a state dict, or safetensors)."""

    kind = "state_dict"

    def __init__(self, arch: Mapping[str, Any], weights: str, mean=None, std=None) -> None:
        super().__init__(mean, std)
        if not isinstance(arch, Mapping) or not arch.get("_target_"):
            raise ConfigError(f"source.arch={arch!r} is not allowed; give the network's class, e.g. "
                              "source.arch._target_=my_package.Net (+source.arch.<arg>=... for its arguments)")
        if not weights:
            raise ConfigError("source.weights is required: the path of a .pt, .pth or .safetensors state dict")
        from omegaconf import OmegaConf

        self.arch = OmegaConf.to_container(arch, resolve=True) if OmegaConf.is_config(arch) else dict(arch)
        self.weights = str(weights)

    def build(self) -> LoadedModel:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            net = instantiate(self.arch)
        except InstantiationException as exc:
            raise ConfigError(f"source.arch._target_={self.arch['_target_']!r} cannot be built: "
                              f"{' '.join(str(exc.__cause__ or exc).split())[:200]}") from exc
        load_weights(net, read_state_dict(self.weights, "source.weights"), "source.weights", self.arch["_target_"])
        return LoadedModel(net, str(self.arch["_target_"]).rsplit(".", 1)[-1],
                           {"source": self.kind, "arch": self.arch, "weights": _resolved(self.weights)},
                           architecture=str(self.arch["_target_"]))


class TorchScriptModel(ModelSource):
    """A TorchScript file (``torch.jit.save``): architecture and weights in one file."""

    kind = "torchscript"

    def __init__(self, path: str, mean=None, std=None) -> None:
        super().__init__(mean, std)
        if not path:
            raise ConfigError("source.path is required: the TorchScript file (torch.jit.save) to evaluate")
        self.path = str(path)

    def build(self) -> LoadedModel:
        path = Path(self.path).expanduser()
        where = f"source.path={str(path)!r}"
        if not path.is_file():
            raise CheckpointError(f"{where} does not exist; give the path of a TorchScript file (torch.jit.save)")
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise CheckpointError(f"{where} is not a TorchScript file ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:160]}); save one with torch.jit.save") from exc
        return LoadedModel(net, f"TorchScript {path.stem}", {"source": self.kind, "path": _resolved(path)})


class NamedArchitecture(ModelSource):
    """An architecture a library builds by name (torchvision, timm) with a local weights file: nothing is downloaded."""

    def __init__(self, name: str, weights: str, num_classes: int, mean="auto", std="auto") -> None:
        super().__init__(mean, std)
        self.name, self.weights, self.num_classes = str(name), str(weights or ""), int(num_classes)
        if not self.weights:
            raise ConfigError("source.weights is required: a local weights file (nothing is downloaded)")


class TorchvisionModel(NamedArchitecture):
    """``torchvision.models.get_model(name, num_classes=...)`` with a local weights file."""

    kind = "torchvision"

    def build(self) -> LoadedModel:
        import torchvision

        available = torchvision.models.list_models()
        if self.name not in available:
            close = [n for n in available if n.startswith(self.name[:4])][:5]
            raise ConfigError(f"source.name={self.name!r} is not a torchvision model"
                              f"{'; close: ' + ', '.join(close) if close else ''} (torchvision.models.list_models())")
        net = torchvision.models.get_model(self.name, weights=None, num_classes=self.num_classes)
        load_weights(net, read_state_dict(self.weights, "source.weights"), "source.weights", f"torchvision {self.name}")
        return LoadedModel(net, f"torchvision {self.name}",
                           {"source": self.kind, "name": self.name, "weights": _resolved(self.weights)},
                           architecture=f"torchvision.models.{self.name}")

    def auto_normalization(self, net: nn.Module) -> tuple[Sequence[float], Sequence[float], str]:
        return IMAGENET_MEAN, IMAGENET_STD, "torchvision's ImageNet statistics"


class TimmModel(NamedArchitecture):
    """``timm.create_model(name, num_classes=...)`` with a local weights file (pip extra ``timm``)."""

    kind = "timm"

    def build(self) -> LoadedModel:
        timm = _optional("timm", "timm")
        if not timm.is_model(self.name):
            raise ConfigError(f"source.name={self.name!r} is not a timm model (timm.list_models('{self.name[:4]}*') "
                              "lists close names)")
        net = timm.create_model(self.name, pretrained=False, num_classes=self.num_classes)
        load_weights(net, read_state_dict(self.weights, "source.weights"), "source.weights", f"timm {self.name}")
        return LoadedModel(net, f"timm {self.name}", {"source": self.kind, "name": self.name,
                                                      "weights": _resolved(self.weights)}, architecture=f"timm.{self.name}")

    def auto_normalization(self, net: nn.Module) -> tuple[Sequence[float], Sequence[float], str] | None:
        config = getattr(net, "pretrained_cfg", None) or {}
        if "mean" in config and "std" in config:
            return tuple(config["mean"]), tuple(config["std"]), "timm's pretrained_cfg"
        return None


class RobustBenchModel(ModelSource):
    """A model of RobustBench's zoo, through the ``robustbench`` package, read from a local ``model_dir``.

    RobustBench's models take [0, 1] inputs and normalise themselves. The weights file is
    ``<model_dir>/<dataset>/<threat_model>/<name>.pt`` as ``robustbench.utils.load_model`` keeps it;
    without it the load fails in one line, unless ``download=true`` lets RobustBench fetch it.
    """

    kind = "robustbench"

    def __init__(self, name: str, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str = "models",
                 download: bool = False, mean=None, std=None) -> None:
        super().__init__(mean, std)
        if not name:
            raise ConfigError("source.name is required: a RobustBench model name, e.g. source.name=Carmon2019Unlabeled")
        if dataset not in ROBUSTBENCH_DATASETS:
            raise ConfigError(f"source.dataset={dataset!r} is not allowed; choose one of "
                              f"{', '.join(map(repr, ROBUSTBENCH_DATASETS))}")
        if threat_model not in ROBUSTBENCH_THREATS:
            raise ConfigError(f"source.threat_model={threat_model!r} is not allowed; choose one of "
                              f"{', '.join(map(repr, ROBUSTBENCH_THREATS))}")
        self.name, self.dataset, self.threat_model = str(name), dataset, threat_model
        self.model_dir, self.download = str(model_dir), bool(download)

    def weights_path(self) -> Path:
        return Path(self.model_dir).expanduser() / self.dataset / self.threat_model / f"{self.name}.pt"

    def build(self) -> LoadedModel:
        robustbench_import()
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model

        zoo = model_dicts[BenchmarkDataset(self.dataset)][ThreatModel(self.threat_model)]
        if self.name not in zoo:
            raise ConfigError(f"source.name={self.name!r} is not in RobustBench's {self.dataset} {self.threat_model} zoo "
                              f"({len(zoo)} models, e.g. {', '.join(list(zoo)[:3])})")
        path = self.weights_path()
        if not path.is_file() and not self.download:
            raise CheckpointError(f"source.model_dir={self.model_dir!r}: no {path}; put the model's weights there "
                                  "or set source.download=true to let RobustBench download them")
        try:
            net = load_model(self.name, model_dir=self.model_dir, dataset=self.dataset, threat_model=self.threat_model)
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"source.model_dir: {path} does not fit RobustBench's {self.name} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from exc
        data = {"name": ROBUSTBENCH_DATASETS[self.dataset], "robustbench_dataset": self.dataset}
        return LoadedModel(net, f"RobustBench {self.name}",
                           {"source": self.kind, "name": self.name, "dataset": self.dataset,
                            "threat_model": self.threat_model, "weights": _resolved(path)}, data,
                           architecture=type(net).__name__)


def robustbench_import() -> None:
    """Make ``import robustbench`` work with the AutoAttack PyPI ships.

    robustbench 1.1 imports ``autoattack`` (the GitHub package fra31/auto-attack) at import time; PyPI's
    package of that same code is ``pyautoattack``. Only the zoo and ``load_model`` are used here.
    """
    _optional("robustbench.model_zoo", "robustbench", before=_alias_autoattack)


def _alias_autoattack() -> None:
    try:
        import autoattack  # noqa: F401 - the GitHub package, when a user installed it
    except ImportError:
        import pyautoattack
        import pyautoattack.state

        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)


def _optional(module: str, extra: str, before=None) -> Any:
    """Import an optional dependency or say in one line which pip extra brings it."""
    import importlib

    try:
        if before is not None:
            before()
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"source={extra} needs the {extra} package ({exc}); install it with "
                          f"pip install 'robustlip[{extra}]'") from exc


def _resolved(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())
