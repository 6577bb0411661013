"""The evaluator against the official AutoAttack code, and the Python API against robustlip-eval.

    python benchmarks/bench_evaluation.py                      # CPU: 100 digits points, natural and AT models
    python benchmarks/bench_evaluation.py --device cuda --n 1000 --repeats 5
    python benchmarks/bench_evaluation.py --baseline-eval /path/to/older/venv/bin/robustlip-eval
    python benchmarks/bench_evaluation.py --n 40 --repeats 1 --attacks apgd-ce,apgd-t   # a 2-core CPU under load

Table 1, AutoAttack: on the same model and the same test points, ``robustlip.evaluation.evaluate(model,
(x, y), AutoAttack(eps))`` against what RobustBench's ``benchmark()`` runs (github RobustBench/robustbench,
``robustbench/eval.py``: the clean accuracy, then the official ``AutoAttack(...).run_standard_evaluation``
with the same batch size, then the accuracy at its adversarial points), here called directly from the
official code on PyPI (``pyautoattack``; ``robustbench.eval`` itself imports the GitHub package
``autoattack``). Both use AutoAttack's ``standard`` version with seed 0, so the robust accuracies must
be equal point for point; the wall-time ratio is robustlip's cost over the official one (bar: 1.1).
The models are digits CNNs trained in this script (a few seconds): a natural one, where APGD-CE breaks
almost every point, and an adversarially trained one, where all four sub-attacks run.

Table 2, a robustlip checkpoint: ``robustlip-eval ckpt_path=...`` (its default evaluation: clean, PGD-10
and Lipschitz on the test and training sets, the gradient-masking checks) against the same evaluation
written with the Python API in a script of its own (``evaluate(net, datamodule, attack, ...)``), each a
whole process, imports included. ``--baseline-eval`` adds another installation's robustlip-eval (an
older version) to the comparison. Bar: the API at most 1.05 times robustlip-eval.

Timings are medians of interleaved repeats after one warm-up each (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Sample, cpu, interleaved, machine_line, pick_device, print_table, spread, synchronize, wall

from robustlip.attacks import PGD, AutoAttack
from robustlip.evaluation import evaluate
from robustlip.models import DigitsCNN

EPS = 0.1
BIN = Path(sys.executable).parent


def digits(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)


def train_model(x: torch.Tensor, y: torch.Tensor, adversarial: bool, device: torch.device) -> torch.nn.Module:
    """A DigitsCNN trained for 8 epochs, naturally or with PGD-10 adversarial training at ε = 0.1."""
    torch.manual_seed(0)
    net = DigitsCNN().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    attack = PGD(EPS)
    for _ in range(8):
        for batch in torch.randperm(len(y), device=device).split(64):
            inputs = attack(net, x[batch], y[batch]) if adversarial else x[batch]
            net.train()
            optimizer.zero_grad()
            F.cross_entropy(net(inputs), y[batch]).backward()
            optimizer.step()
    return net.eval()


def official(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             attacks: list[str] | None) -> tuple[float, float]:
    """RobustBench's benchmark(): clean accuracy, the official AutoAttack, the accuracy at its points (percent)."""
    from pyautoattack import AutoAttack as OfficialAutoAttack

    with torch.no_grad():
        clean = torch.cat([net(b).argmax(1) for b in x.split(batch_size)]).eq(y).float().mean().item()
    adversary = OfficialAutoAttack(net, norm="Linf", eps=EPS, version="custom" if attacks else "standard",
                                   attacks=attacks or None, device=x.device, seed=0)
    if attacks:  # the listed attacks as the standard version runs them (its _set_version), as robustlip's custom does
        adversary.apgd.n_restarts = adversary.apgd_targeted.n_restarts = adversary.fab.n_restarts = 1
        adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 9
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    with torch.no_grad():
        robust = torch.cat([net(b).argmax(1) for b in x_adv.split(batch_size)]).eq(y).float().mean().item()
    return 100 * clean, 100 * robust


def ours(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
         attacks: list[str] | None) -> tuple[float, float]:
    attack = AutoAttack(EPS, version="custom", attacks=attacks) if attacks else AutoAttack(EPS)
    result = evaluate(net, (x, y), attack, batch_size=batch_size, verbose=False)
    return result.metrics["test/acc"], result.metrics["test/adv_acc"]


def timed_call(fn, device: torch.device, out: dict) -> Sample:
    synchronize(device)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out["value"] = fn()
    synchronize(device)
    return Sample(time.perf_counter() - start_wall, time.process_time() - start_cpu)


def autoattack_table(device: torch.device, n: int, batch_size: int, repeats: int, attacks: list[str] | None) -> bool:
    x_train, y_train, x_test, y_test = digits(device)
    x, y = x_test[:n], y_test[:n]
    rows, ok = [], True
    for name, adversarial in (("natural", False), ("PGD-10 AT", True)):
        net = train_model(x_train, y_train, adversarial, device)
        values: dict[str, dict] = {"official": {}, "robustlip": {}}
        samples = interleaved({
            variant: partial(timed_call, partial(fn, net, x, y, batch_size, attacks), device, values[variant])
            for variant, fn in (("official", official), ("robustlip", ours))
        }, repeats)
        (clean_o, robust_o), (clean_r, robust_r) = values["official"]["value"], values["robustlip"]["value"]
        ratio = wall(samples["robustlip"]) / wall(samples["official"])
        # Percentages of n points: equal counts, compared above float32's rounding of the official mean (1e-4 pp).
        same_clean, same_robust = abs(clean_o - clean_r) < 1e-4, abs(robust_o - robust_r) < 1e-4
        equal = same_clean and same_robust
        ok &= equal and ratio <= 1.1
        for variant in ("official", "robustlip"):
            clean, robust = values[variant]["value"]
            rows.append([name, "official AutoAttack (pyautoattack), as RobustBench's benchmark()" if variant == "official"
                         else "robustlip.evaluation.evaluate(..., AutoAttack(eps))", f"{clean:.2f}", f"{robust:.2f}",
                         f"{wall(samples[variant]):.2f}", f"{cpu(samples[variant]):.2f}", spread(samples[variant])])
        rows.append([name, "robustlip / official", "equal" if same_clean else "DIFFER",
                     "equal" if same_robust else "DIFFER", f"{ratio:.3f}",
                     f"{cpu(samples['robustlip']) / cpu(samples['official']):.3f}", "bar ≤ 1.1"])
    version = f"custom: {', '.join(attacks)}" if attacks else "standard"
    print_table(f"AutoAttack ({version}, ℓ∞ ε={EPS}) on {n} digits test points, batch {batch_size}, median of {repeats}",
                ["model", "variant", "clean acc (%)", "robust acc (%)", "wall (s)", "CPU (s)", "wall spread"], rows)
    return ok


API_JOB = """\
import sys
from hydra.utils import instantiate
from robustlip.evaluation import GradientMaskingChecks, evaluate
from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint

ckpt = load_checkpoint(sys.argv[1])
config = checkpoint_config(ckpt)
datamodule = instantiate(config["data"])
result = evaluate(net_from_checkpoint(ckpt, config), datamodule, instantiate(config["attack"]),
                  lipschitz=instantiate(config["callbacks"]["robust_evaluation"]["lipschitz"]),
                  probes=[GradientMaskingChecks()], seed=config["callbacks"]["robust_evaluation"]["seed"],
                  device="auto", verbose=False)
result.write(sys.argv[2])
"""


def run_process(argv: list[str], cwd: Path) -> Sample:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env={**os.environ, "ROBUSTLIP_LOG_DIR": str(cwd / "logs")},
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return Sample(elapsed, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))


def checkpoint_table(checkpoint: Path | None, baseline: str | None, repeats: int, work: Path) -> bool:
    if checkpoint is None:
        run_process([str(BIN / "robustlip-train"), f"hydra.run.dir={work / 'quickstart'}",
                     "trainer.enable_progress_bar=false"], work)
        checkpoint = work / "quickstart" / "checkpoints" / "last.ckpt"
    job = work / "api_job.py"
    job.write_text(API_JOB)
    counter = iter(range(10**6))

    def cli(executable: str, progress: str) -> Sample:
        return run_process([executable, f"ckpt_path={checkpoint}", progress, f"hydra.run.dir={work / f'e{next(counter)}'}"],
                           work)

    variants = {"robustlip-eval (this version)": lambda: cli(str(BIN / "robustlip-eval"), "progress=false"),
                "Python API, its own process": lambda: run_process(
                    [sys.executable, str(job), str(checkpoint), str(work / f"a{next(counter)}")], work)}
    if baseline:
        variants["robustlip-eval (--baseline-eval)"] = lambda: cli(baseline, "trainer.enable_progress_bar=false")
    samples = interleaved(variants, repeats)
    reference = "robustlip-eval (--baseline-eval)" if baseline else "robustlip-eval (this version)"
    rows = [[name, f"{wall(s):.2f}", f"{cpu(s):.2f}", spread(s), f"{wall(s) / wall(samples[reference]):.3f}"]
            for name, s in samples.items()]
    print_table(f"The default evaluation of {checkpoint} (whole processes, median of {repeats})",
                ["variant", "wall (s)", "CPU (s)", "wall spread", f"wall / {reference}"], rows)
    return wall(samples["Python API, its own process"]) <= 1.05 * wall(samples[reference])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=100, help="test points for AutoAttack (digits has 397 here)")
    parser.add_argument("--batch-size", type=int, default=250, help="AutoAttack's batch (RobustBench's default is 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a robustlip-train checkpoint (default: train the "
                        "quickstart here)")
    parser.add_argument("--baseline-eval", default=None, help="another installation's robustlip-eval to compare with")
    parser.add_argument("--skip", choices=["autoattack", "checkpoint"], default=None)
    parser.add_argument("--attacks", default=None, help="AutoAttack's sub-attacks, comma-separated (version custom, "
                        "e.g. apgd-ce,apgd-t: a CPU-sized run); default: the standard version's four")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    print(machine_line(device))
    ok = True
    if args.skip != "autoattack":
        ok &= autoattack_table(device, args.n, args.batch_size, args.repeats,
                               args.attacks.split(",") if args.attacks else None)
    if args.skip != "checkpoint":
        with tempfile.TemporaryDirectory() as tmp:
            ok &= checkpoint_table(args.checkpoint, args.baseline_eval, args.repeats, Path(tmp))
    print(textwrap.fill("bars: equal numbers, robustlip AutoAttack ≤ 1.1 × official, API ≤ 1.05 × robustlip-eval: "
                        + ("met" if ok else "NOT met"), 110))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
