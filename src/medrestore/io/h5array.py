"""Generic HDF5 arrays: one dataset of a file as an image (not the pair-shard format).

Read with ``read_image("f.h5", dataset="group/name")`` or ``read_image("f.h5::group/name")``;
a file with a single dataset needs no name. The array keeps its stored dtype; a 2-D dataset
becomes ``1×H×W``; 3-D datasets are returned as stored, with ``axes`` from the dataset's
``axes`` attribute, else the ``axes=`` option, else ``"chw"``. ``spacing`` comes from a
``spacing`` attribute (mm, one per spatial axis) or an ``element_size_um`` attribute (µm).
Attributes are decoded into ``meta["attrs"]`` (bytes → str, JSON strings → objects, numpy →
Python); a ``meta`` attribute written by :meth:`H5ArrayReader.write` is merged back into the
meta (without overriding the keys the reader sets), so geometry survives a round trip.

Writing creates a new file (refused if it exists, unless ``overwrite``) holding one dataset
(default ``"image"``), chunked per plane (tiles of at most 256²) and gzip-compressed with the
shuffle filter, with ``axes``, ``spacing`` and ``meta`` (JSON of
:func:`~medrestore.io.base.jsonable_meta`) attributes.
"""

from __future__ import annotations

import json
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
    jsonable_meta,
    one_line,
)

_OWN_KEYS = ("format", "path", "shape", "dtype", "axes", "spacing", "dataset", "attrs",
             "bit_depth")
_LIST_LIMIT = 20


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "{[":
            try:
                return json.loads(text)
            except ValueError:
                return value
        return value
    if isinstance(value, np.ndarray):
        return [_decode_attr(v) for v in value.tolist()] if value.dtype.kind in "OSU" \
            else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _dataset_names(f) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                 else None)
    return names


def _listing(names: list[str]) -> str:
    if not names:
        return "the file holds no datasets"
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f" … ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else ""
    return f"datasets: {shown}{more}"


def read_h5array(path: str | Path, dataset: str | None = None,
                 axes: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one dataset of an HDF5 file → ``(array, meta)``; see the module docstring."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise ReadError(f"{p}: no such file")
    if axes not in (None, AXES_2D, AXES_3D):
        raise ReadError(f"{p}: axes must be {AXES_2D!r} or {AXES_3D!r}, got {axes!r}")
    try:
        f = h5py.File(p, "r")
    except Exception as exc:   # OSError for foreign or truncated files
        raise ReadError(f"{p}: not an HDF5 file or truncated ({type(exc).__name__}: "
                        f"{one_line(exc)})") from None
    with f:
        if dataset is None:
            names = _dataset_names(f)
            if len(names) != 1:
                raise ReadError(f"{p}: pass dataset= (or 'file.h5::name') to choose; "
                                f"{_listing(names)}")
            dataset = names[0]
        obj = f.get(dataset.strip("/"))
        if not isinstance(obj, h5py.Dataset):
            top = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
            groups = [k + "/" for k, v in f.items() if isinstance(v, h5py.Group)]
            raise ReadError(f"{p}: no dataset {dataset!r}; top-level datasets: "
                            f"{', '.join(top) or 'none'}"
                            + (f" (groups: {', '.join(groups[:_LIST_LIMIT])})" if groups else ""))
        try:
            data = obj[()]
        except Exception as exc:
            raise ReadError(f"{p}: cannot read dataset {dataset!r} ({type(exc).__name__}: "
                            f"{one_line(exc)})") from None
        attrs = {str(k): _decode_attr(v) for k, v in obj.attrs.items()}
        name = obj.name
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
        chosen_axes = AXES_2D
    elif data.ndim == 3:
        stored = attrs.get("axes")
        chosen_axes = stored if stored in (AXES_2D, AXES_3D) else (axes or AXES_2D)
    else:
        raise ReadError(f"{p}: dataset {dataset!r} has shape {data.shape}; only 2-D and 3-D "
                        "arrays are images (slice it with h5py first)")
    n_spatial = 3 if chosen_axes == AXES_3D else 2
    spacing = attrs.get("spacing")
    if not (isinstance(spacing, list) and len(spacing) == n_spatial):
        um = attrs.get("element_size_um")
        spacing = [float(v) / 1000.0 for v in um] if isinstance(um, list) and len(um) == \
            n_spatial else None
    meta = base_meta("hdf5", p, data, dtype=data.dtype, axes=chosen_axes, spacing=spacing)
    meta["dataset"] = name.lstrip("/")
    if data.dtype.kind in "biuf":
        meta["bit_depth"] = 1 if data.dtype.kind == "b" else data.dtype.itemsize * 8
    meta["attrs"] = {k: v for k, v in attrs.items() if k != "meta"}
    stored_meta = attrs.get("meta")
    if isinstance(stored_meta, dict):
        for k, v in stored_meta.items():
            meta.setdefault(k, v)
    return data, meta


class H5ArrayReader(ImageReader):
    name = "hdf5"
    suffixes = (".h5", ".hdf5", ".hdf")
    read_options = ("dataset", "axes")
    write_options = ("dataset", "compression_level")

    def read(self, path: Path, **options: Any) -> tuple[np.ndarray, dict[str, Any]]:
        return read_h5array(path, **options)

    def write(self, array: np.ndarray, meta: Mapping[str, Any], path: Path, *,
              overwrite: bool = False, dataset: str = "image",
              compression_level: int = 4) -> Path:
        from medrestore.io.hdf5 import h5_create

        name = dataset.strip("/")
        if not name:
            raise WriteError(f"{path}: empty dataset name")
        arr = np.ascontiguousarray(array)
        if arr.dtype.kind == "O":
            raise WriteError(f"{path}: object arrays cannot be stored in HDF5")
        chunks = (1, min(256, arr.shape[1]), min(256, arr.shape[2]))
        axes = meta.get("axes") if meta.get("axes") in (AXES_2D, AXES_3D) else AXES_2D
        extra = {k: v for k, v in jsonable_meta(meta).items() if k not in _OWN_KEYS}
        with atomic_output(path, overwrite) as tmp:
            with h5_create(tmp, WriteError, shown=path) as f:   # a full disk: one line
                d = f.create_dataset(name, data=arr, chunks=chunks, compression="gzip",
                                     compression_opts=int(compression_level), shuffle=True)
                d.attrs["axes"] = axes
                if meta.get("spacing") is not None:
                    d.attrs["spacing"] = json.dumps(jsonable_meta({"s": meta["spacing"]})["s"])
                d.attrs["meta"] = json.dumps(extra)
        return path
