"""A researcher's first hour: every mistake gets the right one-line answer and leaves nothing behind.

The commands run through their real console entries (``main()`` with a real argv, in this process, so
the checks cost no interpreter start-up); ``tests/test_reliability.py`` has the faults of long runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ENTRIES = {"robustlip-train": "robustlip.train", "robustlip-eval": "robustlip.evaluate",
           "robustlip-separation": "robustlip.separation"}


def run_cli(command: str, args: list[str], tmp_path: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    """``command args`` through its console entry in this process; (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    main = importlib.import_module(ENTRIES[command]).main
    GlobalHydra.instance().clear()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTLIP_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [command, *args])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- 2. a misspelled option or key: Hydra's own message, exit 2 (bad input), for every command --------------
MISSPELLED = [
    ("robustlip-train", ["objective=trade"], "objective/trade", ["trades", "natural", "rst"]),
    ("robustlip-train", ["data=digit"], "data/digit", ["digits", "fashion_mnist"]),
    ("robustlip-train", ["trainer.max_epoch=3"], "max_epoch", []),
    ("robustlip-eval", ["ckpt_path=x.ckpt", "attack=pgdd"], "attack/pgdd", ["pgd", "fgsm", "multi_targeted"]),
    ("robustlip-separation", ["data=digit"], "data/digit", ["digits", "mnist"]),
]


@pytest.mark.parametrize(("command", "args", "named", "options"), MISSPELLED,
                         ids=[f"{c}-{a[-1]}" for c, a, _, _ in MISSPELLED])
def test_a_misspelled_option_gets_hydras_message_with_the_choices_and_exit_2(command, args, named, options, tmp_path,
                                                                              capsys, monkeypatch):
    code, _, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert named in err and err.startswith("error: "), err
    for option in options:
        assert f"\t{option}\n" in err, err
    assert "run directory" not in err and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists(), "a config Hydra cannot compose must not create a run directory"


def test_reliability_doc_states_the_exit_code_of_a_composition_error():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| misspelled key")]
    assert "exit 2" in row, row


# -- 7. a failed check leaves no run directory, no log, no parent folder it created --------------------------
@pytest.mark.parametrize(("command", "args"), [
    ("robustlip-train", ["attack.eps=-1"]),
    ("robustlip-train", ["trainer.max_epochs=-1"]),
    ("robustlip-train", ["trainer.max_epochs=-2"]),
    ("robustlip-train", ["optimizer.lr=-1"]),
    ("robustlip-eval", ["ckpt_path=/nonexistent/last.ckpt"]),
], ids=["train-eps", "train-epochs-1", "train-epochs-2", "train-lr", "eval-ckpt"])
def test_a_failed_check_leaves_nothing_behind(command, args, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(command, args, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert len(error_lines(err)) == 1, err
    assert not (tmp_path / "logs").exists(), sorted(str(p) for p in (tmp_path / "logs").rglob("*"))


def test_a_failed_check_in_an_existing_folder_removes_nothing(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    code, _, err = run_cli("robustlip-train", ["attack.eps=-1", f"hydra.run.dir={run_dir}"], tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert run_dir.is_dir(), "a folder the user made must survive a failed run"
