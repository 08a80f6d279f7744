"""DATPRL-IR's losses move what they should, and its BasicSR-style protocol (hand values)."""

from __future__ import annotations

import math

import pytest
import torch

from medrestore.losses.prompt import (alignment_loss, balance_loss, contrastive_loss,
                                      diversity_loss, fft_l1)
from medrestore.metrics.protocols import PROTOCOLS


def _descend(param: torch.Tensor, loss_fn, steps: int = 100, lr: float = 0.05) -> list[float]:
    opt = torch.optim.Adam([param], lr=lr)
    values = []
    for _ in range(steps):
        loss = loss_fn()
        values.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return values


def test_fft_loss_matches_its_definition_and_pulls_spectra_together():
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    manual = ((fa.real - fb.real).abs().sum() + (fa.imag - fb.imag).abs().sum()) / (2 * fa.numel())
    assert float(fft_l1(a, b)) == pytest.approx(float(manual), rel=1e-5)
    assert float(fft_l1(a, a)) == 0.0
    pred = a.clone().requires_grad_(True)
    values = _descend(pred, lambda: fft_l1(pred, b), steps=60)
    assert values[-1] < 0.2 * values[0]


def test_alignment_loss_rises_cosine_to_the_text_embedding():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    domain = torch.randn(4, 32, requires_grad=True)
    values = _descend(domain, lambda: alignment_loss(domain, text), steps=80)
    assert values[0] > 0.5 and values[-1] < 0.05
    assert float(alignment_loss(text * 3, text)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="matching widths"):
        alignment_loss(torch.randn(4, 32), torch.randn(4, 16))


@pytest.mark.parametrize("mode", ["hinge", "softmax"])
def test_diversity_loss_falls_as_prompts_spread(mode):
    torch.manual_seed(0)
    clustered = torch.randn(1, 64) + 0.05 * torch.randn(15, 64)   # 15 nearly equal prompts
    spread = torch.linalg.qr(torch.randn(64, 15))[0].t()           # 15 orthonormal prompts
    assert float(diversity_loss(spread, mode=mode)) < float(diversity_loss(clustered, mode=mode))
    if mode == "hinge":
        assert float(diversity_loss(spread)) == pytest.approx(0.0, abs=1e-6)   # all |cos| < 0.1
    keys = clustered.clone().requires_grad_(True)
    values = _descend(keys, lambda: diversity_loss(keys, mode=mode), steps=150)
    assert values[-1] < 0.5 * values[0]
    z = torch.nn.functional.normalize(keys.detach(), dim=-1)
    off = ~torch.eye(15, dtype=torch.bool)
    assert float((z @ z.t())[off].mean()) < 0.5                     # prompts moved apart
    # value tokens (N×T×D) are flattened per prompt
    assert diversity_loss(torch.randn(15, 2, 8)).shape == ()


def test_balance_loss_is_lowest_at_uniform_usage():
    n = 15
    uniform = torch.full((6, n), 1.0 / n)
    one_prompt = torch.zeros(6, n)
    one_prompt[:, 4] = 1.0
    assert float(balance_loss(uniform)) == pytest.approx(0.0, abs=1e-6)
    assert float(balance_loss(one_prompt)) == pytest.approx(math.log(n), rel=1e-5)
    # per-sample top-3 selections that together cover every prompt evenly are balanced too
    spread = torch.zeros(5, n)
    for i in range(5):
        spread[i, 3 * i:3 * i + 3] = 1 / 3
    assert float(balance_loss(spread)) == pytest.approx(0.0, abs=1e-6)
    logits = torch.zeros(8, n)
    logits[:, 0] = 5.0
    logits.requires_grad_(True)
    values = _descend(logits, lambda: balance_loss(torch.softmax(logits, -1)), steps=100, lr=0.1)
    assert values[-1] < 0.1 * values[0]


def test_contrastive_loss_groups_samples_of_a_task():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    grouped = centres[labels] + 0.01 * torch.randn(6, 16)
    mixed = centres[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.01 * torch.randn(6, 16)
    assert float(contrastive_loss(grouped, labels)) < float(contrastive_loss(mixed, labels))
    reprs = torch.randn(6, 16, requires_grad=True)
    values = _descend(reprs, lambda: contrastive_loss(reprs, labels), steps=100)
    assert values[-1] < 0.2 * values[0]
    z = torch.nn.functional.normalize(reprs.detach(), dim=-1)
    assert float(z[0] @ z[1]) > float(z[0] @ z[2])                  # same task closer
    assert float(contrastive_loss(torch.randn(3, 8), torch.tensor([0, 1, 2]))) == 0.0


# ------------------------------------------------------------------ protocol
def test_datprl_protocol_by_hand():
    proto = PROTOCOLS.get("datprl")
    gt = torch.full((3, 11, 11), 100 / 255)
    pred = torch.full((3, 11, 11), 110 / 255)
    s = proto(pred, gt, {})
    assert float(s["psnr"]) == pytest.approx(10 * math.log10(255**2 / 100), rel=1e-6)
    c1 = (0.01 * 255) ** 2
    assert float(s["ssim"]) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-6)
    assert float(s["rmse"]) == pytest.approx(10.0, rel=1e-6)
    # uint8 rounding happens before the error: 0.2 gray levels apart round to the same level
    same = proto(torch.full((1, 12, 12), 100.4 / 255), torch.full((1, 12, 12), 100.2 / 255), {})
    assert math.isinf(float(same["psnr"])) and float(same["ssim"]) == pytest.approx(1.0)
