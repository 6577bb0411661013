"""Peak memory of a training step, per objective and net (and of the plain AT loop, for comparison).

    python benchmarks/bench_memory.py                       # device auto
    python benchmarks/bench_memory.py --nets cnn1 --objectives natural,at

Every row runs in a fresh Python process (peak figures are per-process high-water marks) that builds
the net and the objective, then fits ``--batches`` batches through the framework (as
bench_training.py does) or the plain loop. Reported:

* CPU: the process's resident set (RSS) before the fit and its peak (``ru_maxrss``) after; their
  difference is what the training steps added (activations, gradients, optimizer state, autograd
  buffers). ``tracemalloc`` is not used: it sees Python's allocator only, not tensor storage.
* CUDA: ``torch.cuda.max_memory_allocated`` over the fit (after ``reset_peak_memory_stats``), and
  the memory held by parameters + optimizer before it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from common import (
    FrameworkRun,
    PlainATLoop,
    bf16_supported,
    build_objective,
    common_arguments,
    machine_line,
    make_loader,
    net_specs,
    objective_names,
    print_table,
    setup_from_args,
    synthetic_batches,
)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - non-Linux


def child(args: argparse.Namespace) -> None:
    """Measure one row and print it as JSON on the last line."""
    import warnings

    warnings.filterwarnings("ignore")
    device = setup_from_args(args)
    spec = net_specs([args.net], args.wrn_depth, args.wrn_width)[0]
    loader = make_loader(synthetic_batches(spec.input_shape, args.batch_size, args.batches, args.seed), args.batch_size)
    torch.manual_seed(args.seed)
    net = spec.build().to(device)
    if args.objective == "plain-at":
        run = PlainATLoop(net, loader, device, spec.eps,
                          autocast_dtype=torch.bfloat16 if args.precision == "bf16-mixed" else None)
    else:
        run = FrameworkRun(net, build_objective(args.objective, spec.eps), loader, device, precision=args.precision)
    before = rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() / 2**20
    run()
    out = {"rss_before": before, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out.update(cuda_held=held, cuda_peak=torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--objectives", default="all", help="comma list, or all (= every conf/objective/*.yaml)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 64 (CNN1) / 32 (WRN) on CPU")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--net", help=argparse.SUPPRESS)
    parser.add_argument("--objective", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    device = setup_from_args(args)
    print(f"# bench_memory\n\n{machine_line(device)}")
    names = objective_names() if args.objectives == "all" else args.objectives.split(",")
    jobs = [(net, name, "32-true") for net in args.nets.split(",") for name in names]
    for net in args.nets.split(","):
        jobs.append((net, "plain-at", "32-true"))
        if bf16_supported(device) and "at" in names:
            jobs += [(net, "at", "bf16-mixed"), (net, "plain-at", "bf16-mixed")]
    rows = []
    for net, objective, precision in jobs:
        spec = net_specs([net], args.wrn_depth, args.wrn_width)[0]
        bs = args.batch_size or (128 if device.type == "cuda" else 64 if net == "cnn1" else 32)
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--child", f"--net={net}", f"--objective={objective}",
            f"--precision={precision}", f"--device={device}", f"--batch-size={bs}", f"--batches={args.batches}",
            f"--wrn-depth={args.wrn_depth}", f"--wrn-width={args.wrn_width}", f"--seed={args.seed}",
        ] + ([f"--threads={args.threads}"] if args.threads else [])
        result = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
        m = json.loads(result.stdout.strip().splitlines()[-1])
        label = "plain AT loop" if objective == "plain-at" else objective
        row = [spec.name, label, precision, bs, m["rss_before"], m["rss_peak"], m["rss_peak"] - m["rss_before"]]
        if device.type == "cuda":
            row += [m["cuda_held"], m["cuda_peak"]]
        rows.append(row)
        print(f"  measured {spec.name} · {label} · {precision}", file=sys.stderr, flush=True)
    headers = ["net", "objective", "precision", "batch", "RSS before fit (MiB)", "peak RSS (MiB)", "added by training (MiB)"]
    if device.type == "cuda":
        headers += ["CUDA params+state (MiB)", "CUDA peak allocated (MiB)"]
    print_table(f"Peak memory of {args.batches} training steps (one fresh process per row)", headers, rows)
    print(f"finished · {machine_line(device)}")


if __name__ == "__main__":
    main()
