"""benchmarks/reference_check.py without the authors' repositories: it says where to get them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


def test_without_repositories_it_names_them_and_exits_2() -> None:
    res = _run()
    assert res.returncode == 2
    assert "Yaziwel/TAT" in res.stderr and "GuangluDong0728/DATPRL-IR" in res.stderr
    assert "--tat-repo" in res.stderr
    for opt, repo in (("--promptir-repo", "va1shn9v/PromptIR"), ("--moce-ir-repo", "MoCE-IR"),
                      ("--amir-repo", "Task-Adaptive-Routing")):
        assert opt in res.stderr and repo in res.stderr


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    res = _run("--tat-repo", str(tmp_path / "nowhere"))
    assert res.returncode == 2
    assert "--tat-repo=" in res.stderr and "not a folder" in res.stderr
