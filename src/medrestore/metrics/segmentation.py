"""Per-image segmentation scores: Dice, IoU, HD95 (MONAI) and the salient-object measures
(MAE, F-measure, S-measure, E-measure; ``py_sod_metrics``).

Inputs are ``B×K×*S`` tensors (batch, regions / classes, 2-D or 3-D spatial axes), bool or
{0, 1}; probabilities must be binarised by the caller (the threshold is a protocol choice:
MTMed3D validates at 0.3 after a sigmoid, TP-Seg at 0.5). Every function returns one value per
image and region (``B×K``) so that callers average per task first and then over tasks (macro).

**Empty-mask convention** (Dice and IoU): target and prediction both empty → 1.0 (nothing to
find, nothing found); target empty but prediction not → 0.0; target non-empty and prediction
empty → 0.0. This is MONAI's ``ignore_empty=False`` rule. HD95 is NaN when either mask is empty
(a surface distance to nothing is undefined); aggregate it with ``nanmean`` and report how many
cases were defined.

**Why TP-Seg's published "mIoU" is not per-image foreground IoU.** For one image,
``IoU = Dice / (2 − Dice) ≤ Dice`` (equality only at 0 and 1), also for soft masks
(``Σpg ≤ Σ(p+g)/2``), so any average of per-image IoU is at most the same average of per-image
Dice. The paper's table has mIoU above Dice in most cells, so that column follows another
protocol (a mean over foreground and background classes would do it: the background IoU is
close to 1 on small lesions; this is a guess, the released evaluator's IoU obeys IoU ≤ Dice).
Compare Dice with the paper, never our IoU with its mIoU.

Heavy dependencies (MONAI, py_sod_metrics) are imported inside the functions.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from medrestore.errors import MedrestoreError


def _as_masks(pred: Any, target: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise MedrestoreError(f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 3:
        raise MedrestoreError(f"{name}: expected B×K×spatial masks, got shape {tuple(pred.shape)}")
    for t, what in ((pred, "pred"), (target, "target")):
        if t.dtype != torch.bool and t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise MedrestoreError(f"{name}: {what} must be binary (bool or 0/1); threshold probabilities first")
    return pred.bool().float(), target.bool().float()


def dice_per_image(pred: Any, target: Any) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P|+|T|)`` per image and region, ``B×K`` float32.

    Both empty → 1.0, exactly one empty → 0.0 (MONAI ``compute_dice(ignore_empty=False)``)."""
    from monai.metrics import compute_dice

    p, t = _as_masks(pred, target, "dice_per_image")
    return compute_dice(p, t, include_background=True, ignore_empty=False).float()


def iou_per_image(pred: Any, target: Any) -> torch.Tensor:
    """Intersection over union per image and region, ``B×K`` float32; same empty convention as
    :func:`dice_per_image` (MONAI ``compute_iou(ignore_empty=False)``). Always ``≤`` Dice."""
    from monai.metrics import compute_iou

    p, t = _as_masks(pred, target, "iou_per_image")
    return compute_iou(p, t, include_background=True, ignore_empty=False).float()


def hd95_per_image(pred: Any, target: Any, spacing: Any = None) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance per image and region, ``B×K`` float32, in
    the units of ``spacing`` (mm when the sample's ``meta.spacing`` is given; voxels when None).

    ``spacing``: one number, one per spatial axis, or one sequence per image (MONAI's rule).
    NaN where the prediction or the target is empty."""
    from monai.metrics import compute_hausdorff_distance

    p, t = _as_masks(pred, target, "hd95_per_image")
    b, k = p.shape[:2]
    out = torch.full((b, k), float("nan"))
    defined = p.flatten(2).any(-1) & t.flatten(2).any(-1)
    if not bool(defined.any()):
        return out
    if spacing is not None:
        arr = np.asarray(torch.as_tensor(spacing).cpu().numpy() if isinstance(spacing, torch.Tensor) else spacing,
                         dtype=np.float64)
        if arr.ndim > 2 or (arr.ndim == 2 and arr.shape[0] != b):
            raise MedrestoreError(f"hd95_per_image: spacing must be a number, one value per axis or one row "
                                  f"per image, got shape {arr.shape}")
        spacing = float(arr) if arr.ndim == 0 else arr.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; those cells are NaN anyway
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing)
    out[defined] = hd.float().cpu()[defined]
    return out


def nan_mean(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean ignoring NaN (NaN where every entry is NaN)."""
    return torch.nanmean(x.float(), dim=dim) if dim is not None else torch.nanmean(x.float())


class SODMeasures:
    """Accumulator for the salient-object measures that lesion-segmentation evaluators report.

    ``step(pred_prob, gt)`` takes one ``H×W`` probability map in [0, 1] and its boolean mask;
    ``results()`` gives ``mae``, ``max_fm``, ``mean_fm`` (F-measure, β² = 0.3, over the 256
    thresholds), ``sm`` (S-measure, α = 0.5), ``max_em``, ``mean_em`` (E-measure), each the mean
    over the images stepped. Computed by ``py_sod_metrics`` with ``normalize=False``: the
    probabilities are used as given, not min-max stretched per image."""

    def __init__(self) -> None:
        import py_sod_metrics as sod

        # FmeasureV2 is the library's maintained F-measure (the old class warns it will go).
        self._fm = sod.FmeasureV2(metric_handlers={"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False,
                                                                             beta=0.3)})
        self._mae = sod.MAE()
        self._sm = sod.Smeasure()
        self._em = sod.Emeasure()
        self.count = 0

    def step(self, pred_prob: Any, gt: Any) -> None:
        pred = np.asarray(torch.as_tensor(pred_prob).detach().cpu().float().numpy(), dtype=np.float64)
        mask = np.asarray(torch.as_tensor(gt).detach().cpu().numpy()).astype(bool)
        if pred.ndim != 2 or pred.shape != mask.shape:
            raise MedrestoreError(f"SODMeasures.step: expected two H×W arrays of one shape, got {pred.shape} and {mask.shape}")
        pred = np.clip(pred, 0.0, 1.0)
        for m in (self._fm, self._mae, self._sm, self._em):
            m.step(pred, mask, normalize=False)
        self.count += 1

    def results(self) -> dict[str, float]:
        if not self.count:
            return {k: float("nan") for k in ("mae", "max_fm", "mean_fm", "sm", "max_em", "mean_em")}
        fm = self._fm.get_results()["fm"]["dynamic"]
        em = self._em.get_results()["em"]["curve"]
        return {
            "mae": float(self._mae.get_results()["mae"]),
            "max_fm": float(np.max(fm)),
            "mean_fm": float(np.mean(fm)),
            "sm": float(self._sm.get_results()["sm"]),
            "max_em": float(np.max(em)),
            "mean_em": float(np.mean(em)),
        }


def sod_measures(preds: Sequence[Any], gts: Sequence[Any]) -> dict[str, float]:
    """:class:`SODMeasures` over paired lists of ``H×W`` probability maps and masks."""
    acc = SODMeasures()
    for p, g in zip(preds, gts, strict=True):
        acc.step(p, g)
    return acc.results()
