"""Named, seeded degradation simulators: one interface over every task's degradation.

A :class:`Simulator` wraps one degradation operator with a name, the task it serves, the
intensity space it works in and its default parameters. :func:`simulate` is the single entry
point: it takes the clean image in **physical units** (HU, MR a.u., SUV, 8-bit, DN) as H×W or
C×H×W, applies the simulator with a caller-supplied :class:`numpy.random.Generator` (use
:func:`medrestore.degradations.rng.keyed_rng` so an image key and a seed fix the result) and
returns the degraded image in the same physical units, float32, **with the input's shape**
(super-resolution simulators return the low-resolution image re-upsampled to the HR grid,
because our networks are scale-1).

Spaces:

- ``"physical"`` simulators (CT, MRI, PET) model the acquisition in physical units and run on
  each channel (2-D slice) separately.
- ``"unit"`` simulators (natural and remote-sensing images) work on images normalised to
  [0, 1]; :func:`simulate` maps the input with ``normalisation`` (the window ``[low, high]``,
  clipped), runs the simulator on the C×H×W array and maps the result back.

Defaults for the paper protocols (dose 0.25, ×4, dose reduction 12, σ 25) come from the task
registry (:data:`medrestore.registry.TASKS`). ``docs/degradations.md`` describes every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from medrestore.degradations import ct, mri, natural, pet, remote_sensing
from medrestore.degradations.resize import bicubic_sr
from medrestore.errors import ConfigError, MedrestoreError
from medrestore.registry import TASKS, Registry, RegistryError

__all__ = ["SIMULATORS", "SPACES", "Simulator", "default_simulator", "get_simulator", "simulate"]

#: Intensity spaces a simulator can work in.
SPACES = ("physical", "unit")


@dataclass(frozen=True)
class Simulator:
    """One named degradation.

    ``fn(gt_chw_float64, rng, **params) -> lq_chw`` (same shape) in ``space``: ``"physical"``
    (HU, SUV, MR a.u.) or ``"unit"`` (normalised [0, 1]). ``defaults`` lists every accepted
    parameter with its default (``None`` = drawn from ``rng`` or derived, see ``description``).
    ``slow`` marks simulators to run once at prepare time rather than on the fly."""

    name: str
    task: str
    space: str
    fn: Callable[..., np.ndarray]
    defaults: dict
    description: str
    slow: bool = False

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"simulator {self.name!r}: space must be one of {SPACES}, got {self.space!r}")
        if self.task not in TASKS:
            raise ValueError(f"simulator {self.name!r}: unknown task {self.task!r}")


def _task_default(task: str, key: str, fallback: Any) -> Any:
    return TASKS[task].defaults.get(key, fallback)


# ------------------------------------------------------------------ physical (medical)
def _per_channel(x: np.ndarray, one: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a 2-D operator to each channel in order (one rng stream, so reproducible)."""
    return np.stack([np.asarray(one(x[c]), dtype=np.float64) for c in range(x.shape[0])])


def _ct_low_dose(x: np.ndarray, rng: np.random.Generator, *, dose_factor: float, i0: float,
                 electronic_noise_std: float, n_angles: int | None,
                 spacing: Any = None) -> np.ndarray:
    pixel_size = 1.0 if spacing is None else spacing
    return _per_channel(x, lambda sl: ct.low_dose_ct(
        sl, dose_factor, i0, pixel_size, electronic_noise_std, rng=rng, n_angles=n_angles))


def _mri(method: str) -> Callable[..., np.ndarray]:
    def run(x: np.ndarray, rng: np.random.Generator, *, scale: float,
            rician_sigma: float) -> np.ndarray:
        return _per_channel(x, lambda sl: mri.downsample(sl, scale, method, rician_sigma, rng))
    return run


def _pet_low_count(x: np.ndarray, rng: np.random.Generator, *, dose_reduction: float,
                   count_scale: float) -> np.ndarray:
    return _per_channel(x, lambda sl: pet.low_count_pet(sl, dose_reduction, count_scale, rng=rng))


# ------------------------------------------------------------------ unit (natural, remote sensing)
def _bicubic(x: np.ndarray, rng: np.random.Generator, *, scale: float, clip: bool) -> np.ndarray:
    out = bicubic_sr(x, scale, layout="chw").astype(np.float64)
    return np.clip(out, 0.0, 1.0) if clip else out


def _gaussian_noise(x: np.ndarray, rng: np.random.Generator, *, sigma: float,
                    clip: bool) -> np.ndarray:
    return natural.gaussian_noise(x, sigma, rng, clip=clip)


def _rain(x: np.ndarray, rng: np.random.Generator, *, density: float | None,
          length: float | None, angle: float | None, intensity: float | None,
          width: float) -> np.ndarray:
    return natural.rain_streaks(x, rng, density, length, angle, intensity, width=width, layout="chw")


def _motion_blur(x: np.ndarray, rng: np.random.Generator, *, length: float | None,
                 angle: float | None, boundary: str) -> np.ndarray:
    return natural.motion_blur(x, rng, length, angle, layout="chw", boundary=boundary)


#: Ranges the haze simulator draws from when a parameter is not given.
HAZE_BETA_RANGE = (0.3, 1.2)
HAZE_AIRLIGHT_RANGE = (0.75, 0.95)


def _haze(x: np.ndarray, rng: np.random.Generator, *, transmission: Any, beta: float | None,
          airlight: Any, depth: Any, depth_variation: float) -> np.ndarray:
    h, w = x.shape[-2:]
    if transmission is not None:
        if beta is not None or depth is not None:
            raise ValueError("haze takes either transmission or beta/depth, not both")
        t = np.asarray(transmission, dtype=np.float64)
    else:
        beta = float(rng.uniform(*HAZE_BETA_RANGE)) if beta is None else float(beta)
        if beta < 0:
            raise ValueError(f"haze beta must be >= 0, got {beta}")
        if depth is None:
            if not 0.0 <= float(depth_variation) < 1.0:
                raise ValueError(f"haze depth_variation must be in [0, 1), got {depth_variation}")
            # large-scale smooth relative depth in [1 - v, 1 + v]: nearly uniform haze
            field = remote_sensing.fractal_field((h, w), rng, 4.0)
            span = field.max() - field.min()
            rel = (field - field.min()) / span if span > 0 else np.full((h, w), 0.5)
            depth = 1.0 + float(depth_variation) * (2.0 * rel - 1.0)
        t = np.exp(-beta * np.asarray(depth, dtype=np.float64))
    if airlight is None:
        airlight = float(rng.uniform(*HAZE_AIRLIGHT_RANGE))
    if t.ndim not in (0, 2) or (t.ndim == 2 and t.shape != (h, w)):
        raise ValueError(f"haze transmission / depth must be a scalar or an {h}×{w} map, got shape {t.shape}")
    return natural.haze(x, transmission=t, airlight=airlight, layout="chw")


#: Range the cloud simulator draws the cloud cover from when neither a mask nor a cover is given.
CLOUD_COVERAGE_RANGE = (0.2, 0.6)


def _cloud(x: np.ndarray, rng: np.random.Generator, *, mask: Any, coverage: float | None,
           beta: float, softness: float, max_opacity: float, brightness: Any,
           blur_sigma: float, texture: float) -> np.ndarray:
    h, w = x.shape[-2:]
    if mask is None:
        cover = float(rng.uniform(*CLOUD_COVERAGE_RANGE)) if coverage is None else float(coverage)
        cloud = remote_sensing.fractal_cloud((h, w), rng, coverage=cover, beta=beta, softness=softness)
    else:
        if coverage is not None:
            raise ValueError("cloud coverage applies to fractal clouds only; a given mask fixes the cover")
        cloud = np.asarray(mask)
        if cloud.shape != (h, w):
            raise ValueError(f"cloud mask must be {h}×{w} like the image, got shape {cloud.shape}")
    return remote_sensing.cloud_overlay(x, cloud, rng, max_opacity, brightness, blur_sigma=blur_sigma,
                                        texture=texture, layout="chw")


# ------------------------------------------------------------------ registry
#: Every simulator by name: a :class:`~medrestore.registry.Registry` of :class:`Simulator`
#: entries (another package may add one, or a ``"module:attr"`` string naming one).
SIMULATORS = Registry("simulator")

for _sim in (
    Simulator("ct_low_dose", "ct_denoise", "physical", _ct_low_dose,
              {"dose_factor": _task_default("ct_denoise", "dose_factor", 0.25),
               "i0": ct.DEFAULT_I0, "electronic_noise_std": 0.0, "n_angles": None,
               "spacing": None},
              "reduced-dose CT: HU -> attenuation, parallel-beam projection, Poisson counts "
              "(dose_factor * i0 photons per ray), ramp FBP -> HU; spacing = pixel size in mm "
              "(square, default 1 mm); n_angles None = ceil(pi/2 * width)", slow=True),
    Simulator("mri_kspace", "mri_sr", "physical", _mri("kspace"),
              {"scale": _task_default("mri_sr", "scale", 4), "rician_sigma": 0.0},
              "MRI low resolution: keep the central 1/scale of k-space per axis, zero-fill, "
              "magnitude; optional Rician noise (sigma in MR a.u.)"),
    Simulator("mri_bicubic", "mri_sr", "physical", _mri("bicubic"),
              {"scale": _task_default("mri_sr", "scale", 4), "rician_sigma": 0.0},
              "MRI low resolution by MATLAB-bicubic down-sampling of the magnitude image and "
              "up-sampling back; optional Rician noise (sigma in MR a.u.)"),
    Simulator("pet_low_count", "pet_synthesis", "physical", _pet_low_count,
              {"dose_reduction": _task_default("pet_synthesis", "dose_reduction", 12),
               "count_scale": pet.DEFAULT_COUNT_SCALE},
              "low-count PET: Poisson(activity * count_scale / dose_reduction) rescaled to "
              "activity units (mean kept, independent voxels)"),
    Simulator("bicubic", "natural_sr", "unit", _bicubic,
              {"scale": _task_default("natural_sr", "scale", 4), "clip": True},
              "MATLAB-bicubic down-sampling by scale, then MATLAB-bicubic up-sampling to the "
              "HR grid; clip to [0, 1]"),
    Simulator("rs_bicubic", "rs_sr", "unit", _bicubic,
              {"scale": _task_default("rs_sr", "scale", 4), "clip": True},
              "remote-sensing SR: MATLAB-bicubic down by scale and up to the HR grid, all "
              "bands alike; clip to [0, 1]"),
    Simulator("gaussian_noise", "natural_denoise", "unit", _gaussian_noise,
              {"sigma": _task_default("natural_denoise", "sigma", 25), "clip": True},
              "additive white Gaussian noise, std sigma/255 of the normalised window "
              "(sigma on the 0-255 scale; 15, 25, 50 in the benchmarks); clip to [0, 1]"),
    Simulator("rain", "derain", "unit", _rain,
              {"density": None, "length": None, "angle": None, "intensity": None, "width": 0.6},
              "synthetic light rain: sparse seeds smeared into streaks, screen blend (adds "
              "light only); None = drawn (density 0.002-0.006, length 8-20 px, angle +-25 deg, "
              "intensity 0.45-0.75)"),
    Simulator("motion_blur", "deblur", "unit", _motion_blur,
              {"length": None, "angle": None, "boundary": "reflect"},
              "uniform linear motion blur (line kernel summing to 1); None = drawn (length "
              "5-15 px, angle 0-180 deg from vertical)"),
    Simulator("haze", "dehaze", "unit", _haze,
              {"transmission": None, "beta": None, "airlight": None, "depth": None,
               "depth_variation": 0.2},
              "atmospheric scattering I = J t + A (1 - t), t = exp(-beta depth); None = drawn "
              f"(beta {HAZE_BETA_RANGE[0]}-{HAZE_BETA_RANGE[1]}, airlight "
              f"{HAZE_AIRLIGHT_RANGE[0]}-{HAZE_AIRLIGHT_RANGE[1]}, smooth depth "
              "1 +- depth_variation)"),
    Simulator("cloud", "cloud_removal", "unit", _cloud,
              {"mask": None, "coverage": None, "beta": remote_sensing.DEFAULT_CLOUD_BETA,
               "softness": 1.0, "max_opacity": 0.6, "brightness": 0.95, "blur_sigma": 3.0,
               "texture": 0.35},
              "thin cloud I = (1 - alpha) J + alpha b over a fractal (1/f^beta) cloud field "
              f"with the given coverage (None = drawn {CLOUD_COVERAGE_RANGE[0]}-"
              f"{CLOUD_COVERAGE_RANGE[1]}) or over a given H×W mask (e.g. Landsat QA)"),
):
    SIMULATORS.add(_sim.name, _sim)
del _sim

#: The simulator each task uses unless told otherwise.
_DEFAULT_FOR_TASK: dict[str, str] = {
    "ct_denoise": "ct_low_dose", "mri_sr": "mri_kspace", "pet_synthesis": "pet_low_count",
    "natural_sr": "bicubic", "derain": "rain", "natural_denoise": "gaussian_noise",
    "deblur": "motion_blur", "rs_sr": "rs_bicubic", "cloud_removal": "cloud", "dehaze": "haze",
}


def get_simulator(name: str) -> Simulator:
    """The simulator called ``name``; :class:`ConfigError` listing the known names otherwise."""
    try:
        return SIMULATORS.get(name)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None


def default_simulator(task: str) -> str:
    """Name of the default simulator of a task id (e.g. ``"mri_sr"`` -> ``"mri_kspace"``)."""
    try:
        return _DEFAULT_FOR_TASK[task]
    except (KeyError, TypeError):
        raise ConfigError(f"no default simulator for task {task!r}; tasks with one: "
                          f"{', '.join(_DEFAULT_FOR_TASK)}") from None


def _window(normalisation: Any, name: str) -> tuple[float, float]:
    """``(low, high)`` of a Normalisation-like object or a ``{low, high, unit, kind}`` dict."""
    if normalisation is None:
        raise ConfigError(f"simulator {name!r} works on normalised [0, 1] images and needs "
                          "normalisation= (a Normalisation or a dict with low and high), got None")
    get = normalisation.get if isinstance(normalisation, Mapping) else (
        lambda k, d=None: getattr(normalisation, k, d))
    try:
        low, high = float(get("low")), float(get("high"))
    except (TypeError, ValueError):
        raise ConfigError(f"simulator {name!r}: normalisation needs numeric 'low' and 'high', "
                          f"got {normalisation!r}") from None
    kind = get("kind", "minmax")
    if kind not in (None, "minmax"):
        raise ConfigError(f"simulator {name!r}: normalisation kind {kind!r} is not supported; expected 'minmax'")
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ConfigError(f"simulator {name!r}: normalisation window needs high > low, got [{low}, {high}]")
    return low, high


def _resolve(sim: Simulator, params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(k for k in params if k not in sim.defaults)
    if unknown:
        raise ConfigError(f"simulator {sim.name!r} has no parameter(s) {', '.join(unknown)}; "
                          f"accepted: {', '.join(sim.defaults)}")
    return {**sim.defaults, **params}


def _as_chw(gt: Any, name: str) -> tuple[np.ndarray, bool]:
    x = np.asarray(gt)
    if x.dtype == object or np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ConfigError(f"simulator {name!r} needs a real-valued numeric image, got dtype {x.dtype}")
    if x.ndim not in (2, 3) or min(x.shape) < 1:
        raise ConfigError(f"simulator {name!r} needs an H×W or C×H×W image, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ConfigError(f"simulator {name!r}: the image contains NaN or inf")
    return (x[None], True) if x.ndim == 2 else (x, False)


def simulate(name: str, gt: np.ndarray, *, rng: np.random.Generator, normalisation: Any = None,
             spacing: Any = None, **params: Any) -> np.ndarray:
    """Degrade a clean image with the simulator ``name``; physical units in and out.

    Parameters
    ----------
    name : a key of :data:`SIMULATORS` (see :func:`default_simulator` for a task's default).
    gt : clean image, H×W or C×H×W, any real numeric dtype, in physical units.
    rng : the generator that draws all randomness (e.g. ``keyed_rng(key, seed)``); the same
        generator state always gives the same output.
    normalisation : the intensity window of ``"unit"`` simulators: a
        :class:`medrestore.sample.Normalisation` or a dict ``{low, high, unit, kind}``; required
        for them, ignored by ``"physical"`` ones.
    spacing : pixel size in mm (scalar or ``(row, col)``); used by ``ct_low_dose`` (default 1 mm
        when ``None``), ignored by the others.
    **params : the simulator's parameters (its ``defaults`` keys); unknown names are an error.

    Returns the degraded image, float32, same shape as ``gt``, in ``gt``'s units. Unit
    simulators see ``clip((gt - low) / (high - low), 0, 1)``, so values outside the window come
    back clipped to it.
    """
    sim = get_simulator(name)
    kwargs = _resolve(sim, params)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"simulate needs rng to be a numpy.random.Generator, got {type(rng).__name__}")
    x, squeeze = _as_chw(gt, name)
    if "spacing" in sim.defaults:
        kwargs["spacing"] = spacing
    if sim.space == "unit":
        low, high = _window(normalisation, name)
        unit = np.clip((x - low) / (high - low), 0.0, 1.0)
        out = _call(sim, unit, rng, kwargs).astype(np.float64) * (high - low) + low
    else:
        out = _call(sim, x, rng, kwargs)
    if out.shape != x.shape:
        raise RuntimeError(f"simulator {name!r} returned shape {out.shape} for input {x.shape}")
    out = np.asarray(out, dtype=np.float32)
    return out[0] if squeeze else out


def _call(sim: Simulator, x: np.ndarray, rng: np.random.Generator, kwargs: dict[str, Any]) -> np.ndarray:
    try:
        return np.asarray(sim.fn(x, rng, **kwargs))
    except MedrestoreError:
        raise
    except ValueError as exc:            # the operators validate their parameters with ValueError
        msg = " ".join(str(exc).split())
        raise ConfigError(f"simulator {sim.name!r}: {msg}") from exc
