"""Metric protocols: how a task's outputs are scored.

A protocol turns one sample's prediction and ground truth (``C×H×W``, normalised, in the
sample's native channels) plus its ``meta`` into per-image scores. Each task names a default
protocol in the registry; a config can force one for all tasks (``model.metrics.protocol``).

``normalised`` (default): clip both to [0, 1] (the normalisation window of the sample, see
``meta.normalisation``) and compute PSNR/SSIM with ``data_range = 1``. This equals PSNR/SSIM in
physical units over the task's window (e.g. HU in [-1024, 3072] for CT, 8-bit for natural
images) with the window width as data range.

Model-family protocols (TAT's per-slice physical-unit protocol, DATPRL's uint8 RGB protocol)
are added to :data:`PROTOCOLS` by their issues.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from medrestore.metrics.image import psnr, ssim
from medrestore.registry import Registry, get_task

ProtocolFn = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], dict[str, torch.Tensor]]

PROTOCOLS = Registry("metric protocol")


@PROTOCOLS.register("normalised")
def normalised(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """PSNR/SSIM in the normalised [0, 1] window, data range 1."""
    p = pred.clamp(0, 1).unsqueeze(0)
    g = gt.clamp(0, 1).unsqueeze(0)
    return {"psnr": psnr(p, g, 1.0)[0], "ssim": ssim(p, g, 1.0)[0]}


def protocol_for(task: str, override: str | None = None) -> ProtocolFn:
    """The protocol a task is scored with: ``override`` if given, else the task's default."""
    return PROTOCOLS.get(override or get_task(task).protocol)


METRIC_NAMES = ("psnr", "ssim")
