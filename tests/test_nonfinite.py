"""NaN never scores and never wins: a non-finite loss stops training with one line naming the
step, the tasks and the keys (or is skipped and counted), NaN validation scores stay NaN and
are never selected as the best checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import compose, tiny_overrides, write_toy_shard


def _poison(shard: Path, task: str, split: str) -> list[str]:
    """Put one NaN in the GT of every ``split`` image of ``task``, at a pixel that every
    32² training crop of these 48² / 40×56 images contains."""
    keys = []
    with h5py.File(shard, "r+") as f:
        for sid, g in f["samples"].items():
            if g.attrs["task"] == task and g.attrs["split"] == split:
                gt = g["gt"][()]
                gt[:, gt.shape[1] // 2, gt.shape[2] // 2] = np.nan
                g["gt"][...] = gt
                keys.append(str(g.attrs["key"]))
    assert keys
    return keys


def test_nan_ground_truth_stops_training_at_step_zero(tmp_path, capsys):
    from medrestore.cli.train import train

    shard = write_toy_shard(tmp_path / "nan.h5")
    keys = _poison(shard, "ct_denoise", "train")
    run = tmp_path / "run"
    cfg = compose("train", tiny_overrides(shard), run)
    with pytest.raises(SystemExit) as info:
        train(cfg)
    assert info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, err
    line = err[0]
    assert "non-finite training loss at global step 0" in line and "ct_denoise" in line
    assert any(f"gt of {k} (1 px)" in line for k in keys), line
    assert "model.loss.nonfinite=skip" in line
    assert not list((run / "checkpoints").glob("epoch_*.ckpt")) if (run / "checkpoints").exists() else True


def test_nonfinite_skip_counts_and_keeps_weights_finite(tmp_path):
    from medrestore.cli.train import train

    shard = write_toy_shard(tmp_path / "nan.h5")
    _poison(shard, "ct_denoise", "train")
    run = tmp_path / "run"
    cfg = compose("train", tiny_overrides(shard) + ["model.loss.nonfinite=skip", "test=false",
                                                    "+model.ema={decay:0.9}"], run)
    metrics, objs = train(cfg)
    model = objs["model"]
    # every step holds ct_denoise samples (balanced batches): every step is skipped
    assert model.skipped_nonfinite == objs["trainer"].global_step > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(metrics["val/psnr"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["medrestore_skipped_nonfinite"] == model.skipped_nonfinite
    # last.ckpt is the latest state even though the score did not improve (unchanged weights)
    assert ckpt["global_step"] == objs["trainer"].global_step


def test_nan_validation_is_logged_and_never_best(tmp_path):
    from medrestore.cli.train import train

    shard = write_toy_shard(tmp_path / "nanval.h5")
    _poison(shard, "rs_sr", "val")
    run = tmp_path / "run"
    cfg = compose("train", tiny_overrides(shard) + ["test=false"], run)
    metrics, objs = train(cfg)
    assert math.isnan(metrics["val/psnr"]) and math.isnan(metrics["val/rs_sr/psnr"])
    assert math.isfinite(metrics["val/ct_denoise/psnr"])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not list((run / "checkpoints").glob("epoch_*.ckpt"))     # NaN is never "best"
    assert objs["trainer"].checkpoint_callback.best_model_path == ""


def test_finite_validation_still_selects_best(tmp_path, toy_shard):
    from medrestore.modules.callbacks import ModelCheckpoint

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val/psnr", mode="max", save_top_k=1)

    class _T:
        global_step = 3

        class strategy:  # noqa: N801 - stands in for the trainer's strategy
            @staticmethod
            def reduce_boolean_decision(x, all=True):  # noqa: A002
                return x

    assert cb.check_monitor_top_k(_T, torch.tensor(20.0))
    assert not cb.check_monitor_top_k(_T, torch.tensor(float("nan")))
    assert not cb.check_monitor_top_k(_T, torch.tensor(float("inf")))
