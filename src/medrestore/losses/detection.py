"""RetinaNet detection targets, loss and box decoding for MTMed3D, over MONAI's
``monai.apps.detection`` (nothing here re-implements what MONAI has).

:class:`RetinaDetection` wraps a MONAI ``RetinaNetDetector`` used only for its training and
post-processing machinery (the network stays outside; the detector holds a parameter-free
placeholder), configured as the MTMed3D authors do:

* anchors: ``AnchorGeneratorWithAnchorShape`` with five base shapes (voxels) per location and
  one multiplier per FPN level (defaults: the authors' shapes and multipliers 2/4/8/16). MONAI
  multiplies every base shape by the level's multiplier, so with the authors' values even the
  finest level's anchors are about 60-140 voxels a side and the coarser levels' anchors are far
  larger than their 96^3 crop; both lists are configurable (``anchor_shapes``, ``anchor_scales``);
* matching: ATSS (4 candidates per level, anchor centre need not lie inside the box), no
  positive/negative sampler;
* box coding: ``BoxCoder`` with unit weights; losses: sigmoid focal loss (gamma 2) on the
  anchor logits plus smooth-L1 (beta 1/9) on the encoded box deltas, summed with weight 1;
* post-processing: ``BoxSelector`` with score threshold 0.02, 1000 candidates per level,
  NMS IoU 0.22, at most 1 detection per image (the authors' values; all configurable).

Boxes are MONAI "xyzxyz" corners in voxels of the network input.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from medrestore.models.archs.mtmed3d import AUTHORS_ANCHOR_SCALES, AUTHORS_ANCHOR_SHAPES


class RetinaDetection(nn.Module):
    """Anchor matching, loss and decoding for a RetinaNet head's output maps.

    ``head`` arguments are the network's ``{"classification": [...], "box_regression": [...]}``
    (one map per level, ``B x A*K x ...`` and ``B x A*6 x ...``).
    """

    cls_key = "classification"
    box_reg_key = "box_regression"

    def __init__(self, anchor_shapes: Sequence[Sequence[float]] = AUTHORS_ANCHOR_SHAPES,
                 anchor_scales: Sequence[float] = AUTHORS_ANCHOR_SCALES, num_classes: int = 1,
                 atss_candidates: int = 4, center_in_gt: bool = False, focal_gamma: float = 2.0,
                 smooth_l1_beta: float = 1.0 / 9, box_loss_weight: float = 1.0,
                 score_thresh: float = 0.02, topk_candidates_per_level: int = 1000,
                 nms_thresh: float = 0.22, detections_per_img: int = 1) -> None:
        super().__init__()
        from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
        from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
        from monai.losses import FocalLoss

        from medrestore.errors import ConfigError

        shapes = [[float(v) for v in s] for s in anchor_shapes]
        if not shapes or any(len(s) != 3 or min(s) <= 0 for s in shapes):
            raise ConfigError(f"detection anchor_shapes={anchor_shapes}: expected a list of [x, y, z] sizes > 0")
        self.num_anchors = len(shapes)
        self.levels = len(anchor_scales)
        anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[float(s) for s in anchor_scales],
                                                 base_anchor_shapes=shapes)
        # MONAI's detector, used for its matching / loss / post-processing methods only
        self.detector = RetinaNetDetector(network=nn.Identity(), anchor_generator=anchors, spatial_dims=3,
                                          num_classes=num_classes, cls_key=self.cls_key,
                                          box_reg_key=self.box_reg_key)
        self.detector.set_target_keys("boxes", "labels")
        self.detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=center_in_gt)
        self.detector.set_cls_loss(FocalLoss(gamma=focal_gamma, reduction="mean"))
        self.detector.set_box_regression_loss(torch.nn.SmoothL1Loss(beta=smooth_l1_beta, reduction="mean"),
                                              encode_gt=True, decode_pred=False)
        self.detector.set_box_selector_parameters(score_thresh=score_thresh,
                                                  topk_candidates_per_level=topk_candidates_per_level,
                                                  nms_thresh=nms_thresh, detections_per_img=detections_per_img)
        self.box_loss_weight = float(box_loss_weight)

    # ---------------------------------------------------------------- shared plumbing
    def _prepare(self, images: torch.Tensor, head: dict[str, list[torch.Tensor]]
                 ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
        from medrestore.errors import ConfigError

        maps = head[self.cls_key]
        if len(maps) != self.levels:
            raise ConfigError(f"detection anchor_scales has {self.levels} levels but the network "
                              f"returns {len(maps)} feature maps")
        self.detector.generate_anchors(images, head)
        locs = [m.shape[2:].numel() for m in maps]
        flat = {k: self.detector._reshape_maps(head[k]) for k in (self.cls_key, self.box_reg_key)}
        return flat, list(self.detector.anchors), locs

    @staticmethod
    def targets(boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                device: torch.device) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": b.to(device=device, dtype=torch.float32).reshape(-1, 6),
                 "labels": lab.to(device=device, dtype=torch.long).reshape(-1)}
                for b, lab in zip(boxes, labels)]

    # ---------------------------------------------------------------- public API
    def loss(self, images: torch.Tensor, head: dict[str, list[torch.Tensor]],
             boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"cls": focal, "box": smooth-L1, "total": cls + weight * box}`` for a batch.
        An image without boxes contributes negatives only."""
        import warnings

        flat, anchors, locs = self._prepare(images, head)
        targets = self.targets(boxes, labels, images.device)
        with warnings.catch_warnings():  # MONAI warns per image when no anchor matches
            warnings.filterwarnings("ignore", message="No anchor is matched")
            out = self.detector.compute_loss(flat, targets, anchors, locs)
        cls_loss = out[self.cls_key]
        box_loss = out[self.box_reg_key].to(cls_loss.device)
        return {"cls": cls_loss, "box": box_loss, "total": cls_loss + self.box_loss_weight * box_loss}

    @torch.no_grad()
    def decode(self, images: torch.Tensor, head: dict[str, list[torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"boxes": n x 6, "scores": n, "labels": n}`` after score threshold, NMS,
        clipping to the image and the per-image cap."""
        flat, anchors, locs = self._prepare(images, head)
        size = list(images.shape[2:])
        dets = self.detector.postprocess_detections(flat, anchors, [size] * images.shape[0], locs)
        return [{"boxes": d["boxes"], "scores": d["labels_scores"], "labels": d["labels"]} for d in dets]

    def matched_anchors(self, images: torch.Tensor, head: dict[str, list[torch.Tensor]],
                        boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per image the ATSS-matched box index of every anchor (negative: unmatched)."""
        flat, anchors, locs = self._prepare(images, head)
        return self.detector.compute_anchor_matched_idxs(anchors, self.targets(boxes, labels, images.device), locs)

    def extra_repr(self) -> str:
        return f"anchors_per_location={self.num_anchors}, levels={self.levels}"


def build_detection(cfg: dict[str, Any] | None = None) -> RetinaDetection:
    """A :class:`RetinaDetection` from a config mapping (``model.detection``)."""
    from medrestore.errors import ConfigError

    cfg = dict(cfg or {})
    try:
        return RetinaDetection(**cfg)
    except TypeError as exc:
        raise ConfigError(f"model.detection: {exc}") from None
