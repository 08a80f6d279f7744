"""Lesion-segmentation converters: public 2-D lesion sets -> the TP-Seg folder layout.

Every converter here writes a :mod:`medrestore.io.segstore` tree (``<split>/image/<name>.png``
+ ``<split>/mask/gt_task<k>/<name>.png`` + the ``tpseg.json`` manifest) instead of an HDF5 pair
shard: a :class:`SegConverter` has its own :meth:`SegConverter.run_converter`, which
:func:`medrestore.prepare.base.run_converter` hands the run to. Discovery, unit splits,
``--limit``, error naming and the summary are the pair converters' (:mod:`.base`).

A record is one (image, mask) pair of one task. Units are patients where the set names them
(figshare brain tumour: ``PID``; COVID-19 CT: the case volume), else the image; a unit's
records all land in its split. Where a set ships an official test split (ISIC 2018's
validation / test folders, Kvasir+CVC's ``TestDataset``, TN3K ``test-*``) it is kept; otherwise
``--split-fractions`` splits the units with a seeded permutation. See ``docs/datasets.md``.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.prepare.base import (
    SPLITS,
    Converter,
    ConvertError,
    Item,
    _naming_source,
    _source_bytes,
    check_units,
    limit_items,
    natural_key,
    relpath,
    split_by_fractions,
)
from medrestore.prepare.options import Options, SourceOptions, option, split_fractions


@dataclass
class SegRecord:
    """One (image, mask) sample. ``image``: uint8 ``H×W`` / ``H×W×3`` or uint16 ``H×W``;
    ``mask``: bool ``H×W``."""

    task: str
    key: str
    image: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any]
    source: str = ""


class SegConverter(Converter):
    """A converter whose output is a lesion-segmentation folder tree.

    Subclasses implement :meth:`tasks` (the tasks written, in ``gt_task<k>`` order, each
    ``{name, modality, mask: real|simulated|derived, …}``), :meth:`discover` and
    :meth:`convert` (yielding :class:`SegRecord` s)."""

    unit: ClassVar[str] = "image"

    def tasks(self, opts: Options) -> list[dict[str, Any]]:
        raise NotImplementedError

    def run_converter(self, opts: Options) -> dict[str, Any]:
        """Discover, split, convert and write the tree; returns the summary
        (``path, counts, units, samples, seconds, notes``) as :func:`.base.run_converter`."""
        from medrestore.io.base import ensure_free_space
        from medrestore.io.segstore import SegStoreError, SegStoreWriter

        out = Path(opts.out)
        if out.exists() and not opts.overwrite:
            raise SegStoreError(f"{out}: already exists; pass --overwrite to replace it")
        opts.validate()
        t0 = time.perf_counter()
        self.check(opts)
        src = opts.src if isinstance(opts, SourceOptions) else None
        items = self.discover(opts)
        check_units(items, self.name)
        items = limit_items(items, opts.limit if isinstance(opts, SourceOptions) else None)
        if not items:
            raise ConvertError(f"{self.name}: nothing to convert under {src}")
        space = self.space_needed(opts, items)
        if space is not None:
            ensure_free_space(out, space[0], SegStoreError, space[1])
        attrs: dict[str, Any] = {"dataset": self.name, "seed": int(opts.seed),
                                 "args": {"dataset": self.name, **opts.as_dict()}}
        if src is not None:
            attrs["source_root"] = str(Path(src).resolve())
        counts: dict[str, dict[str, int]] = {t["name"]: {s: 0 for s in SPLITS}
                                             for t in self.tasks(opts)}
        units = {s: 0 for s in SPLITS}
        from tqdm import tqdm

        bar = tqdm(items, desc=self.name, unit=self.unit, disable=bool(opts.quiet),
                   file=sys.stderr, dynamic_ncols=True)
        n = 0
        try:
            with SegStoreWriter(out, self.tasks(opts), overwrite=bool(opts.overwrite),
                                attrs=attrs) as w:
                for item in bar:
                    units[item.split] += 1
                    try:
                        for rec in self.convert(item, opts):
                            meta = {**rec.meta, "dataset": self.name, "unit": item.unit}
                            w.add(rec.image, rec.mask, task=rec.task, key=rec.key,
                                  split=item.split, meta=meta, source=rec.source)
                            counts[rec.task][item.split] += 1
                            n += 1
                    except MedrestoreError as exc:
                        raise _naming_source(exc, item, None, src, out) from None
                if n == 0:
                    raise ConvertError(f"{self.name}: no samples were produced from {src}")
        finally:
            bar.close()
        return {"path": str(out), "counts": counts, "units": units, "samples": n,
                "seconds": round(time.perf_counter() - t0, 2), "notes": self.notes(opts),
                **self.report(opts)}
