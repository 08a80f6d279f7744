"""Box IoU and COCO-style detection scores for 3-D (or 2-D) boxes, through MONAI's detection
metrics (``monai.data.box_utils.box_iou``, ``monai.apps.detection.metrics``).

Boxes are corner boxes in MONAI's standard mode (``xyzxyz`` in 3-D, ``xyxy`` in 2-D) with
exclusive upper corners (``x2`` = last index + 1), the frame of the sample's image axes.

**The MTMed3D protocol.** The authors report COCO mAP and mAR averaged over IoU thresholds
0.10, 0.15, …, 0.50 (nine thresholds) with at most 10 detections per image, one class: a
lenient localisation criterion. :func:`detection_map` gives that (``map``, ``mar``) and the
stricter AP at IoU 0.5 (``ap50``) beside it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medrestore.errors import MedrestoreError

#: IoU thresholds of the authors' detection protocol (0.10:0.05:0.50).
MTMED3D_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.10 + 0.05 * i, 2) for i in range(9))


def box_iou(a: Any, b: Any) -> torch.Tensor:
    """Pairwise IoU ``N×M`` of corner boxes ``a`` (``N×2D``) and ``b`` (``M×2D``) (MONAI)."""
    from monai.data.box_utils import box_iou as _iou

    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] not in (4, 6):
        raise MedrestoreError(f"box_iou: expected N×4 or N×6 corner boxes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.as_tensor(_iou(a, b), dtype=torch.float32)


def _np_boxes(x: Any, name: str, i: int, width: int | None) -> np.ndarray:
    arr = np.asarray(torch.as_tensor(x).detach().cpu().float().numpy(), dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, width or 6)
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise MedrestoreError(f"detection_map: {name}[{i}] must be an n×6 (or n×4) box array, got shape {arr.shape}")
    return arr


def _threshold_range(thresholds: Sequence[float]) -> tuple[float, float, float]:
    t = np.asarray(sorted(float(x) for x in thresholds))
    if t.size == 0 or (t <= 0).any() or (t > 1).any():
        raise MedrestoreError(f"detection_map: iou_thresholds must be in (0, 1], got {list(thresholds)}")
    if t.size == 1:
        return float(t[0]), float(t[0]), 1.0
    step = np.diff(t)
    if not np.allclose(step, step[0], atol=1e-6):
        raise MedrestoreError(f"detection_map: iou_thresholds must be evenly spaced, got {list(thresholds)}")
    return float(t[0]), float(t[-1]), float(step[0])


def detection_map(pred_boxes: Sequence[Any], pred_scores: Sequence[Any], gt_boxes: Sequence[Any],
                  iou_thresholds: Sequence[float] = MTMED3D_IOU_THRESHOLDS, max_detections: int = 10,
                  ) -> dict[str, float]:
    """COCO AP / AR of one-class detections over a data set (MONAI ``matching_batch`` +
    ``COCOMetric``).

    Lists hold one entry per image: predicted boxes ``n×6``, their scores ``n``, and the ground
    truth boxes ``m×6`` (``m`` may be 0). Returns ``map`` (mean AP over ``iou_thresholds``,
    evenly spaced), ``ap50`` (AP at IoU 0.5) and ``mar`` (mean recall over the thresholds), each
    with at most ``max_detections`` per image (highest scores). Every value is NaN when the data
    set has no ground-truth box (AP is undefined)."""
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou as _iou

    if not (len(pred_boxes) == len(pred_scores) == len(gt_boxes)):
        raise MedrestoreError(f"detection_map: pred_boxes, pred_scores and gt_boxes need one entry per image, got "
                              f"{len(pred_boxes)}, {len(pred_scores)} and {len(gt_boxes)}")
    if int(max_detections) < 1:
        raise MedrestoreError(f"detection_map: max_detections must be >= 1, got {max_detections}")
    start, stop, step = _threshold_range(iou_thresholds)
    gts = [_np_boxes(g, "gt_boxes", i, None) for i, g in enumerate(gt_boxes)]
    width = next((g.shape[1] for g in gts if g.size), 6)
    gts = [g.reshape(-1, width) for g in gts]
    nan = {"map": float("nan"), "ap50": float("nan"), "mar": float("nan")}
    if not any(len(g) for g in gts):
        return nan
    preds, scores = [], []
    for i, (b, s) in enumerate(zip(pred_boxes, pred_scores)):
        b = _np_boxes(b, "pred_boxes", i, width).reshape(-1, width)
        s = np.asarray(torch.as_tensor(s).detach().cpu().float().numpy(), dtype=np.float32).reshape(-1)
        if len(s) != len(b):
            raise MedrestoreError(f"detection_map: image {i} has {len(b)} boxes and {len(s)} scores")
        preds.append(b)
        scores.append(s)

    iou_list = [0.5] if start <= 0.5 + 1e-9 else []
    metric = COCOMetric(classes=["lesion"], iou_list=iou_list or [start], iou_range=(start, stop, step),
                        max_detection=[int(max_detections)], per_class=False, verbose=False)
    # MONAI's box_iou returns the promoted dtype; the matcher wants numpy in and out.
    def iou_fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(_iou(x, y), dtype=np.float64)

    results = matching_batch(
        iou_fn=iou_fn, iou_thresholds=metric.iou_thresholds,
        pred_boxes=preds, pred_classes=[np.zeros(len(b), dtype=np.int64) for b in preds], pred_scores=scores,
        gt_boxes=gts, gt_classes=[np.zeros(len(g), dtype=np.int64) for g in gts],
        max_detections=int(max_detections),
    )
    logger = logging.getLogger("monai.apps.detection.metrics.coco")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "no results found" is a valid outcome (AP 0), not a warning
    try:
        scores_dict: Mapping[str, float] = metric(results)[0]
    finally:
        logger.setLevel(level)
    suffix = f"MaxDet_{int(max_detections)}"
    rng = f"IoU_{start:.2f}_{stop:.2f}_{step:.2f}_{suffix}"
    out = {"map": float(scores_dict[f"mAP_{rng}"]), "mar": float(scores_dict[f"mAR_{rng}"])}
    out["ap50"] = float(scores_dict[f"AP_IoU_0.50_{suffix}"]) if iou_list else float("nan")
    # COCOMetric writes -1 for "no detections at all"; with ground truth present that is AP 0.
    return {k: (0.0 if v < 0 else v) for k, v in out.items()}
