"""How fast the commands answer when no training is needed: ``--help``, ``--cfg job``, a mistyped option or key.

    python benchmarks/bench_cli.py                 # median of 5 runs of each command line
    python benchmarks/bench_cli.py --repeats 9 --check 2.0

Each command line runs as a fresh process, as a user types it (the console scripts next to this
Python), in an empty temporary folder with ``ROBUSTLIP_LOG_DIR`` pointing into it. Reported per line:
the median wall time (what a user waits), the median CPU time of the process (user + system, from
``wait4``: the steadier number on a shared machine, since wall time also counts the time other
processes hold the cores), the exit code, and whether torch was imported (``-X importtime``, one
extra run). Runs of the different lines are interleaved (A, B, C, A, B, C, ...), so a load spike hits
all alike; the load average is printed with the table. ``--check S`` exits 1 when a median CPU time
is above S seconds or torch was imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
#: (command, arguments, what the line shows)
LINES = [
    ("robustlip-train", ["--help"], "help: config groups and the composed config"),
    ("robustlip-train", ["--cfg", "job"], "the composed config"),
    ("robustlip-train", ["objective=trade"], "mistyped option: Hydra's list of choices"),
    ("robustlip-train", ["trainer.max_epoch=3"], "mistyped key: the close key"),
    ("robustlip-train", ["attack.eps=2"], "value out of range, checked before torch"),
    ("robustlip-train", ["seed=1.5"], "a non-integer seed, checked before torch"),
    ("robustlip-eval", ["--help"], "help"),
    ("robustlip-eval", ["ckpt_path=x.ckpt", "attack=pgdd"], "mistyped option"),
    ("robustlip-separation", ["--help"], "help"),
    ("robustlip-report", ["--help"], "help"),
    ("robustlip-visualize", ["--help"], "help"),
    ("robustlip-visualize", [], "missing ckpt_path: one line with an example"),
    ("robustlip-tsipras", ["--help"], "help"),
]


def run_once(command: str, args: list[str], cwd: Path, importtime: bool = False) -> tuple[float, float, int, str]:
    """(wall s, CPU s, exit code, stderr) of one run of ``command args``."""
    env = {**os.environ, "ROBUSTLIP_LOG_DIR": str(cwd / "logs"), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [str(BIN / command), *args]
    if importtime:
        argv = [sys.executable, "-X", "importtime", *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # communicate() has reaped the child; its rusage is in RUSAGE_CHILDREN, read as a difference by the caller.
    return wall, 0.0, proc.returncode, stderr


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", type=float, default=None, help="fail when a median CPU time exceeds this (s)")
    args = parser.parse_args(argv)

    walls: dict[int, list[float]] = {i: [] for i in range(len(LINES))}
    cpus: dict[int, list[float]] = {i: [] for i in range(len(LINES))}
    codes: dict[int, int] = {}
    torch_loaded: dict[int, bool] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for i, (command, line_args, _) in enumerate(LINES):  # warm-up: page cache, .pyc files of the venv
            run_once(command, line_args, cwd)
            _, _, _, trace = run_once(command, line_args, cwd, importtime=True)
            torch_loaded[i] = any(line.rstrip().endswith("| torch") for line in trace.splitlines())
        for _ in range(args.repeats):
            for i, (command, line_args, _) in enumerate(LINES):
                before = children_cpu()
                wall, _, code, _ = run_once(command, line_args, cwd)
                cpus[i].append(children_cpu() - before)
                walls[i].append(wall)
                codes[i] = code
    load_after = os.getloadavg()

    print(f"CLI start-up, median of {args.repeats} interleaved runs; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after, on {os.cpu_count()} cores\n")
    print("| command | wall (s) | CPU (s) | exit | torch imported | what it shows |")
    print("|---|---|---|---|---|---|")
    failed = False
    for i, (command, line_args, what) in enumerate(LINES):
        wall, cpu = statistics.median(walls[i]), statistics.median(cpus[i])
        print(f"| `{command} {' '.join(line_args)}` | {wall:.2f} | {cpu:.2f} | {codes[i]} | "
              f"{'yes' if torch_loaded[i] else 'no'} | {what} |")
        if args.check is not None and (cpu > args.check or torch_loaded[i]):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
