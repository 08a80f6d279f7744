"""Medical converters: AAPM-Mayo low-dose CT, IXI MRI, paired PET.

All three cut volumes into 2-D slices and split **by patient / subject**: every slice of one
person is in the same split. Pixels are stored in physical units (HU, MR a.u., SUV); the
normalisation window is the task's registry default ([-1024, 3072] HU, [0, 4095] a.u.,
[0, 20] SUV), applied when the shard is read.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medrestore.io.base import format_for_suffix
from medrestore.io.dicom import DicomError, dicom_files_in, read_header, series_headers
from medrestore.prepare.base import (
    Converter,
    ConvertError,
    Item,
    Record,
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
    explicit_ids,
    file_stem,
    split_units,
)
from medrestore.prepare.options import SourceOptions, option, split_fractions


# --------------------------------------------------------------------------------------------
# DICOM headers (positions for pairing, PET dose information)


def _series_slices(folder: Path, where: str) -> list[dict[str, Any]]:
    """Headers of one single-series folder, sorted by slice position (``io.dicom``'s order and
    duplicate tolerance); ``z`` is the position along the slice normal."""
    try:
        rows = series_headers(folder)
    except DicomError as exc:
        raise ConvertError(f"{where}: {exc}") from None
    for r in rows:
        r["z"] = r["position"]
    return rows


# --------------------------------------------------------------------------------------------
# AAPM-Mayo


@dataclass(kw_only=True)
class AapmMayoOptions(SourceOptions):
    thickness: str = option("3mm", "reconstruction slice thickness; sets the default --dose-dir "
                            "/ --full-dir (default 3mm)", choices=("3mm", "1mm"))
    dose_dir: str | None = option(None, "low-dose folder inside each patient (default "
                                  "quarter_<thickness>)", metavar="NAME")
    full_dir: str | None = option(None, "full-dose folder inside each patient (default "
                                  "full_<thickness>)", metavar="NAME")
    val_patients: tuple[str, ...] = option(("L333",), "validation patients, or one integer N: N "
                                           "patients chosen by seed (default L333)",
                                           metavar="ID")
    test_patients: tuple[str, ...] = option(("L506",), "test patients, or one integer N "
                                            "(default L506)", metavar="ID")
    float32: bool = option(False, "store HU as float32 even when int16 would be exact")


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

    Options = AapmMayoOptions

    def _dirs(self, opts: AapmMayoOptions) -> tuple[str, str]:
        return (opts.dose_dir or f"quarter_{opts.thickness}", opts.full_dir or f"full_{opts.thickness}")

    def discover(self, opts: AapmMayoOptions) -> list[Item]:
        src = Path(opts.src)
        dose_dir, full_dir = self._dirs(opts)
        patients = _patient_first(src, dose_dir, full_dir) or _dose_first(src, dose_dir, full_dir)
        if not patients:
            raise ConvertError(f"aapm_mayo: no patient folder under {src} contains {dose_dir}/ "
                               f"and {full_dir}/ (expected {src}/L067/{dose_dir}/*.IMA)")
        split = _split_named_or_count(list(patients), opts, "patient", "aapm_mayo")
        items = []
        for pid, (q, f, q_name, f_name) in patients.items():
            qs = _series_slices(q, f"aapm_mayo: patient {pid}")
            fs = _series_slices(f, f"aapm_mayo: patient {pid}")
            pairs = _pair_by_position(qs, fs, pid, q_name, f_name)
            items.append(Item(pid, split[pid], {"pairs": pairs, "dose_dir": q_name,
                                                "full_dir": f_name}))
        return items

    def convert(self, item: Item, opts: AapmMayoOptions) -> Iterable[Record]:
        from medrestore.io.dicom import read_dicom

        src = Path(opts.src)
        pairs = item.data["pairs"]
        zs = np.array([g["z"] for _, g in pairs])
        slice_spacing = float(np.median(np.diff(zs))) if len(zs) > 1 else None
        for i, (q, g) in enumerate(iter_progress(pairs, len(pairs), item.unit, opts.quiet)):
            lq, lq_meta = read_dicom(q["path"])
            gt, gt_meta = read_dicom(g["path"])
            if lq.shape != gt.shape or gt.ndim != 2:
                raise ConvertError(f"aapm_mayo: patient {item.unit}: {q['path'].name} "
                                   f"{lq.shape} and {g['path'].name} {gt.shape} differ in size")
            if not opts.float32:
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
    from medrestore.sample import make_meta, window_for

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


def _split_named_or_count(units: Sequence[str], opts: AapmMayoOptions, unit: str, salt: str
                          ) -> dict[str, str]:
    """``--val-<unit>s`` / ``--test-<unit>s``: explicit ids, or one integer N each (seeded)."""
    val, test = parse_ids(getattr(opts, f"val_{unit}s")), parse_ids(getattr(opts, f"test_{unit}s"))

    def count(ids: list[str]) -> int | None:
        return int(ids[0]) if len(ids) == 1 and ids[0].isdigit() else None

    n_test, n_val = count(test), count(val)
    order = seeded_order(units, opts.seed, salt)
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


@dataclass(kw_only=True)
class IxiOptions(SourceOptions):
    modality: str = option("T2", "IXI contrast folder IXI-<modality> (default T2)",
                           choices=("T2", "T1", "PD"))
    slices: int = option(100, "central axial slices per volume (default 100; 0 = all)")
    method: str = option("kspace", "LQ simulation: central k-space truncation (default) or "
                         "bicubic", choices=("kspace", "bicubic"))
    scale: int = option(4, "degradation factor per axis (4)")
    split_fractions: tuple[float, float, float] = split_fractions(
        IXI_FRACTIONS, "subject split fractions (default 405/59/114 of 578, TAT)")
    val_subjects: tuple[str, ...] | None = explicit_ids("subject", "val")
    test_subjects: tuple[str, ...] | None = explicit_ids("subject", "test")


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

    Options = IxiOptions

    def discover(self, opts: IxiOptions) -> list[Item]:
        src = Path(opts.src)
        folder = child(src, [f"IXI-{opts.modality}"]) or src
        subjects: dict[str, dict[str, Any]] = {}
        for f in list_files(folder, ("nifti",)):
            m = _IXI_RE.match(f.name)
            if not m or m.group(4).upper() != opts.modality:
                continue
            sid = m.group(1)
            if sid in subjects:
                raise ConvertError(f"ixi: subject {sid} has two {opts.modality} volumes: "
                                   f"{subjects[sid]['path'].name} and {f.name}")
            subjects[sid] = {"path": f, "site": m.group(2)}
        if not subjects:
            raise ConvertError(f"ixi: no IXI*-{opts.modality}.nii.gz files in "
                               f"{src / f'IXI-{opts.modality}'} or {src}")
        if opts.slices < 0:
            raise ConvertError(f"--slices must be >= 0, got {opts.slices}")
        if opts.scale < 2:
            raise ConvertError(f"--scale must be >= 2, got {opts.scale}")
        split = split_units(list(subjects), opts, "subject", f"ixi-{opts.modality}")
        return [Item(s, split[s], d) for s, d in subjects.items()]

    def convert(self, item: Item, opts: IxiOptions) -> Iterable[Record]:
        from medrestore.degradations.rng import keyed_rng
        from medrestore.degradations.simulators import simulate
        from medrestore.sample import Normalisation, make_meta, window_for

        src = Path(opts.src)
        vol, vmeta = read_array(item.data["path"])
        vol = np.asarray(vol)
        if vol.ndim != 3:
            raise ConvertError(f"ixi: {item.data['path']}: expected a 3-D volume, got shape "
                               f"{vol.shape}")
        vol = compact_integral(vol)
        z_all = vol.shape[0]
        n = z_all if opts.slices in (0, None) else min(opts.slices, z_all)
        start = (z_all - n) // 2
        spacing = vmeta.get("spacing")
        inplane = inplane_spacing(spacing, 0) if spacing and len(spacing) == 3 else None
        sim = "mri_kspace" if opts.method == "kspace" else "mri_bicubic"
        params = {"scale": int(opts.scale)}
        source = relpath(item.data["path"], src)
        for z in iter_progress(range(start, start + n), n, item.unit, opts.quiet):
            gt = vol[z][None]
            key = f"ixi/{item.unit}/{opts.modality}/z{z:03d}"
            norm = window_for(gt.dtype, self.task)
            lq = simulate(sim, gt.astype(np.float32), rng=keyed_rng(f"{self.task}:{key}", opts.seed),
                          normalisation=Normalisation.from_dict(norm), spacing=inplane, **params)
            meta = make_meta(self.task, normalisation=norm, spacing=inplane, channels=1,
                             source={"gt": source}, subject=item.unit, site=item.data["site"],
                             volume=item.unit, contrast=opts.modality, slice_index=int(z),
                             slice_spacing=(float(spacing[0]) if spacing and len(spacing) == 3
                                            and spacing[0] is not None else None),
                             degradation={"simulator": sim, "params": params,
                                          "seed": int(opts.seed)})
            yield Record(self.task, key, gt, np.asarray(lq, dtype=np.float32), meta, source)


# --------------------------------------------------------------------------------------------
# PET

PET_LQ_NAMES = ("lq", "ld", "low_dose", "low-dose", "lowdose")
PET_GT_NAMES = ("gt", "fd", "full_dose", "full-dose", "fulldose")
# TAT's private PET data: 159 patients split 120 / 10 / 29
PET_FRACTIONS = (120 / 159, 10 / 159, 29 / 159)
SLICE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass(kw_only=True)
class PetOptions(SourceOptions):
    slice_axis: str = option("coronal", "voxel axis to slice along: axial = k, coronal = j, "
                             "sagittal = i of the (i, j, k) volume (default coronal, as TAT)",
                             choices=tuple(SLICE_AXES))
    air_threshold: float = option(0.2, "drop slices whose full-dose maximum is below this SUV "
                                  "(default 0.2)", metavar="SUV")
    suv_scale: float = option(1.0, "factor applied to NIfTI values to get SUV (default 1: "
                              "already SUV)", flags=("--scale",))
    name: str = option("pet", "dataset name used in keys (default pet)")
    split_fractions: tuple[float, float, float] = split_fractions(
        PET_FRACTIONS, "patient split fractions (default 120/10/29 of 159, TAT)")
    val_patients: tuple[str, ...] | None = explicit_ids("patient", "val")
    test_patients: tuple[str, ...] | None = explicit_ids("patient", "test")


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

    Options = PetOptions

    def discover(self, opts: PetOptions) -> list[Item]:
        src = Path(opts.src)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", opts.name):
            raise ConvertError(f"--name {opts.name!r}: use letters, digits, '_', '-', '.'")
        if opts.suv_scale <= 0:
            raise ConvertError(f"--suv-scale must be positive, got {opts.suv_scale}")
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
        split = split_units(list(patients), opts, "patient", opts.name)
        return [Item(p, split[p], d) for p, d in patients.items()]

    def convert(self, item: Item, opts: PetOptions) -> Iterable[Record]:
        from medrestore.sample import make_meta, window_for

        src = Path(opts.src)
        where = f"pet: patient {item.unit}"
        lq, _ = _read_pet(item.data["lq"], item.data["lq_suv"], opts.suv_scale, where)
        gt, gmeta = _read_pet(item.data["gt"], item.data["gt_suv"], opts.suv_scale, where)
        if lq.shape != gt.shape:
            raise ConvertError(f"{where}: low-dose volume {lq.shape} and full-dose volume "
                               f"{gt.shape} differ in shape")
        axis = SLICE_AXES[opts.slice_axis]
        spacing = gmeta.get("spacing")
        inplane = inplane_spacing(spacing, axis) if spacing and len(spacing) == 3 else None
        norm = window_for(np.float32, self.task)
        source = {"lq": relpath(item.data["lq"], src), "gt": relpath(item.data["gt"], src)}
        suv = {"lq": item.data["lq_suv"]["how"], "gt": item.data["gt_suv"]["how"]}
        n = gt.shape[axis]
        for i in iter_progress(range(n), n, item.unit, opts.quiet):
            g = np.take(gt, i, axis=axis)
            if float(g.max()) < opts.air_threshold:
                continue                                       # air only: nothing to learn
            q = np.take(lq, i, axis=axis)
            key = f"{opts.name}/{item.unit}/{opts.slice_axis}/{i:03d}"
            meta = make_meta(self.task, normalisation=norm, spacing=inplane, channels=1,
                             source=source, patient=item.unit, slice_axis=opts.slice_axis,
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
        base = file_stem(p) if p.is_file() and format_for_suffix(p) == "nifti" else (
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
    files = dicom_files_in(entry)
    if not files:
        raise ConvertError(f"{where}: DICOM folder {entry} is empty")
    ds = read_header(files[0])
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
