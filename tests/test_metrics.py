"""Per-image PSNR/SSIM with explicit data range, and per-task / per-domain aggregation."""

from __future__ import annotations

import math

import pytest
import torch

from medrestore.metrics.aggregate import PerTaskMean, summarise
from medrestore.metrics.image import psnr, ssim
from medrestore.metrics.protocols import PROTOCOLS, protocol_for
from medrestore.registry import task_index


def test_psnr_hand_computed():
    gt = torch.zeros(2, 1, 4, 4)
    pred = gt.clone()
    pred[0] += 0.1                       # MSE 0.01 -> 20 dB at range 1
    pred[1, :, :2] += 0.2                # MSE 0.02 -> 10·log10(1/0.02) = 16.9897 dB
    out = psnr(pred, gt, 1.0)
    assert out[0].item() == pytest.approx(20.0, abs=1e-4)
    assert out[1].item() == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-4)
    # explicit range: the same error in HU over a 400-HU window
    assert psnr(pred * 400, gt * 400, 400.0)[0].item() == pytest.approx(20.0, abs=1e-4)
    # per-image ranges
    per = psnr(pred, gt, torch.tensor([1.0, 2.0]))
    assert per[1].item() == pytest.approx(10 * math.log10(4 / 0.02), abs=1e-4)


def test_psnr_rejects_bad_range():
    with pytest.raises(ValueError, match="data_range must be > 0"):
        psnr(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 0.0)


def test_ssim_identity_and_ordering():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 1, 32, 32, generator=g)
    assert ssim(gt, gt, 1.0).item() == pytest.approx(1.0, abs=1e-6)
    small = ssim(gt + 0.01 * torch.randn(gt.shape, generator=g), gt, 1.0).item()
    big = ssim(gt + 0.2 * torch.randn(gt.shape, generator=g), gt, 1.0).item()
    assert 1.0 > small > big


def test_ssim_constant_offset_hand_computed():
    # Constant images a and b: SSIM = (2ab + C1) / (a² + b² + C1) on every window (σ terms cancel).
    a, b = 0.5, 0.6
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    out = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b), 1.0).item()
    assert out == pytest.approx(expected, abs=1e-6)


def test_normalised_protocol_clips_to_window():
    gt = torch.full((1, 8, 8), 0.5)
    pred = torch.full((1, 8, 8), 1.6)          # clipped to 1.0 -> error 0.5 -> 6.02 dB
    scores = protocol_for("ct_denoise")(pred, gt, {})
    assert scores["psnr"].item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-4)
    assert "normalised" in PROTOCOLS


def test_per_task_mean_and_unweighted_domain_mean():
    m = PerTaskMean()
    ids = torch.tensor([task_index("ct_denoise")] * 3 + [task_index("mri_sr"), task_index("derain")])
    m.update(torch.tensor([30.0, 32.0, 34.0, 20.0, 25.0]), ids)
    mean, count, nonfinite = m.compute()
    assert nonfinite.sum().item() == 0
    out = summarise({"psnr": mean}, count, nonfinite)
    assert out["ct_denoise/psnr"] == pytest.approx(32.0)
    assert out["medical/psnr"] == pytest.approx((32.0 + 20.0) / 2)   # mean of task means
    assert out["mean/psnr"] == pytest.approx((32.0 + 20.0 + 25.0) / 3)
    assert out["ct_denoise/n"] == 3
    assert "remote_sensing/psnr" not in out


def test_infinite_psnr_is_capped():
    m = PerTaskMean()
    m.update(torch.tensor([float("inf"), 40.0]), torch.tensor([0, 0]))
    assert m.compute()[0][0].item() == pytest.approx(70.0)


def test_nan_score_stays_nan_and_is_counted():
    # a NaN pixel must never score the cap (it used to be replaced by 100 dB)
    m = PerTaskMean()
    ct, mri = task_index("ct_denoise"), task_index("mri_sr")
    m.update(torch.tensor([float("nan"), 40.0, 30.0]), torch.tensor([ct, ct, mri]))
    mean, count, nonfinite = m.compute()
    assert torch.isnan(mean[ct]) and mean[mri].item() == pytest.approx(30.0)
    assert nonfinite[ct].item() == 1 and nonfinite[mri].item() == 0
    out = summarise({"psnr": mean}, count, nonfinite)
    assert math.isnan(out["ct_denoise/psnr"]) and math.isnan(out["medical/psnr"])
    assert math.isnan(out["mean/psnr"]) and out["ct_denoise/nonfinite"] == 1


def test_psnr_of_nan_output_is_nan_in_every_protocol():
    from medrestore.metrics.protocols import PROTOCOLS
    from medrestore.sample import make_meta

    gt = torch.rand(1, 32, 32)
    pred = gt.clone()
    pred[0, 3, 4] = float("nan")
    meta = make_meta("ct_denoise", source="t", split="test")
    for name in ("normalised", "tat", "datprl"):
        scores = PROTOCOLS.get(name)(pred, gt, meta)
        assert math.isnan(float(scores["psnr"])), name


def test_promptir_and_moce_ir_protocols_are_their_scikit_image_calls():
    """Their test scripts: centre crop to multiples of 16, scikit-image PSNR (range 1) and SSIM
    (PromptIR: uniform 7x7 window; MoCE-IR: Gaussian σ 1.5), RGB averaged over channels."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from medrestore.metrics.protocols import PROTOCOLS, centre_crop_to

    g = torch.rand(3, 70, 75, generator=torch.Generator().manual_seed(0))
    p = g + 0.05 * torch.randn(3, 70, 75, generator=torch.Generator().manual_seed(1))
    assert centre_crop_to(g, 16).shape[-2:] == (64, 64)
    assert torch.equal(centre_crop_to(g, 16), g[:, 3:67, 5:69])  # the odd pixel: bottom/right
    gn = g[:, 3:67, 5:69].permute(1, 2, 0).double().numpy()
    pn = p.clamp(0, 1)[:, 3:67, 5:69].permute(1, 2, 0).double().numpy()
    want = {"promptir": structural_similarity(gn, pn, data_range=1, channel_axis=-1),
            "moce_ir": structural_similarity(gn, pn, data_range=1, channel_axis=-1,
                                             gaussian_weights=True, sigma=1.5)}
    assert abs(want["promptir"] - want["moce_ir"]) > 1e-5          # the windows differ
    for name, ssim_ref in want.items():
        s = PROTOCOLS.get(name)(p, g, {})
        assert float(s["ssim"]) == pytest.approx(ssim_ref, abs=1e-6)
        assert float(s["psnr"]) == pytest.approx(peak_signal_noise_ratio(gn, pn, data_range=1), abs=1e-4)
        assert float(s["rmse"]) == pytest.approx(float(np.sqrt(((pn - gn) ** 2).mean())), abs=1e-6)
        one = PROTOCOLS.get(name)(p[:1], g[:1], {})                  # one channel: 2-D SSIM
        assert np.isfinite(float(one["ssim"]))
