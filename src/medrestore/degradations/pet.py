"""Low-count (reduced-dose) PET by Poisson thinning.

PET measures radioactive decays, so the counts in a voxel are Poisson distributed. With a
reduced injected dose (or a shorter scan) the expected counts fall by ``dose_reduction`` and the
relative noise grows by ``sqrt(dose_reduction)``. :func:`low_count_pet` models this in the
image domain: ``counts = activity * count_scale`` is the full-dose expected count per voxel,
the low-dose image is ``Poisson(counts / dose_reduction)``, rescaled by
``dose_reduction / count_scale`` back to activity units so its mean equals the input.

Simplification: real low-dose PET noise is shaped by reconstruction (OSEM iterations, PSF,
post-filter), which correlates it over several voxels; here it is independent per voxel.
"""

from __future__ import annotations

import numpy as np

#: Default full-dose expected counts per voxel per unit of activity (SUV). Chosen for the demo
#: PET phantom so that 1/12 dose gives visible, learnable noise; real values depend on scanner
#: sensitivity, voxel size and scan time.
DEFAULT_COUNT_SCALE = 60.0


def low_count_pet(activity: np.ndarray, dose_reduction: float = 12,
                  count_scale: float = DEFAULT_COUNT_SCALE, *, rng: np.random.Generator) -> np.ndarray:
    """Simulate a ``1/dose_reduction`` dose PET image from a full-dose activity map.

    Parameters
    ----------
    activity : activity map (e.g. SUV), any shape; negative values are treated as 0.
    dose_reduction : reduction factor of the counts (12 = 1/12 of the dose).
    count_scale : full-dose expected counts per voxel per activity unit.
    rng : the generator that draws the Poisson counts.

    Returns the low-count image in the input's activity units (float32); its expectation equals
    ``max(activity, 0)`` and its variance is ``activity * dose_reduction / count_scale``.
    """
    if not float(dose_reduction) >= 1:
        raise ValueError(f"dose_reduction must be >= 1, got {dose_reduction}")
    if not float(count_scale) > 0:
        raise ValueError(f"count_scale must be > 0, got {count_scale}")
    act = np.maximum(np.asarray(activity, dtype=np.float64), 0.0)
    if not np.isfinite(act).all():
        raise ValueError("PET activity map contains NaN or inf")
    expected = act * float(count_scale) / float(dose_reduction)
    counts = rng.poisson(expected)
    return (counts * (float(dose_reduction) / float(count_scale))).astype(np.float32)
