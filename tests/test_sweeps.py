"""Sweeps: real multiruns on digits, failures that do not stop a sweep, launcher configs, DDP.

Multiruns run as subprocesses of the real `robustlip-train -m` (the only way to exercise Hydra's
sweeper, launcher and callbacks as users do), on a 2-batch slice of digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from robustlip.report import main as report_main
from robustlip.runs import sweeps as sweep
from tests.conftest import run_command

#: A multirun job that takes seconds: one epoch of 2 batches, 32 evaluation images, short attacks.
TINY = [
    "experiment=quick_table2",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "data.train_eval_size=32",
    "data.test_size=32",
    "attack.steps=2",
    "callbacks.robust_evaluation.lipschitz.steps=2",
]


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robustlip.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
    sweep.GpuPerJob.release()


# --------------------------------------------------------------------------------------------------
# real multiruns
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_multirun_two_objectives_by_two_dropouts_gives_a_four_row_table(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_command("robustlip-train", ["-m", *TINY, "objective=natural,at", "model.dropout=0.0,0.5",
                                    f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert all("test/adv_acc" in job["metrics"] for job in summary["jobs"])
    assert (sweep_dir / "sweep_summary.md").read_text().count("| completed |") == 4

    out = tmp_path / "report"
    assert report_main([str(sweep_dir), f"out_dir={out}"]) == 0
    lines = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ") and "method" not in line]
    rows = sorted(tuple(cell.strip() for cell in line.split("|")[1:3]) for line in lines)
    assert rows == [("AT", "0"), ("AT", "0.5"), ("Natural", "0"), ("Natural", "0.5")]
    assert len((out / "table.csv").read_text().splitlines()) == 1 + 4
    assert {p.name for p in out.glob("*.png")} == {"tradeoff_digits_DigitsCNN.png", "lipschitz_digits_DigitsCNN.png"}


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_marked_failed(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # job 0 gets an invalid learning rate (fails when the optimizer is built), job 1 is fine
    proc = run_command("robustlip-train", ["-m", *TINY, "objective=natural", "optimizer.lr=-1,0.05",
                                    f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert proc.returncode != 0, "a sweep with a failed job must exit non-zero"
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"total": 2, "completed": 1, "failed": 1}
    failed, ok = summary["jobs"]
    assert failed["status"] == "failed" and "optimizer.lr=-1" in failed["overrides"]
    assert "lr" in failed["error"].lower() or "learning rate" in failed["error"].lower()
    assert ok["status"] == "completed" and ok["metrics"]["test/acc"] >= 0
    assert (sweep_dir / "1" / "results.json").exists()
    md = (sweep_dir / "sweep_summary.md").read_text()
    assert "1 completed, 1 failed" in md

    out = tmp_path / "report"
    assert report_main([str(sweep_dir), f"out_dir={out}"]) == 0
    report = (out / "report.md").read_text()
    assert "| Natural |" in report and "## Failed jobs" in report and "optimizer.lr=-1" in report


# --------------------------------------------------------------------------------------------------
# DDP: refused inside multiruns, works for one run
# --------------------------------------------------------------------------------------------------
def test_guard_refuses_multirun_with_ddp_but_not_single_device_or_srun_ranks():
    guard = sweep.MultirunGuard()
    with pytest.raises(sweep.SweepRefused, match="re-launch the whole sweep"):
        guard.on_multirun_start(_compose(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]))
    with pytest.raises(sweep.SweepRefused, match="trainer.devices"):
        guard.on_multirun_start(_compose(["trainer.devices=4"]))
    guard.on_multirun_start(_compose([]))  # one device: fine
    guard.on_multirun_start(_compose(["trainer=ddp", "trainer.devices=1"]))
    # under SLURM, srun starts one rank per task and Lightning attaches to them instead of re-launching
    guard.on_multirun_start(_compose(["trainer=ddp", "trainer.devices=2", "hydra/launcher=slurm",
                                      "hydra.launcher.tasks_per_node=2", "hydra.launcher.gpus_per_node=2"]))
    with pytest.raises(sweep.SweepRefused, match="tasks_per_node"):
        guard.on_multirun_start(_compose(["trainer=ddp", "trainer.devices=2", "hydra/launcher=slurm"]))


@pytest.mark.slow
def test_cli_multirun_with_ddp_fails_before_any_job(tmp_path):
    proc = run_command("robustlip-train", ["-m", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                    "objective=natural,at"], tmp_path)
    assert proc.returncode != 0
    assert "re-launch the whole sweep" in proc.stderr
    assert not list((tmp_path / "logs").rglob("results.json"))


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu_trains_end_to_end(tmp_path):
    args = [a for a in TINY if not a.startswith("experiment=")]
    proc = run_command("robustlip-train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *args,
                                    "trainer.enable_progress_bar=false", "~callbacks.progress_bar"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = list((tmp_path / "logs").rglob("results.json"))  # both ranks in one run dir
    metrics = json.loads(results.read_text())["metrics"]
    assert 0 <= metrics["test/acc"] <= 100 and "test/adv_acc" in metrics
    config = OmegaConf.load(results.parent / "config.yaml")
    assert config.trainer.strategy == "ddp" and config.trainer.devices == 2
    assert (results.parent / "checkpoints" / "last.ckpt").exists()


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------
def test_slurm_launcher_composes_one_gpu_per_array_task_with_requeue():
    cfg = _compose(["hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert launcher.max_num_timeout > 0, "time-limited jobs must be requeued"
    assert launcher.additional_parameters.requeue is True
    assert "hydra.sweep.dir" in OmegaConf.to_yaml(launcher) or "${hydra.sweep.dir}" in str(
        OmegaConf.to_container(launcher)["submitit_folder"]
    )


@pytest.mark.slow
def test_slurm_job_script_without_a_cluster(tmp_path):
    """The sbatch script submitit writes for a 2-job sweep, captured by a fake `sbatch`."""
    fake = tmp_path / "bin"
    fake.mkdir()
    capture = tmp_path / "captured.sbatch"
    (fake / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {capture}\necho 'no cluster here' >&2\nexit 1\n")
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    for tool in ("sbatch", "srun"):
        (fake / tool).chmod(0o755)
    proc = run_command(
        "robustlip-train",
        ["-m", *TINY, "objective=natural,at", "resume=auto", "hydra/launcher=slurm",
         "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert proc.returncode != 0  # the fake sbatch refuses after recording the script
    script = capture.read_text()
    for line in [
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-1%2",          # one array task per sweep point
        "#SBATCH --signal=USR2@180",     # submitit checkpoints + requeues before the time limit
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
    ]:
        assert line in script, f"{line} missing from:\n{script}"
    assert "submitit.core._submit" in script
    assert str(tmp_path / "sweep" / ".submitit") in script
    # The pickled array tasks: one per sweep point, each resumable and requeued up to max_num_timeout
    # times with *the same* arguments (so the same job number, hence the same run dir and last.ckpt).
    import pickle

    tasks = [pickle.loads(p.read_bytes()) for p in (tmp_path / "sweep" / ".submitit").glob("*.pkl")]
    by_num = {task.args[2]: task for task in tasks}
    assert sorted(by_num) == [0, 1]
    assert "objective=natural" in by_num[0].args[0] and "objective=at" in by_num[1].args[0]
    assert all("resume=auto" in task.args[0] for task in tasks)
    assert all(task._timeout_countdown == 20 for task in tasks)
    requeued = by_num[1].function.checkpoint(*by_num[1].args)
    assert requeued.args == by_num[1].args


def test_per_gpu_launcher_runs_one_joblib_worker_per_visible_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    cfg = _compose(["hydra/launcher=per_gpu"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 3
    assert cfg.hydra.callbacks.gpu_pinning._target_ == "robustlip.runs.sweeps.GpuPerJob"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _compose(["hydra/launcher=per_gpu"]).hydra.launcher.n_jobs == 1  # CPU-only machine


def _job_cfg(sweep_dir: Path, num: int):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "job": {"num": num},
                                       "launcher": {"n_jobs": 2}}})


def test_gpu_pinning_gives_each_worker_its_own_gpu_for_life(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pin = sweep.GpuPerJob(gpus=[3, 5])
    pin.on_job_start(_job_cfg(tmp_path, 0))
    first = os.environ["CUDA_VISIBLE_DEVICES"]
    pin.on_job_start(_job_cfg(tmp_path, 2))  # same worker, next job: CUDA cannot move, so neither do we
    assert os.environ["CUDA_VISIBLE_DEVICES"] == first and first in ("3", "5")
    # another worker (another open lock) gets the other GPU; a third finds none and says why
    other, handle = sweep.claim_gpu(tmp_path / ".gpu_locks", ["3", "5"], wait_s=0)
    assert {first, other} == {"3", "5"}
    with pytest.raises(sweep.SweepRefused, match="n_jobs must not exceed"):
        sweep.claim_gpu(tmp_path / ".gpu_locks", ["3", "5"], wait_s=0)
    handle.close()  # a worker that exits frees its GPU
    assert sweep.claim_gpu(tmp_path / ".gpu_locks", ["3", "5"], wait_s=0)[0] == other


def test_gpu_pinning_across_real_processes(tmp_path):
    """Two concurrent worker processes never get the same GPU (flock is per process here)."""
    code = textwrap.dedent(f"""
        import time
        from robustlip.runs.sweeps import claim_gpu
        gpu, handle = claim_gpu({str(tmp_path)!r}, ["0", "1"], wait_s=5)
        print(gpu, flush=True)
        time.sleep(3)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(outs) == ["0", "1"]


def test_gpu_pinning_refuses_more_jobs_than_gpus(tmp_path):
    with pytest.raises(sweep.SweepRefused, match="one job per GPU"):
        sweep.GpuPerJob(gpus=[0]).on_multirun_start(_job_cfg(tmp_path, 0))
    sweep.GpuPerJob(gpus=[]).on_job_start(_job_cfg(tmp_path, 0))  # no GPU: CPU sweep, nothing pinned


# --------------------------------------------------------------------------------------------------
# presets and sweep entries
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("experiment", "method", "expected"),
    [
        ("table2_mnist_cnn1", "trades_beta6", {"data.name": "mnist", "optimizer.lr": 1e-4, "optimizer.momentum": 0.9,
                                               "trainer.max_epochs": 160, "objective.beta": 6, "fidelity": "faithful"}),
        ("table3_cifar10", "rst_lam05", {"optimizer.lr": 1e-3, "objective.lam": 0.5, "data.augment": True,
                                         "trainer.max_epochs": 120, "optimizer.momentum": 0.0}),
        ("table3_cifar10", "at", {"optimizer.lr": 1e-2}),
        ("table4_svhn", "at", {"optimizer.lr": 1e-3, "trainer.max_epochs": 60, "data.name": "svhn"}),
        ("table4_svhn", "trades_beta3", {"optimizer.lr": 1e-2}),
        ("table3_restricted_imagenet", "llr36", {"optimizer._target_": "torch.optim.Adam", "optimizer.lr": 1e-2,
                                                 "objective.lam": 3.0, "objective.mu": 6.0, "data.batch_size": 128}),
        ("table4_cifar10", "natural", {"data.name": "cifar10", "task_name": "table4_cifar10"}),
    ],
)
def test_paper_presets_carry_the_authors_settings(experiment, method, expected):
    cfg = _compose([f"experiment={experiment}", f"+experiment/method={method}"])
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key


def test_method_presets_set_only_keys_their_objective_has():
    """Each row preset picks an existing objective and sets only that objective's keys (a typo such as
    `objective.beta` on RST would otherwise fail at sweep time, or worse, go unnoticed)."""
    import yaml

    from robustlip.runs.config import config_dir

    paths = sorted((config_dir() / "experiment" / "method").glob("*.yaml"))
    assert {"natural", "gr", "llr", "at", "rst_lam05", "rst_lam1", "rst_lam2", "trades_beta1", "trades_beta3",
            "trades_beta6"} <= {p.stem for p in paths}
    for path in paths:
        preset = yaml.safe_load(path.read_text())
        (objective,) = [d["override /objective"] for d in preset["defaults"] if "override /objective" in d]
        keys = yaml.safe_load((config_dir() / "objective" / f"{objective}.yaml").read_text())
        assert set(preset.get("objective", {})) <= set(keys), path.name
    # and they compose onto the quick presets (one per preset keeps this fast)
    for quick, method, key, value in [("quick_table2", "rst_lam05", "objective.lam", 0.5),
                                      ("quick_table3", "trades_beta6", "objective.beta", 6),
                                      ("quick_table4", "llr36", "objective.mu", 6.0)]:
        cfg = _compose([f"experiment={quick}", f"+experiment/method={method}"])
        assert OmegaConf.select(cfg, key) == value


def test_sweep_scripts_are_valid_bash_and_name_existing_presets():
    root = Path(__file__).resolve().parents[1] / "multirun_sweeps"
    scripts = sorted(root.glob("*.sh"))
    assert {"table2.sh", "table3.sh", "table4.sh", "quick_table2.sh"} <= {s.name for s in scripts}
    from robustlip.runs.config import config_dir

    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text()
        for token in text.split():
            if token.strip('"').startswith("experiment="):
                names = token.strip('"').split("=", 1)[1]
                for name in names.split(","):
                    if "$" not in name:
                        assert (config_dir() / "experiment" / f"{name}.yaml").exists(), (script.name, name)


# --------------------------------------------------------------------------------------------------
# docker
# --------------------------------------------------------------------------------------------------
def test_dockerfile_installs_with_the_readme_command_and_copies_what_it_needs():
    """No Docker engine here: check what can be checked without one."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    dockerfile = (root / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0].startswith("FROM nvidia/cuda:"), "a CUDA base image"
    # The README's first command is the install; the image must run the very same one.
    readme = (root / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0].strip()
    install = first_block.split("&&")[0].strip()
    assert install == "bash scripts/bootstrap.sh"
    assert f"RUN {install}" in lines
    # bootstrap.sh installs with pip into .venv; that .venv must be on PATH in the image
    assert "python -m pip install -q ." in (root / "scripts" / "bootstrap.sh").read_text()
    assert any(line.startswith("ENV PATH=") and ".venv/bin" in line for line in lines)
    # everything pip needs is copied before the install, and every COPY source exists
    copied: list[str] = []
    for line in lines[: lines.index(f"RUN {install}")]:
        if line.startswith("COPY "):
            copied += [src.rstrip("/") for src in line.split()[1:-1]]
    for src in copied:
        assert (root / src).exists(), src
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "scripts",
              *pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= set(copied), needed - set(copied)
    ignore = (root / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and "data" in ignore and "logs" in ignore


# --------------------------------------------------------------------------------------------------
# wandb
# --------------------------------------------------------------------------------------------------
def test_wandb_offline_run_gets_summary_table_method_and_override_tags(train_cfg, tmp_path, monkeypatch):
    import robustlip.train as train_module

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    seen: dict = {}
    finish = train_module.finish_wandb

    def capture_then_finish():
        import wandb

        if wandb.run is not None:
            seen.update(summary=dict(wandb.run.summary), tags=tuple(wandb.run.tags), group=wandb.run.group,
                        method=wandb.run.config.get("method"))
        finish()

    monkeypatch.setattr(train_module, "finish_wandb", capture_then_finish)
    cfg = train_cfg([*[a for a in TINY if not a.startswith("attack.")], "+experiment/method=trades_beta3",
                     "logger=wandb", "logger.wandb.group=my-sweep"])
    metrics = train_module.train(cfg)
    assert seen["group"] == "my-sweep"
    assert seen["method"] == "TRADES(β=3)"
    assert seen["summary"]["test/adv_acc"] == pytest.approx(metrics["test/adv_acc"])
    assert "experiment/method=trades_beta3" in seen["tags"] and "TRADES(β=3)" in seen["tags"]
    (table,) = list(tmp_path.rglob("offline-run-*/files/media/table/results_*.table.json"))
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["method", "dropout", "train/acc"]
    assert content["data"][0][0] == "TRADES(β=3)"
