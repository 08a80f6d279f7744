"""DICOM: one file (:func:`read_dicom`), a series (:func:`read_dicom_series`) and writers.

:func:`read_dicom` applies the modality transform (``RescaleSlope``/``RescaleIntercept``, or a
Modality LUT), so CT comes back in Hounsfield units. Enhanced multi-frame objects keep their
rescale and geometry in functional-group sequences; those are read too (per frame when they
differ). Any file that cannot give pixels -- not DICOM, truncated, no pixel data, a compression
without an installed decoder -- raises :class:`DicomError` with one line naming the file.

:func:`read_dicom_series` stacks the files of one series into ``Z×H×W`` float32 in physical
units, sorted by position along the slice normal (row cosine × column cosine of
``ImageOrientationPatient``). Its affine follows DICOM patient coordinates (LPS) and maps the
reversed index ``(x=column, y=row, z=slice)``; ``affine_ras`` is the same in RAS. Gantry tilt is
not resampled: the affine then uses the mean step between slice origins (a sheared affine).

:func:`write_dicom_series` / :func:`write_dicom` store physical values as 16-bit integers with a
``RescaleSlope``/``RescaleIntercept`` chosen to fit (integer-valued data that fit int16 are
stored exactly with slope 1), copying each slice's header from its reference file when there is
one, else building a minimal CT Image (modality CT with full geometry) or Secondary Capture
dataset. Every written series gets new Series/SOP Instance UIDs and ``ImageType`` DERIVED.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from medrestore.io.base import (
    AXES_2D,
    AXES_3D,
    ImageReader,
    ReadError,
    WriteError,
    affine_to_ras,
    atomic_output,
    base_meta,
    is_dicom_file,
    meta_affine,
    one_line,
    suffixes_of,
)


class DicomError(ReadError):
    """A file (or set of files) that cannot be read as a DICOM image or series.

    A :class:`~medrestore.io.base.ReadError`, hence a ``MedrestoreError`` and a ``ValueError``."""


_UID_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = [value]
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _group_item(ds, group: str, seq: str):
    """First item of ``ds.<group>[0].<seq>`` (functional groups), or None."""
    outer = ds.get(group)
    if not outer:
        return None
    inner = outer[0].get(seq)
    return inner[0] if inner else None


def _frame_item(ds, frame: int, seq: str):
    """Per-frame functional group item, else the shared one, else None."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        inner = per_frame[frame].get(seq)
        if inner:
            return inner[0]
    return _group_item(ds, "SharedFunctionalGroupsSequence", seq)


def _rescale(ds, n_frames: int) -> tuple[list[float], list[float], str | None]:
    """Slope and intercept per frame (top level wins; else functional groups; else 1, 0)."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = _float(ds.get("RescaleSlope")) or 1.0
        inter = _float(ds.get("RescaleIntercept")) or 0.0
        return [slope] * n_frames, [inter] * n_frames, ds.get("RescaleType")
    slopes, inters, rtype = [], [], None
    for f in range(n_frames):
        item = _frame_item(ds, f, "PixelValueTransformationSequence")
        slopes.append(_float(item.get("RescaleSlope")) if item is not None else None)
        inters.append(_float(item.get("RescaleIntercept")) if item is not None else None)
        if item is not None and rtype is None:
            rtype = item.get("RescaleType")
    slopes = [1.0 if s is None else s for s in slopes]
    inters = [0.0 if i is None else i for i in inters]
    return slopes, inters, rtype


def _geometry(ds, n_frames: int) -> dict[str, Any]:
    spacing = _floats(ds.get("PixelSpacing"))
    thickness = _float(ds.get("SliceThickness"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    position = _floats(ds.get("ImagePositionPatient"))
    measures = _frame_item(ds, 0, "PixelMeasuresSequence")
    if measures is not None:
        spacing = spacing or _floats(measures.get("PixelSpacing"))
        thickness = thickness if thickness is not None else _float(measures.get("SliceThickness"))
    if orientation is None:
        item = _frame_item(ds, 0, "PlaneOrientationSequence")
        orientation = _floats(item.get("ImageOrientationPatient")) if item is not None else None
    positions = None
    if position is None and "PerFrameFunctionalGroupsSequence" in ds:
        found = []
        for f in range(n_frames):
            item = _frame_item(ds, f, "PlanePositionSequence")
            found.append(_floats(item.get("ImagePositionPatient")) if item is not None else None)
        if any(p is not None for p in found):
            positions = found
            position = found[0]
    return {
        "pixel_spacing": spacing[:2] if spacing else None,   # (row, column) in mm
        "slice_thickness": thickness,
        "image_position_patient": position,
        "image_orientation_patient": orientation,
        "frame_positions": positions,
    }


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM file -> ``(array, meta)``.

    ``array`` is float32 in physical units: ``H×W`` for one frame, ``F×H×W`` for multi-frame
    (``…×3`` is kept for colour images, which have no physical unit). ``meta`` holds
    ``modality``, ``pixel_spacing`` (mm, row/column), ``slice_thickness``,
    ``image_position_patient``, ``image_orientation_patient`` (plus ``frame_positions`` for
    enhanced multi-frame files), the study/series/SOP instance UIDs where present,
    ``rescale_slope``/``rescale_intercept`` (lists when they differ per frame), ``unit``,
    ``photometric``, ``shape``, ``n_frames``, ``path`` and any reader ``warnings``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.is_file():
        raise DicomError(f"{p}: no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p)
        except InvalidDicomError as exc:
            raise DicomError(f"{p}: not a DICOM file ({one_line(exc)})") from None
        except Exception as exc:  # truncated headers surface as EOFError, struct.error, ...
            raise DicomError(f"{p}: unreadable DICOM header ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
        if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise DicomError(f"{p}: DICOM file has no pixel data (truncated after "
                             f"{p.stat().st_size} bytes, or not an image: SOP class "
                             f"{ds.get('SOPClassUID', 'unknown')})")
        try:
            raw = ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            raise DicomError(f"{p}: cannot decode pixel data (transfer syntax {name}; "
                             f"{type(exc).__name__}: {one_line(exc)})") from None
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        arr = raw.astype(np.float64)
        if n_frames == 1 and arr.ndim == (2 if samples == 1 else 3):
            arr = arr[None]                                  # uniform F×H×W(×C) while rescaling
        if "ModalityLUTSequence" in ds and samples == 1:
            from pydicom.pixels import apply_modality_lut

            arr = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64).reshape(arr.shape)
            slopes, inters, rtype = [1.0] * n_frames, [0.0] * n_frames, "LUT"
        elif samples == 1:
            slopes, inters, rtype = _rescale(ds, n_frames)
            arr = arr * np.asarray(slopes)[:, None, None] + np.asarray(inters)[:, None, None]
        else:
            slopes, inters, rtype = [1.0] * n_frames, [0.0] * n_frames, None
        if n_frames == 1:
            arr = arr[0]

    modality = str(ds.get("Modality", "")) or None
    unit = str(rtype) if rtype and rtype != "US" else None
    if unit is None and modality == "CT" and samples == 1:
        unit = "HU"
    meta: dict[str, Any] = {
        "path": str(p),
        "modality": modality,
        **_geometry(ds, n_frames),
        "rescale_slope": slopes[0] if len(set(slopes)) == 1 else slopes,
        "rescale_intercept": inters[0] if len(set(inters)) == 1 else inters,
        "unit": unit,
        "photometric": str(ds.get("PhotometricInterpretation", "")) or None,
        "n_frames": n_frames,
        "shape": list(arr.shape),
    }
    for tag in _UID_TAGS:
        if tag in ds:
            meta[tag] = str(ds.get(tag))
    if "PixelPaddingValue" in ds:
        meta["pixel_padding_value"] = _float(ds.get("PixelPaddingValue"))
    if caught:
        meta["warnings"] = sorted({one_line(w.message) for w in caught})
    return arr.astype(np.float32), meta




# ============================================================================ series reading
DICOM_SUFFIXES = suffixes_of("dicom")    # the format registry's list, not a copy
DUPLICATE_TOL_MM = 1e-3      # slices closer than this along the normal are the same position


def dicom_files_in(directory: str | os.PathLike, *, recursive: bool = False,
                   limit: int | None = None) -> list[Path]:
    """DICOM files of a directory, sorted by path: a DICOM suffix or the ``DICM`` preamble.

    Hidden files and ``DICOMDIR`` (an index, not an image) are skipped. Files with a DICOM
    suffix are kept even without a preamble, so a truncated slice fails loudly instead of
    silently leaving a gap in the series."""
    d = Path(directory)
    found: list[Path] = []
    walker = sorted(d.rglob("*")) if recursive else sorted(d.iterdir())
    for f in walker:
        if f.name.startswith(".") or f.name.upper() == "DICOMDIR" or not f.is_file():
            continue
        if f.suffix.lower() in DICOM_SUFFIXES or is_dicom_file(f):
            found.append(f)
            if limit is not None and len(found) >= limit:
                break
    return found


@dataclass
class _Slice:
    label: str                         # file path (plus " frame k" inside a multi-frame file)
    rows: int
    cols: int
    orientation: list[float] | None
    position: list[float] | None
    pixel_spacing: list[float] | None
    instance: int | None


def _header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise DicomError(f"{path}: not a DICOM file ({one_line(exc)})") from None
    except Exception as exc:  # truncated headers surface as EOFError, struct.error, ...
        raise DicomError(f"{path}: unreadable DICOM header ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _pixel_spacing(ds) -> list[float] | None:
    values = _floats(ds.get("PixelSpacing"))
    return values[:2] if values and len(values) >= 2 else None


def _stored_dtype(ds) -> str:
    bits = _int(ds.get("BitsAllocated")) or 16
    if bits == 1:
        return "bool"
    signed = _int(ds.get("PixelRepresentation")) == 1
    return f"{'int' if signed else 'uint'}{bits}"


def _collect(path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
             recursive: bool) -> tuple[list[Path], Path]:
    if isinstance(path_or_files, (str, os.PathLike)):
        p = Path(path_or_files)
        if p.is_dir():
            files = dicom_files_in(p, recursive=recursive)
            if not files:
                raise DicomError(f"{p}: no DICOM files in this directory"
                                 + ("" if recursive else " (pass recursive=True to search "
                                    "sub-folders)"))
            return files, p
        if not p.is_file():
            raise DicomError(f"{p}: no such file or directory")
        return [p], p
    files = [Path(f) for f in path_or_files]
    if not files:
        raise DicomError("read_dicom_series: empty list of files")
    for f in files:
        if not f.is_file():
            raise DicomError(f"{f}: no such file")
    common = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    return sorted(files), common


def _series_listing(groups: Mapping[str, list]) -> str:
    return ", ".join(f"{uid or '(no SeriesInstanceUID)'} ({len(v)} files)"
                     for uid, v in groups.items())


def _check_same(slices: Sequence[_Slice], source: Path, uid: str, what: str,
                key: Callable[[_Slice], Hashable], show: Callable[[Any], str]) -> None:
    """All slices share ``key``; else name the first slice that differs from the majority."""
    values = [key(s) for s in slices]
    common, count = Counter(values).most_common(1)[0]
    for s, v in zip(slices, values):
        if v != common:
            raise DicomError(f"{source}: inconsistent series {uid}: {s.label} has {what} "
                             f"{show(v)} but {count} other slice(s) have {show(common)}")


def _rounded(values: Sequence[float] | None, ndigits: int = 4) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(float(v), ndigits) + 0.0 for v in values)


def _normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    if orientation is None or len(orientation) != 6:
        return None
    n = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0.5 else None     # degenerate cosines: no usable normal


def _sort_slices(slices: Sequence[_Slice], source: Path, uid: str, *, allow_uneven: bool,
                 tolerance: float, fallback: str) -> tuple[list[int], str, float | None,
                                                          list[float] | None, list[str]]:
    """Order slices; returns (order, sort_by, z spacing, uneven gaps or None, warnings)."""
    notes: list[str] = []
    normal = _normal(slices[0].orientation)
    have_pos = all(s.position is not None and len(s.position) == 3 for s in slices)
    if normal is not None and have_pos:
        d = np.asarray([s.position for s in slices], float) @ normal
        order = [int(i) for i in np.argsort(d, kind="stable")]
        ds = d[order]
        if len(slices) == 1:
            return order, "position", None, None, notes
        gaps = np.diff(ds)
        dup = np.flatnonzero(gaps < DUPLICATE_TOL_MM)
        if dup.size:
            a, b = slices[order[dup[0]]], slices[order[dup[0] + 1]]
            raise DicomError(f"{source}: series {uid} has two slices at the same position "
                             f"({ds[dup[0]]:.4g} mm along the slice normal): {a.label} and "
                             f"{b.label}")
        med = float(np.median(gaps))
        dev = float(np.abs(gaps - med).max())
        uneven = None
        if dev > tolerance * med:
            msg = (f"uneven slice spacing in series {uid}: gaps {gaps.min():.4g} to "
                   f"{gaps.max():.4g} mm (median {med:.4g} mm, tolerance {tolerance:.1%})")
            if not allow_uneven:
                raise DicomError(f"{source}: {msg}; missing slices? pass allow_uneven=True to "
                                 "read it anyway")
            notes.append(msg + "; spacing reports the median gap")
            uneven = [float(g) for g in gaps]
        return order, "position", med, uneven, notes
    missing = "ImageOrientationPatient" if normal is None else "ImagePositionPatient"
    numbers = [s.instance for s in slices]
    if len(slices) > 1 and all(n is not None for n in numbers) and len(set(numbers)) == len(
            numbers):
        notes.append(f"{missing} missing: slices sorted by InstanceNumber")
        return sorted(range(len(slices)), key=lambda i: numbers[i]), "instance_number", None, \
            None, notes
    if len(slices) > 1:
        notes.append(f"{missing} missing and InstanceNumber absent or repeated: slices kept "
                     f"in {fallback.replace('_', ' ')}")
    return list(range(len(slices))), fallback, None, None, notes


def read_header(path: str | os.PathLike):
    """One file's DICOM header, no pixel data (one-line :class:`DicomError` otherwise)."""
    return _header(Path(path))


def series_headers(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The slices of a one-series folder from their headers only (no pixel is decoded, so
    converter discovery stays fast), sorted along the slice normal exactly as
    :func:`read_dicom_series` sorts them, with the same duplicate-position tolerance
    (``DUPLICATE_TOL_MM``). Each entry: ``path``, ``position`` (mm along the normal),
    ``pixel_spacing``, ``thickness``, ``shape`` and the ``header``."""
    d = Path(folder)
    files = dicom_files_in(d) if d.is_dir() else []
    if not files:
        raise DicomError(f"{d}: no DICOM files in this folder")
    rows, uids = [], set()
    for f in files:
        ds = _header(f)
        uids.add(str(ds.get("SeriesInstanceUID", "")))
        position = _floats(ds.get("ImagePositionPatient"))
        if position is None or len(position) != 3:
            raise DicomError(f"{f}: no ImagePositionPatient (0020,0032); slices are ordered "
                             "by position")
        normal = _normal(_floats(ds.get("ImageOrientationPatient")))
        rows.append({"path": f,
                     "position": float(position[2]) if normal is None else
                     float(np.dot(position, normal)),   # no usable orientation: patient z
                     "pixel_spacing": _pixel_spacing(ds),
                     "thickness": _float(ds.get("SliceThickness")) or None,
                     "shape": (_int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0),
                     "header": ds})
    if len(uids) > 1:
        raise DicomError(f"{d}: folder mixes {len(uids)} DICOM series; expected one")
    rows.sort(key=lambda r: r["position"])
    gaps = np.diff([r["position"] for r in rows])
    dup = np.flatnonzero(gaps < DUPLICATE_TOL_MM)
    if dup.size:
        a, b = rows[int(dup[0])], rows[int(dup[0]) + 1]
        raise DicomError(f"{d}: {a['path'].name} and {b['path'].name} have the same slice "
                         f"position ({a['position']:.4g} mm along the slice normal)")
    return rows


def _affine_lps(orientation: Sequence[float] | None, first: Sequence[float] | None,
                last: Sequence[float] | None, n: int, pixel_spacing: Sequence[float] | None,
                dz: float | None) -> list[list[float]] | None:
    normal = _normal(orientation)
    if normal is None or first is None or last is None or not pixel_spacing:
        return None
    a = np.eye(4)
    a[:3, 0] = np.asarray(orientation[:3], float) * float(pixel_spacing[1])   # along a row: x
    a[:3, 1] = np.asarray(orientation[3:], float) * float(pixel_spacing[0])   # down a column: y
    if n > 1:
        a[:3, 2] = (np.asarray(last, float) - np.asarray(first, float)) / (n - 1)
    else:
        a[:3, 2] = normal * (dz if dz else 1.0)
    a[:3, 3] = np.asarray(first, float)
    return a.tolist()


def _one_or_list(values: Sequence[Any]) -> Any:
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) else [v])
    return flat[0] if len(set(map(str, flat))) == 1 else flat


def read_dicom_series(path_or_files: str | os.PathLike | Iterable[str | os.PathLike],
                      series_uid: str | None = None, *, recursive: bool = False,
                      allow_uneven: bool = False, spacing_tolerance: float = 0.01
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM series → ``(volume, meta)``, ``Z×H×W`` float32 in physical units (CT: HU).

    ``path_or_files`` is a directory (its DICOM files; sub-folders with ``recursive=True``), a
    list of files, or one file (a single slice → ``1×H×W``, a multi-frame file → frames as
    slices, a colour file → ``3×H×W`` with axes ``"chw"``). Files are grouped by
    ``SeriesInstanceUID``; several series need ``series_uid=``. Slices are sorted by their
    position along the slice normal (``sort_by="position"``); only when positions or the
    orientation are missing by ``InstanceNumber`` (``"instance_number"``), else file order.
    Slices must agree in size, orientation and pixel spacing, must not share a position, and
    their gaps must stay within ``spacing_tolerance`` (relative) of the median gap unless
    ``allow_uneven=True`` (then ``spacing`` holds the median and ``slice_gaps`` every gap).
    Rescale slope/intercept are applied per slice. See ``docs/io.md`` for the meta keys.
    """
    files, source = _collect(path_or_files, recursive)
    headers = [_header(f) for f in files]
    images = [(f, h) for f, h in zip(files, headers) if "Rows" in h and "Columns" in h]
    skipped = [str(f) for f, h in zip(files, headers) if not ("Rows" in h and "Columns" in h)]
    if not images:
        raise DicomError(f"{source}: none of the {len(files)} DICOM file(s) is an image "
                         "(no Rows/Columns)")
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for f, h in images:
        groups.setdefault(str(h.get("SeriesInstanceUID", "") or ""), []).append((f, h))
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomError(f"{source}: no series {series_uid}; series found: "
                             f"{_series_listing(groups)}")
        chosen = groups[series_uid]
    elif len(groups) > 1:
        raise DicomError(f"{source}: {len(groups)} series in one place; pass series_uid= one "
                         f"of: {_series_listing(groups)}")
    else:
        series_uid, chosen = next(iter(groups.items()))
    first = chosen[0][1]
    n_frames = [_int(h.get("NumberOfFrames")) or 1 for _, h in chosen]
    samples = [_int(h.get("SamplesPerPixel")) or 1 for _, h in chosen]
    if len(chosen) == 1 and (n_frames[0] > 1 or samples[0] > 1):
        return _read_single_file(chosen[0][0], first, allow_uneven, spacing_tolerance, skipped)
    for (f, _), nf, sp in zip(chosen, n_frames, samples):
        if nf > 1:
            raise DicomError(f"{f}: multi-frame file ({nf} frames) inside a series of "
                             f"{len(chosen)} files; read it on its own")
        if sp > 1:
            raise DicomError(f"{f}: colour DICOM ({sp} samples per pixel) cannot be stacked "
                             "into a volume")
    slices = [_Slice(str(f), int(h.Rows), int(h.Columns),
                     _floats(h.get("ImageOrientationPatient")),
                     _floats(h.get("ImagePositionPatient")),
                     _pixel_spacing(h),
                     _int(h.get("InstanceNumber"))) for f, h in chosen]
    uid = series_uid or "(no SeriesInstanceUID)"
    _check_same(slices, source, uid, "size", lambda s: (s.rows, s.cols),
                lambda v: f"{v[0]}×{v[1]}")
    _check_same(slices, source, uid, "ImageOrientationPatient",
                lambda s: _rounded(s.orientation), lambda v: str(list(v) if v else None))
    _check_same(slices, source, uid, "PixelSpacing", lambda s: _rounded(s.pixel_spacing),
                lambda v: str(list(v) if v else None))
    order, sort_by, dz, gaps, notes = _sort_slices(
        slices, source, uid, allow_uneven=allow_uneven, tolerance=spacing_tolerance,
        fallback="filename")
    chosen = [chosen[i] for i in order]
    slices = [slices[i] for i in order]
    planes, metas = [], []
    for f, _ in chosen:
        arr, m = read_dicom(f)
        if arr.shape != (slices[0].rows, slices[0].cols):
            raise DicomError(f"{f}: decoded to shape {arr.shape}, expected "
                             f"{slices[0].rows}×{slices[0].cols}")
        planes.append(arr)
        metas.append(m)
    volume = np.stack(planes).astype(np.float32, copy=False)
    if dz is None:                     # one slice, or no positions to measure gaps from
        dz = _float(first.get("SpacingBetweenSlices")) or _float(first.get("SliceThickness"))
    meta = _series_meta(volume, source, chosen, slices, metas, dz, sort_by, notes, skipped)
    if gaps is not None:
        meta["slice_gaps"] = gaps
    return volume, meta


def _series_meta(volume: np.ndarray, source: Path, chosen: list[tuple[Path, Any]],
                 slices: list[_Slice], metas: list[dict[str, Any]], dz: float | None,
                 sort_by: str, notes: list[str], skipped: list[str]) -> dict[str, Any]:
    first = chosen[0][1]
    ps = slices[0].pixel_spacing
    have_pos = all(s.position is not None for s in slices)
    positions = [s.position for s in slices] if have_pos else None
    affine = _affine_lps(slices[0].orientation, slices[0].position, slices[-1].position,
                         len(slices), ps, dz) if have_pos else None
    if affine is not None and len(slices) > 1:
        step = np.asarray(affine)[:3, 2]
        normal = _normal(slices[0].orientation)
        assert normal is not None
        if np.linalg.norm(step - (step @ normal) * normal) > 1e-3 * np.linalg.norm(step):
            notes.append("slice origins are not stacked along the slice normal (gantry tilt?): "
                         "the affine is sheared")
    meta = base_meta("dicom", source, volume, dtype=_stored_dtype(first), axes=AXES_3D,
                     spacing=[dz, *(ps if ps else [None, None])])
    warn = sorted({w for m in metas for w in m.get("warnings", [])})
    meta.update({
        "affine": affine,
        "affine_space": "LPS",
        "affine_ras": affine_to_ras(affine, "LPS") if affine is not None else None,
        "orientation": slices[0].orientation,
        "positions": positions,
        "modality": metas[0]["modality"],
        "unit": metas[0]["unit"],
        "rescale": {"slope": _one_or_list([m["rescale_slope"] for m in metas]),
                    "intercept": _one_or_list([m["rescale_intercept"] for m in metas])},
        "study_uid": _str_or_none(first.get("StudyInstanceUID")),
        "series_uid": _str_or_none(first.get("SeriesInstanceUID")),
        "sop_uids": [_str_or_none(h.get("SOPInstanceUID")) for _, h in chosen],
        "frame_of_reference_uid": _str_or_none(first.get("FrameOfReferenceUID")),
        "series_description": _str_or_none(first.get("SeriesDescription")),
        "slice_thickness": _float(first.get("SliceThickness")),
        "instance_numbers": [s.instance for s in slices],
        "files": [str(f) for f, _ in chosen],
        "sort_by": sort_by,
    })
    if skipped:
        meta["skipped_files"] = skipped
    if notes or warn:
        meta["warnings"] = notes + warn
    return meta


def _str_or_none(value: Any) -> str | None:
    return None if value is None or str(value) == "" else str(value)


def _read_single_file(path: Path, header, allow_uneven: bool, tolerance: float,
                      skipped: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
    """One multi-frame or colour file: frames become slices (sorted when positions allow)."""
    arr, m = read_dicom(path)
    samples = _int(header.get("SamplesPerPixel")) or 1
    if samples > 1:
        if m["n_frames"] > 1:
            raise DicomError(f"{path}: multi-frame colour DICOM is not supported as an image "
                             "(use read_dicom for the raw frames)")
        image = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        ps = m["pixel_spacing"]
        meta = base_meta("dicom", path, image, dtype=_stored_dtype(header), axes=AXES_2D,
                         spacing=list(ps) if ps else None)
        meta.update({"modality": m["modality"], "photometric": m["photometric"],
                     "study_uid": m.get("StudyInstanceUID"),
                     "series_uid": m.get("SeriesInstanceUID"),
                     "sop_uids": [m.get("SOPInstanceUID")], "files": [str(path)],
                     "bit_depth": _int(header.get("BitsStored"))})
        return image, meta
    frames = arr if arr.ndim == 3 else arr[None]
    positions = m["frame_positions"]
    slices = [_Slice(f"{path} frame {k}", frames.shape[1], frames.shape[2],
                     m["image_orientation_patient"], positions[k] if positions else None,
                     m["pixel_spacing"], None) for k in range(frames.shape[0])]
    order, sort_by, dz, gaps, notes = _sort_slices(
        slices, path, m.get("SeriesInstanceUID") or "(no SeriesInstanceUID)",
        allow_uneven=allow_uneven, tolerance=tolerance, fallback="frame_order")
    if dz is None:
        dz = _float(header.get("SpacingBetweenSlices")) or m["slice_thickness"]
    volume = np.ascontiguousarray(frames[order], dtype=np.float32)
    slices = [slices[i] for i in order]
    per_frame = [{"modality": m["modality"], "unit": m["unit"],
                  "rescale_slope": _pick(m["rescale_slope"], i),
                  "rescale_intercept": _pick(m["rescale_intercept"], i),
                  "warnings": m.get("warnings", [])} for i in order]
    meta = _series_meta(volume, path, [(path, header)] * len(order), slices, per_frame, dz,
                        sort_by, notes, skipped)
    meta["sop_uids"] = [m.get("SOPInstanceUID")]
    meta["files"] = [str(path)]
    meta["frame_order"] = order
    if gaps is not None:
        meta["slice_gaps"] = gaps
    return volume, meta


def _pick(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list) else value


class DicomReader(ImageReader):
    """DICOM files and series directories (see :func:`read_dicom_series`)."""

    name = "dicom"
    suffixes = DICOM_SUFFIXES
    read_options = ("series_uid", "recursive", "allow_uneven", "spacing_tolerance")
    write_options = ("series_description", "reference_files", "derivation_description")

    def reads_directory(self, path: Path) -> bool:
        return bool(dicom_files_in(path, recursive=False, limit=1))

    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return read_dicom_series(path, **options)

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, **options: Any) -> Path:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return write_dicom(array, meta, path, overwrite=overwrite, **options)
        return write_dicom_series(array, meta, path, overwrite=overwrite, **options)


# ============================================================================ writing
_STALE_TAGS = (   # describe the old stored values or encoding; wrong once pixels are replaced
    "ModalityLUTSequence", "SmallestImagePixelValue", "LargestImagePixelValue",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "PixelPaddingValue",
    "PixelPaddingRangeLimit", "FloatPixelData", "DoubleFloatPixelData", "PixelData",
    "NumberOfFrames", "PlanarConfiguration", "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
)


def _ds(value: float) -> str:
    """A float as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return str(format_number_as_ds(float(value)))


def _as_volume(array: np.ndarray, meta: Mapping[str, Any], out: Path) -> np.ndarray:
    vol = np.asarray(array)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or 0 in vol.shape:
        raise WriteError(f"{out}: DICOM writer needs a Z×H×W volume or H×W image, got shape "
                         f"{vol.shape}")
    if meta.get("axes") == AXES_2D and vol.shape[0] > 1:
        raise WriteError(f"{out}: a {vol.shape[0]}-channel image cannot be written as DICOM "
                         "(only grey slices are written; write colour as PNG or TIFF)")
    if np.iscomplexobj(vol) or not np.isfinite(vol).all():
        raise WriteError(f"{out}: volume has NaN, inf or complex values; DICOM stores integers")
    return vol.astype(np.float64)


def quantise_for_dicom(volume: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Stored integers plus (RescaleSlope, RescaleIntercept) as DICOM decimal strings.

    Integer-valued data that fit int16 are stored exactly as int16 (slope 1, intercept 0), or
    as uint16 with an integer intercept when their range fits 16 bits. Anything else is spread
    over uint16 with ``intercept = min`` and ``slope = (max - min) / 65000`` (a margin under
    65535 absorbs the decimal-string rounding): the error is at most ``slope / 2``, e.g.
    0.03 HU for a CT range of −1024 … 3071 HU."""
    v = np.asarray(volume, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    r = np.rint(v)
    if float(np.abs(v - r).max()) <= 1e-6:
        if lo >= -32768 and hi <= 32767:
            return r.astype(np.int16), "1", "0"
        if hi - lo <= 65535:
            return (r - lo).astype(np.uint16), "1", _ds(lo)
    slope = _ds((hi - lo) / 65000.0) if hi > lo else "1"
    intercept = _ds(lo)
    m, b = float(slope), float(intercept)
    stored = np.clip(np.rint((v - b) / m), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _set_pixels(ds, pixels: np.ndarray, slope: str, intercept: str) -> None:
    signed = pixels.dtype == np.int16
    ds.SamplesPerPixel = 1
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
        ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2" if signed else "<u2").tobytes()
    ds["PixelData"].VR = "OW"


def _file_meta(sop_class: str, sop_uid: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return fm


def _reference_headers(meta: Mapping[str, Any], reference_files: Sequence[Any] | None,
                       shape: tuple[int, int, int], out: Path) -> list[Any]:
    explicit = reference_files is not None
    files = list(reference_files) if explicit else list(meta.get("files") or [])
    if not files:
        return []
    hint = ("" if explicit else " (from meta['files']; pass reference_files=() to write a new "
            "series without references)")
    if len(files) != shape[0]:
        raise WriteError(f"{out}: {len(files)} reference file(s) for {shape[0]} slice(s){hint}")
    headers = []
    for f in files:
        if not Path(f).is_file():
            raise WriteError(f"{out}: reference file {f} does not exist{hint}")
        try:
            h = _header(Path(f))
        except DicomError as exc:
            raise WriteError(f"{out}: bad reference file: {exc}") from None
        if getattr(h, "original_encoding", (None, True))[1] is False:
            raise WriteError(f"{out}: reference file {f} uses the retired big-endian transfer "
                             f"syntax, which is not converted{hint}")
        if (_int(h.get("NumberOfFrames")) or 1) > 1 or (_int(h.get("SamplesPerPixel")) or 1) > 1:
            raise WriteError(f"{out}: reference file {f} is multi-frame or colour; only "
                             f"single-frame grey references can be reused{hint}")
        if (_int(h.get("Rows")), _int(h.get("Columns"))) != shape[1:]:
            raise WriteError(f"{out}: reference file {f} is {h.get('Rows')}×{h.get('Columns')} "
                             f"but the slices are {shape[1]}×{shape[2]}{hint}")
        headers.append(h)
    return headers


def _derived_from_reference(ds, pixels: np.ndarray, slope: str, intercept: str,
                            series_uid: str, description: str | None, when: datetime,
                            derivation: str | None = None) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset

    old_series = str(ds.get("SeriesInstanceUID", "") or "")
    old_sop, old_class = ds.get("SOPInstanceUID"), ds.get("SOPClassUID")
    for kw in _STALE_TAGS:
        if kw in ds:
            del ds[kw]
    sop_uid = _new_uid()
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.update(_file_meta(str(ds.get("SOPClassUID") or old_class), sop_uid))
    if "ImplementationVersionName" in ds.file_meta:
        del ds.file_meta.ImplementationVersionName
    _set_pixels(ds, pixels, slope, intercept)
    image_type = [str(v) for v in (ds.get("ImageType") or [])]
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.DerivationDescription = (derivation or "medrestore: pixel data replaced") + \
        f"; derived from series {old_series}"
    old_desc = str(ds.get("SeriesDescription", "") or "")
    ds.SeriesDescription = (description if description is not None
                            else f"{old_desc} (medrestore)".strip())[:64]
    if old_sop and old_class:
        src = Dataset()
        src.ReferencedSOPClassUID = old_class
        src.ReferencedSOPInstanceUID = old_sop
        ds.SourceImageSequence = [src]
    ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    return ds


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _target_geometry(meta: Mapping[str, Any], z: int) -> dict[str, Any]:
    """Orientation, positions and spacing to write, from whatever geometry the meta carries.

    Priority: DICOM ``orientation`` + ``positions`` (one per slice), else the affine (LPS, or
    RAS converted), else an axial default at the origin when all three spacings are known."""
    sp = meta.get("spacing") or []
    dz = dy = dx = None
    if len(sp) == 3:
        dz, dy, dx = sp
    elif len(sp) == 2:
        dy, dx = sp
    geo: dict[str, Any] = {}
    orient, pos = _floats(meta.get("orientation")), meta.get("positions")
    if (orient is not None and len(orient) == 6 and pos is not None and len(pos) == z
            and all(p is not None and len(p) == 3 for p in pos)):
        geo["orientation"] = orient
        geo["positions"] = [[float(c) for c in p] for p in pos]
    else:
        a = meta_affine(meta, "LPS")
        if a is not None:
            cx, cy, cz = a[:3, 0], a[:3, 1], a[:3, 2]
            nx, ny = float(np.linalg.norm(cx)), float(np.linalg.norm(cy))
            if nx > 0 and ny > 0:
                geo["orientation"] = [*(cx / nx).tolist(), *(cy / ny).tolist()]
                geo["positions"] = [(a @ np.array([0.0, 0.0, k, 1.0]))[:3].tolist()
                                    for k in range(z)]
                dx, dy = nx, ny
                normal = _normal(geo["orientation"])
                if normal is not None:
                    dz = abs(float(cz @ normal)) or dz
        elif dz and dy and dx:
            geo["orientation"] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            geo["positions"] = [[0.0, 0.0, k * float(dz)] for k in range(z)]
    if dy and dx:
        geo["pixel_spacing"] = [float(dy), float(dx)]
    if dz:
        geo["slice_thickness"] = float(meta.get("slice_thickness") or dz)
    return geo


def _new_dataset(pixels: np.ndarray, slope: str, intercept: str, k: int,
                 meta: Mapping[str, Any], geo: dict[str, Any], uids: dict[str, str],
                 description: str | None, when: datetime, derivation: str | None = None) -> Any:
    from pydicom.dataset import FileDataset
    from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

    modality = str(meta.get("modality") or "OT")
    complete = {"orientation", "positions", "pixel_spacing"} <= set(geo)
    sop_class = CTImageStorage if modality == "CT" and complete else SecondaryCaptureImageStorage
    sop_uid = _new_uid()
    ds = FileDataset("", {}, file_meta=_file_meta(sop_class, sop_uid), preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", ""
    ds.Modality = modality
    ds.SeriesNumber = None
    ds.InstanceNumber = k + 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    source = meta.get("format") or "array"
    ds.DerivationDescription = derivation or f"medrestore: written from {source} data"
    ds.SeriesDescription = (description if description is not None else "medrestore")[:64]
    if sop_class == CTImageStorage:
        ds.KVP, ds.AcquisitionNumber = None, None
    else:
        ds.ConversionType = "WSD"
    if "orientation" in geo:
        ds.FrameOfReferenceUID = uids["frame_of_reference"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [_ds(v) for v in geo["orientation"]]
        ds.ImagePositionPatient = [_ds(v) for v in geo["positions"][k]]
    if "pixel_spacing" in geo:
        ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
    if "slice_thickness" in geo:
        ds.SliceThickness = _ds(geo["slice_thickness"])
    _set_pixels(ds, pixels, slope, intercept)
    return ds


def _datasets_for(volume: np.ndarray, meta: Mapping[str, Any], out: Path,
                  series_description: str | None,
                  reference_files: Sequence[Any] | None,
                  derivation: str | None = None) -> list[Any]:
    vol = _as_volume(volume, meta, out)
    refs = _reference_headers(meta, reference_files, vol.shape, out)
    stored, slope, intercept = quantise_for_dicom(vol)
    when = datetime.now()
    series_uid = _new_uid()
    if refs:
        return [_derived_from_reference(h, stored[k], slope, intercept, series_uid,
                                        series_description, when, derivation)
                for k, h in enumerate(refs)]
    geo = _target_geometry(meta, vol.shape[0])
    uids = {"study": str(meta.get("study_uid") or _new_uid()), "series": series_uid,
            "frame_of_reference": str(meta.get("frame_of_reference_uid") or _new_uid())}
    return [_new_dataset(stored[k], slope, intercept, k, meta, geo, uids, series_description,
                         when, derivation) for k in range(vol.shape[0])]


def _save(ds, path: Path, shown: Path) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:   # invalid element values
        raise WriteError(f"{shown}: cannot encode DICOM dataset ({type(exc).__name__}: "
                         f"{one_line(exc)})") from None


def write_dicom_series(volume: np.ndarray, meta: Mapping[str, Any] | None,
                       out_dir: str | os.PathLike, *, overwrite: bool = False,
                       series_description: str | None = None,
                       reference_files: Sequence[str | os.PathLike] | None = None,
                       derivation_description: str | None = None) -> Path:
    """Write ``volume`` (``Z×H×W`` physical units, e.g. HU) as a new series, one file a slice.

    Reference headers come from ``reference_files`` or, when that is None, ``meta["files"]``
    (``reference_files=()`` forces a fresh series); they must be one single-frame file per
    slice, in volume order, with the same rows × columns. Each slice keeps its reference's
    header (patient, study, geometry, instance number) with new pixels, rescale, Series and
    SOP Instance UIDs, ``ImageType`` DERIVED\\SECONDARY, a ``DerivationDescription`` and a
    ``SourceImageSequence`` pointing at the reference. Without references a minimal dataset is
    built: CT Image Storage when ``meta["modality"] == "CT"`` and the geometry is known
    (orientation/positions, an affine, or spacing), else Secondary Capture; empty patient
    identity; ``meta["study_uid"]`` kept when present. Files are ``0001.dcm`` … in slice order,
    written to a temporary folder that is renamed to ``out_dir`` (refused if it exists and is
    not empty, unless ``overwrite``). See :func:`quantise_for_dicom` for the stored integers.
    ``derivation_description`` (DICOM allows 1024 characters) says how the pixels were made,
    e.g. the restoring model (``medrestore-predict``); the source series is appended.
    """
    out = Path(out_dir)
    datasets = _datasets_for(volume, dict(meta or {}), out, series_description, reference_files,
                             derivation_description)
    width = max(4, len(str(len(datasets))))
    with atomic_output(out, overwrite, directory=True) as tmp:
        tmp.mkdir()
        for k, ds in enumerate(datasets):
            name = f"{k + 1:0{width}d}.dcm"
            _save(ds, tmp / name, out / name)
    return out


def write_dicom(image: np.ndarray, meta: Mapping[str, Any] | None, path: str | os.PathLike, *,
                overwrite: bool = False, series_description: str | None = None,
                reference_files: Sequence[str | os.PathLike] | None = None,
                derivation_description: str | None = None) -> Path:
    """Write one slice (``H×W`` or ``1×H×W``, physical units) as a single DICOM file.

    Same rules as :func:`write_dicom_series`: the reference is the one file of
    ``reference_files`` or of ``meta["files"]`` (``reference_files=()``: none)."""
    p = Path(path)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] != 1:
        raise WriteError(f"{p}: {arr.shape[0]} slices cannot go into one .dcm file; give a "
                         "directory name to write a series")
    (ds,) = _datasets_for(arr, dict(meta or {}), p, series_description, reference_files,
                          derivation_description)
    with atomic_output(p, overwrite) as tmp:
        _save(ds, tmp, p)
    return p
