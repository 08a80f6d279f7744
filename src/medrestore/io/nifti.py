"""NIfTI-1/-2 volumes (``.nii``, ``.nii.gz``) through nibabel.

Reading returns ``Z×H×W`` float32 with nibabel's ``scl_slope``/``scl_inter`` applied, transposed
from nibabel's ``(i, j, k)`` to ``(k, j, i)`` so that ``vol[z]`` is one slice and
``vol[z, y, x] == data[x, y, z]``. The affine is nibabel's (sform if set, else qform) and maps
``(i, j, k) = (x, y, z)`` to RAS millimetres; it is stored unchanged. A 2-D file becomes
``1×H×W``; a 4-D file is refused unless its 4th axis has length 1. ``meta["header"]`` is the
nibabel header object (not JSON; :func:`medrestore.io.base.jsonable_meta` drops it).
``spacing`` is ``pixdim[1:4]`` as stored (in mm), reversed: a zero or negative pixdim is passed
on, and :func:`~medrestore.io.base.read_image` refuses it unless ``bad_spacing="unknown"``.

Writing inverts the transpose exactly and keeps the affine (``meta["affine_ras"]``, or a DICOM
LPS affine converted to RAS) and, when the meta carries one, a copy of the header. The data are
stored as float32 unless ``dtype=`` (or ``meta["write_dtype"]``) asks otherwise; integer arrays
keep their dtype. ``.nii.gz`` is gzip-compressed by nibabel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    meta_affine,
    one_line,
)

_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


class NiftiReader(ImageReader):
    name = "nifti"
    suffixes = (".nii.gz", ".nii")
    read_options = ()
    write_options = ("dtype", "description")

    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return read_nifti(path)

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, **options: Any) -> Path:
        return write_nifti(array, meta, path, overwrite=overwrite, **options)


def read_nifti(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NIfTI file → ``(Z×H×W float32, meta)``; see the module docstring."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise ReadError(f"{p}: no such file")
    try:
        # nibabel logs and "fixes" a zero / negative pixdim while loading (0 -> 1, -x -> x);
        # the raw values are read below and checked by read_image, so its log line is noise
        log = nib.imageglobals.logger
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            img = nib.load(p)
        finally:
            log.setLevel(level)
    except Exception as exc:   # nibabel raises ImageFileError, EOFError, gzip/zlib errors...
        raise ReadError(f"{p}: not a NIfTI file or unreadable header ({type(exc).__name__}: "
                        f"{one_line(exc)})") from None
    if not isinstance(img, nib.Nifti1Image):          # Nifti2Image subclasses Nifti1Image
        raise ReadError(f"{p}: nibabel reads this as {type(img).__name__}, not NIfTI")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        pass
    elif len(shape) >= 4:
        raise ReadError(f"{p}: {len(shape)}-D NIfTI of shape {shape} is not supported "
                        "(one 3-D volume per file; select a volume with nibabel's "
                        "img.slicer[..., t] and save it)")
    elif len(shape) < 2:
        raise ReadError(f"{p}: NIfTI of shape {shape} is not an image")
    try:
        data = img.get_fdata(dtype=np.float32)
    except Exception as exc:   # truncated data: EOFError, ValueError (mmap), zlib.error
        raise ReadError(f"{p}: truncated or unreadable NIfTI data ({type(exc).__name__}: "
                        f"{one_line(exc)})") from None
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    volume = np.ascontiguousarray(data.transpose(2, 1, 0))
    header = img.header
    unit = header.get_xyzt_units()[0] or "unknown"
    to_mm = _TO_MM.get(unit, 1.0)
    # pixdim as stored, zero or negative included (read_image refuses those unless
    # bad_spacing="unknown"); only the unused k pixdim of a 2-D file says nothing
    spacing = [v * to_mm for v in _raw_pixdim(p, img)]
    if len(shape) == 2 and not spacing[2] > 0:
        spacing[2] = None
    spacing = spacing[::-1]                                                # (k, j, i) order
    # nibabel moves scl_slope/scl_inter from the loaded header into the array proxy
    slope, inter = getattr(img.dataobj, "slope", None), getattr(img.dataobj, "inter", None)
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = base_meta("nifti", p, volume, dtype=header.get_data_dtype(), axes=AXES_3D,
                     spacing=spacing)
    meta.update({
        "affine": affine.tolist(),
        "affine_space": "RAS",
        "affine_ras": affine.tolist(),
        "axcodes": "".join(str(c) for c in nib.aff2axcodes(affine)),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "rescale": {"slope": None if slope is None else float(slope),
                    "intercept": None if inter is None else float(inter)},
        "spatial_unit": unit,
        "ndim_on_disk": len(shape),
        "header": header.copy(),
    })
    return volume, meta


def _raw_pixdim(path: Path, img) -> list[float]:
    """``pixdim[1:4]`` as written in the file, before nibabel's load-time fixes."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
        return [float(v) for v in raw["pixdim"][1:4]]
    except Exception:   # unreadable twice is unlikely; nibabel's (fixed) values are the fallback
        return [float(v) for v in img.header["pixdim"][1:4]]


def write_nifti(array: np.ndarray, meta: Mapping[str, Any] | None, path: str | Path, *,
                overwrite: bool = False, dtype: Any = None, description: str | None = None) -> Path:
    """Write ``Z×H×W`` (or ``H×W``) as NIfTI, inverting :func:`read_nifti`'s transpose.

    The affine is ``meta``'s (RAS; a DICOM LPS affine is converted), else a diagonal of the
    spacing, else the identity. The output dtype is ``dtype``, else ``meta["write_dtype"]``,
    else the array's own dtype for integer arrays and float32 otherwise (nibabel chooses
    ``scl_slope``/``scl_inter`` when float data go to an integer dtype). ``description``
    goes to the header's ``descrip`` field (80 bytes, cut to fit), e.g. the restoring model."""
    import nibabel as nib

    p = Path(path)
    meta = dict(meta or {})
    vol = np.asarray(array)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3:
        raise WriteError(f"{p}: NIfTI writer needs a Z×H×W volume or H×W image, got shape "
                         f"{vol.shape}")
    if meta.get("axes") == AXES_2D and vol.shape[0] > 1:
        raise WriteError(f"{p}: a {vol.shape[0]}-channel C×H×W image is not a volume; write it "
                         "as TIFF, or pass meta with axes='zyx' if the channels are slices")
    out_dtype = np.dtype(dtype if dtype is not None else meta.get("write_dtype")
                         or (vol.dtype if vol.dtype.kind in "biu" else np.float32))
    if vol.dtype.kind == "c" or out_dtype.kind == "c":
        raise WriteError(f"{p}: complex data are not written as NIfTI")
    affine = meta_affine(meta, "RAS")
    if affine is None:
        sp = meta.get("spacing") if meta.get("axes", AXES_3D) == AXES_3D else None
        affine = np.eye(4)
        if sp and len(sp) == 3 and all(s for s in sp):
            affine[:3, :3] = np.diag([float(sp[2]), float(sp[1]), float(sp[0])])
    data = vol.transpose(2, 1, 0)
    if meta.get("ndim_on_disk") == 2 and data.shape[2] == 1:
        data = data[:, :, 0]
    header = meta.get("header")
    cls = nib.Nifti1Image
    if isinstance(header, nib.Nifti2Header):
        cls = nib.Nifti2Image
    if isinstance(header, nib.Nifti1Header):
        header = header.copy()
        header.set_slope_inter(np.nan, np.nan)          # let nibabel pick scaling for new data
    else:
        header = None
    if vol.dtype.kind == "b":
        data = data.astype(np.uint8)
    img = cls(np.ascontiguousarray(data), affine, header=header)
    img.set_data_dtype(out_dtype)
    if header is None or img.header.get_xyzt_units()[0] in (None, "unknown"):
        img.header.set_xyzt_units(xyz="mm")       # our spacings and affines are millimetres
    # sform/qform codes: keep the source's when it had them, else mark as scanner-aligned
    if description is not None:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    img.set_sform(affine, code=int(meta.get("sform_code") or 1) if header is not None else 1)
    img.set_qform(affine, code=int(meta.get("qform_code") or 1) if header is not None else 1)
    with atomic_output(p, overwrite) as tmp:
        nib.save(img, tmp)
    return p
