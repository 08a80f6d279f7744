"""``medrestore-report``: one comparison table over run folders / a multirun folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides

TASKS3 = ("ct_denoise", "natural_denoise", "rs_sr")


def fake_run(d: Path, model: str, psnr: float, overrides: list[str], seed: int = 1,
             results: bool = True) -> Path:
    """A run folder as ``medrestore-train`` leaves it: results table, resolved config, overrides."""
    from medrestore.utils.report import results_rows, write_results

    d.mkdir(parents=True)
    lr = next((o.split("=")[1] for o in overrides if o.startswith("model.optimizer.lr=")), "3e-4")
    (d / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"task_name": "train", "seed": seed, "paths": {"output_dir": str(d)},
         "model": {"net": {"name": model}, "optimizer": {"lr": float(lr)}}}))
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results:
        m = {}
        for i, t in enumerate(TASKS3):
            for stage, base in (("test", psnr + i), ("test_input", 20.0 + i)):
                m[f"{stage}/{t}/psnr"], m[f"{stage}/{t}/ssim"] = base, base / 100
        for stage in ("test", "test_input"):
            for dom, ts in (("medical", TASKS3[:1]), ("natural", TASKS3[1:2]),
                            ("remote_sensing", TASKS3[2:])):
                for k in ("psnr", "ssim"):
                    m[f"{stage}/{dom}/{k}"] = m[f"{stage}/{ts[0]}/{k}"]
        for k in ("psnr", "ssim"):
            m[f"test/{k}"] = sum(m[f"test/{t}/{k}"] for t in TASKS3) / 3
            m[f"test_input/mean/{k}"] = sum(m[f"test_input/{t}/{k}"] for t in TASKS3) / 3
        write_results(results_rows(m, "test", {t: 1 for t in TASKS3}), d, "results_test")
    return d


def test_table_rows_columns_labels_and_files(tmp_path):
    from medrestore.cli.report import run_report

    a = fake_run(tmp_path / "a", "tat_tiny", 30.0, ["model=tat_tiny", "model.optimizer.lr=1e-3"])
    b = fake_run(tmp_path / "b", "restormer_tiny", 28.0,
                 ["model=restormer_tiny", "model.optimizer.lr=5e-4"])
    text = run_report([a, b], tmp_path / "cmp.csv")
    lines = text.splitlines()
    header = lines[1]
    assert "tat_tiny lr=1e-3" in header and "restormer_tiny lr=5e-4" in header
    names = [ln.split()[0] for ln in lines[3:10]]
    assert names == ["ct_denoise", "natural_denoise", "rs_sr", "[medical]", "[natural]",
                     "[remote_sensing]", "[mean]"]
    assert "30.00*" in lines[3] and "28.00" in lines[3]      # best per row marked
    rows = list(csv.reader((tmp_path / "cmp.csv").open()))
    assert rows[0] == ["task", "domain", "tat_tiny lr=1e-3", "restormer_tiny lr=5e-4"]
    assert rows[-1][0] == "[mean]" and float(rows[-1][2]) == pytest.approx(31.0)
    run_report([a, b], tmp_path / "cmp.md", metric="ssim")
    md = (tmp_path / "cmp.md").read_text()
    assert "| task | domain | tat_tiny lr=1e-3 | restormer_tiny lr=5e-4 |" in md
    assert "| ct_denoise | medical | 0.3000* | 0.2800 |" in md


def test_multirun_folder_and_identical_labels(tmp_path):
    from medrestore.cli.report import find_runs, run_report

    multi = tmp_path / "multiruns" / "2026-01-01_00-00-00"
    for i, (lr, seed) in enumerate([("1e-3", 1), ("1e-3", 2), ("5e-4", 1), ("5e-4", 2)]):
        fake_run(multi / str(i), "restormer_tiny", 25.0 + i,
                 [f"model.optimizer.lr={lr}", f"seed={seed}"], seed=seed)
        (multi / str(i) / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (multi / "multirun.yaml").write_text("{}")
    assert [p.name for p in find_runs([multi])] == ["0", "1", "2", "3"]
    header = run_report([multi]).splitlines()[1]
    for lbl in ("restormer_tiny lr=1e-3 seed=1", "restormer_tiny lr=5e-4 seed=2"):
        assert lbl in header
    # same model, no overrides, same config: told apart by the folder name
    c = fake_run(tmp_path / "c", "tat_tiny", 30.0, [])
    d = fake_run(tmp_path / "d", "tat_tiny", 31.0, [])
    header = run_report([c, d]).splitlines()[1]
    assert "tat_tiny [c]" in header and "tat_tiny [d]" in header


def _report_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "medrestore.cli.report", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_run_without_results_is_one_line_or_skipped(tmp_path):
    a = fake_run(tmp_path / "a", "tat_tiny", 30.0, ["model=tat_tiny"])
    b = fake_run(tmp_path / "b", "restormer_tiny", 28.0, ["model=restormer_tiny"], results=False)
    out = _report_cli([a, b], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {b}: no results_test.json (the run has not finished its test; "
        "--skip-missing leaves it out)"]
    out = _report_cli([a, b, "--skip-missing"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tat_tiny" in out.stdout and f"skipped (no results): {b}" in out.stdout
    for bad, msg in ([tmp_path / "nope"], "no such run directory"), \
                    ([a, "--out", tmp_path / "x.txt"], "expected a .csv or .md file"), \
                    ([a, "--metric", "lpips"], "--metric lpips: expected one of"):
        out = _report_cli(bad, tmp_path)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert msg in out.stderr
    (tmp_path / "empty").mkdir()
    out = _report_cli([tmp_path / "empty"], tmp_path)
    assert out.returncode == 2 and "not a run directory" in out.stderr


@pytest.mark.slow
def test_hydra_multirun_2x2_wandb_offline_panels_and_report(tmp_path, toy_shard):
    """A real 2x2 Hydra multirun (lr x seed) with logger=wandb: four offline W&B runs, each with
    panels per task and the test table, then one comparison table over the multirun folder."""
    from test_wandb_ops import check_wandb_run

    multi = tmp_path / "multi"
    skip = ("model=", "logger=", "trainer.max_epochs=", "data.samples_per_epoch=", "validate_best=")
    args = [o for o in tiny_overrides(toy_shard) if not o.startswith(skip)]
    cmd = [sys.executable, "-m", "medrestore.cli.train", "-m", "model.optimizer.lr=1e-3,5e-4",
           "seed=1,2", "model=restormer_tiny", "logger=wandb", "trainer.max_epochs=1",
           "data.samples_per_epoch=12", "validate_best=true", *args, f"paths.log_dir={tmp_path}/logs",
           f"hydra.sweep.dir={multi}"]
    env = dict(os.environ, WANDB_MODE="offline")
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p for p in multi.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        check_wandb_run(job)                                  # one offline run each, own panels
    rep = _report_cli([multi, "--out", tmp_path / "cmp.csv"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    rows = list(csv.reader((tmp_path / "cmp.csv").open()))
    # labels: the model and the swept keys, with the values Hydra recorded for each job
    assert rows[0] == ["task", "domain", "restormer_tiny lr=0.001 seed=1",
                       "restormer_tiny lr=0.001 seed=2", "restormer_tiny lr=0.0005 seed=1",
                       "restormer_tiny lr=0.0005 seed=2"]
    assert [r[0] for r in rows[1:]] == [*TASKS3, "[medical]", "[natural]", "[remote_sensing]",
                                        "[mean]"]
    assert all(float(v) > 0 for r in rows[1:] for v in r[2:])
    json.loads((jobs[0] / "results_test.json").read_text())
    # the same runs compared on the validation split (how a recipe is chosen)
    rep = _report_cli([multi, "--stage", "val", "--metric", "psnr_gain", "--out",
                       tmp_path / "val.md"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "psnr_gain per task, val split, 4 run(s)" in rep.stdout
    assert "(results_val.json; * = best)" in (tmp_path / "val.md").read_text()
