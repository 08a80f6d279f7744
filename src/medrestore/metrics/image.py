"""Per-image PSNR / SSIM with an explicit data range.

Restoration papers report the mean of per-image scores computed with a fixed, stated data
range; torchmetrics' module metrics default to a dataset-level MSE and a range inferred from
the targets. These helpers call torchmetrics' functional kernels per image and always take
``data_range`` from the caller (a float, or one value per image).
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

SSIM_KERNEL = 11
SSIM_SIGMA = 1.5


def _per_image_range(data_range: float | torch.Tensor, n: int, ref: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(data_range, dtype=torch.float64, device=ref.device).flatten()
    if r.numel() == 1:
        r = r.expand(n)
    if r.numel() != n:
        raise ValueError(f"data_range has {r.numel()} values for {n} images")
    if not bool((r > 0).all()):
        raise ValueError(f"data_range must be > 0, got {r.tolist()}")
    return r


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float | torch.Tensor) -> torch.Tensor:
    """PSNR per image (dB) for ``B×C×H×W`` inputs: 10·log10(range² / MSE), MSE over C, H, W.

    Identical images give ``inf`` (as the definition does); callers that average should
    decide how to treat it."""
    _check(pred, target)
    r = _per_image_range(data_range, pred.shape[0], pred)
    p, t = pred.double(), target.double()
    if bool((r == r[0]).all()):
        return peak_signal_noise_ratio(p, t, data_range=float(r[0]), reduction="none",
                                       dim=(1, 2, 3)).float()
    mse = ((p - t) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(r**2 / mse)).float()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float | torch.Tensor) -> torch.Tensor:
    """SSIM per image (Gaussian window 11×11, σ 1.5, K1 0.01, K2 0.03), mean over channels."""
    _check(pred, target)
    r = _per_image_range(data_range, pred.shape[0], pred)
    out = []
    for i in range(pred.shape[0]):
        # float32 is ample for SSIM of [0, range] images and ~3x faster than float64 on CPU
        out.append(structural_similarity_index_measure(
            pred[i:i + 1].float(), target[i:i + 1].float(), data_range=float(r[i]),
            gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL, reduction="none"))
    return torch.cat([o.reshape(1) for o in out]).float()


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"expected two B×C×H×W tensors of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")


def gaussian_window(size: int = SSIM_KERNEL, sigma: float = SSIM_SIGMA,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised ``size×size`` Gaussian (outer product of the normalised 1-D kernel)."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def _gaussian_ssim_map(pred: torch.Tensor, target: torch.Tensor, r: torch.Tensor,
                       padding: int) -> torch.Tensor:
    """B×C×H'×W' SSIM map in float64: Gaussian 11×11 (σ 1.5) per channel, ``C1 = (0.01·r)²``,
    ``C2 = (0.03·r)²`` with ``r`` one data range per image; ``padding`` 0 = valid region,
    ``SSIM_KERNEL // 2`` = zero-padded 'same'."""
    import torch.nn.functional as F

    c = pred.shape[1]
    w = gaussian_window().to(pred.device).expand(c, 1, SSIM_KERNEL, SSIM_KERNEL).contiguous()
    p, t = pred.double(), target.double()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, padding=padding, groups=c)

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1 = ((0.01 * r) ** 2).view(-1, 1, 1, 1)
    c2 = ((0.03 * r) ** 2).view(-1, 1, 1, 1)
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def ssim_zero_pad(pred: torch.Tensor, target: torch.Tensor,
                  data_range: float | torch.Tensor) -> torch.Tensor:
    """SSIM per image as the pytorch-ssim package computes it (used by the TAT/AMIR
    evaluation): Gaussian 11×11 window (σ 1.5) applied per channel as a **zero-padded 'same'**
    convolution, ``C1 = (0.01·range)²``, ``C2 = (0.03·range)²``, mean over the whole map
    **including the borders** (torchmetrics instead pads by reflection and crops the borders).
    Computed in float64 on the images as given (physical units)."""
    _check(pred, target)
    r = _per_image_range(data_range, pred.shape[0], pred)
    ssim_map = _gaussian_ssim_map(pred, target, r, padding=SSIM_KERNEL // 2)
    return ssim_map.flatten(1).mean(1).float()


def ssim_valid(pred: torch.Tensor, target: torch.Tensor,
               data_range: float | torch.Tensor) -> torch.Tensor:
    """SSIM per image as BasicSR's ``calculate_ssim`` computes it: per channel, Gaussian 11×11
    (σ 1.5) filtering on the **valid** region only (the 5-pixel border of the map is dropped),
    ``C1 = (0.01·range)²``, ``C2 = (0.03·range)²``, mean of the map, then mean over channels.
    Float64. Images must be at least 11×11."""
    _check(pred, target)
    if min(pred.shape[-2:]) < SSIM_KERNEL:
        raise ValueError(f"ssim_valid needs images of at least {SSIM_KERNEL}×{SSIM_KERNEL}, "
                         f"got {tuple(pred.shape[-2:])}")
    r = _per_image_range(data_range, pred.shape[0], pred)
    ssim_map = _gaussian_ssim_map(pred, target, r, padding=0)
    return ssim_map.flatten(2).mean(2).mean(1).float()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root-mean-square error per image (in the images' units)."""
    _check(pred, target)
    return ((pred.double() - target.double()) ** 2).flatten(1).mean(1).sqrt().float()
