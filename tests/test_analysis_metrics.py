"""Noise-power spectrum and line profiles (medrestore.metrics.nps / .profiles)."""

from __future__ import annotations

import numpy as np
import pytest

from medrestore.metrics.nps import NPSError, extract_rois, noise_power_spectrum, nps_2d, radial_average, roi_corners
from medrestore.metrics.profiles import (ProfileError, find_blob, fwhm, line_profile, line_through,
                                         max_gradient_row, peak_near, surrounded_by)


# ---------------------------------------------------------------- NPS
@pytest.mark.parametrize("spacing", [None, (0.5, 0.8)])
def test_white_noise_nps_is_flat_at_variance_times_pixel_area(spacing):
    sigma = 7.0
    noise = np.random.default_rng(0).normal(0, sigma, size=(512, 512))
    res = noise_power_spectrum(noise, size=64, spacing=spacing)
    area = 1.0 if spacing is None else spacing[0] * spacing[1]
    expected = sigma ** 2 * area
    assert res.n_rois == 15 * 15                                # 50 % overlap on 512²
    # away from f = 0 (removed by the mean detrending) every ring is within a few % of σ²ΔxΔy
    rings = res.nps[1:]
    assert np.all(np.abs(rings / expected - 1) < 0.08), rings / expected
    assert res.nps[0] < 0.05 * expected                          # DC bin: detrended away
    # Parseval: ∫∫ NPS df = the detrended ROIs' variance ≈ σ²
    assert res.integral == pytest.approx(res.variance, rel=1e-10)
    assert res.variance == pytest.approx(sigma ** 2, rel=0.03)
    nyquist = 0.5 / (1.0 if spacing is None else max(spacing))
    assert res.freq[-1] == pytest.approx(nyquist, rel=0.05)
    assert res.freq_unit == ("cycles/pixel" if spacing is None else "cycles/mm")


def test_nps_of_smoothed_noise_falls_with_frequency_and_keeps_parseval():
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(np.random.default_rng(1).normal(0, 10, size=(256, 256)), 1.5)
    res = noise_power_spectrum(noise, size=64)
    low, high = res.nps[1:4].mean(), res.nps[-4:].mean()
    assert high < 0.01 * low                                     # low-pass texture
    assert res.integral == pytest.approx(res.variance, rel=1e-10)


def test_nps_2d_single_roi_exact_scaling():
    # one cosine of amplitude A along x: all power in the ±f0 bins, A²/2 variance
    n, a, k = 32, 3.0, 4
    x = np.arange(n)
    roi = np.tile(a * np.cos(2 * np.pi * k * x / n), (n, 1)) + 100.0   # offset removed by detrending
    nps, fy, fx = nps_2d(roi, spacing=0.5)
    df = (fy[1] - fy[0]) * (fx[1] - fx[0])
    assert nps.sum() * df == pytest.approx(a ** 2 / 2)
    peaks = np.argwhere(nps > 1e-9 * nps.max())
    assert {tuple(p) for p in peaks} == {(n // 2, n // 2 + k), (n // 2, n // 2 - k)}
    assert fx[n // 2 + k] == pytest.approx(k / (n * 0.5))       # cycles/mm
    f, r = radial_average(nps, fy, fx)
    assert f[np.argmax(r)] == pytest.approx(k / (n * 0.5))


def test_roi_grid_mask_and_bad_settings():
    assert roi_corners((100, 100), 32) == [(y, x) for y in (2, 18, 34, 50, 66) for x in (2, 18, 34, 50, 66)]
    mask = np.zeros((100, 100), bool)
    mask[:60, :60] = True
    assert all(y + 32 <= 60 and x + 32 <= 60 for y, x in roi_corners((100, 100), 32, mask=mask))
    rois = extract_rois(np.arange(100 * 100.0).reshape(100, 100), 32, stride=64)
    assert rois.shape == (4, 32, 32)
    with pytest.raises(NPSError, match="larger than the 20×30 image"):
        extract_rois(np.zeros((20, 30)), 32)
    with pytest.raises(NPSError, match="spacing"):
        noise_power_spectrum(np.zeros((64, 64)), 32, spacing=(0, 1))
    with pytest.raises(NPSError, match="no 32×32 ROI fits"):
        extract_rois(np.zeros((64, 64)), 32, mask=np.zeros((64, 64), bool))
    with pytest.raises(NPSError, match="non-finite"):
        nps_2d(np.full((8, 8), np.nan))


def test_stack_pools_rois_of_several_images():
    rng = np.random.default_rng(2)
    res = noise_power_spectrum(rng.normal(0, 1, size=(3, 64, 64)), size=32)
    assert res.n_rois == 3 * 9
    mixed = [rng.normal(0, 1, size=(64, 64)), rng.normal(0, 2, size=(40, 72))]
    res = noise_power_spectrum(mixed, size=32, mask=[None, np.ones((40, 72), bool)])
    assert res.n_rois == 9 + 1 * 3
    assert res.integral == pytest.approx(res.variance, rel=1e-10)
    with pytest.raises(NPSError, match="1 mask"):
        noise_power_spectrum(mixed, size=32, mask=[None])


# ---------------------------------------------------------------- profiles
def _phantom():
    """Soft-tissue background with a big bright plate and a small bright lesion."""
    img = np.full((96, 128), 40.0)
    img[10:40, 10:60] = 1000.0                                   # large bright structure
    yy, xx = np.mgrid[:96, :128]
    img += 300.0 * np.exp(-((yy - 70) ** 2 + (xx - 95) ** 2) / (2 * 2.0 ** 2))   # σ = 2 px lesion
    return img


def test_find_blob_prefers_the_small_lesion_over_the_large_plate():
    assert find_blob(_phantom(), radius=3) == (70, 95)
    mask = np.zeros((96, 128), bool)
    mask[:, :80] = True                                          # lesion masked out
    y, x = find_blob(_phantom(), radius=3, mask=mask)
    assert x < 80
    with pytest.raises(ProfileError, match="no candidate"):
        find_blob(_phantom(), mask=np.zeros((96, 128), bool))


def test_surrounded_by_keeps_centres_whose_ring_is_inside_the_region():
    img = _phantom()
    soft = img < 300                                             # the plate is not soft tissue
    cand = surrounded_by(soft, radius=3)
    assert cand[70, 95]                                          # the lesion: soft all around
    assert not cand[25, 35] and not cand[25, 66]                 # inside / just beside the plate
    assert not cand[:9].any() and not cand[:, :9].any()          # the ring would leave the image
    assert find_blob(img, radius=3, mask=cand) == (70, 95)


def test_profile_through_the_lesion_has_its_peak_and_width():
    img = _phantom()
    p0, p1 = line_through(find_blob(img), img.shape, length=30)
    assert p0 == (70.0, 80.0) and p1 == (70.0, 110.0)
    d, v = line_profile(img, p0, p1, spacing=(0.5, 0.5))
    assert len(d) == 31 and d[-1] == pytest.approx(15.0)          # mm
    assert d[np.argmax(v)] == pytest.approx(7.5) and v.max() == pytest.approx(340.0)
    # Gaussian σ = 2 px = 1 mm: FWHM = 2.3548 mm
    assert fwhm(d, v, background=40.0) == pytest.approx(2 * np.sqrt(2 * np.log(2)), rel=0.02)
    assert fwhm(d, v) == pytest.approx(2 * np.sqrt(2 * np.log(2)), rel=0.02)   # median = 40 HU
    # two peaks: the one asked for is measured, not the higher one
    two = np.where(d > 11, v + 600 * np.exp(-((d - 13) ** 2) / 0.5), v)
    assert fwhm(d, two) == pytest.approx(2 * np.sqrt(2 * np.log(2)) * 0.5, rel=0.1)
    k = peak_near(two, 14, 4)
    assert k == 15 and fwhm(d, two, background=40.0, peak=k) == pytest.approx(2 * np.sqrt(2 * np.log(2)), rel=0.02)
    assert np.isnan(fwhm(d, np.full_like(d, 3.0)))
    # a vertical line, clipped at the image edge
    q0, q1 = line_through((2, 5), img.shape, length=20, angle_deg=90)
    assert q0 == pytest.approx((0.0, 5.0)) and q1 == pytest.approx((12.0, 5.0))


def test_bilinear_profile_is_exact_on_a_ramp_and_bad_inputs_are_named():
    ramp = np.tile(np.arange(10.0), (5, 1)) * 2
    d, v = line_profile(ramp, (2, 0.5), (2, 8.5))
    np.testing.assert_allclose(v, 2 * (0.5 + d))
    assert max_gradient_row(np.pad(ramp, ((3, 3), (0, 0)))) == 3
    with pytest.raises(ProfileError, match="outside"):
        line_profile(ramp, (0, 0), (9, 9))
    with pytest.raises(ProfileError, match="2-D image"):
        line_profile(np.zeros((2, 3, 4)), (0, 0), (1, 1))
