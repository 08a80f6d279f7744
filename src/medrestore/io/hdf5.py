"""HDF5 pair shards: the on-disk form of prepared datasets.

Layout (format ``medrestore-pairs/2``; version 1 files, all float and normalised, still read)::

    /                    attrs: format, created, manifest (JSON list, one row per sample),
                                plus free attrs from the converter (dataset, source_root, args)
    /samples/<sid>/gt    C×H×W, chunked, lzf-compressed
    /samples/<sid>/lq    C×h×w with h = H/scale, w = W/scale (absent for clean-only samples)
    /samples/<sid>       attrs: task, domain, key, split, source, storage, scale, meta (JSON)

``sid`` is ``"<task>:<key>"`` (``/`` in keys becomes ``|``), so one clean image (one ``key``)
can serve several tasks.

Two storages:

* ``normalised`` — float32 already in [0, 1] (the demo; version 1 files);
* ``physical`` — the source's own units and dtype (uint8 photos, uint16 DN, int16 HU, float32
  SUV …), normalised when read with ``meta["normalisation"]``: compact, and a different window
  can be chosen later without re-preparing.

``scale > 1`` stores an SR input at its native low resolution; loaders bring it to the GT grid
(scale-1 networks). A clean-only sample (no ``lq``) names a simulator in
``meta["simulator"] = {"name", "params"}`` and is degraded by the loader, on the fly.

Manifest rows hold ``id, task, domain, key, split, shape, lq_shape, scale, storage, source,
normalisation, simulator`` so datasets index a shard without touching pixel data.

Writers build into ``<file>.partial`` and rename on success: an interrupted prepare never leaves
a half-written shard under the final name, and an existing file is never overwritten unless
asked. Readers open files lazily per process (h5py handles must not cross a fork).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medrestore.errors import MedrestoreError

FORMAT = "medrestore-pairs/2"
READABLE_FORMATS = ("medrestore-pairs/1", FORMAT)
STORAGES = ("normalised", "physical")
CHUNK = 128  # one 128² training patch per chunk: crops touch few chunks


class ShardError(MedrestoreError, ValueError):
    """A shard that is missing, unreadable or not in the expected layout."""


def sample_id(task: str, key: str) -> str:
    return f"{task}:{key}".replace("/", "|")


class PairWriter:
    """Write lq/gt pairs to a new shard, atomically.

    >>> with PairWriter("demo.h5") as w:          # doctest: +SKIP
    ...     w.add(lq, gt, task="ct_denoise", key="pydicom.CT_small", split="test", meta=meta)

    ``attrs`` (JSON-able) are stored on the root group, e.g. the converter name and arguments.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False,
                 attrs: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise ShardError(f"{self.path}: already exists; pass overwrite=True (or --overwrite) "
                             "to replace it")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.attrs = dict(attrs or {})
        self._rows: list[dict[str, Any]] = []
        self._h5 = None

    def __enter__(self) -> "PairWriter":
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self.partial, "w")
        self._h5.create_group("samples")
        return self

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, lq: np.ndarray | None, gt: np.ndarray, *, task: str, key: str, split: str,
            meta: Mapping[str, Any], source: str = "", scale: int = 1,
            storage: str = "normalised") -> str:
        """Add one sample; returns its id. See the module docstring for ``storage``/``scale``
        and clean-only samples (``lq=None``)."""
        from medrestore.registry import get_task

        if self._h5 is None:
            raise ShardError("PairWriter.add() called outside its 'with' block")
        spec = get_task(task)
        if storage not in STORAGES:
            raise ShardError(f"{key}: storage must be one of {STORAGES}, got {storage!r}")
        if split not in ("train", "val", "test"):
            raise ShardError(f"{key}: split must be train, val or test, got {split!r}")
        if int(scale) != scale or scale < 1:
            raise ShardError(f"{key}: scale must be a positive integer, got {scale!r}")
        scale = int(scale)
        meta = dict(meta)
        if storage == "physical" and not isinstance(meta.get("normalisation"), Mapping):
            raise ShardError(f"{key}: physical storage needs meta['normalisation'] "
                             "({low, high, unit, kind}) to normalise at read time")
        gt = _chw(gt, "gt", key, storage)
        simulator = meta.get("simulator")
        if lq is None:
            if not (isinstance(simulator, Mapping) and simulator.get("name")):
                raise ShardError(f"{key}: a clean-only sample (lq=None) needs "
                                 "meta['simulator'] = {'name': ..., 'params': {...}}")
            if split != "train":
                raise ShardError(f"{key}: clean-only samples are for training; '{split}' needs a "
                                 "fixed, written lq so its scores are reproducible")
            if scale != 1:
                raise ShardError(f"{key}: a clean-only sample cannot have scale {scale}")
        else:
            lq = _chw(lq, "lq", key, storage)
            expected = (gt.shape[0], gt.shape[1] // scale, gt.shape[2] // scale)
            if gt.shape[1] % scale or gt.shape[2] % scale or lq.shape != expected:
                raise ShardError(f"{key}: lq shape {lq.shape} does not match gt shape {gt.shape} "
                                 f"at scale {scale} (expected {expected})")
        sid = sample_id(task, key)
        if sid in self._h5["samples"]:
            raise ShardError(f"{self.path}: duplicate sample {sid!r}")
        g = self._h5["samples"].create_group(sid)
        g.create_dataset("gt", data=gt, chunks=_chunks(gt.shape, CHUNK), compression="lzf")
        if lq is not None:
            g.create_dataset("lq", data=lq, chunks=_chunks(lq.shape, max(1, CHUNK // scale)),
                             compression="lzf")
        attrs = {"task": task, "domain": spec.domain, "key": key, "split": split,
                 "source": source}
        g.attrs.update(attrs)
        g.attrs["storage"] = storage
        g.attrs["scale"] = scale
        g.attrs["meta"] = json.dumps(meta)
        self._rows.append({"id": sid, **attrs, "shape": list(gt.shape),
                           "lq_shape": None if lq is None else list(lq.shape), "scale": scale,
                           "storage": storage, "normalisation": meta.get("normalisation"),
                           "simulator": simulator if lq is None else None})
        return sid

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._h5 is not None
        try:
            if exc_type is None:
                self._h5.attrs["format"] = FORMAT
                self._h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                self._h5.attrs["manifest"] = json.dumps(self._rows)
                for k, v in self.attrs.items():
                    self._h5.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        finally:
            self._h5.close()
            self._h5 = None
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _chunks(shape: tuple[int, ...], size: int) -> tuple[int, int, int]:
    return (shape[0], min(size, shape[1]), min(size, shape[2]))


def _chw(x: np.ndarray, name: str, key: str, storage: str) -> np.ndarray:
    x = np.asarray(x)
    if storage == "normalised":
        x = x.astype(np.float32, copy=False)
    elif x.dtype.kind not in "uif" or x.dtype.itemsize > 8:
        raise ShardError(f"{key}: {name} has dtype {x.dtype}; physical storage takes integer or "
                         "float arrays")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ShardError(f"{key}: {name} must be C×H×W or H×W, got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ShardError(f"{key}: {name} contains NaN or inf")
    return np.ascontiguousarray(x)


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest rows of a shard (version-1 rows completed with the version-2 fields), with a
    one-line error if it is not a medrestore shard."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard (run 'medrestore-prepare' first)")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if fmt not in READABLE_FORMATS:
                raise ShardError(f"{path}: not a medrestore pair shard (format {fmt!r}, "
                                 f"expected one of {READABLE_FORMATS})")
            rows = json.loads(f.attrs["manifest"])
    except OSError as exc:
        raise ShardError(f"{path}: unreadable HDF5 file ({exc})") from None
    for r in rows:
        r.setdefault("lq_shape", r["shape"])
        r.setdefault("scale", 1)
        r.setdefault("storage", "normalised")
        r.setdefault("normalisation", None)
        r.setdefault("simulator", None)
    return rows


def shard_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a shard other than the manifest (format, created, converter args)."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {}
        for k, v in f.attrs.items():
            if k == "manifest":
                continue
            v = v.decode() if isinstance(v, bytes) else v
            if isinstance(v, str) and v[:1] in "[{":
                try:
                    v = json.loads(v)
                except ValueError:
                    pass
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out


def read_pair(h5file, sid: str, window: tuple[int, int, int, int] | None = None
              ) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    """Read ``(lq, gt, attrs)`` of one sample from an open ``h5py.File``, as stored.

    ``window=(top, left, height, width)`` in GT pixels reads only that crop (chunk-aware
    partial read); with ``scale > 1`` all four must be multiples of the scale, and the lq crop
    is the matching low-resolution window. ``lq`` is ``None`` for clean-only samples. ``attrs``
    holds ``task, domain, key, split, source, storage, scale, meta``."""
    g = h5file["samples"][sid]
    scale = int(g.attrs.get("scale", 1))
    has_lq = "lq" in g
    if window is None:
        gt = g["gt"][()]
        lq = g["lq"][()] if has_lq else None
    else:
        t, l, h, w = (int(v) for v in window)
        if scale > 1 and any(v % scale for v in (t, l, h, w)):
            raise ShardError(f"{sid}: crop window {window} is not aligned to scale {scale}")
        gt = g["gt"][:, t:t + h, l:l + w]
        s = scale
        lq = g["lq"][:, t // s:(t + h) // s, l // s:(l + w) // s] if has_lq else None
    attrs = {k: g.attrs[k] for k in ("task", "domain", "key", "split", "source")}
    attrs["storage"] = str(g.attrs.get("storage", "normalised"))
    attrs["scale"] = scale
    attrs["meta"] = json.loads(g.attrs["meta"])
    return lq, gt, attrs


def to_unit(x: np.ndarray, storage: str, meta: Mapping[str, Any]) -> np.ndarray:
    """Stored array -> float32 in [0, 1] (physical storage is clipped to its window)."""
    if storage == "normalised":
        return np.asarray(x, dtype=np.float32)
    n = meta.get("normalisation") or {}
    low, high = float(n["low"]), float(n["high"])
    y = (np.asarray(x, dtype=np.float32) - low) / (high - low)
    return np.clip(y, 0.0, 1.0, out=y)
