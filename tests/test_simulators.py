"""The named simulators: physics through ``simulate``, reproducibility and user errors."""

from __future__ import annotations

import numpy as np
import pytest

from medrestore.degradations import ct, mri, pet, remote_sensing
from medrestore.degradations.resize import bicubic_sr
from medrestore.degradations.rng import keyed_rng
from medrestore.degradations.simulators import (SIMULATORS, Simulator, default_simulator,
                                                get_simulator, simulate)
from medrestore.errors import ConfigError
from medrestore.registry import TASKS

EIGHT_BIT = {"low": 0.0, "high": 255.0, "unit": "8-bit", "kind": "minmax"}
DN = {"low": 0.0, "high": 10000.0, "unit": "DN", "kind": "minmax"}


def _smooth(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth random image in [0.1, 0.9] (so unit simulators see no clipping)."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(np.random.default_rng(seed).random(shape), sigma=(0,) * (len(shape) - 2) + (2, 2))
    x = (x - x.min()) / (x.max() - x.min())
    return 0.1 + 0.8 * x


# ----------------------------------------------------------------------------- registry
def test_every_task_has_a_default_simulator_with_registry_defaults():
    assert set(SIMULATORS) >= {"ct_low_dose", "mri_kspace", "mri_bicubic", "pet_low_count", "bicubic",
                               "rs_bicubic", "gaussian_noise", "rain", "motion_blur", "haze", "cloud"}
    for task in TASKS:
        sim = get_simulator(default_simulator(task))
        assert isinstance(sim, Simulator) and sim.task == task
    assert SIMULATORS["ct_low_dose"].defaults["dose_factor"] == TASKS["ct_denoise"].defaults["dose_factor"] == 0.25
    assert SIMULATORS["mri_kspace"].defaults["scale"] == SIMULATORS["mri_bicubic"].defaults["scale"] == 4
    assert SIMULATORS["pet_low_count"].defaults["dose_reduction"] == 12
    assert SIMULATORS["bicubic"].defaults["scale"] == SIMULATORS["rs_bicubic"].defaults["scale"] == 4
    assert SIMULATORS["gaussian_noise"].defaults["sigma"] == 25
    assert SIMULATORS["ct_low_dose"].slow and not SIMULATORS["bicubic"].slow
    spaces = {n: s.space for n, s in SIMULATORS.items()}
    assert {n for n, sp in spaces.items() if sp == "physical"} == {"ct_low_dose", "mri_kspace", "mri_bicubic",
                                                                   "pet_low_count"}


def test_user_errors_are_one_line_config_errors():
    img = np.full((16, 16), 100.0)
    cases = [
        (lambda: simulate("blur", img, rng=keyed_rng("e", 0)), ["'blur'", "motion_blur", "ct_low_dose"]),
        (lambda: simulate("bicubic", img, rng=keyed_rng("e", 0), normalisation=EIGHT_BIT, sigma=3),
         ["'bicubic'", "sigma", "scale", "clip"]),
        (lambda: simulate("gaussian_noise", img, rng=keyed_rng("e", 0)), ["'gaussian_noise'", "normalisation"]),
        (lambda: simulate("haze", img, rng=keyed_rng("e", 0), normalisation={"low": 5, "high": 5}), ["high > low"]),
        (lambda: simulate("pet_low_count", img, rng=keyed_rng("e", 0), dose_reduction=0.5), ["dose_reduction"]),
        (lambda: simulate("bicubic", np.zeros((2, 3, 8, 8)), rng=keyed_rng("e", 0), normalisation=EIGHT_BIT),
         ["H×W or C×H×W"]),
        (lambda: default_simulator("segmentation"), ["segmentation", "ct_denoise"]),
        (lambda: get_simulator(None), ["None"]),                                   # type: ignore[arg-type]
    ]
    for call, words in cases:
        with pytest.raises(ConfigError) as exc:
            call()
        msg = str(exc.value)
        assert "\n" not in msg
        for word in words:
            assert word in msg, (word, msg)


# ----------------------------------------------------------------------------- CT
@pytest.fixture(scope="module")
def phantom96():
    """Shepp-Logan at 96 px in HU, slightly blurred, and a uniform brain region away from edges."""
    from scipy.ndimage import binary_erosion, gaussian_filter
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    ph = resize(shepp_logan_phantom(), (96, 96), order=0, anti_aliasing=False)
    hu = gaussian_filter(np.clip(1000.0 * (ph / 0.2 - 1.0), -1000.0, 2000.0), 1.0)
    uniform = binary_erosion(np.isclose(ph, 0.2, atol=1e-3), iterations=3)
    assert uniform.sum() > 500
    return hu, uniform


def test_ct_noise_through_simulate_grows_as_one_over_sqrt_dose(phantom96):
    hu, uniform = phantom96
    ref = ct.fbp_roundtrip(hu, 1.0)
    std = {}
    for dose in (1.0, 0.25):
        img = simulate("ct_low_dose", hu, rng=keyed_rng(f"ct{dose}", 0), spacing=(1.0, 1.0), dose_factor=dose)
        assert img.shape == hu.shape and img.dtype == np.float32
        assert abs((img - ref)[uniform].mean()) < 10.0
        std[dose] = float((img - ref)[uniform].std())
    assert 1.6 < std[0.25] / std[1.0] < 2.5, std                # 1/sqrt(0.25) = 2


def test_ct_spacing_is_the_pixel_size_and_channels_are_slices(phantom96):
    hu = phantom96[0][::2, ::2]                                  # 48 px: fast
    via = simulate("ct_low_dose", hu, rng=keyed_rng("sp", 0), spacing=(0.7, 0.7))
    np.testing.assert_array_equal(via, ct.low_dose_ct(hu, 0.25, pixel_size_mm=0.7, rng=keyed_rng("sp", 0)))
    default = simulate("ct_low_dose", hu, rng=keyed_rng("sp", 0))              # spacing None = 1 mm
    np.testing.assert_array_equal(default, ct.low_dose_ct(hu, 0.25, pixel_size_mm=1.0, rng=keyed_rng("sp", 0)))
    assert not np.array_equal(via, default)
    two = simulate("ct_low_dose", np.stack([hu, hu[::-1]]), rng=keyed_rng("sp", 0), spacing=0.7)
    assert two.shape == (2, 48, 48)
    np.testing.assert_array_equal(two[0], via)                   # channel 0 first, same stream
    assert not np.array_equal(two[1], via[::-1])                 # fresh noise for channel 1
    with pytest.raises(ConfigError, match="square pixels"):
        simulate("ct_low_dose", hu, rng=keyed_rng("sp", 0), spacing=(0.5, 0.9))


# ----------------------------------------------------------------------------- MRI
def test_kspace_x4_is_band_limited_and_simulate_equals_kspace_truncate():
    yy, xx = np.mgrid[:96, :80] / 96.0
    img = 1000.0 * (((xx - 0.42) ** 2 / 0.12 + (yy - 0.5) ** 2 / 0.16) < 1) * (1 + 0.3 * np.sin(20 * xx))
    low = mri.kspace_truncate(img, 4, magnitude=False)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(low)))) ** 2
    mask = mri.kspace_mask(img.shape, 4)
    assert mask.sum() == 24 * 20
    assert spec[~mask].sum() < 1e-10 * spec.sum()
    out = simulate("mri_kspace", img, rng=keyed_rng("mri", 0))
    np.testing.assert_array_equal(out, mri.kspace_truncate(img, 4))
    vol = np.stack([img, img[::-1]])
    np.testing.assert_array_equal(simulate("mri_kspace", vol, rng=keyed_rng("mri", 0), scale=2),
                                  mri.kspace_truncate(vol, 2))
    bic = simulate("mri_bicubic", img, rng=keyed_rng("mri", 0))
    np.testing.assert_allclose(bic, np.maximum(bicubic_sr(img, 4), 0.0), atol=1e-3)
    noisy = simulate("mri_kspace", np.zeros((64, 64)), rng=keyed_rng("mri", 1), rician_sigma=20.0)
    assert noisy.mean() == pytest.approx(20.0 * np.sqrt(np.pi / 2), rel=0.05)   # Rayleigh background


# ----------------------------------------------------------------------------- PET
def test_pet_thinning_scales_counts_and_has_poisson_variance():
    act = np.full((200, 200), 4.0)
    act[:, 100:] = 1.0
    dr, cs = 12.0, 60.0
    out = simulate("pet_low_count", act, rng=keyed_rng("pet", 0), dose_reduction=dr, count_scale=cs)
    counts = out.astype(np.float64) * cs / dr                    # the low-dose counts
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    for region, a in ((np.s_[:, :100], 4.0), (np.s_[:, 100:], 1.0)):
        c = counts[region]
        assert c.mean() == pytest.approx(a * cs / dr, rel=0.03)   # full-dose counts / 12
        assert c.var() == pytest.approx(c.mean(), rel=0.08)       # Poisson
        assert out[region].mean() == pytest.approx(a, rel=0.03)   # activity units kept
    std4 = simulate("pet_low_count", act, rng=keyed_rng("pet", 1), dose_reduction=4)[:, :100].std()
    std16 = simulate("pet_low_count", act, rng=keyed_rng("pet", 1), dose_reduction=16)[:, :100].std()
    assert std16 / std4 == pytest.approx(2.0, rel=0.1)


# ----------------------------------------------------------------------------- natural / remote sensing
@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_gaussian_noise_std_in_unit_and_8bit_units(sigma):
    unit = np.full((3, 128, 128), 0.5)
    noisy = SIMULATORS["gaussian_noise"].fn(unit, keyed_rng("g", sigma), sigma=sigma, clip=False)
    assert (noisy - unit).std() == pytest.approx(sigma / 255.0, rel=0.03)
    grey = np.full((3, 128, 128), 127.5)
    out = simulate("gaussian_noise", grey, rng=keyed_rng("g", sigma), normalisation=EIGHT_BIT, sigma=sigma,
                   clip=False)
    assert (out - grey).std() == pytest.approx(sigma, rel=0.03)
    assert abs((out - grey).mean()) < 0.05 * sigma


def test_simulate_accepts_a_normalisation_object_and_integer_images():
    from medrestore.sample import Normalisation

    img = (np.random.default_rng(0).random((3, 32, 32)) * 255).astype(np.uint8)
    a = simulate("gaussian_noise", img, rng=keyed_rng("n", 0), normalisation=Normalisation(0.0, 255.0, "8-bit"))
    b = simulate("gaussian_noise", img, rng=keyed_rng("n", 0), normalisation=EIGHT_BIT)
    assert a.dtype == np.float32 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 255                       # clip=True keeps the window


@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 50, 37), (45, 61)])
def test_bicubic_sr_output_is_on_the_hr_grid(shape):
    hr = 255.0 * _smooth(shape)
    out = simulate("bicubic", hr, rng=keyed_rng("sr", 0), normalisation=EIGHT_BIT)
    assert out.shape == hr.shape and out.dtype == np.float32
    layout = "chw" if hr.ndim == 3 else "hw"
    expected = 255.0 * np.clip(bicubic_sr(hr / 255.0, 4, layout=layout), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert np.abs(out - hr).mean() > 0.1                          # detail was lost
    dn = 10000.0 * _smooth((3, 48, 48), seed=1)
    rs = simulate("rs_bicubic", dn, rng=keyed_rng("sr", 0), normalisation=DN, scale=2)
    assert rs.shape == dn.shape
    np.testing.assert_allclose(rs, 10000.0 * np.clip(bicubic_sr(dn / 1e4, 2, layout="chw"), 0, 1), rtol=1e-5,
                               atol=0.05)


def test_rain_only_adds_light():
    img = 200.0 * _smooth((3, 64, 64))
    out = simulate("rain", img, rng=keyed_rng("rain", 0), normalisation=EIGHT_BIT)
    assert out.shape == img.shape
    assert (out >= img - 1e-3).all()                               # screen blend never darkens
    assert (out > img + 1.0).mean() > 0.005                        # and there is rain
    heavy = simulate("rain", img, rng=keyed_rng("rain", 0), normalisation=EIGHT_BIT, density=0.02, intensity=0.9)
    assert (heavy - img).mean() > (out - img).mean()


def test_motion_blur_preserves_the_mean_of_a_periodic_image():
    yy, xx = np.mgrid[:64, :64] / 64.0
    img = 255.0 * (0.5 + 0.4 * np.sin(2 * np.pi * 4 * xx) * np.sin(2 * np.pi * 4 * yy))[None].repeat(3, 0)
    out = simulate("motion_blur", img, rng=keyed_rng("mb", 0), normalisation=EIGHT_BIT, boundary="wrap",
                   length=9, angle=30)
    assert out.astype(np.float64).mean() == pytest.approx(img.mean(), abs=1e-3)
    assert out.std() < 0.9 * img.std()                             # the stripes are smeared
    drawn = simulate("motion_blur", img, rng=keyed_rng("mb", 0), normalisation=EIGHT_BIT)
    assert drawn.astype(np.float64).mean() == pytest.approx(img.mean(), rel=0.01)    # reflect: nearly


def test_haze_follows_the_scattering_model_exactly():
    j = _smooth((3, 40, 48))
    dn = 10000.0 * j
    for t in (0.6, np.linspace(0.2, 0.9, 40 * 48).reshape(40, 48)):
        out = simulate("haze", dn, rng=keyed_rng("haze", 0), normalisation=DN, transmission=t, airlight=0.8)
        t3 = np.asarray(t)
        np.testing.assert_allclose(out / 10000.0, j * t3 + 0.8 * (1 - t3), atol=2e-6)
    by_depth = simulate("haze", dn, rng=keyed_rng("haze", 0), normalisation=DN, beta=0.5, depth=2.0,
                        airlight=[0.7, 0.8, 0.9])
    t = np.exp(-1.0)
    np.testing.assert_allclose(by_depth / 10000.0, j * t + np.array([0.7, 0.8, 0.9])[:, None, None] * (1 - t),
                               atol=2e-6)
    # drawn haze: some airlight A in [0.75, 0.95] and a transmission t = (I - A) / (J - A) in
    # [exp(-1.2 * 1.2), exp(-0.3 * 0.8)] that varies smoothly by at most exp(1.2 * 0.4) across the image
    dark = 0.5 * j                                                 # J - A >= 0.3: well conditioned
    for seed in range(3):
        hazy = simulate("haze", 1e4 * dark, rng=keyed_rng("haze", seed), normalisation=DN).astype(np.float64) / 1e4
        fits = []
        for a in np.linspace(0.75, 0.95, 201):
            t_est = (hazy - a) / (dark - a)
            if np.exp(-1.44) - 1e-3 < t_est.min() and t_est.max() < np.exp(-0.24) + 1e-3:
                fits.append(t_est.max() / t_est.min())
        assert fits and min(fits) < np.exp(0.48) + 1e-3
    with pytest.raises(ConfigError, match="not both"):
        simulate("haze", dn, rng=keyed_rng("haze", 0), normalisation=DN, transmission=0.5, beta=1.0)


def test_cloud_coverage_and_given_masks():
    img = 4000.0 * _smooth((3, 128, 128))
    out = simulate("cloud", img, rng=keyed_rng("cloud", 0), normalisation=DN, coverage=0.3)
    changed = (np.abs(out - img) > 0.5).any(axis=0).mean()
    assert changed == pytest.approx(0.3, abs=0.02)                 # the requested cover
    assert (out >= img - 0.5).all()                                # bright cloud over a darker scene
    mask = np.zeros((128, 128), dtype=bool)
    mask[20:60, 30:90] = True
    masked = simulate("cloud", img, rng=keyed_rng("cloud", 0), normalisation=DN, mask=mask)
    near = np.zeros_like(mask)
    near[5:75, 15:105] = True
    moved = (np.abs(masked - img) > 0.5).any(axis=0)
    assert moved[30:50, 40:80].all() and not moved[~near].any()
    with pytest.raises(ConfigError, match="128×128"):
        simulate("cloud", img, rng=keyed_rng("cloud", 0), normalisation=DN, mask=mask[:64])
    frac = remote_sensing.fractal_cloud((128, 128), keyed_rng("fc", 0), coverage=0.5)
    soft = simulate("cloud", img, rng=keyed_rng("cloud", 1), normalisation=DN, mask=frac)
    # clear pixels only see the float32 round trip through the normalised window
    np.testing.assert_allclose(soft[:, frac == 0], img[:, frac == 0], rtol=1e-6, atol=1e-3)
    unit = SIMULATORS["cloud"].fn(img / 1e4, keyed_rng("cloud", 1), **{**SIMULATORS["cloud"].defaults, "mask": frac})
    np.testing.assert_array_equal(unit[:, frac == 0], (img / 1e4)[:, frac == 0].astype(np.float32))


# ----------------------------------------------------------------------------- reproducibility
#: simulators whose output does not depend on the rng (with their default parameters)
DETERMINISTIC = {"mri_kspace", "mri_bicubic", "bicubic", "rs_bicubic"}


def _example(name: str) -> tuple[np.ndarray, dict]:
    spec = TASKS[SIMULATORS[name].task]
    low, high = spec.intensity_range
    if name == "ct_low_dose":
        img = np.full((32, 32), -1000.0)
        img[6:26, 6:26] = 40.0
        return img, {}
    img = low + (high - low) * _smooth((spec.channels, 32, 32), seed=7)
    return img, {"normalisation": {"low": low, "high": high, "unit": spec.unit}}


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_same_seed_same_output_different_seed_different_output(name):
    img, kw = _example(name)
    a = simulate(name, img, rng=keyed_rng(f"{name}:img", 0), **kw)
    b = simulate(name, img, rng=keyed_rng(f"{name}:img", 0), **kw)
    c = simulate(name, img, rng=keyed_rng(f"{name}:img", 1), **kw)
    assert a.shape == img.shape and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(a, c)
    else:
        assert not np.array_equal(a, c)
    assert not np.allclose(a, img)                                 # it degrades something
