"""Readers and writers: ``read_image`` / ``write_image`` for DICOM, NIfTI, PNG, JPEG, BMP, TIFF,
JPEG 2000 and HDF5 arrays (:mod:`medrestore.io.base`), plus the pair-shard format
(:mod:`medrestore.io.hdf5`).

Names are resolved lazily, so importing this package imports no image library."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "read_image": "medrestore.io.base",
    "write_image": "medrestore.io.base",
    "jsonable_meta": "medrestore.io.base",
    "ReadError": "medrestore.io.base",
    "WriteError": "medrestore.io.base",
    "ImageReader": "medrestore.io.base",
    "register_format": "medrestore.io.base",
    "read_dicom": "medrestore.io.dicom",
    "read_dicom_series": "medrestore.io.dicom",
    "write_dicom_series": "medrestore.io.dicom",
    "DicomError": "medrestore.io.dicom",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medrestore.io' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
