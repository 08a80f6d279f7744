"""HDF5 pair shards: the on-disk form of prepared datasets.

Layout (format ``medrestore-pairs/1``)::

    /                    attrs: format, created, manifest (JSON list, one row per sample)
    /samples/<sid>/lq    float32 C×H×W, normalised to [0, 1], chunked, lzf-compressed
    /samples/<sid>/gt    float32 C×H×W, same
    /samples/<sid>       attrs: task, domain, key, split, source, meta (JSON)

``sid`` is ``"<task>:<key>"`` (``/`` in keys becomes ``|``), so one clean image (one ``key``)
can serve several tasks. Manifest rows hold ``id, task, domain, key, split, shape, source`` so
datasets index a shard without touching pixel data.

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

FORMAT = "medrestore-pairs/1"
CHUNK = 128  # one 128² training patch per chunk: crops touch few chunks


class ShardError(MedrestoreError, ValueError):
    """A shard that is missing, unreadable or not in the expected layout."""


def sample_id(task: str, key: str) -> str:
    return f"{task}:{key}".replace("/", "|")


class PairWriter:
    """Write normalised lq/gt pairs to a new shard, atomically.

    >>> with PairWriter("demo.h5") as w:          # doctest: +SKIP
    ...     w.add(lq, gt, task="ct_denoise", key="pydicom.CT_small", split="test", meta=meta)
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise ShardError(f"{self.path}: already exists; pass overwrite=True (or --overwrite) "
                             "to replace it")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._rows: list[dict[str, Any]] = []
        self._h5 = None

    def __enter__(self) -> "PairWriter":
        import h5py

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5 = h5py.File(self.partial, "w")
        self._h5.create_group("samples")
        return self

    def add(self, lq: np.ndarray, gt: np.ndarray, *, task: str, key: str, split: str,
            meta: Mapping[str, Any], source: str = "") -> str:
        from medrestore.registry import get_task

        if self._h5 is None:
            raise ShardError("PairWriter.add() called outside its 'with' block")
        spec = get_task(task)
        lq = _chw(lq, "lq", key)
        gt = _chw(gt, "gt", key)
        if lq.shape != gt.shape:
            raise ShardError(f"{key}: lq shape {lq.shape} != gt shape {gt.shape}")
        if split not in ("train", "val", "test"):
            raise ShardError(f"{key}: split must be train, val or test, got {split!r}")
        sid = sample_id(task, key)
        if sid in self._h5["samples"]:
            raise ShardError(f"{self.path}: duplicate sample {sid!r}")
        g = self._h5["samples"].create_group(sid)
        chunks = (lq.shape[0], min(CHUNK, lq.shape[1]), min(CHUNK, lq.shape[2]))
        g.create_dataset("lq", data=lq, chunks=chunks, compression="lzf")
        g.create_dataset("gt", data=gt, chunks=chunks, compression="lzf")
        attrs = {"task": task, "domain": spec.domain, "key": key, "split": split,
                 "source": source}
        g.attrs.update(attrs)
        g.attrs["meta"] = json.dumps(dict(meta))
        self._rows.append({"id": sid, **attrs, "shape": list(gt.shape)})
        return sid

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._h5 is not None
        try:
            if exc_type is None:
                self._h5.attrs["format"] = FORMAT
                self._h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                self._h5.attrs["manifest"] = json.dumps(self._rows)
        finally:
            self._h5.close()
            self._h5 = None
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _chw(x: np.ndarray, name: str, key: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ShardError(f"{key}: {name} must be C×H×W or H×W, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ShardError(f"{key}: {name} contains NaN or inf")
    return np.ascontiguousarray(x)


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest rows of a shard, with a one-line error if it is not a medrestore shard."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: no such shard (run 'medrestore-prepare' first)")
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if fmt != FORMAT:
                raise ShardError(f"{path}: not a medrestore pair shard (format {fmt!r}, "
                                 f"expected {FORMAT!r})")
            return json.loads(f.attrs["manifest"])
    except OSError as exc:
        raise ShardError(f"{path}: unreadable HDF5 file ({exc})") from None


def read_pair(h5file, sid: str, window: tuple[int, int, int, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read (lq, gt, attrs) of one sample from an open ``h5py.File``.

    ``window=(top, left, height, width)`` reads only that crop (chunk-aware partial read)."""
    g = h5file["samples"][sid]
    if window is None:
        lq, gt = g["lq"][()], g["gt"][()]
    else:
        t, l, h, w = window
        lq, gt = g["lq"][:, t:t + h, l:l + w], g["gt"][:, t:t + h, l:l + w]
    attrs = {k: g.attrs[k] for k in ("task", "domain", "key", "split", "source")}
    attrs["meta"] = json.loads(g.attrs["meta"])
    return lq, gt, attrs
