"""2-D images: PNG, JPEG, BMP and JPEG 2000 through Pillow, TIFF / GeoTIFF through tifffile.

Every reader returns ``C×H×W`` in the *stored* dtype (uint8, uint16, int16, float32, …) with
``axes="chw"``; ``bit_depth`` is the bits per sample on disk.

Pillow modes: grey ``L`` → 1 channel uint8; 16-bit grey ``I;16`` → 1 channel uint16;
``RGB`` → 3. Alpha is kept as the last channel (``LA`` → 2, ``RGBA`` → 4, with
``meta["alpha"] = True``) unless ``alpha="drop"`` removes it. Palette images are expanded to
RGB (RGBA when the palette has transparency), since palette indices are not intensities;
bilevel ``1`` → uint8 0/255; CMYK / YCbCr / LAB → RGB (``meta["mode"]`` keeps the mode on
disk). 16-bit colour PNGs are refused: Pillow would silently cut them to 8 bits. Print
resolution (dpi) is not a physical pixel spacing, so ``spacing`` is None for these formats
(dpi is kept as ``meta["dpi"]``). ``bit_depth`` comes from the PNG header, else from the
returned dtype (a 12-bit JPEG 2000 reports 16).

TIFF: the first series at full resolution; planar (``C×H×W``) or interleaved (``H×W×C``)
samples and multi-page grey stacks all become ``C×H×W``. GeoTIFF tags are kept under
``meta["geotiff"]`` (pixel scale, tie points, transformation, decoded GeoKeys, EPSG code, GDAL
no-data); ``spacing`` comes from ModelPixelScale when the CRS is projected in metres (assumed
when a projected CRS states no linear unit). Compressions other than none / deflate / LZMA /
PackBits need the optional ``imagecodecs`` package; without it the error names the codec.

Writers take ``C×H×W`` (or ``H×W``). PNG stores uint8 (1–4 channels) or uint16 (grey only),
JPEG uint8 grey/RGB, BMP uint8 grey/RGB/RGBA, JPEG 2000 uint8 (1–4 channels) or uint16 grey
(lossless by default). Other dtypes are refused unless ``value_range=(low, high)`` is given:
then ``round((clip(x, low, high) − low) / (high − low) · (2^bits − 1))`` with ``bit_depth``
8 (default) or 16. TIFF stores any real dtype, planar, deflate-compressed by default, and writes
``meta["geotiff"]`` back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medrestore.io.base import (
    AXES_2D,
    AXES_3D,
    ImageReader,
    ReadError,
    WriteError,
    atomic_output,
    base_meta,
    one_line,
    sniff_format,
)

# Pillow's format ids → our format names (an MPO is a JPEG with extra frames).
_PIL_NAMES = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "BMP": "bmp", "DIB": "bmp",
              "JPEG2000": "jpeg2000"}
_LABELS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "jpeg2000": "JPEG 2000"}


# ============================================================================ Pillow formats
def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None if it is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _require_jpeg2000(path: Path, error: type[Exception]) -> None:
    from PIL import features

    if not features.check("jpg_2000"):
        raise error(f"{path}: this Pillow was built without OpenJPEG, so JPEG 2000 cannot be "
                    "read or written (install a Pillow wheel with JPEG 2000 support)")


def _pillow_to_array(im, alpha: str) -> tuple[np.ndarray, bool, str]:
    """Pillow image → (H×W or H×W×C array, has alpha, mode description)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    arr = np.asarray(im)
    if mode.startswith("I;16"):
        arr = arr.astype(np.uint16)            # native byte order, whatever Pillow kept
    has_alpha = im.mode in ("LA", "RGBA")
    if has_alpha and alpha == "drop":
        arr = arr[..., :-1]
        has_alpha = False
    return arr, has_alpha, mode


def _read_pillow(path: Path, name: str, alpha: str = "keep") -> tuple[np.ndarray, dict]:
    from PIL import Image, UnidentifiedImageError

    label = _LABELS[name]
    if alpha not in ("keep", "drop"):
        raise ReadError(f"{path}: alpha must be 'keep' or 'drop', got {alpha!r}")
    if name == "jpeg2000":
        _require_jpeg2000(path, ReadError)
    png = _png_header(path)
    if png is not None and png[0] == 16 and png[1] in (2, 4, 6):
        raise ReadError(f"{path}: 16-bit colour PNG (colour type {png[1]}) would be cut to 8 "
                        "bits by Pillow; convert it to a 16-bit TIFF to keep the precision")
    try:
        with Image.open(path) as im:
            im.load()
            fmt = _PIL_NAMES.get(im.format or "", name)
            arr, has_alpha, mode = _pillow_to_array(im, alpha)
            info = dict(im.info)
    except UnidentifiedImageError:
        if sniff_format(path) == name:     # right signature, unusable header: cut short
            raise ReadError(f"{path}: truncated or unreadable {label} image (the header "
                            "cannot be decoded)") from None
        raise ReadError(f"{path}: not a {label} image (Pillow cannot identify the file)") from None
    except Exception as exc:   # truncated data: OSError, SyntaxError, ValueError, EOFError
        raise ReadError(f"{path}: truncated or unreadable {label} image "
                        f"({type(exc).__name__}: {one_line(exc)})") from None
    image = np.ascontiguousarray(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0))
    if png is not None:
        bit_depth = png[0]
    elif mode == "1":
        bit_depth = 1
    else:
        bit_depth = image.dtype.itemsize * 8
    meta = base_meta(fmt, path, image, dtype=image.dtype, axes=AXES_2D, spacing=None)
    meta.update({"bit_depth": int(bit_depth), "mode": mode, "alpha": has_alpha})
    if "dpi" in info:
        meta["dpi"] = [float(v) for v in info["dpi"]]
    return image, meta


def _quantise(array: np.ndarray, path: Path, label: str, allowed: Sequence[str],
              value_range: Sequence[float] | None, bit_depth: int | None) -> np.ndarray:
    """Return an array of an allowed dtype, converting only on an explicit ``value_range``."""
    if value_range is not None:
        if bit_depth not in (None, 8, 16):
            raise WriteError(f"{path}: bit_depth must be 8 or 16, got {bit_depth!r}")
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise WriteError(f"{path}: value_range must be (low, high) with high > low, got "
                             f"{tuple(value_range)}")
        bits = bit_depth or 8
        dtype = np.uint8 if bits == 8 else np.uint16
        if np.dtype(dtype).name not in allowed:
            raise WriteError(f"{path}: {label} cannot store {bits}-bit samples")
        x = (np.clip(np.asarray(array, np.float64), lo, hi) - lo) / (hi - lo)
        return np.rint(x * (2 ** bits - 1)).astype(dtype)
    if bit_depth is not None:
        raise WriteError(f"{path}: bit_depth is only used with value_range=(low, high)")
    if array.dtype.name not in allowed:
        raise WriteError(f"{path}: {label} stores {' or '.join(allowed)}, got {array.dtype}; "
                         "pass value_range=(low, high) (and bit_depth=16 for 16 bits) to "
                         "quantise, or convert the array first")
    return array


def _check_image(array: np.ndarray, meta: Mapping[str, Any], path: Path, label: str) -> None:
    if meta.get("axes") == AXES_3D and array.shape[0] > 1:
        raise WriteError(f"{path}: a {array.shape[0]}-slice volume cannot be written as {label}; "
                         "write a volume as NIfTI, DICOM or HDF5, or pass one slice")
    if np.iscomplexobj(array):
        raise WriteError(f"{path}: complex data cannot be written as {label}")


_PILLOW_MODES = {("uint8", 1): "L", ("uint8", 2): "LA", ("uint8", 3): "RGB",
                 ("uint8", 4): "RGBA", ("uint16", 1): "I;16"}


def _write_pillow(array: np.ndarray, meta: Mapping[str, Any], path: Path, name: str, *,
                  overwrite: bool, allowed: Sequence[str], channels: Sequence[int],
                  value_range: Sequence[float] | None, bit_depth: int | None,
                  save_args: dict[str, Any]) -> Path:
    from PIL import Image

    label = _LABELS[name]
    if name == "jpeg2000":
        _require_jpeg2000(path, WriteError)
    _check_image(array, meta, path, label)
    data = _quantise(array, path, label, allowed, value_range, bit_depth)
    c = data.shape[0]
    mode = _PILLOW_MODES.get((data.dtype.name, c))
    if c not in channels or mode is None:
        raise WriteError(f"{path}: {label} cannot store {c} channel(s) of {data.dtype} "
                         f"(channels: {', '.join(map(str, channels))}"
                         + ("; 16 bits only for grey" if "uint16" in allowed else "")
                         + "); use TIFF for other layouts")
    hw = data[0] if c == 1 else np.moveaxis(data, 0, -1)
    im = Image.fromarray(np.ascontiguousarray(hw))      # mode follows dtype and channels
    if im.mode != mode:
        raise WriteError(f"{path}: Pillow made a {im.mode} image, expected {mode}")
    with atomic_output(path, overwrite) as tmp:
        im.save(tmp, format={"png": "PNG", "jpeg": "JPEG", "bmp": "BMP",
                             "jpeg2000": "JPEG2000"}[name], **save_args)
    return path


class _PillowReader(ImageReader):
    read_options = ("alpha",)

    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return _read_pillow(path, self.name, **options)


class PngReader(_PillowReader):
    name = "png"
    suffixes = (".png",)
    write_options = ("value_range", "bit_depth", "compress_level")

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, value_range: Sequence[float] | None = None,
              bit_depth: int | None = None, compress_level: int = 6) -> Path:
        return _write_pillow(array, meta, path, "png", overwrite=overwrite,
                             allowed=("uint8", "uint16"), channels=(1, 2, 3, 4),
                             value_range=value_range, bit_depth=bit_depth,
                             save_args={"compress_level": int(compress_level)})


class JpegReader(_PillowReader):
    name = "jpeg"
    suffixes = (".jpg", ".jpeg")
    write_options = ("value_range", "quality")

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, value_range: Sequence[float] | None = None,
              quality: int = 95) -> Path:
        """Baseline 8-bit JPEG, 4:4:4 (no chroma subsampling, so colour edges survive)."""
        if not 1 <= int(quality) <= 100:
            raise WriteError(f"{path}: JPEG quality must be 1..100, got {quality}")
        return _write_pillow(array, meta, path, "jpeg", overwrite=overwrite,
                             allowed=("uint8",), channels=(1, 3), value_range=value_range,
                             bit_depth=None, save_args={"quality": int(quality),
                                                        "subsampling": 0})


class BmpReader(_PillowReader):
    name = "bmp"
    suffixes = (".bmp",)
    write_options = ("value_range",)

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, value_range: Sequence[float] | None = None) -> Path:
        return _write_pillow(array, meta, path, "bmp", overwrite=overwrite,
                             allowed=("uint8",), channels=(1, 3, 4), value_range=value_range,
                             bit_depth=None, save_args={})


class Jpeg2000Reader(_PillowReader):
    name = "jpeg2000"
    suffixes = (".jp2", ".j2k", ".j2c")
    write_options = ("value_range", "bit_depth", "irreversible", "quality_layers")

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, value_range: Sequence[float] | None = None,
              bit_depth: int | None = None, irreversible: bool = False,
              quality_layers: Sequence[float] | None = None) -> Path:
        """Lossless (reversible 5/3 wavelet) unless ``irreversible=True`` or quality layers
        (compression ratios, Pillow's ``quality_mode="rates"``) are given."""
        args: dict[str, Any] = {"irreversible": bool(irreversible)}
        if quality_layers is not None:
            args["quality_layers"] = [float(q) for q in quality_layers]
        if path.name.lower().endswith((".j2k", ".j2c")):
            args["no_jp2"] = True                       # raw codestream, no JP2 boxes
        return _write_pillow(array, meta, path, "jpeg2000", overwrite=overwrite,
                             allowed=("uint8", "uint16"), channels=(1, 2, 3, 4),
                             value_range=value_range, bit_depth=bit_depth, save_args=args)


# ============================================================================ TIFF
# Compressions tifffile decodes with the standard library / numpy alone.
_BUILTIN_CODECS = {"NONE", "ADOBE_DEFLATE", "DEFLATE", "LZMA", "PACKBITS"}

_GEOKEY_NAMES = {
    1024: "GTModelTypeGeoKey", 1025: "GTRasterTypeGeoKey", 1026: "GTCitationGeoKey",
    2048: "GeographicTypeGeoKey", 2049: "GeogCitationGeoKey", 2050: "GeogGeodeticDatumGeoKey",
    2052: "GeogLinearUnitsGeoKey", 2054: "GeogAngularUnitsGeoKey",
    2056: "GeogEllipsoidGeoKey", 3072: "ProjectedCSTypeGeoKey", 3073: "PCSCitationGeoKey",
    3074: "ProjectionGeoKey", 3075: "ProjCoordTransGeoKey", 3076: "ProjLinearUnitsGeoKey",
    4096: "VerticalCSTypeGeoKey", 4099: "VerticalUnitsGeoKey",
}
_GEO_TAGS = {"model_pixel_scale": 33550, "model_tiepoint": 33922,
             "model_transformation": 34264, "key_directory": 34735, "double_params": 34736,
             "ascii_params": 34737, "nodata": 42113}
_METRE = 9001              # EPSG unit code of the metre


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1").rstrip("\x00")
    if isinstance(value, str):
        return value.rstrip("\x00")
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_geokeys(directory: Sequence[int], doubles: Sequence[float] | None,
                    ascii_params: str | None) -> dict[str, Any]:
    """GeoKeyDirectory (header + 4 shorts per key) → ``{name: value}``."""
    keys: dict[str, Any] = {}
    n = int(directory[3]) if len(directory) >= 4 else 0
    for i in range(n):
        kid, loc, count, off = (int(v) for v in directory[4 + 4 * i: 8 + 4 * i])
        if loc == 0:
            value: Any = off
        elif loc == 34736 and doubles is not None:
            vals = [float(v) for v in doubles[off:off + count]]
            value = vals[0] if count == 1 else vals
        elif loc == 34737 and ascii_params is not None:
            value = ascii_params[off:off + count].rstrip("|")
        else:
            value = None
        keys[_GEOKEY_NAMES.get(kid, f"GeoKey{kid}")] = value
    return keys


def _geotiff(page) -> dict[str, Any] | None:
    found: dict[str, Any] = {}
    for name, code in _GEO_TAGS.items():
        tag = page.tags.get(code)
        if tag is not None:
            found[name] = _plain(tag.value)
    if not found:
        return None
    if "key_directory" in found:
        keys = _decode_geokeys(found["key_directory"], found.get("double_params"),
                               found.get("ascii_params"))
        found["geokeys"] = keys
        epsg = keys.get("ProjectedCSTypeGeoKey") or keys.get("GeographicTypeGeoKey")
        found["epsg"] = epsg if isinstance(epsg, int) and 1024 <= epsg < 32767 else None
    return found


def _geo_spacing(geo: Mapping[str, Any] | None) -> list[float] | None:
    """[dy, dx] in mm from ModelPixelScale when the CRS is projected in metres."""
    if not geo or not geo.get("model_pixel_scale"):
        return None
    keys = geo.get("geokeys") or {}
    projected = keys.get("GTModelTypeGeoKey") == 1
    if not projected or keys.get("ProjLinearUnitsGeoKey", _METRE) != _METRE:
        return None
    sx, sy = (float(v) for v in geo["model_pixel_scale"][:2])
    return [sy * 1000.0, sx * 1000.0]


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:   # TiffFileError for foreign/truncated headers, OSError, ...
        raise ReadError(f"{path}: not a TIFF file or truncated header ({type(exc).__name__}: "
                        f"{one_line(exc)})") from None
    with tif:
        if not tif.series:
            raise ReadError(f"{path}: TIFF file holds no image")
        series = tif.series[0]
        page = series.keyframe
        codec = getattr(page.compression, "name", str(page.compression))
        try:
            data = series.asarray()
        except Exception as exc:
            if "imagecodecs" in str(exc):
                raise ReadError(f"{path}: TIFF compression {codec} needs the 'imagecodecs' "
                                "package (pip install imagecodecs)") from None
            raise ReadError(f"{path}: truncated or unreadable TIFF data ({type(exc).__name__}: "
                            f"{one_line(exc)})") from None
        axes = series.axes
        geo = _geotiff(page)
        bits = page.bitspersample
        photometric = getattr(page.photometric, "name", str(page.photometric)).lower()
        n_series = len(tif.series)
    if data.ndim == 2:
        image = data[None]
    elif data.ndim == 3 and axes[-1] in "SC" and axes[:2] == "YX":
        image = np.moveaxis(data, -1, 0)                 # interleaved H×W×C
    elif data.ndim == 3 and axes[-2:] == "YX":
        image = data                                     # planar C×H×W or a page stack
    else:
        raise ReadError(f"{path}: TIFF series with axes {axes} and shape {data.shape} is not "
                        "a 2-D (multi-band) image")
    image = np.ascontiguousarray(image)
    meta = base_meta("tiff", path, image, dtype=image.dtype, axes=AXES_2D,
                     spacing=_geo_spacing(geo))
    meta.update({"bit_depth": int(bits), "photometric": photometric, "compression": codec,
                 "tiff_axes": axes})
    if geo is not None:
        meta["geotiff"] = geo
    if n_series > 1:
        meta["n_series"] = n_series
    return image, meta


def _geo_extratags(geo: Mapping[str, Any] | None) -> list[tuple]:
    """tifffile ``extratags`` that write the GeoTIFF tags of a meta back."""
    if not geo:
        return []
    tags = []
    for name, code, dtype in (("model_pixel_scale", 33550, "d"), ("model_tiepoint", 33922, "d"),
                              ("model_transformation", 34264, "d"),
                              ("key_directory", 34735, "H"), ("double_params", 34736, "d")):
        value = geo.get(name)
        if value:
            tags.append((code, dtype, len(value), list(value), True))
    for name, code in (("ascii_params", 34737), ("nodata", 42113)):
        if geo.get(name):
            tags.append((code, "s", 0, str(geo[name]), True))
    return tags


class TiffReader(ImageReader):
    name = "tiff"
    suffixes = (".tif", ".tiff")
    read_options = ()
    write_options = ("compression", "photometric")

    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return _read_tiff(path)

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, compression: str | None = "zlib",
              photometric: str | None = None) -> Path:
        """Planar TIFF of any real dtype; ``photometric`` defaults to ``rgb`` for 3-channel
        uint8/uint16 images not read as ``minisblack``, else ``minisblack``."""
        import tifffile

        _check_image(array, meta, path, "TIFF")
        c = array.shape[0]
        if photometric is None:
            rgb = c == 3 and array.dtype.name in ("uint8", "uint16") and \
                meta.get("photometric", "rgb") == "rgb"
            photometric = "rgb" if rgb else "minisblack"
        data = array[0] if c == 1 else array
        try:
            with atomic_output(path, overwrite) as tmp:
                tifffile.imwrite(tmp, np.ascontiguousarray(data), photometric=photometric,
                                 planarconfig="separate" if c > 1 else None,
                                 compression=compression, metadata=None,
                                 extratags=_geo_extratags(meta.get("geotiff")))
        except (KeyError, ValueError, TypeError) as exc:
            if "imagecodecs" in str(exc):
                raise WriteError(f"{path}: TIFF compression {compression!r} needs the "
                                 "'imagecodecs' package (pip install imagecodecs)") from None
            raise WriteError(f"{path}: cannot write TIFF ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
        return path

