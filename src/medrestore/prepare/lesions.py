"""Lesion-segmentation converters: public 2-D lesion sets -> the TP-Seg folder layout.

Every converter here writes a :mod:`medrestore.io.segstore` tree (``<split>/image/<name>.png``
+ ``<split>/mask/gt_task<k>/<name>.png`` + the ``tpseg.json`` manifest) instead of an HDF5 pair
shard: a :class:`SegConverter` has its own :meth:`SegConverter.run_all`, which
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
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.prepare.base import (
    SPLITS,
    Converter,
    ConvertError,
    Item,
    _naming_source,
    natural_key,
    relpath,
    plan_run,
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

    def run_all(self, opts: Options) -> dict[str, Any]:
        """Discover, split, convert and write the tree; returns the summary
        (``path, counts, units, samples, seconds, notes``) as :func:`.base.run_converter`."""
        from medrestore.io.segstore import SegStoreError, SegStoreWriter

        plan = plan_run(self, opts, SegStoreError)
        out, t0, src, items, attrs = plan.out, plan.t0, plan.src, plan.items, plan.attrs
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


# -------------------------------------------------------------------------------- helpers
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load_image(path: Path) -> np.ndarray:
    """An image file as stored: uint8 ``H×W`` / ``H×W×3`` or uint16 ``H×W`` (alpha, palettes
    and other modes become RGB). Unreadable files are one error line naming them."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: cannot read image ({exc})") from None


def load_masks(paths: Sequence[Path]) -> np.ndarray:
    """The union of one or more mask files (BUSI's ``_mask_1`` extras are OR-ed in)."""
    from medrestore.io.segstore import SegStoreError, read_mask

    out = None
    for p in paths:
        try:
            m = read_mask(p)
        except SegStoreError as exc:
            raise ConvertError(str(exc)) from None
        if out is not None and m.shape != out.shape:
            raise ConvertError(f"{p}: mask is {m.shape[0]}×{m.shape[1]}, other masks of the "
                               f"image are {out.shape[0]}×{out.shape[1]}")
        out = m if out is None else (out | m)
    assert out is not None
    return out


def image_files(folder: Path) -> dict[str, Path]:
    """``{stem: file}`` of the image files in ``folder`` (natural order)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_SUFFIXES]
    out: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: natural_key(p.name)):
        if p.stem in out:
            raise ConvertError(f"{folder}: {out[p.stem].name} and {p.name} share the stem {p.stem!r}")
        out[p.stem] = p
    return out


def find_dir(base: Path, names: Sequence[str], what: str, required: bool = True) -> Path | None:
    """The first existing ``base/<name>`` (names may be nested paths; case-insensitive on the
    last part), else a one-line error listing what was looked for."""
    for n in names:
        p = base / n
        if p.is_dir():
            return p
        parent = p.parent
        if parent.is_dir():
            for q in parent.iterdir():
                if q.is_dir() and q.name.lower() == p.name.lower():
                    return q
    if required:
        raise ConvertError(f"{what}: none of {', '.join(names)} found under {base}")
    return None


def pair_folder(img_dir: Path, mask_dir: Path, mask_stem: Callable[[str], str] = lambda s: s
                ) -> list[tuple[str, Path, list[Path]]]:
    """``(id, image, [mask])`` of two folders; every image needs a mask and vice versa."""
    images = image_files(img_dir)
    masks = {}
    for stem, p in image_files(mask_dir).items():
        masks[mask_stem(stem)] = p
    only_i = sorted(set(images) - set(masks), key=natural_key)
    only_m = sorted(set(masks) - set(images), key=natural_key)
    if only_i or only_m:
        what = (f"image {images[only_i[0]]} has no mask in {mask_dir}" if only_i else
                f"mask {masks[only_m[0]]} has no image in {img_dir}")
        raise ConvertError(f"{what} ({len(only_i)} image(s) and {len(only_m)} mask(s) unpaired)")
    return [(i, images[i], [masks[i]]) for i in sorted(images, key=natural_key)]


def carve(units: Sequence[str], fractions: Sequence[float], seed: int, salt: str,
          have: Sequence[str] = ()) -> dict[str, str]:
    """Split ``units`` (all from the training pool) into train/val/test by ``fractions``,
    except that a split in ``have`` (an official one, filled elsewhere) gets none of them."""
    fr = [float(f) for f in fractions]
    for i, s in enumerate(SPLITS):
        if s in have:
            fr[i] = 0.0
    return split_by_fractions(units, fr, seed, salt)


@dataclass(kw_only=True)
class LesionOptions(SourceOptions):
    """Options every lesion converter has."""

    task: str = option("", "task name written to the tree (default: the converter's, e.g. SL "
                       "for ISIC 2018; the TP-Seg table's abbreviations)")
    split_fractions: tuple[float, float, float] = split_fractions(
        (0.7, 0.1, 0.2), "seeded split of the units (patients where known, else images) for the "
                         "splits the set does not define itself (default 0.7 0.1 0.2)")


class PairConverter(SegConverter):
    """Converters whose units are (image file, mask files) pairs. Subclasses implement
    :meth:`pairs` -> ``[(split or None, unit id, image, [masks], extra meta)]``; units with
    split ``None`` are split by ``--split-fractions`` (minus the splits the set defines)."""

    Options = LesionOptions
    default_task: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    salt: ClassVar[str] = ""

    def task_name(self, opts: LesionOptions) -> str:
        return opts.task or self.default_task

    def tasks(self, opts: LesionOptions) -> list[dict[str, Any]]:
        return [{"name": self.task_name(opts), "modality": self.modality, "mask": "real",
                 "dataset": self.name}]

    def pairs(self, opts: LesionOptions) -> list[tuple[str | None, str, Path, list[Path], dict]]:
        raise NotImplementedError

    def discover(self, opts: LesionOptions) -> list[Item]:
        found = self.pairs(opts)
        if not found:
            raise ConvertError(f"{self.name}: no image/mask pairs under {opts.src}")
        have = sorted({s for s, *_ in found if s is not None})
        free = [u for s, u, *_ in found if s is None]
        split = carve(free, opts.split_fractions, opts.seed, self.salt or self.name, have) \
            if free else {}
        return [Item(unit, s or split[unit], {"image": img, "masks": list(masks), "extra": extra})
                for s, unit, img, masks, extra in found]

    def convert(self, item: Item, opts: LesionOptions) -> Iterable[SegRecord]:
        src = Path(opts.src)
        image = load_image(item.data["image"])
        mask = load_masks(item.data["masks"])
        if mask.shape != image.shape[:2]:
            raise ConvertError(f"{item.data['masks'][0]}: mask is {mask.shape[0]}×{mask.shape[1]} "
                               f"but image {item.data['image']} is {image.shape[0]}×{image.shape[1]}")
        source = {"image": relpath(item.data["image"], src),
                  "masks": [relpath(m, src) for m in item.data["masks"]]}
        meta = {"modality": self.modality, "mask": "real", "source": source,
                "shape": list(image.shape[:2]), **item.data["extra"]}
        yield SegRecord(self.task_name(opts), f"{self.name}/{item.unit}", image, mask, meta,
                        source["image"])


# -------------------------------------------------------------------------------- generic
@dataclass(kw_only=True)
class SegFolderOptions(LesionOptions):
    task: str = option(help="task name written to the tree")
    modality: str = option("unknown", "modality recorded in the manifest")
    mask_suffix: str = option("", "what mask file names add to the image stem (e.g. "
                              "_segmentation, _mask); default: same stem")


class SegFolder(PairConverter):
    """Generic image / mask folder pairs.

    ``SRC/{images|image|imgs}/`` + ``SRC/{masks|mask|labels|label|gt}/`` (paired by file stem,
    the mask stem optionally with ``--mask-suffix``), or ``SRC/{train,val,test}/`` each with
    that pair of folders (then those splits are kept). Any 2-D format Pillow reads."""

    name = "seg_folder"
    help = "generic image/mask folder pairs -> lesion-segmentation tree"
    Options = SegFolderOptions
    IMG = ("images", "image", "imgs", "img")
    MSK = ("masks", "mask", "labels", "label", "gt", "ground_truth")

    def tasks(self, opts: SegFolderOptions) -> list[dict[str, Any]]:
        return [{"name": opts.task, "modality": opts.modality, "mask": "real",
                 "dataset": self.name}]

    def pairs(self, opts: SegFolderOptions):
        src = Path(opts.src)
        strip = opts.mask_suffix

        def stem(s: str) -> str:
            return s[: -len(strip)] if strip and s.endswith(strip) else s

        splits = [s for s in SPLITS if (src / s).is_dir()]
        bases = [(s, src / s) for s in splits] if splits else [(None, src)]
        out = []
        for split, base in bases:
            i = find_dir(base, self.IMG, self.name)
            m = find_dir(base, self.MSK, self.name)
            for uid, img, masks in pair_folder(i, m, stem):
                out.append((split, uid, img, masks, {}))
        return out

    def convert(self, item: Item, opts: SegFolderOptions) -> Iterable[SegRecord]:
        for rec in super().convert(item, opts):
            rec.meta["modality"] = opts.modality
            yield rec


@dataclass(kw_only=True)
class TpsegFolderOptions(LesionOptions):
    task_names: tuple[str, ...] = option(help="names of gt_task0, gt_task1, … in order (e.g. "
                                         "WA BT ADC TN CP LI BL SL)", metavar="NAME")
    modalities: tuple[str, ...] = option((), "modality of each task, same order (optional)",
                                         metavar="MODALITY")


class TpsegFolder(SegConverter):
    """A TP-Seg / SR-ICL tree (``<split>/image`` + ``<split>/mask/gt_task<k>`` or
    ``<split>/gt_task<k>``; or one split folder, split by ``--split-fractions``) rewritten with
    a manifest (names, modalities, shapes). Such a tree is also read directly by the
    DataModule (``data.root: {root: DIR, task_names: [...]}``); converting checks every pair
    once and records the task names."""

    name = "tpseg_folder"
    help = "TP-Seg / SR-ICL folder layout (image/ + gt_task<k>/) -> tree with a manifest"
    Options = TpsegFolderOptions

    def tasks(self, opts: TpsegFolderOptions) -> list[dict[str, Any]]:
        mods = list(opts.modalities) + ["unknown"] * len(opts.task_names)
        return [{"name": t, "modality": mods[i], "mask": "real", "dataset": self.name}
                for i, t in enumerate(opts.task_names)]

    def check(self, opts: TpsegFolderOptions) -> None:
        if opts.modalities and len(opts.modalities) != len(opts.task_names):
            raise ConvertError(f"--modalities has {len(opts.modalities)} entries but "
                               f"--task-names has {len(opts.task_names)}")

    def discover(self, opts: TpsegFolderOptions) -> list[Item]:
        from medrestore.io.segstore import SegStore, SegStoreError

        try:
            store = SegStore(opts.src, list(opts.task_names))
            rows = [(s, r) for s in store.splits for r in store.rows(s)]
        except SegStoreError as exc:
            raise ConvertError(str(exc)) from None
        by_unit: dict[str, dict[str, Any]] = {}
        for s, r in rows:
            u = by_unit.setdefault(f"{s}/{r['name']}" if s != "all" else r["name"],
                                   {"split": s, "rows": []})
            u["rows"].append(r)
        free = [u for u, v in by_unit.items() if v["split"] == "all"]
        split = carve(free, opts.split_fractions, opts.seed, self.name) if free else {}
        return [Item(u, v["split"] if v["split"] != "all" else split[u], {
            "image": v["rows"][0]["image"], "masks": [r["mask"] for r in v["rows"]],
            "rows": v["rows"]}) for u, v in by_unit.items()]

    def convert(self, item: Item, opts: TpsegFolderOptions) -> Iterable[SegRecord]:
        image = load_image(item.data["image"])
        mods = dict(zip(opts.task_names, list(opts.modalities) or ["unknown"] * 99))
        for r in item.data["rows"]:
            mask = load_masks([r["mask"]])
            if mask.shape != image.shape[:2]:
                raise ConvertError(f"{r['mask']}: mask is {mask.shape[0]}×{mask.shape[1]} but "
                                   f"image {r['image']} is {image.shape[0]}×{image.shape[1]}")
            src = Path(opts.src)
            source = {"image": relpath(r["image"], src), "masks": [relpath(r["mask"], src)]}
            yield SegRecord(r["task"], f"{self.name}/{r['name']}", image, mask,
                            {"modality": mods.get(r["task"], "unknown"), "mask": "real",
                             "source": source, "shape": list(image.shape[:2])}, source["image"])


# -------------------------------------------------------------------------------- public sets
class Isic2018(PairConverter):
    """ISIC 2018 Task 1 (skin lesion, dermoscopy).

    ``SRC/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` +
    ``SRC/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png``; the official
    ``…_Validation_…`` and ``…_Test_…`` folder pairs, when present, are the val / test splits
    (otherwise carved from training by ``--split-fractions``). Unit: the image."""

    name = "isic2018"
    help = "ISIC 2018 Task 1 skin-lesion segmentation (dermoscopy)"
    default_task, modality = "SL", "dermoscopy"

    def pairs(self, opts: LesionOptions):
        src = Path(opts.src)
        out = []
        for split, part in (("train", "Training"), ("val", "Validation"), ("test", "Test")):
            idir = src / f"ISIC2018_Task1-2_{part}_Input"
            gdir = src / f"ISIC2018_Task1_{part}_GroundTruth"
            if not idir.is_dir() and not gdir.is_dir():
                if split == "train":
                    raise ConvertError(f"isic2018: {idir.name}/ and {gdir.name}/ not found under "
                                       f"{src}")
                continue
            if not (idir.is_dir() and gdir.is_dir()):
                missing = gdir if idir.is_dir() else idir
                raise ConvertError(f"isic2018: {missing} not found (needed beside "
                                   f"{(idir if idir.is_dir() else gdir).name})")
            for uid, img, masks in pair_folder(idir, gdir, lambda s: s.removesuffix("_segmentation")):
                out.append((split if split != "train" else None, uid, img, masks, {}))
        return out


class Busi(PairConverter):
    """BUSI breast ultrasound (Al-Dhabyani et al.).

    ``SRC/Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png`` with its mask
    ``benign (1)_mask.png`` and any extra ``benign (1)_mask_1.png`` … (several lesions), OR-ed.
    ``normal`` images (empty masks) are left out unless ``--include-normal`` (TP-Seg's 647 BL
    images are benign + malignant). Unit: the image; split by ``--split-fractions``."""

    name = "busi"
    help = "BUSI breast-ultrasound lesion segmentation"
    default_task, modality = "BL", "ultrasound"

    @dataclass(kw_only=True)
    class Options(LesionOptions):
        include_normal: bool = option(False, "also convert the normal class (empty masks)")

    def pairs(self, opts):
        src = Path(opts.src)
        root = find_dir(src, ("Dataset_BUSI_with_GT", "."), self.name)
        classes = ["benign", "malignant"] + (["normal"] if opts.include_normal else [])
        out = []
        found_any = False
        for cls in classes:
            folder = find_dir(root, (cls,), self.name, required=cls != "normal")
            if folder is None:
                continue
            found_any = True
            files = image_files(folder)
            masks: dict[str, list[Path]] = {}
            images = {}
            for stem, p in files.items():
                m = re.fullmatch(r"(.*)_mask(?:_\d+)?", stem)
                if m:
                    masks.setdefault(m.group(1), []).append(p)
                else:
                    images[stem] = p
            for stem in sorted(set(masks) - set(images)):
                raise ConvertError(f"busi: mask {masks[stem][0]} has no image {stem}.png")
            for stem in sorted(images, key=natural_key):
                if stem not in masks:
                    raise ConvertError(f"busi: image {images[stem]} has no {stem}_mask.png")
                uid = stem.replace(" ", "").replace("(", "_").replace(")", "")
                out.append((None, uid, images[stem], sorted(masks[stem], key=lambda p: natural_key(p.name)),
                            {"class": cls}))
        if not found_any:
            raise ConvertError(f"busi: no benign/ or malignant/ folder under {root}")
        return out


class KvasirSeg(PairConverter):
    """Kvasir-SEG (polyps, endoscopy): ``SRC/Kvasir-SEG/images/*.jpg`` + ``masks/*.jpg``
    (same names; ``SRC`` may also be the Kvasir-SEG folder). JPEG masks are thresholded at
    half range. Unit: the image; split by ``--split-fractions``."""

    name = "kvasir_seg"
    help = "Kvasir-SEG polyp segmentation (endoscopy)"
    default_task, modality = "CP", "endoscopy"

    def pairs(self, opts):
        src = Path(opts.src)
        root = src / "Kvasir-SEG" if (src / "Kvasir-SEG").is_dir() else src
        i = find_dir(root, ("images",), self.name)
        m = find_dir(root, ("masks",), self.name)
        return [(None, uid, img, masks, {}) for uid, img, masks in pair_folder(i, m)]


class PolypCollection(PairConverter):
    """The polyp benchmark of PraNet (Kvasir + CVC-ClinicDB training, five test sets).

    ``SRC/TrainDataset/{images,masks}/`` -> train (``--split-fractions``' val share is carved
    from it; its test share is ignored), ``SRC/TestDataset/<set>/{images,masks}/`` (CVC-300,
    CVC-ClinicDB, CVC-ColonDB, ETIS-LaribPolypDB, Kvasir) -> test, ``meta.subset`` = the set.
    ``image``/``mask`` folder names are accepted too. Unit: the image."""

    name = "polyp"
    help = "PraNet polyp collection (TrainDataset / TestDataset/<set>)"
    default_task, modality = "CP", "endoscopy"

    def pairs(self, opts):
        src = Path(opts.src)
        train = find_dir(src, ("TrainDataset",), self.name)
        out = [(None, f"train/{uid}", img, masks, {"subset": "TrainDataset"})
               for uid, img, masks in pair_folder(find_dir(train, ("images", "image"), self.name),
                                                  find_dir(train, ("masks", "mask"), self.name))]
        test = find_dir(src, ("TestDataset",), self.name, required=False)
        if test is not None:
            for sub in sorted(p for p in test.iterdir() if p.is_dir()):
                for uid, img, masks in pair_folder(find_dir(sub, ("images", "image"), self.name),
                                                   find_dir(sub, ("masks", "mask"), self.name)):
                    out.append(("test", f"{sub.name}/{uid}", img, masks, {"subset": sub.name}))
        return out

    def discover(self, opts):
        items = super().discover(opts)
        # without a TestDataset the carved test share stays; with one, carved test -> train
        if any(it.split == "test" and it.data["extra"]["subset"] != "TrainDataset" for it in items):
            for it in items:
                if it.split == "test" and it.data["extra"]["subset"] == "TrainDataset":
                    it.split = "train"
        return items


class Tn3k(PairConverter):
    """TN3K thyroid nodules (ultrasound): ``SRC/trainval-image/``, ``trainval-mask/``,
    ``test-image/``, ``test-mask/`` (same file names). ``test-*`` is the test split; trainval
    gives train and val by ``--split-fractions`` (its test share ignored). Unit: the image."""

    name = "tn3k"
    help = "TN3K thyroid-nodule segmentation (ultrasound)"
    default_task, modality = "TN", "ultrasound"

    def pairs(self, opts):
        src = Path(opts.src)
        out = [(None, f"trainval/{u}", i, m, {}) for u, i, m in pair_folder(
            find_dir(src, ("trainval-image",), self.name), find_dir(src, ("trainval-mask",), self.name))]
        ti = find_dir(src, ("test-image",), self.name, required=False)
        if ti is not None:
            out += [("test", f"test/{u}", i, m, {}) for u, i, m in pair_folder(
                ti, find_dir(src, ("test-mask",), self.name))]
        return out


class EbhiSeg(PairConverter):
    """EBHI-Seg colorectal histopathology: ``SRC/EBHI-SEG/<class>/image/*.png`` +
    ``label/*.png`` (same names). ``--classes`` picks the classes (default Adenocarcinoma,
    TP-Seg's ADC task). Unit: the image; split by ``--split-fractions``."""

    name = "ebhi_seg"
    help = "EBHI-Seg histopathology segmentation (default class Adenocarcinoma)"
    default_task, modality = "ADC", "pathology (H&E)"

    @dataclass(kw_only=True)
    class Options(LesionOptions):
        classes: tuple[str, ...] = option(("Adenocarcinoma",), "classes to convert (folder names)")

    def pairs(self, opts):
        src = Path(opts.src)
        root = find_dir(src, ("EBHI-SEG", "EBHI-Seg", "."), self.name)
        out = []
        for cls in opts.classes:
            folder = find_dir(root, (cls,), self.name)
            for u, i, m in pair_folder(find_dir(folder, ("image",), self.name),
                                       find_dir(folder, ("label",), self.name)):
                out.append((None, f"{cls}/{u}", i, m, {"class": cls}))
        return out


class FigshareBrainTumour(SegConverter):
    """The figshare brain-tumour set (Cheng et al., 3,064 T1-CE slices of 233 patients):
    ``SRC/**/<n>.mat``, MATLAB v7.3 (HDF5) files with ``cjdata/{image, tumorMask, label, PID}``
    read with h5py (no pickles, no scipy.io). Images are stored as 16-bit PNG after a per-slice
    min-max scaling; ``meta.label`` = 1 meningioma, 2 glioma, 3 pituitary. Unit: the patient
    (``PID``), so no patient is in two splits; split by ``--split-fractions``."""

    name = "figshare_brain_tumour"
    help = "figshare brain-tumour T1-CE slices (.mat v7.3 via h5py), split by patient"
    unit = "patient"
    Options = LesionOptions
    LABELS = {1: "meningioma", 2: "glioma", 3: "pituitary"}

    def tasks(self, opts):
        return [{"name": opts.task or "BT", "modality": "MR-T1CE", "mask": "real",
                 "dataset": self.name}]

    @staticmethod
    def _read(path: Path) -> dict[str, Any]:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                g = f["cjdata"]
                # MATLAB stores column-major: h5py sees the transpose
                image = np.asarray(g["image"]).T
                mask = np.asarray(g["tumorMask"]).T
                label = int(np.asarray(g["label"]).ravel()[0])
                pid = "".join(chr(int(c)) for c in np.asarray(g["PID"]).ravel() if int(c) > 0)
        except (OSError, KeyError) as exc:
            raise ConvertError(f"{path}: not a figshare brain-tumour .mat (MATLAB v7.3 with "
                               f"cjdata/image, tumorMask, label, PID): {exc}") from None
        return {"image": image, "mask": mask, "label": label, "pid": pid.strip()}

    def discover(self, opts):
        import h5py

        files = sorted(Path(opts.src).rglob("*.mat"), key=lambda p: natural_key(p.name))
        if not files:
            raise ConvertError(f"{self.name}: no .mat files under {opts.src}")
        by_pid: dict[str, list[Path]] = {}
        for p in files:
            try:
                with h5py.File(p, "r") as f:
                    pid = "".join(chr(int(c)) for c in np.asarray(f["cjdata/PID"]).ravel()
                                  if int(c) > 0).strip()
            except (OSError, KeyError) as exc:
                raise ConvertError(f"{p}: not a figshare brain-tumour .mat (MATLAB v7.3 with "
                                   f"cjdata/PID): {type(exc).__name__}: {exc}") from None
            by_pid.setdefault(pid or p.stem, []).append(p)
        split = split_by_fractions(list(by_pid), opts.split_fractions, opts.seed, self.name)
        return [Item(pid, split[pid], {"files": fs}) for pid, fs in by_pid.items()]

    def convert(self, item, opts):
        src = Path(opts.src)
        for p in item.data["files"]:
            d = self._read(p)
            img = np.asarray(d["image"], dtype=np.float64)
            lo, hi = float(img.min()), float(img.max())
            u16 = np.round((img - lo) / (hi - lo) * 65535).astype(np.uint16) if hi > lo \
                else np.zeros(img.shape, np.uint16)
            mask = np.asarray(d["mask"]) > 0
            if mask.shape != u16.shape:
                raise ConvertError(f"{p}: tumorMask {mask.shape} and image {u16.shape} differ")
            yield SegRecord(self.tasks(opts)[0]["name"], f"{self.name}/{p.stem}", u16, mask,
                            {"modality": "MR-T1CE", "mask": "real", "source": relpath(p, src),
                             "shape": list(u16.shape), "label": d["label"],
                             "tumour": self.LABELS.get(d["label"], "unknown"),
                             "patient": item.unit, "scaling": [lo, hi]}, relpath(p, src))


class CovidCtInfection(SegConverter):
    """COVID-19 CT lung infection (Ma et al., COVID-19-CT-Seg, 20 cases):
    ``SRC/COVID-19-CT-Seg_20cases/<case>.nii.gz`` + ``SRC/Infection_Mask/<case>.nii.gz``. Axial
    slices (``--slices lesion``: only slices with infection, default; ``all``: every slice),
    windowed to ``--window`` HU (default lung window -1250..250) and stored as 16-bit PNG.
    The ten radiopaedia cases are stored already scaled to 0-255 (not HU): a volume whose
    values all lie in [0, 255] is scaled by 255 instead of windowed (``meta.intensity``).
    Unit: the case; split by ``--split-fractions``."""

    name = "covid_ct"
    help = "COVID-19-CT-Seg lung infection (NIfTI volumes -> axial slices), split by case"
    unit = "case"

    @dataclass(kw_only=True)
    class Options(LesionOptions):
        window: tuple[float, float] = option((-1250.0, 250.0), "HU window", metavar=("LOW", "HIGH"))
        slices: str = option("lesion", "lesion: slices with infection only; all: every slice",
                             choices=("lesion", "all"))

    def tasks(self, opts):
        return [{"name": opts.task or "LI", "modality": "CT", "mask": "real", "dataset": self.name}]

    def check(self, opts):
        if not opts.window[1] > opts.window[0]:
            raise ConvertError(f"--window {list(opts.window)}: HIGH must exceed LOW")

    def discover(self, opts):
        from medrestore.prepare.base import file_stem

        src = Path(opts.src)
        vdir = find_dir(src, ("COVID-19-CT-Seg_20cases",), self.name)
        mdir = find_dir(src, ("Infection_Mask",), self.name)
        vols = {file_stem(p): p for p in vdir.iterdir() if p.name.endswith((".nii.gz", ".nii"))}
        masks = {file_stem(p): p for p in mdir.iterdir() if p.name.endswith((".nii.gz", ".nii"))}
        for c in sorted(set(vols) ^ set(masks)):
            where = vols.get(c) or masks.get(c)
            raise ConvertError(f"{where}: no matching file in "
                               f"{mdir if c in vols else vdir}")
        if not vols:
            raise ConvertError(f"{self.name}: no .nii.gz volumes in {vdir}")
        split = split_by_fractions(list(vols), opts.split_fractions, opts.seed, self.name)
        return [Item(c, split[c], {"volume": vols[c], "mask": masks[c]})
                for c in sorted(vols, key=natural_key)]

    def convert(self, item, opts):
        import nibabel as nib

        src = Path(opts.src)
        try:
            vol = np.asarray(nib.load(str(item.data["volume"])).dataobj, dtype=np.float32)
            lab = np.asarray(nib.load(str(item.data["mask"])).dataobj)
        except Exception as exc:  # nibabel raises several types for broken files
            raise ConvertError(f"{item.data['volume']}: cannot read NIfTI ({type(exc).__name__})") from None
        if vol.shape != lab.shape or vol.ndim != 3:
            raise ConvertError(f"{item.data['mask']}: shape {lab.shape} does not match volume "
                               f"{item.data['volume']} {vol.shape}")
        scaled = vol.min() >= 0 and vol.max() <= 255
        lo, hi = (0.0, 255.0) if scaled else tuple(opts.window)
        for z in range(vol.shape[2]):
            m = np.rot90(lab[:, :, z] > 0)
            if opts.slices == "lesion" and not m.any():
                continue
            img = np.rot90(vol[:, :, z])
            u16 = np.round(np.clip((img - lo) / (hi - lo), 0, 1) * 65535).astype(np.uint16)
            source = {"image": relpath(item.data["volume"], src), "masks": [relpath(item.data["mask"], src)]}
            yield SegRecord(self.tasks(opts)[0]["name"], f"{self.name}/{item.unit}/{z:03d}", u16,
                            np.ascontiguousarray(m),
                            {"modality": "CT", "mask": "real", "source": source, "slice": z,
                             "shape": list(u16.shape), "case": item.unit,
                             "intensity": "0-255 as stored" if scaled else f"HU window {lo}..{hi}"},
                            source["image"])
