"""Converters from the papers' raw dataset layouts to HDF5 pair shards.

One converter per dataset (``medrestore-prepare NAME --src DIR --out FILE.h5``). Each is a
:class:`~medrestore.datasets.converters.base.Converter` subclass living in a domain module;
this registry maps the sub-command name to ``"module:Class"`` and imports on first use, so
``import medrestore.datasets.converters`` stays light (no numpy, h5py, pydicom, nibabel …).

See ``docs/datasets.md`` for every dataset's expected layout, split rule and normalisation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from medrestore.datasets.converters.base import Converter

_PKG = "medrestore.datasets.converters"

#: sub-command name -> "module:Class" (order = order in ``medrestore-prepare --help``)
CONVERTERS: dict[str, str] = {
    "aapm_mayo": f"{_PKG}.medical:AapmMayo",
    "ixi": f"{_PKG}.medical:Ixi",
    "pet": f"{_PKG}.medical:PairedPet",
    "div2k": f"{_PKG}.natural:Div2k",
    "df2k": f"{_PKG}.natural:Df2k",
    "rain100l": f"{_PKG}.natural:Rain100L",
    "gopro": f"{_PKG}.natural:GoPro",
    "ucmerced": f"{_PKG}.remote_sensing:UcMerced",
    "cuhk_cr1": f"{_PKG}.remote_sensing:CuhkCr1",
    "rice1": f"{_PKG}.remote_sensing:Rice1",
    "paired_folder": f"{_PKG}.generic:PairedFolder",
    "clean_folder": f"{_PKG}.generic:CleanFolder",
}


def converter_names() -> list[str]:
    return list(CONVERTERS)


def get_converter(name: str) -> "Converter":
    """A fresh converter instance by sub-command name (unknown names list the known ones)."""
    from medrestore.registry import RegistryError

    try:
        target = CONVERTERS[name]
    except KeyError:
        raise RegistryError(f"unknown dataset converter {name!r}; known converters: "
                            f"{', '.join(CONVERTERS)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)()


__all__ = ["CONVERTERS", "converter_names", "get_converter"]
