"""Attack throughput: PGD-10, PGD-20, FGSM and Multi-Targeted, in fp32 and under bf16 autocast.

    python benchmarks/bench_attacks.py                       # device auto; CNN1 and a WRN
    python benchmarks/bench_attacks.py --images 10000 --nets wrn --batch-size 500   # a GPU's PGD-20 eval of 10k

Each row attacks ``--images`` synthetic images (batches of ``--batch-size``) with the project's attack
classes as the evaluation builds them (conf/attack/*.yaml defaults: step 2ε/steps, one uniform random
start, eval mode). "passes" is forward + input-gradient passes per image; "µs/pass/image" divides the
time by them, so an attack that does more than its passes shows up there. Medians of interleaved
repeats after one warm-up; wall and process-CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable

import torch
from common import (
    Clock,
    Sample,
    bf16_supported,
    common_arguments,
    cpu,
    interleaved,
    machine_line,
    net_specs,
    print_table,
    setup_from_args,
    spread,
    wall,
)

from robustlip.attacks import FGSM, PGD, MultiTargeted


def attack_suite(eps: float, mt_steps: int) -> dict[str, tuple[Callable, int]]:
    """name -> (attack, forward+input-gradient passes per image)."""
    mt = MultiTargeted(eps=eps, steps=mt_steps)
    return {
        "FGSM": (FGSM(eps=eps), 1),
        "PGD-10": (PGD(eps=eps, steps=10), 10),
        "PGD-20": (PGD(eps=eps, steps=20), 20),
        # One targeted PGD per other class (9 for 10 classes), plus one scoring forward each.
        f"MultiTargeted ({mt_steps} steps × 9 targets)": (mt, 9 * mt_steps),
    }


class AttackRun:
    def __init__(self, attack, net, images, labels, batch_size, device, autocast_dtype=None) -> None:
        self.attack, self.net, self.device = attack, net, device
        self.batches = [(images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device))
                        for i in range(0, len(images), batch_size)]
        self.autocast_dtype = autocast_dtype

    def __call__(self) -> Sample:
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else contextlib.nullcontext())
        clock = Clock(self.device)
        clock.start()
        with ctx:
            for x, y in self.batches:
                self.attack(self.net, x, y)
        return clock.stop()


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--images", type=int, default=None, help="images attacked per run (default 10000 CUDA, 128 CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 500 on CUDA, 64 on CPU")
    parser.add_argument("--mt-steps", type=int, default=20, help="steps per target of the Multi-Targeted attack")
    parser.add_argument("--no-mt", action="store_true", help="leave the Multi-Targeted rows out (9× PGD's cost)")
    parser.add_argument("--precisions", default=None, help="comma list of fp32, bf16 (default: both where bf16 exists)")
    args = parser.parse_args(argv)
    device = setup_from_args(args)
    images_n = args.images or (10000 if device.type == "cuda" else 128)
    bs = args.batch_size or (500 if device.type == "cuda" else 64)
    precisions = (args.precisions or ("fp32,bf16" if bf16_supported(device) else "fp32")).split(",")
    print(f"# bench_attacks\n\n{machine_line(device)}")
    rows = []
    for spec in net_specs(args.nets.split(","), args.wrn_depth, args.wrn_width):
        torch.manual_seed(args.seed)
        net = spec.build().to(device).eval()
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.rand(images_n, *spec.input_shape, generator=gen)
        labels = torch.randint(0, 10, (images_n,), generator=gen)
        suite = attack_suite(spec.eps, args.mt_steps)
        if args.no_mt:
            suite = {k: v for k, v in suite.items() if not k.startswith("MultiTargeted")}
        runs, passes = {}, {}
        for precision in precisions:
            dtype = torch.bfloat16 if precision == "bf16" else None
            for name, (attack, n_passes) in suite.items():
                runs[(name, precision)] = AttackRun(attack, net, images, labels, bs, device, dtype)
                passes[(name, precision)] = n_passes
        samples = interleaved(runs, args.repeats)
        for (name, precision), s in samples.items():
            seconds = wall(s)
            rows.append((
                spec.name, name, precision, images_n / seconds, seconds, cpu(s),
                passes[(name, precision)], 1e6 * seconds / images_n / passes[(name, precision)], spread(s),
            ))
    print_table(
        f"Attack throughput ({images_n} images per run, batch {bs}, median of {args.repeats} interleaved runs)",
        ["net", "attack", "precision", "images/s", "s/run (wall)", "s/run (CPU)", "passes", "µs/pass/image", "wall spread"],
        rows,
    )
    print(f"finished · {machine_line(device)}")


if __name__ == "__main__":
    main()
