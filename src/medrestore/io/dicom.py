"""Read one DICOM file into an array in physical units plus the geometry that matters.

:func:`read_dicom` applies the modality transform (``RescaleSlope``/``RescaleIntercept``, or a
Modality LUT), so CT comes back in Hounsfield units. Enhanced multi-frame objects keep their
rescale and geometry in functional-group sequences; those are read too (per frame when they
differ). Any file that cannot give pixels -- not DICOM, truncated, no pixel data, a compression
without an installed decoder -- raises :class:`DicomError` with one line naming the file.

Series assembly (sorting slices into a volume) is deliberately not done here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medrestore.errors import MedrestoreError


class DicomError(MedrestoreError, ValueError):
    """A file that cannot be read as a DICOM image."""


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
            raise DicomError(f"{p}: not a DICOM file ({_one_line(exc)})") from None
        except Exception as exc:  # truncated headers surface as EOFError, struct.error, ...
            raise DicomError(f"{p}: unreadable DICOM header ({type(exc).__name__}: "
                             f"{_one_line(exc)})") from None
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
                             f"{type(exc).__name__}: {_one_line(exc)})") from None
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
        meta["warnings"] = sorted({_one_line(w.message) for w in caught})
    return arr.astype(np.float32), meta


def _one_line(exc: object) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
