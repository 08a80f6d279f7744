"""Line profiles through small high-contrast structures (lesion-like blobs, edges).

A profile is the image sampled along a segment with bilinear interpolation, one sample per
pixel of length, against the distance from the first end point (mm when a pixel spacing is
known). The line can be chosen automatically:

- ``find_blob``: the centre of the most *isolated* bright spot — the lightly smoothed image
  minus its maximum on a ring of radii ``2·radius`` to ``3·radius`` around each pixel. Edges,
  large bright regions and thin bright bands (bone, the table) reach the ring and score ≤ 0; a
  small structure brighter than everything around it (a lesion, calcification, contrast-filled
  vessel) scores its contrast. A linear filter (difference of Gaussians) would instead pick the
  corner of the brightest large structure, whose contrast dwarfs a lesion's;
- ``max_gradient_row``: the row with the largest mean absolute horizontal gradient (edges).

    y, x = find_blob(gt_hu, radius=3, mask=surrounded_by((gt_hu > -200) & (gt_hu < 300), 3))
    p0, p1 = line_through((y, x), gt_hu.shape, length=40)
    d, values = line_profile(gt_hu, p0, p1, spacing=(0.86, 0.86))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medrestore.errors import MedrestoreError


class ProfileError(MedrestoreError, ValueError):
    """An impossible profile request (shape, point outside the image, bad length)."""


def _image2d(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ProfileError(f"expected a 2-D image (or 1×H×W), got shape {np.shape(image)}")
    return a


def ring_footprint(radius: float) -> np.ndarray:
    """Boolean footprint of the ring of radii ``2·radius`` to ``3·radius`` (pixels)."""
    if not radius > 0:
        raise ProfileError(f"radius={radius!r}: expected a positive blob radius in pixels")
    outer = int(np.ceil(3 * radius))
    yy, xx = np.mgrid[-outer:outer + 1, -outer:outer + 1]
    rr = np.hypot(yy, xx)
    return (rr >= 2 * radius) & (rr <= 3 * radius)


def surrounded_by(region: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose whole ring (radii ``2·radius`` to ``3·radius``) lies in ``region`` — e.g.
    candidates for a lesion-like spot: anything at the centre, soft tissue all around."""
    from scipy.ndimage import binary_erosion

    r = np.asarray(region, dtype=bool)
    return binary_erosion(r, structure=ring_footprint(radius), border_value=0)


def find_blob(image: np.ndarray, radius: float = 3.0, mask: np.ndarray | None = None,
              border: int | None = None) -> tuple[int, int]:
    """``(row, col)`` of the most isolated bright spot of about ``radius`` pixels (see the
    module docstring), inside ``mask`` and at least ``border`` pixels (default the ring's outer
    radius) from the edges."""
    from scipy.ndimage import gaussian_filter, maximum_filter

    a = _image2d(image)
    if not radius > 0:
        raise ProfileError(f"radius={radius!r}: expected a positive blob radius in pixels")
    ring = ring_footprint(radius)
    outer = ring.shape[0] // 2
    smooth = gaussian_filter(a, radius / 2, mode="reflect")
    score = smooth - maximum_filter(smooth, footprint=ring, mode="reflect")
    valid = np.ones(a.shape, dtype=bool)
    b = outer if border is None else int(border)
    if b > 0:
        valid[:b] = valid[-b:] = False
        valid[:, :b] = valid[:, -b:] = False
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape:
            raise ProfileError(f"mask shape {m.shape} differs from the image shape {a.shape}")
        valid &= m
    if not valid.any():
        raise ProfileError("no candidate pixel: the mask and border leave nothing of the image")
    y, x = np.unravel_index(int(np.argmax(np.where(valid, score, -np.inf))), a.shape)
    return int(y), int(x)


def max_gradient_row(image: np.ndarray, border: int = 2) -> int:
    """The row with the largest mean |∂/∂x| (away from ``border`` rows at the top and bottom)."""
    a = _image2d(image)
    g = np.abs(np.diff(a, axis=1)).mean(axis=1)
    if border > 0 and a.shape[0] > 2 * border:
        g[:border] = g[-border:] = -np.inf
    return int(np.argmax(g))


def line_through(point: Sequence[float], shape: Sequence[int], length: float,
                 angle_deg: float = 0.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """End points ``((r0, c0), (r1, c1))`` of a segment of ``length`` pixels centred on ``point``
    at ``angle_deg`` (0 = along a row, 90 = along a column), clipped to the image."""
    h, w = int(shape[0]), int(shape[1])
    y, x = float(point[0]), float(point[1])
    if not (0 <= y <= h - 1 and 0 <= x <= w - 1):
        raise ProfileError(f"point {tuple(point)} lies outside the {h}×{w} image")
    if not length > 0:
        raise ProfileError(f"length={length!r}: expected a positive number of pixels")
    t = np.deg2rad(angle_deg)
    dy, dx = np.sin(t) * length / 2, np.cos(t) * length / 2

    def clip(r: float, c: float) -> tuple[float, float]:
        return float(np.clip(r, 0, h - 1)), float(np.clip(c, 0, w - 1))

    return clip(y - dy, x - dx), clip(y + dy, x + dx)


def line_profile(image: np.ndarray, p0: Sequence[float], p1: Sequence[float],
                 spacing: float | Sequence[float] | None = None, samples: int | None = None,
                 order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, values)`` along ``p0 → p1`` (``(row, col)`` points, pixels), bilinear
    (``order=1``) by default, ``samples`` points (default: one per pixel of length + 1).
    ``distance`` is in mm with ``spacing`` (Δrow, Δcol), else in pixels."""
    from scipy.ndimage import map_coordinates

    a = _image2d(image)
    (r0, c0), (r1, c1) = (tuple(map(float, p0)), tuple(map(float, p1)))
    for r, c in ((r0, c0), (r1, c1)):
        if not (0 <= r <= a.shape[0] - 1 and 0 <= c <= a.shape[1] - 1):
            raise ProfileError(f"end point {(r, c)} lies outside the {a.shape[0]}×{a.shape[1]} image")
    n = int(np.ceil(np.hypot(r1 - r0, c1 - c0))) + 1 if samples is None else int(samples)
    if n < 2:
        raise ProfileError(f"samples={samples!r}: a profile needs at least 2 points")
    t = np.linspace(0.0, 1.0, n)
    rows, cols = r0 + t * (r1 - r0), c0 + t * (c1 - c0)
    values = map_coordinates(a, np.stack([rows, cols]), order=order, mode="nearest")
    if spacing is None:
        sy = sx = 1.0
    else:
        sy, sx = (float(spacing), float(spacing)) if np.isscalar(spacing) else map(float, spacing)
        if not (sy > 0 and sx > 0):
            raise ProfileError(f"spacing={spacing!r}: expected positive pixel sizes (Δrow, Δcol)")
    distance = np.hypot((rows - r0) * sy, (cols - c0) * sx)
    return distance, values


def fwhm(distance: np.ndarray, values: np.ndarray, background: float | None = None,
         peak: int | None = None) -> float:
    """Full width at half maximum of a peak of a profile above ``background`` (default: the
    profile's median, the surroundings of a small structure), by linear interpolation between
    samples. ``peak``: the sample index of the peak to measure (default: the maximum); NaN if
    the half maximum is not crossed on both sides of it."""
    d, v = np.asarray(distance, float), np.asarray(values, float)
    base = float(np.median(v)) if background is None else float(background)
    k = int(np.argmax(v)) if peak is None else int(peak)
    if not 0 <= k < len(v):
        raise ProfileError(f"peak={peak}: expected a sample index below {len(v)}")
    half = base + (v[k] - base) / 2
    if not v[k] > half:
        return float("nan")
    left = np.nonzero(v[:k] <= half)[0]
    right = np.nonzero(v[k:] <= half)[0]
    if not len(left) or not len(right):
        return float("nan")
    i, j = left[-1], k + right[0]
    xl = d[i] + (half - v[i]) * (d[i + 1] - d[i]) / (v[i + 1] - v[i])
    xr = d[j - 1] + (half - v[j - 1]) * (d[j] - d[j - 1]) / (v[j] - v[j - 1])
    return float(xr - xl)


def peak_near(values: np.ndarray, index: int, window: int) -> int:
    """Index of the maximum of ``values`` within ``window`` samples of ``index``."""
    v = np.asarray(values, float)
    lo, hi = max(0, int(index) - int(window)), min(len(v), int(index) + int(window) + 1)
    if lo >= hi:
        raise ProfileError(f"index {index} lies outside the {len(v)}-sample profile")
    return lo + int(np.argmax(v[lo:hi]))
