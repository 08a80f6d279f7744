"""Paired comparison of two models scored on the same images (numpy / scipy only).

Test sets in restoration are small (tens of images per task), so a difference of model means
says little without the spread of the per-image differences. For scores of a *reference* and a
*model* on the same images (matched by image key):

* ``mean_diff`` — mean of ``model − reference`` over the images both scored with finite
  values (an infinite PSNR of a perfect output, or a NaN, cannot enter a mean);
* a percentile **paired bootstrap** interval of that mean: the image set is resampled with
  replacement ``n_resamples`` times (same draws for both models, so the pairing is kept), from
  a fixed seed, so the interval is reproducible;
* the two-sided **Wilcoxon signed-rank** p-value (``scipy.stats.wilcoxon``; zero differences
  dropped, exact distribution for up to 50 non-zero differences without ties, normal
  approximation otherwise). NaN, with the reason in ``method``, when fewer than
  :data:`MIN_WILCOXON_N` differences are non-zero (with 5 the smallest two-sided exact p is
  0.0625, so the test cannot reject at 5 %) or all differences are zero.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

#: fewer non-zero differences than this: no Wilcoxon p-value (see the module docstring)
MIN_WILCOXON_N = 6
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 0


def bootstrap_ci(diff: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES,
                 confidence: float = CONFIDENCE, seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of the mean of ``diff`` over ``n_resamples`` resamples of its
    elements with replacement (``numpy.random.default_rng(seed)``). NaN for an empty ``diff``."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    if d.size == 0:
        return math.nan, math.nan
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; expected a value in (0, 1)")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}; expected >= 1")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // d.size)  # bounded memory for large test sets
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # a constant difference gives identical means; quantile interpolation must not blur that
    return float(min(low, d.mean())), float(max(high, d.mean()))


def wilcoxon_p(diff: Sequence[float] | np.ndarray) -> tuple[float, str]:
    """(two-sided p, how it was computed or why it is NaN) of the signed-rank test of ``diff``."""
    d = np.asarray(diff, dtype=np.float64).ravel()
    nonzero = d[d != 0]
    if d.size and nonzero.size == 0:
        return math.nan, "Wilcoxon: all differences are 0"
    if nonzero.size < MIN_WILCOXON_N:
        return math.nan, (f"Wilcoxon: {nonzero.size} non-zero difference(s) < {MIN_WILCOXON_N} "
                          "(no two-sided p below 0.05 possible)")
    from scipy.stats import wilcoxon

    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    exact = nonzero.size <= 50 and not ties
    try:
        res = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided",
                       method="exact" if exact else "asymptotic")
    except ValueError:  # scipy < 1.13 names the normal approximation "approx"
        res = wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided",
                       method="exact" if exact else "approx")
    return float(res.pvalue), f"Wilcoxon signed-rank ({'exact' if exact else 'normal approx.'})"


def paired_stats(reference: Sequence[float] | np.ndarray, model: Sequence[float] | np.ndarray,
                 n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = SEED) -> dict[str, Any]:
    """Statistics of ``model − reference`` for two aligned score vectors (same images, same
    order): ``n, mean_reference, mean_model, mean_diff, ci_low, ci_high, p_wilcoxon, method``.
    Pairs where either score is not finite are left out (counted in ``method``)."""
    r = np.asarray(reference, dtype=np.float64).ravel()
    m = np.asarray(model, dtype=np.float64).ravel()
    if r.shape != m.shape:
        raise ValueError(f"paired scores need equal lengths, got {r.size} and {m.size}")
    ok = np.isfinite(r) & np.isfinite(m)
    r, m = r[ok], m[ok]
    d = m - r
    low, high = bootstrap_ci(d, n_resamples, confidence, seed)
    p, how = wilcoxon_p(d) if d.size else (math.nan, "Wilcoxon: no pairs")
    method = (f"paired bootstrap {confidence:.0%} CI ({n_resamples} resamples, seed {seed}); "
              f"{how}")
    if (~ok).sum():
        method += f"; {int((~ok).sum())} non-finite pair(s) left out"
    nan = math.nan
    return {"n": int(d.size), "mean_reference": float(r.mean()) if d.size else nan,
            "mean_model": float(m.mean()) if d.size else nan,
            "mean_diff": float(d.mean()) if d.size else nan,
            "ci_low": low, "ci_high": high, "p_wilcoxon": p, "method": method}


def pair_by_key(reference: Mapping[str, float],
                model: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys scored by both (sorted) and the two aligned score vectors."""
    keys = sorted(set(reference) & set(model))
    return (keys, np.array([reference[k] for k in keys], dtype=np.float64),
            np.array([model[k] for k in keys], dtype=np.float64))
