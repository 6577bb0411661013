"""A model made without robustlip, saved the three ways researchers share weights (docs/evaluation.md).

    python scripts/own_model.py --out /tmp/my_model      # about 10 s on 2 cores

Trains robustlip's small digits CNN (``robustlip.models.DigitsCNN``, importable, so ``_target_`` can name
it) with a plain PyTorch loop on scikit-learn's digits, split as robustlip's ``data=digits`` splits them,
inputs in [0, 1], and writes

* ``net.pt``: ``torch.save(net.state_dict())`` (robustlip-eval ``source=state_dict``),
* ``net.safetensors``: the same weights in safetensors' format (``source=state_dict`` too),
* ``net.torchscript.pt``: ``torch.jit.script(net)`` saved, architecture included (``source=torchscript``).

It stands for a network of your own: there, ``source.arch._target_`` names your class instead.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from robustlip.data import DigitsDataModule
from robustlip.models import DigitsCNN


def train(epochs: int, seed: int) -> torch.nn.Module:
    """Natural training, 8 epochs of Adam: about 95 % test accuracy on digits."""
    torch.manual_seed(seed)
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    net = DigitsCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        net.train()
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("my_model"), help="folder to write the three files to")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    net = train(args.epochs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out / "net.pt")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out / "net.safetensors"))
    with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated; it is still how many models are shared
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(args.out / "net.torchscript.pt"))
    print(f"wrote {args.out}/net.pt, net.safetensors and net.torchscript.pt")


if __name__ == "__main__":
    main()
