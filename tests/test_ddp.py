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


@pytest.mark.slow
def test_two_ranks_get_balanced_disjoint_batches(tmp_path, toy_shard):
    from collections import Counter

    from conftest import TOY_TASKS

    out = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_probe.py"), str(tmp_path),
                          str(toy_shard)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["per_device"] for r in ranks] == [6, 6]
    for r in ranks:
        assert len(r["batches"]) == 2 * 4                 # 2 epochs × 48 / 12 steps
        for tasks in r["batches"]:                        # 6 per rank = 2 of each of 3 tasks
            assert Counter(tasks) == {t: 2 for t in TOY_TASKS}
    for epoch in ("0", "1"):
        d0, d1 = set(ranks[0]["draws"][epoch]), set(ranks[1]["draws"][epoch])
        assert len(d0) == len(d1) == 24 and not d0 & d1   # distinct items on the two ranks
    assert not set(ranks[0]["draws"]["0"]) & set(ranks[0]["draws"]["1"])
