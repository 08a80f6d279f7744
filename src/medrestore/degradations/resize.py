"""MATLAB-compatible bicubic resizing (``imresize(A, scale, 'bicubic')``), written from its
documented definition, in numpy.

Algorithm (per spatial axis, then separably):

- Kernel: the Keys cubic convolution kernel with ``a = -0.5``,
  ``k(x) = 1.5|x|^3 - 2.5|x|^2 + 1`` for ``|x| <= 1``,
  ``-0.5|x|^3 + 2.5|x|^2 - 4|x| + 2`` for ``1 < |x| <= 2``, 0 beyond. It reproduces
  polynomials up to degree 2 exactly.
- Coordinates: output pixel ``u`` (1-based) samples the input at
  ``x = u / s + 0.5 (1 - 1/s)`` (1-based), ``s`` being the scale factor of that axis, so pixel
  *areas* (not pixel centres at the corners) are aligned.
- Anti-aliasing: when shrinking (``s < 1``) with ``antialiasing=True`` the kernel is stretched to
  ``s * k(s x)`` and its support widens from 4 to ``4 / s`` input pixels (a low-pass filter
  matched to the new sampling rate).
- Each output pixel uses ``ceil(width) + 2`` consecutive input indices starting at
  ``floor(x - width / 2)``; the weights are normalised to sum 1 (so constants are kept) and
  indices outside the image are mirrored symmetrically (``… 2 1 | 1 2 … n | n n-1 …``), as
  current MATLAB releases do. Older releases clamped the indices instead (replicating the
  end pixels); ``border="replicate"`` reproduces those. The two
  differ only within ``2 / min(s, 1)`` pixels of the image border.
- Output size ``ceil(n * s)`` when a scale is given; with ``output_shape`` the scale of each
  axis is ``out / in``.
- Passes: the axis with the smaller scale is resized first (the order MATLAB uses: fewer
  samples to carry through the second pass). For float input the order changes nothing but
  rounding; integer input is rounded (half away from zero) and saturated to its type after
  **each** pass, as MATLAB's compiled kernel returns the input class, so there the order
  matters.

Computation is float64 with per-axis index/weight matrices (``out × taps``); the result is
float32, or the input's integer type (e.g. uint8) for integer input.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from medrestore.degradations.natural import _detect_layout

#: Support of the (unstretched) Keys kernel in input pixels.
KERNEL_WIDTH = 4.0


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with ``a = -0.5`` (support [-2, 2])."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def output_length(n: int, scale: float) -> int:
    """MATLAB's output size for a scale factor: ``ceil(n * scale)``."""
    return int(math.ceil(int(n) * float(scale)))


BORDERS = ("symmetric", "replicate")


def contributions(in_len: int, out_len: int, scale: float, antialiasing: bool = True,
                  border: str = "symmetric") -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices (both ``out_len × taps``) of one axis.

    Row ``u`` holds the normalised weights of output pixel ``u`` and the input indices they
    apply to (mirrored, or clamped with ``border="replicate"``); taps whose weight is zero for
    every output pixel are dropped."""
    if border not in BORDERS:
        raise ValueError(f"resize border must be one of {BORDERS}, got {border!r}")
    scale = float(scale)
    if not scale > 0 or in_len < 1 or out_len < 1:
        raise ValueError(f"resize needs positive sizes and scale, got in={in_len}, out={out_len}, scale={scale}")
    if scale < 1.0 and antialiasing:
        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)
        width = KERNEL_WIDTH / scale
    else:
        kernel, width = cubic, KERNEL_WIDTH
    u = np.arange(1, out_len + 1, dtype=np.float64)
    x = u / scale + 0.5 * (1.0 - 1.0 / scale)                   # 1-based input coordinate
    left = np.floor(x - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]   # 1-based, may be outside
    w = kernel(x[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    if border == "replicate":
        idx0 = np.clip(idx.astype(np.int64) - 1, 0, in_len - 1)
    else:
        # symmetric mirror: the sequence 1..n, n..1 repeats with period 2n
        period = 2 * in_len
        m = np.mod(idx.astype(np.int64) - 1, period)
        idx0 = np.where(m < in_len, m, period - 1 - m)
    used = np.any(w != 0.0, axis=0)
    return w[:, used], idx0[:, used].astype(np.intp)


def _round_saturate(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    r = np.sign(x) * np.floor(np.abs(x) + 0.5)                  # MATLAB rounds half away from 0
    return np.clip(r, info.min, info.max)


def _resize_axis(x: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    xm = np.moveaxis(x, axis, 0)
    out = np.zeros((weights.shape[0],) + xm.shape[1:], dtype=np.float64)
    bshape = (weights.shape[0],) + (1,) * (xm.ndim - 1)
    for t in range(weights.shape[1]):                           # taps: a handful, loop is cheap
        out += weights[:, t].reshape(bshape) * xm[indices[:, t]]
    return np.moveaxis(out, 0, axis)


def imresize(img: np.ndarray, scale: float | None = None,
             output_shape: Sequence[int] | None = None, *, antialiasing: bool = True,
             layout: str | None = None, border: str = "symmetric") -> np.ndarray:
    """Bicubic resize exactly as MATLAB's ``imresize(img, scale)`` / ``imresize(img, [h w])``.

    Parameters
    ----------
    img : H×W, H×W×C or C×H×W array (layout detected for C in 1, 3, 4, or given with
        ``layout='hw'|'hwc'|'chw'``), any real dtype.
    scale : one factor for both spatial axes (< 1 shrinks); output size ``ceil(n * scale)``.
    output_shape : ``(rows, cols)`` instead of ``scale``; each axis then uses ``out / in``.
    antialiasing : stretch the kernel when shrinking (MATLAB's default for bicubic).
    border : ``"symmetric"`` (current MATLAB) or ``"replicate"`` (older MATLAB releases).

    Returns float32 for float/bool input; integer input (uint8, uint16, …) comes back in its
    own type, rounded and saturated like MATLAB.
    """
    x = np.asarray(img)
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize needs exactly one of scale or output_shape")
    if np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"imresize needs a real-valued image, got dtype {x.dtype}")
    lay = _detect_layout(x, layout)
    axes = (1, 2) if lay == "chw" else (0, 1)
    in_shape = (x.shape[axes[0]], x.shape[axes[1]])
    if scale is not None:
        s = float(scale)
        if not (s > 0 and math.isfinite(s)):
            raise ValueError(f"imresize scale must be a positive number, got {scale!r}")
        scales = (s, s)
        out_shape = (output_length(in_shape[0], s), output_length(in_shape[1], s))
    else:
        out_shape = tuple(int(n) for n in output_shape)          # type: ignore[union-attr]
        if len(out_shape) != 2 or min(out_shape) < 1:
            raise ValueError(f"imresize output_shape must be two positive ints, got {output_shape!r}")
        scales = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    integer = np.issubdtype(x.dtype, np.integer)
    y = x.astype(np.float64)
    # stable sort: on a tie rows go first, as in MATLAB
    for d in sorted(range(2), key=lambda k: scales[k]):
        w, idx = contributions(in_shape[d], out_shape[d], scales[d], antialiasing, border)
        y = _resize_axis(y, axes[d], w, idx)
        if integer:
            y = _round_saturate(y, x.dtype)
    if integer:
        return y.astype(x.dtype)
    return y.astype(np.float32)


def bicubic_sr(img: np.ndarray, scale: float, *, upsample: bool = True,
               antialiasing: bool = True, layout: str | None = None) -> np.ndarray:
    """The bicubic super-resolution degradation: MATLAB-bicubic down-sampling by ``scale``.

    ``upsample=False`` returns the low-resolution image ``imresize(img, 1/scale)`` (size
    ``ceil(n / scale)``). ``upsample=True`` (default) resizes it back to the input size with
    MATLAB bicubic, the input of scale-1 networks that work on the HR grid. For sizes that
    are multiples of ``scale`` (the benchmarks crop HR images so) that equals
    ``imresize(lr, scale)``; otherwise the up-sampling scale is ``in / ceil(in / scale)`` per
    axis. Integer input stays integer (as benchmark LR PNGs are 8-bit), float input gives
    float32 without clipping (bicubic overshoot is kept)."""
    s = float(scale)
    if not s >= 1.0:
        raise ValueError(f"bicubic_sr scale must be >= 1, got {scale}")
    x = np.asarray(img)
    lay = _detect_layout(x, layout)
    axes = (1, 2) if lay == "chw" else (0, 1)
    lr = imresize(x, 1.0 / s, antialiasing=antialiasing, layout=lay)
    if not upsample:
        return lr
    return imresize(lr, output_shape=(x.shape[axes[0]], x.shape[axes[1]]),
                    antialiasing=antialiasing, layout=lay)
