"""Physics and reproducibility checks of the degradation operators and the DICOM reader."""

from __future__ import annotations

import numpy as np
import pytest

from medrestore.degradations import ct, mri, natural, pet, remote_sensing
from medrestore.degradations.rng import keyed_rng


# ----------------------------------------------------------------------------- RNG
def test_keyed_rng_is_deterministic_and_key_sensitive():
    a = keyed_rng("ct_denoise:ct.pydicom.CT_small", 0).random(8)
    b = keyed_rng("ct_denoise:ct.pydicom.CT_small", 0).random(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, keyed_rng("ct_denoise:ct.pydicom.CT_smalL", 0).random(8))
    assert not np.array_equal(a, keyed_rng("ct_denoise:ct.pydicom.CT_small", 1).random(8))


def test_keyed_rng_does_not_depend_on_the_process():
    # SHA-256 + PCG64 are fixed algorithms: the stream must not change between processes or
    # PYTHONHASHSEED values (Python's salted hash() would break this).
    import os
    import subprocess
    import sys

    code = ("from medrestore.degradations.rng import keyed_rng;"
            "print(keyed_rng('derain:natural.skimage.astronaut', 3).integers(0, 2**31))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout.strip()
            for h in (1, 2)}
    here = str(keyed_rng("derain:natural.skimage.astronaut", 3).integers(0, 2**31))
    assert outs == {here}


def test_keyed_rng_rejects_bad_seeds():
    with pytest.raises(ValueError, match="seed"):
        keyed_rng("x", -1)
    with pytest.raises(TypeError):
        keyed_rng(3, 0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- CT
@pytest.fixture(scope="module")
def phantom_hu():
    """Shepp-Logan at 128 px in HU (brain 0 HU, skull clipped at 2000 HU), slightly blurred as a
    real scanner's detector would; plus a mask of a uniform brain region away from edges."""
    from scipy.ndimage import binary_erosion, gaussian_filter
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ph = resize(shepp_logan_phantom(), (128, 128), order=0, anti_aliasing=False)
    hu = gaussian_filter(np.clip(1000.0 * (ph / 0.2 - 1.0), -1000.0, 2000.0), 1.0)
    uniform = binary_erosion(np.isclose(ph, 0.2, atol=1e-3), iterations=4)
    assert uniform.sum() > 1000
    return hu, uniform


def test_hu_mu_conversion():
    assert ct.hu_to_mu(np.array(0.0)) == pytest.approx(ct.MU_WATER_PER_MM)
    assert ct.hu_to_mu(np.array(-1000.0)) == pytest.approx(0.0)
    assert ct.hu_to_mu(np.array(-3000.0)) == 0.0                      # clamped, never negative
    x = np.array([-500.0, 0.0, 40.0, 1200.0])
    np.testing.assert_allclose(ct.mu_to_hu(ct.hu_to_mu(x)), x, atol=1e-9)


def test_noise_free_fbp_reproduces_the_phantom(phantom_hu):
    hu, uniform = phantom_hu
    ref = ct.fbp_roundtrip(hu, pixel_size_mm=1.0)
    assert ref.shape == hu.shape and ref.dtype == np.float32
    err = (ref - hu)[uniform]
    assert abs(err.mean()) < 3.0            # no HU bias
    assert err.std() < 8.0                  # FBP-only error is small ...
    noisy = ct.low_dose_ct(hu, 0.25, pixel_size_mm=1.0, rng=keyed_rng("fbp", 0))
    assert err.std() < 0.3 * (noisy - ref)[uniform].std()   # ... compared with quarter-dose noise


def test_ct_noise_grows_as_dose_falls(phantom_hu):
    hu, uniform = phantom_hu
    ref = ct.fbp_roundtrip(hu, 1.0)
    std = {}
    for dose in (1.0, 0.25):
        img = ct.low_dose_ct(hu, dose, pixel_size_mm=1.0, rng=keyed_rng(f"dose{dose}", 0))
        assert img.shape == hu.shape and np.isfinite(img).all()
        assert abs((img - ref)[uniform].mean()) < 10.0        # noise, not a shift
        std[dose] = float((img - ref)[uniform].std())
    ratio = std[0.25] / std[1.0]
    assert 1.6 < ratio < 2.5, std                            # 1/sqrt(0.25) = 2
    assert 10.0 < std[0.25] < 150.0, std                     # visible, not absurd


def test_ct_electronic_noise_adds_noise_and_fewer_photons_more_noise(phantom_hu):
    hu, uniform = phantom_hu
    ref = ct.fbp_roundtrip(hu, 1.0)

    def noise(**kw):
        return float((ct.low_dose_ct(hu, 0.25, pixel_size_mm=1.0, rng=keyed_rng("e", 0), **kw)
                      - ref)[uniform].std())

    base = noise()
    assert noise(electronic_noise_std=30.0) > base
    assert noise(i0=ct.DEFAULT_I0 / 4) > 1.6 * base


def test_ct_is_reproducible_and_validates_inputs(phantom_hu):
    hu, _ = phantom_hu
    a = ct.low_dose_ct(hu[:64, :80], rng=keyed_rng("k", 0))     # non-square works too
    b = ct.low_dose_ct(hu[:64, :80], rng=keyed_rng("k", 0))
    assert a.shape == (64, 80)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="dose_factor"):
        ct.low_dose_ct(hu, 0.0, rng=keyed_rng("k", 0))
    with pytest.raises(ValueError, match="2-D"):
        ct.low_dose_ct(hu[None], rng=keyed_rng("k", 0))
    with pytest.raises(ValueError, match="square pixels"):
        ct.low_dose_ct(hu, pixel_size_mm=(0.5, 0.8), rng=keyed_rng("k", 0))


# ----------------------------------------------------------------------------- MRI
def _brainish(n: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] / n
    img = ((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.12 < 1).astype(float)
    img += 0.5 * (((xx - 0.45) ** 2 + (yy - 0.55) ** 2) < 0.01)
    return img + 0.2 * np.sin(12 * xx) * img


def test_kspace_truncation_is_band_limited():
    img = _brainish(96)
    low = mri.kspace_truncate(img, scale=4, magnitude=False)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(low), norm="ortho"))) ** 2
    mask = mri.kspace_mask(img.shape, 4)
    assert mask.sum() == 24 * 24
    assert spec[~mask].sum() < 1e-10 * spec.sum()            # nothing outside the central band
    mag = mri.kspace_truncate(img, scale=4)
    assert mag.shape == img.shape and mag.dtype == np.float32 and (mag >= 0).all()
    spec_mag = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(mag)))) ** 2
    assert spec_mag[~mask].sum() < 0.02 * spec_mag.sum()     # |.| adds only a little back
    # lower resolution loses more: x4 is further from the original than x2
    err2 = np.abs(mri.kspace_truncate(img, 2) - img).mean()
    err4 = np.abs(mag - img).mean()
    assert 0 < err2 < err4
    np.testing.assert_allclose(mri.kspace_truncate(img, 1), img, atol=1e-6)


def test_rician_noise_background_is_rayleigh():
    sigma = 0.05
    out = mri.rician_noise(np.zeros((200, 200)), sigma, keyed_rng("rice", 0))
    assert out.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.03)
    bright = mri.rician_noise(np.full((200, 200), 1.0), sigma, keyed_rng("rice", 1))
    assert bright.std() == pytest.approx(sigma, rel=0.05)


# ----------------------------------------------------------------------------- PET
def test_low_count_pet_preserves_mean_and_has_poisson_variance():
    act = np.full((300, 300), 5.0)
    act[:, 150:] = 1.0
    dr, cs = 12.0, 60.0
    low = pet.low_count_pet(act, dr, cs, rng=keyed_rng("pet", 0))
    assert low.dtype == np.float32 and (low >= 0).all()
    counts = low * cs / dr                                   # back to low-dose counts
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    for region, a in ((np.s_[:, :150], 5.0), (np.s_[:, 150:], 1.0)):
        c = counts[region]
        assert low[region].mean() == pytest.approx(a, rel=0.02)          # mean preserved
        assert c.var() == pytest.approx(c.mean(), rel=0.06)              # Poisson: var = mean
    np.testing.assert_array_equal(low, pet.low_count_pet(act, dr, cs, rng=keyed_rng("pet", 0)))
    with pytest.raises(ValueError, match="dose_reduction"):
        pet.low_count_pet(act, 0.5, rng=keyed_rng("pet", 0))


def test_more_dose_reduction_more_noise():
    act = np.full((200, 200), 4.0)
    s4 = pet.low_count_pet(act, 4, 60.0, rng=keyed_rng("p", 0)).std()
    s16 = pet.low_count_pet(act, 16, 60.0, rng=keyed_rng("p", 0)).std()
    assert s16 / s4 == pytest.approx(2.0, rel=0.1)


# ----------------------------------------------------------------------------- natural
def test_gaussian_noise_std_matches_sigma():
    img = np.full((256, 256, 3), 0.5)
    out = natural.gaussian_noise(img, 25, keyed_rng("g", 0), clip=False)
    assert (out - img).std() == pytest.approx(25 / 255, rel=0.02)
    clipped = natural.gaussian_noise(np.full((64, 64), 0.98), 25, keyed_rng("g", 1))
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_bicubic_down_up_keeps_size_layout_and_constants():
    rng = np.random.default_rng(0)
    hwc = rng.random((40, 48, 3))
    out = natural.bicubic_down_up(hwc, 2)
    assert out.shape == hwc.shape and out.dtype == np.float32
    chw = natural.bicubic_down_up(np.moveaxis(hwc, -1, 0), 2)
    np.testing.assert_allclose(np.moveaxis(chw, 0, -1), out, atol=1e-6)
    np.testing.assert_allclose(natural.bicubic_down_up(np.full((32, 32), 0.3), 4), 0.3, atol=1e-6)
    assert np.abs(out - hwc).mean() > 0.05                   # white noise loses its detail


def test_rain_streaks_only_add_light_and_are_reproducible():
    img = np.random.default_rng(0).random((64, 64, 3)) * 0.8
    out, layer = natural.rain_streaks(img, keyed_rng("rain", 0), return_layer=True)
    assert out.shape == img.shape and layer.shape == (64, 64)
    assert (out >= img - 1e-6).all() and (out <= 1).all()    # screen blend never darkens
    assert 0 < (layer > 0.05).mean() < 0.5                   # sparse streaks
    np.testing.assert_array_equal(out, natural.rain_streaks(img, keyed_rng("rain", 0)))


def test_motion_blur_and_haze_models():
    img = np.random.default_rng(1).random((48, 48, 3))
    blurred = natural.motion_blur(img, length=9, angle=30)
    assert blurred.shape == img.shape and blurred.std() < img.std()
    np.testing.assert_allclose(natural.motion_blur(np.full((16, 16), 0.4), length=7, angle=0), 0.4, atol=1e-6)
    k = natural.line_kernel(9, 0)
    assert k.sum() == pytest.approx(1.0) and k[:, k.shape[1] // 2].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(natural.haze(img, transmission=1.0), img, atol=1e-6)
    np.testing.assert_allclose(natural.haze(img, transmission=0.0, airlight=0.7), 0.7, atol=1e-6)
    t = 0.6
    np.testing.assert_allclose(natural.haze(img, beta=-np.log(t), depth=1.0, airlight=0.9),
                               img * t + 0.9 * (1 - t), atol=1e-6)


# ----------------------------------------------------------------------------- remote sensing
def test_landsat_qa_cloud_confidence_bits():
    qa = np.array([0b00 << 14, 0b01 << 14, 0b10 << 14, 0b11 << 14, (0b10 << 14) | 0b1010],
                  dtype=np.uint16)
    np.testing.assert_array_equal(remote_sensing.landsat_qa_cloud_mask(qa),
                                  [False, False, True, True, True])
    np.testing.assert_array_equal(remote_sensing.landsat_qa_cloud_mask(qa, 3),
                                  [False, False, False, True, False])


def test_cloud_overlay_leaves_cloud_free_pixels_unchanged():
    img = (np.random.default_rng(2).random((96, 96, 3)) * 0.6).astype(np.float32)
    mask = np.zeros((96, 96), dtype=bool)
    mask[10:40, 10:50] = True
    out, alpha = remote_sensing.cloud_overlay(img, mask, keyed_rng("cloud", 0), max_opacity=0.6,
                                              brightness=0.95, return_alpha=True)
    assert out.shape == img.shape and out.dtype == np.float32
    assert alpha.max() <= 0.6 + 1e-9 and alpha[20:30, 20:40].min() > 0.2
    far = np.ones((96, 96), dtype=bool)
    far[:40 + 15, :50 + 15] = False                              # beyond the blurred edge
    np.testing.assert_array_equal(out[far], img[far])            # bit-identical where clear
    np.testing.assert_array_equal(out[alpha == 0], img[alpha == 0])
    assert (out[20:30, 20:40] > img[20:30, 20:40]).all()         # bright cloud over a dark scene
    chw = remote_sensing.cloud_overlay(np.moveaxis(img, -1, 0), mask, keyed_rng("cloud", 0))
    np.testing.assert_array_equal(np.moveaxis(chw, 0, -1), out)
    with pytest.raises(ValueError, match="does not match"):
        remote_sensing.cloud_overlay(img, mask[:50], keyed_rng("cloud", 0))


# ----------------------------------------------------------------------------- DICOM
def test_read_dicom_ct_small_gives_hounsfield_units():
    import pydicom
    from pydicom.data import get_testdata_file

    from medrestore.io.dicom import read_dicom

    path = get_testdata_file("CT_small.dcm")
    hu, meta = read_dicom(path)
    raw = pydicom.dcmread(path).pixel_array
    assert hu.dtype == np.float32 and hu.shape == (128, 128)
    np.testing.assert_array_equal(hu, raw.astype(np.float32) - 1024.0)
    assert meta["modality"] == "CT" and meta["unit"] == "HU"
    assert meta["rescale_intercept"] == -1024.0 and meta["rescale_slope"] == 1.0
    assert meta["pixel_spacing"] == pytest.approx([0.661468, 0.661468])
    assert meta["slice_thickness"] == pytest.approx(5.0)
    assert len(meta["image_position_patient"]) == 3 and len(meta["image_orientation_patient"]) == 6
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert meta[uid].startswith("1.")
    assert meta["path"] == str(path)
    assert -1100 < hu.min() and hu.max() < 3000


def test_read_dicom_rejects_truncated_and_foreign_files(tmp_path):
    from pydicom.data import get_testdata_file

    from medrestore.io.dicom import DicomError, read_dicom

    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    for n in (100, 2000, 20000):
        bad = tmp_path / f"truncated_{n}.dcm"
        bad.write_bytes(data[:n])
        with pytest.raises(DicomError) as exc:
            read_dicom(bad)
        msg = str(exc.value)
        assert str(bad) in msg and "\n" not in msg
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dicom(text)
    with pytest.raises(DicomError, match="no such file"):
        read_dicom(tmp_path / "missing.dcm")
    assert issubclass(DicomError, ValueError)


def test_read_dicom_multiframe_is_frames_first():
    from medrestore.datasets.demo_sources import DemoSourceError, source_path
    from medrestore.io.dicom import read_dicom

    try:
        path = source_path("pydicom-data", "data/emri_small.dcm")
    except DemoSourceError:
        pytest.skip("pydicom-data is not installed")
    arr, meta = read_dicom(path)
    assert arr.shape == (10, 64, 64) and meta["n_frames"] == 10 and meta["modality"] == "MR"
