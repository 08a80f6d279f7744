"""Remote-sensing converters: UCMerced (×4 SR), CUHK-CR1 (thin clouds), RICE1 (clouds / haze).

Pixels are stored in the files' own dtype. The window follows the data type: 8-bit products
(all three datasets as released) get [0, 255] "8-bit"; 16-bit DN data get the task's registry
window [0, 10000] DN unless ``--window LOW HIGH`` says otherwise. Splits are by image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medrestore.prepare.base import (
    Converter,
    ConvertError,
    Item,
    Record,
    bicubic_downscale,
    child,
    crop_to_multiple,
    file_stem,
    holdout,
    index_files,
    list_files,
    natural_key,
    pair_up,
    parse_fractions,
    relpath,
    require_dir,
    split_by_fractions,
)
from medrestore.prepare.natural import default_val_count, read_image_chw
from medrestore.prepare.options import WindowOptions, option, split_fractions

UCMERCED_CLASSES = 21


def _bands(c: int, nir: bool = False) -> list[str] | None:
    if c == 3:
        return ["R", "G", "B"]
    if c == 4 and nir:
        return ["R", "G", "B", "NIR"]
    return None


def _val_count(help: str = "training pairs held out for validation (default 10 %%, seeded)"
               ) -> Any:
    return option(None, help)


# --------------------------------------------------------------------------------------------
# UCMerced


@dataclass(kw_only=True)
class UcMercedOptions(WindowOptions):
    scale: int = option(4, "SR scale (4)")
    split_fractions: tuple[float, float, float] = split_fractions(
        (0.8, 0.1, 0.1), "per-class image split fractions (default 0.8 0.1 0.1)")


class UcMerced(Converter):
    """UC Merced Land Use ×4 super-resolution (rs_sr).

    Layout: ``SRC/UCMerced_LandUse/Images/<class>/<class>00.tif`` (or ``SRC/Images/…`` or
    ``SRC/<class>/…``): 21 classes × 100 RGB tiles of 256×256 (a few are slightly smaller, e.g.
    256×247). Every tile is a clean HR image, cropped top-left to a multiple of the scale; LR =
    MATLAB-compatible bicubic ``imresize`` ×1/4, rounded to uint8 and stored at native size with
    ``scale``. Split by image, per class, seeded: ``--split-fractions`` 0.8/0.1/0.1 by default
    (DATPRL's own split is not published)."""

    name = "ucmerced"
    help = "UCMerced Land Use tiles -> ×4 bicubic SR pairs, per-class seeded split (rs_sr)"
    task = "rs_sr"

    Options = UcMercedOptions

    def discover(self, opts: UcMercedOptions) -> list[Item]:
        src = Path(opts.src)
        parse_fractions(opts.split_fractions)
        if opts.scale < 2:
            raise ConvertError(f"--scale must be >= 2, got {opts.scale}")
        root = src
        for names in (["UCMerced_LandUse"], ["Images"]):
            root = child(root, names) or root
        classes = [d for d in sorted(root.iterdir(), key=lambda d: natural_key(d.name))
                   if d.is_dir() and list_files(d)]
        if not classes:
            raise ConvertError(f"ucmerced: no class folders with images under {root} (expected "
                               f"{src}/UCMerced_LandUse/Images/agricultural/agricultural00.tif)")
        items: list[Item] = []
        for d in classes:
            files = index_files(list_files(d), file_stem, f"ucmerced class {d.name}")
            split = split_by_fractions(list(files), opts.split_fractions, opts.seed,
                                       f"ucmerced/{d.name}")
            items += [Item(f"ucmerced/{stem}", split[stem], {"path": f, "class": d.name})
                      for stem, f in files.items()]
        return items

    def convert(self, item: Item, opts: UcMercedOptions) -> Iterable[Record]:
        from medrestore.sample import make_meta, pick_window

        src, s = Path(opts.src), int(opts.scale)
        full = read_image_chw(item.data["path"])
        hr = np.ascontiguousarray(crop_to_multiple(full, s))
        lr = bicubic_downscale(hr, s)
        meta = make_meta(self.task, normalisation=pick_window(hr, self.task, item.data["path"],
                                                              opts.window, opts.unit),
                         spacing=None, channels=int(hr.shape[0]),
                         source={"gt": relpath(item.data["path"], src)}, image=item.unit,
                         land_use_class=item.data["class"], bands=_bands(hr.shape[0]),
                         hr_size=[int(v) for v in full.shape[1:]],
                         hr_crop=[int(v) for v in hr.shape[1:]], lr_source="imresize",
                         degradation={"kind": "bicubic", "scale": s,
                                      "implementation": "MATLAB-compatible imresize"})
        yield Record(self.task, item.unit, hr, lr, meta, relpath(item.data["path"], src), scale=s)


# --------------------------------------------------------------------------------------------
# cloud / label pairs (CUHK-CR1, RICE1)


def cloud_label_pairs(folder: Path, where: str) -> list[tuple[str, Path, Path]]:
    cloud = require_dir(child(folder, ["cloud"]) or folder / "cloud", where)
    label = require_dir(child(folder, ["label"]) or folder / "label", where)
    return pair_up(index_files(list_files(cloud), file_stem, f"{where} cloud/"),
                   index_files(list_files(label), file_stem, f"{where} label/"),
                   where, "cloud", "label")


def _cloud_record(task: str, item: Item, opts: WindowOptions, **extra: Any) -> Record:
    from medrestore.sample import check_window, make_meta, pick_window

    src = Path(opts.src)
    lq = read_image_chw(item.data["lq"])
    gt = read_image_chw(item.data["gt"])
    source = {"lq": relpath(item.data["lq"], src), "gt": relpath(item.data["gt"], src)}
    nir = item.data.get("nir")
    if nir is not None:   # NIR files are single-band content saved as (grey) images: band 0
        lq = np.concatenate([lq, read_image_chw(nir["lq"])[:1]], axis=0)
        gt = np.concatenate([gt, read_image_chw(nir["gt"])[:1]], axis=0)
        source.update(nir_lq=relpath(nir["lq"], src), nir_gt=relpath(nir["gt"], src))
    if lq.shape != gt.shape or lq.dtype != gt.dtype:
        raise ConvertError(f"{item.data['lq']} ({lq.shape} {lq.dtype}) and {item.data['gt']} "
                           f"({gt.shape} {gt.dtype}) differ")
    norm = pick_window(gt, task, item.data["gt"], opts.window, opts.unit)
    if opts.window is None:
        check_window(lq, norm, item.data["lq"])
    meta = make_meta(task, normalisation=norm,
                     spacing=None, channels=int(gt.shape[0]), source=source, image=item.unit,
                     bands=_bands(gt.shape[0], nir is not None),
                     degradation="real cloudy / clear acquisition pair", **extra)
    return Record(task, item.unit, gt, lq, meta, source["gt"])


@dataclass(kw_only=True)
class CuhkCr1Options(WindowOptions):
    val_count: int | None = _val_count()
    nir: bool = option(False, "append the NIR band (4 bands)")
    nir_dir: Path | None = option(None, "NIR root with {train,test}/{cloud,label} (default "
                                  "<split>/nir)", metavar="DIR")


class CuhkCr1(Converter):
    """CUHK-CR1 thin-cloud removal (cloud_removal): Jilin-1 cloudy / clear pairs, 512×512.

    Layout: ``SRC/{train,test}/{cloud,label}/<name>.png`` (``SRC/CUHK-CR1/…`` also works), RGB
    8-bit. The release ships the near-infrared band separately as grey images; ``--nir`` appends
    it as a 4th band from ``<split>/nir/{cloud,label}/<name>`` (or ``--nir-dir
    DIR/{train,test}/{cloud,label}``). Default: the RGB files' 3 bands. Train -> train minus
    ``--val-count`` (seeded, default 10 %) -> val; test -> test."""

    name = "cuhk_cr1"
    help = "CUHK-CR1 thin-cloud pairs (train/test cloud/label folders, optional NIR) (cloud_removal)"
    task = "cloud_removal"

    Options = CuhkCr1Options

    def discover(self, opts: CuhkCr1Options) -> list[Item]:
        src = Path(opts.src)
        root = child(src, ["CUHK-CR1"]) or src
        items = []
        for part in ("train", "test"):
            folder = require_dir(child(root, [part]) or root / part, "cuhk_cr1")
            nir_root = None
            if opts.nir or opts.nir_dir is not None:
                nir_root = (opts.nir_dir / part) if opts.nir_dir is not None else folder / "nir"
                require_dir(nir_root, "cuhk_cr1 --nir")
            for stem, lq, gt in cloud_label_pairs(folder, f"cuhk_cr1 {part}"):
                data: dict[str, Any] = {"lq": lq, "gt": gt}
                if nir_root is not None:
                    data["nir"] = {r: _same_name(nir_root / d, stem, "cuhk_cr1 --nir")
                                   for r, d in (("lq", "cloud"), ("gt", "label"))}
                items.append(Item(f"cuhk_cr1/{part}/{stem}", part, data))
        _hold_out_val(items, opts, self.name)
        return items

    def convert(self, item: Item, opts: CuhkCr1Options) -> Iterable[Record]:
        yield _cloud_record(self.task, item, opts)


def _same_name(folder: Path, stem: str, where: str) -> Path:
    require_dir(folder, where)
    hits = [f for f in list_files(folder) if file_stem(f) == stem]
    if not hits:
        raise ConvertError(f"{where}: no image named {stem}.* in {folder}")
    return hits[0]


def _hold_out_val(items: list[Item], opts: CuhkCr1Options | Rice1Options, salt: str) -> None:
    train = [it.unit for it in items if it.split == "train"]
    n_val = default_val_count(len(train)) if opts.val_count is None else opts.val_count
    val = holdout(train, n_val, opts.seed, salt, "--val-count")
    for it in items:
        if it.unit in val:
            it.split = "val"


@dataclass(kw_only=True)
class Rice1Options(WindowOptions):
    task: str = option("cloud_removal", "task to file the pairs under (default cloud_removal)",
                       choices=("cloud_removal", "dehaze"))
    split_fractions: tuple[float, float, float] = split_fractions(
        (0.7, 0.1, 0.2), "image split fractions (default 0.7 0.1 0.2)")
    val_count: int | None = _val_count("with train/ + test/ folders: training pairs held out "
                                       "for validation (default 10 %%, seeded)")


class Rice1(Converter):
    """RICE1 (cloud_removal, or ``--task dehaze``): 500 cloudy / clear pairs of 512×512 PNG.

    Layout: ``SRC/{cloud,label}/<n>.png`` (``SRC/RICE1/…`` also works). RICE1 ships no split:
    images are split by a seeded permutation, ``--split-fractions`` 0.7/0.1/0.2 by default
    (350/50/100, so the test set has the 100 images of the common 400/100 protocol). A tree that
    already has ``train/`` and ``test/`` (each with ``cloud/`` + ``label/``) keeps that split
    and holds ``--val-count`` training images out for validation."""

    name = "rice1"
    help = "RICE1 cloud/label pairs, seeded split by image (cloud_removal or dehaze)"
    task = "cloud_removal"

    Options = Rice1Options

    def discover(self, opts: Rice1Options) -> list[Item]:
        src = Path(opts.src)
        root = child(src, ["RICE1"]) or src
        train, test = child(root, ["train"]), child(root, ["test"])
        if train is not None and test is not None:
            items = [Item(f"rice1/{part}/{stem}", part, {"lq": lq, "gt": gt})
                     for part, folder in (("train", train), ("test", test))
                     for stem, lq, gt in cloud_label_pairs(folder, f"rice1 {part}")]
            _hold_out_val(items, opts, self.name)
            return items
        if child(root, ["cloud"]) is None:
            raise ConvertError(f"rice1: folder cloud/ not found in {root} (expected "
                               f"{root}/cloud/0.png and {root}/label/0.png)")
        pairs = cloud_label_pairs(root, "rice1")
        split = split_by_fractions([p[0] for p in pairs], opts.split_fractions, opts.seed, "rice1")
        return [Item(f"rice1/{stem}", split[stem], {"lq": lq, "gt": gt}) for stem, lq, gt in pairs]

    def convert(self, item: Item, opts: Rice1Options) -> Iterable[Record]:
        yield _cloud_record(opts.task, item, opts)
