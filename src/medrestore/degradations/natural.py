"""Degradations of natural RGB photographs (float images in [0, 1]).

Images may be ``H×W``, ``H×W×C`` or ``C×H×W`` (C in 1, 3, 4); the layout is detected from the
shape (channels-last wins when both ends could be channels) or given with ``layout=``, and the
output has the input's layout. All functions return float32.

- :func:`bicubic_down_up`: the classic SR degradation, bicubic down-sampling by ``scale`` and
  bicubic up-sampling back to the input size (our networks are scale-1, so the LQ input lives on
  the HR grid). Implemented with :func:`torch.nn.functional.interpolate` (Keys cubic, a=-0.75,
  with anti-aliasing when down-sampling); close to, but **not** bit-exact with, MATLAB's
  ``imresize`` used by the SR benchmarks. The demo data is built with it; for the MATLAB
  protocol use :func:`medrestore.degradations.resize.bicubic_sr`.
- :func:`gaussian_noise`: additive white Gaussian noise, sigma on the 0-255 scale.
- :func:`rain_streaks`: synthetic rain (sparse seeds motion-blurred along one direction, added
  with a screen blend), in the spirit of Rain100L's light rain.
- :func:`motion_blur`: convolution with a straight line kernel (uniform camera motion).
- :func:`haze`: atmospheric scattering model ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_CHANNELS = (1, 3, 4)


def _detect_layout(x: np.ndarray, layout: str | None) -> str:
    if layout is not None:
        if layout not in ("hw", "hwc", "chw"):
            raise ValueError(f"layout must be 'hw', 'hwc' or 'chw', got {layout!r}")
        if x.ndim != (2 if layout == "hw" else 3):
            raise ValueError(f"layout {layout!r} does not fit an array of shape {x.shape}")
        return layout
    if x.ndim == 2:
        return "hw"
    if x.ndim == 3 and x.shape[-1] in _CHANNELS:
        return "hwc"
    if x.ndim == 3 and x.shape[0] in _CHANNELS:
        return "chw"
    raise ValueError(f"expected an H×W, H×W×C or C×H×W image (C in {_CHANNELS}), got shape {x.shape}")


def to_hwc(img: np.ndarray, layout: str | None = None) -> tuple[np.ndarray, str]:
    """``(H×W×C float64 view of img, detected layout)``."""
    x = np.asarray(img)
    lay = _detect_layout(x, layout)
    x = x.astype(np.float64)
    if lay == "hw":
        return x[..., None], lay
    if lay == "chw":
        return np.moveaxis(x, 0, -1), lay
    return x, lay


def from_hwc(x: np.ndarray, layout: str) -> np.ndarray:
    """Back from H×W×C to ``layout``, as float32."""
    if layout == "hw":
        x = x[..., 0]
    elif layout == "chw":
        x = np.moveaxis(x, -1, 0)
    return np.ascontiguousarray(x, dtype=np.float32)


def line_kernel(length: float, angle_deg: float, size: int | None = None) -> np.ndarray:
    """Normalised (sum 1) anti-aliased line of ``length`` px through the kernel centre.

    ``angle_deg`` is measured from the image's vertical axis (0 = a vertical line, positive =
    top leaning right)."""
    length = float(length)
    if length < 1:
        raise ValueError(f"line length must be >= 1 pixel, got {length}")
    size = int(size or (2 * int(np.ceil(length / 2)) + 1))
    c = size // 2
    a = np.deg2rad(angle_deg)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, int(np.ceil(length * 4))))
    rows = c - t * np.cos(a)
    cols = c + t * np.sin(a)
    k = np.zeros((size, size))
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):          # bilinear splatting of the sample points
        for dc, wc in ((0, 1 - fc), (1, fc)):
            rr, cc = r0 + dr, c0 + dc
            ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
            np.add.at(k, (rr[ok], cc[ok]), (wr * wc)[ok])
    return k / k.sum()


def _convolve_channels(x: np.ndarray, kernel: np.ndarray, mode: str = "reflect") -> np.ndarray:
    from scipy.ndimage import convolve

    return np.stack([convolve(x[..., ch], kernel, mode=mode) for ch in range(x.shape[-1])], -1)


def bicubic_down_up(img: np.ndarray, scale: float, *, clip: bool = True,
                    layout: str | None = None) -> np.ndarray:
    """Bicubic down-sampling by ``scale`` (anti-aliased) then bicubic up-sampling to the input size.

    The low-resolution size is ``round(H / scale) × round(W / scale)``. torch/PIL-style cubic
    convolution (a = -0.75) with anti-aliasing; not MATLAB-exact ``imresize``. ``clip`` limits
    the cubic overshoot to [0, 1]."""
    import torch
    import torch.nn.functional as F

    if float(scale) < 1:
        raise ValueError(f"bicubic_down_up scale must be >= 1, got {scale}")
    x, lay = to_hwc(img, layout)
    h, w = x.shape[:2]
    lr_size = (max(1, int(round(h / float(scale)))), max(1, int(round(w / float(scale)))))
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))[None]
    lr = F.interpolate(t, size=lr_size, mode="bicubic", align_corners=False, antialias=True)
    up = F.interpolate(lr, size=(h, w), mode="bicubic", align_corners=False)
    out = np.moveaxis(up[0].numpy(), 0, -1)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return from_hwc(out, lay)


def gaussian_noise(img: np.ndarray, sigma_255: float, rng: np.random.Generator, *,
                   clip: bool = True) -> np.ndarray:
    """Additive white Gaussian noise with std ``sigma_255 / 255`` (image in [0, 1]).

    ``clip=True`` (default) clips to [0, 1] like a saved 8-bit image; the benchmark protocol
    (noise on the float image, no clipping) is ``clip=False``."""
    if float(sigma_255) < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma_255}")
    x = np.asarray(img, dtype=np.float64)
    out = x + rng.normal(0.0, float(sigma_255) / 255.0, size=x.shape)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def rain_streaks(img: np.ndarray, rng: np.random.Generator, density: float | None = None,
                 length: float | None = None, angle: float | None = None,
                 intensity: float | None = None, *, width: float = 0.6,
                 layout: str | None = None, return_layer: bool = False):
    """Add synthetic light rain streaks.

    Model: rain drops are sparse seeds (a ``density`` fraction of pixels, random brightness in
    [0.4, 1]) smeared by motion blur into streaks of ``length`` px along one direction
    ``angle`` (degrees from vertical), thickened by a Gaussian of std ``width`` px, scaled so a
    full streak reaches ``intensity``, and composited with a screen blend
    ``I = 1 - (1 - J)(1 - R)`` (rain adds light and never darkens). Parameters left as ``None``
    are drawn from ``rng`` in Rain100L-like ranges: density 0.002-0.006, length 8-20 px,
    angle -25..25 degrees, intensity 0.45-0.75.

    Returns the rainy image (same layout as ``img``), and the rain layer ``R`` (H×W) too when
    ``return_layer`` is true.
    """
    from scipy.ndimage import gaussian_filter, gaussian_filter1d

    x, lay = to_hwc(img, layout)
    h, w = x.shape[:2]
    density = float(rng.uniform(0.002, 0.006) if density is None else density)
    length = float(rng.uniform(8.0, 20.0) if length is None else length)
    angle = float(rng.uniform(-25.0, 25.0) if angle is None else angle)
    intensity = float(rng.uniform(0.45, 0.75) if intensity is None else intensity)
    if not 0.0 <= density <= 1.0 or not 0.0 <= intensity <= 1.0:
        raise ValueError(f"rain density and intensity must be in [0, 1], got {density}, {intensity}")
    seeds = (rng.random((h, w)) < density) * rng.uniform(0.4, 1.0, size=(h, w))
    layer = _convolve_channels(seeds[..., None], line_kernel(length, angle))[..., 0] * length
    if width > 0:
        # blurring a thin line lowers its ridge by the 1-D kernel's central weight: undo that
        ridge = gaussian_filter1d(np.eye(1, 17, 8)[0], width)[8]
        layer = gaussian_filter(layer, width) / ridge
    layer = np.clip(layer, 0.0, 1.0) * intensity
    out = 1.0 - (1.0 - np.clip(x, 0.0, 1.0)) * (1.0 - layer[..., None])
    out = from_hwc(out, lay)
    return (out, layer.astype(np.float32)) if return_layer else out


#: scipy.ndimage boundary modes accepted by :func:`motion_blur`
BLUR_BOUNDARIES = ("reflect", "wrap", "nearest", "mirror")


def motion_blur(img: np.ndarray, rng: np.random.Generator | None = None,
                length: float | None = None, angle: float | None = None, *,
                layout: str | None = None, boundary: str = "reflect") -> np.ndarray:
    """Uniform linear motion blur: convolution with a ``length``-px line at ``angle`` degrees
    (from vertical). ``None`` parameters are drawn from ``rng`` (length 5-15 px, angle 0-180
    degrees).

    The kernel sums to 1, so no light is gained or lost. ``boundary`` says what lies outside
    the frame (a scipy.ndimage mode): ``"reflect"`` (default) mirrors the image, a
    simplification of the unseen scene a real exposure would smear in; ``"wrap"`` treats the
    image as periodic, for which the mean is preserved exactly."""
    if (length is None or angle is None) and rng is None:
        raise ValueError("motion_blur needs rng when length or angle is not given")
    if boundary not in BLUR_BOUNDARIES:
        raise ValueError(f"motion_blur boundary must be one of {BLUR_BOUNDARIES}, got {boundary!r}")
    length = float(rng.uniform(5.0, 15.0) if length is None else length)
    angle = float(rng.uniform(0.0, 180.0) if angle is None else angle)
    x, lay = to_hwc(img, layout)
    return from_hwc(_convolve_channels(x, line_kernel(length, angle), boundary), lay)


def haze(img: np.ndarray, transmission: float | np.ndarray | None = None, beta: float = 1.0,
         airlight: float | Sequence[float] = 0.8, depth: float | np.ndarray = 1.0, *,
         layout: str | None = None) -> np.ndarray:
    """Atmospheric scattering (Koschmieder) model ``I = J t + A (1 - t)``.

    ``transmission`` ``t`` (scalar or H×W in (0, 1]) is used if given; otherwise
    ``t = exp(-beta * depth)`` with scattering coefficient ``beta`` (per depth unit) and
    ``depth`` (scalar or H×W map, same unit). ``airlight`` ``A`` is a scalar or one value per
    channel, in image units. With a scalar depth the haze is spatially uniform."""
    x, lay = to_hwc(img, layout)
    if transmission is None:
        t = np.exp(-float(beta) * np.asarray(depth, dtype=np.float64))
    else:
        t = np.asarray(transmission, dtype=np.float64)
    if np.any(t < 0) or np.any(t > 1):
        raise ValueError("haze transmission must lie in [0, 1]")
    if t.ndim == 2:
        t = t[..., None]
    a = np.asarray(airlight, dtype=np.float64).reshape(-1)
    if a.size not in (1, x.shape[-1]):
        raise ValueError(f"airlight needs 1 or {x.shape[-1]} values, got {a.size}")
    return from_hwc(np.clip(x * t + a * (1.0 - t), 0.0, 1.0), lay)
