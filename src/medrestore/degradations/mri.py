"""MRI degradations in k-space.

MRI measures the Fourier transform of the (complex) magnetisation; a low-resolution scan
samples only the central part of k-space. :func:`kspace_truncate` reproduces that: a centred,
orthonormal 2-D FFT, keep the central ``1/scale`` of k-space along each axis, zero-fill the
rest (so the output stays on the high-resolution grid), inverse FFT, magnitude. This is the
degradation used by the TAT / AMIR MRI super-resolution protocols; it produces the Gibbs
ringing and blur of a real low-resolution acquisition, not the aliasing of image-space
decimation.

:func:`rician_noise` adds the noise of magnitude images: independent Gaussian noise on the real
and imaginary channels, then the modulus.

:func:`downsample` is the MRI super-resolution degradation with a choice of method: k-space
truncation (default, the TAT / AMIR protocol) or MATLAB-bicubic down- and up-sampling of the
magnitude image (the protocol of SR papers that treat MR slices like photographs), with
optional Rician noise.
"""

from __future__ import annotations

import numpy as np


def _fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _ifft2c(k: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def central_band(n: int, scale: float) -> slice:
    """Indices of the kept central k-space lines of an axis of length ``n`` (after fftshift)."""
    keep = max(1, int(round(n / float(scale))))
    start = n // 2 - keep // 2
    return slice(start, start + keep)


def kspace_mask(shape: tuple[int, int], scale: float) -> np.ndarray:
    """Boolean H×W mask of the central ``1/scale × 1/scale`` block of centred k-space."""
    h, w = shape[-2:]
    mask = np.zeros((h, w), dtype=bool)
    mask[central_band(h, scale), central_band(w, scale)] = True
    return mask


def kspace_truncate(img: np.ndarray, scale: float = 4, magnitude: bool = True) -> np.ndarray:
    """Low-resolution MR image on the original grid by k-space truncation and zero-filling.

    Parameters
    ----------
    img : H×W image (real or complex), or ``…×H×W`` (each 2-D slice is processed alone).
    scale : resolution reduction per axis (2 keeps the central half of k-space lines in each
        direction, 4 a quarter).
    magnitude : return ``|x|`` (what a magnitude MR image is). ``False`` returns the complex
        zero-filled reconstruction, whose spectrum is exactly band-limited.
    """
    if float(scale) < 1:
        raise ValueError(f"k-space truncation scale must be >= 1, got {scale}")
    x = np.asarray(img)
    if x.ndim < 2:
        raise ValueError(f"kspace_truncate needs an image (…×H×W), got shape {x.shape}")
    k = _fft2c(x.astype(np.complex128))
    k = k * kspace_mask(x.shape[-2:], scale)
    out = _ifft2c(k)
    if magnitude:
        return np.abs(out).astype(np.float32)
    return out.astype(np.complex64)


def rician_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude-image noise: ``sqrt((x + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma^2)``.

    ``sigma`` is in the image's own units (e.g. 0.02 for an image normalised to [0, 1]). The
    background of the result follows a Rayleigh distribution, as in real magnitude images."""
    if float(sigma) < 0:
        raise ValueError(f"rician_noise sigma must be >= 0, got {sigma}")
    x = np.abs(np.asarray(img, dtype=np.float64))
    n1 = rng.normal(0.0, float(sigma), size=x.shape)
    n2 = rng.normal(0.0, float(sigma), size=x.shape)
    return np.sqrt((x + n1) ** 2 + n2 ** 2).astype(np.float32)


#: MRI down-sampling methods of :func:`downsample`
MRI_METHODS = ("kspace", "bicubic")


def downsample(img: np.ndarray, scale: float = 4, method: str = "kspace",
               rician_sigma: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """Low-resolution MR magnitude image on the original grid.

    Parameters
    ----------
    img : H×W (or …×H×W, each slice alone) image, real or complex; its magnitude is used.
    scale : resolution reduction per axis (>= 1).
    method : ``"kspace"`` -- keep the central ``1/scale`` of k-space per axis, zero-fill,
        magnitude (:func:`kspace_truncate`; Gibbs ringing, no aliasing); ``"bicubic"`` --
        MATLAB-bicubic down-sampling by ``scale`` and up-sampling back to the input size
        (:func:`medrestore.degradations.resize.bicubic_sr`) of the magnitude image, its
        negative cubic overshoot clipped to 0.
    rician_sigma : std of the Gaussian noise on each of the real and imaginary channels, in the
        image's units (0 = no noise). Added to the low-resolution magnitude image with
        :func:`rician_noise`; a simplification, since a real low-resolution acquisition would
        measure band-limited noise in k-space.
    rng : generator for the noise (required when ``rician_sigma > 0``).

    Returns float32, same shape as ``img``, non-negative.
    """
    if method not in MRI_METHODS:
        raise ValueError(f"MRI downsample method must be one of {MRI_METHODS}, got {method!r}")
    if not float(scale) >= 1:
        raise ValueError(f"MRI downsample scale must be >= 1, got {scale}")
    if float(rician_sigma) < 0:
        raise ValueError(f"rician_sigma must be >= 0, got {rician_sigma}")
    if float(rician_sigma) > 0 and rng is None:
        raise ValueError("MRI downsample needs rng when rician_sigma > 0")
    x = np.asarray(img)
    if x.ndim < 2:
        raise ValueError(f"MRI downsample needs an image (…×H×W), got shape {x.shape}")
    if method == "kspace":
        low = kspace_truncate(x, scale).astype(np.float64)
    else:
        from medrestore.degradations.resize import bicubic_sr

        mag = np.abs(x).astype(np.float64)
        flat = mag.reshape((-1,) + mag.shape[-2:])
        low = np.stack([bicubic_sr(sl, scale, layout="hw") for sl in flat]).reshape(mag.shape)
        # cubic overshoot can dip below zero next to edges; a magnitude image cannot
        low = np.maximum(low.astype(np.float64), 0.0)
    if float(rician_sigma) > 0:
        return rician_noise(low, float(rician_sigma), rng)       # type: ignore[arg-type]
    return low.astype(np.float32)
