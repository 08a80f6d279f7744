"""Shared machinery of the dataset converters: discovery, pairing, splits, writing, summary.

A converter works in two phases:

1. :meth:`Converter.discover` walks the source tree, checks its layout, pairs files and assigns
   every **unit** (patient, subject, sequence or image) to one split. It reads headers at most,
   never pixels, so a wrong ``--src`` or a broken layout fails in a second, before slow work.
2. :meth:`Converter.convert` reads one unit's pixels and yields its samples (slices of a volume,
   one image pair, …) as :class:`Record` objects. A record never chooses its split: it inherits
   its unit's, so slices or crops of one patient can never land in two splits.

:func:`run_converter` drives both: it refuses an existing ``--out`` first, checks the options
(a dataclass of :mod:`medrestore.prepare.options`, the same whether they come from the command
line or from :func:`medrestore.prepare.run`), applies ``--limit`` (the first N units of each
split), writes every record with :class:`~medrestore.io.hdf5.PairWriter` in **physical**
storage (the source's own units and dtype; normalised at read time with
``meta["normalisation"]``; the demo's samples are stored normalised), shows a tqdm bar on
stderr and returns the counts per task and split.

Conventions used by all converters:

* keys are ``"<dataset>/<unit>[/<slice or frame>]"`` and identify the *clean* image;
* ``source`` (writer argument) is the GT file relative to ``--src``; ``meta["source"]`` holds
  both files (``{"lq": ..., "gt": ...}``);
* seeded choices (split permutations, held-out units) use
  :func:`medrestore.degradations.rng.keyed_rng` with a fixed salt per dataset, so they depend
  only on the ids present and ``--seed``, never on file-system order.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.io.base import format_for_suffix
from medrestore.prepare.options import ConvertError, Options, SourceOptions, build_options, option

SPLITS = ("train", "val", "test")
#: io formats of single 2-D images (suffixes come from the io format registry)
IMAGE_FORMATS = ("png", "jpeg", "bmp", "tiff", "jpeg2000")


# --------------------------------------------------------------------------------------------
# data classes


@dataclass
class Item:
    """One split unit (patient, subject, sequence or image) and what is needed to convert it."""

    unit: str
    split: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """One sample to write. ``lq`` is ``None`` only for clean-only (simulate-on-load) samples.
    ``storage`` is ``"physical"`` (the source's units, normalised at read time) except for
    samples already normalised to [0, 1] (the demo)."""

    task: str
    key: str
    gt: np.ndarray
    lq: np.ndarray | None
    meta: dict[str, Any]
    source: str = ""
    scale: int = 1
    storage: str = "physical"


class Converter:
    """Base class: a sub-command ``medrestore-prepare <name>``.

    Subclasses set ``name``/``help``/``unit`` and ``Options`` (a dataclass of
    :mod:`medrestore.prepare.options`, from which the CLI is generated) and implement
    :meth:`discover` and :meth:`convert` (see the module docstring)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    unit: ClassVar[str] = "image"          # what one progress-bar step is
    Options: ClassVar[type[Options]] = SourceOptions

    def options(self, **values: Any) -> Options:
        """This converter's options from keyword values (unknown names are one error line)."""
        return build_options(self.Options, self.name, values)

    def check(self, opts: Options) -> None:
        """Converter-specific checks that need no discovery, run before any slow work."""

    def discover(self, opts: Options) -> list[Item]:
        raise NotImplementedError

    def convert(self, item: Item, opts: Options) -> Iterable[Record]:
        raise NotImplementedError

    def sample_meta(self, rec: Record, item: Item) -> dict[str, Any]:
        """The meta written for ``rec``: the record's own, plus the dataset and split."""
        return {**rec.meta, "dataset": self.name, "split": item.split}

    def space_needed(self, opts: Options, items: Sequence[Item] | None
                     ) -> tuple[int, str] | None:
        """Bytes the shard will need and what the estimate is based on (for the message).
        Called with ``items=None`` before discovery (a converter that knows its size then
        fails fast) and, when that gave ``None``, with the discovered items."""
        if items is None:
            return None
        return _source_bytes(items), f"estimated from the {len(items)} source unit(s)"

    def notes(self, opts: Options) -> list[str]:
        """Lines printed after the summary (e.g. which LR source was used)."""
        return []

    def report(self, opts: Options) -> dict[str, Any]:
        """Extra entries of the summary :func:`run_converter` returns."""
        return {}


#: read_image options of the converter being run (set by run_converter, used by read_array)
_READ_OPTIONS: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------
# running


def refuse_existing(out: Path, overwrite: bool, error: type[Exception] | None = None) -> None:
    # checked before any slow work, so a mistyped path costs nothing and loses nothing
    if error is None:
        from medrestore.io.hdf5 import ShardError as error
    if out.exists() and not overwrite:
        raise error(f"{out}: already exists; pass --overwrite to replace it")


@dataclass
class Plan:
    """What every converter run knows before it writes: the output, the start time, the
    source root (or ``None``), the units to convert and the store's attributes."""

    out: Path
    t0: float
    src: Path | None
    items: list[Item]
    attrs: dict[str, Any]


def plan_run(conv: Converter, opts: Options, error: type[Exception]) -> Plan:
    """The opening every store writer shares: refuse an existing output, validate the options,
    check the free space (before discovery when the converter knows its size, else from the
    discovered units), discover and split the units (``--limit`` applied) and the attributes
    (``dataset``, ``source_root``, ``seed``, ``args``). ``error`` is the store's error class."""
    from medrestore.io.base import ensure_free_space

    out = Path(opts.out)
    refuse_existing(out, bool(opts.overwrite), error)
    opts.validate()
    t0 = time.perf_counter()
    space = conv.space_needed(opts, None)
    if space is not None:
        ensure_free_space(out, space[0], error, space[1])
    conv.check(opts)
    src = opts.src if isinstance(opts, SourceOptions) else None
    items = conv.discover(opts)
    check_units(items, conv.name)
    items = limit_items(items, opts.limit if isinstance(opts, SourceOptions) else None)
    if not items:
        raise ConvertError(f"{conv.name}: nothing to convert under {src}")
    if space is None:
        space = conv.space_needed(opts, items)
        if space is not None:
            ensure_free_space(out, space[0], error, space[1])
    attrs: dict[str, Any] = {"dataset": conv.name}
    if src is not None:
        attrs["source_root"] = str(Path(src).resolve())
    attrs.update(seed=int(opts.seed), args={"dataset": conv.name, **opts.as_dict()})
    return Plan(out, t0, None if src is None else Path(src), list(items), attrs)


def run_converter(conv: Converter, opts: Options) -> dict[str, Any]:
    """Discover, split, convert and write; returns ``{path, counts, units, samples, seconds,
    notes}`` plus the converter's :meth:`~Converter.report`."""
    run_all = getattr(conv, "run_all", None)
    if callable(run_all):   # a converter writing another store (3-D volumes, lesion trees)
        return run_all(opts)
    from medrestore.io.hdf5 import PairWriter, ShardError

    plan = plan_run(conv, opts, ShardError)
    out, t0, src, items, attrs = plan.out, plan.t0, plan.src, plan.items, plan.attrs
    counts: dict[str, dict[str, int]] = {}
    units: dict[str, int] = {s: 0 for s in SPLITS}
    key_unit: dict[str, str] = {}
    from tqdm import tqdm

    bar = tqdm(items, desc=conv.name, unit=conv.unit, disable=bool(opts.quiet), file=sys.stderr,
               dynamic_ncols=True)
    n = 0
    _READ_OPTIONS.update(opts.read_options())
    try:
        with PairWriter(out, overwrite=bool(opts.overwrite), attrs=attrs) as w:
            for item in bar:
                units[item.split] += 1
                rec = None                 # the record being written, when an error comes
                try:
                    for rec in conv.convert(item, opts):
                        # a sample comes from one unit (one clean key may serve several
                        # tasks, as in the demo, but not two units of one task)
                        owner = key_unit.setdefault(f"{rec.task}:{rec.key}", item.unit)
                        if owner != item.unit:
                            raise ConvertError(f"{conv.name}: key {rec.key!r} produced by units "
                                               f"{owner!r} and {item.unit!r}")
                        w.add(rec.lq, rec.gt, task=rec.task, key=rec.key, split=item.split,
                              meta=conv.sample_meta(rec, item), source=rec.source, scale=rec.scale,
                              storage=rec.storage)
                        counts.setdefault(rec.task, {s: 0 for s in SPLITS})[item.split] += 1
                        rec = None
                        n += 1
                        bar.set_postfix(samples=n, refresh=False)
                except MedrestoreError as exc:
                    raise _naming_source(exc, item, rec, src, out) from None
            if n == 0:
                raise ConvertError(f"{conv.name}: no samples were produced from {src} "
                                   "(every slice/image was skipped)")
    finally:
        bar.close()
        _READ_OPTIONS.clear()
    return {"path": str(out), "counts": counts, "units": units, "samples": n,
            "seconds": round(time.perf_counter() - t0, 2), "notes": conv.notes(opts),
            **conv.report(opts)}


def _paths_in(value: Any) -> Iterator[Path]:
    """The paths inside a unit's ``Item.data`` (nested dicts, lists, tuples)."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _paths_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v)


def _source_bytes(items: Sequence[Item]) -> int:
    """Bytes of the source files of ``items``: the shard stores the same pixels, compressed
    about as well as the sources, so this is the estimate of the space it needs."""
    total = 0
    for p in {p for it in items for p in _paths_in(it.data)}:
        try:
            files = [p] if not p.is_dir() else [f for f in p.rglob("*") if f.is_file()]
            total += sum(f.stat().st_size for f in files)
        except OSError:
            continue                                   # unreadable: reading will say so
    return total


def _naming_source(exc: MedrestoreError, item: Item, rec: Record | None, src: Path | None,
                   out: Path) -> MedrestoreError:
    """``exc`` (same class) with the source file(s) of the failing sample or unit in front,
    unless its message already names one of them or is about the output file."""
    msg = str(exc)
    if src is None:                                    # no source tree (the demo)
        return exc
    if rec is not None and isinstance(rec.meta.get("source"), Mapping):
        files = [src / str(v) for v in rec.meta["source"].values() if v]
    else:
        files = []
    if not files:
        files = list(dict.fromkeys(_paths_in(item.data)))
    named = {str(f) for f in files} | {os.path.relpath(f, src) for f in files}
    if not files or str(out) in msg or any(n in msg for n in named):
        return exc
    if len(files) <= 3:
        where = ", ".join(str(f) for f in files)
    else:                                              # a patient / sequence folder
        try:
            where = f"{os.path.commonpath([str(f) for f in files])} ({len(files)} files)"
        except ValueError:                             # absolute and relative paths mixed
            where = f"{files[0]} (and {len(files) - 1} more files)"
    try:
        return type(exc)(f"{where}: {msg}")
    except TypeError:                                  # an error class with another signature
        return exc


def format_summary(summary: Mapping[str, Any]) -> str:
    """Plain-text summary: samples per task and split, units per split, seconds."""
    lines = [f"wrote {summary['path']}: {summary['samples']} samples in "
             f"{summary['seconds']:.1f} s"]
    lines.append(f"  {'task':<16}" + "".join(f"{s:>8}" for s in SPLITS))
    for task, per in summary["counts"].items():
        lines.append(f"  {task:<16}" + "".join(f"{per.get(s, 0):>8}" for s in SPLITS))
    u = summary.get("units", {})
    lines.append(f"  {'(units)':<16}" + "".join(f"{u.get(s, 0):>8}" for s in SPLITS))
    lines.extend(f"  note: {n}" for n in summary.get("notes", []))
    return "\n".join(lines)


def check_units(items: Sequence[Item], name: str) -> None:
    """Every unit appears once, in one split (splits are by unit, never by slice)."""
    seen: dict[str, str] = {}
    for it in items:
        if it.split not in SPLITS:
            raise ConvertError(f"{name}: unit {it.unit!r} has split {it.split!r}")
        if it.unit in seen:
            raise ConvertError(f"{name}: unit {it.unit!r} listed twice (splits {seen[it.unit]} "
                               f"and {it.split})")
        seen[it.unit] = it.split


def limit_items(items: Sequence[Item], limit: int | None) -> list[Item]:
    """The first ``limit`` units of each split (in discovery order), or all."""
    if limit is None:
        return list(items)
    taken = {s: 0 for s in SPLITS}
    out = []
    for it in items:
        if taken[it.split] < limit:
            taken[it.split] += 1
            out.append(it)
    return out


# --------------------------------------------------------------------------------------------
# files


def natural_key(s: str) -> tuple:
    """Sort key where digit runs compare as numbers (``rain-2`` before ``rain-10``)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower())
                 for t in re.split(r"(\d+)", s) if t)


def file_stem(p: Path | str) -> str:
    name = Path(p).name
    return name[:-7] if name.lower().endswith(".nii.gz") else Path(name).stem


def relpath(p: Path, root: Path) -> str:
    try:
        return Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(p).as_posix()


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConvertError(f"{what}: folder {path} not found")
    return path


def child(base: Path, names: Sequence[str]) -> Path | None:
    """The first sub-folder of ``base`` whose name matches one of ``names`` (case-insensitive)."""
    if not base.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in base.iterdir() if p.is_dir()}
    for n in names:
        if n.lower() in by_lower:
            return by_lower[n.lower()]
    return None


def list_files(folder: Path, formats: Sequence[str] = IMAGE_FORMATS, *,
               recursive: bool = False) -> list[Path]:
    """Files of ``folder`` whose suffix belongs to one of the io ``formats`` (hidden files
    skipped), in natural order."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in it if p.is_file() and not p.name.startswith(".")
             and format_for_suffix(p) in formats]
    return sorted(files, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def index_files(files: Iterable[Path], id_of: Callable[[Path], str | None], where: str
                ) -> dict[str, Path]:
    """``{id: file}``; files whose id is ``None`` are ignored, duplicated ids are an error."""
    out: dict[str, Path] = {}
    for f in files:
        i = id_of(f)
        if i is None:
            continue
        if i in out:
            raise ConvertError(f"{where}: {out[i].name} and {f.name} both map to id {i!r}")
        out[i] = f
    return out


def pair_up(lq: Mapping[str, Path], gt: Mapping[str, Path], where: str,
            lq_name: str = "lq", gt_name: str = "gt") -> list[tuple[str, Path, Path]]:
    """Join two ``{id: file}`` maps; every file must have a partner (the error lists the rest)."""
    only_lq = sorted(set(lq) - set(gt), key=natural_key)
    only_gt = sorted(set(gt) - set(lq), key=natural_key)
    if only_lq or only_gt:
        parts = []
        if only_lq:
            parts.append(f"{len(only_lq)} {lq_name} file(s) without {gt_name}: "
                         + _few([lq[i].name for i in only_lq]))
        if only_gt:
            parts.append(f"{len(only_gt)} {gt_name} file(s) without {lq_name}: "
                         + _few([gt[i].name for i in only_gt]))
        raise ConvertError(f"{where}: unmatched pairs; " + "; ".join(parts))
    return [(i, lq[i], gt[i]) for i in sorted(lq, key=natural_key)]


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", … (+{len(names) - n})" if len(names) > n else "")


# --------------------------------------------------------------------------------------------
# splits


def seeded_order(units: Sequence[str], seed: int, salt: str) -> list[str]:
    """A permutation of ``units`` that depends only on the set of ids, ``seed`` and ``salt``."""
    from medrestore.degradations.rng import keyed_rng

    base = sorted(set(units), key=natural_key)
    perm = keyed_rng(f"split:{salt}", seed).permutation(len(base))
    return [base[i] for i in perm]


def split_by_fractions(units: Sequence[str], fractions: Sequence[float], seed: int, salt: str
                       ) -> dict[str, str]:
    """Assign units to train/val/test by a seeded permutation.

    ``fractions`` = (train, val, test), normalised to sum 1. val and test get
    ``round(n · fraction)`` units (at least one each when their fraction is positive and there
    are at least three units), train the rest; train must keep at least one unit."""
    fr = parse_fractions(fractions)
    order = seeded_order(units, seed, salt)
    n = len(order)
    counts = []
    for f in fr[1:]:
        k = int(round(n * f))
        if f > 0 and k == 0 and n >= 3:
            k = 1
        counts.append(k)
    n_val, n_test = counts
    if n and n - n_val - n_test < 1:
        raise ConvertError(f"{salt}: split fractions {list(fr)} leave no training unit out of {n}")
    out = {u: "test" for u in order[:n_test]}
    out.update({u: "val" for u in order[n_test:n_test + n_val]})
    out.update({u: "train" for u in order[n_test + n_val:]})
    return out


def holdout(units: Sequence[str], count: int, seed: int, salt: str, option: str) -> set[str]:
    """``count`` units chosen by a seeded permutation (e.g. a validation set out of train)."""
    if count < 0:
        raise ConvertError(f"{option} must be >= 0, got {count}")
    if count and count >= len(set(units)):
        raise ConvertError(f"{option} {count} leaves no training unit (only {len(set(units))} "
                           "available)")
    return set(seeded_order(units, seed, salt)[:count])


def parse_fractions(values: Sequence[float] | None, option: str = "--split-fractions"
                    ) -> tuple[float, float, float]:
    if values is None or len(values) != 3:
        raise ConvertError(f"{option} needs three numbers TRAIN VAL TEST, got {values}")
    v = [float(x) for x in values]
    if any(x < 0 or not math.isfinite(x) for x in v) or sum(v) <= 0 or v[0] <= 0:
        raise ConvertError(f"{option} must be non-negative with a positive train share, got {v}")
    s = sum(v)
    return (v[0] / s, v[1] / s, v[2] / s)


def parse_ids(values: Sequence[str] | None) -> list[str]:
    """Ids from repeated / comma-separated option values (``--test-patients L506,L333``)."""
    out: list[str] = []
    for v in values or []:
        out.extend(t for t in re.split(r"[,\s]+", str(v).strip()) if t)
    return out


def split_explicit(units: Sequence[str], val: Sequence[str], test: Sequence[str],
                   val_option: str, test_option: str) -> dict[str, str]:
    """val/test units named explicitly, the rest train; unknown ids are an error."""
    known = set(units)
    for ids, opt in ((val, val_option), (test, test_option)):
        missing = [i for i in ids if i not in known]
        if missing:
            raise ConvertError(f"{opt}: {', '.join(missing)} not found (have: "
                               f"{_few(sorted(known, key=natural_key), 12)})")
    both = sorted(set(val) & set(test))
    if both:
        raise ConvertError(f"{', '.join(both)} named in both {val_option} and {test_option}")
    out = {u: "train" for u in units}
    out.update({u: "val" for u in val})
    out.update({u: "test" for u in test})
    if "train" not in out.values():
        raise ConvertError(f"{val_option}/{test_option} leave no training unit")
    return out


def explicit_ids(unit: str, split: str, default: tuple[str, ...] | None = None) -> Any:
    """The ``--val-<unit>s`` / ``--test-<unit>s`` field: explicit ids of one split."""
    return option(default, f"explicit {'validation' if split == 'val' else split} {unit}s "
                  "(then --split-fractions is ignored)", metavar="ID")


def split_units(units: Sequence[str], opts: Options, unit: str, salt: str) -> dict[str, str]:
    """Apply the :func:`explicit_ids` options (``val_<unit>s`` / ``test_<unit>s``) if given,
    else ``split_fractions``."""
    val = parse_ids(getattr(opts, f"val_{unit}s"))
    test = parse_ids(getattr(opts, f"test_{unit}s"))
    if val or test:
        return split_explicit(units, val, test, f"--val-{unit}s", f"--test-{unit}s")
    return split_by_fractions(units, getattr(opts, "split_fractions"), opts.seed, salt)


# --------------------------------------------------------------------------------------------
# pixels


def as_chw(x: np.ndarray, what: str) -> np.ndarray:
    """``H×W`` -> ``1×H×W``; ``C×H×W`` unchanged; anything else is an error naming ``what``."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise ConvertError(f"{what}: expected a 2-D image, got an array of shape {x.shape}")
    return x


def compact_integral(x: np.ndarray, dtype: type = np.int16) -> np.ndarray:
    """``x`` as ``dtype`` when that is exact (integral values in range), else unchanged.

    CT in HU after ``RescaleSlope 1 / RescaleIntercept -1024`` is integral: int16 halves the
    shard without losing a bit."""
    info = np.iinfo(dtype)
    if x.dtype.kind in "iu" and x.dtype.itemsize <= np.dtype(dtype).itemsize:
        if x.min(initial=0) >= info.min and x.max(initial=0) <= info.max:
            return x.astype(dtype)
        return x
    if x.dtype.kind == "f" and np.isfinite(x).all():
        r = np.rint(x)
        if np.array_equal(r, x) and r.min(initial=0) >= info.min and r.max(initial=0) <= info.max:
            return r.astype(dtype)
    return x


def crop_to_multiple(x: np.ndarray, scale: int) -> np.ndarray:
    """Top-left crop of ``C×H×W`` so that H and W are multiples of ``scale``."""
    h, w = x.shape[-2] // scale * scale, x.shape[-1] // scale * scale
    if h == 0 or w == 0:
        raise ConvertError(f"image of shape {x.shape} is smaller than the scale {scale}")
    return x[..., :h, :w]


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """``C×H×W`` -> ``C×(H/s)×(W/s)`` with MATLAB-compatible bicubic ``imresize`` (antialiased).

    Integer inputs stay integer, rounded and saturated after each pass as MATLAB does for
    ``uint8`` images, so generated LR images follow the convention of the official DIV2K
    ``_LR_bicubic`` PNGs; float inputs give float32."""
    from medrestore.degradations.resize import imresize

    c, h, w = hr.shape
    if h % scale or w % scale:
        raise ConvertError(f"bicubic_downscale needs H, W multiples of {scale}, got {h}×{w}")
    lr = np.asarray(imresize(hr, output_shape=(h // scale, w // scale), layout="chw"))
    return np.ascontiguousarray(lr)


def inplane_spacing(spacing: Sequence[float | None] | None, drop_axis: int | None = None
                    ) -> list[float] | None:
    """Pixel spacing of a slice in mm: the reader's spacing without the sliced axis (``[dz, dy,
    dx]`` -> e.g. ``[dy, dx]``), or ``None`` when any entry is unknown."""
    if spacing is None:
        return None
    vals = [s for i, s in enumerate(spacing) if i != drop_axis]
    if not vals or any(v is None for v in vals):
        return None
    return [float(v) for v in vals]


def read_array(path: Path, **kw: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`medrestore.io.base.read_image`, imported lazily, with the running converter's
    ``--nonfinite`` / ``--bad-spacing`` choices."""
    from medrestore.io.base import read_image

    return read_image(path, **{**_READ_OPTIONS, **kw})


def parse_param(text: str) -> tuple[str, Any]:
    """``k=v`` -> ``(k, v)`` with ``v`` parsed as JSON when possible (numbers, true/false,
    lists), else kept as a string."""
    k, sep, v = text.partition("=")
    if not sep or not k.strip():
        raise ConvertError(f"--param expects KEY=VALUE, got {text!r}")
    v = v.strip()
    try:
        val = json.loads(v)
    except ValueError:
        low = v.lower()
        val = {"true": True, "false": False, "none": None}.get(low, v)
    return k.strip(), val


def iter_progress(it: Iterable[Any], total: int | None, desc: str, quiet: bool,
                  unit: str = "slice") -> Iterator[Any]:
    """A nested tqdm bar (e.g. slices of one volume) that leaves nothing behind."""
    from tqdm import tqdm

    yield from tqdm(it, total=total, desc=desc, disable=quiet, leave=False, file=sys.stderr,
                    dynamic_ncols=True, unit=unit)
