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


# ----------------------------------------------------------------------------- MATLAB bicubic
def _matlab_x(n_out: int, s: float) -> np.ndarray:
    """1-based input coordinate of each output pixel: u / s + 0.5 (1 - 1/s)."""
    u = np.arange(1, n_out + 1, dtype=np.float64)
    return u / s + 0.5 * (1.0 - 1.0 / s)


def _interior(x: np.ndarray, s: float, n: int) -> np.ndarray:
    """Output pixels whose kernel support lies inside the input (no border handling involved)."""
    half = 2.0 / min(s, 1.0) + 1.0
    return (x - half >= 1) & (x + half <= n)


def _poly(r, c):
    return 0.3 * r ** 2 - 0.2 * c ** 2 + 0.05 * r * c + r - 2.0 * c + 5.0


@pytest.mark.parametrize("s", [0.5, 0.25, 2.0])
def test_imresize_reproduces_ramps_and_quadratics_in_the_interior(s):
    from medrestore.degradations.resize import imresize

    h, w = 64, 80
    r, c = np.mgrid[1:h + 1, 1:w + 1].astype(np.float64)          # 1-based pixel coordinates
    for img, f in ((3.0 * c - 0.5 * r + 7.0, lambda rr, cc: 3.0 * cc - 0.5 * rr + 7.0), (_poly(r, c), _poly)):
        out = imresize(img, s)
        assert out.shape == (int(np.ceil(h * s)), int(np.ceil(w * s))) and out.dtype == np.float32
        xr, xc = _matlab_x(out.shape[0], s), _matlab_x(out.shape[1], s)
        ok = np.ix_(_interior(xr, s, h), _interior(xc, s, w))
        assert out[ok].size >= 4
        expected = f(xr[:, None], xc[None, :])
        # the Keys kernel (a = -0.5), plain or stretched by 1/s, reproduces degree <= 2 exactly
        np.testing.assert_allclose(out.astype(np.float64)[ok], expected[ok], rtol=2e-6, atol=2e-4)


def test_imresize_upscaling_a_ramp_samples_at_u_over_2_plus_quarter():
    from medrestore.degradations.resize import imresize

    ramp = np.tile(np.arange(1, 21, dtype=np.float64), (4, 1))        # value = column index
    out = imresize(ramp, 2.0)
    assert out.shape == (8, 40)
    u = np.arange(1, 41)
    np.testing.assert_allclose(out[0, 3:-3], (u / 2 + 0.25)[3:-3], atol=1e-6)
    np.testing.assert_allclose(out, np.broadcast_to(out[0], out.shape))    # rows are constant


def test_imresize_matches_matlab_printouts_with_replicated_borders():
    # Outputs printed by MATLAB releases that clamped out-of-range indices (4 decimals)
    from medrestore.degradations.resize import imresize

    a = np.array([[3, 1, 2, 6], [1, 5, 2, 7], [1, 3, 6, 2], [4, 1, 9, 2]], dtype=np.float64)
    ref = np.array([
        [3.3109, 2.6187, 1.1206, 0.7166, 1.4067, 2.8883, 5.1615, 6.2060],
        [2.6454, 2.4435, 2.0052, 1.7138, 1.5692, 2.8062, 5.4248, 6.6307],
        [1.2008, 2.0609, 3.9181, 3.8763, 1.9355, 2.6382, 5.9844, 7.5302],
        [0.4985, 1.6796, 4.2357, 4.6921, 3.0489, 3.2618, 5.3307, 6.2876],
        [0.5384, 1.2996, 2.9579, 4.1612, 4.9094, 4.6769, 3.4639, 2.9028],
        [1.5500, 1.6768, 1.9697, 3.5367, 6.3776, 6.1378, 2.8173, 1.2798],
        [3.5334, 2.8110, 1.2710, 2.8185, 7.4537, 7.6444, 3.3907, 1.4186],
        [4.4466, 3.3344, 0.9529, 2.4891, 7.9430, 8.3334, 3.6605, 1.4930]])
    np.testing.assert_allclose(imresize(a, output_shape=(8, 8), border="replicate"), ref, atol=6e-5)
    row = imresize(np.array([[0, 0, 1, 1, 0]], dtype=np.float64), output_shape=(1, 10), border="replicate")
    np.testing.assert_allclose(row[0], [0, -0.0234, -0.0703, 0.2031, 0.7969, 1.0938, 1.0938, 0.7969,
                                        0.2031, -0.0703], atol=6e-5)
    # the interior is the same with both border rules; only the outer pixels differ
    sym = imresize(a, 2.0)
    np.testing.assert_allclose(sym[2:-2, 2:-2], ref[2:-2, 2:-2], atol=6e-5)
    assert np.abs(sym - ref).max() > 0.05


@pytest.mark.parametrize("s", [2.0, 0.5, 0.25])
def test_imresize_border_is_a_symmetric_mirror(s):
    # Resizing the explicitly mirrored signal [rev(v), v, rev(v)] needs no border rule for its
    # middle third, which must therefore equal imresize(v) with the symmetric border.
    from medrestore.degradations.resize import imresize

    v = np.random.default_rng(3).random(24)
    ext = np.concatenate([v[::-1], v, v[::-1]])[None, :]
    mid = imresize(ext, output_shape=(1, int(round(72 * s))))[0]
    n_out = int(round(24 * s))
    np.testing.assert_allclose(imresize(v[None, :], output_shape=(1, n_out))[0],
                               mid[n_out:2 * n_out], atol=1e-6)
    assert not np.allclose(imresize(v[None, :], output_shape=(1, n_out), border="replicate")[0],
                           mid[n_out:2 * n_out], atol=1e-6)


def test_imresize_constants_sizes_layouts_and_uint8():
    from medrestore.degradations.resize import imresize

    const = np.full((37, 50), 0.37)
    for s in (0.25, 1 / 3, 0.5, 2.0, 3.0):
        out = imresize(const, s)
        assert out.shape == (int(np.ceil(37 * s)), int(np.ceil(50 * s)))
        np.testing.assert_allclose(out, 0.37, atol=1e-6)            # borders included
    assert imresize(const, output_shape=(11, 29)).shape == (11, 29)
    assert imresize(np.zeros((100, 10)), 1 / 3).shape == (34, 4)
    np.testing.assert_allclose(imresize(const, 1.0), const, atol=1e-7)
    hwc = np.random.default_rng(0).random((30, 40, 3))
    a = imresize(hwc, 0.5)
    assert a.shape == (15, 20, 3)
    np.testing.assert_allclose(np.moveaxis(imresize(np.moveaxis(hwc, -1, 0), 0.5), 0, -1), a, atol=1e-6)
    np.testing.assert_allclose(imresize(hwc[..., 1], 0.5), a[..., 1], atol=1e-6)
    many = np.random.default_rng(1).random((7, 30, 40))               # 7 bands: layout named
    assert imresize(many, 0.5, layout="chw").shape == (7, 15, 20)
    # uint8: rounded and saturated like MATLAB (a hard edge overshoots in float)
    u8 = np.zeros((16, 16), dtype=np.uint8)
    u8[:, 8:] = 255
    up8, upf = imresize(u8, 2.0), imresize(u8.astype(np.float64), 2.0)
    assert up8.dtype == np.uint8 and upf.min() < 0 and upf.max() > 255
    np.testing.assert_array_equal(up8, np.clip(np.floor(upf.astype(np.float64) + 0.5), 0, 255))
    np.testing.assert_array_equal(imresize(np.full((9, 9), 77, dtype=np.uint8), 0.5), 77)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(const)
    with pytest.raises(ValueError, match="scale"):
        imresize(const, -2.0)


def test_imresize_integer_passes_run_smaller_scale_first_and_round_in_between():
    from medrestore.degradations.resize import imresize

    x = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    out = imresize(x, output_shape=(128, 32))                   # rows x2, columns x0.5
    cols_first = imresize(imresize(x, output_shape=(64, 32)), output_shape=(128, 32))
    rows_first = imresize(imresize(x, output_shape=(128, 64)), output_shape=(128, 32))
    np.testing.assert_array_equal(out, cols_first)
    assert (out != rows_first).any()                           # the order matters for integers
    f = imresize(x.astype(np.float64), output_shape=(128, 32))
    assert np.abs(out.astype(np.float64) - f).max() <= 1.5      # rounding twice, nothing more


def test_imresize_down_up_of_a_smooth_image_and_no_border_darkening():
    from medrestore.degradations.resize import bicubic_sr, imresize

    yy, xx = np.mgrid[:96, :128] / 96.0
    smooth = 0.5 + 0.3 * np.sin(2 * np.pi * 1.5 * xx) * np.cos(2 * np.pi * yy)
    back = bicubic_sr(smooth, 4)
    assert back.shape == smooth.shape
    err = np.abs(back - smooth)
    assert err.mean() < 3e-3 and err[8:-8, 8:-8].max() < 2e-3
    # constant left half, step to 0.2 on the right: zero padding would darken the left border
    step = np.ones((48, 64))
    step[:, 32:] = 0.2
    for img in (imresize(step, 0.25), bicubic_sr(step, 4)):
        w = img.shape[1]
        np.testing.assert_allclose(img[:, : w // 4], 1.0, atol=1e-6)
        np.testing.assert_allclose(img[:, -w // 8:], 0.2, atol=1e-6)


def test_bicubic_sr_shapes_and_loose_agreement_with_the_torch_version():
    from medrestore.degradations.resize import bicubic_sr

    img = np.random.default_rng(5).random((50, 37, 3))
    assert bicubic_sr(img, 4).shape == img.shape                          # back on the HR grid
    assert bicubic_sr(img, 4, upsample=False).shape == (13, 10, 3)       # ceil(50/4), ceil(37/4)
    assert bicubic_sr((img * 255).astype(np.uint8), 4).dtype == np.uint8
    hr = np.random.default_rng(6).random((64, 64, 3))
    ours, torch_version = bicubic_sr(hr, 4), natural.bicubic_down_up(hr, 4, clip=False)
    # different kernels (a = -0.5 vs -0.75) and borders: close, not equal
    gap = np.abs(ours - torch_version).mean()
    assert 0 < gap < 0.1 * np.abs(ours - hr).mean()
    with pytest.raises(ValueError, match=">= 1"):
        bicubic_sr(hr, 0.5)


# ----------------------------------------------------------------------------- MRI downsample
def test_mri_downsample_methods_and_rician_noise():
    from medrestore.degradations.resize import bicubic_sr

    img = _brainish(64) * 1000.0
    np.testing.assert_array_equal(mri.downsample(img, 4), mri.kspace_truncate(img, 4))
    bic = mri.downsample(img, 4, method="bicubic")
    assert bic.shape == img.shape and bic.dtype == np.float32 and (bic >= 0).all()
    np.testing.assert_allclose(bic, np.maximum(bicubic_sr(img, 4), 0), atol=1e-3)
    assert not np.allclose(bic, mri.downsample(img, 4))            # a different degradation
    vol = np.stack([img, img[::-1]])
    np.testing.assert_array_equal(mri.downsample(vol, 2, "bicubic")[1], mri.downsample(img[::-1], 2, "bicubic"))
    noisy = mri.downsample(np.zeros((128, 128)), 4, rician_sigma=5.0, rng=keyed_rng("mri", 0))
    assert noisy.mean() == pytest.approx(5.0 * np.sqrt(np.pi / 2), rel=0.03)   # Rayleigh background
    with pytest.raises(ValueError, match="rng"):
        mri.downsample(img, 4, rician_sigma=1.0)
    with pytest.raises(ValueError, match="method"):
        mri.downsample(img, 4, method="nearest")


# ----------------------------------------------------------------------------- fractal clouds
def _radial_slope(field: np.ndarray) -> float:
    """Slope of log(radially averaged power) vs log(frequency), each annulus weighted by the
    square root of its number of Fourier samples (the sparse low-frequency rings are noisy)."""
    h, w = field.shape
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    edges = np.geomspace(2.0 / min(h, w), 0.45, 20)
    idx = np.digitize(f, edges)
    rings = [idx == i for i in range(1, len(edges)) if (idx == i).any()]
    fc, pc = [f[r].mean() for r in rings], [power[r].mean() for r in rings]
    weight = np.sqrt([r.sum() for r in rings])
    return float(np.polyfit(np.log(fc), np.log(pc), 1, w=weight)[0])


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_fractal_field_has_a_power_law_spectrum(beta):
    field = remote_sensing.fractal_field((128, 160), keyed_rng("fractal", 0), beta)
    assert field.shape == (128, 160)
    assert abs(field.mean()) < 1e-9 and field.std() == pytest.approx(1.0)
    assert _radial_slope(field) == pytest.approx(-beta, abs=0.15)
    white = remote_sensing.fractal_field((128, 128), keyed_rng("fractal", 0), 0.0)
    assert _radial_slope(white) == pytest.approx(0.0, abs=0.15)
    np.testing.assert_array_equal(remote_sensing.fractal_field((64, 64), keyed_rng("h", 0), hurst=0.5),
                                  remote_sensing.fractal_field((64, 64), keyed_rng("h", 0), 3.0))


def test_fractal_cloud_coverage_range_and_reproducibility():
    for cover in (0.1, 0.4, 0.75):
        a = remote_sensing.fractal_cloud((96, 128), keyed_rng("cloud", 1), coverage=cover)
        assert a.shape == (96, 128) and a.min() >= 0 and a.max() <= 1
        assert (a > 0).mean() == pytest.approx(cover, abs=2e-3)
        # cloud where the field exceeds its (1 - cover) quantile, opaque softness std above it
        field = remote_sensing.fractal_field((96, 128), keyed_rng("cloud", 1))
        q = np.quantile(field, 1 - cover)
        np.testing.assert_array_equal(a > 0, field > q)
        np.testing.assert_array_equal(a == 1, field >= q + 1.0)
        assert 0.5 < a.max()
    a = remote_sensing.fractal_cloud((64, 64), keyed_rng("cloud", 2), coverage=0.3)
    np.testing.assert_array_equal(a, remote_sensing.fractal_cloud((64, 64), keyed_rng("cloud", 2), coverage=0.3))
    assert not np.array_equal(a, remote_sensing.fractal_cloud((64, 64), keyed_rng("cloud", 3), coverage=0.3))
    assert not remote_sensing.fractal_cloud((32, 32), keyed_rng("c", 0), coverage=0.0).any()
    # cloud_overlay takes the map: clear pixels stay bit-identical
    img = (np.random.default_rng(4).random((64, 64, 3)) * 0.5).astype(np.float32)
    out = remote_sensing.cloud_overlay(img, a, keyed_rng("cloud", 5))
    np.testing.assert_array_equal(out[a == 0], img[a == 0])
    assert (out[a > 0.5] > img[a > 0.5]).all()
    with pytest.raises(ValueError, match="coverage"):
        remote_sensing.fractal_cloud((32, 32), keyed_rng("c", 0), coverage=1.5)
    with pytest.raises(ValueError, match="not both"):
        remote_sensing.fractal_field((32, 32), keyed_rng("c", 0), 2.0, hurst=0.5)


def test_motion_blur_with_periodic_boundary_preserves_the_mean():
    yy, xx = np.mgrid[:64, :64] / 64.0
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (2 * xx + 3 * yy)) * np.cos(2 * np.pi * k * xx)
                    for k in (1, 2, 3)], -1)
    out = natural.motion_blur(img, length=11, angle=35, boundary="wrap")
    np.testing.assert_allclose(out.astype(np.float64).mean(axis=(0, 1)), img.mean(axis=(0, 1)), atol=1e-7)
    assert out.std() < img.std()
    with pytest.raises(ValueError, match="boundary"):
        natural.motion_blur(img, length=5, angle=0, boundary="zero")


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
    from medrestore.prepare.demo_sources import DemoSourceError, source_path
    from medrestore.io.dicom import read_dicom

    try:
        path = source_path("pydicom-data", "data/emri_small.dcm")
    except DemoSourceError:
        pytest.skip("pydicom-data is not installed")
    arr, meta = read_dicom(path)
    assert arr.shape == (10, 64, 64) and meta["n_frames"] == 10 and meta["modality"] == "MR"
