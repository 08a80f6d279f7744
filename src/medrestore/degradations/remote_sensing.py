"""Degradations of multispectral satellite images (float bands normalised to [0, 1]).

- :func:`landsat_qa_cloud_mask`: a real cloud mask from a Landsat-8 QA band (bits 14-15 =
  cloud confidence).
- :func:`cloud_overlay`: thin clouds, ``I = (1 - alpha) J + alpha * b``: the scene ``J`` seen
  through a semi-transparent cloud of brightness ``b`` with opacity ``alpha`` (soft edges from a
  Gaussian-blurred binary mask, thickness modulated by smooth random texture). Thick, opaque
  clouds (``alpha`` -> 1) hide the surface and are inpainting rather than restoration; keep
  ``max_opacity`` below 1 for the thin-cloud task.
- :func:`fractal_cloud`: a synthetic cloud opacity map when no real mask is at hand. Cloud
  fields are close to scale-invariant, so their power spectrum follows a power law
  ``P(f) ~ f^-beta``. :func:`fractal_field` draws such a Gaussian random field by filtering white
  noise in the Fourier domain (amplitude ``f^(-beta/2)``); :func:`fractal_cloud` thresholds it at
  the quantile that gives the requested cloud cover and ramps the opacity from 0 at the cloud
  edge to 1 inside (soft edges, thickness following the field). Pass the result to
  :func:`cloud_overlay`.
- :func:`haze`: the atmospheric scattering model, shared with :mod:`.natural`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medrestore.degradations.natural import from_hwc, haze, to_hwc

__all__ = ["cloud_overlay", "fractal_cloud", "fractal_field", "haze", "landsat_qa_cloud_mask"]

#: opacities below this are set to exactly 0, so cloud-free pixels stay bit-identical
ALPHA_FLOOR = 1e-3


def landsat_qa_cloud_mask(qa: np.ndarray, min_confidence: int = 2) -> np.ndarray:
    """Boolean cloud mask from a Landsat-8 (pre-collection / Collection 1) ``BQA`` band.

    Bits 14-15 hold the cloud confidence (0 not determined, 1 low, 2 medium, 3 high); pixels
    with confidence ``>= min_confidence`` (default: medium or high) are cloud."""
    qa = np.asarray(qa)
    if not np.issubdtype(qa.dtype, np.integer):
        raise ValueError(f"Landsat QA band must be an integer array, got {qa.dtype}")
    if not 0 <= int(min_confidence) <= 3:
        raise ValueError(f"min_confidence must be 0-3, got {min_confidence}")
    return ((qa.astype(np.uint16) >> 14) & 3) >= int(min_confidence)


#: Default spectral exponent of :func:`fractal_field` clouds (``P(f) ~ f^-3.5``, Hurst 0.75):
#: a few large cloud bodies with ragged, self-similar edges (smaller exponents give speckled,
#: fragmented cover; larger ones smooth blobs).
DEFAULT_CLOUD_BETA = 3.5


def _spectral_exponent(beta: float | None, hurst: float | None) -> float:
    if beta is not None and hurst is not None:
        raise ValueError("give either beta or hurst for a fractal field, not both")
    if hurst is not None:
        if not 0.0 < float(hurst) < 1.0:
            raise ValueError(f"hurst exponent must be in (0, 1), got {hurst}")
        return 2.0 * float(hurst) + 2.0                      # 2-D fractional Brownian surface
    b = DEFAULT_CLOUD_BETA if beta is None else float(beta)
    if not 0.0 <= b <= 6.0:
        raise ValueError(f"spectral exponent beta must be in [0, 6], got {beta}")
    return b


def fractal_field(shape: tuple[int, int], rng: np.random.Generator, beta: float | None = None, *,
                  hurst: float | None = None) -> np.ndarray:
    """Gaussian random field (H×W, zero mean, unit std) with power spectrum ``~ f^-beta``.

    ``f`` is the radial spatial frequency in cycles per pixel. White Gaussian noise is
    filtered in the Fourier domain by ``f^(-beta/2)`` (the mean, ``f = 0``, is removed).
    ``hurst`` may be given instead of ``beta``: for a 2-D fractional Brownian surface
    ``beta = 2 H + 2``. ``beta = 0`` is white noise; larger ``beta`` gives smoother, larger
    structures. The field is periodic (FFT), so opposite borders match."""
    h, w = (int(n) for n in shape)
    if h < 2 or w < 2:
        raise ValueError(f"fractal field shape must be at least 2×2, got {shape}")
    b = _spectral_exponent(beta, hurst)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    amp = np.zeros_like(f)
    amp[f > 0] = f[f > 0] ** (-b / 2.0)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((h, w))) * amp, s=(h, w))
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def fractal_cloud(shape: tuple[int, int], rng: np.random.Generator, *, coverage: float = 0.4,
                  beta: float | None = None, hurst: float | None = None,
                  softness: float = 1.0) -> np.ndarray:
    """Cloud opacity map (H×W, float64 in [0, 1]) from a thresholded power-law field.

    A :func:`fractal_field` ``F`` (unit std) is cut at its ``1 - coverage`` quantile ``q``:
    pixels with ``F > q`` are cloud, so the fraction of pixels with non-zero opacity equals
    ``coverage`` (up to one pixel). Inside, the opacity rises smoothly (smoothstep) from 0 at
    the edge to 1 where ``F >= q + softness``: ``softness`` (in units of the field's std) sets
    how wide the soft edge is, and thick cores follow the field's peaks. ``beta`` / ``hurst``
    as in :func:`fractal_field`.

    Simplification: a single-layer, purely 2-D texture; no cloud shadows, no height or
    illumination geometry, no spectral dependence (the cloud is grey in every band)."""
    if not 0.0 <= float(coverage) <= 1.0:
        raise ValueError(f"cloud coverage must be in [0, 1], got {coverage}")
    if not float(softness) > 0:
        raise ValueError(f"cloud edge softness must be > 0, got {softness}")
    field = fractal_field(shape, rng, beta, hurst=hurst)
    if float(coverage) == 0.0:
        return np.zeros(field.shape)
    q = np.quantile(field, 1.0 - float(coverage))
    t = np.clip((field - q) / float(softness), 0.0, 1.0)
    opacity = t * t * (3.0 - 2.0 * t)
    if float(coverage) == 1.0:
        opacity = np.maximum(opacity, ALPHA_FLOOR)      # every pixel is (at least thinly) cloud
    return opacity


def _smooth_texture(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Smooth random field in [0, 1] (Gaussian-filtered white noise, min-max scaled)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo) if hi > lo else np.zeros(shape)


def cloud_opacity(cloud: np.ndarray, rng: np.random.Generator, max_opacity: float = 0.6,
                  blur_sigma: float = 3.0, texture: float = 0.35,
                  texture_sigma: float = 8.0) -> np.ndarray:
    """Opacity map ``alpha`` (H×W, in [0, max_opacity]) from a cloud mask or opacity map.

    A boolean mask is blurred with a Gaussian of std ``blur_sigma`` px (soft cloud edges); a
    float map in [0, 1] is taken as relative thickness as it is. The peak opacity is drawn in
    ``[0.7, 1] * max_opacity`` and the thickness is modulated by ``1 - texture * smooth noise``.
    Values below :data:`ALPHA_FLOOR` become exactly 0."""
    from scipy.ndimage import gaussian_filter

    c = np.asarray(cloud)
    if c.ndim != 2:
        raise ValueError(f"cloud mask / opacity must be H×W, got shape {c.shape}")
    if not 0.0 <= float(max_opacity) <= 1.0:
        raise ValueError(f"max_opacity must be in [0, 1], got {max_opacity}")
    if c.dtype == bool:
        thick = gaussian_filter(c.astype(np.float64), blur_sigma) if blur_sigma > 0 else c.astype(np.float64)
    else:
        thick = c.astype(np.float64)
        if thick.min() < 0 or thick.max() > 1:
            raise ValueError("a float cloud opacity map must lie in [0, 1]")
    peak = float(max_opacity) * rng.uniform(0.7, 1.0)
    alpha = thick * peak * (1.0 - float(texture) * _smooth_texture(c.shape, rng, texture_sigma))
    alpha[alpha < ALPHA_FLOOR] = 0.0
    return alpha


def cloud_overlay(img: np.ndarray, cloud: np.ndarray, rng: np.random.Generator,
                  max_opacity: float = 0.6, brightness: float | Sequence[float] = 0.95, *,
                  blur_sigma: float = 3.0, texture: float = 0.35, layout: str | None = None,
                  return_alpha: bool = False):
    """Overlay thin clouds on a clear image: ``I = (1 - alpha) J + alpha * brightness``.

    Parameters
    ----------
    img : clear image in [0, 1] (H×W, H×W×C or C×H×W).
    cloud : H×W boolean cloud mask (e.g. from :func:`landsat_qa_cloud_mask`) or float relative
        thickness in [0, 1]; see :func:`cloud_opacity`.
    rng : draws the peak opacity and the thickness texture.
    max_opacity : largest opacity (0.6 = thin cloud: 40 % of the surface signal still passes).
    brightness : cloud reflectance in normalised units, scalar or one per band.

    Pixels where ``alpha == 0`` are returned unchanged. Returns the cloudy image (and ``alpha``
    when ``return_alpha``)."""
    x, lay = to_hwc(img, layout)
    if tuple(x.shape[:2]) != tuple(np.shape(cloud)[:2]):
        raise ValueError(f"cloud mask shape {np.shape(cloud)} does not match image {x.shape[:2]}")
    alpha = cloud_opacity(cloud, rng, max_opacity, blur_sigma=blur_sigma, texture=texture)
    b = np.asarray(brightness, dtype=np.float64).reshape(-1)
    if b.size not in (1, x.shape[-1]):
        raise ValueError(f"cloud brightness needs 1 or {x.shape[-1]} values, got {b.size}")
    a = alpha[..., None]
    out = np.where(a > 0, (1.0 - a) * x + a * b, x)
    out = from_hwc(out, lay)
    return (out, alpha.astype(np.float32)) if return_alpha else out
