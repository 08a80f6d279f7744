"""Example grids for a comparison of models (``medrestore-eval``: ``grids/<task>.png``).

One figure per task: a row per example image, and the columns degraded input, each model's
output, the ground truth, and each model's absolute error map. CT is shown in a named HU
window (default soft tissue W400/L40: [-160, 240] HU); every other task in its normalisation
window (the [0, 1] range of ``meta.normalisation``). Error maps are ``|output − GT|`` in the
shown units (HU clipped to the CT window; normalised units otherwise; channel mean for RGB),
on one colour scale per row so models compare directly. The PNG carries its layout as text
(``Description``: JSON with ``task``, ``rows`` (keys), ``columns``, ``window``).

matplotlib is imported inside the functions (Agg backend), never at ``import medrestore``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

#: soft-tissue window (W400/L40) in HU, the usual CT reading window for abdomen / pelvis
DEFAULT_CT_WINDOW = (-160.0, 240.0)


def pick_examples(keys: Sequence[str], n: int) -> list[str]:
    """``n`` keys spread evenly over the sorted keys (deterministic, independent of order)."""
    ordered = sorted(set(keys))
    if n <= 0 or not ordered:
        return []
    if n >= len(ordered):
        return ordered
    idx = np.round(np.linspace(0, len(ordered) - 1, n)).astype(int)
    return [ordered[i] for i in idx]


def window_title(window: Sequence[float], name: str | None = None) -> str:
    lo, hi = float(window[0]), float(window[1])
    wl = f"W{hi - lo:g}/L{(hi + lo) / 2:g} HU"
    return f"{name} {wl}" if name else wl


def grid_columns(labels: Sequence[str]) -> list[str]:
    """Column titles, left to right."""
    return (["input (degraded)"] + [f"output: {lb}" for lb in labels] + ["ground truth"]
            + [f"|error|: {lb}" for lb in labels])


def _wrap(title: str) -> str:
    head, _, label = title.partition(": ")
    return f"{head}\n{label}" if label else title


def _display(x: np.ndarray, meta: Mapping[str, Any], ct_window: Sequence[float] | None) -> np.ndarray:
    """``C×H×W`` normalised [0, 1] → what is shown: HU clipped to the CT window (CT) or the
    normalised image (others), channels last for RGB."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    if ct_window is not None:
        norm = meta["normalisation"]
        lo, hi = float(norm["low"]), float(norm["high"])
        x = np.clip(lo + x * (hi - lo), ct_window[0], ct_window[1])
    return x


def _to_image(x: np.ndarray) -> np.ndarray:
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def task_grid(path: str | Path, task: str, examples: Sequence[Mapping[str, Any]],
              labels: Sequence[str], modality: str | None = None,
              ct_window: Sequence[float] = DEFAULT_CT_WINDOW, ct_window_name: str | None = "soft tissue",
              protocol: str | None = None, dpi: int = 100) -> dict[str, Any]:
    """Write one task's grid to ``path`` (PNG); returns the layout written into it.

    ``examples``: dicts with ``key``, ``lq``, ``gt`` (``C×H×W`` in [0, 1], native channels),
    ``meta`` (with ``normalisation``) and ``preds`` ``{label: C×H×W}``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not examples:
        raise ValueError(f"no examples for the {task} grid")
    is_ct = modality == "CT"
    win = tuple(float(v) for v in ct_window) if is_ct else None
    if is_ct:
        window = f"CT window {window_title(win, ct_window_name)} ([{win[0]:g}, {win[1]:g}] HU)"
        err_unit = "HU"
    else:
        norm = examples[0]["meta"]["normalisation"]
        window = (f"normalisation window [{float(norm['low']):g}, {float(norm['high']):g}] "
                  f"{norm.get('unit', '')}").rstrip()
        err_unit = "normalised"
    columns = grid_columns(labels)
    nrow, ncol = len(examples), len(columns)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.1 * ncol + 0.6, 2.1 * nrow + 0.8), squeeze=False,
                             layout="constrained")
    for r, ex in enumerate(examples):
        meta = ex["meta"]
        gt = _display(ex["gt"], meta, win)
        shown = ([_display(ex["lq"], meta, win)]
                 + [_display(ex["preds"][lb], meta, win) for lb in labels] + [gt])
        vmin, vmax = (win if is_ct else (0.0, 1.0))
        for c, img in enumerate(shown):
            ax = axes[r, c]
            im = _to_image(img)
            if im.ndim == 2:
                ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(np.clip((im - vmin) / (vmax - vmin), 0, 1), interpolation="nearest")
        errors = [np.abs(_display(ex["preds"][lb], meta, win) - gt).mean(axis=0) for lb in labels]
        # one colour scale per row (robust max over all models), so error maps compare directly
        top = max(float(np.percentile(e, 99.5)) for e in errors) or 1e-6
        for k, e in enumerate(errors):
            ax = axes[r, len(shown) + k]
            handle = ax.imshow(e, cmap="inferno", vmin=0.0, vmax=top, interpolation="nearest")
        cb = fig.colorbar(handle, ax=list(axes[r, len(shown):]), fraction=0.05, pad=0.01)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(f"|error| {err_unit}", fontsize=6)
        axes[r, 0].set_ylabel(str(ex["key"]), fontsize=7)
    for c, title in enumerate(columns):
        axes[0, c].set_title(_wrap(title), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    head = f"{task}: {window}"
    if protocol:
        head += f"; scores: protocol {protocol}"
    fig.suptitle(head, fontsize=9)
    layout = {"task": task, "rows": [str(ex["key"]) for ex in examples], "columns": columns,
              "window": window, "error_unit": err_unit, "protocol": protocol}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png",
                metadata={"Title": f"{task} examples", "Description": json.dumps(layout)})
    plt.close(fig)
    return layout
