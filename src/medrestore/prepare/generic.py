"""Generic converters for data in no known layout: paired folders and clean-only folders.

Anything :func:`medrestore.io.base.read_image` reads is accepted: 2-D images (PNG, TIFF,
JPEG, JPEG 2000, single DICOM files) give one sample each; volumes (NIfTI ``.nii[.gz]``, or a
folder of DICOM files = one series) give one sample per slice along ``--slice-axis``. The unit
of the split is the file (or series folder): all slices of one volume stay in one split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from medrestore.io.base import format_for_suffix
from medrestore.prepare.base import (
    IMAGE_FORMATS,
    SPLITS,
    Converter,
    ConvertError,
    Item,
    Record,
    as_chw,
    child,
    file_stem,
    inplane_spacing,
    iter_progress,
    natural_key,
    pair_up,
    parse_param,
    read_array,
    relpath,
    split_by_fractions,
)
from medrestore.prepare.options import WindowOptions, option, split_fractions

SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
_LQ_DIRS = ("lq", "input", "low", "degraded")
_GT_DIRS = ("gt", "target", "hq", "clean", "label")
#: what a folder entry may be: a 2-D image, a NIfTI volume or a DICOM file
_ENTRY_FORMATS = IMAGE_FORMATS + ("nifti", "dicom")


def entries(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the readable entries of a folder: image / NIfTI / DICOM files and
    sub-folders (each taken as one DICOM series). Two entries with one stem are an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            stem = p.name
        elif p.is_file() and format_for_suffix(p) in _ENTRY_FORMATS:
            stem = file_stem(p)
        else:
            continue
        if stem in out:
            raise ConvertError(f"{folder}: {out[stem].name} and {p.name} share the stem {stem!r}")
        out[stem] = p
    return out


def is_volume(p: Path) -> bool:
    return p.is_dir() or format_for_suffix(p) == "nifti"


def read_slices(path: Path, axis: int) -> Iterator[tuple[int | None, np.ndarray, list[float] | None]]:
    """``(slice index or None, C×H×W array, in-plane spacing or None)`` for one entry."""
    arr, meta = read_array(path)
    arr = np.asarray(arr)
    spacing = meta.get("spacing")
    if is_volume(path):
        if arr.ndim != 3:
            raise ConvertError(f"{path}: expected a 3-D volume, got shape {arr.shape}")
        inplane = inplane_spacing(spacing, axis) if spacing and len(spacing) == 3 else None
        for i in range(arr.shape[axis]):
            yield i, np.ascontiguousarray(np.take(arr, i, axis=axis)[None]), inplane
    else:
        arr = as_chw(arr, str(path))
        # a single DICOM file comes back as 1×H×W with [dz, dy, dx]: keep the in-plane part
        sp = spacing[-2:] if spacing and len(spacing) >= 2 else meta.get("pixel_spacing")
        yield None, arr, inplane_spacing(sp)


def _task_names() -> list[str]:
    from medrestore.registry import task_names

    return task_names()


@dataclass(kw_only=True)
class FolderOptions(WindowOptions):
    """Options of the generic folder converters."""

    task: str = option(help="task of the samples", choices=_task_names)
    name: str | None = option(None, "dataset name used in keys (default: the --src folder name)")
    split_fractions: tuple[float, float, float] = split_fractions(
        (0.8, 0.1, 0.1), "seeded split by file when there are no train/val/test folders "
        "(default 0.8 0.1 0.1)")
    slice_axis: str = option("axial", "volumes (NIfTI, DICOM series folders) are cut along this "
                             "voxel axis (default axial = k)", choices=tuple(SLICE_AXES))


def _dataset_name(opts: FolderOptions) -> str:
    name = opts.name or Path(opts.src).resolve().name.lower()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "data"
    return name


def _split_folders(src: Path) -> dict[str, Path]:
    return {s: d for s in SPLITS if (d := child(src, [s])) is not None}


# --------------------------------------------------------------------------------------------
# paired folders


class PairedFolder(Converter):
    """Any paired data: ``SRC/lq/`` + ``SRC/gt/`` (or ``SRC/{train,val,test}/{lq,gt}/``).

    Files are paired by stem (``lq/0001.png`` ↔ ``gt/0001.tif``); unmatched files are an error
    that lists them. With split folders, each split keeps its files; without, files are split
    by a seeded permutation (``--split-fractions``). An LQ smaller than its GT by an integer
    factor is stored at native size with that ``scale`` (SR); otherwise shapes must match.
    ``--window LOW HIGH --unit U`` overrides the normalisation (default: [0, 255] for uint8,
    else the task's registry window)."""

    name = "paired_folder"
    help = "generic lq/ + gt/ folders (optionally per split), paired by file stem"
    Options = FolderOptions

    def discover(self, opts: FolderOptions) -> list[Item]:
        src = Path(opts.src)
        name = _dataset_name(opts)
        groups = _split_folders(src)
        if groups:
            found: list[tuple[str, str, Path, Path]] = []
            for split, folder in groups.items():
                found += [(split, *p) for p in self._pairs(folder, f"paired_folder {split}")]
            dup = _duplicates([f[1] for f in found])
            if dup:
                raise ConvertError(f"paired_folder: stem(s) {', '.join(dup)} appear in more than "
                                   "one split folder; a unit must live in one split")
            return [Item(f"{name}/{stem}", split, {"lq": lq, "gt": gt})
                    for split, stem, lq, gt in found]
        pairs = self._pairs(src, "paired_folder")
        split = split_by_fractions([p[0] for p in pairs], opts.split_fractions, opts.seed, name)
        return [Item(f"{name}/{stem}", split[stem], {"lq": lq, "gt": gt})
                for stem, lq, gt in pairs]

    @staticmethod
    def _pairs(folder: Path, where: str) -> list[tuple[str, Path, Path]]:
        lq_dir, gt_dir = child(folder, _LQ_DIRS), child(folder, _GT_DIRS)
        if lq_dir is None or gt_dir is None:
            missing = "lq" if lq_dir is None else "gt"
            raise ConvertError(f"{where}: folder {folder / missing} not found (expected "
                               f"{folder}/lq and {folder}/gt)")
        return pair_up(entries(lq_dir), entries(gt_dir), where)

    def convert(self, item: Item, opts: FolderOptions) -> Iterable[Record]:
        from medrestore.sample import check_window, make_meta, pick_window

        src, task = Path(opts.src), opts.task
        axis = SLICE_AXES[opts.slice_axis]
        lq_path, gt_path = item.data["lq"], item.data["gt"]
        lqs = list(read_slices(lq_path, axis))
        gts = list(read_slices(gt_path, axis))
        if len(lqs) != len(gts):
            raise ConvertError(f"{lq_path} has {len(lqs)} slice(s) but {gt_path} has {len(gts)}")
        source = {"lq": relpath(lq_path, src), "gt": relpath(gt_path, src)}
        for (i, lq, _), (_, gt, spacing) in iter_progress(zip(lqs, gts), len(gts), item.unit,
                                                          opts.quiet, "image"):
            scale = _scale_of(lq, gt, lq_path, gt_path)
            key = item.unit if i is None else f"{item.unit}/{i:03d}"
            norm = pick_window(gt, task, gt_path, opts.window, opts.unit)
            if opts.window is None:
                check_window(lq, norm, lq_path)
            extra: dict[str, Any] = {"slice_index": i, "slice_axis": opts.slice_axis} \
                if i is not None else {}
            meta = make_meta(task, normalisation=norm, spacing=spacing, channels=int(gt.shape[0]),
                             source=source, image=item.unit, degradation="real paired data",
                             **extra)
            yield Record(task, key, gt, lq, meta, source["gt"], scale=scale)


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)}, key=natural_key)


def _scale_of(lq: np.ndarray, gt: np.ndarray, lq_path: Path, gt_path: Path) -> int:
    if lq.shape[0] != gt.shape[0]:
        raise ConvertError(f"{lq_path} has {lq.shape[0]} channel(s), {gt_path} has {gt.shape[0]}")
    (h, w), (H, W) = lq.shape[1:], gt.shape[1:]
    if (h, w) == (H, W):
        return 1
    s = H // h if h else 0
    if s >= 2 and H == s * h and W == s * w:
        return s
    raise ConvertError(f"{lq_path} is {h}×{w} and {gt_path} is {H}×{W}: sizes must be equal or "
                       "differ by one integer SR factor")


# --------------------------------------------------------------------------------------------
# clean folders + simulator


@dataclass(kw_only=True)
class CleanFolderOptions(FolderOptions):
    simulator: str | None = option(None, "simulator name (default: the task's default "
                                   "simulator)")
    param: tuple[str, ...] = option((), "simulator parameter (repeatable; values parsed as JSON "
                                    "numbers / booleans where possible)", metavar="KEY=VALUE",
                                    append=True)
    on_the_fly: bool = option(False, "store training samples clean-only (degraded by the "
                              "loader)")


class CleanFolder(Converter):
    """Clean images only, degraded by a simulator (any task).

    ``SRC/`` holds the clean images (or ``SRC/{train,val,test}/``); ``--simulator`` (default:
    the task's default simulator) with ``--param k=v`` options makes each LQ, seeded per image
    key (``keyed_rng("<task>:<key>", --seed)``): the same seed gives the same shard.
    ``--on-the-fly`` stores training samples clean-only, with ``meta.simulator``, so the loader
    degrades them afresh every time; val / test always get a fixed, written LQ."""

    name = "clean_folder"
    help = "clean images + a degradation simulator (any task; optional on-the-fly training LQ)"
    Options = CleanFolderOptions

    def _simulator(self, opts: CleanFolderOptions) -> tuple[str, dict[str, Any]]:
        from medrestore.degradations.simulators import SIMULATORS, default_simulator

        name = opts.simulator or default_simulator(opts.task)
        if name not in SIMULATORS:
            raise ConvertError(f"--simulator {name!r} is unknown; known simulators: "
                               f"{', '.join(sorted(SIMULATORS))}")
        params = dict(parse_param(p) for p in opts.param)
        return name, params

    def discover(self, opts: CleanFolderOptions) -> list[Item]:
        src = Path(opts.src)
        name = _dataset_name(opts)
        self._simulator(opts)                      # unknown simulator: fail before slow work
        groups = _split_folders(src)
        if groups:
            found = [(split, stem, path) for split, folder in groups.items()
                     for stem, path in entries(folder).items()]
            dup = _duplicates([f[1] for f in found])
            if dup:
                raise ConvertError(f"clean_folder: stem(s) {', '.join(dup)} appear in more than "
                                   "one split folder; a unit must live in one split")
        else:
            found = [("", stem, path) for stem, path in entries(src).items()]
            split = split_by_fractions([f[1] for f in found], opts.split_fractions, opts.seed, name)
            found = [(split[stem], stem, path) for _, stem, path in found]
        if not found:
            raise ConvertError(f"clean_folder: no images or volumes in {src}")
        return [Item(f"{name}/{stem}", split, {"gt": path}) for split, stem, path in found]

    def convert(self, item: Item, opts: CleanFolderOptions) -> Iterable[Record]:
        from medrestore.degradations.rng import keyed_rng
        from medrestore.degradations.simulators import simulate
        from medrestore.sample import Normalisation, make_meta, pick_window

        src, task = Path(opts.src), opts.task
        sim, params = self._simulator(opts)
        axis = SLICE_AXES[opts.slice_axis]
        gt_path = item.data["gt"]
        source = {"gt": relpath(gt_path, src)}
        slices = list(read_slices(gt_path, axis))
        for i, gt, spacing in iter_progress(slices, len(slices), item.unit, opts.quiet, "image"):
            key = item.unit if i is None else f"{item.unit}/{i:03d}"
            norm = pick_window(gt, task, gt_path, opts.window, opts.unit)
            degradation = {"simulator": sim, "params": params, "seed": int(opts.seed)}
            extra: dict[str, Any] = {"slice_index": i, "slice_axis": opts.slice_axis} \
                if i is not None else {}
            if opts.on_the_fly and item.split == "train":
                extra["simulator"] = {"name": sim, "params": params}
                lq = None
            else:
                lq = simulate(sim, gt.astype(np.float32), rng=keyed_rng(f"{task}:{key}", opts.seed),
                              normalisation=Normalisation.from_dict(norm), spacing=spacing,
                              **params)
                lq = np.asarray(lq, dtype=np.float32)
            meta = make_meta(task, normalisation=norm, spacing=spacing, channels=int(gt.shape[0]),
                             source=source, image=item.unit, degradation=degradation, **extra)
            yield Record(task, key, gt, lq, meta, source["gt"])
