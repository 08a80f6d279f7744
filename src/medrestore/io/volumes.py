"""Multi-modal 3-D volumes with a tumour label map: the store of prepared BraTS-like data.

Layout (format ``medrestore-volumes/1``)::

    /                  attrs: format, created, modalities (JSON list), label_map (JSON),
                              manifest (JSON list, one row per case), plus free attrs from the
                              converter (dataset, source_root, seed, args)
    /cases/<cid>/image C×X×Y×Z, the modalities stacked in ``modalities`` order, physical
                       intensities in the source's dtype (int16 / float32 …); chunked one
                       channel × 64³, lzf-compressed
    /cases/<cid>/label X×Y×Z uint8, the canonical label map (below); absent when unlabelled
    /cases/<cid>       attrs: key, split, grade, source, meta (JSON)

``cid`` is the key with ``/`` replaced by ``|``. Spatial axes are the NIfTI array axes
``(i, j, k)`` (nibabel's order, not transposed), so ``meta["affine"]`` maps voxel indices of
the stored array to millimetres (RAS) directly; ``meta["spacing"]`` is ``[dx, dy, dz]`` in mm.

**Canonical label map** (one map per case; every target derives from it): 0 background,
1 necrotic / non-enhancing tumour core (NCR/NET), 2 peritumoral oedema (ED), 3 enhancing
tumour (ET). Regions (overlapping): TC = {1, 3}, WT = {1, 2, 3}, ET = {3}
(:func:`regions_from_labels`). Source conventions (BraTS 2018/19/21 1/2/4, BraTS 2023 1/2/3,
the Decathlon's 1 = oedema / 2 = non-enhancing / 3 = enhancing) are mapped to this by the
converters; ``meta["label_convention"]`` names the source's.

Manifest rows: ``key, split, grade, shape, dtype, has_label, source`` — enough to index and
split a store without reading voxels. ``grade`` is 1 (high grade), 0 (low grade) or -1
(unknown).

Writers build ``<file>.partial`` and rename on success, refuse to overwrite unless asked and
turn a full disk into one line (:class:`~medrestore.io.hdf5.SafeH5`). Readers open the file
lazily, once per process (h5py handles must not cross a fork: DataLoader workers).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medrestore.errors import MedrestoreError

FORMAT = "medrestore-volumes/1"
#: the stacking order of every store (BraTS file suffixes in brackets)
MODALITIES = ("t1", "t1ce", "t2", "flair")
#: canonical label values
BACKGROUND, NCR_NET, EDEMA, ENHANCING = 0, 1, 2, 3
LABEL_MAP = {0: "background", 1: "NCR/NET", 2: "ED", 3: "ET"}
#: the three overlapping regions, in channel order, as sets of canonical labels
REGIONS = (("TC", (1, 3)), ("WT", (1, 2, 3)), ("ET", (3,)))
GRADES = (-1, 0, 1)
CHUNK = 64


class VolumeStoreError(MedrestoreError, ValueError):
    """A volume store that is missing, unreadable, or not in the expected layout."""


def case_id(key: str) -> str:
    return str(key).replace("/", "|")


# --------------------------------------------------------------------------------------------
# targets derived from the label map


def regions_from_labels(label: np.ndarray) -> np.ndarray:
    """``X×Y×Z`` canonical label map -> bool ``3×X×Y×Z`` (TC, WT, ET)."""
    lab = np.asarray(label)
    return np.stack([np.isin(lab, vals) for _, vals in REGIONS])


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Corner box ``[x1, y1, z1, x2, y2, z2]`` (MONAI ``xyzxyz``; ``x2`` = last index + 1) of
    the non-zero voxels of a 3-D mask, as float32 ``1×6``; ``0×6`` when the mask is empty."""
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 3:
        raise ValueError(f"mask_box needs a 3-D mask, got shape {m.shape}")
    if not m.any():
        return np.zeros((0, 6), np.float32)
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(m.any(axis=other))
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.asarray([lo + hi], np.float32)


def component_boxes(mask: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """One box per 26-connected component of ``mask`` with at least ``min_voxels`` voxels
    (``n×6``, largest first)."""
    from scipy import ndimage

    m = np.asarray(mask).astype(bool, copy=False)
    lab, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros((0, 6), np.float32)
    sizes = np.bincount(lab.ravel())[1:]
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(lab)):
        if sl is not None and sizes[i] >= min_voxels:
            boxes.append((sizes[i], [s.start for s in sl] + [s.stop for s in sl]))
    boxes.sort(key=lambda t: -t[0])
    return np.asarray([b for _, b in boxes], np.float32).reshape(-1, 6)


# --------------------------------------------------------------------------------------------
# writing


class VolumeWriter:
    """Write cases to a new volume store, atomically.

    >>> with VolumeWriter("brats.h5", attrs={"dataset": "brats"}) as w:   # doctest: +SKIP
    ...     w.add(image, label, key="brats/Brats18_2013_2_1", split="train", grade=1,
    ...           meta={"affine": aff, "spacing": [1, 1, 1]})
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False,
                 attrs: Mapping[str, Any] | None = None,
                 modalities: Sequence[str] = MODALITIES) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise VolumeStoreError(f"{self.path}: already exists; pass overwrite=True (or "
                                   "--overwrite) to replace it")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = dict(attrs or {})
        self.modalities = [str(m) for m in modalities]
        self._rows: list[dict[str, Any]] = []
        self._out = None

    def __enter__(self) -> "VolumeWriter":
        from medrestore.io.hdf5 import SafeH5

        self._out = SafeH5(self.partial, VolumeStoreError, shown=self.path)
        self._out.file.create_group("cases")
        return self

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, image: np.ndarray, label: np.ndarray | None, *, key: str, split: str,
            grade: int = -1, meta: Mapping[str, Any] | None = None, source: str = "") -> str:
        """Add one case (``image`` ``C×X×Y×Z`` physical, ``label`` canonical ``X×Y×Z`` or
        ``None``); returns its id."""
        from medrestore.io.base import jsonable_meta

        if self._out is None:
            raise VolumeStoreError("VolumeWriter.add() called outside its 'with' block")
        if split not in ("train", "val", "test"):
            raise VolumeStoreError(f"{key}: split must be train, val or test, got {split!r}")
        if int(grade) not in GRADES:
            raise VolumeStoreError(f"{key}: grade must be one of {GRADES}, got {grade!r}")
        img = np.asarray(image)
        if img.ndim != 4 or img.shape[0] != len(self.modalities):
            raise VolumeStoreError(f"{key}: image must be {len(self.modalities)}×X×Y×Z "
                                   f"({', '.join(self.modalities)}), got shape {img.shape}")
        if img.dtype.kind not in "uif" or img.dtype.itemsize > 8:
            raise VolumeStoreError(f"{key}: image dtype {img.dtype} is not integer or float")
        if img.dtype.kind == "f" and not np.isfinite(img).all():
            raise VolumeStoreError(f"{key}: image has {int((~np.isfinite(img)).sum())} "
                                   "non-finite value(s)")
        if label is not None:
            lab = np.asarray(label)
            if lab.shape != img.shape[1:]:
                raise VolumeStoreError(f"{key}: label shape {lab.shape} does not match image "
                                       f"shape {img.shape[1:]}")
            bad = np.setdiff1d(np.unique(lab), list(LABEL_MAP))
            if bad.size:
                raise VolumeStoreError(f"{key}: label values {bad.tolist()} are not canonical "
                                       f"(expected {sorted(LABEL_MAP)})")
            lab = lab.astype(np.uint8)
        cid = case_id(key)
        cases = self._out.file["cases"]
        if cid in cases:
            raise VolumeStoreError(f"{self.path}: duplicate case {key!r}")
        meta = jsonable_meta({**(meta or {}), "shape": list(img.shape[1:]),
                              "modalities": self.modalities})
        g = cases.create_group(cid)
        chunks = (1,) + tuple(min(CHUNK, n) for n in img.shape[1:])
        g.create_dataset("image", data=np.ascontiguousarray(img), chunks=chunks,
                         compression="lzf")
        if label is not None:
            g.create_dataset("label", data=lab, chunks=chunks[1:], compression="lzf")
        g.attrs.update({"key": key, "split": split, "grade": int(grade), "source": source,
                        "meta": json.dumps(meta)})
        self._rows.append({"key": key, "split": split, "grade": int(grade),
                           "shape": list(img.shape[1:]), "dtype": str(img.dtype),
                           "has_label": label is not None, "source": source})
        self._out.check()
        return cid

    def __exit__(self, exc_type, exc, tb) -> None:
        from medrestore.io.hdf5 import abandon_partial, close_partial

        out, self._out = self._out, None
        assert out is not None
        try:
            if exc_type is None:
                f = out.file
                f.attrs["format"] = FORMAT
                f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                f.attrs["modalities"] = json.dumps(self.modalities)
                f.attrs["label_map"] = json.dumps({str(k): v for k, v in LABEL_MAP.items()})
                f.attrs["manifest"] = json.dumps(self._rows)
                for k, v in self.attrs.items():
                    f.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        except Exception:
            abandon_partial(out, self.partial)
            raise
        close_partial(out, self.partial, self.path, exc_type, VolumeStoreError)


# --------------------------------------------------------------------------------------------
# reading


def _decoded(v: Any) -> Any:
    v = v.decode() if isinstance(v, bytes) else v
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v.item() if isinstance(v, np.generic) else v


class VolumeStore:
    """Read access to a volume store: ``manifest`` and ``attrs`` at construction (one-line
    errors for a missing or foreign file), voxels per case through a handle opened lazily in
    each process."""

    def __init__(self, path: str | os.PathLike) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise VolumeStoreError(f"{self.path}: no such volume store (build it with "
                                   "'medrestore-prepare brats' or 'medrestore-prepare "
                                   "brats_demo')")
        try:
            with h5py.File(self.path, "r") as f:
                fmt = _decoded(f.attrs.get("format"))
                if fmt != FORMAT:
                    raise VolumeStoreError(f"{self.path}: not a medrestore volume store "
                                           f"(format {fmt!r}, expected {FORMAT!r})")
                self.attrs = {k: _decoded(v) for k, v in f.attrs.items() if k != "manifest"}
                self.manifest: list[dict[str, Any]] = json.loads(f.attrs["manifest"])
        except OSError as exc:
            raise VolumeStoreError(f"{self.path}: unreadable HDF5 file ({exc})") from None
        self.modalities = list(self.attrs.get("modalities") or MODALITIES)
        self._h5 = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # handles never travel to DataLoader workers; each opens its own
        return {**self.__dict__, "_h5": None, "_pid": None}

    def _file(self):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def keys(self, split: str | None = None) -> list[str]:
        return [r["key"] for r in self.manifest if split is None or r["split"] == split]

    def read(self, key: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """``(image C×X×Y×Z as stored, label X×Y×Z uint8 or None, info)``; ``info`` holds
        ``key, split, grade, source, meta``."""
        try:
            g = self._file()["cases"][case_id(key)]
        except KeyError:
            raise VolumeStoreError(f"{self.path}: no case {key!r}") from None
        image = g["image"][()]
        label = g["label"][()] if "label" in g else None
        info = {"key": str(_decoded(g.attrs["key"])), "split": str(_decoded(g.attrs["split"])),
                "grade": int(g.attrs["grade"]), "source": str(_decoded(g.attrs["source"])),
                "meta": json.loads(g.attrs["meta"])}
        return image, label, info

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid = None, None


# --------------------------------------------------------------------------------------------
# NIfTI sources (array axes kept as nibabel's (i, j, k); 4-D allowed for multi-channel files)


def read_nifti_volume(path: str | os.PathLike, *, canonical: bool = True, channels: bool = False,
                      nonfinite: str = "error", bad_spacing: str = "error"
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NIfTI source volume for a volume store -> ``(array, info)``.

    The array keeps nibabel's axis order (``X×Y×Z``; ``X×Y×Z×C`` when ``channels``, e.g. the
    Decathlon's 4-D images) and the stored dtype when the file has no intensity scaling
    (float32 otherwise). ``canonical`` reorients to the closest RAS axes by flips and axis
    swaps only (nibabel ``as_closest_canonical``: no interpolation). ``info`` holds ``affine``
    (4×4, RAS mm of the returned array), ``spacing`` ([dx, dy, dz] mm), ``axcodes``.
    ``nonfinite="fill"`` replaces NaN / inf voxels by the median of the finite ones (else an
    error); ``bad_spacing="unknown"`` reads a voxel size that is not > 0 as ``None`` (else an
    error) — the converters' ``--nonfinite`` / ``--bad-spacing``."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise VolumeStoreError(f"{p}: no such file")
    try:
        img = nib.load(p)
        if canonical:
            img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:   # nibabel / gzip / zlib / EOF errors all mean an unreadable file
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise VolumeStoreError(f"{p}: not a readable NIfTI volume ({type(exc).__name__}: "
                               f"{msg})") from None
    want = 4 if channels else 3
    if data.ndim == 4 and not channels and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != want:
        raise VolumeStoreError(f"{p}: expected a {want}-D volume"
                               f"{' (X×Y×Z×channels)' if channels else ''}, got shape "
                               f"{tuple(data.shape)}")
    if data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
        bad = ~np.isfinite(data)
        if bad.any():
            if nonfinite != "fill" or bad.all():
                raise VolumeStoreError(f"{p}: {int(bad.sum())} non-finite voxel(s); expected "
                                       "finite intensities (--nonfinite fill replaces them)")
            data = np.where(bad, np.median(data[~bad]), data).astype(np.float32)
    elif data.dtype.kind not in "iub":
        raise VolumeStoreError(f"{p}: voxel type {data.dtype} is not a number")
    zooms: list[float | None] = [float(z) for z in img.header.get_zooms()[:3]]
    if not all(z is not None and z > 0 for z in zooms):
        if bad_spacing != "unknown":
            raise VolumeStoreError(f"{p}: voxel size {zooms} mm; expected values > 0 "
                                   "(--bad-spacing unknown reads it as unknown)")
        zooms = [z if z is not None and z > 0 else None for z in zooms]
    info = {"affine": np.asarray(img.affine, np.float64).tolist(), "spacing": zooms,
            "axcodes": "".join(str(c) for c in nib.aff2axcodes(img.affine))}
    return np.ascontiguousarray(data), info


__all__ = ["FORMAT", "MODALITIES", "LABEL_MAP", "REGIONS", "VolumeStoreError", "VolumeWriter",
           "VolumeStore", "regions_from_labels", "mask_box", "component_boxes", "case_id",
           "read_nifti_volume"]
