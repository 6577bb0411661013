"""Run every command of README.md and docs/*.md that fits a CPU, in a small setting; fail on an error or a dead run.

    bash scripts/try_docs.sh            # every command that fits a CPU (tens of minutes on 2 cores)
    bash scripts/try_docs.sh --quick    # one small run of each kind (CI runs it after the tests)
    bash scripts/try_docs.sh --list     # what would run, be skipped, and why
    bash scripts/try_docs.sh --only 'evaluation.md'   # the commands of one page (a regex on page:line and text)

The commands are the lines of the fenced ```bash blocks (continuation lines joined, comments dropped).
Each runs as written, with these changes, all printed:

* small settings: one epoch (``trainer.max_epochs=1``), fewer examples to evaluate
  (``data.train_eval_size``, ``data.test_size``), no progress bar; ``--quick`` also caps the training
  batches. Keys the command sets are replaced, the others added;
* placeholders get real values: ``ckpt_path=...`` / ``<run>`` become the checkpoint of the first
  training run of this script, report folders (``<time>``, ``DIR``, ``*``) the folder of this
  script's runs, ``~/myconf`` a config folder with ``optimizer/my_sgd.yaml``;
* paths into the repository (``.venv/bin/``, ``multirun_sweeps/``, ``benchmarks/``) point at it; every
  command runs in a fresh folder with ``ROBUSTLIP_LOG_DIR`` inside it.

Skipped, with the reason printed: what needs a GPU, a cluster or a dataset this machine does not have,
what sets up the environment this script runs in (``scripts/bootstrap.sh``), the test suite, and
benchmarks (their tables are in docs/performance.md). A command fails when it exits non-zero or when a
run it made ends at chance accuracy or with a training warning (``results.json``'s ``warnings``,
``robustlip.callbacks.TrainingHealth``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: The commands whose placeholders this script fills (robustlip-visualize: ``ckpt_path=...`` as for robustlip-eval).
COMMANDS = ("robustlip-train", "robustlip-eval", "robustlip-separation", "robustlip-report", "robustlip-visualize",
            "robustlip-staircase")

#: (pattern in the command, why it is skipped)
SKIP = [
    (r"scripts/bootstrap\.sh", "sets up the environment this script runs in"),
    (r"-m pytest", "the test suite (CI runs it before this script)"),
    (r"benchmarks/bench_(training|attacks|memory|separation)", "a benchmark (minutes); its tables are in docs/performance.md"),
    (r"perf=gpu|bf16|CUDA_VISIBLE_DEVICES|per_gpu", "needs a GPU"),
    (r"slurm", "needs a SLURM cluster"),
    (r"trainer=ddp experiment=|trainer=ddp(?!.*accelerator=cpu)", "DDP over the GPUs of a machine"),
    (r"data=(cifar10|svhn|restricted_imagenet|mnist)\b|experiment=table[234]",
     "needs a dataset this machine does not have (data.download=true fetches it)"),
    (r"data=my_set", "needs your own dataset config (docs/datasets.md)"),
    (r"multirun_sweeps/table[234]\.sh|^ ?bash multirun_sweeps/table1\.sh",
     "the paper's tables: GPU days and datasets this machine does not have"),
    (r"\s\.\.\.\s", "a pattern ('...' stands for your own arguments), not a command"),
    (r"multirun_sweeps/tsipras_", ("a Tsipras et al. sweep: its budget is part of what it measures (one epoch of "
                                   "50 training examples is one SGD step); docs/tsipras.md shows its output, "
                                   "tests/test_tsipras.py runs it small")),
    (r"download\.pytorch\.org", "an installation (PyTorch's CPU wheels from download.pytorch.org), not a usage example"),
]
#: Skipped by --quick only (they run in the full form).
QUICK_SKIP = [
    (r"\s-m\s|multirun_sweeps/", "a multirun of several trainings"),
    (r"fashion_mnist|quick_table3", "Fashion-MNIST (60k examples)"),
    (r"data\.unlabeled=true", "RST with unlabeled data learns in its documented 15 epochs, not in a quick cut"),
    (r"perf=fast", "torch.compile (minutes of compilation)"),
    (r"trainer=ddp", "DDP on two CPU processes"),
    (r"benchmarks/", "a benchmark"),
]
SMALL = {
    "robustlip-train": {"trainer.max_epochs": "1", "data.train_eval_size": "256", "data.test_size": "256",
                        "trainer.enable_progress_bar": "false"},
    "robustlip-eval": {"+patch.data.test_size": "128", "sanity.max_batches": "1", "progress": "false"},
    "robustlip-separation": {},
    "robustlip-staircase": {},
}
QUICK = {"robustlip-train": {"+trainer.limit_train_batches": "12", "data.train_eval_size": "128", "data.test_size": "128",
                             "callbacks.robust_evaluation.lipschitz.steps": "3"},
         "robustlip-eval": {"+patch.data.test_size": "32", "evaluate_train": "false"},
         # Figure 6a's 2,000 draws per n take minutes per command; 20 (5 from n = 400) show that it runs.
         "robustlip-staircase": {"sweep.trials": "20", "sweep.trials_large_n": "5"}}
#: Keys by which a command picks a small dataset itself (it then runs with its own sizes and epochs).
SMALL_DATA_KEYS = ("data.train_size", "data.classes")
#: --quick keeps whole epochs for these: a summed loss (fidelity=faithful) at its documented lr needs more than
#: the capped batches (RST at lr 0.001: at chance after 12 batches, 80 % test accuracy after one epoch).
QUICK_WHOLE_EPOCH = (r"fidelity=faithful",)
#: --quick: fewer steps for the attacks that run one search per class.
QUICK_ATTACK_STEPS = {"attack=multi_targeted": "attack.steps=4"}


@dataclass
class Command:
    source: str
    text: str
    run: str = ""
    skip: str | None = None
    seconds: float = 0.0
    error: str | None = None
    results: list[Path] = field(default_factory=list)


def _segments(line: str) -> list[str]:
    """A command line split at ``&&``, each part shell-parsed without its comment and joined back."""
    parts = []
    for part in line.split("&&"):
        words = shlex.split(part, comments=True)
        if words:
            parts.append(shlex.join(words))
    return parts


def extract(paths: list[Path]) -> list[Command]:
    """The commands of the fenced bash blocks (one per line, continuations joined, comments dropped) and the
    commands in table cells (a code span that starts with a command and has arguments), each once."""
    commands: list[Command] = []
    seen: set[str] = set()

    def add(source: str, line: str) -> None:
        parts = _segments(line)
        text = " && ".join(parts)
        if parts and text not in seen:
            seen.add(text)
            commands.append(Command(source, text))

    for path in paths:
        text = path.read_text()
        name = path.relative_to(REPO)
        for block in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            start = text.count("\n", 0, block.start()) + 2
            joined = re.sub(r"\\\n\s*", " ", block.group(1))
            for offset, line in enumerate(joined.splitlines()):
                add(f"{name}:{start + offset}", line)
        fenced = False  # a table inside a fenced block is a transcript (e.g. a benchmark's output), not a command list
        for number, line in enumerate(text.splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
            elif line.startswith("|") and not fenced:
                for span in re.findall(r"`([^`]+)`", line):
                    if re.match(r"(robustlip-\w+|bash) \S", span):
                        add(f"{name}:{number}", span)
    return commands


def classify(command: Command, quick: bool) -> None:
    parts = [part for part in command.text.split(" && ") if not re.search(r"scripts/bootstrap\.sh", part)]
    if not parts:
        command.skip = "sets up the environment this script runs in"
        return
    for pattern, reason in SKIP + (QUICK_SKIP if quick else []):
        if any(re.search(pattern, f" {part} ") for part in parts):
            command.skip = reason
            return


def with_settings(words: list[str], settings: dict[str, str]) -> list[str]:
    """``words`` with ``key=value`` for every setting: a key the command sets is replaced, another added
    (not below a node the command switches off, such as ``sanity=null``)."""
    off = {w.split("=", 1)[0] for w in words if w.endswith("=null")}
    settings = {k: v for k, v in settings.items() if k.lstrip("+~").split(".", 1)[0] not in off}
    out, seen = [], set()
    for word in words:
        key = word.split("=", 1)[0]
        bare = key.lstrip("+~")
        match = next((k for k in settings if k.lstrip("+~") == bare), None)
        if "=" in word and match is not None:
            out.append(f"{key}={settings[match]}")
            seen.add(match)
        else:
            out.append(word)
    return out + [f"{k}={v}" for k, v in settings.items() if k not in seen]


class Runner:
    def __init__(self, quick: bool, work: Path) -> None:
        self.quick = quick
        self.work = work
        self.logs = work / "logs"
        self.checkpoint: Path | None = None
        myconf = work / "myconf" / "optimizer"
        myconf.mkdir(parents=True)
        (myconf / "my_sgd.yaml").write_text("_target_: torch.optim.SGD\n_partial_: true\nlr: 0.05\nmomentum: 0.9\n")

    def prepare(self, command: Command) -> str:
        """The command as it will run: placeholders filled, repository paths absolute, small settings."""
        text = command.text.replace("~/myconf", str(self.work / "myconf"))
        for rel in (".venv/bin/", "multirun_sweeps/", "benchmarks/", "scripts/"):
            text = re.sub(rf"(?<![\w/]){re.escape(rel)}", f"{REPO}/{rel}", text)
        parts = [part.strip() for part in text.split("&&")]
        prepared = []
        for part in parts:
            if re.search(r"scripts/bootstrap\.sh", part):
                continue  # the environment this script runs in
            words = shlex.split(part)
            env = []
            while words and re.match(r"^[A-Z_]+=", words[0]):
                env.append(words.pop(0))
            if not words:
                continue
            program = Path(words[0]).name
            if words[0] == "python":
                words[0] = sys.executable
                # A script's output folder under /tmp (scripts/own_model.py --out /tmp/my_model): moved as the
                # robustlip commands' /tmp paths are (fill), so the commands after it find what it wrote.
                words = [self.moved(w) if w.startswith("/tmp/") else w for w in words]
            if program in COMMANDS:
                words = [str(BIN / program), *self.fill(program, words[1:])]
                if "--help" not in words and "--cfg" not in words and program in SMALL:
                    small = dict(SMALL[program])
                    if self.quick:
                        small.update(QUICK.get(program, {}))
                        small.update(dict(v.split("=", 1) for k, v in QUICK_ATTACK_STEPS.items() if k in words))
                        if any(re.search(p, " ".join(words)) for p in QUICK_WHOLE_EPOCH):
                            small.pop("+trainer.limit_train_batches", None)
                    if any(w.split("=", 1)[0] in SMALL_DATA_KEYS for w in words):
                        # The command already picks a small training set: it runs as documented (a smaller test
                        # set, fewer epochs or batches would cut what the example is about, or exceed its sets).
                        small = {k: v for k, v in small.items() if k in ("trainer.enable_progress_bar", "progress")}
                    if program == "robustlip-eval" and any(w.startswith("data=") for w in words):
                        small.pop("+patch.data.test_size", None)
                        small["data.test_size"] = small.get("data.test_size", "128")
                    test_size = small.get("+patch.data.test_size", small.get("data.test_size"))
                    if program == "robustlip-eval" and test_size and any(w.startswith("n_examples=") for w in words):
                        small["n_examples"] = test_size  # the attacks' subset: at most the smaller test set
                    words = [words[0], *with_settings(words[1:], small)]
            elif words[0] == "bash" and "multirun_sweeps/" in " ".join(words):
                small = {"trainer.max_epochs": "1", "data.train_eval_size": "256", "data.test_size": "256",
                         "trainer.enable_progress_bar": "false"}
                words = [*words, *(f"{k}={v}" for k, v in small.items())] if "table1" not in words[1] else words
            prepared.append(shlex.join([*env, *words]) if not env else " ".join([*env, shlex.join(words)]))
        return " && ".join(prepared)

    def moved(self, path: str) -> str:
        """A path under /tmp the docs name (a run dir, a sweep dir, a model file): moved, the same way in every
        command, into this script's work folder. The checkout and its venv stay where they are, even when they
        sit under /tmp themselves (a clean clone there)."""
        if any(path == str(root) or path.startswith(f"{root}/") for root in (self.work, REPO, Path(sys.prefix))):
            return path
        return str(self.logs / "rundirs" / path.strip("/"))

    def fill(self, program: str, args: list[str]) -> list[str]:
        out = []
        for arg in args:
            key = arg.split("=", 1)[0]
            if key in ("ckpt_path", "self_training.teacher_ckpt") and ("..." in arg or "<" in arg):
                # The first training run of the docs is a natural digits run: a checkpoint and a teacher.
                if self.checkpoint is None:
                    raise LookupError("no checkpoint yet: no training run of these docs has finished before this command")
                arg = f"{key}={self.checkpoint}"
            elif program == "robustlip-report" and "=" not in arg and ("<" in arg or arg == "DIR" or "*" in arg):
                arg = str(self.logs)
            elif "=" in arg and arg.split("=", 1)[1].startswith("/tmp/"):
                arg = f"{key}={self.moved(arg.split('=', 1)[1])}"
            out.append(arg)
        return out

    def execute(self, command: Command) -> None:
        try:
            command.run = self.prepare(command)
        except LookupError as exc:
            command.error = str(exc)
            return
        if not command.run:
            command.skip = "sets up the environment this script runs in"
            return
        cwd = self.work / f"cmd{abs(hash(command.source)) % 10**6}"
        cwd.mkdir(exist_ok=True)
        env = {**os.environ, "ROBUSTLIP_LOG_DIR": str(self.logs), "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
               "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HYDRA_FULL_ERROR": "0"}
        start = time.time()
        proc = subprocess.run(command.run, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False)
        command.seconds = time.time() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            command.error = f"exit {proc.returncode}:\n{tail}"
            return
        command.results = [p for p in self.logs.rglob("results.json") if p.stat().st_mtime >= start - 1]
        for path in command.results:
            problem = dead_run(path)
            if problem:
                command.error = f"{path.parent}: {problem}"
                return
            last = path.parent / "checkpoints" / "last.ckpt"
            config = path.parent / "config.yaml"
            # The evaluation examples of the docs evaluate a digits run (one of them sets data=digits).
            if self.checkpoint is None and last.is_file() and config.is_file() and "name: digits" in config.read_text():
                self.checkpoint = last


def dead_run(results: Path) -> str | None:
    """Why a finished run counts as a failure (chance accuracy, a training warning), or None."""
    sys.path.insert(0, str(REPO / "src"))
    from robustlip.core.results import chance_band

    payload = json.loads(results.read_text())
    if payload.get("warnings"):
        return "; ".join(payload["warnings"])
    acc = payload.get("metrics", {}).get("test/acc")
    classes = None
    config = results.parent / "config.yaml"
    if config.is_file():
        found = re.search(r"^\s*num_classes:\s*(\d+)", config.read_text(), re.MULTILINE)
        classes = int(found.group(1)) if found else None
    if acc is not None and classes:
        chance, ceiling = chance_band(classes, (payload.get("examples") or {}).get("test"))
        if acc <= ceiling:
            return f"test/acc {acc:.1f} % is chance level ({chance:.1f} % for {classes} classes)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small run of each kind (CI)")
    parser.add_argument("--list", action="store_true", help="print what would run or be skipped, run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    parser.add_argument("--only", metavar="REGEX", default=None,
                        help="only the commands whose page:line or text matches (e.g. 'evaluation.md|own_model')")
    args = parser.parse_args(argv)

    commands = extract(DOCS)
    if args.only:
        commands = [c for c in commands if re.search(args.only, f"{c.source} {c.text}")]
    for command in commands:
        classify(command, args.quick)
    work = Path(tempfile.mkdtemp(prefix="try_docs-"))
    runner = Runner(args.quick, work)
    failures = 0
    total = time.time()
    for command in commands:
        if command.skip:
            print(f"skip  {command.source}  {command.text}\n      ({command.skip})", flush=True)
            continue
        if args.list:
            runner.checkpoint = runner.checkpoint or runner.logs / "<the first digits run>" / "checkpoints" / "last.ckpt"
            print(f"run   {command.source}  {command.text}\n      as: {runner.prepare(command)}", flush=True)
            continue
        runner.execute(command)
        if command.skip:
            print(f"skip  {command.source}  {command.text}\n      ({command.skip})", flush=True)
        elif command.error:
            failures += 1
            print(f"FAIL  {command.source}  {command.text}\n      ran: {command.run}\n      {command.error}", flush=True)
        else:
            made = f", {len(command.results)} run(s) checked" if command.results else ""
            print(f"ok    {command.source}  {command.text}  ({command.seconds:.0f} s{made})\n      ran: {command.run}",
                  flush=True)
    ran = sum(1 for c in commands if not c.skip and not args.list)
    skipped = sum(1 for c in commands if c.skip)
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time (user + system of every command) does not grow with other people's load; wall time does.
    print(f"\ntry_docs{' --quick' if args.quick else ''}: {ran - failures} of {ran} commands ok, {failures} failed, "
          f"{skipped} skipped; {time.time() - total:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); work folder {work}"
          f"{'' if args.keep else ' (removed)'}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
