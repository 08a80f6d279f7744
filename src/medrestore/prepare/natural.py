"""Natural-image converters: DIV2K / DF2K (×4 SR), Rain100L (deraining), GoPro (deblurring).

8-bit photographs are stored as uint8 (window [0, 255], "8-bit"). SR inputs are stored at
their native low resolution with ``scale``; loaders bring them to the HR grid with MATLAB
bicubic. Splits are by image (DIV2K, Rain100L) or by sequence (GoPro), never by crop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medrestore.prepare.base import (
    Converter,
    ConvertError,
    Item,
    Record,
    as_chw,
    bicubic_downscale,
    child,
    crop_to_multiple,
    file_stem,
    holdout,
    index_files,
    iter_progress,
    list_files,
    natural_key,
    pair_up,
    read_array,
    relpath,
    require_dir,
)
from medrestore.prepare.options import SourceOptions, option


def read_image_chw(path: Path) -> np.ndarray:
    arr, _ = read_array(path)
    return as_chw(np.asarray(arr), str(path))


def _pair_meta(task: str, gt: np.ndarray, src: Path, lq_path: Path | None, gt_path: Path,
               **extra: Any) -> dict[str, Any]:
    from medrestore.sample import make_meta, pick_window

    source = {"gt": relpath(gt_path, src)}
    if lq_path is not None:
        source["lq"] = relpath(lq_path, src)
    return make_meta(task, normalisation=pick_window(gt, task, gt_path), spacing=None,
                     channels=int(gt.shape[0]), source=source, **extra)


def default_val_count(n_train: int) -> int:
    """10 % of the training units (at least one when there are three or more)."""
    return max(1, int(round(0.1 * n_train))) if n_train >= 3 else 0


# --------------------------------------------------------------------------------------------
# DIV2K / DF2K


@dataclass(kw_only=True)
class Div2kOptions(SourceOptions):
    scale: int = option(4, "SR scale (4)", choices=(2, 3, 4))
    lr: str = option("auto", "LR source: official _LR_bicubic files when present (auto, "
                     "default), official only (missing = error), or always MATLAB imresize",
                     choices=("auto", "official", "imresize"))
    val_count: int = option(10, "training images held out for validation, chosen by seed (10)")


class Div2k(Converter):
    """DIV2K ×4 bicubic super-resolution (natural_sr).

    Layout: ``SRC/DIV2K_train_HR/0001.png``, ``SRC/DIV2K_valid_HR/0801.png`` and, when present,
    the official ``SRC/DIV2K_{train,valid}_LR_bicubic/X4/0001x4.png`` (``SRC/DIV2K/…`` also
    works). HR is cropped (top-left) to a multiple of the scale; an official LR must then be
    exactly HR/scale (an LR of ceil(H/scale) from an uncropped HR is cropped the same way);
    missing LR images are made with MATLAB-compatible bicubic ``imresize``. LR is stored at its
    native size with ``scale``. DIV2K train -> train minus ``--val-count`` images (seeded) ->
    val; DIV2K valid -> test."""

    name = "div2k"
    help = "DIV2K HR (+ official LR X4 when present) -> ×4 SR pairs (natural_sr)"
    task = "natural_sr"

    Options = Div2kOptions

    # (dataset prefix, HR folder, LR folder or None, split of origin)
    def sources(self, opts: Div2kOptions) -> list[tuple[str, Path, Path | None, str]]:
        root = _div2k_root(Path(opts.src))
        return [_div2k_source(root, "train", opts.scale), _div2k_source(root, "valid", opts.scale)]

    def discover(self, opts: Div2kOptions) -> list[Item]:
        self._lr_used = {"official": 0, "imresize": 0, "cropped": 0}
        items: list[Item] = []
        for prefix, hr_dir, lr_dir, origin in self.sources(opts):
            files = list_files(hr_dir)
            if not files:
                raise ConvertError(f"{self.name}: no images in {hr_dir}")
            for f in files:
                lr = None
                if lr_dir is not None and opts.lr != "imresize":
                    cand = lr_dir / f"{f.stem}x{opts.scale}{f.suffix}"
                    lr = cand if cand.is_file() else None
                if lr is None and opts.lr == "official":
                    where = lr_dir or (hr_dir.parent / hr_dir.name.replace("_HR", "_LR_bicubic")
                                       / f"X{opts.scale}")
                    raise ConvertError(f"{self.name}: no official LR image for {f.name} (expected "
                                       f"{where / f'{f.stem}x{opts.scale}{f.suffix}'}); use "
                                       "--lr auto to generate it")
                split = "test" if origin == "valid" else "train"
                items.append(Item(f"{prefix}/{f.stem}", split, {"hr": f, "lr": lr,
                                                                 "origin": origin}))
        train = [it.unit for it in items if it.split == "train"]
        val = holdout(train, opts.val_count, opts.seed, self.name, "--val-count")
        for it in items:
            if it.unit in val:
                it.split = "val"
        return items

    def convert(self, item: Item, opts: Div2kOptions) -> Iterable[Record]:
        src, s = Path(opts.src), int(opts.scale)
        hr_full = read_image_chw(item.data["hr"])
        hr = crop_to_multiple(hr_full, s)
        expect = (hr.shape[1] // s, hr.shape[2] // s)
        lr_path = item.data["lr"]
        if lr_path is not None:
            lr = read_image_chw(lr_path)
            ceil = (math.ceil(hr_full.shape[1] / s), math.ceil(hr_full.shape[2] / s))
            if lr.shape[1:] == ceil and ceil != expect:
                lr = lr[:, :expect[0], :expect[1]]
                self._lr_used["cropped"] += 1
            if lr.shape[1:] != expect or lr.shape[0] != hr.shape[0] or lr.dtype != hr.dtype:
                raise ConvertError(f"{self.name}: {lr_path} is {lr.shape[0]}×{lr.shape[1]}×"
                                   f"{lr.shape[2]} {lr.dtype}; expected {hr.shape[0]}×{expect[0]}×"
                                   f"{expect[1]} {hr.dtype} for HR {item.data['hr'].name} "
                                   f"{hr_full.shape[1]}×{hr_full.shape[2]} at ×{s}")
            how = "official"
        else:
            lr = bicubic_downscale(hr, s)
            how = "imresize"
        self._lr_used[how] += 1
        meta = _pair_meta(self.task, hr, src, lr_path, item.data["hr"], image=item.unit,
                          origin=item.data["origin"], lr_source=how,
                          hr_size=[int(v) for v in hr_full.shape[1:]],
                          hr_crop=[int(v) for v in hr.shape[1:]],
                          degradation={"kind": "bicubic", "scale": s,
                                       "implementation": "official DIV2K/Flickr2K LR (MATLAB "
                                       "imresize)" if how == "official" else
                                       "MATLAB-compatible imresize"})
        yield Record(self.task, item.unit, hr, lr, meta, relpath(item.data["hr"], src), scale=s)

    def notes(self, opts: Div2kOptions) -> list[str]:
        u = getattr(self, "_lr_used", None)
        if not u:
            return []
        return [f"LR images: {u['official']} official, {u['imresize']} generated with imresize"
                + (f", {u['cropped']} official LR cropped from ceil size" if u["cropped"] else "")]


class Df2k(Div2k):
    """DF2K = DIV2K train + Flickr2K, ×4 bicubic super-resolution (natural_sr).

    Layout as ``div2k`` plus ``SRC/Flickr2K/Flickr2K_HR/000001.png`` and (optionally)
    ``SRC/Flickr2K/Flickr2K_LR_bicubic/X4/000001x4.png`` (``SRC/Flickr2K_HR`` also works).
    Train = DIV2K train + Flickr2K minus ``--val-count`` images (seeded, from both);
    test = DIV2K valid. Same LR rule as ``div2k``."""

    name = "df2k"
    help = "DIV2K train + Flickr2K HR (+ official LR) -> ×4 SR pairs; DIV2K valid = test"

    def sources(self, opts: Div2kOptions) -> list[tuple[str, Path, Path | None, str]]:
        src = Path(opts.src)
        root = _div2k_root(src)
        flickr = child(src, ["Flickr2K"]) or src
        hr = child(flickr, ["Flickr2K_HR"])
        if hr is None:
            raise ConvertError(f"df2k: folder Flickr2K_HR not found (expected "
                               f"{src}/Flickr2K/Flickr2K_HR/000001.png)")
        lr_root = child(flickr, ["Flickr2K_LR_bicubic"])
        lr = child(lr_root, [f"X{opts.scale}"]) if lr_root is not None else None
        return [_div2k_source(root, "train", opts.scale), ("flickr2k", hr, lr, "train"),
                _div2k_source(root, "valid", opts.scale)]


def _div2k_root(src: Path) -> Path:
    for cand in (src, src / "DIV2K"):
        if child(cand, ["DIV2K_train_HR"]) is not None:
            return cand
    raise ConvertError(f"div2k: folder DIV2K_train_HR not found in {src} or {src / 'DIV2K'}")


def _div2k_source(root: Path, part: str, scale: int) -> tuple[str, Path, Path | None, str]:
    hr = require_dir(child(root, [f"DIV2K_{part}_HR"]) or root / f"DIV2K_{part}_HR", "div2k")
    lr_root = child(root, [f"DIV2K_{part}_LR_bicubic"])
    lr = child(lr_root, [f"X{scale}"]) if lr_root is not None else None
    return "div2k", hr, lr, part


# --------------------------------------------------------------------------------------------
# Rain100L

_RAIN_TRAIN_DIRS = ("train", "RainTrainL", "rain_data_train_Light", "training", "Rain100L_train")
_RAIN_TEST_DIRS = ("test", "Rain100L", "rain_data_test_Light", "testing", "Rain100L_test")
_LQ_FOLDERS = {"rain", "rainy", "input", "lq", "data"}
_GT_FOLDERS = {"norain", "gt", "target", "clean", "groundtruth", "ground_truth", "label"}
_LQ_PREFIXES = ("rain", "rainy")
_GT_PREFIXES = ("norain", "clean", "gt")


def _rain_role_and_id(f: Path, root: Path) -> tuple[str, str] | None:
    """('lq' | 'gt', pair id) of one file, or None if it is neither (e.g. rain-streak maps).

    The folder decides first (``rain/``, ``rainy/``, ``input/`` vs ``norain/``, ``target/`` …),
    then the name prefix (``rain-001`` vs ``norain-001``). The id drops that prefix and the
    ``x2`` suffix of the original release (``norain-1x2.png``); numbers lose leading zeros."""
    stem = f.stem
    m = re.match(r"^([A-Za-z]+)[-_](.+)$", stem)
    prefix, rest = (m.group(1).lower(), m.group(2)) if m else ("", stem)
    # nearest enclosing folder with a known role (``rain/X2/norain-1x2.png`` is rainy)
    folders = [p.lower() for p in reversed(f.relative_to(root).parts[:-1])]
    folder = next((p for p in folders if p in _LQ_FOLDERS | _GT_FOLDERS), "")
    if folder in _LQ_FOLDERS:
        role = "lq"
    elif folder in _GT_FOLDERS:
        role = "gt"
    elif prefix in _LQ_PREFIXES:
        role = "lq"
    elif prefix in _GT_PREFIXES:
        role = "gt"
    else:
        return None
    ident = rest if prefix in _LQ_PREFIXES + _GT_PREFIXES else stem
    ident = re.sub(r"x2$", "", ident)
    return role, (str(int(ident)) if ident.isdigit() else ident)


def rain_pairs(folder: Path, where: str) -> list[tuple[str, Path, Path]]:
    """Rainy/clean pairs of one Rain100L split folder, whatever the common variant."""
    files = [f for f in list_files(folder, recursive=True)
             if len(f.relative_to(folder).parts) <= 3]
    lq: dict[str, Path] = {}
    gt: dict[str, Path] = {}
    for f in files:
        r = _rain_role_and_id(f, folder)
        if r is None:
            continue
        target = lq if r[0] == "lq" else gt
        if r[1] in target:
            raise ConvertError(f"{where}: {target[r[1]].name} and {f.name} are both "
                               f"{'rainy' if r[0] == 'lq' else 'clean'} image {r[1]}")
        target[r[1]] = f
    if not lq and not gt:
        raise ConvertError(f"{where}: no rain-*/norain-* images (or rain/ + norain/, input/ + "
                           f"target/ folders) in {folder}")
    return pair_up(lq, gt, where, "rainy", "clean")


@dataclass(kw_only=True)
class HoldoutOptions(SourceOptions):
    """Sources with a train/test split of their own: val is held out of train."""

    val_count: int | None = option(None, "training pairs held out for validation (default "
                                   "10 %%, seeded)")


class Rain100L(Converter):
    """Rain100L deraining (derain): 200 training and 100 test rainy/clean pairs.

    Layout: ``SRC/{train,test}/`` (also ``RainTrainL`` / ``Rain100L``, ``rain_data_train_Light``
    / ``rain_data_test_Light``). In each, pairs are found by name whatever the variant:
    ``rain-001.png`` + ``norain-001.png`` side by side, ``rainy/rain-001.png`` +
    ``norain-001.png``, ``rain[/X2]/norain-1x2.png`` + ``norain/norain-1.png`` folders, or
    ``input/`` + ``target/`` with equal names. Train -> train minus ``--val-count`` images (seeded; default 10 %) -> val; test ->
    test."""

    name = "rain100l"
    help = "Rain100L rainy/clean pairs (train/test, common name variants) (derain)"
    task = "derain"

    Options = HoldoutOptions

    def discover(self, opts: HoldoutOptions) -> list[Item]:
        src = Path(opts.src)
        root = src if child(src, _RAIN_TRAIN_DIRS) else (child(src, ["Rain100L"]) or src)
        train_dir, test_dir = child(root, _RAIN_TRAIN_DIRS), child(root, _RAIN_TEST_DIRS)
        if train_dir is None or test_dir is None:
            missing = "train" if train_dir is None else "test"
            raise ConvertError(f"rain100l: no {missing} folder in {root} (expected "
                               f"{root}/train and {root}/test, or RainTrainL / Rain100L)")
        items = []
        for part, folder in (("train", train_dir), ("test", test_dir)):
            for ident, lq, gt in rain_pairs(folder, f"rain100l {part} ({folder.name})"):
                key = f"rain100l/{part}/{ident}"
                items.append(Item(key, part, {"lq": lq, "gt": gt}))
        train = [it.unit for it in items if it.split == "train"]
        n_val = default_val_count(len(train)) if opts.val_count is None else opts.val_count
        val = holdout(train, n_val, opts.seed, self.name, "--val-count")
        for it in items:
            if it.unit in val:
                it.split = "val"
        return items

    def convert(self, item: Item, opts: HoldoutOptions) -> Iterable[Record]:
        yield _read_pair_record(self.task, item, Path(opts.src), image=item.unit)


def _read_pair_record(task: str, item: Item, src: Path, **extra: Any) -> Record:
    from medrestore.sample import check_window

    lq = read_image_chw(item.data["lq"])
    gt = read_image_chw(item.data["gt"])
    if lq.shape != gt.shape:
        raise ConvertError(f"{item.data['lq']} {lq.shape} and {item.data['gt']} {gt.shape} "
                           "differ in shape")
    meta = _pair_meta(task, gt, src, item.data["lq"], item.data["gt"],
                      degradation="real paired data", **extra)
    check_window(lq, meta["normalisation"], item.data["lq"])
    return Record(task, item.unit, gt, lq, meta, relpath(item.data["gt"], src))


# --------------------------------------------------------------------------------------------
# GoPro


@dataclass(kw_only=True)
class GoProOptions(SourceOptions):
    blur_gamma: bool = option(False, "use blur_gamma/ (gamma-corrected averaging) instead of "
                              "blur/")
    val_sequences: int = option(2, "training sequences held out for validation, seeded "
                                "(default 2)")


class GoPro(Converter):
    """GoPro motion deblurring (deblur): blurred / sharp frame pairs per sequence.

    Layout: ``SRC/GOPRO_Large/{train,test}/<SEQUENCE>/{blur,blur_gamma,sharp}/000047.png`` (or
    ``SRC/{train,test}/…``). ``blur`` (default) or ``blur_gamma`` (``--blur-gamma``) is paired
    with ``sharp`` by file name. Splits are by sequence: ``--val-sequences`` training sequences
    (seeded, default 2) -> val, the other training sequences -> train, test -> test."""

    name = "gopro"
    help = "GoPro blur/sharp pairs per sequence, split by sequence (deblur)"
    unit = "sequence"
    task = "deblur"

    Options = GoProOptions

    def discover(self, opts: GoProOptions) -> list[Item]:
        src = Path(opts.src)
        root = child(src, ["GOPRO_Large", "GoPro"]) or src
        blur = "blur_gamma" if opts.blur_gamma else "blur"
        items = []
        for part in ("train", "test"):
            folder = require_dir(child(root, [part]) or root / part, "gopro")
            seqs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                          key=lambda d: natural_key(d.name))
            if not seqs:
                raise ConvertError(f"gopro: no sequence folders in {folder}")
            for seq in seqs:
                b = require_dir(child(seq, [blur]) or seq / blur, f"gopro sequence {seq.name}")
                s = require_dir(child(seq, ["sharp"]) or seq / "sharp", f"gopro sequence {seq.name}")
                where = f"gopro sequence {seq.name}"
                pairs = pair_up(index_files(list_files(b), file_stem, where),
                                index_files(list_files(s), file_stem, where), where, blur, "sharp")
                items.append(Item(seq.name, part, {"pairs": pairs, "blur": blur}))
        train = [it.unit for it in items if it.split == "train"]
        val = holdout(train, opts.val_sequences, opts.seed, self.name, "--val-sequences")
        for it in items:
            if it.unit in val:
                it.split = "val"
        return items

    def convert(self, item: Item, opts: GoProOptions) -> Iterable[Record]:
        src = Path(opts.src)
        pairs = item.data["pairs"]
        for frame, b, s in iter_progress(pairs, len(pairs), item.unit, opts.quiet, "frame"):
            sub = Item(f"gopro/{item.unit}/{frame}", item.split, {"lq": b, "gt": s})
            yield _read_pair_record(self.task, sub, src, sequence=item.unit, frame=frame,
                                    blur=item.data["blur"])
