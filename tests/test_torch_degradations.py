"""Batched torch simulators (degradations/torch_ops.py) against the numpy / scikit-image path.

Noiseless parts must equal the numpy results (the CT operators are scikit-image's geometry to
float64 rounding: measured max relative error ~1e-15 in float64, ~1e-6 in float32; FBP round
trip max |Δ| ~1e-3 HU in float32). Noisy parts are compared in distribution, since torch and
numpy draw different numbers: bias, noise σ in the body and the noise-power spectrum of a
low-dose CT phantom (measured within 1 % with 400 draws each), PET mean and variance, Rician
mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrestore.degradations import ct, mri, pet
from medrestore.degradations import torch_ops as T
from medrestore.degradations.simulators import simulate
from medrestore.errors import ConfigError


def _rel_max(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("s", [32, 33])
def test_projector_and_fbp_equal_scikit_image(s):
    from skimage.transform import iradon, radon

    img = np.random.default_rng(s).random((s, s))
    n = ct.default_n_angles(s)
    ref = radon(img, theta=ct.angles_deg(n), circle=False)                 # bins × views
    out = T.radon(torch.from_numpy(img)[None], n)[0].numpy().T
    assert out.shape == ref.shape
    assert _rel_max(out, ref) < 1e-12                                      # float64: same sums
    rec = iradon(ref, theta=ct.angles_deg(n), output_size=s, filter_name="ramp",
                 interpolation="linear", circle=False)
    assert _rel_max(T.fbp(torch.from_numpy(ref.T.copy()), s).numpy(), rec) < 1e-12
    rec32 = T.fbp(torch.from_numpy(ref.T.copy()).float(), s).numpy()       # what trains
    assert _rel_max(rec32, rec) < 1e-5


def test_fbp_roundtrip_matches_numpy_in_hu():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-1000, 1500, size=(2, 24, 31))                        # non-square: padded
    ref = np.stack([ct.fbp_roundtrip(h, 0.7) for h in hu])
    out = T.fbp_roundtrip(torch.from_numpy(hu).float()[:, None], 0.7)[:, 0].numpy()
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.05                                  # HU (measured ~1e-3)


def test_kspace_truncation_matches_numpy():
    img = np.random.default_rng(2).random((3, 40, 36)) * 800
    for scale in (2, 4, 3.3):
        ref = mri.kspace_truncate(img, scale)
        out = T.kspace_truncate(torch.from_numpy(img).float(), scale).numpy()
        assert _rel_max(out, ref) < 1e-5
    ref = mri.downsample(img[0], 4)
    out = T.simulate_batch("mri_kspace", torch.from_numpy(img[:1, None]).float(), gens=T.generators([0]))
    assert _rel_max(out[0, 0].numpy(), ref) < 1e-5


def _phantom(s: int = 32) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:s, :s] - s / 2 + 0.5
    r2 = yy ** 2 + xx ** 2
    return np.where(r2 < 12 ** 2, 40.0, -1000.0), r2 < 8 ** 2


def _nps_bands(noise: np.ndarray) -> np.ndarray:
    """Noise power of a 16×16 central ROI in four radial frequency bands."""
    roi = noise[:, 8:24, 8:24]
    nps = (np.abs(np.fft.fft2(roi - roi.mean(0))) ** 2).mean(0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(16), np.fft.fftfreq(16), indexing="ij"))
    edges = (0, 0.125, 0.25, 0.375, 0.75)
    return np.array([nps[(f >= lo) & (f < hi)].mean() for lo, hi in zip(edges, edges[1:])])


def test_low_dose_ct_noise_matches_numpy_in_distribution():
    hu, body = _phantom()
    n = 400
    rng = np.random.default_rng(0)
    ref = np.stack([ct.low_dose_ct(hu, 0.25, pixel_size_mm=0.8, rng=rng) for _ in range(n)])
    x = torch.from_numpy(hu).float().expand(n, 1, *hu.shape).contiguous()
    out = T.low_dose_ct(x, 0.25, pixel_size_mm=0.8,
                        gens=T.generators([T.torch_seed(0, i) for i in range(n)]))[:, 0].numpy()
    assert abs(out.mean(0)[body].mean() - ref.mean(0)[body].mean()) < 3.0           # HU bias
    sd_ref, sd_out = ref.std(0)[body].mean(), out.std(0)[body].mean()
    assert sd_ref > 10                                                              # real noise
    assert sd_out == pytest.approx(sd_ref, rel=0.05)
    np.testing.assert_allclose(_nps_bands(out), _nps_bands(ref), rtol=0.08)
    # and the dose law holds in torch alone: σ ∝ 1/sqrt(dose)
    half = T.low_dose_ct(x[:100], 1.0, pixel_size_mm=0.8, gens=T.generators(range(100)))[:, 0].numpy()
    assert sd_out / half.std(0)[body].mean() == pytest.approx(2.0, rel=0.1)


def test_electronic_noise_adds_variance():
    hu, body = _phantom()
    x = torch.from_numpy(hu).float().expand(64, 1, *hu.shape).contiguous()
    quiet = T.low_dose_ct(x, 0.25, gens=T.generators(range(64)))
    loud = T.low_dose_ct(x, 0.25, electronic_noise_std=300.0, gens=T.generators(range(64)))
    assert loud[:, 0].std(0)[torch.from_numpy(body)].mean() > 1.05 * quiet[:, 0].std(0)[torch.from_numpy(body)].mean()


def test_pet_and_rician_match_numpy_in_distribution():
    act = np.full((200, 16, 16), 2.0)
    rng = np.random.default_rng(3)
    ref = np.stack([pet.low_count_pet(a, 12, rng=rng) for a in act])
    out = T.low_count_pet(torch.from_numpy(act).float()[:, None], 12, gens=T.generators(range(200))).numpy()
    assert out.mean() == pytest.approx(ref.mean(), rel=0.01)
    assert out.var() == pytest.approx(2.0 * 12 / pet.DEFAULT_COUNT_SCALE, rel=0.03)
    assert out.var() == pytest.approx(ref.var(), rel=0.04)
    img = np.full((200, 16, 16), 0.1)
    ref = np.stack([mri.rician_noise(a, 0.05, rng) for a in img])
    out = T.rician_noise(torch.from_numpy(img)[:, None], 0.05, T.generators(range(200))).numpy()
    assert out.mean() == pytest.approx(ref.mean(), rel=0.01)
    assert out.std() == pytest.approx(ref.std(), rel=0.03)


@pytest.mark.parametrize("name", sorted(T.BATCHED))
def test_seeded_determinism_and_batch_equals_per_sample(name):
    rng = np.random.default_rng(4)
    gt = torch.from_numpy(rng.uniform(0, 400, size=(3, 1, 24, 24))).float()
    params = {"mri_kspace": {"rician_sigma": 5.0}}.get(name, {})
    seeds = [T.torch_seed(0, d) for d in (11, 12, 13)]
    spacing = [0.7, None, [0.9, 0.9]]
    a = T.simulate_batch(name, gt, gens=T.generators(seeds), spacing=spacing, **params)
    b = T.simulate_batch(name, gt, gens=T.generators(seeds), spacing=spacing, **params)
    assert torch.equal(a, b)
    alone = torch.cat([T.simulate_batch(name, gt[i:i + 1], gens=T.generators(seeds[i:i + 1]),
                                        spacing=spacing[i:i + 1], **params) for i in range(3)])
    assert torch.allclose(a, alone, atol=1e-3)
    other = T.simulate_batch(name, gt, gens=T.generators([s + 1 for s in seeds]), spacing=spacing, **params)
    assert not torch.equal(a, other)


def test_simulate_batch_agrees_with_simulate_per_sample_mean():
    """Same units and parameters as ``simulate``: the mean of many draws agrees per pixel."""
    hu, body = _phantom()
    n = 120
    rng = np.random.default_rng(5)
    ref = np.stack([simulate("ct_low_dose", hu, rng=rng, spacing=[0.8, 0.8], dose_factor=0.5)
                    for _ in range(n)])
    x = torch.from_numpy(hu).float().expand(n, 1, *hu.shape).contiguous()
    out = T.simulate_batch("ct_low_dose", x, gens=T.generators(range(n)), spacing=[[0.8, 0.8]] * n,
                           dose_factor=0.5)[:, 0].numpy()
    diff = out.mean(0)[body] - ref.mean(0)[body]
    assert np.abs(diff).mean() < 0.25 * ref.std(0)[body].mean()


def test_seeds_follow_the_draw_key():
    assert T.torch_seed(0, 5) == T.torch_seed(0, 5)
    assert len({T.torch_seed(0, d) for d in range(100)} | {T.torch_seed(1, 0)}) == 101
    assert 0 <= T.torch_seed(2**31, 2**40) < 2**63


def test_bad_inputs_are_one_line_errors():
    x = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ConfigError, match="no batched torch version"):
        T.simulate_batch("rain", x, gens=T.generators([0, 1]))
    with pytest.raises(ConfigError, match="has no parameter"):
        T.simulate_batch("ct_low_dose", x, gens=T.generators([0, 1]), dose=0.3)
    with pytest.raises(ConfigError, match=r"dose_factor must be in \(0, 1\]"):
        T.simulate_batch("ct_low_dose", x, gens=T.generators([0, 1]), dose_factor=2.0)
    with pytest.raises(ConfigError, match="one torch.Generator per sample"):
        T.simulate_batch("pet_low_count", x, gens=T.generators([0]))
    with pytest.raises(ConfigError, match="spacing needs"):
        T.simulate_batch("ct_low_dose", x, gens=T.generators([0, 1]), spacing=[1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="NaN or inf"):
        T.simulate_batch("pet_low_count", torch.full((1, 1, 4, 4), float("nan")), gens=T.generators([0]))
    with pytest.raises(ValueError, match="degradations in the data-loader workers|data.degrade_on=worker"):
        T.ct_operators(4096, 8000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    hu, _ = _phantom()
    x = torch.from_numpy(hu).float()[None, None].repeat(2, 1, 1, 1)
    cpu = T.fbp_roundtrip(x)
    gpu = T.fbp_roundtrip(x.cuda()).cpu()
    assert (gpu - cpu).abs().max() < 0.05
    seeds = [T.torch_seed(0, 1), T.torch_seed(0, 2)]
    for name in sorted(T.BATCHED):
        a = T.simulate_batch(name, x.cuda() + 1000, gens=T.generators(seeds, "cuda"))
        b = T.simulate_batch(name, x.cuda() + 1000, gens=T.generators(seeds, "cuda"))
        assert a.is_cuda and torch.equal(a, b) and torch.isfinite(a).all()
