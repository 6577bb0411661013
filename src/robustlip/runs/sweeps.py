"""Hydra callbacks for multiruns: a sweep summary, one GPU per job, and a guard against DDP in sweeps.

They are registered in ``conf/hydra/default.yaml`` (``sweep_summary``, ``multirun_guard``) and in
``conf/hydra/launcher/per_gpu.yaml`` (``gpu_pinning``), so every ``robustlip-train -m`` gets them.

Why callbacks and not code in ``train.py``: Hydra's BasicSweeper runs every job of a batch and only
then re-raises the first failure (``JobReturn.return_value``), and it never calls ``on_multirun_end``
when a job failed. The only hook that sees *every* job, failed or not, locally or on a SLURM node, is
``on_job_end``. So each job writes its own record next to the sweep and rebuilds the summary under a
file lock; the last job to finish leaves the complete ``sweep_summary.json`` / ``.md``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from robustlip.core.files import write_json_atomic
from robustlip.core.results import RESULT_KEYS

log = logging.getLogger(__name__)

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
_RECORDS_DIR = ".sweep_jobs"
_GPU_LOCK_DIR = ".gpu_locks"


class SweepRefused(SystemExit):
    """A sweep configuration that must not run, raised from a Hydra callback.

    Hydra 1.3 turns an ``Exception`` raised in a callback into a warning and carries on (verified in
    ``hydra/_internal/callbacks.py``), which would let a DDP sweep re-launch itself or two jobs share a
    GPU. ``SystemExit`` is not an ``Exception``: it stops the sweep with the message and exit status 1.
    """


# --------------------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The GPU ids this machine offers, without initialising CUDA in the calling process.

    ``CUDA_VISIBLE_DEVICES`` wins when set (an empty value means no GPU); otherwise ``nvidia-smi -L``
    is asked. Initialising CUDA in the sweep's parent process is avoided on purpose: the per-GPU launcher
    starts worker processes that must each choose their device before CUDA starts.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def num_gpus() -> int:
    """``${robustlip.num_gpus:}``: jobs to run at once with one GPU each (at least 1, so CPU-only works)."""
    return max(1, len(visible_gpus()))


if not OmegaConf.has_resolver("robustlip.num_gpus"):
    OmegaConf.register_new_resolver("robustlip.num_gpus", num_gpus)

def claim_gpu(lock_dir: str | Path, gpus: Sequence[str], wait_s: float = 60.0) -> tuple[str, Any]:
    """Take the first GPU whose lock file no other process holds; returns (gpu id, open lock file).

    ``flock`` locks belong to the open file: the OS drops them when the holder exits or crashes, so a
    dead worker never keeps a GPU reserved. Waits up to ``wait_s`` for a slot (a worker that is shutting
    down), then fails with the list of GPUs, never silently sharing one.
    """
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{gpu}.lock", "a+")  # noqa: SIM115 - kept open on purpose
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            return gpu, handle
        if time.monotonic() >= deadline:
            raise SweepRefused(
                f"gpu_pinning: all GPUs {list(gpus)} are held by other jobs of this sweep; "
                f"hydra.launcher.n_jobs must not exceed the number of GPUs ({len(gpus)})."
            )
        time.sleep(0.5)


class GpuPerJob(Callback):
    """Pin each job of a process-parallel sweep to its own GPU (``hydra/launcher=per_gpu``).

    Joblib runs ``n_jobs`` worker processes; each worker claims one GPU the first time it runs a job and
    sets ``CUDA_VISIBLE_DEVICES`` to it before the job touches CUDA, so ``cuda:0`` in the job is that
    GPU and no two concurrent jobs share one. ``gpus``: explicit ids, or null for all visible GPUs.
    With no GPU at all it does nothing (CPU sweeps).
    """

    #: The slot this *process* holds: (lock dir, GPU id, open lock file). A worker keeps its GPU for life,
    #: because CUDA reads CUDA_VISIBLE_DEVICES once, at initialisation, so a reused worker cannot move.
    claim: tuple[str, str, Any] | None = None

    def __init__(self, gpus: Sequence[Any] | None = None) -> None:
        self.gpus = [str(g) for g in gpus] if gpus is not None else None

    def _gpus(self) -> list[str]:
        return self.gpus if self.gpus is not None else visible_gpus()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        gpus = self._gpus()
        n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
        if gpus and n_jobs is not None and (int(n_jobs) < 1 or int(n_jobs) > len(gpus)):
            raise SweepRefused(
                f"hydra.launcher.n_jobs={n_jobs} but the per-GPU launcher has {len(gpus)} GPU(s) {gpus}: "
                f"set hydra.launcher.n_jobs to a value in 1..{len(gpus)} (one job per GPU)."
            )
        if gpus:
            log.info("gpu_pinning: up to %s concurrent jobs on GPUs %s", n_jobs, gpus)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        gpus = self._gpus()
        if not gpus:
            return
        lock_dir = str(Path(str(config.hydra.sweep.dir)) / _GPU_LOCK_DIR)
        if GpuPerJob.claim is None or GpuPerJob.claim[0] != lock_dir:
            GpuPerJob.release()
            gpu, handle = claim_gpu(lock_dir, gpus)
            GpuPerJob.claim = (lock_dir, gpu, handle)
        os.environ["CUDA_VISIBLE_DEVICES"] = GpuPerJob.claim[1]
        log.info("gpu_pinning: job %s -> CUDA_VISIBLE_DEVICES=%s", config.hydra.job.num, GpuPerJob.claim[1])

    @classmethod
    def release(cls) -> None:
        """Drop this process's GPU slot (a worker keeps it across its jobs of one sweep until it exits)."""
        if cls.claim is not None:
            cls.claim[2].close()
            cls.claim = None


# --------------------------------------------------------------------------------------------------
# DDP guard
# --------------------------------------------------------------------------------------------------
def _device_count(devices: Any) -> int | None:
    """How many devices a Trainer ``devices`` value asks for; None for 'all of them' (auto / -1)."""
    if devices is None:
        return 1
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return None
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        return int(text)
    except ValueError:
        return 1


def multi_process_reason(trainer: DictConfig | dict | None) -> str | None:
    """Why this trainer config would start several processes (Lightning re-executes the command), or None."""
    if not trainer:
        return None
    strategy = str(trainer.get("strategy", "auto") or "auto")
    if isinstance(trainer.get("strategy"), (dict, DictConfig)):
        strategy = str(trainer["strategy"].get("_target_", "custom"))
    devices = _device_count(trainer.get("devices", 1))
    nodes = int(trainer.get("num_nodes", 1) or 1)
    distributed = any(s in strategy.lower() for s in ("ddp", "fsdp", "deepspeed"))
    if nodes > 1:
        return f"trainer.num_nodes={nodes}"
    if devices is not None and devices > 1:
        return f"trainer.devices={trainer.get('devices')} (strategy={strategy})"
    if devices is None and distributed:
        return f"trainer.devices={trainer.get('devices')} with strategy={strategy}"
    return None


class MultirunGuard(Callback):
    """Refuse a multirun whose jobs would use Lightning DDP with several processes.

    Lightning's DDP launcher re-executes ``sys.argv`` for every extra rank: in ``-m`` mode that would
    re-launch the *whole sweep* in each child (docs/architecture.md, "Known traps"). One sweep point = one process:
    use one GPU per job (``hydra/launcher=per_gpu`` or SLURM), and ``trainer=ddp`` only outside ``-m``.
    The exception: under SLURM the ranks are started by ``srun`` (``tasks_per_node`` = devices), and
    Lightning attaches to them instead of re-launching.
    """

    def _check(self, config: DictConfig, where: str) -> None:
        reason = multi_process_reason(config.get("trainer"))
        if reason is None:
            return
        launcher = OmegaConf.select(config, "hydra.launcher", default=None) or {}
        target = str(launcher.get("_target_", ""))
        if target.endswith("SlurmLauncher"):
            tasks = int(launcher.get("tasks_per_node") or 1) * int(launcher.get("nodes") or 1)
            devices = _device_count(config.trainer.get("devices", 1))
            nodes = int(config.trainer.get("num_nodes", 1) or 1)
            if devices is not None and tasks == devices * nodes:
                return
            raise SweepRefused(
                f"{where}: {reason} under SLURM needs hydra.launcher.tasks_per_node x nodes = devices x "
                f"num_nodes (srun starts the ranks); got tasks {tasks}, devices {devices} x nodes {nodes}."
            )
        raise SweepRefused(
            f"{where}: a multirun (-m) cannot use several processes per job ({reason}): Lightning's DDP "
            "would re-launch the whole sweep in every rank. Run one job per GPU instead "
            "(hydra/launcher=per_gpu, or hydra/launcher=slurm: one GPU per array task), or use "
            "trainer=ddp for a single run without -m."
        )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "multirun")
        self._check_data(config)

    @staticmethod
    def _check_data(config: DictConfig) -> None:
        """A dataset that is not there fails the sweep once, before any job starts, not every job one by one.

        Only when every job reads the same data (no ``data`` key or option is swept); a swept dataset is
        checked by each job, as before. The check is the training run's own (:func:`robustlip.runs.setup.prepare_data`).
        """
        node = config.get("data")
        if node is None or not node.get("_target_"):
            return
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
        for override in overrides:
            key, _, value = str(override).partition("=")
            if key.lstrip("+~").split(".")[0] == "data" and ("," in value or value.strip().startswith(("range(", "choice(", "glob("))):
                return
        from robustlip.core.errors import ConfigError, print_error
        from robustlip.runs.setup import prepare_data

        try:
            prepare_data(config)
        except ConfigError as exc:
            print_error(f"{exc} (checked once before the sweep: no job was started)")
            raise SweepRefused(2) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A swept trainer (e.g. `trainer=default,ddp`) is only known per job; in a job that is a child
        # of the sweep, refusing before the task starts keeps DDP from re-launching it.
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            self._check(config, f"job {config.hydra.job.num}")


# --------------------------------------------------------------------------------------------------
# Sweep summary
# --------------------------------------------------------------------------------------------------
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def job_record(config: DictConfig, job_return: JobReturn, started: float | None) -> dict[str, Any]:
    """One job's line of the summary: status, overrides, run dir, key metrics or the error."""
    output_dir = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
    failed = job_return.status != JobStatus.COMPLETED
    record: dict[str, Any] = {
        "job": int(config.hydra.job.num),
        "status": "failed" if failed else "completed",
        "overrides": list(job_return.overrides or []),
        "output_dir": str(output_dir),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "duration_s": None if started is None else round(time.time() - started, 2),
        "metrics": {},
        "error": None,
    }
    if failed:
        exc = job_return._return_value  # the public property re-raises; the summary wants the text
        record["error"] = _error_text(exc) if isinstance(exc, BaseException) else str(exc)
    results = output_dir / "results.json"
    if results.is_file():
        try:
            metrics = json.loads(results.read_text()).get("metrics", {})
            record["metrics"] = {k: metrics[k] for k in RESULT_KEYS if k in metrics}
        except (OSError, ValueError) as exc:  # a half-written file is reported, not fatal
            record["error"] = record["error"] or f"unreadable results.json: {exc}"
    return record


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    counts = summary["counts"]
    lines = [
        f"# Sweep summary: {summary['sweep_dir']}",
        "",
        f"{counts['total']} jobs: {counts['completed']} completed, {counts['failed']} failed.",
        "",
        "| job | status | overrides | " + " | ".join(RESULT_KEYS) + " | error |",
        "|---|---|---|" + "---|" * len(RESULT_KEYS) + "---|",
    ]
    for job in summary["jobs"]:
        cells = [str(job["job"]), job["status"], " ".join(job["overrides"])]
        cells += [_fmt(job["metrics"].get(k)) for k in RESULT_KEYS]
        cells.append((job["error"] or "").replace("|", "\\|").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``sweep_summary.json`` and ``.md`` from every job record found in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir / _RECORDS_DIR / ".lock"):
        jobs = []
        for path in sorted((sweep_dir / _RECORDS_DIR).glob("*.json")):
            try:
                jobs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        jobs.sort(key=lambda r: r["job"])
        failed = [j["job"] for j in jobs if j["status"] != "completed"]
        summary = {
            "sweep_dir": str(sweep_dir),
            "counts": {"total": len(jobs), "completed": len(jobs) - len(failed), "failed": len(failed)},
            "failed_jobs": failed,
            "jobs": jobs,
        }
        write_json_atomic(sweep_dir / SUMMARY_JSON, summary)
        (sweep_dir / SUMMARY_MD).write_text(summary_markdown(summary))
    return summary


class SweepSummary(Callback):
    """Write ``sweep_summary.json``/``.md`` in the sweep dir: every job's status, overrides and metrics.

    Each job saves ``.sweep_jobs/<num>.json`` in ``on_job_end`` (which runs for failed jobs too, on the
    machine that ran the job) and rebuilds the summary; ``on_multirun_end`` rebuilds it once more and
    logs the failed jobs. Single runs (no ``-m``) are left alone.
    """

    def __init__(self) -> None:
        self._started: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        record = job_record(config, job_return, self._started)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        write_json_atomic(sweep_dir / _RECORDS_DIR / f"{record['job']:05d}.json", record)
        write_summary(sweep_dir)
        if record["status"] != "completed":
            log.error("job %s failed (%s); the sweep goes on", record["job"], record["error"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not (sweep_dir / _RECORDS_DIR).is_dir():
            return
        summary = write_summary(sweep_dir)
        log.info(
            "sweep summary: %s completed, %s failed -> %s",
            summary["counts"]["completed"], summary["counts"]["failed"], sweep_dir / SUMMARY_MD,
        )
