"""Noise-power spectrum (NPS) of 2-D images, as used to characterise CT noise texture.

The noise is an image minus its reference (``restored − ground truth`` or ``degraded − ground
truth``), so there is no need for repeated scans. Square ROIs are cut from it on a grid, each
ROI is detrended by its own mean, and

    NPS(fx, fy) = ⟨ |FFT2(roi − mean(roi))|² ⟩_ROIs · Δx·Δy / (Nx·Ny)

in units² · mm² (or units² · px² without a pixel spacing). With this scaling the integral of
the 2-D NPS over frequency equals the (biased) pixel variance of the detrended ROIs
(Parseval), and white noise of variance σ² has a flat NPS of σ²·Δx·Δy. The radial average
bins the 2-D NPS by |f| in steps of the frequency sampling ``1 / (N·Δ)``.

    rois = extract_rois(noise, size=64)                     # (n, 64, 64), 50 % overlap
    res = noise_power_spectrum(noise, size=64, spacing=(0.86, 0.86))
    res.freq, res.nps                                       # cycles/mm, HU²·mm²
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from medrestore.errors import MedrestoreError


class NPSError(MedrestoreError, ValueError):
    """Impossible NPS settings (ROI size, spacing, image shape); the message names the value."""


def _spacing(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    """``(Δy, Δx)``; ``None`` = 1 (per pixel)."""
    if spacing is None:
        return 1.0, 1.0
    s = (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(float(v) for v in spacing)
    if len(s) != 2 or not all(np.isfinite(v) and v > 0 for v in s):
        raise NPSError(f"spacing={spacing!r}: expected one or two positive pixel sizes (Δy, Δx)")
    return s[0], s[1]


def roi_corners(shape: Sequence[int], size: int, stride: int | None = None,
                mask: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Top-left corners of ``size``×``size`` ROIs on a grid with step ``stride`` (default
    ``size // 2``, 50 % overlap), centred in the image; with ``mask`` only ROIs lying entirely
    inside it (e.g. the body, so air and the table do not enter a CT NPS)."""
    h, w = int(shape[0]), int(shape[1])
    if int(size) != size or size < 4:
        raise NPSError(f"size={size!r}: expected an ROI side of at least 4 pixels")
    if size > min(h, w):
        raise NPSError(f"size={size}: the ROI is larger than the {h}×{w} image")
    stride = size // 2 if stride is None else int(stride)
    if stride < 1:
        raise NPSError(f"stride={stride}: expected at least 1 pixel")
    ny, nx = (h - size) // stride + 1, (w - size) // stride + 1
    oy, ox = (h - (ny - 1) * stride - size) // 2, (w - (nx - 1) * stride - size) // 2
    corners = [(oy + i * stride, ox + j * stride) for i in range(ny) for j in range(nx)]
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != (h, w):
            raise NPSError(f"mask shape {m.shape} differs from the image shape {(h, w)}")
        corners = [(y, x) for y, x in corners if m[y:y + size, x:x + size].all()]
    return corners


def extract_rois(noise: np.ndarray, size: int, stride: int | None = None,
                 mask: np.ndarray | None = None) -> np.ndarray:
    """``(n, size, size)`` float64 ROIs of a 2-D noise image (see :func:`roi_corners`)."""
    a = np.asarray(noise, dtype=np.float64)
    if a.ndim != 2:
        raise NPSError(f"expected a 2-D noise image, got shape {a.shape}")
    corners = roi_corners(a.shape, size, stride, mask)
    if not corners:
        raise NPSError(f"no {size}×{size} ROI fits inside the mask")
    return np.stack([a[y:y + size, x:x + size] for y, x in corners])


def nps_2d(rois: np.ndarray, spacing: float | Sequence[float] | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ensemble 2-D NPS of ``(n, Ny, Nx)`` ROIs, each detrended by its mean.

    Returns ``(nps, fy, fx)``: the NPS centred with ``fftshift`` (zero frequency in the middle)
    and the frequency axes in cycles per unit of ``spacing`` (cycles/pixel without it)."""
    r = np.asarray(rois, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[0] == 0:
        raise NPSError(f"expected ROIs shaped (n, Ny, Nx), got {r.shape}")
    if not np.isfinite(r).all():
        raise NPSError("the ROIs hold non-finite values")
    dy, dx = _spacing(spacing)
    n_y, n_x = r.shape[1:]
    r = r - r.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(r)) ** 2
    nps = np.fft.fftshift(power.mean(axis=0)) * (dx * dy) / (n_x * n_y)
    fy = np.fft.fftshift(np.fft.fftfreq(n_y, d=dy))
    fx = np.fft.fftshift(np.fft.fftfreq(n_x, d=dx))
    return nps, fy, fx


def radial_average(nps: np.ndarray, fy: np.ndarray, fx: np.ndarray,
                   bin_width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the 2-D NPS over rings of |f|; ``(f_centres, nps_r)`` up to the smaller Nyquist
    frequency (the corners beyond it are sampled only along diagonals). Bins are
    ``bin_width`` wide (default: the coarser frequency step ``1 / (N·Δ)``); the first bin holds
    f = 0, where mean detrending leaves ~0."""
    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    radius = np.hypot(fyy, fxx)
    step = max(abs(fy[1] - fy[0]), abs(fx[1] - fx[0])) if bin_width is None else float(bin_width)
    if not step > 0:
        raise NPSError(f"bin_width={bin_width!r}: expected a positive frequency step")
    f_max = min(np.abs(fy).max(), np.abs(fx).max())
    idx = np.floor(radius / step + 0.5).astype(int)          # bin k: |f| in [(k-½)Δf, (k+½)Δf)
    n_bins = int(np.floor(f_max / step + 0.5)) + 1
    keep = idx < n_bins
    sums = np.bincount(idx[keep], weights=nps[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        nps_r = sums / counts
    centres = np.arange(n_bins) * step
    ok = counts > 0
    return centres[ok], nps_r[ok]


@dataclass
class NPSResult:
    """A 2-D NPS and its radial average, with what is needed to label a plot."""

    nps2d: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    freq: np.ndarray
    nps: np.ndarray
    n_rois: int
    roi_size: int
    variance: float          # mean pixel variance of the detrended ROIs
    spacing: tuple[float, float] | None

    @property
    def integral(self) -> float:
        """∫∫ NPS df — equals ``variance`` (Parseval), a check on the scaling."""
        return float(self.nps2d.sum() * abs(self.fy[1] - self.fy[0]) * abs(self.fx[1] - self.fx[0]))

    @property
    def freq_unit(self) -> str:
        return "cycles/pixel" if self.spacing is None else "cycles/mm"

    def nps_unit(self, unit: str = "") -> str:
        u = f"{unit}²·" if unit else ""
        return f"{u}px²" if self.spacing is None else f"{u}mm²"


def noise_power_spectrum(noise: Any, size: int = 64, spacing: float | Sequence[float] | None = None,
                         stride: int | None = None, mask: Any = None) -> NPSResult:
    """2-D NPS and radial average of one 2-D noise image, a stack ``(k, H, W)`` or a list of
    2-D images of any shapes (their ROIs are pooled); ``mask`` in the same form (or ``None``).
    ``spacing`` (Δy, Δx) in mm, or ``None`` (per pixel)."""
    if isinstance(noise, (list, tuple)):
        images = [np.asarray(n, dtype=np.float64) for n in noise]
    else:
        a = np.asarray(noise, dtype=np.float64)
        if a.ndim not in (2, 3):
            raise NPSError(f"expected a 2-D noise image or a stack (k, H, W), got shape {a.shape}")
        images = [a] if a.ndim == 2 else list(a)
    if mask is None:
        masks = [None] * len(images)
    elif isinstance(mask, (list, tuple)) or np.ndim(mask) == 3:
        masks = list(mask)
    else:
        masks = [mask]
    if len(masks) != len(images):
        raise NPSError(f"{len(masks)} mask(s) for {len(images)} noise image(s)")
    if not images:
        raise NPSError("no noise image given")
    rois = np.concatenate([extract_rois(im, size, stride, m) for im, m in zip(images, masks)])
    nps, fy, fx = nps_2d(rois, spacing)
    freq, nps_r = radial_average(nps, fy, fx)
    detrended = rois - rois.mean(axis=(1, 2), keepdims=True)
    return NPSResult(nps, fy, fx, freq, nps_r, len(rois), int(size), float((detrended ** 2).mean()),
                     None if spacing is None else _spacing(spacing))
