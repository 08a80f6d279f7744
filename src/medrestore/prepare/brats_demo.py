"""The embedded 3-D demo: **simulated lesions on a real template** (no download).

``medrestore-prepare brats_demo [--out data/demo/brats_demo.h5]`` builds a BraTS-like volume
store (:mod:`medrestore.io.volumes`, the format of ``medrestore-prepare brats``, read by the
same DataModule) from nilearn's MNI ICBM152 2009a template (T1 and the grey- / white-matter
probability maps, 1 mm, skull-stripped) — found with :func:`importlib.util.find_spec`, never
imported. Per case:

1. **Anatomy**: the template's tissue maps (CSF = brain mask − GM − WM, or dark T1) resampled onto a
   ``--size`` grid of ``--spacing`` mm (default 64³ at 3.25 mm) through a random affine (rotation
   ≤ 6°, scale ±8 %, shift ≤ 4 mm) plus a smooth elastic displacement (≤ ~3 mm), so every case
   has its own anatomy.
2. **Lesion** (one label map; every target derives from it): a lobulated ellipsoid
   (noise-perturbed radius) placed inside the brain at a random position, with random size
   and orientation. Whole tumour WT = oedema ∪ tumour core; the core TC (its own, shifted
   centre and lobulation) is intersected with WT, so ET ⊂ TC ⊂ WT by construction.
   *High grade* (grade 1): TC = enhancing rim (label 3) around a necrotic core (label 1,
   absent in a fifth of them). *Low grade* (grade 0): TC is non-enhancing (label 1), no ET,
   and relatively less oedema. Labels: 0 bg, 1 NCR/NET, 2 ED, 3 ET.
3. **Contrasts**: each tissue and lesion class has a modality-specific intensity (T1: WM >
   GM > CSF, necrosis dark; T1ce: enhancing rim bright; T2: CSF, oedema and necrosis bright;
   FLAIR: CSF suppressed, oedema bright), mixed by partial volume at lesion borders, with
   within-lesion texture, a smooth multiplicative bias field, a per-case gain per modality,
   Rician noise and a zero background outside the brain (as skull-stripped BraTS).
   Intensities are stored as int16 "physical" values (white matter ≈ 1000 before gain).

Splits are by case (``--cases TRAIN VAL TEST``, default 64 16 24), each split half high and
half low grade; a case's key, split and grade depend only on its index and ``--seed``.
The data are simulated: lesion shapes, contrasts and grades follow the radiological pattern,
not any patient's. See docs/demo-data.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medrestore.prepare.base import SPLITS, Item
from medrestore.prepare.brats import MODALITY_SUFFIXES, VolumeCase, VolumeConverter
from medrestore.prepare.options import ConvertError, Options, option

DEFAULT_BRATS_DEMO = Path(os.environ.get("MEDRESTORE_DATA_DIR", "data")) / "demo" / \
    "brats_demo.h5"
MNI_T1 = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
SOURCE = "nilearn MNI ICBM152 2009a (T1, GM, WM); simulated lesions on a real template"

#: mean intensity of each class per modality, relative to T1 white matter
#: classes: CSF, GM, WM, necrosis (NCR), oedema (ED), enhancing (ET), non-enhancing core (NET)
CONTRASTS = {
    "t1":    (0.30, 0.62, 0.90, 0.28, 0.50, 0.60, 0.45),
    "t1ce":  (0.30, 0.65, 0.88, 0.28, 0.52, 1.35, 0.47),
    "t2":    (1.30, 0.80, 0.55, 1.20, 1.05, 0.85, 1.00),
    "flair": (0.20, 0.80, 0.60, 0.55, 1.25, 0.95, 1.05),
}
WM_LEVEL = 1000.0                   # stored value of T1 white matter before the per-case gain


@dataclass(kw_only=True)
class BratsDemoOptions(Options):
    out: Path = option(DEFAULT_BRATS_DEMO, f"output store (default {DEFAULT_BRATS_DEMO})",
                       metavar="FILE.h5")
    cases: tuple[int, int, int] = option((64, 16, 24), "cases in train / val / test "
                                         "(default 64 16 24; each split half high grade)",
                                         metavar=("TRAIN", "VAL", "TEST"))
    size: tuple[int, int, int] = option((64, 64, 64), "grid in voxels (default 64 64 64: "
                                        "a multiple of 32 for a 5-level Swin)",
                                        metavar=("X", "Y", "Z"))
    spacing: float = option(3.25, "voxel size in mm (default 3.25: the brain, ~145×181×155 mm, "
                            "fits 64³ with its deformations)")
    noise: float = option(0.03, "Rician noise sigma relative to white matter (default 0.03)")

    def validate(self) -> None:
        super().validate()
        if any(int(n) < 0 for n in self.cases) or int(self.cases[0]) < 2:
            raise ConvertError(f"--cases must be >= 0 with at least 2 training cases, got "
                               f"{list(self.cases)}")
        if any(int(n) < 16 for n in self.size):
            raise ConvertError(f"--size must be >= 16 voxels per side, got {list(self.size)}")
        if not 1.0 <= float(self.spacing) <= 8.0:
            raise ConvertError(f"--spacing must be within [1, 8] mm, got {self.spacing}")
        if not 0.0 <= float(self.noise) <= 0.5:
            raise ConvertError(f"--noise must be within [0, 0.5], got {self.noise}")


class _Template:
    """The 1 mm tissue maps (CSF, GM, WM probabilities) and the brain's centre in voxels."""

    def __init__(self) -> None:
        from scipy import ndimage

        from medrestore.prepare.demo_sources import mni152_tissue_maps, nifti_volume

        gm, wm, info = mni152_tissue_maps()
        t1, _ = nifti_volume("nilearn", MNI_T1)
        brain = ndimage.gaussian_filter((t1 > 0.05 * t1.max()).astype(np.float32), 1.0)
        self.gm, self.wm = gm.astype(np.float32), wm.astype(np.float32)
        # CSF: what the tissue maps leave of the brain, or dark T1 (the ventricles, where the
        # GM / WM maps are not zero)
        dark = np.clip((0.5 - t1 / t1.max()) / 0.3, 0.0, 1.0) * brain
        self.csf = np.maximum(np.clip(brain - gm - wm, 0.0, 1.0), dark).astype(np.float32)
        self.brain = brain
        idx = np.argwhere(brain > 0.5)
        self.centre = (idx.min(0) + idx.max(0)) / 2.0
        import nibabel as nib

        from medrestore.prepare.demo_sources import source_path

        self.affine = np.asarray(nib.load(str(source_path("nilearn", MNI_T1))).affine, float)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise."""
    from scipy import ndimage

    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma,
                                mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-6)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation of at most ``max_deg`` about each axis (``max_deg >= 180``: uniform-ish)."""
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def anatomy(tpl: _Template, rng: np.random.Generator, size: Sequence[int], spacing: float
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(csf, gm, wm, brain)`` probabilities on the output grid of one deformed case."""
    from scipy import ndimage

    size = tuple(int(s) for s in size)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) * spacing for n in size],
                                indexing="ij"))                     # 3×X×Y×Z, mm from centre
    scale = rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)
    m = _rotation(rng, 6.0) @ np.diag(scale)
    shift = rng.uniform(-4.0, 4.0, 3)
    coords = np.tensordot(m, grid, axes=1) + (tpl.centre + shift)[:, None, None, None]
    # elastic part: a coarse random field, smoothly interpolated (mm = template voxels)
    coarse = rng.normal(0.0, 1.5, (3, 5, 5, 5))
    zoom = [n / 5.0 for n in size]
    coords += np.stack([ndimage.zoom(c, zoom, order=1) for c in coarse])
    maps = []
    for vol in (tpl.csf, tpl.gm, tpl.wm, tpl.brain):
        maps.append(ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0)
                    .astype(np.float32))
    return tuple(maps)  # type: ignore[return-value]


def lesion(rng: np.random.Generator, brain: np.ndarray, high_grade: bool, spacing: float
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """One canonical label map (0 bg, 1 NCR/NET, 2 ED, 3 ET) and the drawn parameters."""
    from scipy import ndimage

    shape = brain.shape
    inside = brain > 0.5
    depth = ndimage.distance_transform_edt(inside)
    vox = 3.0 / spacing                                  # the sizes below are for 3 mm voxels
    for _ in range(50):
        r = rng.uniform(4.5, 10.0) * vox                 # WT mean radius, voxels
        axes = r * rng.uniform(0.75, 1.25, 3)
        cand = np.argwhere(depth >= max(2.0, 0.6 * r))
        if len(cand) == 0:
            continue
        c = cand[rng.integers(len(cand))].astype(np.float64)
        rot = _rotation(rng, 180.0)
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape],
                                    indexing="ij"))
        rel = np.tensordot(rot.T, grid - c[:, None, None, None], axes=1)
        d_wt = np.sqrt(((rel / axes[:, None, None, None]) ** 2).sum(0))
        f_wt = d_wt * (1.0 + 0.22 * _smooth_noise(rng, shape, 2.5 * vox))
        wt = (f_wt < 1.0) & inside
        # the core: own (shifted) centre and lobulation; its relative size by grade
        a = rng.uniform(0.40, 0.70) if high_grade else rng.uniform(0.55, 0.90)
        c_tc = c + rng.uniform(-1, 1, 3) * 0.25 * r * (1 - a)
        rel_tc = np.tensordot(rot.T, grid - c_tc[:, None, None, None], axes=1)
        d_tc = np.sqrt(((rel_tc / axes[:, None, None, None]) ** 2).sum(0))
        f_tc = d_tc * (1.0 + 0.15 * _smooth_noise(rng, shape, 2.0 * vox))
        tc = (f_tc < a) & wt
        label = np.zeros(shape, np.uint8)
        label[wt] = 2
        params = {"centre": c.round(1).tolist(), "radius_vox": round(float(r), 2),
                  "axes_vox": np.round(axes, 2).tolist(), "core_fraction": round(float(a), 3)}
        if high_grade:
            b = 0.0 if rng.random() < 0.2 else rng.uniform(0.35, 0.65)
            ncr = (f_tc < a * b) & tc
            label[tc] = 3
            label[ncr] = 1
            params["necrosis_fraction"] = round(float(b), 3)
            ok = (label == 3).sum() >= 8 * vox ** 3
        else:
            label[tc] = 1
            ok = True
        if ok and tc.sum() >= 8 * vox ** 3 and wt.sum() > tc.sum():
            return label, params
    raise ConvertError("brats_demo: could not place a lesion inside the brain; use a larger "
                       "--size or a smaller --spacing")


def render(maps: tuple[np.ndarray, ...], label: np.ndarray, rng: np.random.Generator,
           noise: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The four modalities (int16 ``4×X×Y×Z``) of one case."""
    from scipy import ndimage

    csf, gm, wm, brain = maps
    shape = label.shape
    tissue = np.stack([csf, gm, wm])
    tissue /= np.maximum(tissue.sum(0), 1e-3)
    # partial-volume weights of the lesion classes at their borders
    classes = {"ncr": label == 1, "ed": label == 2, "et": label == 3}
    soft = {k: ndimage.gaussian_filter(v.astype(np.float32), 0.6) for k, v in classes.items()}
    w_les = np.clip(sum(soft.values()), 0.0, 1.0)
    texture = 1.0 + 0.08 * _smooth_noise(rng, shape, 1.0)
    head = brain > 0.5
    out, gains = [], {}
    for mod in MODALITY_SUFFIXES:
        i_csf, i_gm, i_wm, i_ncr, i_ed, i_et, i_net = CONTRASTS[mod]
        normal = i_csf * tissue[0] + i_gm * tissue[1] + i_wm * tissue[2]
        # label 1 is necrosis in high-grade cases and non-enhancing tumour in low-grade ones
        i_one = i_ncr if (label == 3).any() else i_net
        les = (soft["ncr"] * i_one + soft["ed"] * i_ed + soft["et"] * i_et) \
            / np.maximum(w_les, 1e-3)
        img = (1.0 - w_les) * normal + w_les * les * texture
        bias = np.exp(0.12 * _smooth_noise(rng, shape, 12.0))
        gain = float(rng.uniform(0.8, 1.25))
        img = img * bias * gain * WM_LEVEL
        sigma = noise * gain * WM_LEVEL
        img = np.sqrt((img + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
        img = np.where(head, np.maximum(np.rint(img), 1.0), 0.0)
        out.append(img.astype(np.int16))
        gains[mod] = round(gain, 3)
    return np.stack(out), {"gain": gains}


class BratsDemo(VolumeConverter):
    """The embedded 3-D brain-tumour demo: simulated lesions on a real template (nilearn's
    MNI152 2009a T1 / GM / WM), 4 modalities, canonical label map, HGG / LGG grades; the
    volume-store format of 'brats'. See docs/demo-data.md."""

    name = "brats_demo"
    help = "embedded 3-D demo: simulated brain tumours on a real template (MNI152)"
    Options = BratsDemoOptions

    def check(self, opts: BratsDemoOptions) -> None:
        from medrestore.prepare.demo_sources import MNI_GM, MNI_WM, source_path

        for rel in (MNI_T1, MNI_GM, MNI_WM):
            source_path("nilearn", rel)

    def discover(self, opts: BratsDemoOptions) -> list[Item]:
        from medrestore.degradations.rng import keyed_rng

        self._tpl: _Template | None = None
        items = []
        i = 0
        for split, n in zip(SPLITS, opts.cases):
            n = int(n)
            # half of each split high grade, in a seeded order
            grades = np.array([1] * ((n + 1) // 2) + [0] * (n // 2))
            grades = grades[keyed_rng(f"brats_demo:grades:{split}", opts.seed).permutation(n)]
            for g in grades:
                items.append(Item(f"case_{i:03d}", split, {"index": i, "grade": int(g)}))
                i += 1
        return items

    def convert(self, item: Item, opts: BratsDemoOptions) -> Iterable[VolumeCase]:
        from medrestore.degradations.rng import keyed_rng

        if self._tpl is None:
            self._tpl = _Template()
        tpl = self._tpl
        rng = keyed_rng(f"brats_demo:{item.unit}", opts.seed)
        sp = float(opts.spacing)
        maps = anatomy(tpl, rng, opts.size, sp)
        high = item.data["grade"] == 1
        label, params = lesion(rng, maps[3], high, sp)
        image, extra = render(maps, label, rng, float(opts.noise))
        size = np.asarray(opts.size, np.float64)
        # nominal grid -> template millimetres (the per-case deformation is not in it)
        aff = np.eye(4)
        aff[:3, :3] = np.diag([sp, sp, sp])
        t_aff = tpl.affine
        centre_mm = t_aff[:3, :3] @ tpl.centre + t_aff[:3, 3]
        aff[:3, 3] = centre_mm - sp * (size - 1) / 2.0
        meta = {"affine": aff.tolist(), "spacing": [sp, sp, sp],
                "modalities": list(MODALITY_SUFFIXES), "label_convention": "canonical",
                "layout": "brats_demo", "patient": item.unit, "case": item.unit,
                "source": SOURCE, "simulated": True,
                "simulation": {**params, **extra, "grade": item.data["grade"]}}
        yield VolumeCase(f"brats_demo/{item.unit}", image, label, int(item.data["grade"]), meta,
                         SOURCE)

    def space_needed(self, opts, items):
        n = sum(int(c) for c in opts.cases)
        vox = int(np.prod([int(s) for s in opts.size]))
        return n * vox * 4 * 2, f"{n} cases of 4×{'×'.join(map(str, opts.size))} int16"

    def notes(self, opts: BratsDemoOptions) -> list[str]:
        return ["simulated lesions on a real template (MNI152 2009a): not patient data",
                f"grid {'×'.join(map(str, opts.size))} at {float(opts.spacing):g} mm; splits "
                f"{'/'.join(map(str, opts.cases))} cases, half high grade each"]


__all__ = ["BratsDemo", "BratsDemoOptions", "DEFAULT_BRATS_DEMO", "CONTRASTS", "anatomy",
           "lesion", "render"]
