"""Reader/writer interface (medrestore.io.base) and its formats: round trips, geometry, errors."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from medrestore.errors import MedrestoreError
from medrestore.io.base import (
    ReadError,
    WriteError,
    jsonable_meta,
    read_image,
    supported_suffixes,
    write_image,
)

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _one_line_naming(exc_info, path) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


def _no_partials(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


# ============================================================================ package / dispatch
def test_io_package_import_is_light():
    code = ("import sys, medrestore.io; "
            "heavy = [m for m in ('pydicom', 'nibabel', 'PIL', 'tifffile', 'h5py', 'torch') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    import medrestore.io as io

    assert io.read_image is read_image and io.WriteError is WriteError


def test_errors_relate():
    from medrestore.io.dicom import DicomError

    assert issubclass(ReadError, MedrestoreError) and issubclass(ReadError, ValueError)
    assert issubclass(WriteError, MedrestoreError) and issubclass(WriteError, ValueError)
    assert issubclass(DicomError, ReadError)


def test_dispatch_by_suffix_name_and_signature(tmp_path):
    img = (np.arange(2 * 3 * 4) * 9).astype(np.uint8).reshape(1, 6, 4)
    png = write_image(img, None, tmp_path / "a.png")
    tif = write_image(img, None, tmp_path / "a.tif")
    assert read_image(png)[1]["format"] == "png" and read_image(tif)[1]["format"] == "tiff"
    # no suffix: recognised by content; unknown suffix with reader= by name
    (tmp_path / "noext").write_bytes(png.read_bytes())
    (tmp_path / "tiff_blob").write_bytes(tif.read_bytes())
    (tmp_path / "a.dat").write_bytes(png.read_bytes())
    assert read_image(tmp_path / "noext")[1]["format"] == "png"
    assert read_image(tmp_path / "tiff_blob")[1]["format"] == "tiff"
    arr, meta = read_image(tmp_path / "a.dat", reader="png")
    np.testing.assert_array_equal(arr, img)
    assert meta["format"] == "png"


def test_write_format_from_meta_appends_suffix(tmp_path):
    img = np.full((1, 5, 7), 200, np.uint8)
    out = write_image(img, {"format": "png"}, tmp_path / "restored")
    assert out == tmp_path / "restored.png" and out.is_file()
    out = write_image(img, {"format": "png"}, tmp_path / "x.tif")         # suffix wins
    assert read_image(out)[1]["format"] == "tiff"
    out = write_image(img, None, tmp_path / "y", format="bmp")
    assert out.name == "y.bmp"
    with pytest.raises(WriteError, match="suffix says tiff") as exc:
        write_image(img, None, tmp_path / "z.tif", format="png")
    _one_line_naming(exc, tmp_path / "z.tif")
    with pytest.raises(WriteError, match="cannot tell the format"):
        write_image(img, {}, tmp_path / "nothing")


def test_read_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(ReadError, match="no such file") as exc:
        read_image(tmp_path / "missing.png")
    _one_line_naming(exc, tmp_path / "missing.png")
    odd = tmp_path / "notes.xyz"
    odd.write_text("hello\n")
    with pytest.raises(ReadError, match="unknown image suffix") as exc:
        read_image(odd)
    msg = _one_line_naming(exc, odd)
    for s in (".png", ".nii.gz", ".dcm", ".tif", ".jp2", ".h5"):
        assert s in msg and s in supported_suffixes()
    with pytest.raises(ReadError, match="unknown image format 'gif'"):
        read_image(odd, reader="gif")
    png = write_image(np.zeros((1, 4, 4), np.uint8), None, tmp_path / "a.png")
    with pytest.raises(ReadError, match="unknown option.*series_uid") as exc:
        read_image(png, series_uid="1.2")
    _one_line_naming(exc, png)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ReadError, match="no DICOM files"):
        read_image(empty)


def test_write_refuses_existing_and_bad_arrays(tmp_path):
    img = np.zeros((1, 4, 4), np.uint8)
    out = write_image(img, None, tmp_path / "a.png")
    with pytest.raises(WriteError, match="already exists") as exc:
        write_image(img + 1, None, out)
    _one_line_naming(exc, out)
    np.testing.assert_array_equal(read_image(out)[0], img)                # untouched
    write_image(img + 1, None, out, overwrite=True)
    np.testing.assert_array_equal(read_image(out)[0], img + 1)
    with pytest.raises(WriteError, match="C×H×W"):
        write_image(np.zeros((1, 2, 3, 4), np.uint8), None, tmp_path / "b.png")
    with pytest.raises(WriteError, match="volume cannot be written as PNG"):
        write_image(np.zeros((3, 4, 4), np.uint8), {"axes": "zyx"}, tmp_path / "v.png")
    with pytest.raises(WriteError, match="unknown option.*quality"):
        write_image(img, None, tmp_path / "c.png", quality=80)
    _no_partials(tmp_path)


def test_jsonable_meta_converts_and_drops():
    meta = {"a": np.float32(1.5), "b": np.arange(3), "c": Path("x/y"), "d": float("nan"),
            "e": (np.int64(2), None), "header": object(), "f": {"g": np.bool_(True)}}
    out = jsonable_meta(meta)
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": "x/y", "d": None, "e": [2, None],
                   "f": {"g": True}}
    json.dumps(out)


# ============================================================================ Pillow formats
def _ramp(shape, dtype, scale):
    return ((np.arange(int(np.prod(shape))) * scale) % (np.iinfo(dtype).max + 1)).astype(
        dtype).reshape(shape)


@pytest.mark.parametrize("shape,dtype,bits", [((1, 9, 11), np.uint8, 8), ((3, 9, 11), np.uint8, 8),
                                              ((1, 9, 11), np.uint16, 16)])
def test_png_round_trip_keeps_dtype(tmp_path, shape, dtype, bits):
    img = _ramp(shape, dtype, 7919)
    out = write_image(img, None, tmp_path / "img.png")
    arr, meta = read_image(out)
    assert arr.dtype == dtype and arr.shape == shape
    np.testing.assert_array_equal(arr, img)
    assert meta["bit_depth"] == bits and meta["axes"] == "chw" and meta["spacing"] is None
    assert meta["dtype"] == np.dtype(dtype).name and meta["shape"] == list(shape)
    assert meta["path"] == str(out) and meta["alpha"] is False


def test_png_alpha_and_palette(tmp_path):
    from PIL import Image

    rgba = _ramp((4, 6, 5), np.uint8, 31)
    out = write_image(rgba, None, tmp_path / "rgba.png")
    arr, meta = read_image(out)
    np.testing.assert_array_equal(arr, rgba)
    assert meta["alpha"] is True and meta["mode"] == "RGBA"
    arr, meta = read_image(out, alpha="drop")
    np.testing.assert_array_equal(arr, rgba[:3])
    assert meta["alpha"] is False
    la = _ramp((2, 6, 5), np.uint8, 13)
    np.testing.assert_array_equal(read_image(write_image(la, None, tmp_path / "la.png"))[0], la)
    # palette: indices are expanded to the palette's colours
    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2, 1] * 3)
    pal.save(tmp_path / "pal.png")
    arr, meta = read_image(tmp_path / "pal.png")
    assert arr.shape == (3, 3, 4) and meta["mode"] == "P"
    np.testing.assert_array_equal(arr[:, 0, 1], [255, 0, 0])
    np.testing.assert_array_equal(arr[:, 0, 2], [0, 0, 255])


def test_png_float_needs_value_range(tmp_path):
    x = np.array([[[-1.0, 0.0, 0.5, 1.0, 2.0]]], np.float32)
    with pytest.raises(WriteError, match="value_range") as exc:
        write_image(x, None, tmp_path / "f.png")
    _one_line_naming(exc, tmp_path / "f.png")
    out = write_image(x, None, tmp_path / "f8.png", value_range=(0.0, 1.0))
    np.testing.assert_array_equal(read_image(out)[0], [[[0, 0, 128, 255, 255]]])
    out = write_image(x, None, tmp_path / "f16.png", value_range=(0.0, 1.0), bit_depth=16)
    arr, meta = read_image(out)
    assert arr.dtype == np.uint16 and meta["bit_depth"] == 16
    np.testing.assert_array_equal(arr, [[[0, 0, 32768, 65535, 65535]]])
    with pytest.raises(WriteError, match="16 bits only for grey"):
        write_image(np.zeros((3, 4, 4), np.uint16), None, tmp_path / "rgb16.png")


def _png_bytes(arr: np.ndarray, colour_type: int) -> bytes:
    """A minimal 16-bit PNG (filter 0 rows), written by hand: Pillow cannot write these."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def test_png_16bit_colour_is_refused_not_truncated(tmp_path):
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(_ramp((5, 4, 3), np.uint16, 4099), colour_type=2))
    with pytest.raises(ReadError, match="16-bit colour PNG") as exc:
        read_image(path)
    _one_line_naming(exc, path)


def test_truncated_and_fake_png(tmp_path):
    good = write_image(_ramp((3, 64, 64), np.uint8, 7919), None, tmp_path / "good.png",
                       compress_level=0)
    data = good.read_bytes()
    for n in (40, len(data) // 2):
        bad = tmp_path / f"cut_{n}.png"
        bad.write_bytes(data[:n])
        with pytest.raises(ReadError, match="truncated or unreadable PNG") as exc:
            read_image(bad)
        _one_line_naming(exc, bad)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image\n")
    with pytest.raises(ReadError, match="not a PNG image") as exc:
        read_image(fake)
    _one_line_naming(exc, fake)


def test_jpeg_round_trip_within_tolerance(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48]
    img = np.stack([xx * 5, yy * 7, (xx + yy) * 3]).astype(np.uint8)
    out = write_image(img, None, tmp_path / "a.jpg", quality=95)
    arr, meta = read_image(out)
    assert arr.shape == img.shape and arr.dtype == np.uint8 and meta["format"] == "jpeg"
    assert np.abs(arr.astype(int) - img).mean() < 2.0
    low = write_image(img, None, tmp_path / "low.jpeg", quality=20)
    assert low.stat().st_size < out.stat().st_size
    with pytest.raises(WriteError, match="JPEG stores uint8"):
        write_image(img.astype(np.uint16), None, tmp_path / "b.jpg")
    with pytest.raises(WriteError, match="JPEG cannot store 4 channel"):
        write_image(np.zeros((4, 8, 8), np.uint8), None, tmp_path / "c.jpg")


def test_bmp_round_trip(tmp_path):
    img = _ramp((3, 7, 9), np.uint8, 37)
    arr, meta = read_image(write_image(img, None, tmp_path / "a.bmp"))
    np.testing.assert_array_equal(arr, img)
    assert meta["format"] == "bmp"


@pytest.mark.parametrize("shape,dtype,suffix", [((1, 17, 23), np.uint16, ".jp2"),
                                                ((3, 17, 23), np.uint8, ".jp2"),
                                                ((1, 17, 23), np.uint8, ".j2k")])
def test_jpeg2000_lossless_round_trip(tmp_path, shape, dtype, suffix):
    from PIL import features

    if not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    img = _ramp(shape, dtype, 7919)
    arr, meta = read_image(write_image(img, None, tmp_path / f"a{suffix}"))
    assert arr.dtype == dtype and meta["format"] == "jpeg2000"
    np.testing.assert_array_equal(arr, img)


# ============================================================================ TIFF
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int16])
def test_tiff_multiband_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    img = (rng.random((6, 21, 17)) * 3000).astype(dtype)
    out = write_image(img, None, tmp_path / "bands.tif")
    arr, meta = read_image(out)
    assert arr.dtype == dtype and meta["dtype"] == np.dtype(dtype).name
    np.testing.assert_array_equal(arr, img)
    assert meta["tiff_axes"] == "SYX" and meta["bit_depth"] == np.dtype(dtype).itemsize * 8
    assert meta["photometric"] == "minisblack"


def test_tiff_interleaved_and_page_stacks_become_chw(tmp_path):
    import tifffile

    img = _ramp((4, 10, 12), np.uint16, 331)
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(img, 0, -1), planarconfig="contig",
                     photometric="minisblack")
    tifffile.imwrite(tmp_path / "pages.tif", img, photometric="minisblack")
    rgb = _ramp((3, 10, 12), np.uint8, 17)
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(rgb, 0, -1), photometric="rgb")
    for name, want in (("contig.tif", img), ("pages.tif", img), ("rgb.tif", rgb)):
        arr, meta = read_image(tmp_path / name)
        np.testing.assert_array_equal(arr, want)
    assert read_image(tmp_path / "rgb.tif")[1]["photometric"] == "rgb"


def test_geotiff_tags_spacing_and_rewrite(tmp_path):
    img = _ramp((4, 16, 16), np.uint16, 101)
    geo = {"model_pixel_scale": [10.0, 20.0, 0.0],
           "model_tiepoint": [0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0],
           # version 1.1.0, 3 keys: projected model, pixel-is-area, WGS 84 / UTM 33N
           "key_directory": [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633],
           "nodata": "0"}
    out = write_image(img, {"geotiff": geo}, tmp_path / "geo.tif")
    arr, meta = read_image(out)
    np.testing.assert_array_equal(arr, img)
    g = meta["geotiff"]
    assert g["model_pixel_scale"] == [10.0, 20.0, 0.0] and g["epsg"] == 32633
    assert g["geokeys"]["GTModelTypeGeoKey"] == 1 and g["nodata"] == "0"
    assert meta["spacing"] == [20000.0, 10000.0]                 # [dy, dx] in mm
    json.dumps(jsonable_meta(meta))
    again = write_image(arr, meta, tmp_path / "geo2.tif")         # tags survive a rewrite
    assert read_image(again)[1]["geotiff"]["model_tiepoint"] == geo["model_tiepoint"]
    # a geographic CRS (degrees) gives no spacing in mm
    geo_deg = dict(geo, key_directory=[1, 1, 0, 2, 1024, 0, 1, 2, 2048, 0, 1, 4326])
    meta_deg = read_image(write_image(img, {"geotiff": geo_deg}, tmp_path / "deg.tif"))[1]
    assert meta_deg["spacing"] is None and meta_deg["geotiff"]["epsg"] == 4326


def test_tiff_codec_without_imagecodecs_is_named(tmp_path):
    import importlib.util

    import tifffile

    if importlib.util.find_spec("imagecodecs") is not None:
        pytest.skip("imagecodecs is installed: LZW decodes")
    out = write_image(_ramp((1, 8, 8), np.uint8, 3), None, tmp_path / "a.tif", compression=None)
    with tifffile.TiffFile(out) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    data = bytearray(out.read_bytes())
    data[offset:offset + 2] = (5).to_bytes(2, "little")         # claim LZW
    lzw = tmp_path / "lzw.tif"
    lzw.write_bytes(bytes(data))
    with pytest.raises(ReadError, match="compression LZW needs the 'imagecodecs'") as exc:
        read_image(lzw)
    _one_line_naming(exc, lzw)


def test_truncated_tiff(tmp_path):
    out = write_image(_ramp((2, 64, 64), np.uint16, 7), None, tmp_path / "a.tif",
                      compression=None)
    data = out.read_bytes()
    for n in (6, len(data) // 2):
        bad = tmp_path / f"cut{n}.tif"
        bad.write_bytes(data[:n])
        with pytest.raises(ReadError) as exc:
            read_image(bad)
        _one_line_naming(exc, bad)


# ============================================================================ HDF5 arrays
def test_h5array_read_write(tmp_path):
    import h5py

    vol = np.random.default_rng(1).random((3, 9, 8)).astype(np.float32)
    meta = {"axes": "zyx", "spacing": [2.0, 0.5, 0.5], "modality": "MR", "format": "nifti"}
    out = write_image(vol, meta, tmp_path / "v.h5::scans/t1")
    assert out == tmp_path / "v.h5"
    arr, m = read_image(str(out) + "::scans/t1")
    np.testing.assert_array_equal(arr, vol)
    assert m["format"] == "hdf5" and m["axes"] == "zyx" and m["spacing"] == [2.0, 0.5, 0.5]
    assert m["dataset"] == "scans/t1" and m["modality"] == "MR"
    with h5py.File(out) as f:
        d = f["scans/t1"]
        assert d.compression == "gzip" and d.chunks == (1, 9, 8)
    arr2, _ = read_image(out)                         # one dataset: no name needed
    np.testing.assert_array_equal(arr2, vol)
    # foreign file: JSON attributes decoded, 2-D → 1×H×W, missing names listed
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        d = f.create_dataset("img", data=np.arange(12, dtype=np.int16).reshape(3, 4))
        d.attrs["info"] = json.dumps({"site": "A", "dose": 0.25})
        d.attrs["element_size_um"] = [500.0, 250.0]
        f.create_dataset("labels", data=np.zeros((3, 4), np.uint8))
        f.create_group("extra")
    arr, m = read_image(other, dataset="img")
    assert arr.shape == (1, 3, 4) and arr.dtype == np.int16
    assert m["attrs"]["info"] == {"site": "A", "dose": 0.25} and m["spacing"] == [0.5, 0.25]
    with pytest.raises(ReadError, match="no dataset 'nope'; top-level datasets: img, labels") \
            as exc:
        read_image(str(other) + "::nope")
    _one_line_naming(exc, other)
    with pytest.raises(ReadError, match="pass dataset="):
        read_image(other)
    with pytest.raises(ReadError, match="dataset given twice"):
        read_image(str(other) + "::img", dataset="labels")


def test_truncated_h5(tmp_path):
    out = write_image(np.zeros((1, 64, 64), np.float32), None, tmp_path / "a.h5")
    bad = tmp_path / "cut.h5"
    bad.write_bytes(out.read_bytes()[:300])
    with pytest.raises(ReadError) as exc:
        read_image(bad)
    _one_line_naming(exc, bad)


# ============================================================================ NIfTI
def _oblique_affine() -> np.ndarray:
    t = np.deg2rad(20.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 0.9, 2.0])
    a[:3, 3] = [10.0, -20.0, 30.0]
    return a


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_affine_and_slices(tmp_path, suffix):
    import nibabel as nib

    vol = np.random.default_rng(2).random((4, 6, 5)).astype(np.float32)   # Z×H×W
    affine = _oblique_affine()
    out = write_image(vol, {"affine": affine.tolist(), "affine_space": "RAS"},
                      tmp_path / f"v{suffix}")
    if suffix == ".nii.gz":                                            # really compressed
        assert len(gzip.decompress(out.read_bytes())) > out.stat().st_size
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    data = img.get_fdata()
    assert data.shape == (5, 6, 4)                                      # (i, j, k) = (x, y, z)
    for z in range(4):
        np.testing.assert_array_equal(data[:, :, z].T, vol[z])
    arr, meta = read_image(out)
    np.testing.assert_array_equal(arr, vol)
    assert meta["axes"] == "zyx" and arr.dtype == np.float32
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-6)
    assert meta["affine_space"] == "RAS" and meta["axcodes"] == "".join(nib.aff2axcodes(affine))
    np.testing.assert_allclose(meta["spacing"], [2.0, 0.9, 0.8], atol=1e-6)
    assert isinstance(meta["header"], nib.Nifti1Header)
    js = jsonable_meta(meta)
    assert "header" not in js
    json.dumps(js)


def test_nifti_scaling_header_dtype_and_dims(tmp_path):
    import nibabel as nib

    raw = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(0.5, -10.0)
    img.header["descrip"] = b"test volume"
    nib.save(img, tmp_path / "scaled.nii")
    vol, meta = read_image(tmp_path / "scaled.nii")
    np.testing.assert_allclose(vol, raw.transpose(2, 1, 0) * 0.5 - 10.0)
    assert meta["dtype"] == "int16" and meta["rescale"] == {"slope": 0.5, "intercept": -10.0}
    out = write_image(vol, meta, tmp_path / "copy.nii")                  # float32 by default
    back = nib.load(out)
    assert back.get_data_dtype() == np.float32 and back.header["descrip"] == b"test volume"
    np.testing.assert_allclose(read_image(out)[0], vol)
    out = write_image(vol, meta, tmp_path / "int.nii", dtype="int16")
    assert nib.load(out).get_data_dtype() == np.int16
    np.testing.assert_allclose(read_image(out)[0], vol, atol=1e-3)
    # 2-D → 1×H×W and back to 2-D; 4-D refused unless the 4th axis has length 1
    nib.save(nib.Nifti1Image(np.arange(35, dtype=np.float32).reshape(7, 5), np.eye(4)),
             tmp_path / "flat.nii")
    flat, fmeta = read_image(tmp_path / "flat.nii")
    assert flat.shape == (1, 5, 7) and flat[0, 1, 0] == 1.0
    assert nib.load(write_image(flat, fmeta, tmp_path / "flat2.nii")).shape == (7, 5)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.float32), np.eye(4)),
             tmp_path / "one.nii")
    assert read_image(tmp_path / "one.nii")[0].shape == (6, 5, 4)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.float32), np.eye(4)),
             tmp_path / "four.nii")
    with pytest.raises(ReadError, match="4-D NIfTI") as exc:
        read_image(tmp_path / "four.nii")
    _one_line_naming(exc, tmp_path / "four.nii")
    with pytest.raises(WriteError, match="3-channel"):
        write_image(np.zeros((3, 4, 4), np.float32), {"axes": "chw"}, tmp_path / "rgb.nii")


def test_truncated_nifti(tmp_path):
    vol = np.random.default_rng(3).random((8, 16, 16)).astype(np.float32)
    for suffix in (".nii", ".nii.gz"):
        data = write_image(vol, None, tmp_path / f"v{suffix}").read_bytes()
        for n in (100, len(data) // 2):
            bad = tmp_path / f"cut{n}{suffix}"
            bad.write_bytes(data[:n])
            with pytest.raises(ReadError) as exc:
                read_image(bad)
            _one_line_naming(exc, bad)


# ============================================================================ DICOM series
OBLIQUE = [0.866025, 0.5, 0.0, 0.0, 0.0, -1.0]     # row cosine, column cosine


def _make_series(folder: Path, n: int = 5, *, dz: float = 2.5, orientation=OBLIQUE,
                 series_uid: str | None = None, skip: tuple[int, ...] = (),
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Copies of CT_small with new positions along the slice normal, reversed InstanceNumbers,
    pixels shifted by 10·k and shuffled file names. Returns (raw pixels, normal)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    src = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(src).pixel_array.astype(np.int16)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-158.1, -179.0, -75.7])
    names = np.random.default_rng(seed).permutation(n)
    series_uid = series_uid or generate_uid()
    for k in range(n):
        if k in skip:
            continue
        ds = pydicom.dcmread(src)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * dz * normal]
        ds.InstanceNumber = n - k
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.PixelData = (raw + 10 * k).astype("<i2").tobytes()
        ds.save_as(folder / f"im{names[k]:03d}_{series_uid[-6:]}.dcm")
    return raw, normal


def test_dicom_series_sorted_in_hu_with_geometry(tmp_path):
    from medrestore.io.dicom import read_dicom_series

    raw, normal = _make_series(tmp_path / "s")
    vol, meta = read_image(tmp_path / "s")                 # a directory → DICOM series
    assert vol.shape == (5, 128, 128) and vol.dtype == np.float32
    for k in range(5):                                     # sorted along the normal, in HU
        np.testing.assert_array_equal(vol[k], raw + 10 * k - 1024.0)
    assert meta["sort_by"] == "position" and meta["instance_numbers"] == [5, 4, 3, 2, 1]
    assert meta["format"] == "dicom" and meta["axes"] == "zyx" and meta["dtype"] == "int16"
    assert meta["modality"] == "CT" and meta["unit"] == "HU"
    assert meta["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    np.testing.assert_allclose(meta["spacing"], [2.5, 0.661468, 0.661468], atol=1e-5)
    a = np.asarray(meta["affine"])
    assert meta["affine_space"] == "LPS"
    for k, pos in enumerate(meta["positions"]):
        np.testing.assert_allclose(a @ [0, 0, k, 1], [*pos, 1], atol=1e-4)
    p0 = np.asarray(meta["positions"][0])
    row, col = np.asarray(OBLIQUE[:3]), np.asarray(OBLIQUE[3:])
    np.testing.assert_allclose((a @ [5, 7, 0, 1])[:3], p0 + 5 * 0.661468 * row
                               + 7 * 0.661468 * col, atol=1e-4)
    np.testing.assert_allclose(np.diff(np.asarray(meta["positions"]) @ normal), 2.5, atol=1e-4)
    np.testing.assert_allclose(meta["affine_ras"], RAS_FROM_LPS @ a)
    assert len(meta["sop_uids"]) == 5 and len(set(meta["sop_uids"])) == 5
    assert meta["series_uid"] and meta["study_uid"].startswith("1.")
    assert [Path(f).parent for f in meta["files"]] == [tmp_path / "s"] * 5
    json.dumps(jsonable_meta(meta))
    # a list of files, and one file on its own, read the same way
    vol2, meta2 = read_dicom_series(list(reversed(meta["files"])))
    np.testing.assert_array_equal(vol2, vol)
    one, m1 = read_image(meta["files"][2])
    assert one.shape == (1, 128, 128) and m1["spacing"][0] == pytest.approx(5.0)
    np.testing.assert_array_equal(one[0], vol[2])
    # no suffix: recognised by the DICM preamble
    bare = tmp_path / "IM0001"
    bare.write_bytes(Path(meta["files"][0]).read_bytes())
    assert read_image(bare)[1]["format"] == "dicom"
    (tmp_path / "s" / "README.txt").write_text("not dicom\n")   # ignored in the directory
    assert read_image(tmp_path / "s")[0].shape == (5, 128, 128)
    # sub-folders only with recursive=True
    _make_series(tmp_path / "root" / "sub", n=2)
    with pytest.raises(ReadError, match="no DICOM files"):
        read_image(tmp_path / "root")
    assert read_image(tmp_path / "root", recursive=True)[0].shape == (2, 128, 128)
    with pytest.raises(ReadError, match="is a directory"):
        read_image(tmp_path / "s", reader="png")


def test_dicom_series_falls_back_to_instance_number(tmp_path):
    import pydicom

    raw, _ = _make_series(tmp_path / "s", n=4)
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    vol, meta = read_image(tmp_path / "s")
    assert meta["sort_by"] == "instance_number" and meta["positions"] is None
    assert meta["affine"] is None and "InstanceNumber" in " ".join(meta["warnings"])
    for k in range(4):                                     # InstanceNumber = n - k
        np.testing.assert_array_equal(vol[k], raw + 10 * (3 - k) - 1024.0)
    assert meta["spacing"][0] == pytest.approx(5.0)        # SpacingBetweenSlices


def test_dicom_series_inconsistencies(tmp_path):
    import pydicom

    from medrestore.io.dicom import DicomError

    # two series in one folder: listed with counts, selectable by uid
    _make_series(tmp_path / "two", n=3, series_uid="1.2.826.0.1.3680043.8.498.111", seed=1)
    _make_series(tmp_path / "two", n=2, series_uid="1.2.826.0.1.3680043.8.498.222", seed=2)
    with pytest.raises(DicomError, match="2 series") as exc:
        read_image(tmp_path / "two")
    msg = _one_line_naming(exc, tmp_path / "two")
    assert "1.2.826.0.1.3680043.8.498.111 (3 files)" in msg and "498.222 (2 files)" in msg
    vol, meta = read_image(tmp_path / "two", series_uid="1.2.826.0.1.3680043.8.498.222")
    assert vol.shape[0] == 2 and meta["series_uid"].endswith("222")
    with pytest.raises(DicomError, match="no series 9.9"):
        read_image(tmp_path / "two", series_uid="9.9")
    # one slice of another size
    _make_series(tmp_path / "size", n=4)
    odd = sorted((tmp_path / "size").iterdir())[1]
    ds = pydicom.dcmread(odd)
    ds.PixelData = ds.pixel_array[:64, :64].astype("<i2").tobytes()
    ds.Rows, ds.Columns = 64, 64
    ds.save_as(odd)
    with pytest.raises(ReadError, match="inconsistent series") as exc:
        read_image(tmp_path / "size")
    msg = _one_line_naming(exc, odd)
    assert "64×64" in msg and "128×128" in msg
    # two slices at one position
    _make_series(tmp_path / "dup", n=4)
    files = sorted((tmp_path / "dup").iterdir())
    a, b = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    b.ImagePositionPatient = a.ImagePositionPatient
    b.save_as(files[1])
    with pytest.raises(DicomError, match="same position") as exc:
        read_image(tmp_path / "dup")
    msg = _one_line_naming(exc, files[1])
    assert str(files[0]) in msg
    # a missing slice: uneven gaps refused, accepted on request
    _make_series(tmp_path / "gap", n=5, skip=(2,))
    with pytest.raises(DicomError, match="uneven slice spacing.*allow_uneven") as exc:
        read_image(tmp_path / "gap")
    _one_line_naming(exc, tmp_path / "gap")
    vol, meta = read_image(tmp_path / "gap", allow_uneven=True)
    assert vol.shape[0] == 4 and meta["spacing"][0] == pytest.approx(2.5, abs=1e-4)
    np.testing.assert_allclose(meta["slice_gaps"], [2.5, 5.0, 2.5], atol=1e-4)
    # a different orientation in one slice
    _make_series(tmp_path / "orient", n=3)
    f = sorted((tmp_path / "orient").iterdir())[0]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(f)
    with pytest.raises(DicomError, match="ImageOrientationPatient") as exc:
        read_image(tmp_path / "orient")
    _one_line_naming(exc, f)


def test_truncated_dicom_alone_and_in_a_series(tmp_path):
    from pydicom.data import get_testdata_file

    from medrestore.io.dicom import DicomError

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    for n in (100, 2000, 20000):
        bad = tmp_path / f"cut{n}.dcm"
        bad.write_bytes(data[:n])
        with pytest.raises(DicomError) as exc:
            read_image(bad)
        _one_line_naming(exc, bad)
    _make_series(tmp_path / "s", n=3)
    victim = sorted((tmp_path / "s").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:20000])
    with pytest.raises(ReadError) as exc:
        read_image(tmp_path / "s")
    _one_line_naming(exc, victim)


def test_dicom_writer_with_references_round_trips(tmp_path):
    import pydicom

    _make_series(tmp_path / "s")
    vol, meta = read_image(tmp_path / "s")
    restored = vol + 0.37 * np.sin(np.arange(vol.size).reshape(vol.shape))   # not integer
    out = write_image(restored, meta, tmp_path / "out", series_description="denoised")
    assert out == tmp_path / "out" and len(list(out.iterdir())) == 5
    back, m2 = read_image(out)
    slope = m2["rescale"]["slope"]
    assert 0 < slope < 0.1
    assert np.abs(back - restored).max() <= slope / 2 + 1e-4
    for key in ("positions", "orientation", "spacing", "affine"):
        np.testing.assert_allclose(m2[key], meta[key], atol=1e-5)
    assert m2["series_uid"] != meta["series_uid"] and m2["study_uid"] == meta["study_uid"]
    assert not set(m2["sop_uids"]) & set(meta["sop_uids"])
    assert m2["instance_numbers"] == meta["instance_numbers"]
    for k, f in enumerate(m2["files"]):
        ds, ref = pydicom.dcmread(f), pydicom.dcmread(meta["files"][k])
        assert ds.ImageType[:2] == ["DERIVED", "SECONDARY"]
        assert meta["series_uid"] in ds.DerivationDescription
        assert ds.SeriesDescription == "denoised" and ds.PatientName == ref.PatientName
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == meta["sop_uids"][k]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # one slice into one file, header from its reference
    one = write_image(restored[2:3], {**meta, "files": meta["files"][2:3]}, tmp_path / "one.dcm")
    arr, m1 = read_image(one)
    assert np.abs(arr[0] - restored[2]).max() <= m1["rescale"]["slope"] / 2 + 1e-4
    np.testing.assert_allclose(m1["positions"], meta["positions"][2:3], atol=1e-5)
    # integer HU are stored exactly
    exact, _ = read_image(write_image(vol, meta, tmp_path / "exact"))
    np.testing.assert_array_equal(exact, vol)
    # refusals: non-empty output, slice count that does not match the references
    with pytest.raises(WriteError, match="non-empty directory") as exc:
        write_image(vol, meta, out)
    _one_line_naming(exc, out)
    write_image(vol, meta, out, overwrite=True)
    np.testing.assert_array_equal(read_image(out)[0], vol)
    with pytest.raises(WriteError, match=r"3 slice\(s\).*reference_files=\(\)"):
        write_image(vol[:3], meta, tmp_path / "short")
    _no_partials(tmp_path)


def test_dicom_writer_without_references(tmp_path):
    import pydicom
    from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

    from medrestore.io.dicom import write_dicom_series

    _make_series(tmp_path / "s", n=3)
    vol, meta = read_image(tmp_path / "s")
    out = write_dicom_series(vol * 0.5, meta, tmp_path / "fresh", reference_files=())
    back, m2 = read_image(out)
    assert np.abs(back - vol * 0.5).max() <= m2["rescale"]["slope"] / 2 + 1e-4
    for key in ("positions", "orientation", "spacing"):
        np.testing.assert_allclose(m2[key], meta[key], atol=1e-5)
    ds = pydicom.dcmread(m2["files"][0])
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert ds.StudyInstanceUID == meta["study_uid"] and ds.PatientName == ""
    # DICOM geometry (LPS) → NIfTI keeps the RAS affine and the slices
    nii_ct = write_image(vol, meta, tmp_path / "ct.nii.gz")
    v_ct, m_ct = read_image(nii_ct)
    np.testing.assert_array_equal(v_ct, vol)
    np.testing.assert_allclose(m_ct["affine"], meta["affine_ras"], atol=1e-5)
    # NIfTI geometry (RAS) → DICOM (LPS) → the same RAS affine
    nii_vol = np.random.default_rng(4).normal(40, 20, (3, 12, 10)).astype(np.float32)
    nii = write_image(nii_vol, {"affine": _oblique_affine().tolist(), "affine_space": "RAS"},
                      tmp_path / "v.nii.gz")
    v, nmeta = read_image(nii)
    dcm_dir = write_image(v, nmeta, tmp_path / "from_nifti", format="dicom")
    back, m3 = read_image(dcm_dir)
    np.testing.assert_allclose(m3["affine_ras"], nmeta["affine"], atol=1e-4)
    assert np.abs(back - v).max() <= m3["rescale"]["slope"] / 2 + 1e-4
    assert pydicom.dcmread(m3["files"][0]).SOPClassUID == SecondaryCaptureImageStorage
    # a 2-D image without geometry → one Secondary Capture file
    img = np.arange(48, dtype=np.uint16).reshape(1, 6, 8)
    one = write_image(img, {"format": "png", "axes": "chw"}, tmp_path / "slice.dcm")
    arr, m4 = read_image(one)
    np.testing.assert_array_equal(arr, img.astype(np.float32))
    assert m4["spacing"] is None and m4["affine"] is None
    with pytest.raises(WriteError, match="3-channel image cannot be written as DICOM"):
        write_image(np.zeros((3, 4, 4), np.uint8), {"axes": "chw"}, tmp_path / "rgb_dir",
                    format="dicom")
    with pytest.raises(WriteError, match="NaN"):
        write_dicom_series(np.full((1, 4, 4), np.nan), {}, tmp_path / "nan")
    _no_partials(tmp_path)
