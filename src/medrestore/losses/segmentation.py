"""TP-Seg's structure loss for binary lesion masks, with deep-supervision summation.

For logits ``z`` and a mask ``m`` (``B×1×H×W``), per image:

- boundary weight ``β = 1 + 2 · |avgpool_31(m) − m|`` (31×31 mean, stride 1, padding 15): 1 far
  from the lesion edge, up to 3 on it;
- boundary-weighted BCE ``Σ β · BCE(z, m) / Σ β``;
- soft Dice ``1 − (2 Σ σ(z) m + 1) / (Σ σ(z) + Σ m + 1)``;
- structure loss ``0.5 · Dice + 0.5 · wBCE``, averaged over the batch.

The weights (1 + 2·…, 0.5 / 0.5) are the TP-Seg authors' as recorded in the research note on
their training script. :func:`deep_supervision_loss` sums it over a network's outputs (TP-Seg:
four), each up-sampled bilinearly to the mask's size when needed.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from medrestore.errors import MedrestoreError

BOUNDARY_KERNEL = 31
BOUNDARY_GAIN = 2.0


def boundary_weights(mask: torch.Tensor, kernel: int = BOUNDARY_KERNEL, gain: float = BOUNDARY_GAIN) -> torch.Tensor:
    """``1 + gain · |avgpool_kernel(mask) − mask|`` for ``B×1×H×W`` masks (zero padding counted
    in the mean, as ``F.avg_pool2d`` does by default). The k×k mean is taken as a k×1 then a
    1×k mean: exact (the divisor is always k², padding included) and ~k/2 times cheaper."""
    pad = kernel // 2
    pooled = F.avg_pool2d(mask, kernel_size=(kernel, 1), stride=1, padding=(pad, 0))
    pooled = F.avg_pool2d(pooled, kernel_size=(1, kernel), stride=1, padding=(0, pad))
    return 1.0 + gain * (pooled - mask).abs()


def structure_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 0.5,
                   bce_weight: float = 0.5, smooth: float = 1.0,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar structure loss of ``logits`` against ``mask`` (both ``B×1×H×W``); ``weights``: the
    mask's :func:`boundary_weights` when the caller already has them (deep supervision)."""
    if logits.shape != mask.shape or logits.ndim != 4:
        raise MedrestoreError(f"structure_loss: logits {tuple(logits.shape)} and mask {tuple(mask.shape)} "
                              "must both be B×1×H×W")
    mask = mask.to(logits.dtype)
    weit = boundary_weights(mask) if weights is None else weights
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weit * bce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * inter + smooth) / (prob.sum(dim=(2, 3)) + mask.sum(dim=(2, 3)) + smooth)
    return (dice_weight * dice + bce_weight * wbce).mean()


def deep_supervision_loss(outputs: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor,
                          **kwargs: float) -> torch.Tensor:
    """Sum of :func:`structure_loss` over ``outputs`` (one tensor or a sequence of side outputs),
    each resized to the mask's ``H×W`` (bilinear) when it differs."""
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    if not outs:
        raise MedrestoreError("deep_supervision_loss: no output given")
    total = None
    weights = boundary_weights(mask.to(outs[0].dtype))   # one mask: its weights once
    for o in outs:
        if o.shape[-2:] != mask.shape[-2:]:
            o = F.interpolate(o, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        term = structure_loss(o, mask, weights=weights, **kwargs)
        total = term if total is None else total + term
    return total
