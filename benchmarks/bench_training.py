"""Training-step throughput: the framework against a plain PyTorch loop, every objective, every speed switch.

    python benchmarks/bench_training.py                      # all three tables, device auto
    python benchmarks/bench_training.py --tables bars        # only the CPU overhead bars

Tables (markdown, on stdout):

1. ``bars``: Madry AT (PGD-10) on CNN1, measured side by side in one run: the framework
   (RobustClassifier + the ``at`` objective from conf/objective/at.yaml through ``Trainer.fit``, the
   project's trainer config and CSV logger) against the same step as a plain PyTorch loop, and
   against 11 "unit passes" (forward + ``autograd.grad`` w.r.t. the input). Bars: framework ≤ 1.05×
   plain; AT step ≤ 1.2× 11 unit passes.
2. ``objectives``: images/s of one training epoch for every conf/objective/*.yaml on a CNN1 and a WRN
   (WRN-40-10 on CUDA; WRN-10-2 by default on CPU, ``--wrn-depth/--wrn-width`` to change).
3. ``options``: AT images/s with each speed switch (bf16-mixed, channels_last, torch.compile, both,
   DataLoader workers + pinned memory), side by side with the fp32 reference.

Wall time is what a user waits; CPU time (this process, all threads) is the work done, the steadier
number on a shared machine. Both are medians of interleaved repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Callable

import torch
from common import (
    FrameworkRun,
    NetSpec,
    PlainATLoop,
    Sample,
    UnitPass,
    bf16_supported,
    build_objective,
    common_arguments,
    cpu,
    fresh_copy,
    interleaved,
    machine_line,
    make_loader,
    net_specs,
    objective_names,
    print_table,
    setup_from_args,
    spread,
    synthetic_batches,
    wall,
)

from robustlip.callbacks.performance import PerformanceSwitches

FRAMEWORK_BAR = 1.05
UNIT_PASS_BAR = 1.2


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def batch_size_for(spec: NetSpec, args: argparse.Namespace, device: torch.device) -> int:
    if args.batch_size:
        return args.batch_size
    if device.type == "cuda":
        return 128
    return 64 if spec.name.startswith("CNN1") else 32


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------------


def table_bars(args: argparse.Namespace, device: torch.device) -> None:
    spec = net_specs(["cnn1"], args.wrn_depth, args.wrn_width)[0]
    bs = batch_size_for(spec, args, device)
    dataset = synthetic_batches(spec.input_shape, bs, args.batches, args.seed)
    loader = make_loader(dataset, bs)
    torch.manual_seed(args.seed)
    template = spec.build()
    x, y = dataset.tensors[0][:bs].to(device), dataset.tensors[1][:bs].to(device)
    framework = FrameworkRun(fresh_copy(template, device), build_objective("at", spec.eps), loader, device)
    variants: dict[str, Callable[[], Sample]] = {
        "framework": framework,
        "plain": PlainATLoop(fresh_copy(template, device), loader, device, spec.eps),
        "unit": UnitPass(fresh_copy(template, device), x, y, device, passes=11),
    }
    if args.progress_bar_row:
        variants["framework+bar"] = FrameworkRun(
            fresh_copy(template, device), build_objective("at", spec.eps), loader, device, progress_bar=True
        )
    samples = interleaved(variants, args.bar_repeats)
    n = args.batches
    step = {k: (wall(v) / (1 if k == "unit" else n), cpu(v) / (1 if k == "unit" else n)) for k, v in samples.items()}
    rows = [
        ("framework AT step (Trainer.fit, `objective=at`)", step["framework"][0] * 1e3, step["framework"][1] * 1e3,
         bs / step["framework"][0], spread(samples["framework"])),
        ("plain PyTorch AT step (no Lightning/callbacks/logging)", step["plain"][0] * 1e3, step["plain"][1] * 1e3,
         bs / step["plain"][0], spread(samples["plain"])),
        ("11 unit passes (forward + autograd.grad w.r.t. input)", step["unit"][0] * 1e3, step["unit"][1] * 1e3,
         bs / step["unit"][0], spread(samples["unit"])),
    ]
    if "framework+bar" in step:
        rows.insert(1, ("framework AT step + RichProgressBar (the run default)", step["framework+bar"][0] * 1e3,
                        step["framework+bar"][1] * 1e3, bs / step["framework+bar"][0], spread(samples["framework+bar"])))
    print_table(
        f"AT (PGD-10) step on {spec.name}, batch {bs}, {n} batches per run, median of {args.bar_repeats} interleaved runs",
        ["variant", "ms/step (wall)", "ms/step (CPU)", "images/s (wall)", "wall spread"],
        rows,
    )
    fit_overhead = [f.fit.wall - f.loop.wall for f in framework.fits]
    ratios = []
    for label, num, den, bar in (
        ("framework / plain loop", "framework", "plain", FRAMEWORK_BAR),
        ("plain AT step / 11 unit passes", "plain", "unit", UNIT_PASS_BAR),
        ("framework AT step / 11 unit passes", "framework", "unit", UNIT_PASS_BAR),
    ):
        w, c = step[num][0] / step[den][0], step[num][1] / step[den][1]
        ratios.append((label, f"{w:.3f}", f"{c:.3f}", f"≤ {bar}", verdict(w <= bar), verdict(c <= bar)))
    print_table("Bars: framework overhead", ["ratio", "wall", "CPU", "bar", "wall verdict", "CPU verdict"], ratios)
    print(
        f"Trainer setup + teardown outside the timed epoch (not per step): median "
        f"{1e3 * sorted(fit_overhead)[len(fit_overhead) // 2]:.0f} ms per fit call.\n"
    )


# ---------------------------------------------------------------------------------------------------


def table_objectives(args: argparse.Namespace, device: torch.device) -> None:
    names = objective_names() if args.objectives == "all" else args.objectives.split(",")
    rows = []
    for spec in net_specs(args.nets.split(","), args.wrn_depth, args.wrn_width):
        bs = batch_size_for(spec, args, device)
        loader = make_loader(synthetic_batches(spec.input_shape, bs, args.batches, args.seed), bs)
        torch.manual_seed(args.seed)
        template = spec.build()
        runs = {name: FrameworkRun(fresh_copy(template, device), build_objective(name, spec.eps), loader, device)
                for name in names}
        samples = interleaved(runs, args.repeats)
        natural = wall(samples["natural"]) if "natural" in samples else None
        for name in names:
            seconds = wall(samples[name]) / args.batches
            rows.append((
                spec.name, name, bs, bs / seconds, seconds * 1e3, cpu(samples[name]) / args.batches * 1e3,
                f"{wall(samples[name]) / natural:.1f}×" if natural else "-", spread(samples[name]),
            ))
    print_table(
        f"Training throughput per objective (framework, fp32, {args.batches} batches per run, median of {args.repeats})",
        ["net", "objective", "batch", "images/s", "ms/step (wall)", "ms/step (CPU)", "cost vs natural", "wall spread"],
        rows,
    )


# ---------------------------------------------------------------------------------------------------


def table_options(args: argparse.Namespace, device: torch.device) -> None:
    backend = args.compile_backend
    options: dict[str, dict] = {
        "fp32 (reference)": {},
        "bf16-mixed": {"precision": "bf16-mixed"},
        "channels_last": {"perf": {"channels_last": True}},
        f"torch.compile ({backend})": {"perf": {"compile": True, "compile_backend": backend}},
        "channels_last + compile": {"perf": {"channels_last": True, "compile": True, "compile_backend": backend}},
        "bf16-mixed + channels_last + compile": {
            "precision": "bf16-mixed", "perf": {"channels_last": True, "compile": True, "compile_backend": backend}},
        f"DataLoader workers={args.workers} + pin_memory": {"workers": args.workers},
    }
    if not bf16_supported(device):
        options = {k: v for k, v in options.items() if v.get("precision") != "bf16-mixed"}
    if args.skip_compile:
        options = {k: v for k, v in options.items() if not v.get("perf", {}).get("compile")}
    rows = []
    for spec in net_specs(args.options_nets.split(","), args.wrn_depth, args.wrn_width):
        bs = batch_size_for(spec, args, device)
        dataset = synthetic_batches(spec.input_shape, bs, args.batches, args.seed)
        torch.manual_seed(args.seed)
        template = spec.build()
        runs = {}
        for label, opt in options.items():
            workers = opt.get("workers", 0)
            loader = make_loader(dataset, bs, num_workers=workers, pin_memory=workers > 0 and device.type == "cuda")
            perf = PerformanceSwitches(**opt["perf"]) if "perf" in opt else None
            runs[label] = FrameworkRun(
                fresh_copy(template, device), build_objective("at", spec.eps), loader, device,
                precision=opt.get("precision", "32-true"), perf=perf,
            )
        samples = interleaved(runs, args.repeats)
        reference = wall(samples["fp32 (reference)"])
        for label in options:
            seconds = wall(samples[label]) / args.batches
            rows.append((spec.name, label, bs / seconds, seconds * 1e3, cpu(samples[label]) / args.batches * 1e3,
                         f"{reference / wall(samples[label]):.2f}×", spread(samples[label])))
    print_table(
        f"AT (PGD-10) training with each speed switch (framework, {args.batches} batches per run, "
        f"median of {args.repeats}; compile time is in the warm-up, not in the numbers)",
        ["net", "switch", "images/s", "ms/step (wall)", "ms/step (CPU)", "speed-up vs fp32", "wall spread"],
        rows,
    )


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--tables", default="bars,objectives,options", help="comma list of: bars, objectives, options")
    parser.add_argument("--objectives", default="all", help="comma list, or all (= every conf/objective/*.yaml)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA; 64 (CNN1) / 32 (WRN) on CPU")
    parser.add_argument("--batches", type=int, default=None, help="batches per timed run (default: 20 CUDA, 3 CPU)")
    parser.add_argument("--bar-repeats", type=int, default=5, help="interleaved repeats for the bars table")
    parser.add_argument("--progress-bar-row", action="store_true", help="also time the framework with its RichProgressBar")
    parser.add_argument("--options-nets", default=None, help="nets for the options table (default: cnn1 on CPU, all on CUDA)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend for the options table")
    parser.add_argument("--skip-compile", action="store_true", help="leave the torch.compile rows out")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the workers row")
    args = parser.parse_args(argv)
    device = setup_from_args(args)
    if args.batches is None:
        args.batches = 20 if device.type == "cuda" else 3
    if args.options_nets is None:
        args.options_nets = args.nets if device.type == "cuda" else "cnn1"
    quiet()
    print(f"# bench_training\n\n{machine_line(device)}")
    tables = args.tables.split(",")
    if "bars" in tables:
        table_bars(args, device)
    if "objectives" in tables:
        table_objectives(args, device)
    if "options" in tables:
        table_options(args, device)
    print(f"finished · {machine_line(device)}")


if __name__ == "__main__":
    main()
