"""BraTS-style brain-tumour MRI -> a volume store (:mod:`medrestore.io.volumes`).

``medrestore-prepare brats --src DIR --out FILE.h5`` reads one of three layouts, found under
``--src`` by their file names:

* **BraTS 2018 / 2019**: ``HGG/`` and ``LGG/`` folders of case folders
  ``Brats18_<institution>_<id>_1/`` holding ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz``;
  labels 1 = NCR/NET, 2 = ED, 4 = ET; the grade is the folder (HGG = 1, LGG = 0).
* **BraTS 2021+**: case folders ``BraTS2021_00000/`` with ``<case>_{t1,t1ce,t2,flair,seg}``
  (2021: labels 1/2/4) or the 2023 names ``BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}``
  (labels 1 = NETC, 2 = SNFH, 3 = ET); no grade (-1).
* **Medical Segmentation Decathlon Task01_BrainTumour**: ``imagesTr/BRATS_001.nii.gz`` (4-D,
  channels in ``dataset.json``'s ``modality`` order: FLAIR, T1w, t1gd, T2w) and
  ``labelsTr/BRATS_001.nii.gz`` with the Decathlon's own codes (``dataset.json``'s ``labels``):
  1 = oedema, 2 = non-enhancing tumour, 3 = enhancing tumour — *not* the BraTS order.

Every case becomes ``image`` ``4×X×Y×Z`` (T1, T1ce, T2, FLAIR; physical intensities in the
source dtype; z-scoring happens when loading) and the canonical label map (0 background,
1 NCR/NET, 2 ED, 3 ET). Volumes are reoriented to the closest RAS axes (flips / axis swaps
only, no resampling; ``--keep-orientation`` skips it); the affine and spacing are kept.
Boxes are not stored: the loader computes them from the WT mask of each (cropped) sample.
Splits are by patient (the 2023 follow-up suffix ``-NNN`` is dropped to name the patient),
from a seeded permutation (``--split-fractions``) or named ids (``--val-patients`` /
``--test-patients``).

Bad input stops with one line naming the file and what was expected (a missing modality, a
shape or affine mismatch between a case's files, a label value outside the convention). The
store is written to ``FILE.h5.partial`` and renamed at the end, and an existing ``FILE.h5`` is
never replaced without ``--overwrite``.

:class:`VolumeConverter` / :func:`run_volume_converter` are the driver shared with the
embedded demo (:mod:`medrestore.prepare.brats_demo`).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.prepare.base import (
    SPLITS,
    Converter,
    Item,
    _naming_source,
    explicit_ids,
    natural_key,
    plan_run,
    relpath,
    split_units,
)
from medrestore.prepare.options import ConvertError, Options, SourceOptions, option, \
    split_fractions

#: canonical order of the stacked modalities, and the file suffixes that name each
MODALITY_SUFFIXES = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c", "t1gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
}
SEG_SUFFIXES = ("seg",)
#: source label value -> canonical value (0 bg, 1 NCR/NET, 2 ED, 3 ET), per convention
LABEL_CONVENTIONS: dict[str, dict[int, int]] = {
    "brats_124": {0: 0, 1: 1, 2: 2, 4: 3},       # BraTS 2018-2021
    "brats_123": {0: 0, 1: 1, 2: 2, 3: 3},       # BraTS 2023 (GLI)
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},             # Decathlon Task01: 1 oedema, 2 non-enh., 3 enh.
}
#: MSD ``dataset.json`` modality names -> canonical modality
_MSD_MODALITY = {"flair": "flair", "t1w": "t1", "t1": "t1", "t1gd": "t1ce", "t1ce": "t1ce",
                 "t1c": "t1ce", "t2w": "t2", "t2": "t2"}
MSD_DEFAULT_ORDER = ("flair", "t1", "t1ce", "t2")
GRADE_FOLDERS = {"hgg": 1, "lgg": 0}


# --------------------------------------------------------------------------------------------
# the volume-store driver (shared with the 3-D demo)


@dataclass
class VolumeCase:
    """One case to write: ``image`` ``C×X×Y×Z`` physical, ``label`` canonical ``X×Y×Z``."""

    key: str
    image: np.ndarray
    label: np.ndarray | None
    grade: int
    meta: dict[str, Any]
    source: str = ""


class VolumeConverter(Converter):
    """A converter that writes a volume store instead of a pair shard.

    Subclasses implement :meth:`discover` (as every converter) and :meth:`convert`, which yields
    :class:`VolumeCase` objects; :meth:`run_all` (called by
    :func:`medrestore.prepare.base.run_converter`) drives them."""

    unit: ClassVar[str] = "case"
    dataset_task: ClassVar[str] = "brats"

    def convert(self, item: Item, opts: Options) -> Iterable[VolumeCase]:  # type: ignore[override]
        raise NotImplementedError

    def run_all(self, opts: Options) -> dict[str, Any]:
        return run_volume_converter(self, opts)


def run_volume_converter(conv: VolumeConverter, opts: Options) -> dict[str, Any]:
    """Discover, split, convert and write a volume store; the summary has the layout of
    :func:`~medrestore.prepare.base.run_converter`'s (``counts`` under ``conv.dataset_task``)
    plus ``grades`` (split -> {grade: cases})."""
    from tqdm import tqdm

    from medrestore.io.volumes import VolumeStoreError, VolumeWriter

    plan = plan_run(conv, opts, VolumeStoreError)
    out, t0, src, items, attrs = plan.out, plan.t0, plan.src, plan.items, plan.attrs
    counts = {s: 0 for s in SPLITS}
    grades: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    bar = tqdm(items, desc=conv.name, unit=conv.unit, disable=bool(opts.quiet),
               file=sys.stderr, dynamic_ncols=True)
    n = 0
    try:
        with VolumeWriter(out, overwrite=bool(opts.overwrite), attrs=attrs) as w:
            for item in bar:
                try:
                    for case in conv.convert(item, opts):
                        w.add(case.image, case.label, key=case.key, split=item.split,
                              grade=case.grade, meta={**case.meta, "split": item.split},
                              source=case.source)
                        counts[item.split] += 1
                        g = str(case.grade)
                        grades[item.split][g] = grades[item.split].get(g, 0) + 1
                        n += 1
                except MedrestoreError as exc:
                    raise _naming_source(exc, item, None, src, out) from None
    finally:
        bar.close()
    return {"path": str(out), "counts": {conv.dataset_task: counts},
            "units": {s: sum(1 for i in items if i.split == s) for s in SPLITS}, "samples": n,
            "seconds": round(time.perf_counter() - t0, 2), "notes": conv.notes(opts),
            "grades": grades, **conv.report(opts)}


# --------------------------------------------------------------------------------------------
# labels


def to_canonical(label: np.ndarray, convention: str, where: str = "label") -> np.ndarray:
    """Source label map -> canonical uint8 map; a value outside ``convention`` is one line
    naming ``where`` and the expected values."""
    mapping = LABEL_CONVENTIONS[convention]
    lab = np.asarray(label)
    if lab.dtype.kind == "f":
        r = np.rint(lab)
        if not np.array_equal(r, lab):
            raise ConvertError(f"{where}: label map has non-integer values; expected the "
                               f"{convention} codes {sorted(mapping)}")
        lab = r
    return _lookup(lab.astype(np.int64, copy=False), mapping, where,
                   f"outside the {convention} convention (expected {sorted(mapping)})")


def _lookup(lab: np.ndarray, mapping: Mapping[int, int], where: str, expected: str) -> np.ndarray:
    """Integer label map -> uint8 codes through ``mapping``; a value it lacks is one line,
    ``{where}: label value(s) [...] {expected}``."""
    bad = [int(v) for v in np.unique(lab) if int(v) not in mapping]
    if bad:
        raise ConvertError(f"{where}: label value(s) {bad} {expected}")
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut[lab]


def detect_convention(values: Iterable[int], default: str, where: str) -> str:
    """BraTS layouts: 4 present -> ``brats_124``, 3 present -> ``brats_123`` (both: error),
    neither -> ``default`` (the two map 0/1/2 alike)."""
    vals = {int(v) for v in values}
    if 3 in vals and 4 in vals:
        raise ConvertError(f"{where}: label map holds both 3 and 4; expected BraTS codes 1/2/4 "
                           "(2018-2021) or 1/2/3 (2023)")
    if 4 in vals:
        return "brats_124"
    if 3 in vals:
        return "brats_123"
    return default


# --------------------------------------------------------------------------------------------
# layouts


def _stem(p: Path) -> str:
    n = p.name
    for suf in (".nii.gz", ".nii"):
        if n.lower().endswith(suf):
            return n[:-len(suf)]
    return p.stem


def _suffix_role(stem: str) -> tuple[str, str] | None:
    """``Brats18_2013_2_1_t1ce`` -> ``("Brats18_2013_2_1", "t1ce")``; the role is a canonical
    modality or ``seg``; ``None`` for other names."""
    m = re.match(r"^(.*?)[_-]([A-Za-z0-9]+)$", stem)
    if not m:
        return None
    case, suf = m.group(1), m.group(2).lower()
    if suf in SEG_SUFFIXES:
        return case, "seg"
    for mod, names in MODALITY_SUFFIXES.items():
        if suf in names:
            return case, mod
    return None


def _nifti_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith((".nii.gz", ".nii"))),
                  key=lambda p: natural_key(p.name))


def patient_of(case: str) -> str:
    """Patient id of a case: BraTS 2023 ``BraTS-GLI-00000-000`` -> ``BraTS-GLI-00000`` (the
    last group numbers time points of one patient); other names are their own patient."""
    m = re.match(r"^(BraTS-[A-Za-z]+-\d+)-\d+$", case)
    return m.group(1) if m else case


def find_brats_cases(src: Path) -> list[dict[str, Any]]:
    """Case folders of the BraTS layouts under ``src`` (any depth): folders whose NIfTI files
    are named ``<case>[_-]<modality or seg>``. Each entry: ``case, folder, files {role: path},
    grade, naming``."""
    out = []
    folders = [src] + sorted((p for p in src.rglob("*") if p.is_dir()),
                             key=lambda p: natural_key(p.relative_to(src).as_posix()))
    for folder in folders:
        if any(part.startswith(".") for part in folder.relative_to(src).parts):
            continue
        files: dict[str, dict[str, Path]] = {}
        for f in _nifti_files(folder):
            cr = _suffix_role(_stem(f))
            if cr is None:
                continue
            case, role = cr
            prev = files.setdefault(case, {}).get(role)
            if prev is not None:
                raise ConvertError(f"{folder}: {prev.name} and {f.name} both give the {role} of "
                                   f"case {case}")
            files[case][role] = f
        for case, roles in files.items():
            grade = -1
            for part in folder.relative_to(src).parts:
                grade = GRADE_FOLDERS.get(part.lower(), grade)
            naming = "brats2023" if re.match(r"^BraTS-", case) else "brats"
            out.append({"case": case, "folder": folder, "files": roles, "grade": grade,
                        "naming": naming})
    return out


def read_msd_json(src: Path) -> tuple[tuple[str, ...], dict[int, int], str]:
    """``(channel order as canonical modalities, source->canonical label map, where)`` from the
    Decathlon ``dataset.json`` (the documented Task01 values when the file is absent)."""
    path = src / "dataset.json"
    if not path.is_file():
        return MSD_DEFAULT_ORDER, dict(LABEL_CONVENTIONS["msd"]), "Task01 defaults"
    try:
        spec = json.loads(path.read_text())
        modality = spec["modality"]
        labels = spec["labels"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConvertError(f"{path}: expected JSON with 'modality' and 'labels' maps "
                           f"({type(exc).__name__})") from None
    order = []
    for i in range(len(modality)):
        name = str(modality.get(str(i), "")).lower().replace(" ", "")
        if name not in _MSD_MODALITY:
            raise ConvertError(f"{path}: modality {i} is {modality.get(str(i))!r}; expected "
                               "FLAIR, T1w, t1gd or T2w")
        order.append(_MSD_MODALITY[name])
    if sorted(order) != sorted(MODALITY_SUFFIXES):
        raise ConvertError(f"{path}: modalities {order} are not the four FLAIR, T1w, t1gd, T2w")
    mapping = {}
    for k, name in labels.items():
        n = str(name).lower()
        if n == "background":
            mapping[int(k)] = 0
        elif "edema" in n or "oedema" in n:
            mapping[int(k)] = 2
        elif "non" in n or "necro" in n:
            mapping[int(k)] = 1
        elif "enhancing" in n:
            mapping[int(k)] = 3
        else:
            raise ConvertError(f"{path}: label {k} = {name!r} is none of background, edema, "
                               "non-enhancing tumor, enhancing tumour")
    if sorted(mapping.values()) != [0, 1, 2, 3]:
        raise ConvertError(f"{path}: labels {labels} do not name background, edema, "
                           "non-enhancing and enhancing tumour once each")
    return tuple(order), mapping, "dataset.json"


def find_msd_cases(src: Path) -> list[dict[str, Any]]:
    images, labels = src / "imagesTr", src / "labelsTr"
    if not labels.is_dir():
        raise ConvertError(f"{src}: Decathlon layout needs labelsTr/ beside imagesTr/")
    lab = {_stem(p): p for p in _nifti_files(labels)}
    out = []
    for f in _nifti_files(images):
        case = _stem(f)
        if case not in lab:
            raise ConvertError(f"{f}: no label file {labels / f.name} (expected one per "
                               "training image)")
        out.append({"case": case, "folder": images, "files": {"image4d": f, "seg": lab[case]},
                    "grade": -1, "naming": "msd"})
    extra = sorted(set(lab) - {_stem(f) for f in _nifti_files(images)})
    if extra:
        raise ConvertError(f"{labels / (extra[0] + '.nii.gz')}: label without an image in "
                           f"{images}")
    return out


# --------------------------------------------------------------------------------------------
# the converter


@dataclass(kw_only=True)
class BratsOptions(SourceOptions):
    out: Path = option(help="output volume store", metavar="FILE.h5")
    split_fractions: tuple[float, float, float] = split_fractions(
        (0.7, 0.1, 0.2), "patient shares of train / val / test (default 0.7 0.1 0.2; seeded "
        "permutation of patient ids)")
    val_patients: tuple[str, ...] | None = explicit_ids("patient", "val")
    test_patients: tuple[str, ...] | None = explicit_ids("patient", "test")
    labels: str = option("auto", "label convention of the source: auto (BraTS names: 4 -> "
                         "1/2/4, 3 -> 1/2/3; Decathlon: its dataset.json), brats_124, brats_123, "
                         "msd", choices=("auto", *LABEL_CONVENTIONS))
    keep_orientation: bool = option(False, "keep the files' axis order (default: reorient to "
                                    "the closest RAS axes, flips and swaps only)")


class Brats(VolumeConverter):
    """BraTS 2018/2019 (HGG/LGG), BraTS 2021/2023 and Decathlon Task01 brain-tumour MRI ->
    a volume store: T1, T1ce, T2, FLAIR stacked, canonical label map (0 bg, 1 NCR/NET, 2 ED,
    3 ET), grade from HGG/LGG folders, splits by patient. See docs/datasets.md."""

    name = "brats"
    help = "BraTS 2018-2023 / Decathlon Task01 brain-tumour MRI -> 3-D volume store"
    Options = BratsOptions

    def discover(self, opts: BratsOptions) -> list[Item]:
        src = Path(opts.src)
        if (src / "imagesTr").is_dir():
            cases = find_msd_cases(src)
            self._msd = read_msd_json(src)
        else:
            cases = find_brats_cases(src)
        if not cases:
            raise ConvertError(f"brats: no cases under {src}; expected HGG/ and LGG/ folders "
                               "of <case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz, "
                               "BraTS-GLI-*/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz, or "
                               "imagesTr/ + labelsTr/ (Decathlon Task01)")
        seen: dict[str, Path] = {}
        for c in cases:
            if c["case"] in seen:
                raise ConvertError(f"brats: case {c['case']} found in {seen[c['case']]} and "
                                   f"{c['folder']}")
            seen[c["case"]] = c["folder"]
            if c["naming"] != "msd":
                missing = [m for m in (*MODALITY_SUFFIXES, "seg") if m not in c["files"]]
                if missing:
                    names = _expected_names(c)
                    raise ConvertError(f"{c['folder']}: case {c['case']} lacks "
                                       + ", ".join(names[m] for m in missing))
        patients = sorted({patient_of(c["case"]) for c in cases}, key=natural_key)
        split_of = split_units(patients, opts, "patient", "brats")
        items = [Item(c["case"], split_of[patient_of(c["case"])], c) for c in cases]
        return sorted(items, key=lambda it: (SPLITS.index(it.split), natural_key(it.unit)))

    def convert(self, item: Item, opts: BratsOptions) -> Iterable[VolumeCase]:
        from medrestore.io.volumes import read_nifti_volume

        c = item.data
        src = Path(opts.src)
        canonical = not opts.keep_orientation
        files = c["files"]
        if c["naming"] == "msd":
            order, mapping, _ = self._msd
            vol, info = read_nifti_volume(files["image4d"], canonical=canonical, channels=True,
                                          **opts.read_options())
            if vol.shape[3] != len(order):
                raise ConvertError(f"{files['image4d']}: {vol.shape[3]} channels; expected "
                                   f"{len(order)} ({', '.join(order)})")
            chans = {m: vol[..., i] for i, m in enumerate(order)}
            infos = {m: info for m in order}
            ref = files["image4d"]
        else:
            chans, infos = {}, {}
            for m in MODALITY_SUFFIXES:
                chans[m], infos[m] = read_nifti_volume(files[m], canonical=canonical,
                                                       **opts.read_options())
            ref = files["t1"]
        # labels are never filled: a non-finite label voxel is an error
        seg, seg_info = read_nifti_volume(files["seg"], canonical=canonical,
                                          bad_spacing=opts.bad_spacing)
        shape = chans["t1"].shape
        aff = np.asarray(infos["t1"]["affine"])
        for m, arr in [*chans.items(), ("seg", seg)]:
            f = files.get(m, files.get("image4d"))
            if arr.shape != shape:
                raise ConvertError(f"{f}: shape {arr.shape}; expected {shape} as {ref.name}")
            a = np.asarray((infos.get(m) or seg_info)["affine"])
            if not np.allclose(a, aff, atol=1e-3):
                raise ConvertError(f"{f}: affine differs from {ref.name}'s (the case's volumes "
                                   "must share one voxel grid)")
        where = str(files["seg"])
        if c["naming"] == "msd":
            convention = "msd"
            if opts.labels not in ("auto", "msd"):
                convention = opts.labels
            if convention == "msd":
                lab = _map_values(seg, mapping, where)
            else:
                lab = to_canonical(seg, convention, where)
        else:
            convention = opts.labels
            if convention == "auto":
                default = "brats_123" if c["naming"] == "brats2023" else "brats_124"
                convention = detect_convention(np.unique(seg), default, where)
            lab = to_canonical(seg, convention, where)
        stack = [chans[m] for m in MODALITY_SUFFIXES]
        image = np.stack(stack).astype(_store_dtype(stack), copy=False)
        meta = {"affine": infos["t1"]["affine"], "spacing": infos["t1"]["spacing"],
                "axcodes": infos["t1"]["axcodes"], "modalities": list(MODALITY_SUFFIXES),
                "label_convention": convention, "layout": c["naming"],
                "patient": patient_of(c["case"]), "case": c["case"],
                "source": {m: relpath(files.get(m, files.get("image4d")), src)
                           for m in (*MODALITY_SUFFIXES, "seg")},
                "reoriented": canonical}
        yield VolumeCase(f"brats/{c['case']}", image, lab, int(c["grade"]), meta,
                         relpath(c["folder"], src))

    def space_needed(self, opts, items):
        if items is None:
            return None
        from medrestore.prepare.base import _source_bytes

        # gzip'd NIfTI and lzf'd HDF5 compress brain MRI similarly
        return int(1.5 * _source_bytes(items)), f"estimated from {len(items)} case(s)"

    def notes(self, opts: BratsOptions) -> list[str]:
        return ["labels stored as 0 bg, 1 NCR/NET, 2 ED, 3 ET (TC = 1|3, WT = 1|2|3, ET = 3); "
                "boxes are computed from WT when loading"]


def _map_values(seg: np.ndarray, mapping: Mapping[int, int], where: str) -> np.ndarray:
    return _lookup(np.rint(seg).astype(np.int64), mapping, where,
                   f"not in dataset.json's labels {sorted(mapping)}")


def _expected_names(c: Mapping[str, Any]) -> dict[str, str]:
    case = c["case"]
    if c["naming"] == "brats2023":
        alias = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
        return {m: f"{case}-{s}.nii.gz" for m, s in alias.items()}
    return {m: f"{case}_{m}.nii.gz" for m in (*MODALITY_SUFFIXES, "seg")}


def _store_dtype(arrays: Sequence[np.ndarray]) -> np.dtype:
    """int16 when every modality is integral and fits (BraTS ships int16 / uint16 volumes),
    else float32."""
    if all(a.dtype.kind in "iub" for a in arrays):
        lo = min(int(a.min(initial=0)) for a in arrays)
        hi = max(int(a.max(initial=0)) for a in arrays)
        if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            return np.dtype(np.int16)
    return np.dtype(np.float32)


__all__ = ["Brats", "BratsOptions", "VolumeCase", "VolumeConverter", "run_volume_converter",
           "to_canonical", "detect_convention", "LABEL_CONVENTIONS", "patient_of"]
