"""Pixel losses, reduced per sample (shape ``(B,)``).

Per-sample values let a model family re-weight samples (TAT's task-adaptive balancing) before
the batch mean; the plain mean of these equals the usual batch-mean loss."""

from __future__ import annotations

import torch

from medrestore.registry import Registry

PIXEL_LOSSES = Registry("pixel loss")


@PIXEL_LOSSES.register("l1")
def l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).abs().flatten(1).mean(1)


@PIXEL_LOSSES.register("mse")
def mse(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return ((pred - gt) ** 2).flatten(1).mean(1)


@PIXEL_LOSSES.register("charbonnier")
def charbonnier(pred: torch.Tensor, gt: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((pred - gt) ** 2 + eps**2).flatten(1).mean(1)
