"""TAT's training and evaluation logic: σ loss balancing, EMA with the ema_pytorch warm-up,
and the per-slice physical-unit metric protocol (hand-computed values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrestore.losses.balancing import (UncertaintyEstimator, optimal_sigma, per_sample_l1,
                                         uncertainty_weighted)
from medrestore.metrics.protocols import PROTOCOLS
from medrestore.modules.restoration import RestorationModule
from medrestore.sample import Normalisation


# ------------------------------------------------------------------ σ balancing
def test_uncertainty_estimator_shape_init_and_size():
    est = UncertaintyEstimator()
    assert sum(p.numel() for p in est.parameters()) == 8577      # the reference estimator's size
    sigma = est(torch.rand(5, 3))
    assert sigma.shape == (5,) and torch.allclose(sigma, torch.ones(5))   # σ = 1 at the start
    c = torch.tensor([0.1, 0.2])
    expected = (0.5 * c / (1 + 1e-8) + 0.5 * math.log(2)).mean()
    assert torch.allclose(uncertainty_weighted(c, torch.ones(2)), expected)


def test_sigma_rises_for_harder_samples():
    """Trained on its loss, the estimator gives a larger σ (a smaller weight) to samples whose
    restoration error is larger, close to the analytic optimum σ² = (c + √(c² + 4c)) / 2."""
    torch.manual_seed(0)
    est = UncertaintyEstimator()
    opt = torch.optim.Adam(est.parameters(), lr=3e-3)
    for _ in range(600):
        c = torch.rand(64) * 0.2 + 0.005            # per-sample L1 of the output
        a = c * 1.5                                  # input error: harder inputs, larger errors
        stats = torch.stack([a, a - c, c], 1)
        loss = uncertainty_weighted(c, est(stats))
        opt.zero_grad()
        loss.backward()
        opt.step()
    c = torch.tensor([0.01, 0.05, 0.1, 0.2])
    sigma = est(torch.stack([1.5 * c, 0.5 * c, c], 1)).detach()
    assert torch.all(sigma[1:] > sigma[:-1])
    assert torch.allclose(sigma.abs(), optimal_sigma(c), rtol=0.15)


def test_tat_module_loss_uses_sigma_and_plain_l1_for_ablation():
    from medrestore.modules.tat import TATModule

    net = {"name": "restormer_tiny", "in_channels": 1, "out_channels": 1}
    batch = {"lq": torch.rand(4, 1, 16, 16), "gt": torch.rand(4, 1, 16, 16),
             "task": ["ct_denoise", "ct_denoise", "mri_sr", "pet_synthesis"]}
    pred = torch.rand(4, 1, 16, 16)
    m = TATModule(net, loss={"name": "l1", "balance": "uncertainty"})
    c = per_sample_l1(pred, batch["gt"])
    with torch.no_grad():
        m.sigma_net.out.bias.fill_(2.0)             # σ = 2 for every sample
    got = m.weight_sample_losses(c, batch, pred, {})
    assert torch.allclose(got, (0.5 * c / 4 + 0.5 * math.log(5)).mean(), atol=1e-6)
    # the estimator is trained by the module's optimiser, the EMA copy (if any) is not
    assert any(p is m.sigma_net.out.bias for p in m.optimizer_parameters())
    plain = TATModule(net, loss={"name": "l1", "balance": "none"})
    assert plain.sigma_net is None
    assert torch.allclose(plain.weight_sample_losses(c, batch, pred, {}), c.mean())
    with pytest.raises(Exception, match="balance"):
        RestorationModule(net, loss={"balance": "uncertainty"})   # only TAT knows σ balancing


# ------------------------------------------------------------------ EMA
def test_ema_follows_the_ema_pytorch_warmup_and_is_used_for_evaluation():
    net = {"name": "restormer_tiny", "in_channels": 1, "out_channels": 1}
    m = RestorationModule(net, ema={"decay": 0.999})
    assert not any(p.requires_grad for p in m.net_ema.parameters())
    assert all(p.requires_grad for p in m.optimizer_parameters())
    assert not any(p is q for p in m.optimizer_parameters() for q in m.net_ema.parameters())
    p_net = next(m.net.parameters())
    p_ema = next(m.net_ema.parameters())
    decays = []
    for step in range(5):
        with torch.no_grad():
            p_net.add_(1.0)                         # a fake optimiser step
        before = p_ema.detach().clone()
        d = m.update_ema()
        decays.append(d)
        assert torch.allclose(p_ema, d * before + (1 - d) * p_net, atol=1e-6)
    # copies on the first two updates, then min(0.999, 1 - (1 + k)^(-2/3)) with k = step
    assert decays[:2] == [0.0, 0.0]
    assert decays[2:] == pytest.approx([1 - (1 + k) ** (-2 / 3) for k in (2, 3, 4)])
    m.eval()
    assert m.active_net() is m.net_ema
    m.train()
    assert m.active_net() is m.net
    with pytest.raises(Exception, match="model.ema"):
        RestorationModule(net, ema={"beta": 0.9})


# ------------------------------------------------------------------ TAT protocol
def _meta(modality, low, high):
    return {"modality": modality, "normalisation": Normalisation(low, high).to_dict()}


def test_tat_protocol_psnr_rmse_by_hand():
    tat = PROTOCOLS.get("tat")
    meta = _meta("CT", -1024, 3072)
    norm = Normalisation(-1024, 3072)
    # GT HU and prediction HU; after clipping to [-160, 240]: GT [-160, 0, 100, 240]
    gt_hu = torch.tensor([[[-500.0, 0.0], [100.0, 1000.0]]])
    pred_hu = torch.tensor([[[-300.0, 10.0], [90.0, 1000.0]]])
    s = tat(norm.normalise(pred_hu), norm.normalise(gt_hu), meta)
    # clipped pred [-160, 10, 90, 240]; errors [0, 10, -10, 0] -> MSE 50, range 400
    assert float(s["rmse"]) == pytest.approx(math.sqrt(50), rel=1e-4)
    assert float(s["psnr"]) == pytest.approx(10 * math.log10(400**2 / 50), rel=1e-4)
    # PET: window [0, 20] SUV, range = GT max - min of this slice (not the window width)
    meta = _meta("PT", 0, 20)
    gt = torch.tensor([[[1.0, 3.0], [5.0, 2.0]]]) / 20
    pred = torch.tensor([[[1.5, 3.0], [5.0, 2.0]]]) / 20
    s = tat(pred, gt, meta)
    assert float(s["psnr"]) == pytest.approx(10 * math.log10(4.0**2 / (0.25 / 4)), rel=1e-4)
    assert float(s["rmse"]) == pytest.approx(0.25, rel=1e-4)
    with pytest.raises(ValueError, match="modality"):
        tat(pred, gt, _meta("RGB", 0, 255))


def test_tat_protocol_ssim_by_hand():
    """SSIM of 1×1 images with the zero-padded Gaussian window: only the centre weight w of the
    normalised 11×11 window touches the pixel, so μ = w·x, σ² = w·x² − (w·x)², cov = w·x·y − μxμy."""
    tat = PROTOCOLS.get("tat")
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    w = float((g / g.sum())[5] ** 2)
    meta = _meta("MR", 0, 4095)
    x, y = 3000.0, 1000.0                            # pred, gt in MR a.u.
    s = tat(torch.tensor([[[x / 4095]]]), torch.tensor([[[y / 4095]]]), meta)
    r = 1.0                                          # flat GT slice: range 0 -> 1
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    mx, my = w * x, w * y
    vx, vy, cxy = w * x * x - mx * mx, w * y * y - my * my, w * x * y - mx * my
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert float(s["ssim"]) == pytest.approx(expected, rel=1e-4)
    same = tat(torch.rand(1, 12, 10), torch.rand(1, 12, 10), meta)
    assert float(tat(torch.full((1, 6, 6), 0.3), torch.full((1, 6, 6), 0.3), meta)["ssim"]) == pytest.approx(1.0)
    assert 0 < float(same["ssim"]) < 1


def test_tat_protocol_matches_numpy_on_a_random_ct_slice():
    """CT in TAT's [-160, 240] window with the slice's own range, recomputed with numpy; far
    below the score in the full [-1024, 3072] training window."""
    rng = np.random.default_rng(0)
    norm = Normalisation(-1024, 3072)
    gt = rng.uniform(-200, 300, (1, 32, 32)).astype(np.float32)
    pred = gt + rng.normal(0, 20, (1, 32, 32)).astype(np.float32)
    meta = _meta("CT", -1024, 3072)
    t = lambda a: norm.normalise(torch.from_numpy(a))
    narrow = PROTOCOLS.get("tat")(t(pred), t(gt), meta)
    g, p = np.clip(gt, -160, 240).astype(np.float64), np.clip(pred, -160, 240).astype(np.float64)
    mse = np.mean((p - g) ** 2)
    assert float(narrow["psnr"]) == pytest.approx(10 * np.log10((g.max() - g.min()) ** 2 / mse), abs=2e-3)
    assert float(narrow["rmse"]) == pytest.approx(np.sqrt(mse), rel=1e-3)
    wide = PROTOCOLS.get("normalised")(t(pred), t(gt), meta)
    assert float(wide["psnr"]) > float(narrow["psnr"]) + 15
