"""Restorer: physical units in, physical units out, from a checkpoint."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from medrestore.inference.restorer import Restorer
from medrestore.modules.restoration import RestorationModule


def test_restore_hu_array_round_trip(tmp_path):
    model = RestorationModule({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3},
                              {"_target_": "torch.optim.Adam", "lr": 1e-3})
    torch.nn.init.zeros_(model.net.output.weight)   # identity network (global residual)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    path = tmp_path / "id.ckpt"
    trainer.save_checkpoint(path)
    r = Restorer.from_checkpoint(str(path))
    hu = np.random.default_rng(0).uniform(-1000, 1500, size=(37, 45)).astype(np.float32)
    out = r.restore(hu, task="ct_denoise")
    assert out.shape == hu.shape
    assert np.allclose(out, hu, atol=0.05)          # identity net: HU preserved
    rgb = np.random.default_rng(1).uniform(0, 255, size=(3, 20, 24)).astype(np.float32)
    assert r.restore(rgb, task="derain").shape == (3, 20, 24)
