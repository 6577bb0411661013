"""OmegaConf resolvers the config tree uses, registered when ``robustlip`` is imported.

Hydra imports the package ``robustlip.conf`` (and so ``robustlip``) before it composes a config, so
every entry point and every test that composes conf/ sees these resolvers. Kept free of torch and
Lightning imports: importing ``robustlip`` must stay cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf


def num_classes(full: int, classes: Sequence[Any] | None = None) -> int:
    """``${robustlip.num_classes:10,${data.classes}}``: the dataset's class count, or len(data.classes).

    A DataModule with ``classes`` relabels the chosen labels 0..k-1 (docs/datasets.md), so every node
    that interpolates ``${data.num_classes}`` (a model's output layer, above all) must see k.
    """
    return int(full) if classes is None else len(classes)


for _name, _fn in (("robustlip.num_classes", num_classes),):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
