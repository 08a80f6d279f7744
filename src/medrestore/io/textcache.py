"""The caption / text-embedding cache: one HDF5 file, one row per clean-image ``key``.

Layout (format ``medrestore-captions/1``)::

    /                 attrs: format, created, fingerprint (JSON), fingerprint_id, perspectives
                             (JSON list), dim, count
    /keys             (N,)       UTF-8 strings, sorted
    /captions         (N, P)     UTF-8 strings, one caption per perspective
    /emb              (N, P, D)  float32, each caption's embedding, L2-normalised
    /pooled           (N, D)     float32, mean over perspectives, re-normalised (what training reads)
    /source           (N,)       JSON strings: the sample the clean image was read from

The *fingerprint* names the captioner and the text encoder (model name, sha256 of the weight
files, dimension, prompts / templates, dtype): rows built by different models never share a
file.

**Resumable, atomic builds.** A build never writes into a cache file in place. Finished entries
are buffered and written, ``flush_every`` at a time, as small *part files* in a side folder
``<cache>.parts/``: each part is written under a ``.tmp`` name, fsync'd, closed and only then
renamed into place, so a part either exists complete or not at all — a ``kill -9`` at any moment
loses at most the unflushed buffer and leaves at most a ``.tmp`` that the next run deletes. A
rerun reads the keys of the existing cache and of the complete parts and computes only the rest.
When every entry is done, the old cache (if any) and the parts are merged into
``<cache>.partial``, which is fsync'd and renamed over ``<cache>``; the parts folder is removed
last (a crash in between only leaves duplicates that the next merge skips). ``state.json`` in the
parts folder records the fingerprint of the unfinished build, so a rerun with another captioner
or encoder refuses to mix (``overwrite=True`` discards it and rebuilds), and an ``flock`` keeps two
builders off the same folder. A full disk (or a file-size limit) is one :class:`CacheError`
line: the part or ``.partial`` being written is removed, the complete parts and the old cache
stay, and a rerun with more space resumes.

Readers (:class:`TextCache`) open the file read-only and lazily, one handle per process id, so a
forked DataLoader worker never reuses its parent's handle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from medrestore.errors import ConfigError, MedrestoreError

FORMAT = "medrestore-captions/1"
#: seconds to sleep after each flushed part (a test hook for interrupting builds midway)
SLEEP_ENV = "MEDRESTORE_CACHE_SLEEP_AFTER_FLUSH"
_MERGE_ROWS = 4096  # rows copied per step when merging (bounded memory for large caches)


class CacheError(MedrestoreError, ValueError):
    """A caption cache that is missing, unreadable, incomplete or built with other models."""


# ----------------------------------------------------------------------------- helpers
def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """Short stable id of a fingerprint (sha256 of its canonical JSON, 16 hex digits)."""
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe_fingerprint(fingerprint: Mapping[str, Any]) -> str:
    """One-line summary: ``captioner=llava(...) encoder=open_clip:RN50 (1024-d, weights ab12…)``."""
    cap, enc = fingerprint.get("captioner", {}), fingerprint.get("encoder", {})
    parts = [f"captioner={cap.get('name')}" + (f":{cap['model']}" if cap.get("model") else ""),
             f"encoder={enc.get('name')}" + (f":{enc['model']}" if enc.get("model") else "")
             + f" ({enc.get('dim')}-d"
             + (f", weights {str(enc['weights_sha256'])[:12]}" if enc.get("weights_sha256") else "")
             + ")"]
    return " ".join(parts) + f" [{fingerprint_id(fingerprint)}]"


def fingerprint_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The differing fields of two fingerprints, e.g. ``encoder.weights_sha256, encoder.dim``."""
    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping) and not prefix:
                out.update(flat(v, f"{k}."))
            else:
                out[prefix + str(k)] = v
        return out

    a, b = flat(old), flat(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(diff[:4]) + (f" (+{len(diff) - 4})" if len(diff) > 4 else "")


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit vectors along ``axis`` (float32); a zero vector is an error, not a silent NaN."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norm == 0):
        raise CacheError("text embedding is zero or not finite; the encoder output is unusable")
    return (x / norm).astype(np.float32)


def pool(emb: np.ndarray) -> np.ndarray:
    """Per-perspective embeddings ``(..., P, D)`` -> pooled ``(..., D)``: L2-normalise each,
    average, re-normalise (the paper does not say how captions are pooled; this is our choice)."""
    return l2_normalise(l2_normalise(emb).mean(axis=-2))


def rank_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The cache file of one rank of a sharded build: ``x.h5`` -> ``x.rank1-of-4.h5``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{rank}-of-{world_size}{p.suffix}")


def check_text_width(cache_dim: int | None, model_dim: int, projection: bool) -> bool:
    """Compare the cache's embedding width with a model's text/domain-representation width.

    Returns whether a projection is needed (widths differ and ``projection`` is on). A mismatch
    without a projection is a one-line :class:`ConfigError`. The projection itself (a learnable
    linear layer in the model) is a departure from the paper, whose CLIP-RN50 text width (1024)
    equals the domain-prompt width."""
    if cache_dim is None:
        raise ConfigError(f"the model needs {model_dim}-d text embeddings but data.text_cache is "
                          "not set; build one with 'medrestore-cache build' and set data.text_cache")
    if int(cache_dim) == int(model_dim):
        return False
    if not projection:
        raise ConfigError(f"the text cache holds {cache_dim}-d embeddings but the model's domain "
                          f"representation is {model_dim}-d; build the cache with a {model_dim}-d "
                          "encoder or enable the model's text projection (a departure from the paper)")
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'd
        _fsync(path)


# ----------------------------------------------------------------------------- entries
class Entry(dict):
    """One cache row: ``key``, ``captions`` ({perspective: text}), ``emb`` (P×D), ``pooled``
    (D,), ``source`` (dict). A plain dict with a constructor that checks and normalises."""

    @classmethod
    def make(cls, key: str, captions: Mapping[str, str], emb: np.ndarray,
             source: Mapping[str, Any] | None = None) -> "Entry":
        emb = l2_normalise(np.asarray(emb, dtype=np.float32))
        if emb.ndim != 2 or emb.shape[0] != len(captions):
            raise CacheError(f"{key}: expected one embedding per caption ({len(captions)}), "
                             f"got an array of shape {emb.shape}")
        return cls(key=str(key), captions=dict(captions), emb=emb, pooled=pool(emb),
                   source=dict(source or {}))


def _write_file(path: Path, entries: Sequence[Mapping[str, Any]], fingerprint: Mapping[str, Any],
                perspectives: Sequence[str], dim: int) -> None:
    """Write complete entries to ``path`` (any previous file there is replaced)."""
    import h5py

    from medrestore.io.hdf5 import h5_create

    entries = sorted(entries, key=lambda e: e["key"])
    n, p = len(entries), len(perspectives)
    s = h5py.string_dtype()
    shown = path.with_suffix("") if path.suffix == ".tmp" else path   # the part being made
    with h5_create(path, CacheError, shown=shown) as f:   # a full disk: one line, no crash
        _root_attrs(f, fingerprint, perspectives, dim, n)
        f.create_dataset("keys", data=np.array([e["key"] for e in entries], dtype=object), dtype=s)
        caps = np.empty((n, p), dtype=object)
        for i, e in enumerate(entries):
            caps[i] = [e["captions"][q] for q in perspectives]
        f.create_dataset("captions", data=caps, dtype=s, shape=(n, p))
        f.create_dataset("emb", data=np.stack([e["emb"] for e in entries]) if n else
                         np.zeros((0, p, dim), np.float32))
        f.create_dataset("pooled", data=np.stack([e["pooled"] for e in entries]) if n else
                         np.zeros((0, dim), np.float32))
        f.create_dataset("source", data=np.array([json.dumps(e["source"]) for e in entries],
                                                 dtype=object), dtype=s, shape=(n,))


def _root_attrs(f, fingerprint: Mapping[str, Any], perspectives: Sequence[str], dim: int,
                n: int) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
    f.attrs["fingerprint_id"] = fingerprint_id(fingerprint)
    f.attrs["perspectives"] = json.dumps(list(perspectives))
    f.attrs["dim"] = int(dim)
    f.attrs["count"] = int(n)


def _atomic_write(path: Path, write, suffix: str = ".tmp") -> None:
    """Run ``write(tmp_path)``, fsync, then rename to ``path`` (the directory is fsync'd too);
    ``tmp_path`` is ``path`` + ``suffix``."""
    from medrestore.io.base import write_failed

    tmp = path.with_name(path.name + suffix)
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:   # full disk, size limit, ...: one line, nothing half-written left
        tmp.unlink(missing_ok=True)
        raise CacheError(write_failed(path, exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- reading
def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a cache file: ``fingerprint`` (dict), ``fingerprint_id``,
    ``perspectives``, ``dim``, ``count``, ``created``; one-line error if it is not one."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: no such caption cache (build it with 'medrestore-cache build')")
    try:
        with h5py.File(path, "r") as f:
            return _header(f, path)
    except OSError as exc:
        raise CacheError(f"{path}: unreadable HDF5 file ({exc})") from None


def _header(f, path: Path) -> dict[str, Any]:
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        raise CacheError(f"{path}: not a medrestore caption cache (format {fmt!r}, expected {FORMAT!r})")
    return {"format": FORMAT, "created": str(f.attrs.get("created", "")),
            "fingerprint": json.loads(f.attrs["fingerprint"]),
            "fingerprint_id": str(f.attrs["fingerprint_id"]),
            "perspectives": json.loads(f.attrs["perspectives"]),
            "dim": int(f.attrs["dim"]), "count": int(f.attrs["count"])}


def _read_keys(f) -> list[str]:
    return [str(k) for k in f["keys"].asstr()[()]] if len(f["keys"]) else []


class TextCache:
    """Read-only access to a cache file by clean-image key.

    The key index is read once at construction; array reads go through a handle opened lazily
    in the process that reads (keyed by pid, like the shard readers), so instances can be
    handed to DataLoader workers (fork or spawn)."""

    def __init__(self, path: str | os.PathLike) -> None:
        import h5py

        self.path = Path(path)
        header = read_header(self.path)
        self.fingerprint: dict[str, Any] = header["fingerprint"]
        self.fingerprint_id: str = header["fingerprint_id"]
        self.perspectives: list[str] = header["perspectives"]
        self.dim: int = header["dim"]
        with h5py.File(self.path, "r") as f:
            keys = _read_keys(f)
        self.index = {k: i for i, k in enumerate(keys)}
        self._pid: int | None = None
        self._file = None

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys (first occurrence order, unique) that have no entry."""
        return list(dict.fromkeys(k for k in keys if k not in self.index))

    def require(self, keys: Iterable[str], what: str = "") -> None:
        """Raise a one-line :class:`CacheError` naming the first missing key (and how many)."""
        miss = self.missing(keys)
        if miss:
            more = f" (and {len(miss) - 1} more)" if len(miss) > 1 else ""
            raise CacheError(f"{self.path}: no caption entry for key {miss[0]!r}{more}"
                             + (f" of {what}" if what else "")
                             + "; rebuild the cache over these sets with 'medrestore-cache build'")

    def h5(self):
        if self._pid != os.getpid() or self._file is None:
            import h5py

            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def _row(self, key: str) -> int:
        try:
            return self.index[key]
        except KeyError:
            raise CacheError(f"{self.path}: no caption entry for key {key!r}") from None

    def pooled(self, key: str) -> np.ndarray:
        """The pooled embedding ``(D,)`` float32 of ``key``."""
        return np.asarray(self.h5()["pooled"][self._row(key)], dtype=np.float32)

    def entry(self, key: str) -> Entry:
        """Everything stored for ``key`` (captions per perspective, embeddings, source)."""
        f, i = self.h5(), self._row(key)
        caps = [str(c) for c in f["captions"].asstr()[i]]
        return Entry(key=key, captions=dict(zip(self.perspectives, caps)),
                     emb=np.asarray(f["emb"][i], np.float32),
                     pooled=np.asarray(f["pooled"][i], np.float32),
                     source=json.loads(f["source"].asstr()[i]))

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __getstate__(self) -> dict[str, Any]:  # h5py handles cannot be pickled
        state = dict(self.__dict__)
        state.update(_pid=None, _file=None)
        return state


def check_cache(path: str | os.PathLike, keys: Iterable[str] | None = None,
                atol: float = 1e-3) -> dict[str, Any]:
    """Validate every row of a cache: finite unit-norm embeddings, pooled = normalised mean,
    non-empty captions; with ``keys``, list the ones that have no entry.

    Returns ``{header, count, invalid: [(key, reason)], missing: [keys], unfinished: bool}``."""
    import h5py

    path = Path(path)
    header = read_header(path)
    invalid: list[tuple[str, str]] = []
    with h5py.File(path, "r") as f:
        all_keys = _read_keys(f)
        if len(set(all_keys)) != len(all_keys):
            invalid.append(("*", "duplicate keys"))
        n = len(all_keys)
        for lo in range(0, n, _MERGE_ROWS):
            hi = min(n, lo + _MERGE_ROWS)
            emb = f["emb"][lo:hi]
            pooled = f["pooled"][lo:hi]
            caps = f["captions"].asstr()[lo:hi]
            for j in range(hi - lo):
                key, reason = all_keys[lo + j], None
                if not (np.all(np.isfinite(emb[j])) and np.all(np.isfinite(pooled[j]))):
                    reason = "non-finite embedding"
                elif np.any(np.abs(np.linalg.norm(emb[j], axis=-1) - 1) > atol):
                    reason = "per-perspective embedding is not unit-norm"
                elif abs(float(np.linalg.norm(pooled[j])) - 1) > atol:
                    reason = "pooled embedding is not unit-norm"
                elif np.max(np.abs(pool(emb[j]) - pooled[j])) > atol:
                    reason = "pooled embedding is not the normalised mean of the perspectives"
                elif any(not str(c).strip() for c in caps[j]):
                    reason = "empty caption"
                if reason:
                    invalid.append((key, reason))
    index = set(all_keys)
    missing = [] if keys is None else list(dict.fromkeys(k for k in keys if k not in index))
    return {"header": header, "count": n, "invalid": invalid, "missing": missing,
            "unfinished": parts_dir(path).exists()}


# ----------------------------------------------------------------------------- merging
def _iter_rows(path: Path) -> Iterator[tuple[str, int]]:
    import h5py

    with h5py.File(path, "r") as f:
        for i, k in enumerate(_read_keys(f)):
            yield k, i


def merge_files(out: str | os.PathLike, sources: Sequence[str | os.PathLike],
                overwrite: bool = False, fingerprint: Mapping[str, Any] | None = None) -> int:
    """Combine cache files with one fingerprint into ``out`` (atomically); returns the count.

    A key present in several sources is taken from the first (entries of one fingerprint are
    deterministic, so duplicates only come from a merge that was interrupted after its rename).
    Rows are copied in bounded blocks, so caches larger than memory merge too."""
    import h5py

    out = Path(out)
    if out.exists() and not overwrite and out not in [Path(s) for s in sources]:
        raise CacheError(f"{out}: already exists; pass --overwrite to replace it")
    if not sources:
        raise CacheError(f"{out}: nothing to merge")
    headers = [read_header(s) for s in sources]
    fp = dict(fingerprint) if fingerprint is not None else headers[0]["fingerprint"]
    for s, h in zip(sources, headers):
        if h["fingerprint"] != fp:
            raise CacheError(f"{s}: built with {describe_fingerprint(h['fingerprint'])}, "
                             f"expected {describe_fingerprint(fp)} (differs in "
                             f"{fingerprint_diff(h['fingerprint'], fp)}); caches of different "
                             "models cannot be merged")
    perspectives, dim = headers[0]["perspectives"], headers[0]["dim"]
    winner: dict[str, tuple[int, int]] = {}
    for si, s in enumerate(sources):
        for key, row in _iter_rows(Path(s)):
            winner.setdefault(key, (si, row))
    rows_of: dict[int, list[int]] = {}
    for si, row in winner.values():
        rows_of.setdefault(si, []).append(row)
    keys = sorted(winner)
    pos = {k: i for i, k in enumerate(keys)}
    n, p = len(keys), len(perspectives)

    def write(tmp: Path) -> None:
        from medrestore.io.hdf5 import h5_create

        st = h5py.string_dtype()
        with h5_create(tmp, CacheError, shown=out) as g:
            _root_attrs(g, fp, perspectives, dim, n)
            g.create_dataset("keys", data=np.array(keys, dtype=object), dtype=st, shape=(n,))
            d_caps = g.create_dataset("captions", shape=(n, p), dtype=st)
            d_emb = g.create_dataset("emb", shape=(n, p, dim), dtype=np.float32)
            d_pool = g.create_dataset("pooled", shape=(n, dim), dtype=np.float32)
            d_src = g.create_dataset("source", shape=(n,), dtype=st)
            for si, s in enumerate(sources):
                rows = sorted(rows_of.get(si, []))
                if not rows:
                    continue
                with h5py.File(s, "r") as f:
                    src_keys = _read_keys(f)
                    for lo in range(0, len(rows), _MERGE_ROWS):
                        block = rows[lo:lo + _MERGE_ROWS]
                        dst = np.array([pos[src_keys[r]] for r in block])
                        order = np.argsort(dst)
                        dst, src_rows = dst[order], np.array(block)[order]
                        # h5py point selections must increase: read sorted rows, then permute
                        read_order = np.argsort(src_rows)
                        back = np.argsort(read_order)
                        sel = src_rows[read_order].tolist()
                        caps = f["captions"].asstr()[sel][back]
                        d_caps[dst.tolist()] = np.asarray(caps, dtype=object)
                        d_emb[dst.tolist()] = f["emb"][sel][back]
                        d_pool[dst.tolist()] = f["pooled"][sel][back]
                        d_src[dst.tolist()] = np.asarray(f["source"].asstr()[sel][back], dtype=object)

    _atomic_write(out, write, suffix=".partial")
    return n


# ----------------------------------------------------------------------------- building
def parts_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".parts")


def merge_ranks(out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                overwrite: bool = False) -> tuple[list[Path], int]:
    """Merge the rank files of a sharded build into ``out``: ``inputs``, or by default every
    ``OUT.rank<R>-of-<W>.h5`` (all W must be present). A rank whose build has not finished
    (its parts folder exists) is refused. Returns ``(inputs, count)``."""
    out = Path(out)
    files = [Path(p) for p in inputs]
    if not files:
        found = sorted(out.parent.glob(f"{out.stem}.rank*-of-*{out.suffix}"))
        worlds = {p.stem.rsplit("-of-", 1)[-1] for p in found}
        if not found:
            raise CacheError(f"{out}: no rank files {out.stem}.rank<R>-of-<W>{out.suffix} to merge")
        if len(worlds) != 1:
            raise CacheError(f"{out}: rank files of several world sizes {sorted(worlds)}; "
                             "name the inputs explicitly")
        world = int(worlds.pop())
        files = [rank_path(out, r, world) for r in range(world)]
        absent = [str(p) for p in files if not p.exists()]
        if absent:
            raise CacheError(f"{out}: rank file(s) missing: {absent}; finish those ranks first")
    for p in files:
        if parts_dir(p).exists():
            raise CacheError(f"{p}: its build has not finished ({parts_dir(p)} exists); rerun it")
    return files, merge_files(out, files, overwrite=overwrite)


class CacheWriter:
    """Resumable writer of one cache file (see the module docstring for the crash design).

    >>> with CacheWriter(path, fingerprint, perspectives, dim) as w:   # doctest: +SKIP
    ...     todo = [k for k in keys if k not in w.done]
    ...     for entry in compute(todo):
    ...         w.add(entry)
    ... # on a clean exit the parts are merged into ``path``
    """

    def __init__(self, path: str | os.PathLike, fingerprint: Mapping[str, Any],
                 perspectives: Sequence[str], dim: int, overwrite: bool = False,
                 flush_every: int = 128) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.perspectives, self.dim = list(perspectives), int(dim)
        self.overwrite, self.flush_every = bool(overwrite), max(1, int(flush_every))
        self.parts = parts_dir(self.path)
        self.done: set[str] = set()
        self.written = 0  # entries flushed by this writer
        self._buffer: list[Entry] = []
        self._lock_fd: int | None = None
        self._replace_existing = False
        if len(set(self.perspectives)) != len(self.perspectives) or not self.perspectives:
            raise CacheError(f"{self.path}: perspectives must be unique and non-empty, "
                             f"got {self.perspectives}")

    # -- opening ---------------------------------------------------------------------------
    def __enter__(self) -> "CacheWriter":
        from medrestore.io.base import write_failed

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()  # before anything in the parts folder is read or removed
        except OSError as exc:  # e.g. no room left for the lock file
            raise CacheError(write_failed(self.lock_file, exc)) from None
        try:
            return self._open()
        except OSError as exc:
            self._unlock(remove=True)
            raise CacheError(write_failed(self.parts, exc)) from None
        except BaseException:
            self._unlock(remove=True)
            raise

    def _open(self) -> "CacheWriter":
        state_file = self.parts / "state.json"
        fid = fingerprint_id(self.fingerprint)
        if self.parts.exists():
            state = self._read_state(state_file)
            if state is not None and state.get("fingerprint") != self.fingerprint:
                if not self.overwrite:
                    raise CacheError(
                        f"{self.parts}: an unfinished build with "
                        f"{describe_fingerprint(state.get('fingerprint', {}))} is there; this build "
                        f"is {describe_fingerprint(self.fingerprint)} (differs in "
                        f"{fingerprint_diff(state.get('fingerprint', {}), self.fingerprint)}); "
                        "pass --overwrite to discard it")
                shutil.rmtree(self.parts)
            elif state is not None and self.overwrite and not state.get("replace_existing"):
                shutil.rmtree(self.parts)  # same models, but an explicit rebuild from scratch
            elif state is None:  # created but the state never written: nothing usable inside
                shutil.rmtree(self.parts)
        existing = None
        if self.path.exists():
            existing = read_header(self.path)
        if self.parts.exists():
            self._replace_existing = bool(self._read_state(state_file).get("replace_existing"))
        else:
            if existing is not None and existing["fingerprint"] != self.fingerprint and not self.overwrite:
                raise CacheError(f"{self.path}: built with {describe_fingerprint(existing['fingerprint'])}, "
                                 f"this build is {describe_fingerprint(self.fingerprint)} (differs in "
                                 f"{fingerprint_diff(existing['fingerprint'], self.fingerprint)}); "
                                 "pass --overwrite to rebuild it (models are never mixed in one cache)")
            self._replace_existing = self.overwrite and existing is not None
            self.parts.mkdir()
            _atomic_write(state_file, lambda tmp: tmp.write_text(json.dumps(
                {"fingerprint": self.fingerprint, "fingerprint_id": fid,
                 "replace_existing": self._replace_existing}, sort_keys=True)))
        for tmp in self.parts.glob("*.tmp"):  # a part interrupted before its rename
            tmp.unlink()
        if existing is not None and not self._replace_existing:
            self.done.update(TextCache(self.path).keys())
        for part in self._part_files():  # complete by construction (renamed after fsync)
            if read_header(part)["fingerprint"] != self.fingerprint:
                raise CacheError(f"{part}: a part of another build; delete {self.parts} or pass "
                                 "--overwrite")
            self.done.update(k for k, _ in _iter_rows(part))
        return self

    @staticmethod
    def _read_state(state_file: Path) -> dict[str, Any] | None:
        try:
            return json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None

    @property
    def lock_file(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CacheError(f"{self.path}: another build of this cache is running "
                             f"(it holds {self.lock_file})") from None
        self._lock_fd = fd

    def _unlock(self, remove: bool = False) -> None:
        if self._lock_fd is not None:
            if remove:
                self.lock_file.unlink(missing_ok=True)
            os.close(self._lock_fd)  # closing releases the flock (so does any process death)
            self._lock_fd = None

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.h5"))

    # -- writing ---------------------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        if entry["key"] in self.done:
            return
        if list(entry["captions"]) != self.perspectives:
            raise CacheError(f"{entry['key']}: captions for {list(entry['captions'])}, "
                             f"expected {self.perspectives}")
        if entry["emb"].shape != (len(self.perspectives), self.dim):
            raise CacheError(f"{entry['key']}: embeddings of shape {entry['emb'].shape}, expected "
                             f"{(len(self.perspectives), self.dim)} (the encoder's declared width)")
        self._buffer.append(entry)
        self.done.add(entry["key"])
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write the buffered entries as one complete part file (atomic rename)."""
        if not self._buffer:
            return
        existing = self._part_files()
        seq = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        part = self.parts / f"part-{seq:06d}.h5"
        buf = self._buffer
        _atomic_write(part, lambda tmp: _write_file(tmp, buf, self.fingerprint,
                                                      self.perspectives, self.dim))
        self.written += len(buf)
        self._buffer = []
        delay = float(os.environ.get(SLEEP_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)

    def finalize(self) -> int:
        """Flush, merge the old cache (unless replaced) and the parts into ``path``; returns
        the number of entries."""
        self.flush()
        sources = [] if (self._replace_existing or not self.path.exists()) else [self.path]
        sources += self._part_files()
        if not sources:  # nothing at all: still leave a valid, empty cache
            _atomic_write(self.path, lambda tmp: _write_file(tmp, [], self.fingerprint,
                                                               self.perspectives, self.dim))
            n = 0
        else:
            n = merge_files(self.path, sources, overwrite=True, fingerprint=self.fingerprint)
        shutil.rmtree(self.parts)
        self._unlock(remove=True)
        return n

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finalize()
            else:
                # keep what is complete: flush the buffer so a rerun resumes from here
                with contextlib.suppress(Exception):
                    self.flush()
                # a parts folder without parts holds nothing to resume: leave no clutter
                # (e.g. after the free-space check refused the build)
                with contextlib.suppress(OSError):
                    if self.parts.exists() and not self._part_files():
                        shutil.rmtree(self.parts)
        finally:
            self._unlock(remove=True)
