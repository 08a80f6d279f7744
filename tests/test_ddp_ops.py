"""Experiment operations under DDP (2 gloo CPU processes, ``trainer=ddp_sim``), via the CLIs.

One run logs once (and tests each test image once, on one of the ranks): one run directory, one CSV log (``csv/version_0`` only), one W&B offline
run, and medrestore's own log lines once in ``<task_name>.log``. A recipe fitted to the 2
ranks (global batch 12 = 2 devices × 3 per device × accumulate 2) trains the recipe's optimiser
steps and prints its summary once.

Validation metrics of the DDP run equal a 1-process evaluation of the *same weights*: the run's
last validation is of its final weights (``last.ckpt``, saved after that validation; the tiny
Restormer has no EMA), and ``medrestore-eval`` scores that checkpoint on the same val images
(``data.test_split=val``) with ``trainer=cpu`` (in this process; a DDP evaluation of
checkpoints is compared with a 1-process one in tests/test_eval_compare.py). The match is exact
up to float32 summation order (~1e-7): every image is restored alone (val batch 1, CPU,
deterministic kernels), so its per-image scores are identical whichever rank computes them;
the strided eval sampler gives each image to exactly one rank (3 val images per task, so every
task's mean is summed over both ranks), and the per-task sums and counts are DDP-summed before
the means are taken. Training-time equality of two runs would not be exact (gradient all-reduce
changes the summation order of the update), which is why the same checkpoint is compared.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TOY_TASKS, write_toy_shard

_ENV = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")


def _run(module: str, args: list[str], timeout: int = 400) -> str:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout, env=_ENV)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


def _last_row(metrics_csv: Path, key: str) -> dict[str, float]:
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    assert rows, f"no {key} in {metrics_csv}"
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}


def _only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {[str(p) for p in paths]}"
    return paths[0]


@pytest.mark.slow
def test_ddp_run_logs_once_and_validates_like_one_process(tmp_path):
    shard = write_toy_shard(tmp_path / "toy.h5", per_split=(4, 3, 3))
    data = [f"data.sets=[{shard}]", "data.num_workers=0", "extras.print_config=false",
            "trainer.enable_progress_bar=false", f"paths.log_dir={tmp_path}/logs"]
    log = _run("medrestore.cli.train", [
        *data, "model=restormer_tiny", "trainer=ddp_sim", "logger=[csv,wandb]", "task_name=ddp",
        "data.patch_size=32", "data.samples_per_epoch=24", "trainer.log_every_n_steps=1",
        "~callbacks.model_summary", "validate_best=false",  # the in-fit validation is compared
        "+recipe.global_batch=12", "+recipe.total_steps=4", "+recipe.max_per_device=3"])
    assert "MEMBER: 2/2" in log or "distributed_backend=gloo" in log
    assert log.count("recipe: global batch 12 = 2 devices × 3 per device × accumulate 2") == 1
    assert log.count("recipe: 4 optimiser steps = 48 samples") == 1

    run = _only(list((tmp_path / "logs" / "ddp" / "runs").iterdir()), "run directory")
    metrics_csv = _only(sorted(run.rglob("metrics.csv")), "CSV log")
    assert metrics_csv.parent.name == "version_0"
    wandb_runs = sorted((run / "wandb").glob("offline-run-*"))
    _only(wandb_runs, "W&B offline run")
    text = (run / "ddp.log").read_text()
    for line in ("model restormer_tiny: 191,755 parameters", "Output dir:"):
        assert text.count(line) == 1, (line, text)
    assert (run / "config_resolved.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    # the test after the fit counts each test image once (3 per task): no padding duplicates
    rows = json.loads((run / "results_test.json").read_text())
    assert {r["task"]: r["n"] for r in rows if r["n"] != ""} == {t: 3 for t in TOY_TASKS}

    ddp_val = _last_row(metrics_csv, "val/psnr")
    assert ddp_val["step"] == 3                    # Lightning logs it at the last step, 0-based
    import torch

    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4               # the recipe's optimiser steps, not micro-batches
    assert {f"val/{t}/psnr" for t in TOY_TASKS} <= set(ddp_val)

    # the same weights scored by one process, in this one (the DDP evaluation of a checkpoint:
    # tests/test_eval_compare.py::test_ddp_two_ranks_gather_every_image_once)
    from conftest import compose
    from medrestore.cli.eval import evaluate

    ckpt = run / "checkpoints" / "last.ckpt"
    one, _ = evaluate(compose("eval", [f"data.sets=[{shard}]", "data.num_workers=0",
                                       f"ckpt_path={ckpt}", "trainer=cpu", "logger=csv",
                                       "trainer.enable_progress_bar=false",
                                       "+data.test_split=val"], tmp_path / "eval_cpu"))
    compared = 0
    for key, value in ddp_val.items():
        if not key.startswith(("val/", "val_input/")):
            continue
        test_key = "test" + key[len("val"):]
        assert float(one[test_key]) == pytest.approx(value, rel=1e-6, abs=1e-6), key
        compared += 1
    assert compared >= 3 * len(TOY_TASKS) * 2      # psnr/ssim/rmse of every task, both sources
