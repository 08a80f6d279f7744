"""medrestore-predict and the Restorer behind it: formats, metadata, tiles, TTA, OOM, task=None."""

from __future__ import annotations

import csv
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from conftest import REPO, compose
from medrestore.inference.restorer import Restorer
from medrestore.modules.restoration import NORMALISATION_KEY, RestorationModule


def _checkpoint(path, windows=None, perturb=0.0, arch="restormer_tiny", module=None):
    """A tiny checkpoint without training: identity network (global residual, zero output
    conv), or identity plus ``perturb`` on the output conv; ``windows`` recorded as training
    windows."""
    model = module or RestorationModule({"name": arch, "in_channels": 3, "out_channels": 3},
                                        {"_target_": "torch.optim.Adam", "lr": 1e-3})
    if module is None:
        torch.nn.init.zeros_(model.net.output.weight)
        if perturb:
            with torch.no_grad():
                model.net.output.weight.normal_(0, perturb, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    if windows is not None:
        ckpt = torch.load(path, weights_only=True)
        ckpt[NORMALISATION_KEY] = windows
        torch.save(ckpt, path)
    return path


CT_WINDOW = {"ct_denoise": {"low": -1024.0, "high": 3072.0, "unit": "HU", "kind": "minmax"}}
MULTI = {**CT_WINDOW, "derain": {"low": 0.0, "high": 255.0, "unit": "8-bit", "kind": "minmax"},
         "pet_synthesis": {"low": 0.0, "high": 20.0, "unit": "SUV", "kind": "minmax"}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"ct": _checkpoint(d / "ct.ckpt", CT_WINDOW), "multi": _checkpoint(d / "multi.ckpt", MULTI),
            "noisy": _checkpoint(d / "noisy.ckpt", CT_WINDOW, perturb=0.02)}


def _ct_series(folder, z=3, h=40, w=36):
    from medrestore.io.dicom import write_dicom_series

    rng = np.random.default_rng(0)
    vol = rng.uniform(-900, 1500, size=(z, h, w)).round().astype(np.float32)
    meta = {"modality": "CT", "orientation": [1, 0, 0, 0, 1, 0],
            "positions": [[-20.0, -30.0, 5.0 + 2.5 * k] for k in range(z)],
            "pixel_spacing": [0.7, 0.8], "spacing": [2.5, 0.7, 0.8], "axes": "zyx"}
    return write_dicom_series(vol, meta, folder, series_description="LD chest"), vol


def _predict(tmp_path, overrides):
    from medrestore.cli.predict import predict

    return predict(compose("predict", ["extras.print_config=false", "progress=false", *overrides],
                           tmp_path / "run"))


def test_dicom_series_round_trip_keeps_geometry_and_says_what_made_it(tmp_path, ckpts):
    import pydicom

    from medrestore.io.base import read_image

    src, vol = _ct_series(tmp_path / "ld")
    out = _predict(tmp_path, [f"ckpt_path={ckpts['ct']}", f"input={src}", f"output={tmp_path / 'fd'}",
                              "device=cpu"])
    assert [r.status for r in out["results"]] == ["ok"]
    restored, meta = read_image(tmp_path / "fd")
    assert restored.shape == vol.shape
    np.testing.assert_allclose(restored, vol, atol=0.2)          # identity net: HU kept
    before = sorted((tmp_path / "ld").iterdir())
    after = sorted((tmp_path / "fd").iterdir())
    for a, b in zip(before, after):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                   "StudyInstanceUID", "FrameOfReferenceUID", "Modality", "InstanceNumber"):
            assert da.get(kw) == db.get(kw), kw
        assert da.SeriesInstanceUID != db.SeriesInstanceUID
        assert da.SOPInstanceUID != db.SOPInstanceUID
        assert "DERIVED" in db.ImageType
        assert "restormer_tiny" in db.DerivationDescription
        assert "task ct_denoise" in db.DerivationDescription     # the checkpoint's one task
        assert db.SeriesDescription == "LD chest restored"
        assert db.SourceImageSequence[0].ReferencedSOPInstanceUID == da.SOPInstanceUID
    assert len({pydicom.dcmread(b).SeriesInstanceUID for b in after}) == 1
    rows = list(csv.DictReader(open(tmp_path / "run" / "predictions.csv")))
    assert rows[0]["status"] == "ok" and rows[0]["shape"] == "3 slice(s)"
    # never overwritten without overwrite=true: the item fails, the run exits 2, files unchanged
    stamp = [p.stat().st_mtime_ns for p in after]
    with pytest.raises(SystemExit) as exc:
        _predict(tmp_path, [f"ckpt_path={ckpts['ct']}", f"input={src}", f"output={tmp_path / 'fd'}"])
    assert exc.value.code == 2
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "fd").iterdir())] == stamp
    _predict(tmp_path, [f"ckpt_path={ckpts['noisy']}", f"input={src}", f"output={tmp_path / 'fd'}",
                        "overwrite=true"])
    assert not np.allclose(read_image(tmp_path / "fd")[0], vol, atol=0.2)   # replaced


def test_nifti_volume_keeps_affine_header_and_gets_a_description(tmp_path, ckpts):
    import nibabel as nib

    affine = np.array([[0, 0, 2.0, -10], [0, 1.5, 0, 4], [-1.0, 0, 0, 7], [0, 0, 0, 1]])
    vol = np.random.default_rng(0).uniform(0, 15, size=(20, 24, 3)).astype(np.float32)
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["intent_name"] = b"SUV"
    nib.save(img, tmp_path / "ld.nii.gz")
    _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={tmp_path / 'ld.nii.gz'}",
                        f"output={tmp_path / 'fd.nii.gz'}", "task=pet_synthesis", "batch_size=2"])
    out = nib.load(tmp_path / "fd.nii.gz")
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.get_fdata(), vol, atol=0.01)
    assert out.header["intent_name"].tobytes().rstrip(b"\0") == b"SUV"
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert b"pet_synthesis" in out.header["descrip"].tobytes()


def test_16_bit_tiff_keeps_16_bits_with_a_window(tmp_path, ckpts):
    import tifffile

    from medrestore.io.base import read_image

    rgb = np.random.default_rng(2).integers(0, 60000, size=(30, 34, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "p16.tif", rgb, photometric="rgb")
    with pytest.raises(SystemExit):      # the 8-bit window of derain cannot hold 16-bit data
        _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={tmp_path / 'p16.tif'}",
                            f"output={tmp_path / 'o.tif'}", "task=derain"])
    assert not (tmp_path / "o.tif").exists()
    _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={tmp_path / 'p16.tif'}",
                        f"output={tmp_path / 'o.tif'}", "task=derain", "window=[0,65535]"])
    arr, meta = read_image(tmp_path / "o.tif")
    assert arr.dtype == np.uint16 and arr.shape == (3, 30, 34)
    assert np.abs(arr.astype(int) - np.moveaxis(rgb, -1, 0)).max() <= 1


def test_folder_bad_file_is_one_line_and_the_others_are_restored(tmp_path, ckpts, capsys):
    from medrestore.io.base import read_image, write_image

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 20, 24)).astype(np.uint8)
    write_image(rgb, {"format": "png"}, src / "a.png")
    write_image(rgb[:, :, :16], {"format": "png"}, src / "sub" / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "notes.txt").write_text("skipped: not an image")
    _ct_series(src / "series")
    with pytest.raises(SystemExit) as exc:
        _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={src}", f"output={tmp_path / 'out'}"])
    assert exc.value.code == 2
    err = capsys.readouterr()
    line = [ln for ln in err.err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "restored 3 of 4" in line[0] and "broken.png" in line[0]
    assert read_image(tmp_path / "out" / "a.png")[0].dtype == np.uint8
    assert read_image(tmp_path / "out" / "sub" / "b.png")[0].shape == (3, 20, 16)
    assert read_image(tmp_path / "out" / "series")[0].shape == (3, 40, 36)   # CT from Modality
    assert not (tmp_path / "out" / "broken.png").exists()
    rows = {r["source"].split("/")[-1]: r for r in csv.DictReader(open(tmp_path / "run" / "predictions.csv"))}
    assert rows["broken.png"]["status"] == "failed" and rows["a.png"]["status"] == "ok"


def test_bad_options_are_one_line_before_any_work(tmp_path, ckpts, capsys):
    src = tmp_path / "x.png"
    from medrestore.io.base import write_image

    write_image(np.zeros((3, 8, 8), np.uint8), {"format": "png"}, src)
    cases = [(["ckpt_path=" + str(tmp_path / "nope.ckpt")], "no such checkpoint"),
             (["tta=rot"], "tta='rot'"), (["task=ct_denoize"], "unknown task"),
             (["tile=4"], "tile=4"), (["window=[5,1]"], "low < high"),
             ([f"input={tmp_path / 'missing'}"], "no such file")]
    for extra, needle in cases:
        with pytest.raises(SystemExit):
            _predict(tmp_path, [f"ckpt_path={ckpts['ct']}", f"input={src}",
                                f"output={tmp_path / 'o.png'}", *extra])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and needle in err[0], (extra, err)
    assert not (tmp_path / "o.png").exists()


# ----------------------------------------------------------------------------- Python API
def test_task_none_for_blind_models_and_conditioned_ones(tmp_path, ckpts):
    from medrestore.errors import ConfigError

    hu = np.random.default_rng(0).uniform(-1000, 1500, size=(33, 41)).astype(np.float32)
    r = Restorer.from_checkpoint(ckpts["ct"])           # one window: task=None just works
    np.testing.assert_allclose(r.restore(hu), hu, atol=0.1)
    multi = Restorer.from_checkpoint(ckpts["multi"])
    with pytest.raises(ConfigError, match="ambiguous.*ct_denoise.*derain.*pet_synthesis"):
        multi.restore(hu)                               # float array, three windows
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 20, 24)).astype(np.uint8)
    assert multi.restore(rgb).shape == (3, 20, 24)      # 8-bit: the 8-bit task's window
    np.testing.assert_allclose(multi.restore(hu, task="ct_denoise"), hu, atol=0.1)
    multi.module.needs_task = True                      # a task-conditioned module
    with pytest.raises(ConfigError, match="task-conditioned.*ct_denoise, derain, pet_synthesis"):
        multi.restore(hu)
    # a path: read, restore, return (DICOM series: Z×H×W in HU)
    src, vol = _ct_series(tmp_path / "s")
    np.testing.assert_allclose(r.restore(src), vol, atol=0.2)


class _Conv(torch.nn.Module):
    """Local (3×3) network: tiled and whole-image results agree away from nothing but blending."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        torch.manual_seed(0)
        torch.nn.init.normal_(self.conv.weight, 0, 0.1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x + self.conv(x)


def test_tiles_blend_to_the_whole_image_result_and_only_tiles_go_to_the_net():
    net = _Conv()
    r = Restorer(net)
    img = np.random.default_rng(0).uniform(0, 255, size=(3, 150, 130)).astype(np.float32)
    norm = {"low": 0, "high": 255}
    whole = r.restore(img, task="derain", normalisation=norm)
    net.calls.clear()
    tiled = r.restore(img, task="derain", normalisation=norm, tile=64, overlap=16)
    assert max(c[-1] for c in net.calls) <= 64 and max(c[-2] for c in net.calls) <= 64
    # a 3×3 net differs only where a tile border replaced real neighbours; the blend weights
    # keep that below 1 grey level, also along the image's outer rows (random-noise image)
    assert np.abs(tiled - whole).mean() < 0.05 and np.abs(tiled - whole).max() < 2
    big = r.restore(img, task="derain", normalisation=norm, tile=512)   # tile >= image: whole
    np.testing.assert_allclose(big, whole, atol=1e-4)


def test_blend_weights_keep_the_tile_ratio_on_every_row():
    from medrestore.inference.tiling import blend_weights

    w = blend_weights((64, 64))
    assert w.shape == (64, 64) and float(w.min()) > 0 and float(w.max()) == pytest.approx(1.0)
    # two horizontally overlapping tiles (offset 48): same weight ratio on the border row as in
    # the middle row (a map floored after the product would make them equal on row 0)
    ratio = w[:, 48] / w[:, 0]
    assert torch.allclose(ratio, ratio[32].expand_as(ratio)) and float(ratio[0]) > 50
    assert blend_weights((64, 64), "constant") is None


def test_tta_inverts_each_transform():
    from medrestore.inference.tiling import _tta_pairs

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    for mode, n in (("none", 1), ("flip", 4), ("d4", 8)):
        pairs = _tta_pairs(mode)
        assert len(pairs) == n
        outs = {tuple(f(x).flatten().tolist()) for f, _ in pairs}
        assert len(outs) == n                           # distinct transforms
        for f, inv in pairs:
            assert torch.equal(inv(f(x)), x)
    net = _Conv()
    r = Restorer(net)
    img = np.random.default_rng(0).uniform(0, 255, size=(3, 24, 20)).astype(np.float32)
    plain = r.restore(img, task="derain", normalisation={"low": 0, "high": 255})
    d4 = r.restore(img, task="derain", normalisation={"low": 0, "high": 255}, tta="d4")
    assert d4.shape == img.shape and not np.allclose(d4, plain)   # a non-equivariant net


class _Oom(_Conv):
    """Runs out of 'device memory' on anything larger than 40 px or more than one slice."""

    def forward(self, x):
        if x.shape[0] > 1 or max(x.shape[-2:]) > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_is_retried_with_one_slice_then_smaller_tiles():
    from medrestore.inference.tiling import OutOfDeviceMemory

    r = Restorer(_Oom(channels=1))
    vol = np.random.default_rng(0).uniform(0, 255, size=(3, 100, 90)).astype(np.float32)
    out = r.restore(vol, task="derain", normalisation={"low": 0, "high": 255}, volume=True,
                    batch_size=3)
    assert out.shape == vol.shape
    assert any("one slice at a time" in e for e in r.last_events)
    assert any("32-pixel tiles" in e for e in r.last_events)
    with pytest.raises(OutOfDeviceMemory, match="min_tile=64"):
        r.restore_slices(vol[:1, None], r.window("derain", normalisation={"low": 0, "high": 255}),
                         min_tile=64)


def test_tat_tiles_run_with_its_test_time_local_converter():
    """A tile of TAT goes through the network as an image of the tile's size (eval mode, TLC
    windows from train_size), so tile >= image equals the whole-image result exactly."""
    from medrestore.modules.tat import TATModule

    model = TATModule({"name": "tat_tiny", "in_channels": 3, "out_channels": 3, "train_size": 32},
                      loss={"name": "l1", "balance": "uncertainty"})
    r = Restorer(model)
    img = np.random.default_rng(0).uniform(0, 255, size=(3, 72, 64)).astype(np.float32)
    norm = {"low": 0, "high": 255}
    whole = r.restore(img, normalisation=norm)
    np.testing.assert_allclose(r.restore(img, normalisation=norm, tile=128), whole, atol=1e-5)
    tiled = r.restore(img, normalisation=norm, tile=48, overlap=16)
    assert tiled.shape == img.shape and np.isfinite(tiled).all()


@pytest.mark.slow
def test_python_m_entry_point(tmp_path, ckpts):
    from medrestore.io.base import read_image, write_image

    write_image(np.full((3, 16, 16), 100, np.uint8), {"format": "png"}, tmp_path / "a.png")
    cmd = [sys.executable, "-m", "medrestore.cli.predict", f"ckpt_path={ckpts['multi']}",
           f"input={tmp_path / 'a.png'}", f"output={tmp_path / 'b.png'}", "task=derain",
           f"paths.log_dir={tmp_path / 'logs'}", "progress=false"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "restored 1 of 1" in out.stdout
    assert np.abs(read_image(tmp_path / "b.png")[0].astype(int) - 100).max() <= 1
    # bad inputs: test_bad_options_are_one_line_before_any_work (in-process, same function)


def test_hdf5_array_and_jpeg2000_and_plan_of_a_series_folder_with_files(tmp_path, ckpts):
    import h5py

    from medrestore.inference.predict import plan
    from medrestore.io.base import read_image, write_image

    vol = np.random.default_rng(3).uniform(0, 15, size=(4, 24, 20)).astype(np.float32)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("pet/ld", data=vol).attrs["axes"] = "zyx"
    _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={tmp_path / 'v.h5'}::pet/ld",
                        f"output={tmp_path / 'o.h5'}", "task=pet_synthesis"])
    out, meta = read_image(f"{tmp_path / 'o.h5'}::pet/ld")
    assert meta["axes"] == "zyx" and out.shape == vol.shape
    np.testing.assert_allclose(out, vol, atol=0.01)
    grey = np.random.default_rng(4).integers(0, 256, size=(1, 32, 40)).astype(np.uint8)
    write_image(grey, {"format": "jpeg2000"}, tmp_path / "g.jp2")
    _predict(tmp_path, [f"ckpt_path={ckpts['multi']}", f"input={tmp_path / 'g.jp2'}",
                        f"output={tmp_path / 'g_out.jp2'}"])         # 8-bit: task=None resolves
    back, meta = read_image(tmp_path / "g_out.jp2")
    assert meta["format"] == "jpeg2000" and back.dtype == np.uint8 and back.shape == grey.shape
    # a series folder that also holds a PNG: the series goes to a sub-folder beside the PNG
    s, _ = _ct_series(tmp_path / "mixed")
    write_image(np.zeros((3, 8, 8), np.uint8), {"format": "png"}, s / "thumb.png")
    items = dict((str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path)))
                 for a, b in plan(s, tmp_path / "res"))
    assert items == {"mixed": "res/mixed_series", "mixed/thumb.png": "res/thumb.png"}
    only = plan(_ct_series(tmp_path / "only")[0], tmp_path / "r2")
    assert only == [(tmp_path / "only", tmp_path / "r2")]


def test_task_none_on_a_checkpoint_without_recorded_windows(tmp_path):
    """Checkpoints written before windows were recorded: the registry's tasks stand in."""
    from medrestore.errors import ConfigError

    path = _checkpoint(tmp_path / "old.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt.pop(NORMALISATION_KEY, None)
    torch.save(ckpt, path)
    r = Restorer.from_checkpoint(path)
    assert r.windows == {}
    src, vol = _ct_series(tmp_path / "s")                  # Modality CT -> ct_denoise's window
    np.testing.assert_allclose(r.restore(src), vol, atol=0.2)
    rgb = np.random.default_rng(1).integers(0, 256, size=(3, 20, 24)).astype(np.uint8)
    assert r.restore(rgb).shape == rgb.shape                # 8-bit -> the 8-bit window
    with pytest.raises(ConfigError, match="ambiguous"):
        r.restore(vol[0])                                   # a float array: no clue


@pytest.mark.slow
def test_predict_demo_script_scores_a_real_dicom(tmp_path, ckpts):
    """scripts/predict_demo.py (README numbers) runs end to end; an identity network leaves
    the low-dose PSNR where it was, so before = after here."""
    # the demo-size case only: the full-size one simulates its quarter dose at 512² (12 s);
    # tiling and DICOM geometry have their own tests above
    out = subprocess.run([sys.executable, "scripts/predict_demo.py", "--ckpt", str(ckpts["ct"]),
                          "--out", str(tmp_path / "pd"), "--device", "cpu", "--cases", "ld_256"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split("|") for ln in out.stdout.splitlines() if ln.startswith("| restormer_tiny")]
    assert [r[2].strip() for r in rows] == ["ld_256.dcm"]
    for r in rows:
        assert abs(float(r[5]) - float(r[6])) < 0.05        # PSNR LD == PSNR restored
    assert (tmp_path / "pd" / "ld_256_restormer_tiny.dcm").is_file()
