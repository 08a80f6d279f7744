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
asked. A full disk (or a file-size limit) mid-write is one :class:`ShardError` line; the
``.partial`` file is removed (see :class:`SafeH5`). Readers open files lazily per process
(h5py handles must not cross a fork).
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from medrestore.errors import MedrestoreError

FORMAT = "medrestore-pairs/2"
READABLE_FORMATS = ("medrestore-pairs/1", FORMAT)
STORAGES = ("normalised", "physical")
CHUNK = 128  # one 128² training patch per chunk: crops touch few chunks


class ShardError(MedrestoreError, ValueError):
    """A shard that is missing, unreadable or not in the expected layout."""


class _GuardedFile(io.RawIOBase):
    """The file under an HDF5 file being written (h5py's ``fileobj`` driver), whose writes
    never fail as far as HDF5 can tell.

    HDF5 does not survive a failed write: every object closed afterwards prints a diagnostic
    (thousands of lines for a shard) and a later flush or close can segfault. So the first
    OSError (ENOSPC, EFBIG, ...) is kept in ``error`` and every later write is discarded: HDF5
    finishes and closes normally, and the writer deletes the file and raises one line."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._raw = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer) or 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):    # h5py ignores short writes: finish them here
                    n = self._raw.write(view[done:])
                    if not n:
                        raise OSError(f"short write at byte {self._raw.tell()}")
                    done += n
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass                                   # unbuffered: nothing is held back

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            except OSError as exc:
                self.error = self.error or exc
        super().close()


class SafeH5:
    """A new HDF5 file for writing (``.file``, an ``h5py.File``) that a full disk cannot crash.

    Writes go through :class:`_GuardedFile`; call :meth:`check` to raise a pending write error
    early, and :meth:`close` at the end: it returns the first OSError met (``None`` on
    success) and deletes the file when there was one. ``shown`` is the path named in messages
    (the final name rather than a temporary one)."""

    def __init__(self, path: str | os.PathLike, error: type[MedrestoreError] | None = None,
                 shown: str | os.PathLike | None = None) -> None:
        import h5py

        from medrestore.io.base import write_failed

        self.path = Path(path)
        self.shown = Path(shown) if shown is not None else self.path
        self.error_class = error or ShardError
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._guard = _GuardedFile(self.path)
        except OSError as exc:
            raise self.error_class(write_failed(self.shown, exc)) from None
        try:
            self.file = h5py.File(self._guard, "w")
        except BaseException:
            self._guard.close()
            self.path.unlink(missing_ok=True)
            if self._guard.error is not None:
                raise self.error_class(write_failed(self.shown, self._guard.error)) from None
            raise

    @property
    def error(self) -> OSError | None:
        return self._guard.error

    def failure(self) -> MedrestoreError:
        from medrestore.io.base import write_failed

        return self.error_class(write_failed(self.shown, self.error))

    def check(self) -> None:
        """Raise the pending write error, if any, as one line."""
        if self._guard.error is not None:
            raise self.failure()

    def close(self) -> OSError | None:
        """Close (safe after a failed write: nothing reaches the disk any more); on an error the
        file is deleted. Returns the error or None."""
        try:
            self.file.close()
        except Exception:
            if self._guard.error is None:     # a real fault, not the discarded writes
                self._guard.close()
                self.path.unlink(missing_ok=True)
                raise
        self._guard.close()
        if self._guard.error is not None:
            self.path.unlink(missing_ok=True)
        return self._guard.error


@contextmanager
def h5_create(path: str | os.PathLike, error: type[MedrestoreError] | None = None,
              shown: str | os.PathLike | None = None) -> Iterator[Any]:
    """``with h5_create(p) as f:`` writes a new HDF5 file ``f`` (an ``h5py.File``) at ``p``;
    a write that fails (full disk, file-size limit) raises one ``error`` line naming ``shown``
    (default ``p``) and leaves no file."""
    out = SafeH5(path, error, shown)
    try:
        yield out.file
    except BaseException as exc:
        out.close()
        out.path.unlink(missing_ok=True)
        # h5py may trip over data it never really wrote: the write error is the cause
        if out.error is not None and isinstance(exc, Exception) \
                and not isinstance(exc, MedrestoreError):
            raise out.failure() from None
        raise
    if out.close() is not None:
        raise out.failure()


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
        self._out: SafeH5 | None = None

    def __enter__(self) -> "PairWriter":
        self._out = SafeH5(self.partial, ShardError, shown=self.path)
        self._h5 = self._out.file
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
        # the writer serialises meta itself: numpy values, paths and NaN become JSON here
        from medrestore.io.base import jsonable_meta

        meta = jsonable_meta(meta)
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
        self._out.check()       # stop at the first failed write, not after hours of discarding
        return sid

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._h5 is not None and self._out is not None
        out, self._h5 = self._out, None
        try:
            if exc_type is None:
                out.file.attrs["format"] = FORMAT
                out.file.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                out.file.attrs["manifest"] = json.dumps(self._rows)
                for k, v in self.attrs.items():
                    out.file.attrs[k] = v if isinstance(v, (str, int, float)) else json.dumps(v)
        except Exception:
            abandon_partial(out, self.partial)
            raise
        close_partial(out, self.partial, self.path, exc_type, ShardError)


def abandon_partial(out: SafeH5, partial: Path) -> None:
    """Close and delete a half-written ``<file>.partial`` after an error while finishing it;
    when h5py tripped over a write that had already failed, raise that failure instead."""
    out.close()
    partial.unlink(missing_ok=True)
    if out.error is not None:
        raise out.failure() from None


def close_partial(out: SafeH5, partial: Path, path: Path, exc_type: type | None,
                  error: type[MedrestoreError]) -> None:
    """The end of every writer of ours: close ``partial`` and rename it to ``path`` when the
    ``with`` block and every write succeeded; otherwise delete it (an existing ``path`` is never
    touched) and raise the failed write unless the block already raised a user-facing error."""
    failed = out.close()
    if exc_type is None and failed is None:
        try:
            os.replace(partial, path)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise error(f"{path}: cannot rename {partial.name} into place "
                        f"({e.strerror or e})") from None
        return
    partial.unlink(missing_ok=True)
    if failed is not None and (exc_type is None or not issubclass(exc_type, MedrestoreError)):
        raise out.failure() from None


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
        # converters put the source file(s) in front of this (run_converter)
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        raise ShardError(f"{key}: {name} has {nan + inf} non-finite value(s) (NaN {nan}, "
                         f"inf {inf}); only finite pixels can be stored")
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
