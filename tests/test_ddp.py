"""Distributed sampling on CPU: 2 gloo processes, run as a subprocess (a whole DDP train / test
through the CLI: tests/test_ddp_ops.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


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
