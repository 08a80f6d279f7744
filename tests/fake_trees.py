"""Builders of tiny fake source trees with the real datasets' names, nesting and formats.

Each builder writes files under ``root`` and returns what a converter should find there
(pixels in physical units, ids), so tests compare shard contents against the source. Sizes are
a few dozen pixels: the layouts are real, the images are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------ small writers


def rgb(rng: np.random.Generator, h: int, w: int, dtype=np.uint8) -> np.ndarray:
    """Random H×W×3 image of ``dtype`` (full range)."""
    hi = np.iinfo(dtype).max
    return rng.integers(0, hi + 1, size=(h, w, 3), dtype=np.int64).astype(dtype)


def write_png(path: Path, hwc: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(hwc)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    Image.fromarray(a).save(path)
    return path


def write_tiff(path: Path, arr: np.ndarray) -> Path:
    """H×W×3 (RGB, contiguous like UCMerced tiles) or H×W single band."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(arr)
    tifffile.imwrite(path, a, photometric="rgb" if a.ndim == 3 else "minisblack")
    return path


def chw(hwc: np.ndarray) -> np.ndarray:
    a = np.asarray(hwc)
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def write_nifti(path: Path, data_ijk: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data_ijk), np.diag([*spacing, 1.0]))
    img.header.set_data_dtype(np.asarray(data_ijk).dtype)
    nib.save(img, str(path))
    return path


def nifti_zyx(data_ijk: np.ndarray) -> np.ndarray:
    """The reader's ``Z×H×W`` view of a nibabel ``(i, j, k)`` array: ``vol[z] = data[:, :, z].T``."""
    return np.ascontiguousarray(np.transpose(np.asarray(data_ijk), (2, 1, 0)))


# ------------------------------------------------------------------------------ DICOM


def _ct_template():
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for kw in ("PixelPaddingValue", "DataSetTrailingPadding"):
        if kw in ds:
            delattr(ds, kw)
    return ds


def write_dicom_slice(path: Path, raw: np.ndarray, *, z: float, series_uid: str, study_uid: str,
                      instance: int, patient: str, modality: str = "CT", slope: float = 1.0,
                      intercept: float = -1024.0, spacing=(0.7, 0.7), thickness: float = 3.0,
                      extra: dict[str, Any] | None = None) -> Path:
    """One DICOM slice built from pydicom's ``CT_small.dcm`` with new pixels and geometry."""
    from pydicom.uid import generate_uid

    ds = _ct_template()
    raw = np.ascontiguousarray(raw, dtype=np.int16)
    ds.Rows, ds.Columns = raw.shape
    ds.PixelData = raw.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient = [-10.0, -12.0, float(z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation = float(z)
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.SpacingBetweenSlices = float(thickness)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.InstanceNumber = int(instance)
    ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = ds.PatientName = patient
    ds.Modality = modality
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct_base(n: int, size: int) -> np.ndarray:
    """``n`` slices of CT_small's pixels, downsized to ``size``² (raw stored values)."""
    ds = _ct_template()
    step = ds.Rows // size
    base = ds.pixel_array[::step, ::step][:size, :size].astype(np.int16)
    return np.stack([base + 7 * k for k in range(n)])


def aapm_tree(root: Path, patients=("L067", "L096", "L333", "L506"), n_slices: int = 3,
              size: int = 16, thickness: str = "3mm", seed: int = 0, dose_first: bool = False
              ) -> dict[str, Any]:
    """``root/<patient>/{quarter,full}_<t>/<patient>_{QD,FD}_<t>_1.CT.0004.<n>.<date>….IMA``
    (``root/{quarter,full}_<t>/<patient>/…`` with ``dose_first``).

    Quarter-dose files are numbered in the *reverse* slice order of the full-dose ones, so
    pairing by file name would pair the wrong slices; pairing by position is right. Returns
    ``{patient: {"full": [HU], "quarter": [HU], "z": [...]}}`` in increasing z."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    t = thickness.rstrip("m")
    step = float(t)
    out: dict[str, Any] = {}
    for p_idx, pid in enumerate(patients):
        raw_full = _ct_base(n_slices, size) + 11 * p_idx
        raw_quarter = (raw_full + rng.integers(-40, 41, size=raw_full.shape)).astype(np.int16)
        zs = [-100.0 + step * k for k in range(n_slices)]
        study = generate_uid()
        for dose, raw, reverse in (("full", raw_full, False), ("quarter", raw_quarter, True)):
            series = generate_uid()
            tag = "FD" if dose == "full" else "QD"
            for k in range(n_slices):
                inst = n_slices - k if reverse else k + 1
                name = (f"{pid}_{tag}_{t}_1.CT.0004.{inst:04d}.2015.12.22.18.09.40."
                        f"{840353 + inst}.358074219.IMA")
                folder = (root / f"{dose}_{thickness}" / pid if dose_first
                          else root / pid / f"{dose}_{thickness}")
                write_dicom_slice(folder / name, raw[k], z=zs[k],
                                  series_uid=series, study_uid=study, instance=inst, patient=pid,
                                  thickness=step)
        out[pid] = {"full": [r.astype(np.float32) - 1024 for r in raw_full],
                    "quarter": [r.astype(np.float32) - 1024 for r in raw_quarter], "z": zs}
    return out


PET_HALF_LIFE = 6586.2          # s, F-18
PET_DOSE = 3.0e8                # Bq injected at 09:30:00
PET_WEIGHT = 72.0               # kg
PET_DT = 3600.0                 # s from injection (09:30) to the series time (10:30)
PET_SLOPE = 0.25                # Bq/ml per stored value


def pet_suv_factor() -> float:
    """SUVbw factor of :func:`pet_dicom_series`, computed independently of the converter."""
    decayed = PET_DOSE * np.exp(-np.log(2.0) * PET_DT / PET_HALF_LIFE)
    return PET_WEIGHT * 1000.0 / decayed


def pet_dicom_series(folder: Path, raw_zyx: np.ndarray, *, patient: str,
                     drop: tuple[str, ...] = ()) -> Path:
    """A BQML PET series (Modality PT, Units BQML, radiopharmaceutical tags, DecayCorrection
    START). ``drop`` removes tags (e.g. ``"PatientWeight"``) to test the error message."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    series, study = generate_uid(), generate_uid()
    for k, raw in enumerate(raw_zyx):
        radio = Dataset()
        radio.Radiopharmaceutical = "Fluorodeoxyglucose"
        radio.RadiopharmaceuticalStartTime = "093000.00"
        radio.RadionuclideTotalDose = PET_DOSE
        radio.RadionuclideHalfLife = PET_HALF_LIFE
        extra = {"Units": "BQML", "DecayCorrection": "START", "PatientWeight": PET_WEIGHT,
                 "SeriesDate": "20240102", "SeriesTime": "103000.00",
                 "AcquisitionTime": "103000.00",
                 "SOPClassUID": "1.2.840.10008.5.1.4.1.1.128",
                 "RadiopharmaceuticalInformationSequence": Sequence([radio])}
        for tag in drop:
            extra.pop(tag, None)
        write_dicom_slice(folder / f"{k + 1:04d}.dcm", raw, z=4.0 * k, series_uid=series,
                          study_uid=study, instance=k + 1, patient=patient, modality="PT",
                          slope=PET_SLOPE, intercept=0.0, spacing=(4.0, 4.0), thickness=4.0,
                          extra=extra)
    return folder


def pet_tree(root: Path, nifti_patients=("P001", "P002", "P003", "P004", "P005"),
             dicom_patient: str | None = "P006", shape_ijk=(6, 5, 4), seed: int = 0
             ) -> dict[str, Any]:
    """``root/<patient>/{lq,gt}.nii.gz`` (NIfTI, SUV; aliases ld/fd on one patient) and one
    ``root/<patient>/{low_dose,full_dose}/`` BQML DICOM series. Slice j = 0 of every volume
    is air (zeros). Returns ``{patient: {"lq": Z×H×W SUV, "gt": Z×H×W SUV}}``."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for n, pid in enumerate(nifti_patients):
        gt = rng.uniform(0.5, 8.0, size=shape_ijk).astype(np.float32)
        gt[:, 0, :] = 0.0
        lq = (gt + rng.normal(0, 0.3, size=shape_ijk)).astype(np.float32)
        lq[:, 0, :] = 0.0
        names = ("ld", "fd") if n == 1 else ("lq", "gt")
        write_nifti(root / pid / f"{names[0]}.nii.gz", lq, spacing=(2.0, 2.5, 3.0))
        write_nifti(root / pid / f"{names[1]}.nii.gz", gt, spacing=(2.0, 2.5, 3.0))
        out[pid] = {"lq": nifti_zyx(lq), "gt": nifti_zyx(gt)}
    if dicom_patient is not None:
        z, h, w = shape_ijk[2], shape_ijk[1], shape_ijk[0]
        raw_gt = rng.integers(100, 4000, size=(z, h, w)).astype(np.int16)
        raw_gt[:, 0, :] = 0
        raw_lq = (raw_gt + rng.integers(-50, 50, size=raw_gt.shape)).clip(0).astype(np.int16)
        raw_lq[:, 0, :] = 0
        pet_dicom_series(root / dicom_patient / "low_dose", raw_lq, patient=dicom_patient)
        pet_dicom_series(root / dicom_patient / "full_dose", raw_gt, patient=dicom_patient)
        f = pet_suv_factor()
        out[dicom_patient] = {"lq": raw_lq.astype(np.float64) * PET_SLOPE * f,
                              "gt": raw_gt.astype(np.float64) * PET_SLOPE * f}
    return out


# ------------------------------------------------------------------------------ MRI


def ixi_tree(root: Path, n_subjects: int = 6, shape_ijk=(12, 10, 9), modality: str = "T2",
             seed: int = 0) -> dict[str, np.ndarray]:
    """``root/IXI-T2/IXI0NN-<site>-0NNN-T2.nii.gz`` int16 volumes; returns ``{subject: Z×H×W}``."""
    rng = np.random.default_rng(seed)
    sites = ("Guys", "HH", "IOP")
    out = {}
    for n in range(n_subjects):
        sid = f"IXI{n + 2:03d}"
        data = rng.integers(0, 1500, size=shape_ijk).astype(np.int16)
        write_nifti(root / f"IXI-{modality}" / f"{sid}-{sites[n % 3]}-{828 + n:04d}-{modality}.nii.gz",
                    data, spacing=(0.9375, 0.9375, 1.2))
        out[sid] = nifti_zyx(data)
    return out


# ------------------------------------------------------------------------------ natural


def div2k_tree(root: Path, seed: int = 0, flickr: bool = False) -> dict[str, Any]:
    """``DIV2K_{train,valid}_HR/0001.png`` + ``DIV2K_{train,valid}_LR_bicubic/X4/0001x4.png``.

    train: 0001 24×32 with LR, 0002 26×21 (not a multiple of 4) with a ceil-size LR 7×6,
    0003-0005 without LR (generated); valid: 0801-0802 with LR. With ``flickr``, also
    ``Flickr2K/Flickr2K_HR/00000{1,2}.png`` (+ LR for 000001). Returns ``{stem: {"hr", "lr"}}``
    as H×W×3 arrays (``lr`` None when not written)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}

    def one(hr_dir: Path, lr_dir: Path, stem: str, h: int, w: int, lr_shape) -> None:
        hr = rgb(rng, h, w)
        write_png(hr_dir / f"{stem}.png", hr)
        lr = None
        if lr_shape is not None:
            lr = rgb(rng, *lr_shape)
            write_png(lr_dir / f"{stem}x4.png", lr)
        out[stem] = {"hr": hr, "lr": lr}

    tr, trl = root / "DIV2K_train_HR", root / "DIV2K_train_LR_bicubic" / "X4"
    one(tr, trl, "0001", 24, 32, (6, 8))
    one(tr, trl, "0002", 26, 21, (7, 6))
    for stem in ("0003", "0004", "0005"):
        one(tr, trl, stem, 16, 20, None)
    va, val = root / "DIV2K_valid_HR", root / "DIV2K_valid_LR_bicubic" / "X4"
    one(va, val, "0801", 20, 16, (5, 4))
    one(va, val, "0802", 16, 16, (4, 4))
    if flickr:
        fh, fl = root / "Flickr2K" / "Flickr2K_HR", root / "Flickr2K" / "Flickr2K_LR_bicubic" / "X4"
        one(fh, fl, "000001", 20, 24, (5, 6))
        one(fh, fl, "000002", 16, 16, None)
    return out


def rain100l_tree(root: Path, variant: str = "prenet", n_train: int = 10, n_test: int = 4,
                  seed: int = 0) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Rain100L in one of its common distributions; returns ``{split: {id: (rainy, clean)}}``.

    * ``prenet``: ``RainTrainL/{rain-1.png, norain-1.png, rainstreak-1.png}`` (streak maps are
      ignored) and ``Rain100L/{rainy/rain-001.png, norain-001.png}``;
    * ``jorder``: ``train/{rain/X2/norain-1x2.png, norain/norain-1.png}`` and
      ``test/{input/1.png, target/1.png}``."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "test": {}}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(1, n + 1):
            clean = rgb(rng, 12, 16)
            rainy = np.maximum(clean, rgb(rng, 12, 16) // 2)
            out[split][str(i)] = (rainy, clean)
            if variant == "prenet" and split == "train":
                d = root / "RainTrainL"
                write_png(d / f"rain-{i}.png", rainy)
                write_png(d / f"norain-{i}.png", clean)
                write_png(d / f"rainstreak-{i}.png", rainy - np.minimum(rainy, clean))
            elif variant == "prenet":
                d = root / "Rain100L"
                write_png(d / "rainy" / f"rain-{i:03d}.png", rainy)
                write_png(d / f"norain-{i:03d}.png", clean)
            elif variant == "jorder" and split == "train":
                write_png(root / "train" / "rain" / "X2" / f"norain-{i}x2.png", rainy)
                write_png(root / "train" / "norain" / f"norain-{i}.png", clean)
            elif variant == "jorder":
                write_png(root / "test" / "input" / f"{i}.png", rainy)
                write_png(root / "test" / "target" / f"{i}.png", clean)
            else:
                raise ValueError(variant)
    return out


GOPRO_TRAIN = ("GOPR0372_07_00", "GOPR0374_11_00", "GOPR0378_13_00", "GOPR0379_11_00",
               "GOPR0380_11_00")
GOPRO_TEST = ("GOPR0384_11_00", "GOPR0396_11_00")


def gopro_tree(root: Path, frames: int = 2, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``GOPRO_Large/{train,test}/<SEQ>/{blur,blur_gamma,sharp}/0000NN.png``;
    returns ``{seq: {frame: {"blur", "blur_gamma", "sharp"}}}``."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, Any]] = {}
    for split, seqs in (("train", GOPRO_TRAIN), ("test", GOPRO_TEST)):
        for seq in seqs:
            out[seq] = {}
            for f in range(frames):
                frame = f"{47 + f:06d}"
                imgs = {k: rgb(rng, 10, 14) for k in ("blur", "blur_gamma", "sharp")}
                for k, v in imgs.items():
                    write_png(root / "GOPRO_Large" / split / seq / k / f"{frame}.png", v)
                out[seq][frame] = imgs
    return out


# ------------------------------------------------------------------------------ remote sensing

UCM_CLASSES = ("agricultural", "airplane", "beach")


def ucmerced_tree(root: Path, per_class: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """``UCMerced_LandUse/Images/<class>/<class>NN.tif`` RGB uint8 16×16 (``beach03`` is 16×15,
    like the few odd-sized tiles); returns ``{stem: H×W×3}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls in UCM_CLASSES:
        for i in range(per_class):
            stem = f"{cls}{i:02d}"
            img = rgb(rng, 16, 15 if stem == "beach03" else 16)
            write_tiff(root / "UCMerced_LandUse" / "Images" / cls / f"{stem}.tif", img)
            out[stem] = img
    return out


def cuhk_cr1_tree(root: Path, n_train: int = 6, n_test: int = 3, nir: bool = True,
                  seed: int = 0) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``CUHK-CR1/{train,test}/{cloud,label}/<n>.png`` RGB and ``…/nir/{cloud,label}/<n>.png``
    (NIR saved as grey RGB, as released); returns ``{split: {stem: {cloud, label, nir_cloud,
    nir_label}}}``."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[split] = {}
        for i in range(1, n + 1):
            d = root / "CUHK-CR1" / split
            imgs = {"cloud": rgb(rng, 16, 16), "label": rgb(rng, 16, 16)}
            write_png(d / "cloud" / f"{i}.png", imgs["cloud"])
            write_png(d / "label" / f"{i}.png", imgs["label"])
            if nir:
                for k in ("cloud", "label"):
                    g = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
                    write_png(d / "nir" / k / f"{i}.png", np.repeat(g[..., None], 3, axis=2))
                    imgs[f"nir_{k}"] = g
            out[split][str(i)] = imgs
    return out


def rice1_tree(root: Path, n: int = 10, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``RICE1/{cloud,label}/<n>.png`` RGB 16×16; returns ``{stem: {cloud, label}}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        imgs = {"cloud": rgb(rng, 16, 16), "label": rgb(rng, 16, 16)}
        for k, v in imgs.items():
            write_png(root / "RICE1" / k / f"{i}.png", v)
        out[str(i)] = imgs
    return out


# ------------------------------------------------------------------------------ generic


def paired_split_tree(root: Path, per_split=(3, 1, 2), seed: int = 0) -> dict[str, Any]:
    """``{train,val,test}/{lq,gt}/<stem>.tif`` single-band uint16 (DN) pairs; returns
    ``{stem: {"split", "lq", "gt"}}`` (H×W arrays)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    k = 0
    for split, n in zip(("train", "val", "test"), per_split):
        for _ in range(n):
            stem = f"tile_{k:02d}"
            gt = rng.integers(0, 12000, size=(12, 10)).astype(np.uint16)
            lq = rng.integers(0, 12000, size=(12, 10)).astype(np.uint16)
            write_tiff(root / split / "gt" / f"{stem}.tif", gt)
            write_tiff(root / split / "lq" / f"{stem}.tif", lq)
            out[stem] = {"split": split, "lq": lq, "gt": gt}
            k += 1
    return out


def paired_volume_tree(root: Path, n: int = 4, shape_ijk=(8, 6, 3), seed: int = 0
                       ) -> dict[str, Any]:
    """Flat ``lq/vol_N.nii.gz`` + ``gt/vol_N.nii.gz`` float32 volumes; ``{stem: {lq, gt}}``
    in the reader's Z×H×W order."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        gt = rng.uniform(0, 3, size=shape_ijk).astype(np.float32)
        lq = (gt + rng.normal(0, 0.1, size=shape_ijk)).astype(np.float32)
        write_nifti(root / "gt" / f"vol_{i}.nii.gz", gt)
        write_nifti(root / "lq" / f"vol_{i}.nii.gz", lq)
        out[f"vol_{i}"] = {"lq": nifti_zyx(lq), "gt": nifti_zyx(gt)}
    return out


def clean_tree(root: Path, n: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat folder of clean RGB PNGs ``img_NN.png``; returns ``{stem: H×W×3}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        img = rgb(rng, 12, 12)
        write_png(root / f"img_{i:02d}.png", img)
        out[f"img_{i:02d}"] = img
    return out


# ------------------------------------------------------------------------------ BraTS layouts

#: distinct base intensity per canonical modality, so the stacking order can be checked
BRATS_BASE = {"t1": 100, "t1ce": 200, "t2": 300, "flair": 400}
BRATS_SHAPE = (10, 9, 8)            # not cubic: an axis swap would show


def brats_canonical(offset: int = 0, high_grade: bool = True, shape=BRATS_SHAPE) -> np.ndarray:
    """A hand-made canonical label map (0 bg, 1 NCR/NET, 2 ED, 3 ET) shifted by ``offset``
    along x: WT = [1+o:7+o, 1:7, 1:6] (180 voxels), TC = [2+o:6+o, 2:6, 2:5] (48), necrosis
    [3+o:5+o, 3:5, 3:4] (4), so ET = 44 in high grade and 0 in low grade (TC all label 1)."""
    o = int(offset)
    lab = np.zeros(shape, np.uint8)
    lab[1 + o:7 + o, 1:7, 1:6] = 2
    lab[2 + o:6 + o, 2:6, 2:5] = 3 if high_grade else 1
    lab[3 + o:5 + o, 3:5, 3:4] = 1
    return lab


def brats_modalities(lab: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """int16 volumes per canonical modality: a "brain" block of base + noise, plus 10 × the
    canonical label; zero outside the block."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(lab.shape, bool)
    brain[0:-1, 0:-1, 0:-1] = True
    out = {}
    for m, base in BRATS_BASE.items():
        v = (base + rng.integers(0, 5, lab.shape) + 10 * lab.astype(np.int64)) * brain
        out[m] = v.astype(np.int16)
    return out


_TO_124 = np.array([0, 1, 2, 4], np.uint8)      # canonical -> BraTS 2018-2021 codes
_TO_MSD = np.array([0, 2, 1, 3], np.uint8)      # canonical -> Decathlon Task01 codes


def _brats_case(folder: Path, case: str, lab_source: np.ndarray, mods: dict[str, np.ndarray],
                names: dict[str, str], sep: str, affine=None) -> None:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else np.asarray(affine, float)
    for m, arr in mods.items():
        nib.save(nib.Nifti1Image(arr, aff), str(folder / f"{case}{sep}{names[m]}.nii.gz"))
    nib.save(nib.Nifti1Image(lab_source.astype(np.uint8), aff),
             str(folder / f"{case}{sep}seg.nii.gz"))


def brats2018_tree(root: Path, hgg=("Brats18_2013_2_1", "Brats18_CBICA_AAB_1",
                                    "Brats18_TCIA01_131_1"),
                   lgg=("Brats18_2013_0_1", "Brats18_TCIA09_141_1"), affine=None
                   ) -> dict[str, dict[str, Any]]:
    """``HGG/`` and ``LGG/`` folders of ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``,
    labels 1/2/4. Returns ``{case: {grade, label (canonical), modalities}}``."""
    out = {}
    names = {m: m for m in BRATS_BASE}
    for grade, folder, cases in ((1, "HGG", hgg), (0, "LGG", lgg)):
        for i, case in enumerate(cases):
            lab = brats_canonical(i % 3, high_grade=bool(grade))
            mods = brats_modalities(lab, seed=len(out))
            _brats_case(root / folder / case, case, _TO_124[lab], mods, names, "_", affine)
            out[case] = {"grade": grade, "label": lab, "modalities": mods}
    return out


def brats2021_tree(root: Path, cases=("BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003",
                                      "BraTS2021_00005")) -> dict[str, dict[str, Any]]:
    """``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1/2/4, no
    grade folders; odd cases have no enhancing tumour."""
    out = {}
    names = {m: m for m in BRATS_BASE}
    for i, case in enumerate(cases):
        lab = brats_canonical(i % 3, high_grade=i % 2 == 0)
        mods = brats_modalities(lab, seed=i)
        _brats_case(root / case, case, _TO_124[lab], mods, names, "_")
        out[case] = {"grade": -1, "label": lab, "modalities": mods}
    return out


def brats2023_tree(root: Path, cases=("BraTS-GLI-00000-000", "BraTS-GLI-00000-001",
                                      "BraTS-GLI-00002-000", "BraTS-GLI-00003-000",
                                      "BraTS-GLI-00005-000", "BraTS-GLI-00006-000")
                   ) -> dict[str, dict[str, Any]]:
    """2023 names ``BraTS-GLI-<patient>-<timepoint>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
    labels 1/2/3 (the canonical codes); two time points of patient 00000."""
    out = {}
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
    for i, case in enumerate(cases):
        lab = brats_canonical(i % 3, high_grade=True)
        mods = brats_modalities(lab, seed=i)
        _brats_case(root / case, case, lab, mods, names, "-")
        out[case] = {"grade": -1, "label": lab, "modalities": mods}
    return out


MSD_DATASET_JSON = {
    "name": "BRATS", "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
               "3": "enhancing tumour"},
}


def msd_brats_tree(root: Path, n: int = 4, dataset_json: bool = True
                   ) -> dict[str, dict[str, Any]]:
    """Decathlon ``Task01_BrainTumour``: ``imagesTr/BRATS_NNN.nii.gz`` (4-D, FLAIR, T1w, t1gd,
    T2w), ``labelsTr/BRATS_NNN.nii.gz`` (1 oedema, 2 non-enhancing, 3 enhancing),
    ``dataset.json``, and a macOS ``._`` resource file as in the released archive."""
    import json

    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    (root / "imagesTs").mkdir(parents=True, exist_ok=True)
    if dataset_json:
        (root / "dataset.json").write_text(json.dumps(MSD_DATASET_JSON))
    out = {}
    for i in range(1, n + 1):
        case = f"BRATS_{i:03d}"
        lab = brats_canonical(i % 3, high_grade=i % 2 == 1)
        mods = brats_modalities(lab, seed=i)
        four = np.stack([mods["flair"], mods["t1"], mods["t1ce"], mods["t2"]], axis=-1)
        nib.save(nib.Nifti1Image(four, np.eye(4)), str(root / "imagesTr" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(_TO_MSD[lab], np.eye(4)),
                 str(root / "labelsTr" / f"{case}.nii.gz"))
        out[case] = {"grade": -1, "label": lab, "modalities": mods}
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    return out


# ==============================================================================================
# Lesion-segmentation sources (TP-Seg converters, medrestore.prepare.lesions). Appended block.
# ==============================================================================================


def lesion_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random filled rectangle (bool H×W), never empty."""
    t, l = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    m = np.zeros((h, w), bool)
    m[t:t + int(rng.integers(2, h // 2 + 1)), l:l + int(rng.integers(2, w // 2 + 1))] = True
    return m


def write_mask_png(path: Path, mask: np.ndarray, fmt: str = "PNG") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format=fmt)
    return path


def write_jpeg(path: Path, hwc: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(hwc)).save(path, format="JPEG", quality=95)
    return path


def isic2018_tree(root: Path, n_train: int = 6, n_val: int = 2, n_test: int = 0, seed: int = 0
                  ) -> dict[str, dict[str, np.ndarray]]:
    """ISIC 2018 Task 1: ``ISIC2018_Task1-2_<Part>_Input/ISIC_XXXXXXX.jpg`` +
    ``ISIC2018_Task1_<Part>_GroundTruth/ISIC_XXXXXXX_segmentation.png``; returns masks by id."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    n = 0
    for part, count in (("Training", n_train), ("Validation", n_val), ("Test", n_test)):
        for _ in range(count):
            uid = f"ISIC_{n:07d}"
            n += 1
            write_jpeg(root / f"ISIC2018_Task1-2_{part}_Input" / f"{uid}.jpg", rgb(rng, 20, 28))
            m = lesion_mask(rng, 20, 28)
            write_mask_png(root / f"ISIC2018_Task1_{part}_GroundTruth" / f"{uid}_segmentation.png", m)
            out.setdefault(part, {})[uid] = m
    return out


def busi_tree(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """BUSI: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png`` + ``benign
    (1)_mask.png`` (+ ``_mask_1.png``); returns the OR-ed mask per image stem."""
    rng = np.random.default_rng(seed)
    base = root / "Dataset_BUSI_with_GT"
    out = {}
    for cls, n in (("benign", 3), ("malignant", 2), ("normal", 1)):
        for i in range(1, n + 1):
            stem = f"{cls} ({i})"
            img = rng.integers(0, 256, (18, 22), dtype=np.uint8)
            write_png(base / cls / f"{stem}.png", np.stack([img] * 3, -1))   # BUSI PNGs are RGB
            m = lesion_mask(rng, 18, 22) if cls != "normal" else np.zeros((18, 22), bool)
            write_mask_png(base / cls / f"{stem}_mask.png", m)
            if cls == "benign" and i == 2:              # a second lesion in its own file
                m2 = np.zeros((18, 22), bool)
                m2[-3:, -3:] = True
                write_mask_png(base / cls / f"{stem}_mask_1.png", m2)
                m = m | m2
            out[stem] = m
    return out


def kvasir_seg_tree(root: Path, n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Kvasir-SEG: ``Kvasir-SEG/images/<id>.jpg`` + ``masks/<id>.jpg`` (JPEG masks)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        uid = f"cju{i:04d}kwl35piu0993l0dewei2"
        write_jpeg(root / "Kvasir-SEG" / "images" / f"{uid}.jpg", rgb(rng, 24, 24))
        m = lesion_mask(rng, 24, 24)
        m[:8, :8] = True                                 # big enough to survive JPEG
        write_mask_png(root / "Kvasir-SEG" / "masks" / f"{uid}.jpg", m, fmt="JPEG")
        out[uid] = m
    return out


def polyp_tree(root: Path, n_train: int = 6, tests=("CVC-300", "ETIS-LaribPolypDB"), n_test: int = 2,
               seed: int = 0) -> None:
    """PraNet: ``TrainDataset/{images,masks}/<n>.png``, ``TestDataset/<set>/{images,masks}/``."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        write_png(root / "TrainDataset" / "images" / f"{i + 1}.png", rgb(rng, 16, 16))
        write_mask_png(root / "TrainDataset" / "masks" / f"{i + 1}.png", lesion_mask(rng, 16, 16))
    for t in tests:
        for i in range(n_test):
            write_png(root / "TestDataset" / t / "images" / f"{i + 1}.png", rgb(rng, 16, 16))
            write_mask_png(root / "TestDataset" / t / "masks" / f"{i + 1}.png", lesion_mask(rng, 16, 16))


def tn3k_tree(root: Path, n_trainval: int = 6, n_test: int = 2, seed: int = 0) -> None:
    """TN3K: ``trainval-image/0000.jpg`` + ``trainval-mask/0000.jpg``, ``test-image``/``test-mask``."""
    rng = np.random.default_rng(seed)
    for part, n in (("trainval", n_trainval), ("test", n_test)):
        for i in range(n):
            g = rng.integers(0, 256, (20, 20), dtype=np.uint8)
            write_jpeg(root / f"{part}-image" / f"{i:04d}.jpg", g)
            m = lesion_mask(rng, 20, 20)
            m[5:12, 5:12] = True
            write_mask_png(root / f"{part}-mask" / f"{i:04d}.jpg", m, fmt="JPEG")


def ebhi_seg_tree(root: Path, classes=("Adenocarcinoma", "Normal"), n: int = 4, seed: int = 0) -> None:
    """EBHI-Seg: ``EBHI-SEG/<class>/image/GT2012149-2-400-001.png`` + ``label/<same>.png``."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        for i in range(n):
            name = f"GT2012149-2-400-{i + 1:03d}.png"
            write_png(root / "EBHI-SEG" / cls / "image" / name, rgb(rng, 16, 16))
            write_mask_png(root / "EBHI-SEG" / cls / "label" / name, lesion_mask(rng, 16, 16))


def figshare_mat(path: Path, image: np.ndarray, mask: np.ndarray, label: int, pid: str) -> Path:
    """A MATLAB v7.3 (HDF5 with a 512-byte user block) ``cjdata`` struct as the figshare files
    hold it: arrays column-major (h5py sees them transposed), PID a uint16 char column."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        g = f.create_group("cjdata")
        g["image"] = np.asarray(image, dtype=np.int16).T
        g["tumorMask"] = np.asarray(mask, dtype=np.uint8).T
        g["label"] = np.array([[float(label)]])
        g["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        g["tumorBorder"] = np.zeros((1, 8))
    return path


def figshare_tree(root: Path, patients=("100360", "112649", "MR029702", "TCGA-CS-4942", "107494"),
                  per_patient: int = 2, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``brainTumorDataPublic_1-766/<n>.mat`` …; returns ``{stem: {image, mask, pid, label}}``."""
    rng = np.random.default_rng(seed)
    out = {}
    n = 0
    for pid in patients:
        for _ in range(per_patient):
            n += 1
            img = rng.integers(0, 3000, (16, 12)).astype(np.int16)
            m = lesion_mask(rng, 16, 12)
            label = int(rng.integers(1, 4))
            sub = "brainTumorDataPublic_1-766" if n <= 4 else "brainTumorDataPublic_767-1532"
            figshare_mat(root / sub / f"{n}.mat", img, m, label, pid)
            out[str(n)] = {"image": img, "mask": m, "pid": pid, "label": label}
    return out


def covid_ct_tree(root: Path, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """COVID-19-CT-Seg: ``COVID-19-CT-Seg_20cases/<case>.nii.gz`` + ``Infection_Mask/<case>.nii.gz``
    (HU for coronacases, 0-255 for radiopaedia cases); 4 slices each, infection on 2."""
    rng = np.random.default_rng(seed)
    out = {}
    cases = ("coronacases_001", "coronacases_002", "radiopaedia_4_85506_1", "radiopaedia_7_85703_0")
    for c in cases:
        hu = "corona" in c
        vol = (rng.integers(-1024, 400, (12, 10, 4)) if hu else rng.integers(0, 256, (12, 10, 4))
               ).astype(np.int16 if hu else np.uint8)
        lab = np.zeros((12, 10, 4), np.uint8)
        lab[2:6, 3:7, 1] = 1
        lab[5:9, 1:4, 3] = 1
        write_nifti(root / "COVID-19-CT-Seg_20cases" / f"{c}.nii.gz", vol)
        write_nifti(root / "Infection_Mask" / f"{c}.nii.gz", lab)
        out[c] = {"volume": vol, "mask": lab}
    return out
