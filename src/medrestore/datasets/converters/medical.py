"""Medical converters: AAPM-Mayo low-dose CT, IXI MRI, paired PET.

All three cut volumes into 2-D slices and split **by patient / subject**: every slice of one
person is in the same split. Pixels are stored in physical units (HU, MR a.u., SUV); the
normalisation window is the task's registry default ([-1024, 3072] HU, [0, 4095] a.u.,
[0, 20] SUV), applied when the shard is read.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medrestore.datasets.converters.base import (
    NIFTI_EXTS,
    Converter,
    ConvertError,
    Item,
    Record,
    add_split_arguments,
    child,
    compact_integral,
    inplane_spacing,
    iter_progress,
    list_files,
    natural_key,
    parse_ids,
    read_array,
    relpath,
    seeded_order,
    split_explicit,
    split_units,
    suffix_of,
    window_for,
)


# --------------------------------------------------------------------------------------------
# DICOM headers (positions for pairing, PET dose information)


def _dicom_files(folder: Path) -> list[Path]:
    """Every non-hidden file of a DICOM folder (AAPM uses ``.IMA``; others ``.dcm`` or none)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.upper() != "DICOMDIR"), key=lambda p: natural_key(p.name))


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise ConvertError(f"{path}: not a DICOM file") from None
    except Exception as exc:  # truncated headers raise EOFError, struct.error, ...
        raise ConvertError(f"{path}: unreadable DICOM header ({type(exc).__name__})") from None


def _floats(v: Any) -> list[float] | None:
    try:
        return None if v is None else [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def _slice_position(ds, path: Path) -> float:
    """Position along the slice normal (mm): ``ImagePositionPatient · (row × column)``."""
    ipp = _floats(ds.get("ImagePositionPatient"))
    if ipp is None or len(ipp) != 3:
        raise ConvertError(f"{path}: no ImagePositionPatient (0020,0032); slices are paired by "
                           "position")
    iop = _floats(ds.get("ImageOrientationPatient"))
    if iop is None or len(iop) != 6:
        return ipp[2]
    normal = np.cross(iop[:3], iop[3:])
    return float(np.dot(ipp, normal))


def _series_slices(folder: Path, where: str) -> list[dict[str, Any]]:
    """Headers of one single-series folder, sorted by slice position."""
    files = _dicom_files(folder)
    if not files:
        raise ConvertError(f"{where}: folder {folder} has no DICOM files")
    rows, uids = [], set()
    for f in files:
        ds = _read_header(f)
        uids.add(str(ds.get("SeriesInstanceUID", "")))
        rows.append({"path": f, "z": _slice_position(ds, f),
                     "pixel_spacing": _floats(ds.get("PixelSpacing")),
                     "thickness": float(ds.get("SliceThickness") or 0.0) or None,
                     "shape": (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))})
    if len(uids) > 1:
        raise ConvertError(f"{where}: folder {folder} mixes {len(uids)} DICOM series; expected one")
    rows.sort(key=lambda r: r["z"])
    zs = np.array([r["z"] for r in rows])
    dup = np.flatnonzero(np.diff(zs) < 1e-4)
    if dup.size:
        i = int(dup[0])
        raise ConvertError(f"{where}: {rows[i]['path'].name} and {rows[i + 1]['path'].name} have "
                           f"the same slice position z={zs[i]:.3f} mm")
    return rows


# --------------------------------------------------------------------------------------------
# AAPM-Mayo


class AapmMayo(Converter):
    """AAPM-Mayo 2016 Low-Dose CT Grand Challenge: quarter-dose -> full-dose CT (ct_denoise).

    Layout: ``SRC/<patient>/{quarter_3mm,full_3mm}/<patient>_{QD,FD}_3_1.CT.….IMA`` (``1mm`` with
    ``--thickness 1mm``). Quarter- and full-dose slices are paired by slice position (never by
    file order); counts or positions that disagree are an error naming the patient. Splits are
    by patient: test L506 and val L333 by default (the 8/1/1 protocol), or a count chosen by
    seed. HU are stored as int16 when exact (slope 1, integer intercept), else float32."""

    name = "aapm_mayo"
    help = "AAPM-Mayo low-dose CT: quarter/full-dose DICOM pairs per patient (ct_denoise)"
    unit = "patient"
    task = "ct_denoise"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--thickness", choices=("3mm", "1mm"), default="3mm",
                       help="reconstruction slice thickness; sets the default --dose-dir / "
                            "--full-dir (default 3mm)")
        p.add_argument("--dose-dir", default=None, metavar="NAME",
                       help="low-dose folder inside each patient (default quarter_<thickness>)")
        p.add_argument("--full-dir", default=None, metavar="NAME",
                       help="full-dose folder inside each patient (default full_<thickness>)")
        p.add_argument("--val-patients", nargs="+", default=["L333"], metavar="ID",
                       help="validation patients, or one integer N: N patients chosen by seed "
                            "(default L333)")
        p.add_argument("--test-patients", nargs="+", default=["L506"], metavar="ID",
                       help="test patients, or one integer N (default L506)")
        p.add_argument("--float32", action="store_true",
                       help="store HU as float32 even when int16 would be exact")

    def _dirs(self, args: argparse.Namespace) -> tuple[str, str]:
        return (args.dose_dir or f"quarter_{args.thickness}", args.full_dir or f"full_{args.thickness}")

    def discover(self, args: argparse.Namespace) -> list[Item]:
        src = Path(args.src)
        dose_dir, full_dir = self._dirs(args)
        patients = _patient_first(src, dose_dir, full_dir) or _dose_first(src, dose_dir, full_dir)
        if not patients:
            raise ConvertError(f"aapm_mayo: no patient folder under {src} contains {dose_dir}/ "
                               f"and {full_dir}/ (expected {src}/L067/{dose_dir}/*.IMA)")
        split = _split_named_or_count(list(patients), args, "patient", "aapm_mayo")
        items = []
        for pid, (q, f, q_name, f_name) in patients.items():
            qs = _series_slices(q, f"aapm_mayo: patient {pid}")
            fs = _series_slices(f, f"aapm_mayo: patient {pid}")
            pairs = _pair_by_position(qs, fs, pid, q_name, f_name)
            items.append(Item(pid, split[pid], {"pairs": pairs, "dose_dir": q_name,
                                                "full_dir": f_name}))
        return items

    def convert(self, item: Item, args: argparse.Namespace) -> Iterable[Record]:
        from medrestore.io.dicom import read_dicom

        src = Path(args.src)
        pairs = item.data["pairs"]
        zs = np.array([g["z"] for _, g in pairs])
        slice_spacing = float(np.median(np.diff(zs))) if len(zs) > 1 else None
        for i, (q, g) in enumerate(iter_progress(pairs, len(pairs), item.unit, args.quiet)):
            lq, lq_meta = read_dicom(q["path"])
            gt, gt_meta = read_dicom(g["path"])
            if lq.shape != gt.shape or gt.ndim != 2:
                raise ConvertError(f"aapm_mayo: patient {item.unit}: {q['path'].name} "
                                   f"{lq.shape} and {g['path'].name} {gt.shape} differ in size")
            if not args.float32:
                lq16, gt16 = compact_integral(lq), compact_integral(gt)
                if lq16.dtype == np.int16 and gt16.dtype == np.int16:
                    lq, gt = lq16, gt16
            key = f"aapm_mayo/{item.unit}/{item.data['full_dir']}/{i:04d}"
            meta = _ct_meta(self.task, gt, gt_meta, g, slice_spacing, item, i,
                            {"lq": relpath(q["path"], src), "gt": relpath(g["path"], src)})
            yield Record(self.task, key, gt[None], lq[None], meta, relpath(g["path"], src))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _patient_first(src: Path, dose_dir: str, full_dir: str
                   ) -> dict[str, tuple[Path, Path, str, str]]:
    """``SRC/<patient>/{dose_dir,full_dir}/`` (the challenge release)."""
    out = {}
    for d in _subdirs(src):
        q, f = child(d, [dose_dir]), child(d, [full_dir])
        if q is None and f is None:
            continue
        if q is None or f is None:
            missing = dose_dir if q is None else full_dir
            raise ConvertError(f"aapm_mayo: patient {d.name} has no {missing}/ folder "
                               f"(expected {d}/{missing})")
        out[d.name] = (q, f, q.name, f.name)
    return out


def _dose_first(src: Path, dose_dir: str, full_dir: str
                ) -> dict[str, tuple[Path, Path, str, str]]:
    """``SRC/{dose_dir,full_dir}/<patient>/`` (some re-packaged copies)."""
    q_root, f_root = child(src, [dose_dir]), child(src, [full_dir])
    if q_root is None or f_root is None:
        return {}
    qs = {d.name: d for d in _subdirs(q_root)}
    fs = {d.name: d for d in _subdirs(f_root)}
    for a, b, name in ((qs, fs, f_root.name), (fs, qs, q_root.name)):
        missing = sorted(set(a) - set(b), key=natural_key)
        if missing:
            raise ConvertError(f"aapm_mayo: patient {missing[0]} has no {name}/{missing[0]}/ "
                               f"folder (expected {src / name / missing[0]})")
    return {p: (qs[p], fs[p], q_root.name, f_root.name) for p in qs}


def _ct_meta(task: str, gt: np.ndarray, gt_meta: dict, g: dict, slice_spacing: float | None,
             item: Item, index: int, source: dict[str, str]) -> dict[str, Any]:
    from medrestore.sample import make_meta

    spacing = gt_meta.get("pixel_spacing") or g.get("pixel_spacing")
    return make_meta(task, normalisation=window_for(gt.dtype, task), spacing=spacing, channels=1,
                     source=source, patient=item.unit, slice_index=index,
                     position_z=round(float(g["z"]), 4), slice_thickness=g.get("thickness"),
                     slice_spacing=slice_spacing,
                     reconstruction={"lq": item.data["dose_dir"], "gt": item.data["full_dir"]},
                     degradation="real quarter-dose scan (challenge data: Poisson noise inserted "
                                 "into the full-dose projections at 25% dose)")


def _pair_by_position(qs: list[dict], fs: list[dict], pid: str, qname: str, fname: str
                      ) -> list[tuple[dict, dict]]:
    """Match two position-sorted series slice by slice; counts and positions must agree."""
    if len(qs) != len(fs):
        raise ConvertError(f"aapm_mayo: patient {pid}: {qname} has {len(qs)} slices but {fname} "
                           f"has {len(fs)}; slices are paired by position and must match")
    zq = np.array([r["z"] for r in qs])
    zf = np.array([r["z"] for r in fs])
    steps = np.diff(zf)
    tol = max(1e-3, 0.25 * float(steps.min())) if steps.size else 1e-3
    bad = np.flatnonzero(np.abs(zq - zf) > tol)
    if bad.size:
        i = int(bad[0])
        raise ConvertError(f"aapm_mayo: patient {pid}: slice positions differ between {qname} and "
                           f"{fname} ({qs[i]['path'].name} at z={zq[i]:.3f} mm vs "
                           f"{fs[i]['path'].name} at z={zf[i]:.3f} mm; {bad.size} slice(s) off)")
    return list(zip(qs, fs))


def _split_named_or_count(units: Sequence[str], args: argparse.Namespace, unit: str, salt: str
                          ) -> dict[str, str]:
    """``--val-<unit>s`` / ``--test-<unit>s``: explicit ids, or one integer N each (seeded)."""
    val, test = parse_ids(getattr(args, f"val_{unit}s")), parse_ids(getattr(args, f"test_{unit}s"))

    def count(ids: list[str]) -> int | None:
        return int(ids[0]) if len(ids) == 1 and ids[0].isdigit() else None

    n_test, n_val = count(test), count(val)
    order = seeded_order(units, args.seed, salt)
    if n_test is not None:
        test = [u for u in order if u not in val][:n_test] if n_val is None else order[:n_test]
    if n_val is not None:
        val = [u for u in order if u not in test][:n_val]
    return split_explicit(units, val, test, f"--val-{unit}s", f"--test-{unit}s")


# --------------------------------------------------------------------------------------------
# IXI

# IXI file names: IXI<id>-<site>-<number>-<modality>.nii.gz, e.g. IXI002-Guys-0828-T2.nii.gz
_IXI_RE = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-([A-Za-z0-9]+)\.nii(\.gz)?$")
# TAT / Restore-RWKV protocol: 578 T2 volumes split 405 / 59 / 114
IXI_FRACTIONS = (405 / 578, 59 / 578, 114 / 578)


class Ixi(Converter):
    """IXI brain MRI -> axial slices for ×4 MRI super-resolution (mri_sr).

    Layout: ``SRC/IXI-T2/IXI002-Guys-0828-T2.nii.gz`` (or the ``.nii.gz`` files directly in
    ``SRC``); ``--modality T1|PD`` reads ``IXI-T1`` / ``IXI-PD``. Each volume gives its central
    ``--slices`` axial slices (default 100, the TAT protocol). GT is stored in MR a.u. (window
    [0, 4095]); LQ is simulated by central k-space truncation ×4 (``mri_kspace``, TAT's
    degradation) or bicubic down/up (``--method bicubic``), seeded per slice key. Subjects are
    split by a seeded permutation in TAT's 405/59/114-of-578 proportions, or by explicit ids."""

    name = "ixi"
    help = "IXI T2 (T1/PD) NIfTI volumes -> central axial slices, k-space ×4 LQ (mri_sr)"
    unit = "subject"
    task = "mri_sr"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--modality", choices=("T2", "T1", "PD"), default="T2",
                       help="IXI contrast folder IXI-<modality> (default T2)")
        p.add_argument("--slices", type=int, default=100,
                       help="central axial slices per volume (default 100; 0 = all)")
        p.add_argument("--method", choices=("kspace", "bicubic"), default="kspace",
                       help="LQ simulation: central k-space truncation (default) or bicubic")
        p.add_argument("--scale", type=int, default=4, help="degradation factor per axis (4)")
        add_split_arguments(p, "subject", IXI_FRACTIONS,
                            "subject split fractions (default 405/59/114 of 578, TAT)")

    def discover(self, args: argparse.Namespace) -> list[Item]:
        src = Path(args.src)
        folder = child(src, [f"IXI-{args.modality}"]) or src
        subjects: dict[str, dict[str, Any]] = {}
        for f in list_files(folder, NIFTI_EXTS):
            m = _IXI_RE.match(f.name)
            if not m or m.group(4).upper() != args.modality:
                continue
            sid = m.group(1)
            if sid in subjects:
                raise ConvertError(f"ixi: subject {sid} has two {args.modality} volumes: "
                                   f"{subjects[sid]['path'].name} and {f.name}")
            subjects[sid] = {"path": f, "site": m.group(2)}
        if not subjects:
            raise ConvertError(f"ixi: no IXI*-{args.modality}.nii.gz files in "
                               f"{src / f'IXI-{args.modality}'} or {src}")
        if args.slices < 0:
            raise ConvertError(f"--slices must be >= 0, got {args.slices}")
        if args.scale < 2:
            raise ConvertError(f"--scale must be >= 2, got {args.scale}")
        split = split_units(list(subjects), args, "subject", f"ixi-{args.modality}")
        return [Item(s, split[s], d) for s, d in subjects.items()]

    def convert(self, item: Item, args: argparse.Namespace) -> Iterable[Record]:
        from medrestore.degradations.rng import keyed_rng
        from medrestore.degradations.simulators import simulate
        from medrestore.sample import Normalisation, make_meta

        src = Path(args.src)
        vol, vmeta = read_array(item.data["path"])
        vol = np.asarray(vol)
        if vol.ndim != 3:
            raise ConvertError(f"ixi: {item.data['path']}: expected a 3-D volume, got shape "
                               f"{vol.shape}")
        vol = compact_integral(vol)
        z_all = vol.shape[0]
        n = z_all if args.slices in (0, None) else min(args.slices, z_all)
        start = (z_all - n) // 2
        spacing = vmeta.get("spacing")
        inplane = inplane_spacing(spacing, 0) if spacing and len(spacing) == 3 else None
        sim = "mri_kspace" if args.method == "kspace" else "mri_bicubic"
        params = {"scale": int(args.scale)}
        source = relpath(item.data["path"], src)
        for z in iter_progress(range(start, start + n), n, item.unit, args.quiet):
            gt = vol[z][None]
            key = f"ixi/{item.unit}/{args.modality}/z{z:03d}"
            norm = window_for(gt.dtype, self.task)
            lq = simulate(sim, gt.astype(np.float32), rng=keyed_rng(f"{self.task}:{key}", args.seed),
                          normalisation=Normalisation.from_dict(norm), spacing=inplane, **params)
            meta = make_meta(self.task, normalisation=norm, spacing=inplane, channels=1,
                             source={"gt": source}, subject=item.unit, site=item.data["site"],
                             volume=item.unit, contrast=args.modality, slice_index=int(z),
                             slice_spacing=(float(spacing[0]) if spacing and len(spacing) == 3
                                            and spacing[0] is not None else None),
                             degradation={"simulator": sim, "params": params,
                                          "seed": int(args.seed)})
            yield Record(self.task, key, gt, np.asarray(lq, dtype=np.float32), meta, source)


# --------------------------------------------------------------------------------------------
# PET

PET_LQ_NAMES = ("lq", "ld", "low_dose", "low-dose", "lowdose")
PET_GT_NAMES = ("gt", "fd", "full_dose", "full-dose", "fulldose")
# TAT's private PET data: 159 patients split 120 / 10 / 29
PET_FRACTIONS = (120 / 159, 10 / 159, 29 / 159)
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


class PairedPet(Converter):
    """Paired low-count / full-count PET volumes -> 2-D slices in SUV (pet_synthesis).

    Layout: ``SRC/<patient>/{lq|ld|low_dose}`` and ``{gt|fd|full_dose}``, each a ``.nii`` /
    ``.nii.gz`` volume or a DICOM series folder. Volumes are cut along ``--slice-axis``
    (TAT cuts coronal slices); slices whose GT maximum is below ``--air-threshold`` SUV are
    dropped as air. NIfTI values are taken as SUV (times ``--suv-scale``); DICOM series in
    Bq/ml (``Units`` BQML) are converted to SUVbw from ``PatientWeight`` and the injected dose
    (``RadiopharmaceuticalInformationSequence``) decay-corrected to the series time.
    Patients are split by a seeded permutation (TAT's 120/10/29 proportions) or explicit ids."""

    name = "pet"
    help = "paired PET volumes (NIfTI or DICOM BQML) per patient -> SUV slices (pet_synthesis)"
    unit = "patient"
    task = "pet_synthesis"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--slice-axis", choices=tuple(SLICE_AXES), default="coronal",
                       help="voxel axis to slice along: axial = k, coronal = j, sagittal = i of "
                            "the (i, j, k) volume (default coronal, as TAT)")
        p.add_argument("--air-threshold", type=float, default=0.2, metavar="SUV",
                       help="drop slices whose full-dose maximum is below this SUV (default 0.2)")
        p.add_argument("--suv-scale", "--scale", dest="suv_scale", type=float, default=1.0,
                       help="factor applied to NIfTI values to get SUV (default 1: already SUV)")
        p.add_argument("--name", default="pet", help="dataset name used in keys (default pet)")
        add_split_arguments(p, "patient", PET_FRACTIONS,
                            "patient split fractions (default 120/10/29 of 159, TAT)")

    def discover(self, args: argparse.Namespace) -> list[Item]:
        src = Path(args.src)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
            raise ConvertError(f"--name {args.name!r}: use letters, digits, '_', '-', '.'")
        if args.suv_scale <= 0:
            raise ConvertError(f"--suv-scale must be positive, got {args.suv_scale}")
        patients: dict[str, dict[str, Any]] = {}
        for d in sorted((p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: natural_key(p.name)):
            lq = _pet_entry(d, PET_LQ_NAMES, "low-dose")
            gt = _pet_entry(d, PET_GT_NAMES, "full-dose")
            patients[d.name] = {"lq": lq, "gt": gt,
                                "lq_suv": _suv_info(lq, f"pet: patient {d.name}"),
                                "gt_suv": _suv_info(gt, f"pet: patient {d.name}")}
        if not patients:
            raise ConvertError(f"pet: no patient folders under {src} (expected "
                               f"{src}/<patient>/lq.nii.gz and gt.nii.gz, or DICOM folders)")
        split = split_units(list(patients), args, "patient", args.name)
        return [Item(p, split[p], d) for p, d in patients.items()]

    def convert(self, item: Item, args: argparse.Namespace) -> Iterable[Record]:
        from medrestore.sample import make_meta

        src = Path(args.src)
        where = f"pet: patient {item.unit}"
        lq, _ = _read_pet(item.data["lq"], item.data["lq_suv"], args.suv_scale, where)
        gt, gmeta = _read_pet(item.data["gt"], item.data["gt_suv"], args.suv_scale, where)
        if lq.shape != gt.shape:
            raise ConvertError(f"{where}: low-dose volume {lq.shape} and full-dose volume "
                               f"{gt.shape} differ in shape")
        axis = SLICE_AXES[args.slice_axis]
        spacing = gmeta.get("spacing")
        inplane = inplane_spacing(spacing, axis) if spacing and len(spacing) == 3 else None
        norm = window_for(np.float32, self.task)
        source = {"lq": relpath(item.data["lq"], src), "gt": relpath(item.data["gt"], src)}
        suv = {"lq": item.data["lq_suv"]["how"], "gt": item.data["gt_suv"]["how"]}
        n = gt.shape[axis]
        for i in iter_progress(range(n), n, item.unit, args.quiet):
            g = np.take(gt, i, axis=axis)
            if float(g.max()) < args.air_threshold:
                continue                                       # air only: nothing to learn
            q = np.take(lq, i, axis=axis)
            key = f"{args.name}/{item.unit}/{args.slice_axis}/{i:03d}"
            meta = make_meta(self.task, normalisation=norm, spacing=inplane, channels=1,
                             source=source, patient=item.unit, slice_axis=args.slice_axis,
                             slice_index=int(i), suv=suv,
                             degradation="real low-count acquisition (paired reconstruction)")
            yield Record(self.task, key, np.ascontiguousarray(g[None], dtype=np.float32),
                         np.ascontiguousarray(q[None], dtype=np.float32), meta, source["gt"])


def _pet_entry(patient_dir: Path, names: Sequence[str], what: str) -> Path:
    """The single ``<alias>.nii[.gz]`` file or ``<alias>/`` DICOM folder of one patient."""
    found = []
    for p in patient_dir.iterdir():
        if p.name.startswith("."):
            continue
        base = p.name[:-len(suffix_of(p))] if p.is_file() and suffix_of(p) in NIFTI_EXTS else (
            p.name if p.is_dir() else None)
        if base is not None and base.lower() in names:
            found.append(p)
    if not found:
        raise ConvertError(f"pet: patient {patient_dir.name} has no {what} volume (expected one "
                           f"of {', '.join(names)} as .nii/.nii.gz or a DICOM folder)")
    if len(found) > 1:
        raise ConvertError(f"pet: patient {patient_dir.name} has several {what} volumes: "
                           f"{', '.join(sorted(p.name for p in found))}")
    return found[0]


def _suv_info(entry: Path, where: str) -> dict[str, Any]:
    """How to get SUV from one volume: NIfTI scale, or the DICOM BQML -> SUVbw factor."""
    if not entry.is_dir():
        return {"how": "nifti", "factor": None}
    files = _dicom_files(entry)
    if not files:
        raise ConvertError(f"{where}: DICOM folder {entry} is empty")
    ds = _read_header(files[0])
    factor, how = suv_factor(ds, f"{where}: {files[0].name}")
    return {"how": how, "factor": factor}


def _read_pet(entry: Path, suv: dict[str, Any], nifti_scale: float, where: str
              ) -> tuple[np.ndarray, dict[str, Any]]:
    vol, meta = read_array(entry)
    vol = np.asarray(vol, dtype=np.float32)
    if vol.ndim != 3:
        raise ConvertError(f"{where}: {entry.name}: expected a 3-D volume, got shape {vol.shape}")
    factor = nifti_scale if suv["how"] == "nifti" else suv["factor"]
    return (vol * np.float32(factor)).astype(np.float32), meta


def suv_factor(ds, where: str) -> tuple[float, str]:
    """Factor from stored PET values to body-weight SUV, and a short description.

    ``Units`` GML: already SUV (factor 1). ``Units`` BQML (Bq/ml):
    ``SUVbw = C · weight[g] / dose(t_ref)`` with ``dose(t_ref) = injected · 2^(-Δt / T½)`` and
    Δt from the injection (``RadiopharmaceuticalStartDateTime`` or ``…StartTime``) to the
    reference time of the image decay correction: ``SeriesDate/Time`` for ``DecayCorrection``
    START, none for ADMIN. With NONE (images not decay corrected) this uses
    ``AcquisitionDate/Time`` of the first file for the whole series: a simplification (exact per
    slice only when all slices share that time)."""
    units = str(ds.get("Units", "")).upper()
    if units == "GML":
        return 1.0, "Units GML (already SUV)"
    if units != "BQML":
        raise ConvertError(f"{where}: PET Units (0054,1001) is {units or 'missing'!r}; expected "
                           "BQML (converted to SUV) or GML")
    weight = _num(ds.get("PatientWeight"))
    if not weight:
        raise ConvertError(f"{where}: cannot convert BQML to SUV: missing PatientWeight (0010,1030)")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise ConvertError(f"{where}: cannot convert BQML to SUV: missing "
                           "RadiopharmaceuticalInformationSequence (0054,0016)")
    item = seq[0]
    dose = _num(item.get("RadionuclideTotalDose"))
    if not dose:
        raise ConvertError(f"{where}: cannot convert BQML to SUV: missing RadionuclideTotalDose "
                           "(0018,1074)")
    half_life = _num(item.get("RadionuclideHalfLife"))
    if not half_life:
        raise ConvertError(f"{where}: cannot convert BQML to SUV: missing RadionuclideHalfLife "
                           "(0018,1075)")
    correction = str(ds.get("DecayCorrection", "START")).upper() or "START"
    if correction == "ADMIN":
        dt = 0.0
    else:
        start = _injection_time(item, ds, where)
        if correction == "NONE":
            ref = _when(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"))
            tag = "AcquisitionTime (0008,0032)"
        else:
            ref = _when(ds.get("SeriesDate"), ds.get("SeriesTime"))
            tag = "SeriesTime (0008,0031)"
        if ref is None:
            raise ConvertError(f"{where}: cannot convert BQML to SUV: missing {tag}")
        dt = _seconds_between(start, ref)
    decayed = dose * 2.0 ** (-dt / half_life)
    factor = weight * 1000.0 / decayed
    return factor, (f"BQML -> SUVbw (weight {weight:g} kg, dose {dose:.4g} Bq decayed "
                    f"{dt:.0f} s, DecayCorrection {correction})")


def _num(v: Any) -> float | None:
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _injection_time(item, ds, where: str) -> tuple[_dt.date | None, _dt.time]:
    dt_value = str(item.get("RadiopharmaceuticalStartDateTime", "") or "")
    if dt_value:
        m = re.match(r"(\d{8})(\d{2,6}(?:\.\d+)?)?", dt_value)
        if m:
            return _when(m.group(1), m.group(2) or "000000")          # type: ignore[return-value]
    t = str(item.get("RadiopharmaceuticalStartTime", "") or "")
    if not t:
        raise ConvertError(f"{where}: cannot convert BQML to SUV: missing "
                           "RadiopharmaceuticalStartTime (0018,1072)")
    return _when(ds.get("SeriesDate"), t)                            # type: ignore[return-value]


def _when(date: Any, time: Any) -> tuple[_dt.date | None, _dt.time] | None:
    """DICOM DA + TM strings -> (date or None, time); None when the time is missing."""
    t = str(time or "").replace(":", "").strip()
    if not t:
        return None
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", t)
    if not m:
        return None
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    us = int((m.group(4) or "0").ljust(6, "0"))
    d = str(date or "").strip()
    day = _dt.date(int(d[:4]), int(d[4:6]), int(d[6:8])) if re.fullmatch(r"\d{8}", d) else None
    return day, _dt.time(hh, mm, ss, us)


def _seconds_between(a: tuple[_dt.date | None, _dt.time], b: tuple[_dt.date | None, _dt.time]
                     ) -> float:
    """``b - a`` in seconds; without both dates, a negative difference wraps over midnight."""
    (da, ta), (db, tb) = a, b
    if da is not None and db is not None:
        return (_dt.datetime.combine(db, tb) - _dt.datetime.combine(da, ta)).total_seconds()
    day = _dt.date(2000, 1, 1)
    s = (_dt.datetime.combine(day, tb) - _dt.datetime.combine(day, ta)).total_seconds()
    return s + 86400.0 if s < 0 else s
