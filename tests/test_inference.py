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


def _identity_restorer(tmp_path):
    model = RestorationModule({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3},
                              {"_target_": "torch.optim.Adam", "lr": 1e-3})
    torch.nn.init.zeros_(model.net.output.weight)   # identity network (global residual)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "id.ckpt")
    return Restorer.from_checkpoint(str(tmp_path / "id.ckpt"))


def test_restore_file_writes_the_format_it_read(tmp_path):
    import nibabel as nib
    import pytest

    from medrestore.io.base import WriteError, read_image, write_image

    r = _identity_restorer(tmp_path)
    # NIfTI volume in SUV with a non-trivial affine: same affine and shape out
    affine = np.array([[0, 0, 2.0, -10], [0, 1.5, 0, 4], [-1.0, 0, 0, 7], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).uniform(0, 15, size=(20, 24, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ld.nii.gz")
    out = r.restore_file(tmp_path / "ld.nii.gz", tmp_path / "fd.nii.gz", task="pet_synthesis")
    restored = nib.load(out)
    np.testing.assert_allclose(restored.affine, affine)
    np.testing.assert_allclose(restored.get_fdata(), vol, atol=0.01)   # identity net, SUV kept
    # 8-bit RGB PNG stays an 8-bit RGB PNG; ×4 SR input comes back on the HR grid
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 16, 20)).astype(np.uint8)
    write_image(rgb, {"format": "png"}, tmp_path / "lr.png")
    out = r.restore_file(tmp_path / "lr.png", tmp_path / "sr.png", task="natural_sr", scale=4)
    arr, meta = read_image(out)
    assert meta["format"] == "png" and arr.dtype == np.uint8 and arr.shape == (3, 64, 80)
    same = r.restore_file(tmp_path / "lr.png", tmp_path / "same.png", task="derain")
    assert np.abs(read_image(same)[0].astype(int) - rgb).max() <= 1
    with pytest.raises(WriteError, match="already exists"):
        r.restore_file(tmp_path / "lr.png", tmp_path / "same.png", task="derain")


def test_from_checkpoint_reloads_the_family_that_wrote_it(tmp_path):
    import pytest

    from medrestore.errors import ConfigError
    from medrestore.modules.tat import TATModule

    model = TATModule({"name": "tat_tiny", "in_channels": 3, "out_channels": 3, "train_size": 32},
                      loss={"name": "l1", "balance": "uncertainty"})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "tat.ckpt")
    r = Restorer.from_checkpoint(str(tmp_path / "tat.ckpt"))    # σ balancing needs TATModule
    assert type(r.module) is TATModule and r.module.sigma_net is not None
    assert r.restore(np.zeros((3, 20, 24), np.float32), task="derain").shape == (3, 20, 24)
    ckpt = torch.load(tmp_path / "tat.ckpt", weights_only=True)
    ckpt["medrestore_module"] = "medrestore.modules.tat:NoSuchModule"
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match="bad.ckpt: medrestore_module="):
        Restorer.from_checkpoint(str(tmp_path / "bad.ckpt"))
    del ckpt["medrestore_module"]                 # older checkpoints: family from the arch name
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert type(Restorer.from_checkpoint(str(tmp_path / "old.ckpt")).module) is TATModule


def test_256_slice_volume_is_slice_batched_in_bounded_memory(tmp_path):
    """A 256-slice volume: the network never sees more than ``batch_size`` slices at once (so
    device memory is one batch, whatever the slice count), every batch size gives the same
    volume, and the result equals restoring the slices one at a time."""
    r = _identity_restorer(tmp_path)
    torch.manual_seed(0)
    torch.nn.init.normal_(r.module.net.output.weight, std=0.05)   # not the identity any more
    net = r.module.net
    seen: list[int] = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    vol = np.random.default_rng(3).uniform(-1000, 1000, size=(256, 16, 16)).astype(np.float32)
    outs = {}
    try:
        for batch in (1, 7, 64):
            seen.clear()
            outs[batch] = r.restore(vol, task="ct_denoise", volume=True, batch_size=batch)
            assert max(seen) == min(batch, 256) and sum(seen) == 256
    finally:
        hook.remove()
    assert outs[1].shape == vol.shape and outs[1].dtype == np.float32
    assert not np.allclose(outs[1], vol, atol=1.0)                # the network did something
    for batch in (7, 64):
        np.testing.assert_allclose(outs[batch], outs[1], atol=1e-2)  # HU; float rounding only
    single = np.stack([r.restore(vol[i], task="ct_denoise") for i in (0, 100, 255)])
    np.testing.assert_allclose(outs[64][[0, 100, 255]], single, atol=1e-2)
