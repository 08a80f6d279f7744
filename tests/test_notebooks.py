"""The analysis notebooks run top to bottom in a real kernel (nbclient) on outputs made here:
a 2-run sweep trained with ``logger=wandb`` (offline W&B runs), an evaluation of two
checkpoints built without training, and the toy shard. Also the offline W&B log reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TOY_TASKS, compose, tiny_overrides, tiny_restormer_checkpoint, write_toy_shard

NOTEBOOKS = REPO / "notebooks"
ENV_KEYS = ("MEDRESTORE_EVAL_DIR", "MEDRESTORE_RUNS", "MEDRESTORE_SWEEP", "MEDRESTORE_WANDB",
            "MEDRESTORE_OUT", "MEDRESTORE_CKPT", "MEDRESTORE_SHARD", "MEDRESTORE_SPLIT",
            "MEDRESTORE_PER_TASK", "MEDRESTORE_RUN")


def run_notebook(name: str, cwd: Path, env: dict[str, str], monkeypatch, timeout: int = 180):
    """Execute ``notebooks/<name>`` in a python3 kernel started in ``cwd`` with ``env`` set (the
    kernel inherits this process's environment); returns the executed notebook and its text."""
    import nbformat
    from nbclient import NotebookClient

    import medrestore

    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    # the kernel imports the medrestore this process tests (a relative PYTHONPATH would break
    # in the kernel's working directory)
    src = str(Path(medrestore.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb, notebook_text(nb)


def notebook_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "".join(parts)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"id": tiny_restormer_checkpoint(root / "id.ckpt"),
            "rand": tiny_restormer_checkpoint(root / "rand.ckpt", identity=False)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, toy_shard):
    """A multirun-like folder of two tiny trainings (lr 1e-3 / 5e-4) logged to offline W&B."""
    from medrestore.cli.train import train

    folder = tmp_path_factory.mktemp("multiruns") / "sweep"
    for i, lr in enumerate(("1e-3", "5e-4")):
        cfg = compose("train", tiny_overrides(toy_shard) + [
            "logger=wandb", "trainer.max_epochs=1", "data.samples_per_epoch=12",
            f"model.optimizer.lr={lr}", "~callbacks.image_panels", "run_name=job"], folder / str(i))
        train(cfg)
    return folder


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, checkpoints):
    """``medrestore-eval ckpt_path=[id,rand] labels=[id,rand] protocol=null`` on a toy shard with
    6 test images per task (the session's toy shard has 1: no paired interval, no p-value)."""
    from medrestore.cli.eval import evaluate

    root = tmp_path_factory.mktemp("eval")
    shard = write_toy_shard(root / "eval_shard.h5", seed=1, per_split=(1, 1, 6))
    cfg = compose("eval", [f"data.sets=[{shard}]", f"ckpt_path=[{checkpoints['id']},{checkpoints['rand']}]",
                           "labels=[id,rand]", "protocol=null", "grid_examples=1", "paired_resamples=2000",
                           "trainer.enable_progress_bar=false", "extras.print_config=false"], root / "run")
    evaluate(cfg)
    return root / "run"


# ---------------------------------------------------------------- offline W&B reader
def test_offline_wandb_reader_reads_config_summary_and_history(tmp_path):
    """A run logged here with ``wandb.init(mode="offline")`` in its own process."""
    import subprocess
    import sys

    from medrestore.utils.wandb_offline import find_offline_runs, read_offline_run, results_from_summary

    script = (
        "import wandb\n"
        "run = wandb.init(mode='offline', dir=r'%s', project='p', name='tiny',\n"
        "                 config={'cfg': {'model': {'net': {'name': 'tat_tiny'}}}, 'seed': 3})\n"
        "for step in range(3):\n"
        "    wandb.log({'train/loss': 1.0 / (step + 1), 'val/psnr': 20.0 + step})\n"
        "m = {'ct_denoise': 30.0, 'rs_sr': 40.0}\n"
        "log = {}\n"
        "for t, v in m.items():\n"
        "    for metric, inp, out in (('psnr', v, v + 2), ('ssim', 0.5, 0.75)):\n"
        "        log.update({f'test/{t}/{metric}': out, f'test_input/{t}/{metric}': inp})\n"
        "log.update({'test/psnr': 37.0, 'test_input/mean/psnr': 35.0, 'test/ssim': 0.75,\n"
        "            'test_input/mean/ssim': 0.5})\n"
        "wandb.log(log)\n"
        "run.summary['note'] = {'nested': 1}\n"
        "wandb.finish()\n" % tmp_path)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    (wb,) = find_offline_runs(tmp_path)
    run = read_offline_run(wb)
    assert run.name == "tiny" and wb.name.endswith(run.run_id)
    assert run.config == {"cfg": {"model": {"net": {"name": "tat_tiny"}}}, "seed": 3}
    assert run.series("val/psnr") == ([0, 1, 2], [20.0, 21.0, 22.0])
    assert run.summary["train/loss"] == pytest.approx(1 / 3) and run.summary["note"] == {"nested": 1}
    rows = {r["task"]: r for r in results_from_summary(run.summary)}
    assert list(rows) == ["ct_denoise", "rs_sr", "[mean]"]       # no domain keys were logged
    assert rows["rs_sr"]["psnr_gain"] == pytest.approx(2.0) and rows["ct_denoise"]["ssim_gain"] == pytest.approx(0.25)
    assert rows["[mean]"]["psnr_restored"] == pytest.approx(37.0)


@pytest.mark.slow
def test_offline_wandb_reader_gives_a_training_runs_config_history_and_results(sweep):
    from medrestore.utils.wandb_offline import (WandbLogError, find_offline_runs, read_offline_run,
                                                results_from_summary, run_label)

    runs = [sweep / "0", sweep / "1"]
    found = find_offline_runs(sweep)
    assert len(found) == 2 and find_offline_runs(*runs, sweep) == found
    for run_dir, wb in zip(runs, found):
        assert run_dir in wb.parents
        run = read_offline_run(wb)
        assert run.run_id and wb.name.endswith(run.run_id)
        assert run.config["cfg"]["model"]["net"]["name"] == "restormer_tiny"     # nested config
        assert run.config["model/params_total"] > 0
        assert run_label(run).startswith("restormer_tiny")
        steps, values = run.series("val/psnr", x="trainer/global_step")
        assert values and all(np.isfinite(values))
        # the rows rebuilt from the logged test metrics are the run's own results table
        rows = results_from_summary(run.summary)
        own = json.loads((run_dir / "results_test.json").read_text())
        assert [r["task"] for r in rows] == [r["task"] for r in own]
        for mine, theirs in zip(rows, own):
            for col in ("psnr_input", "psnr_restored", "ssim_gain"):
                assert mine[col] == pytest.approx(theirs[col], rel=1e-5), (mine["task"], col)
    with pytest.raises(WandbLogError, match="no run-\\*.wandb"):
        read_offline_run(sweep)


# ---------------------------------------------------------------- compare_runs.ipynb
@pytest.mark.slow
def test_compare_runs_notebook_on_an_eval_runs_wandb_and_a_sweep(sweep, eval_dir, tmp_path, monkeypatch):
    figs = tmp_path / "figs"
    env = {"MEDRESTORE_EVAL_DIR": str(eval_dir),
           "MEDRESTORE_RUNS": os.pathsep.join([str(sweep / "0"), str(sweep / "1")]),
           "MEDRESTORE_SWEEP": str(sweep), "MEDRESTORE_OUT": str(figs)}
    nb, text = run_notebook("compare_runs.ipynb", tmp_path, env, monkeypatch)
    assert "skipped" not in text, text
    assert "2 model(s): id, rand" in text
    for task in TOY_TASKS:                       # eval bars, paired table, runs, W&B, sweep table
        assert text.count(task) >= 5, (task, text)
    assert sorted(p.name for p in figs.iterdir()) == [
        "eval_gain_bars.png", "eval_paired_forest.png", "runs_gain_bars.png", "sweep_heatmap.png",
        "sweep_settings.png", "wandb_gain_bars.png", "wandb_val_curves.png"]
    assert images(nb) == 8                       # the 7 above and the eval grids
    assert "model.optimizer.lr: 0.001 -> " in text and "0.0005 -> " in text   # the swept setting
    assert "restormer_tiny lr=0.001" in text and "run_name" not in text          # labels
    # the eval's paired table is printed row by row, one per task and metric
    assert text.count("rand − id") == 3 * len(TOY_TASKS)            # psnr, ssim, rmse
    assert text.count("0.0312") == 3 * len(TOY_TASKS)               # Wilcoxon, 6 of one sign


def test_compare_runs_without_inputs_says_what_is_missing(tmp_path, monkeypatch):
    import nbclient.exceptions

    nb, text = run_notebook("compare_runs.ipynb", tmp_path, {}, monkeypatch)
    for n in (1, 2, 3, 4):
        assert f"section {n} skipped" in text, text
    assert images(nb) == 0
    with pytest.raises(nbclient.exceptions.CellExecutionError) as exc:
        run_notebook("compare_runs.ipynb", tmp_path, {"MEDRESTORE_RUNS": str(tmp_path / "nope")}, monkeypatch)
    assert exc.value.ename == "FileNotFoundError"
    assert exc.value.evalue == f"MEDRESTORE_RUNS={tmp_path / 'nope'}: no such folder: {tmp_path / 'nope'}"


# ---------------------------------------------------------------- inspect_restorations.ipynb
def test_inspect_restorations_notebook_grids_windows_profile_and_nps(checkpoints, toy_shard, tmp_path,
                                                                    monkeypatch):
    figs = tmp_path / "figs"
    env = {"MEDRESTORE_CKPT": str(checkpoints["id"]), "MEDRESTORE_SHARD": str(toy_shard),
           "MEDRESTORE_PER_TASK": "1", "MEDRESTORE_OUT": str(figs)}
    nb, text = run_notebook("inspect_restorations.ipynb", tmp_path, env, monkeypatch)
    assert "tasks shown: " + ", ".join(TOY_TASKS) in text
    names = sorted(p.name for p in figs.iterdir())
    assert names == sorted([f"grid_{t}.png" for t in TOY_TASKS] + ["ct_windows.png", "ct_profile.png",
                                                                   "ct_nps.png", "nps_ct.npz"])
    assert images(nb) == len(TOY_TASKS) + 3
    assert "line: row" in text and "FWHM" in text
    # the toy shard has no pixel spacing: the NPS is per pixel and says so
    assert "frequency in cycles/pixel, NPS in HU²·px²" in text
    nps = np.load(figs / "nps_ct.npz")
    for key in nps.files:
        assert np.isfinite(nps[key]).all(), key
    np.testing.assert_allclose(nps["integral"], nps["variance"], rtol=1e-9)     # Parseval
    # the identity checkpoint restores the degraded image: same noise, same spectrum
    np.testing.assert_allclose(nps["restored_nps"], nps["lq_nps"], rtol=1e-3, atol=1e-3 * nps["lq_nps"].max())
    # toy noise: white, σ = 0.1 of the 4096 HU window (less where clipping at 0 / 1 bites)
    assert 0.6 * 409.6 ** 2 < nps["variance"][0] < 1.05 * 409.6 ** 2
    flat = nps["lq_nps"][1:]
    assert flat.max() < 2.5 * flat.min()


def test_inspect_restorations_without_a_checkpoint_is_one_clear_error(tmp_path, monkeypatch):
    import nbclient.exceptions

    with pytest.raises(nbclient.exceptions.CellExecutionError) as exc:
        run_notebook("inspect_restorations.ipynb", tmp_path, {}, monkeypatch)
    assert exc.value.ename == "FileNotFoundError"
    assert exc.value.evalue == (f"no checkpoint: MEDRESTORE_CKPT is unset and there is no checkpoint in "
                                f"{tmp_path / 'logs' / 'demo' / 'runs'}; run `make demo` or set MEDRESTORE_CKPT")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as exc:
        run_notebook("inspect_restorations.ipynb", tmp_path, {"MEDRESTORE_CKPT": str(tmp_path / "a.ckpt")},
                     monkeypatch)
    assert exc.value.evalue == f"no checkpoint: MEDRESTORE_CKPT={tmp_path / 'a.ckpt'} is not a file"
