"""End-to-end: train -> checkpoints -> resume -> eval, through the real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose, tiny_overrides


def test_train_fit_test_and_outputs(tmp_path, toy_shard):
    from medrestore.cli.train import train

    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(toy_shard) if not o.startswith("validate_best=")]
    cfg = compose("train", overrides + ["validate_best=true"], run)
    metrics, objs = train(cfg)
    assert (run / "config_resolved.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "checkpoints").glob("epoch_*.ckpt"))
    assert (run / "csv").is_dir()
    rows = json.loads((run / "results_test.json").read_text())
    tasks = [r["task"] for r in rows if not str(r["task"]).startswith("[")]
    assert sorted(tasks) == ["ct_denoise", "natural_denoise", "rs_sr"]
    for key in ("val/psnr", "test/psnr", "test/ct_denoise/psnr", "test/medical/ssim",
                "test_input/rs_sr/psnr"):
        assert key in metrics, key
    # the validation table of the checkpoint the test used (recipes are chosen on it)
    val_rows = {r["task"]: r for r in json.loads((run / "results_val.json").read_text())}
    assert set(val_rows) >= {"ct_denoise", "natural_denoise", "rs_sr", "[mean]"}
    assert val_rows["[mean]"]["psnr_restored"] == pytest.approx(metrics["val/psnr"], abs=1e-4)
    assert rows != list(val_rows.values())                   # not the test table again

    # resume from last.ckpt for one more epoch
    run2 = tmp_path / "resumed"
    cfg2 = compose("train", tiny_overrides(toy_shard) + [
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3", "test=false"], run2)
    _, objs2 = train(cfg2)
    assert objs2["trainer"].current_epoch == 3
    assert objs2["trainer"].global_step > objs["trainer"].global_step

    # evaluate the checkpoint: the net is rebuilt from the checkpoint, not the config
    from medrestore.cli.eval import evaluate

    cfg3 = compose("eval", [f"data.sets=[{toy_shard}]", "model=restormer",
                            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                            "trainer.enable_progress_bar=false"], tmp_path / "eval")
    m3, objs3 = evaluate(cfg3)
    assert objs3["model"].hparams.net["name"] == "restormer_tiny"
    assert "test/psnr" in m3 and (tmp_path / "eval" / "results_test.csv").is_file()

    # a plain weights file (e.g. released .pth) goes into the configured architecture
    import torch

    weights = tmp_path / "released.pth"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    torch.save({"params": {k[len("net."):]: v for k, v in last["state_dict"].items()
                           if k.startswith("net.")}}, weights)
    cfg4 = compose("eval", [f"data.sets=[{toy_shard}]", "model=restormer_tiny",
                            f"ckpt_path={weights}", "model.net.pretrained_format=official",
                            "trainer.enable_progress_bar=false"], tmp_path / "eval_plain")
    m4, objs4 = evaluate(cfg4)
    assert m4["test/psnr"] == pytest.approx(m3["test/psnr"], abs=1e-4)


def _cli(args, cwd: Path, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    # in-process, through the function the entry point runs (each CLI process costs ~8 s of
    # imports); the real train and eval processes: tests/test_bad_inputs.py
    from medrestore.cli.train import train

    for overrides, needle in (([f"data.sets=[{tmp_path / 'missing.h5'}]"], "missing.h5: no such shard"),
                              (["data.tasks=[ct_denoising]"], "unknown task 'ct_denoising'")):
        cfg = compose("train", [*overrides, "trainer.enable_progress_bar=false"], tmp_path / "run")
        with pytest.raises(SystemExit) as info:
            train(cfg)
        err = capsys.readouterr().err
        err_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert info.value.code == 2 and len(err_lines) == 1 and needle in err_lines[0], err
        assert "Traceback" not in err


def test_prepare_refuses_to_overwrite(tmp_path):
    target = tmp_path / "demo.h5"
    target.write_bytes(b"precious")
    out = _cli(["medrestore.cli.prepare", "demo", "--out", str(target), "--quiet"], tmp_path)
    assert out.returncode == 2 and "already exists" in out.stderr
    assert target.read_bytes() == b"precious"


@pytest.mark.slow
def test_cli_train_makes_one_run_dir_with_its_config(tmp_path, toy_shard):
    out = _cli(["medrestore.cli.train", *tiny_overrides(toy_shard), "trainer.max_epochs=1",
                f"paths.log_dir={tmp_path}/logs", "task_name=smoke"], REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "logs" / "smoke" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for f in (".hydra/config.yaml", "config_resolved.yaml", "smoke.log", "results_test.csv",
              "checkpoints/last.ckpt"):
        assert (run / f).exists(), f
    assert "ct_denoise" in out.stdout and "PSNR in" in out.stdout

    # the analysis notebook runs top to bottom on this run's files, in a real kernel
    import nbformat
    from nbclient import NotebookClient

    import medrestore

    nb = nbformat.read(REPO / "notebooks" / "demo_results.ipynb", as_version=4)
    src = str(Path(medrestore.__file__).resolve().parents[1])     # the medrestore tested here
    env = {"MEDRESTORE_RUN": str(run), "MEDRESTORE_SHARD": str(toy_shard),
           "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                      # the kernel inherits this environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "ct_denoise" in text
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) == 3


def test_wandb_logger_offline_and_always_finished(tmp_path, toy_shard):
    """logger=wandb logs offline into the run dir, and the task wrapper closes the run."""
    import wandb

    from medrestore.cli.train import train

    assert os.environ.get("WANDB_MODE") in ("offline", "disabled")
    run = tmp_path / "wb"
    cfg = compose("train", tiny_overrides(toy_shard) + [
        "logger=wandb", "trainer.max_epochs=1", "test=false"], run)
    metrics, _ = train(cfg)
    assert "val/psnr" in metrics
    assert wandb.run is None                       # wandb.finish() ran in the wrapper
    if os.environ["WANDB_MODE"] == "offline":
        assert list((run / "wandb").glob("offline-run-*"))


def test_prepare_bad_option_is_one_line_and_writes_nothing(tmp_path):
    out = _cli(["medrestore.cli.prepare", "demo", "--out", str(tmp_path / "d.h5"),
                "--max-side", "16", "--quiet"], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == ["error: max_side must be >= 32 pixels, got 16"]
    assert not list(tmp_path.glob("d.h5*"))
