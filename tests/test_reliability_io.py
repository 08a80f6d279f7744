"""Reliability of reading and writing: non-finite pixels, bad spacings, integer data deeper
than the default window, converter errors naming the source file, and full disks (a
file-size limit, ``RLIMIT_FSIZE``, stands in for a full disk) in the prepare and cache CLIs."""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import fake_trees as ft
from conftest import REPO
from medrestore.sample import WindowError
from medrestore.io.base import ReadError, read_image

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- helpers
def nifti_with_pixdim(path: Path, data_ijk: np.ndarray, pixdim) -> Path:
    """A NIfTI-1 file whose pixdim[1:4] is written as given (nibabel would "fix" 0 and < 0)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(data_ijk), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:92] = struct.pack("<3f", *pixdim)          # pixdim[1..3] of the 348-byte header
    path.write_bytes(bytes(raw))
    return path


def h5_array(path: Path, data: np.ndarray) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=data)
    return path


def one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def run_limited(argv: list[str], limit: int, **env: str) -> subprocess.CompletedProcess:
    """Run ``python argv`` with files limited to ``limit`` bytes (writes beyond fail with
    EFBIG, like a full disk; Python ignores SIGXFSZ)."""
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TESTS), os.environ.get("PYTHONPATH", "")]), **env)
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=full_env, preexec_fn=preexec,
                          capture_output=True, text=True, timeout=300)


def assert_clean_failure(proc: subprocess.CompletedProcess, folder: Path, *needles: str) -> str:
    """Exit 2, exactly one ``error:`` line on stderr, no traceback, no ``.partial`` left."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]
    assert not list(folder.rglob("*.partial")) and not list(folder.rglob("*.tmp"))
    return err[0]


# ----------------------------------------------------------------------------- non-finite
def test_nan_and_inf_are_one_line_read_errors_in_every_float_format(tmp_path):
    import tifffile

    bad = np.random.default_rng(0).random((4, 6, 5)).astype(np.float32)
    bad[0, 1, 1], bad[1, 2, 2], bad[2, 3, 3] = np.nan, np.inf, -np.inf
    files = [ft.write_nifti(tmp_path / "v.nii.gz", bad), tmp_path / "b.tif",
             h5_array(tmp_path / "a.h5", bad)]
    tifffile.imwrite(files[1], bad[0:2], photometric="minisblack", planarconfig="separate")
    for path in files:
        with pytest.raises(ReadError) as exc:
            read_image(path)
        n = 2 if path.suffix == ".tif" else 3      # the TIFF holds bad[0:2]
        one_line_error(exc, str(path), f"{n} of", "not finite", "nonfinite='fill'")
    with pytest.raises(ReadError) as exc:
        read_image(files[0])
    one_line_error(exc, "NaN 1, +inf 1, -inf 1")


def test_fill_replaces_non_finite_pixels_and_counts_them(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    data[0, 0, 0], data[2, 3, 4] = np.nan, np.inf
    path = h5_array(tmp_path / "a.h5", data)
    arr, meta = read_image(path, nonfinite="fill")
    finite = data[np.isfinite(data)]
    assert meta["nonfinite_filled"] == 2 and np.isfinite(arr).all()
    assert arr[0, 0, 0] == arr[2, 3, 4] == np.float32(np.median(finite))
    np.testing.assert_array_equal(arr[np.isfinite(data)], finite)     # the rest untouched
    arr, meta = read_image(path, nonfinite="fill", fill_value=-1)
    assert arr[0, 0, 0] == arr[2, 3, 4] == -1 and meta["nonfinite_filled"] == 2
    clean, meta = read_image(h5_array(tmp_path / "ok.h5", np.ones((2, 3), np.float32)))
    assert "nonfinite_filled" not in meta
    nothing = h5_array(tmp_path / "nan.h5", np.full((2, 3), np.nan, np.float32))
    with pytest.raises(ReadError) as exc:        # nothing finite to fill from, even with a value
        read_image(nothing, nonfinite="fill", fill_value=0)
    one_line_error(exc, str(nothing), "no finite pixel")
    with pytest.raises(ReadError, match="nonfinite must be one of"):
        read_image(path, nonfinite="ignore")
    ints, _ = read_image(h5_array(tmp_path / "i.h5", np.ones((2, 3), np.uint16)))
    assert ints.dtype == np.uint16                               # integers: nothing to check


# ----------------------------------------------------------------------------- spacing
@pytest.mark.parametrize("pixdim", [(1.0, 1.0, 0.0), (0.8, -0.8, 2.0)])
def test_zero_or_negative_nifti_spacing_is_an_error_unless_unknown(tmp_path, pixdim):
    path = nifti_with_pixdim(tmp_path / "v.nii", np.ones((5, 4, 3), np.float32), pixdim)
    with pytest.raises(ReadError) as exc:
        read_image(path)
    one_line_error(exc, str(path), "must be > 0",
                   f"pixdim[1:4] [{', '.join(f'{v:g}' for v in pixdim)}] mm",
                   "bad_spacing='unknown'")
    vol, meta = read_image(path, bad_spacing="unknown")
    expect = [None if v <= 0 else v for v in pixdim][::-1]        # [dz, dy, dx]
    assert meta["spacing"] == pytest.approx(expect) and "not > 0" in meta["warnings"][0]
    good = nifti_with_pixdim(tmp_path / "g.nii", np.ones((5, 4, 3), np.float32), (0.5, 0.6, 2))
    assert read_image(good)[1]["spacing"] == pytest.approx([2.0, 0.6, 0.5])


def test_bad_spacing_attribute_of_an_hdf5_array(tmp_path):
    import h5py

    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("image", data=np.ones((1, 4, 4), np.float32))
        d.attrs["spacing"] = "[0.0, 0.5]"
    with pytest.raises(ReadError) as exc:
        read_image(path)
    one_line_error(exc, str(path), "spacing attribute", "must be > 0")
    assert read_image(path, bad_spacing="unknown")[1]["spacing"] == [None, 0.5]


def test_zero_dicom_pixel_spacing_is_an_error_unless_unknown(tmp_path):
    from pydicom.uid import generate_uid

    series, study = generate_uid(), generate_uid()
    raw = np.zeros((2, 6, 6), np.int16)
    for k in range(2):
        ft.write_dicom_slice(tmp_path / "s" / f"IM{k}.dcm", raw[k], z=3.0 * k, series_uid=series,
                             study_uid=study, instance=k + 1, patient="p", spacing=(0.0, 0.7))
    with pytest.raises(ReadError) as exc:
        read_image(tmp_path / "s")
    one_line_error(exc, str(tmp_path / "s"), "PixelSpacing", "[3, 0, 0.7]", "must be > 0")
    vol, meta = read_image(tmp_path / "s", bad_spacing="unknown")
    assert meta["spacing"] == pytest.approx([3.0, None, 0.7]) and vol.shape == (2, 6, 6)


# ----------------------------------------------------------------------------- windows
def test_16_bit_photo_is_refused_by_the_default_8_bit_window_of_restore_file(tmp_path):
    import torch

    from medrestore.inference.restorer import Restorer

    photo = np.random.default_rng(0).integers(0, 40000, (8, 10, 3)).astype(np.uint16)
    photo[0, 0, 0] = 40000
    src = ft.write_tiff(tmp_path / "photo16.tif", photo)
    r = Restorer(torch.nn.Identity())
    with pytest.raises(WindowError) as exc:
        r.restore_file(src, tmp_path / "out.tif", task="natural_denoise")
    one_line_error(exc, str(src), "uint16", "max 40000", "[0, 255]", "normalisation=")
    assert not (tmp_path / "out.tif").exists()
    out = r.restore_file(src, tmp_path / "out.tif", task="natural_denoise",
                         normalisation={"low": 0, "high": 65535, "unit": "16-bit"})
    restored, _ = read_image(out)
    assert restored.dtype == np.uint16
    np.testing.assert_allclose(restored.astype(float), ft.chw(photo), atol=1)   # identity net
    small = ft.write_tiff(tmp_path / "fits.tif", (photo % 256).astype(np.uint16))
    r.restore_file(small, tmp_path / "fits_out.tif", task="natural_denoise")   # values fit


def test_16_bit_photos_in_a_converter_need_a_window(tmp_path, capsys):
    from medrestore.cli.prepare import main

    rng = np.random.default_rng(1)
    for i in range(3):
        for role in ("lq", "gt"):
            ft.write_tiff(tmp_path / "p16" / role / f"{i}.tif",
                          rng.integers(0, 40000, (12, 10, 3)).astype(np.uint16))
    argv = ["paired_folder", "--src", str(tmp_path / "p16"), "--task", "natural_denoise",
            "--quiet", "--out"]
    assert main(argv + [str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(tmp_path / "p16" / "gt") in err and "uint16" in err and "--window" in err
    assert not (tmp_path / "a.h5").exists()
    assert main(argv + [str(tmp_path / "b.h5"), "--window", "0", "65535"]) == 0
    # physical windows clip by design: uint16 DN above the 10000 DN window are accepted
    assert main(["paired_folder", "--src", str(tmp_path / "p16"), "--task", "cloud_removal",
                 "--quiet", "--out", str(tmp_path / "c.h5")]) == 0


# ----------------------------------------------------------------------------- source names
def test_converter_errors_name_the_source_file(tmp_path, capsys):
    from medrestore.cli.prepare import main

    rng = np.random.default_rng(2)
    for i in range(4):
        gt = rng.random((6, 5, 3)).astype(np.float32)
        ft.write_nifti(tmp_path / "vol" / "lq" / f"v{i}.nii.gz", gt * 0.5)
        if i == 3:
            gt[1, 1, 1] = np.nan
        ft.write_nifti(tmp_path / "vol" / "gt" / f"v{i}.nii.gz", gt)
    argv = ["paired_folder", "--src", str(tmp_path / "vol"), "--task", "pet_synthesis", "--quiet",
            "--out"]
    assert main(argv + [str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(tmp_path / "vol" / "gt" / "v3.nii.gz") in err and "--nonfinite fill" in err
    assert main(argv + [str(tmp_path / "b.h5"), "--nonfinite", "fill"]) == 0


def test_run_converter_prefixes_the_source_of_a_failing_sample(tmp_path):
    """A NaN that appears during conversion (not in the file) is named by its source files."""
    from medrestore.prepare.base import Converter, Item, Record, run_converter
    from medrestore.io.hdf5 import ShardError
    from medrestore.sample import make_meta

    class Broken(Converter):
        name = "broken"

        def discover(self, args):
            return [Item(f"u{i}", s, {"gt": tmp_path / f"u{i}.png"})
                    for i, s in enumerate(("train", "val", "test"))]

        def convert(self, item, args):
            gt = np.ones((1, 4, 4), np.float32)
            if item.unit == "u1":
                gt[0, 0, 0] = np.nan
            meta = make_meta("pet_synthesis", source={"gt": f"{item.unit}.png"})
            yield Record("pet_synthesis", f"broken/{item.unit}", gt, gt.copy(), meta)

    opts = Broken().options(src=tmp_path, out=tmp_path / "b.h5", quiet=True)
    with pytest.raises(ShardError) as exc:
        run_converter(Broken(), opts)
    one_line_error(exc, f"{tmp_path / 'u1.png'}: broken/u1: gt has 1 non-finite value(s)")
    assert not list(tmp_path.glob("b.h5*"))


# ----------------------------------------------------------------------------- free space
def test_free_space_is_checked_before_writing(tmp_path, monkeypatch, capsys):
    from medrestore.cli.prepare import main

    ft.clean_tree(tmp_path / "clean", n=5)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 10, 10))
    argv = ["clean_folder", "--src", str(tmp_path / "clean"), "--task", "natural_denoise",
            "--quiet", "--out", str(tmp_path / "out" / "c.h5")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: not enough free space") and "\n" not in err
    assert "10 bytes free" in err and "MEDRESTORE_SKIP_SPACE_CHECK" in err
    assert main(["demo", "--quiet", "--out", str(tmp_path / "d.h5")]) == 2
    assert "about 160,000,000 needed" in capsys.readouterr().err
    monkeypatch.setenv("MEDRESTORE_SKIP_SPACE_CHECK", "1")
    assert main(argv) == 0
    assert not list(tmp_path.rglob("*.partial"))


def test_free_space_check_of_the_caption_cache(tmp_path, monkeypatch):
    from medrestore.io.textcache import CacheError, parts_dir
    from medrestore.prepare.captions.build import build_cache, collect_images
    from medrestore.prepare.captions.captioners import TemplateCaptioner
    from test_captions import HashEncoder, write_shared_shard

    shard = write_shared_shard(tmp_path / "s.h5", n=4)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100))
    out = tmp_path / "cache.h5"
    with pytest.raises(CacheError) as exc:
        build_cache(out, collect_images([shard]), TemplateCaptioner(), HashEncoder(), progress=False)
    one_line_error(exc, "not enough free space", "100 bytes free", "8 new entries")
    assert not out.exists() and not parts_dir(out).exists()


# ----------------------------------------------------------------------------- full disk
def test_write_image_on_a_full_disk_is_one_write_error(tmp_path):
    keep = tmp_path / "earlier.tif"
    keep.write_bytes(b"keep me")
    script = (
        "import sys, numpy as np\n"
        "from medrestore.io.base import WriteError, write_image\n"
        "x = np.random.default_rng(0).random((4, 128, 128)).astype(np.float32)\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        write_image(x, {'axes': 'chw' if name.endswith('.tif') else 'zyx'}, name)\n"
        "    except WriteError as exc:\n"
        "        print(exc)\n")
    names = [str(tmp_path / n) for n in ("a.h5", "a.nii.gz", "a.tif")]
    proc = run_limited(["-c", script, *names], 20_000)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    for name, line in zip(names, lines):
        assert line.startswith(f"{name}: write failed: File too large (") and "bytes free" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.tif"]
    assert keep.read_bytes() == b"keep me"


@pytest.mark.slow
def test_demo_on_a_full_disk_fails_in_one_line(tmp_path):
    keep = tmp_path / "earlier.h5"
    keep.write_bytes(b"an earlier output")
    out = tmp_path / "demo.h5"
    proc = run_limited(["-m", "medrestore.cli.prepare", "demo", "--quiet", "--out", str(out)],
                       5_000_000)
    assert_clean_failure(proc, tmp_path, str(out), "write failed", "File too large",
                         "bytes free")
    assert not out.exists() and keep.read_bytes() == b"an earlier output"


def test_converter_on_a_full_disk_fails_in_one_line(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(6):
        ft.write_png(tmp_path / "src" / f"img_{i}.png", ft.rgb(rng, 96, 96))
    keep = tmp_path / "out" / "earlier.h5"
    keep.parent.mkdir()
    keep.write_bytes(b"keep me")
    out = tmp_path / "out" / "c.h5"
    proc = run_limited(["-m", "medrestore.cli.prepare", "clean_folder", "--src",
                        str(tmp_path / "src"), "--task", "natural_denoise", "--quiet", "--out",
                        str(out)], 60_000)
    assert_clean_failure(proc, tmp_path, f"error: {out}: write failed: File too large")
    assert not out.exists() and keep.read_bytes() == b"keep me"


@pytest.mark.slow
def test_cache_build_on_a_full_disk_fails_in_one_line_and_resumes(tmp_path):
    from test_captions import write_shared_shard

    shard = write_shared_shard(tmp_path / "s.h5", n=6)
    config = tmp_path / "hash.yaml"
    config.write_text("captioner: {name: template}\n"
                      "encoder: {name: 'test_captions:HashEncoder', dim: 16}\n")
    out = tmp_path / "cache" / "c.h5"
    argv = ["-m", "medrestore.cli.cache", "build", str(out), "--sets", str(shard), "--config",
            str(config), "--quiet", "--flush-every", "2", "--batch-size", "1"]
    proc = run_limited(argv, 12_000)          # parts fit, the merged cache does not
    assert_clean_failure(proc, tmp_path, str(out), "write failed", "File too large")
    parts = sorted((out.parent / "c.h5.parts").glob("part-*.h5"))
    assert len(parts) == 6 and not out.exists()      # complete parts kept for the rerun
    proc = run_limited(argv, 10**9)
    assert proc.returncode == 0, proc.stderr
    assert "(0 computed, 12 already there)" in proc.stdout
    proc = run_limited(["-m", "medrestore.cli.cache", "build", str(tmp_path / "small.h5"),
                        *argv[4:]], 4_000)               # not even one part fits
    assert_clean_failure(proc, tmp_path, "part-000000.h5: write failed", "File too large")
