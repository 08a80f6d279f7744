"""One reader/writer interface for image files, picked by suffix, content or name.

:func:`read_image` returns ``(array, meta)`` and :func:`write_image` writes such a pair back, in
the format named, implied by the suffix, or recorded in ``meta["format"]`` (so an inference
tool can write its output in the format it read). Each format is an :class:`ImageReader`
(read + write) registered in :data:`IMAGE_FORMATS` (:func:`register_format`) under a name and
its suffixes; the implementation module is imported only when the format is first used, so
this module needs nothing but numpy and imports no reader module.

Array conventions
-----------------
- PNG / JPEG / BMP / JPEG 2000 / TIFF: axes ``"chw"``, ``C×H×W`` (C = 1 grey, 3 RGB, N bands),
  stored dtype kept (uint8, uint16, int16, float32, ...).
- DICOM series or file: axes ``"zyx"``, ``Z×H×W`` float32 in physical units (rescale
  slope/intercept applied: HU for CT); slices sorted along the slice normal.
- NIfTI: axes ``"zyx"``, ``Z×H×W`` float32 with nibabel's scaling applied; nibabel's
  ``(i, j, k)`` is transposed to ``(k, j, i)``, so ``vol[z] == data[:, :, z].T``.
- HDF5 dataset: as stored (2-D → ``1×H×W``), stored dtype kept; axes from the dataset's
  ``axes`` attribute or the ``axes=`` option (default ``"chw"``).

``spacing`` is in mm, one entry per *spatial* axis (``[dz, dy, dx]`` for ``"zyx"``,
``[dy, dx]`` for ``"chw"``); an entry is ``None`` when that axis' spacing is unknown and the
whole value is ``None`` when nothing is known. ``affine`` (4×4 nested list) maps
``(x, y, z, 1)`` -- the index of ``vol[z, y, x]`` read backwards (column, row, slice) -- to
millimetres, as NIfTI and ITK do; ``affine_space``
says whether it is ``"RAS"`` (NIfTI) or ``"LPS"`` (DICOM patient coordinates) and
``affine_ras`` is always the RAS version.

Every ``meta`` has ``format``, ``path``, ``shape`` (as returned), ``dtype`` (as stored on disk),
``axes`` and ``spacing``; readers add format-specific keys (see ``docs/io.md``). Some values are
not JSON (the NIfTI ``header`` object): :func:`jsonable_meta` converts or drops those.

Errors are :class:`ReadError` / :class:`WriteError`, one line naming the file and what is wrong.
Two checks apply to every format (:func:`read_image`): non-finite pixels (NaN, ±inf) and
spacings that are not > 0 are errors unless ``nonfinite="fill"`` / ``bad_spacing="unknown"``
say otherwise.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.registry import Registry, RegistryError

AXES_2D = "chw"
AXES_3D = "zyx"
LPS_TO_RAS = ((-1.0, 0.0, 0.0, 0.0), (0.0, -1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0),
              (0.0, 0.0, 0.0, 1.0))   # its own inverse: flips x and y


class ReadError(MedrestoreError, ValueError):
    """A file that cannot be read as the image it claims to be (names the file and the fault)."""


class WriteError(MedrestoreError, ValueError):
    """An array/meta pair that cannot be written where or how it was asked."""


class ImageReader(ABC):
    """Reader and writer of one image format (MONAI-style ``ImageReader`` plus its writer).

    ``read`` gets an existing path and the format options the caller passed; it returns
    ``(array, meta)`` following the conventions above. ``write`` gets a ``C×H×W`` / ``Z×H×W``
    array, the meta it came with (possibly from another format) and the final path; it must
    write atomically (see :func:`atomic_output`) and return the path written.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    read_options: ClassVar[tuple[str, ...]] = ()
    write_options: ClassVar[tuple[str, ...]] = ()

    def verify_suffix(self, path: str | os.PathLike) -> bool:
        return _match_suffix(Path(path).name, self.suffixes) is not None

    def reads_directory(self, path: Path) -> bool:
        """Whether this format reads the existing directory ``path`` (formats registered with
        ``directory=True`` override this; a plain file format never does)."""
        return False

    @abstractmethod
    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        ...

    @abstractmethod
    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, **options: Any) -> Path:
        ...


#: Image formats: name -> ``"module:Class"`` of an :class:`ImageReader`, imported on first use;
#: metadata ``suffixes`` (lower case, with the dot; the first is the default suffix) and
#: ``directory`` (the format may be read from and written as a directory: DICOM series).
IMAGE_FORMATS = Registry("image format")


def suffixes_of(name: str) -> tuple[str, ...]:
    """The suffixes of a registered format, its default first."""
    return IMAGE_FORMATS.meta(name)["suffixes"]


def register_format(name: str, target: str, suffixes: tuple[str, ...], *,
                    directory: bool = False, replace: bool = False) -> None:
    """Add a format: ``target`` is ``"module:Class"`` of an :class:`ImageReader` subclass."""
    if name in IMAGE_FORMATS and not replace:
        raise ValueError(f"image format {name!r} is already registered")
    suffixes = tuple(s.lower() for s in suffixes)
    for s in suffixes:
        other = next((f for f in IMAGE_FORMATS if f != name and s in suffixes_of(f)), None)
        if other is not None:
            raise ValueError(f"suffix {s!r} already belongs to image format {other!r}")
    IMAGE_FORMATS.add(name, target, replace=True, suffixes=suffixes, directory=directory)


register_format("dicom", "medrestore.io.dicom:DicomReader", (".dcm", ".ima", ".dicom"),
                directory=True)
register_format("nifti", "medrestore.io.nifti:NiftiReader", (".nii.gz", ".nii"))
register_format("png", "medrestore.io.image2d:PngReader", (".png",))
register_format("jpeg", "medrestore.io.image2d:JpegReader", (".jpg", ".jpeg"))
register_format("bmp", "medrestore.io.image2d:BmpReader", (".bmp",))
register_format("tiff", "medrestore.io.image2d:TiffReader", (".tif", ".tiff"))
register_format("jpeg2000", "medrestore.io.image2d:Jpeg2000Reader", (".jp2", ".j2k", ".j2c"))
register_format("hdf5", "medrestore.io.h5array:H5ArrayReader", (".h5", ".hdf5", ".hdf"))


def formats() -> list[str]:
    """Registered format names."""
    return IMAGE_FORMATS.names()


def supported_suffixes() -> list[str]:
    return [s for f in IMAGE_FORMATS for s in suffixes_of(f)]


def get_reader(name: str) -> ImageReader:
    """The :class:`ImageReader` registered as ``name`` (imports its module on first use)."""
    try:
        return IMAGE_FORMATS.get(str(name).lower())()
    except RegistryError as exc:
        raise ReadError(str(exc)) from None


def _match_suffix(filename: str, suffixes: tuple[str, ...] | list[str]) -> str | None:
    lower = filename.lower()
    for s in sorted(suffixes, key=len, reverse=True):      # ".nii.gz" before ".gz"-like tails
        if lower.endswith(s) and len(lower) > len(s):
            return s
    return None


def format_for_suffix(path: str | os.PathLike) -> str | None:
    """The format whose suffix ``path`` ends with, or None."""
    name = Path(path).name
    return next((f for f in IMAGE_FORMATS if _match_suffix(name, suffixes_of(f))), None)


# Magic numbers for files without a known suffix; DICOM is checked separately (offset 128).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"II*\x00", "tiff"), (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"),
    (0, b"MM\x00+", "tiff"),
    (0, b"\x89HDF\r\n\x1a\n", "hdf5"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"), (0, b"\xff\x4f\xff\x51", "jpeg2000"),
    (0, b"BM", "bmp"),
    (344, b"n+1\x00", "nifti"), (540, b"n+2\x00", "nifti"),
)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def sniff_format(path: str | os.PathLike) -> str | None:
    """Guess a file's format from its first bytes (None when nothing matches)."""
    if is_dicom_file(path):
        return "dicom"
    try:
        with open(path, "rb") as fh:
            head = fh.read(548)
    except OSError:
        return None
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Format of an existing path: a directory of DICOM files, a known suffix, else the content."""
    p = Path(path)
    if p.is_dir():
        # each directory format's reader says whether it reads this folder (imported lazily
        # through the registry, so this module imports none of them)
        folders = [f for f in IMAGE_FORMATS if IMAGE_FORMATS.meta(f)["directory"]]
        name = next((f for f in folders if get_reader(f).reads_directory(p)), None)
        if name is not None:
            return name
        what = " or ".join(f.upper() for f in folders) or "image"
        raise ReadError(f"{p}: directory holds no {what} files (only {what} series are read "
                        "from a directory; pass a file path for other formats)")
    name = format_for_suffix(p)
    if name is not None:
        return name
    name = sniff_format(p)
    if name is not None:
        return name
    suffix = "".join(p.suffixes[-2:]) or "(none)"
    raise ReadError(f"{p}: unknown image suffix {suffix} and no recognised file signature; "
                    f"supported suffixes: {' '.join(supported_suffixes())} (or pass reader=...)")


def split_dataset_path(path: str | os.PathLike, dataset: str | None) -> tuple[Path, str | None]:
    """``"file.h5::group/name"`` → ``(Path("file.h5"), "group/name")``; other paths unchanged."""
    text = os.fspath(path)
    if "::" in text and not Path(text).exists():
        file, _, inner = text.partition("::")
        if dataset is not None and dataset != inner:
            raise ReadError(f"{file}: dataset given twice ({inner!r} in the path, "
                            f"{dataset!r} as an option)")
        return Path(file), inner
    return Path(text), dataset


NONFINITE_MODES = ("error", "fill")
BAD_SPACING_MODES = ("error", "unknown")
#: set to 1 to skip the free-space checks of the writers (e.g. on filesystems that misreport)
SKIP_SPACE_CHECK_ENV = "MEDRESTORE_SKIP_SPACE_CHECK"


def read_image(path: str | os.PathLike, reader: str | None = None, *,
               nonfinite: str = "error", fill_value: float | None = None,
               bad_spacing: str = "error", **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file (or DICOM series directory) → ``(array, meta)``.

    ``reader`` forces a format by name (``"dicom"``, ``"nifti"``, ``"png"``, ``"jpeg"``,
    ``"bmp"``, ``"tiff"``, ``"jpeg2000"``, ``"hdf5"``); otherwise a directory is a DICOM series,
    a file is recognised by its suffix, and failing that by its first bytes (DICOM preamble,
    PNG/JPEG/TIFF/HDF5/JPEG 2000/NIfTI signatures). ``kwargs`` are the reader's options
    (e.g. ``series_uid=``, ``recursive=``, ``allow_uneven=`` for DICOM; ``dataset=`` for HDF5,
    also spelled ``"file.h5::group/name"``; ``alpha="drop"`` for PNG).

    Options of every format:

    - ``nonfinite``: a float image with NaN or ±inf pixels is a :class:`ReadError` naming the
      counts (``"error"``, the default); ``"fill"`` replaces them with ``fill_value`` (``None``:
      the median of the finite pixels) and records the count in ``meta["nonfinite_filled"]``.
      An image without a single finite pixel is an error either way.
    - ``bad_spacing``: a spacing that is not > 0 (e.g. a NIfTI ``pixdim`` of 0 or -1) is a
      :class:`ReadError` (``"error"``, the default); ``"unknown"`` reads such axes as unknown
      (``None``) and notes it in ``meta["warnings"]``.
    """
    if nonfinite not in NONFINITE_MODES:
        raise ReadError(f"{path}: nonfinite must be one of {', '.join(NONFINITE_MODES)}, "
                        f"got {nonfinite!r}")
    if bad_spacing not in BAD_SPACING_MODES:
        raise ReadError(f"{path}: bad_spacing must be one of {', '.join(BAD_SPACING_MODES)}, "
                        f"got {bad_spacing!r}")
    if fill_value is not None:
        try:
            fill_value = float(fill_value)
        except (TypeError, ValueError):
            raise ReadError(f"{path}: fill_value must be a number or None, got "
                            f"{fill_value!r}") from None
        if not math.isfinite(fill_value):
            raise ReadError(f"{path}: fill_value must be finite, got {fill_value}")
    p, dataset = split_dataset_path(path, kwargs.pop("dataset", None))
    if dataset is not None:
        kwargs["dataset"] = dataset
    if not p.exists():
        raise ReadError(f"{p}: no such file or directory")
    if reader is not None:
        name = get_reader(reader).name
    elif p.is_dir() and kwargs.get("recursive"):
        name = "dicom"                      # DICOM files may all sit in sub-folders
    else:
        name = detect_format(p)
    if p.is_dir() and not IMAGE_FORMATS.meta(name)["directory"]:
        raise ReadError(f"{p}: is a directory; the {name} reader needs a file")
    impl = get_reader(name)
    _check_options(p, name, kwargs, impl.read_options, ReadError)
    array, meta = impl.read(p, **kwargs)
    array = _check_nonfinite(p, array, meta, nonfinite, fill_value)
    _check_spacing(p, meta, bad_spacing)
    return array, meta


def _check_nonfinite(path: Path, array: np.ndarray, meta: dict[str, Any], mode: str,
                     fill_value: float | None) -> np.ndarray:
    """NaN / ±inf pixels: an error naming the counts, or filled (``mode="fill"``)."""
    if array.dtype.kind not in "fc":    # integer and bool pixels cannot be NaN or inf
        return array
    finite = np.isfinite(array)
    if finite.all():
        return array
    n_bad = int(finite.size - np.count_nonzero(finite))
    nan = int(np.count_nonzero(np.isnan(array)))
    real = array.real if array.dtype.kind == "c" else array
    pos, neg = int(np.count_nonzero(np.isposinf(real))), int(np.count_nonzero(np.isneginf(real)))
    counts = f"NaN {nan}, +inf {pos}, -inf {neg}"
    if n_bad == finite.size:
        raise ReadError(f"{path}: no finite pixel at all ({n_bad} pixels: {counts}); there is "
                        "nothing to restore or to fill from")
    if mode == "error":
        raise ReadError(f"{path}: {n_bad} of {finite.size} pixels are not finite ({counts}); "
                        "pass nonfinite='fill' (medrestore-prepare: --nonfinite fill) to replace "
                        "them with fill_value, by default the median of the finite pixels")
    value = float(np.median(array[finite])) if fill_value is None else fill_value
    if not array.flags.writeable:
        array = array.copy()
    array[~finite] = value
    meta["nonfinite_filled"] = n_bad
    return array


def _spacing_label(meta: Mapping[str, Any]) -> str:
    """How the reader's format names the values a bad spacing came from."""
    values = ["None" if v is None else f"{v:g}" for v in meta["spacing"]]
    if meta.get("format") == "nifti" and len(values) == 3:
        return f"pixdim[1:4] [{', '.join(values[::-1])}] mm"     # spacing is pixdim reversed
    source = {"dicom": "PixelSpacing / slice spacing", "hdf5": "spacing attribute",
              "tiff": "GeoTIFF ModelPixelScale"}.get(str(meta.get("format")), "spacing")
    return f"{source} (spacing [{', '.join(values)}] mm, axes {meta.get('axes')})"


def _check_spacing(path: Path, meta: dict[str, Any], mode: str) -> None:
    """Spacings must be finite and > 0; ``mode="unknown"`` turns bad axes into ``None``."""
    spacing = meta.get("spacing")
    if not spacing:
        return
    bad = [i for i, s in enumerate(spacing)
           if s is not None and not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0)]
    if not bad:
        return
    if mode == "error":
        raise ReadError(f"{path}: voxel spacing must be > 0, got {_spacing_label(meta)}; pass "
                        "bad_spacing='unknown' (medrestore-prepare: --bad-spacing unknown) to "
                        "read it with that spacing unknown")
    fixed = [None if i in bad else s for i, s in enumerate(spacing)]
    meta["spacing"] = None if all(s is None for s in fixed) else fixed
    meta.setdefault("warnings", []).append(
        f"spacing {list(spacing)} has values that are not > 0: read as unknown")


def write_image(array: np.ndarray, meta: Mapping[str, Any] | None, path: str | os.PathLike, *,
                format: str | None = None, overwrite: bool = False, **options: Any) -> Path:
    """Write ``array`` (``C×H×W``, ``Z×H×W`` or ``H×W``) with its ``meta``; returns the path.

    The format is ``format`` if given, else the one implied by the suffix of ``path``, else
    ``meta["format"]``. When the format does not come from the suffix and ``path`` has no
    suffix of that format, the format's default suffix is appended (except DICOM, which writes
    a series directory unless the path ends in ``.dcm``). An existing file is refused unless
    ``overwrite=True``; files are written under a temporary name and renamed on success.
    ``options`` go to the writer (e.g. ``quality=`` for JPEG, ``value_range=`` to quantise
    floats for 8/16-bit formats, ``dtype=`` for NIfTI, ``dataset=`` for HDF5).
    """
    meta = dict(meta or {})
    p, dataset = split_dataset_path(path, options.pop("dataset", None))
    if dataset is not None:
        options["dataset"] = dataset
    by_suffix = format_for_suffix(p)
    if format is not None:
        name = format.lower()
        if name not in IMAGE_FORMATS:
            raise WriteError(f"{p}: unknown image format {format!r}; known formats: "
                             f"{', '.join(IMAGE_FORMATS)}")
        if by_suffix is not None and by_suffix != name:
            raise WriteError(f"{p}: suffix says {by_suffix} but format={format!r} was asked; "
                             f"use a {' / '.join(suffixes_of(name))} name")
    elif by_suffix is not None:
        name = by_suffix
    elif meta.get("format") in IMAGE_FORMATS:
        name = str(meta["format"])
    else:
        raise WriteError(f"{p}: cannot tell the format (no known suffix, no format= and no "
                         f"meta['format']); supported suffixes: {' '.join(supported_suffixes())}")
    if by_suffix is None and not IMAGE_FORMATS.meta(name)["directory"]:
        p = p.with_name(p.name + suffixes_of(name)[0])
    impl = get_reader(name)
    _check_options(p, name, options, impl.write_options, WriteError)
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise WriteError(f"{p}: expected a C×H×W, Z×H×W or H×W array, got shape {arr.shape}")
    try:
        return impl.write(arr, meta, p, overwrite=overwrite, **options)
    except OSError as exc:
        if is_disk_full(exc):
            raise WriteError(write_failed(p, exc)) from None
        raise WriteError(f"{p}: cannot write {name} ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None


def _check_options(path: Path, name: str, options: Mapping[str, Any],
                   allowed: tuple[str, ...], error: type[MedrestoreError]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise error(f"{path}: unknown option(s) {', '.join(unknown)} for the {name} format "
                    f"(accepted: {accepted})")


# ----------------------------------------------------------------------------- disk space
# EFBIG (a file-size limit, e.g. ``ulimit -f``) and EDQUOT (a quota) end a write like a full disk
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means "no room left to write" (full disk, quota, size limit)."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def _existing_folder(path: str | os.PathLike) -> Path:
    """``path``'s folder, or its nearest existing ancestor (the output folder may not exist yet)."""
    folder = Path(os.path.abspath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem that would hold ``path`` (None when it cannot be told)."""
    try:
        return int(shutil.disk_usage(_existing_folder(path)).free)
    except OSError:
        return None


def write_failed(path: str | os.PathLike, exc: BaseException) -> str:
    """One-line message for an OSError while writing ``path``, with the free space left."""
    reason = getattr(exc, "strerror", None) or one_line(exc)
    free = free_bytes(path)
    where = f"{free:,} bytes free in {_existing_folder(path)}" if free is not None else \
        "free space unknown"
    return f"{path}: write failed: {reason} ({where})"


def ensure_free_space(path: str | os.PathLike, needed: int, error: type[MedrestoreError],
                      what: str = "") -> None:
    """Refuse, before any slow work, to write about ``needed`` bytes to ``path`` when its
    filesystem has less free. ``MEDRESTORE_SKIP_SPACE_CHECK=1`` skips the check (the estimate
    is rough; a write that then runs out of space still fails cleanly)."""
    if os.environ.get(SKIP_SPACE_CHECK_ENV, "").strip() not in ("", "0"):
        return
    free = free_bytes(path)
    if free is None or free >= needed:
        return
    raise error(f"{_existing_folder(path)}: not enough free space for {path}"
                + (f" ({what})" if what else "")
                + f": {free:,} bytes free, about {int(needed):,} needed; free some space, write "
                f"elsewhere, or set {SKIP_SPACE_CHECK_ENV}=1 to try anyway")


# ----------------------------------------------------------------------------- helpers
def one_line(exc: object, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def base_meta(fmt: str, path: str | os.PathLike, array: np.ndarray, *, dtype: Any,
              axes: str, spacing: list[float | None] | None) -> dict[str, Any]:
    """The keys every reader fills, in a fixed order."""
    if spacing is not None:
        spacing = [None if s is None else float(s) for s in spacing]
        if all(s is None for s in spacing):
            spacing = None
    return {"format": fmt, "path": str(path), "shape": [int(n) for n in array.shape],
            "dtype": str(np.dtype(dtype)), "axes": axes, "spacing": spacing}


def affine_to_ras(affine: Any, space: str) -> list[list[float]]:
    """RAS version of an affine given in ``space`` (``"RAS"`` or ``"LPS"``)."""
    a = np.asarray(affine, dtype=np.float64)
    if space.upper() == "LPS":
        a = np.asarray(LPS_TO_RAS) @ a
    elif space.upper() != "RAS":
        raise ValueError(f"affine space must be RAS or LPS, got {space!r}")
    return a.tolist()


def meta_affine(meta: Mapping[str, Any], space: str) -> np.ndarray | None:
    """The meta's affine expressed in ``space`` (``"RAS"`` / ``"LPS"``), or None."""
    if meta.get("affine_ras") is not None:
        ras = np.asarray(meta["affine_ras"], dtype=np.float64)
    elif meta.get("affine") is not None:
        src = str(meta.get("affine_space") or ("RAS" if meta.get("format") == "nifti" else ""))
        if src not in ("RAS", "LPS"):
            return None
        ras = np.asarray(affine_to_ras(meta["affine"], src))
    else:
        return None
    if ras.shape != (4, 4) or not np.isfinite(ras).all():
        return None
    return ras if space.upper() == "RAS" else np.asarray(LPS_TO_RAS) @ ras


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool, *,
                  directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    The temporary path has the same name (inside a hidden sibling folder), so libraries that
    choose the encoding by suffix (nibabel's ``.nii.gz``, Pillow) behave as for the final name.
    An existing file, or a non-empty directory when ``directory`` is set, is refused unless
    ``overwrite``; nothing is left behind when the writer fails.
    """
    p = Path(path)
    if p.exists() or p.is_symlink():
        if directory and p.is_dir() and not any(p.iterdir()):
            pass                                   # an empty output folder may be reused
        elif not overwrite:
            what = ("non-empty directory" if directory else "directory") if p.is_dir() else "file"
            raise WriteError(f"{p}: {what} already exists; pass overwrite=True to replace it")
        elif p.is_dir() and not directory:
            raise WriteError(f"{p}: is a directory; give a file name")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent))
    target = tmp / p.name
    try:
        yield target
        if not target.exists():
            raise WriteError(f"{p}: writer produced no output")
        if p.is_dir() and not p.is_symlink():
            os.replace(p, tmp / ".replaced")       # rename() cannot replace a non-empty folder
        os.replace(target, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_DROP = object()


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.dtype):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").rstrip("\x00")
        except UnicodeDecodeError:
            return _DROP
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            j = _to_json(v)
            if j is not _DROP:
                out[str(k)] = j
        return out
    if isinstance(value, (list, tuple)):
        items = [_to_json(v) for v in value]
        return [None if v is _DROP else v for v in items]
    return _DROP


def jsonable_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-serialisable copy of ``meta``.

    numpy scalars/arrays become Python numbers/lists, paths strings, NaN/inf ``None``; values
    with no JSON form (the nibabel ``header`` object, complex numbers) are dropped.
    """
    out = _to_json(meta)
    return out if isinstance(out, dict) else {}
