"""Hand-made cases for the segmentation, detection and grading metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medrestore.errors import MedrestoreError
from medrestore.metrics.classification import classification_metrics
from medrestore.metrics.detection import MTMED3D_IOU_THRESHOLDS, box_iou, detection_map
from medrestore.metrics.segmentation import (SODMeasures, dice_per_image, hd95_per_image, iou_per_image,
                                             sod_measures)


def _mask(shape, *slices):
    m = torch.zeros(shape, dtype=torch.bool)
    for s in slices:
        m[s] = True
    return m


def test_dice_iou_identical_disjoint_empty_and_partial():
    s = (8, 8)
    a = _mask(s, (slice(0, 4), slice(0, 4)))            # 16 px
    b = _mask(s, (slice(4, 8), slice(4, 8)))            # disjoint, 16 px
    c = _mask(s, (slice(0, 4), slice(2, 6)))            # overlaps a by 8 px
    e = torch.zeros(s, dtype=torch.bool)
    pred = torch.stack([a, a, e, a, e, c])[:, None]
    tgt = torch.stack([a, b, e, e, a, a])[:, None]
    d = dice_per_image(pred, tgt)[:, 0]
    i = iou_per_image(pred, tgt)[:, 0]
    assert d.shape == (6,)
    # identical, disjoint, both empty, target empty + pred not, pred empty + target not, partial
    assert d.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 0.0, 2 * 8 / 32])
    assert i.tolist() == pytest.approx([1.0, 0.0, 1.0, 0.0, 0.0, 8 / 24])
    # IoU = D / (2 − D) per image, hence never above Dice
    assert torch.allclose(i, d / (2 - d))
    assert bool((i <= d + 1e-7).all())


def test_dice_per_region_3d_and_binary_check():
    pred = torch.zeros(1, 3, 4, 4, 4)
    tgt = torch.zeros(1, 3, 4, 4, 4)
    pred[0, 0, :2] = 1
    tgt[0, 0, :2] = 1                                   # region 0: identical
    tgt[0, 1, :1] = 1                                   # region 1: missed
    pred[0, 2, :2] = 1
    tgt[0, 2, 1:3] = 1                                  # region 2: half overlap
    assert dice_per_image(pred, tgt)[0].tolist() == pytest.approx([1.0, 0.0, 0.5])
    with pytest.raises(MedrestoreError, match="binary"):
        dice_per_image(pred * 0.7, tgt)
    with pytest.raises(MedrestoreError, match="shape"):
        iou_per_image(pred, tgt[:, :2])


def test_hd95_spacing_and_empty_nan():
    pred = torch.zeros(2, 1, 12, 12, 12, dtype=torch.bool)
    tgt = torch.zeros_like(pred)
    tgt[0, 0, 3:6, 3:6, 3:6] = True
    pred[0, 0, 5:8, 3:6, 3:6] = True                     # the same cube shifted 2 voxels along x
    tgt[1, 0, 2:4, 2:4, 2:4] = True                      # image 1: empty prediction
    hd = hd95_per_image(pred, tgt)
    assert hd[0, 0].item() == pytest.approx(2.0)
    assert math.isnan(hd[1, 0].item())
    hd_mm = hd95_per_image(pred, tgt, spacing=(1.5, 1.0, 1.0))
    assert hd_mm[0, 0].item() == pytest.approx(3.0)      # 2 voxels of 1.5 mm along x
    per_image = hd95_per_image(pred, tgt, spacing=torch.tensor([[1.5, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    assert per_image[0, 0].item() == pytest.approx(3.0) and math.isnan(per_image[1, 0].item())
    same = hd95_per_image(tgt[:1], tgt[:1])
    assert same.item() == 0.0


def test_box_iou_known_boxes():
    a = torch.tensor([[0, 0, 0, 10, 10, 10.0]])
    b = torch.tensor([[0, 0, 0, 10, 10, 10.0], [5, 0, 0, 15, 10, 10], [20, 20, 20, 30, 30, 30],
                      [0, 0, 0, 5, 10, 10]])
    iou = box_iou(a, b)[0]
    # identical; half-shifted: 500 / 1500; disjoint; contained half: 500 / 1000
    assert iou.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.5])
    with pytest.raises(MedrestoreError):
        box_iou(torch.zeros(1, 5), torch.zeros(1, 5))


def test_detection_map_hand_made():
    assert MTMED3D_IOU_THRESHOLDS == (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
    gt = [torch.tensor([[0, 0, 0, 10, 10, 10.0]])]
    # one detection at IoU 0.3: a hit at 5 of the 9 thresholds (0.10 … 0.30), a miss above
    at03 = detection_map([torch.tensor([[0, 0, 0, 3, 10, 10.0]])], [torch.tensor([0.9])], gt)
    assert at03["map"] == pytest.approx(5 / 9)
    assert at03["mar"] == pytest.approx(5 / 9)
    assert at03["ap50"] == 0.0
    exact = detection_map([gt[0].clone()], [torch.tensor([0.8])], gt)
    assert exact == pytest.approx({"map": 1.0, "ap50": 1.0, "mar": 1.0})
    none = detection_map([torch.zeros(0, 6)], [torch.zeros(0)], gt)
    assert none == {"map": 0.0, "ap50": 0.0, "mar": 0.0}


def test_detection_map_ranking_and_empty_ground_truth():
    gt = [torch.tensor([[0, 0, 0, 10, 10, 10.0]]), torch.zeros(0, 6)]
    hit = torch.tensor([[0, 0, 0, 10, 10, 10.0]])
    fp = torch.tensor([[50, 50, 50, 60, 60, 60.0]])
    # a false positive on the empty image scored above the true positive: precision 1/2 at
    # recall 1, so the interpolated AP is 0.5 at every threshold
    worse = detection_map([hit, fp], [torch.tensor([0.5]), torch.tensor([0.9])], gt)
    assert worse["map"] == pytest.approx(0.5)
    assert worse["mar"] == pytest.approx(1.0)
    better = detection_map([hit, fp], [torch.tensor([0.9]), torch.tensor([0.5])], gt)
    assert better["map"] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in detection_map([fp], [torch.tensor([0.5])], [torch.zeros(0, 6)]).values())
    with pytest.raises(MedrestoreError, match="evenly"):
        detection_map([hit], [torch.tensor([0.5])], gt[:1], iou_thresholds=(0.1, 0.2, 0.5))
    with pytest.raises(MedrestoreError, match="scores"):
        detection_map([hit], [torch.tensor([0.5, 0.4])], gt[:1])


def test_classification_hand_case():
    probs = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.1, 0.2, 0.7])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, -1])       # last: grade unknown, ignored
    m = classification_metrics(probs, labels)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)        # TP 2, TN 2
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    # positive/negative pairs ranked right: (0.9, 0.8 beat all 3), 0.3 beats 0.1 and 0.2 → 8/9
    assert m["auroc"] == pytest.approx(8 / 9)
    one = classification_metrics(torch.tensor([0.7, 0.2]), torch.tensor([1, 1]))
    assert math.isnan(one["auroc"]) and math.isnan(one["specificity"])
    assert one["sensitivity"] == 0.5
    with pytest.raises(MedrestoreError):
        classification_metrics(torch.tensor([1.5]), torch.tensor([1]))


def test_sod_measures_perfect_and_worse():
    gt = np.zeros((32, 32), dtype=bool)
    gt[8:20, 10:24] = True
    perfect = sod_measures([gt.astype(np.float32)], [gt])
    assert perfect["mae"] == 0.0
    assert perfect["sm"] == pytest.approx(1.0)
    assert perfect["max_fm"] == pytest.approx(1.0)
    assert perfect["max_em"] == pytest.approx(1.0, abs=1e-3)
    acc = SODMeasures()
    noisy = np.clip(gt * 0.6 + np.random.default_rng(0).uniform(0, 0.4, gt.shape), 0, 1)
    acc.step(torch.from_numpy(noisy), torch.from_numpy(gt))
    r = acc.results()
    assert 0 < r["mae"] < 0.4 and r["sm"] < perfect["sm"] and r["mean_fm"] < perfect["mean_fm"]
    assert all(math.isnan(v) for v in SODMeasures().results().values())
