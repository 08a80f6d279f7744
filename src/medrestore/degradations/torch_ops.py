"""Batched torch versions of the medical simulators (CT, MRI, PET), on any device.

The numpy operators (:mod:`~medrestore.degradations.ct`, :mod:`~medrestore.degradations.mri`,
:mod:`~medrestore.degradations.pet`) degrade one slice at a time in a data-loader worker; CT
there costs a scikit-image ``radon`` + ``iradon`` per patch. This module runs the same models on
a ``B×C×H×W`` tensor at once, on the CPU or on the training device:

* **CT** -- scikit-image's parallel-beam geometry reproduced exactly and stored as two sparse
  matrices per ``(size, n_angles)``: the projector (``radon(circle=False)``: the square image
  padded to ``ceil(sqrt(2)·s)``, rotated about pixel ``P // 2`` with bilinear interpolation and
  summed along rows, so each sinogram entry is a fixed weighted sum of pixels) and the
  back-projector (``iradon(filter_name="ramp", interpolation="linear", circle=False)``: linear
  interpolation of each filtered view at ``t = x cos θ − y sin θ``, zero outside the detector).
  The ramp filter is scikit-image's (the spatial-domain ramp of Kak & Slaney, eq. 61, zero
  padded to the next power of two ≥ ``2P`` and at least 64). Projection and back-projection are
  then one sparse × dense product each for the whole batch. The matrices are built on first
  use (a few seconds for 128²) and cached per device: about 4.2 weights per pixel and view,
  8 bytes each (15 MB for 64² crops, 0.11 GB for 128², 0.9 GB for 256²);
  :data:`MAX_CT_NNZ` refuses sizes whose matrices would not fit comfortably.
* **MRI** -- centred orthonormal FFT, the same central ``1/scale`` k-space block as
  :func:`medrestore.degradations.mri.kspace_mask`, zero-fill, magnitude; optional Rician noise.
* **PET** -- Poisson thinning ``Poisson(activity · count_scale / dose_reduction)`` rescaled.

Randomness: one :class:`torch.Generator` per sample (:func:`generators`), seeded by
:func:`torch_seed` from the same ``(seed, draw)`` pair that seeds the numpy path
(``np.random.default_rng((seed, draw))`` in :mod:`medrestore.datasets.pairs`), so a batch
result equals the per-sample results and a run is reproducible on a given device. Torch's and
numpy's generators differ, so the noisy outputs agree with the numpy path in distribution, not
draw for draw (``tests/test_torch_degradations.py`` measures both).

:func:`simulate_batch` is the batched counterpart of
:func:`medrestore.degradations.simulators.simulate` for the simulators in :data:`BATCHED`:
physical units in and out, the same parameter names and defaults.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from medrestore.degradations import ct as _ct
from medrestore.degradations import mri as _mri
from medrestore.degradations import pet as _pet

__all__ = ["BATCHED", "MAX_CT_NNZ", "fbp", "fbp_roundtrip", "generators", "kspace_truncate",
           "low_count_pet", "low_dose_ct", "radon", "rician_noise", "simulate_batch", "torch_seed"]

#: Largest number of stored weights (projector + back-projector) of one CT geometry; about
#: 8 bytes each. 256² crops need ~1.1e8; beyond that degrade in the workers (numpy path).
MAX_CT_NNZ = 400_000_000

#: The spawn key that separates the torch streams from the numpy stream of the same draw.
_TORCH_STREAM = (0x746F7263,)


# ------------------------------------------------------------------------------ randomness
def torch_seed(seed: int, draw: int) -> int:
    """A 63-bit torch seed determined by the data seed and the draw id (what seeds the numpy
    path), independent of the numpy stream of that draw."""
    seq = np.random.SeedSequence(entropy=[int(seed), int(draw)], spawn_key=_TORCH_STREAM)
    lo, hi = (int(v) for v in seq.generate_state(2, np.uint32))
    return ((hi << 32) | lo) & (2**63 - 1)


def generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample on ``device``, seeded with ``seeds`` (see :func:`torch_seed`)."""
    out = []
    for s in seeds:
        g = torch.Generator(device=torch.device(device))
        g.manual_seed(int(s))
        out.append(g)
    return out


def _check_gens(gens: Sequence[torch.Generator] | None, batch: int, what: str) -> Sequence[torch.Generator]:
    if gens is None or len(gens) != batch:
        n = "None" if gens is None else len(gens)
        raise ValueError(f"{what} needs one torch.Generator per sample ({batch}), got {n}")
    return gens


def _per_sample(fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], x: torch.Tensor,
                gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Draw sample ``b``'s noise from generator ``b`` only (so batch = per-sample results)."""
    return torch.stack([fn(x[b], gens[b]) for b in range(x.shape[0])])


def _per_batch(value: Any, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar or one value per sample -> ``B×1×1×1`` tensor (float64 for the checks)."""
    v = torch.as_tensor(value, dtype=torch.float64).flatten()
    if v.numel() == 1:
        v = v.expand(batch)
    if v.numel() != batch:
        raise ValueError(f"{name} needs a scalar or one value per sample ({batch}), got {v.numel()}")
    return v.to(device=like.device, dtype=like.dtype).view(batch, 1, 1, 1)


def _as_bchw(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} needs a B×C×H×W tensor, got {shape}")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: the image contains NaN or inf")
    return x


# ------------------------------------------------------------------------------ CT geometry
def radon_size(s: int) -> int:
    """Detector bins of ``skimage.transform.radon(circle=False)`` for an ``s×s`` image."""
    return s + int(math.ceil(math.sqrt(2) * s - s))


def _projector_entries(s: int, n_angles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO entries (row = angle·P + bin, col = pixel) of the radon matrix, duplicates summed.

    scikit-image pads the image to ``P×P`` (image at ``P//2 − s//2``), and for each angle
    samples it bilinearly at ``(row, col) = (c − sin θ (x − c) + cos θ (y − c),
    c + cos θ (x − c) + sin θ (y − c))`` for every output pixel ``(y, x)``, ``c = P // 2``,
    then sums over ``y``: bin ``x``. Zero padding means only samples inside the image count."""
    p = radon_size(s)
    c, before = p // 2, p // 2 - s // 2
    theta = np.deg2rad(_ct.angles_deg(n_angles))
    y, x = np.mgrid[:p, :p].astype(np.float64)
    dx, dy = (x - c).ravel(), (y - c).ravel()
    bins = np.tile(np.arange(p), p)                 # x of each (y, x), row-major
    rows, cols, vals = [], [], []
    for a, t in enumerate(theta):
        cos_a, sin_a = math.cos(t), math.sin(t)
        r_in = c - sin_a * dx + cos_a * dy - before   # in the unpadded image's pixel indices
        c_in = c + cos_a * dx + sin_a * dy - before
        r0, c0 = np.floor(r_in), np.floor(c_in)
        fr, fc = r_in - r0, c_in - c0
        r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
        for rr, cc, w in ((r0, c0, (1 - fr) * (1 - fc)), (r0, c0 + 1, (1 - fr) * fc),
                          (r0 + 1, c0, fr * (1 - fc)), (r0 + 1, c0 + 1, fr * fc)):
            keep = (rr >= 0) & (rr < s) & (cc >= 0) & (cc < s) & (w > 0)
            key = bins[keep] * (s * s) + rr[keep] * s + cc[keep]
            uniq, inv = np.unique(key, return_inverse=True)
            rows.append(a * p + uniq // (s * s))
            cols.append(uniq % (s * s))
            vals.append(np.bincount(inv, weights=w[keep]))
    rows_a, cols_a, vals_a = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    # the four corners of one angle were made unique separately: merge them
    key = rows_a * (s * s) + cols_a
    uniq, inv = np.unique(key, return_inverse=True)
    return uniq // (s * s), uniq % (s * s), np.bincount(inv, weights=vals_a)


def _backprojector_entries(s: int, n_angles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO entries (row = output pixel, col = angle·P + bin) of iradon's linear back-projection
    (``np.interp`` of each filtered view at ``t = ypr cos θ − xpr sin θ``, 0 outside), times
    ``π / (2 · n_angles)``."""
    p = radon_size(s)
    theta = np.deg2rad(_ct.angles_deg(n_angles))
    xpr, ypr = (g.ravel().astype(np.float64) for g in np.mgrid[:s, :s] - s // 2)
    x0, x_last = -(p // 2), p - 1 - p // 2          # detector coordinates arange(P) − P // 2
    pix = np.arange(s * s)
    rows, cols, vals = [], [], []
    for a, t in enumerate(theta):
        pos = ypr * math.cos(t) - xpr * math.sin(t) - x0   # fractional bin index
        inside = (pos >= 0) & (pos <= x_last - x0)
        k = np.minimum(np.floor(pos), p - 2).astype(np.int64)
        w = pos - k
        for kk, ww in ((k, 1 - w), (k + 1, w)):
            keep = inside & (ww > 0)
            rows.append(pix[keep])
            cols.append(a * p + kk[keep])
            vals.append(ww[keep])
    scale = math.pi / (2 * n_angles)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals) * scale


def ramp_filter(p: int) -> np.ndarray:
    """scikit-image's ramp filter for ``p`` detector bins: its frequency response (real,
    symmetric) at the padded length, first half (rfft bins)."""
    size = max(64, int(2 ** math.ceil(math.log2(2 * p))))
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1 / (np.pi * n) ** 2
    return 2 * np.real(np.fft.fft(f))[: size // 2 + 1]


def _csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
         device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    idx = torch.int32 if max(crow[-1], shape[1]) < 2**31 else torch.int64
    with warnings.catch_warnings():     # "sparse CSR support is in beta": we rely on spmm only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow).to(idx), torch.from_numpy(cols).to(idx),
                                       torch.from_numpy(vals).to(dtype), size=shape,
                                       check_invariants=False).to(device)


@lru_cache(maxsize=8)
def _host_entries(s: int, n_angles: int):
    return _projector_entries(s, n_angles), _backprojector_entries(s, n_angles)


@lru_cache(maxsize=8)
def ct_operators(s: int, n_angles: int, device: str = "cpu", dtype: torch.dtype = torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(projector, back_projector, ramp)`` of an ``s×s`` image and ``n_angles`` views on
    ``device``, built once per process (cached): CSR ``(n_angles·P) × s²`` and
    ``s² × (n_angles·P)`` matrices and the rfft ramp filter."""
    p = radon_size(s)
    estimate = int(4.5 * n_angles * s * s)          # measured: ~2.2 + 2 weights per pixel and view
    if estimate > MAX_CT_NNZ:
        raise ValueError(f"batched CT of {s}×{s} images with {n_angles} views needs about "
                         f"{estimate / 1e6:.0f} M operator weights (limit {MAX_CT_NNZ / 1e6:.0f} M); "
                         "degrade such images in the data-loader workers (data.degrade_on=worker)")
    dev = torch.device(device)
    (pr, pc, pv), (br, bc, bv) = _host_entries(s, n_angles)
    proj = _csr(pr, pc, pv, (n_angles * p, s * s), dev, dtype)
    back = _csr(br, bc, bv, (s * s, n_angles * p), dev, dtype)
    ramp = torch.from_numpy(ramp_filter(p)).to(device=dev, dtype=dtype)
    return proj, back, ramp


def _operators_for(x: torch.Tensor, n_angles: int | None):
    s = x.shape[-1]
    n = int(n_angles) if n_angles else _ct.default_n_angles(s)
    _ct.angles_deg(n)                                # validates n >= 2
    dev = x.device
    key = f"{dev.type}:{dev.index}" if dev.index is not None else dev.type
    return n, ct_operators(s, n, key, x.dtype)


def radon(img: torch.Tensor, n_angles: int | None = None) -> torch.Tensor:
    """``skimage.transform.radon(img, angles_deg(n_angles), circle=False)`` of every square
    ``…×s×s`` image: ``…×n_angles×P`` (views × detector bins; scikit-image returns the
    transpose, bins × views)."""
    lead, s = img.shape[:-2], img.shape[-1]
    if img.shape[-2] != s:
        raise ValueError(f"radon needs square images, got {tuple(img.shape[-2:])}")
    n, (proj, _, _) = _operators_for(img, n_angles)
    flat = img.reshape(-1, s * s).T
    sino = torch.sparse.mm(proj, flat.contiguous()).T
    return sino.reshape(*lead, n, radon_size(s))


def fbp(sino: torch.Tensor, output_size: int) -> torch.Tensor:
    """``skimage.transform.iradon(sino.T, angles_deg(n), output_size, "ramp", "linear",
    circle=False)`` of every ``…×n_angles×P`` sinogram: ``…×s×s``."""
    lead, (n, p) = sino.shape[:-2], sino.shape[-2:]
    s = int(output_size)
    if radon_size(s) != p:
        raise ValueError(f"fbp: a {s}×{s} output needs {radon_size(s)} detector bins, got {p}")
    probe = sino.new_empty((1, s, s))
    _, (_, back, ramp) = _operators_for(probe, n)
    size = 2 * (ramp.shape[0] - 1)
    flat = sino.reshape(-1, n, p)
    filtered = torch.fft.irfft(torch.fft.rfft(flat, n=size, dim=-1) * ramp, n=size, dim=-1)[..., :p]
    rec = torch.sparse.mm(back, filtered.reshape(-1, n * p).T.contiguous()).T
    return rec.reshape(*lead, s, s)


def _pad_square(x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, slice]]:
    h, w = x.shape[-2:]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = x.new_zeros((*x.shape[:-2], s, s))
    out[..., top:top + h, left:left + w] = x
    return out, (slice(top, top + h), slice(left, left + w))


def _hu_to_mu(hu: torch.Tensor, mu_water: float) -> torch.Tensor:
    return torch.clamp(mu_water * (1.0 + hu / 1000.0), min=0.0)


def fbp_roundtrip(hu: torch.Tensor, pixel_size_mm: Any = 1.0, n_angles: int | None = None,
                  mu_water: float = _ct.MU_WATER_PER_MM) -> torch.Tensor:
    """Batched :func:`medrestore.degradations.ct.fbp_roundtrip`: ``B×C×H×W`` HU -> HU, noiseless
    projection and reconstruction. ``pixel_size_mm``: scalar or one per sample."""
    hu = _as_bchw(hu, "fbp_roundtrip")
    mu, crop = _pad_square(_hu_to_mu(hu, mu_water))
    # the pixel size multiplies the line integrals and divides the reconstruction: it cancels
    rec = fbp(radon(mu, n_angles), mu.shape[-1])[..., crop[0], crop[1]]
    return 1000.0 * (rec / mu_water - 1.0)


def low_dose_ct(hu: torch.Tensor, dose_factor: Any = 0.25, i0: float = _ct.DEFAULT_I0,
                pixel_size_mm: Any = 1.0, electronic_noise_std: float = 0.0, *,
                gens: Sequence[torch.Generator], n_angles: int | None = None,
                mu_water: float = _ct.MU_WATER_PER_MM) -> torch.Tensor:
    """Batched :func:`medrestore.degradations.ct.low_dose_ct`: the same model (HU -> attenuation,
    parallel-beam line integrals, ``Poisson(dose_factor · i0 · e^{-p})`` counts plus optional
    Gaussian electronic noise, clamped at 1, log, ramp FBP, HU) on ``B×C×H×W`` HU. Each
    channel is one slice. ``dose_factor`` and ``pixel_size_mm``: a scalar or one per sample;
    ``gens``: one generator per sample (sample ``b``'s noise comes from ``gens[b]`` only)."""
    hu = _as_bchw(hu, "low_dose_ct")
    b = hu.shape[0]
    dose = _per_batch(dose_factor, b, hu, "dose_factor")
    px = _per_batch(pixel_size_mm, b, hu, "pixel_size_mm")
    if not bool(((dose > 0) & (dose <= 1)).all()):
        raise ValueError(f"dose_factor must be in (0, 1], got {dose.flatten().tolist()}")
    if not float(i0) > 0:
        raise ValueError(f"i0 (incident photons per ray) must be > 0, got {i0}")
    if float(electronic_noise_std) < 0:
        raise ValueError(f"electronic_noise_std must be >= 0, got {electronic_noise_std}")
    if not bool((px > 0).all()):
        raise ValueError(f"pixel_size_mm must be positive, got {px.flatten().tolist()}")
    gens = _check_gens(gens, b, "low_dose_ct")
    mu, crop = _pad_square(_hu_to_mu(hu, mu_water))
    sino = radon(mu, n_angles) * px                 # line integrals, dimensionless
    blank = dose * float(i0)                        # unattenuated counts per ray at this dose
    expected = blank * torch.exp(-sino)

    def counts_of(lam: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c = torch.poisson(lam, generator=g)
        if electronic_noise_std > 0:
            c = c + float(electronic_noise_std) * torch.randn(lam.shape, generator=g, device=lam.device,
                                                              dtype=lam.dtype)
        return c

    counts = torch.clamp(_per_sample(counts_of, expected, gens), min=1.0)
    noisy = -torch.log(counts / blank)
    rec = fbp(noisy, mu.shape[-1])[..., crop[0], crop[1]] / px
    return 1000.0 * (rec / mu_water - 1.0)


# ------------------------------------------------------------------------------ MRI, PET
def _fft2c(x: torch.Tensor) -> torch.Tensor:
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"), dim=dims)


def _ifft2c(k: torch.Tensor) -> torch.Tensor:
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"), dim=dims)


def kspace_truncate(img: torch.Tensor, scale: float = 4) -> torch.Tensor:
    """Batched :func:`medrestore.degradations.mri.kspace_truncate` (magnitude) of ``…×H×W``:
    the same central k-space block (:func:`~medrestore.degradations.mri.central_band`)."""
    if float(scale) < 1:
        raise ValueError(f"k-space truncation scale must be >= 1, got {scale}")
    h, w = img.shape[-2:]
    mask = torch.zeros((h, w), dtype=torch.bool, device=img.device)
    mask[_mri.central_band(h, scale), _mri.central_band(w, scale)] = True
    x = img if img.is_complex() else img.to(torch.complex64 if img.dtype != torch.float64 else torch.complex128)
    out = _ifft2c(_fft2c(x) * mask).abs()
    return out.to(img.dtype if not img.is_complex() else out.dtype)


def rician_noise(img: torch.Tensor, sigma: float, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Batched :func:`medrestore.degradations.mri.rician_noise` (``B×…``, one generator each)."""
    if float(sigma) < 0:
        raise ValueError(f"rician_noise sigma must be >= 0, got {sigma}")
    x = img.abs()
    gens = _check_gens(gens, x.shape[0], "rician_noise")

    def one(v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = torch.randn((2, *v.shape), generator=g, device=v.device, dtype=v.dtype) * float(sigma)
        return torch.sqrt((v + n[0]) ** 2 + n[1] ** 2)

    return _per_sample(one, x, gens)


def mri_kspace(img: torch.Tensor, scale: float = 4, rician_sigma: float = 0.0, *,
               gens: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Batched ``mri.downsample(method="kspace")``: k-space truncation, then optional Rician
    noise (``gens`` required when ``rician_sigma > 0``)."""
    if not float(scale) >= 1:
        raise ValueError(f"MRI downsample scale must be >= 1, got {scale}")
    if float(rician_sigma) < 0:
        raise ValueError(f"rician_sigma must be >= 0, got {rician_sigma}")
    low = kspace_truncate(_as_bchw(img, "mri_kspace"), scale)
    return rician_noise(low, rician_sigma, gens) if float(rician_sigma) > 0 else low


def low_count_pet(activity: torch.Tensor, dose_reduction: Any = 12,
                  count_scale: float = _pet.DEFAULT_COUNT_SCALE, *,
                  gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Batched :func:`medrestore.degradations.pet.low_count_pet` on ``B×…`` activity maps
    (``dose_reduction``: a scalar or one per sample)."""
    act = torch.clamp(_as_bchw(activity, "low_count_pet"), min=0.0)
    b = act.shape[0]
    dr = _per_batch(dose_reduction, b, act, "dose_reduction")
    if not bool((dr >= 1).all()):
        raise ValueError(f"dose_reduction must be >= 1, got {dr.flatten().tolist()}")
    if not float(count_scale) > 0:
        raise ValueError(f"count_scale must be > 0, got {count_scale}")
    gens = _check_gens(gens, b, "low_count_pet")
    counts = _per_sample(lambda lam, g: torch.poisson(lam, generator=g), act * float(count_scale) / dr, gens)
    return counts * (dr / float(count_scale))


# ------------------------------------------------------------------------------ simulators
def _sim_ct(x, gens, spacing, *, dose_factor, i0, electronic_noise_std, n_angles):
    return low_dose_ct(x, dose_factor, i0, spacing, electronic_noise_std, gens=gens, n_angles=n_angles)


def _sim_mri(x, gens, spacing, *, scale, rician_sigma):
    return mri_kspace(x, scale, rician_sigma, gens=gens)


def _sim_pet(x, gens, spacing, *, dose_reduction, count_scale):
    return low_count_pet(x, dose_reduction, count_scale, gens=gens)


#: Simulators with a batched torch version: name -> ``fn(x_bchw, gens, spacing, **params)``.
BATCHED: dict[str, Callable[..., torch.Tensor]] = {
    "ct_low_dose": _sim_ct, "mri_kspace": _sim_mri, "pet_low_count": _sim_pet,
}


def _pixel_sizes(spacing: Any, batch: int) -> list[float]:
    """``None`` | scalar | a list with one entry (``None``, scalar or ``(row, col)``) per
    sample -> one square pixel size per sample."""
    if spacing is None or np.isscalar(spacing):
        spacing = [spacing] * batch
    if len(spacing) != batch:
        raise ValueError(f"spacing needs None, one number or one entry per sample ({batch}), "
                         f"got {len(spacing)} entries")
    return [1.0 if s is None else _ct._pixel_size(s) for s in spacing]


def simulate_batch(name: str, gt: torch.Tensor, *, gens: Sequence[torch.Generator],
                   spacing: Any = None, **params: Any) -> torch.Tensor:
    """Degrade a batch of clean images with simulator ``name`` (one of :data:`BATCHED`);
    physical units in and out, ``B×C×H×W``, like ``simulate`` per sample.

    ``gens``: one generator per sample; ``spacing``: ``None`` (1 mm), one pixel size for all,
    or a list with one entry (``None``, scalar or ``(row, col)``) per sample; ``params``: the
    simulator's parameters (defaults and unknown names as in ``simulate``)."""
    from medrestore.degradations.simulators import _resolve, get_simulator
    from medrestore.errors import ConfigError

    if name not in BATCHED:
        raise ConfigError(f"simulator {name!r} has no batched torch version; batched: "
                          f"{', '.join(BATCHED)}")
    kwargs = _resolve(get_simulator(name), params)
    kwargs.pop("spacing", None)
    try:
        x = _as_bchw(gt, name)
        sizes = _pixel_sizes(spacing, x.shape[0])
        return BATCHED[name](x, gens, sizes, **kwargs)
    except ValueError as exc:   # operators validate with ValueError, like the numpy path
        raise ConfigError(f"simulator {name!r}: {' '.join(str(exc).split())}") from exc


def resolved_params(name: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full parameter dict of a batched simulator (defaults filled, ``spacing`` dropped),
    checked: what a data-loader worker hands to the device."""
    from medrestore.degradations.simulators import _resolve, get_simulator

    kwargs = _resolve(get_simulator(name), dict(params or {}))
    kwargs.pop("spacing", None)
    return kwargs
