"""The six model families in one harness: `experiment=demo model=<family>_tiny` trains, validates
and tests each of them (same DataModule, metrics and reports), and a checkpoint reloads into
the family's module for inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import compose

SIX = ("restormer", "tat", "datprl", "promptir", "amir", "moce_ir")


def test_every_family_is_declared_with_a_module_and_configs():
    from medrestore.registry import FAMILIES

    assert set(SIX) <= set(FAMILIES.names())


@pytest.mark.parametrize("family", SIX)
def test_demo_experiment_trains_every_family(family, tmp_path, toy_shard):
    from medrestore.cli.train import train
    from medrestore.inference.restorer import Restorer

    extra = ["model.loss.align.weight=0"] if family == "datprl" else []  # no caption cache here
    cfg = compose("train", [
        "experiment=demo", f"model={family}_tiny", f"data.sets=[{toy_shard}]", "data.patch_size=32",
        "data.batch_size=4", "data.samples_per_epoch=8", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false", "~callbacks.model_summary",
        "extras.print_config=false", "~data.weights", "data.balance=equal", *extra], tmp_path)
    metrics, objs = train(cfg)
    assert objs["model"].net.__class__.__module__.endswith(family)
    for stage in ("val", "test"):
        rows = {r["task"]: r for r in json.loads((tmp_path / f"results_{stage}.json").read_text())}
        assert {"ct_denoise", "natural_denoise", "rs_sr"} <= set(rows)
        assert all(np.isfinite(r["psnr_restored"]) for r in rows.values())
    assert np.isfinite(metrics["train/loss"])
    if family in ("amir", "moce_ir"):                   # the routers' balance term is trained
        assert np.isfinite(metrics["train/loss_aux"]) and metrics["train/loss_aux"] > 0
    r = Restorer.from_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))
    hu = np.random.default_rng(0).uniform(-1000, 1000, size=(2, 24, 40)).astype(np.float32)
    out = r.restore(hu, task="ct_denoise", volume=True, batch_size=2)
    assert out.shape == hu.shape and np.isfinite(out).all()
