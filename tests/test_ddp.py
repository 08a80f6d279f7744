"""Distributed path on CPU: 2 gloo processes (trainer=ddp_sim), run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_overrides


@pytest.mark.slow
def test_ddp_sim_two_processes_train_and_test(tmp_path, toy_shard):
    args = [sys.executable, "-m", "medrestore.cli.train", *tiny_overrides(toy_shard),
            "trainer=ddp_sim", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            f"paths.log_dir={tmp_path}/logs", "task_name=ddp"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "world_size: 2" in log or "MEMBER: 2/2" in log or "distributed_backend=gloo" in log
    run = next((tmp_path / "logs" / "ddp" / "runs").iterdir())
    rows = json.loads((run / "results_test.json").read_text())
    # each test image counted once (3 tasks, 1 image each): no padding duplicates across ranks
    assert {r["task"]: r["n"] for r in rows if r["n"] != ""} == {
        "ct_denoise": 1, "natural_denoise": 1, "rs_sr": 1}
    assert (run / "checkpoints" / "last.ckpt").is_file()
