"""Metric protocols: how a task's outputs are scored.

A protocol turns one sample's prediction and ground truth (``C×H×W``, normalised, in the
sample's native channels) plus its ``meta`` into per-image scores. Each task names a default
protocol in the registry; a config can force one for all tasks (``model.metrics.protocol``).

``normalised`` (default): clip both to [0, 1] (the normalisation window of the sample, see
``meta.normalisation``) and compute PSNR/SSIM with ``data_range = 1``. This equals PSNR/SSIM in
physical units over the task's window (e.g. HU in [-1024, 3072] for CT, 8-bit for natural
images) with the window width as data range.

``tat`` (TAT / AMIR evaluation): per slice in physical units, clipped to the test window
(CT [-160, 240] HU, PET [0, 20] SUV, MRI [0, 4095]), data range = that slice's GT max − min,
pytorch-ssim-style SSIM (zero padding, borders included) and RMSE in physical units.

``datprl`` (DATPRL-IR / BasicSR evaluation): the [0, 1] image to uint8 (``round(255·x)``, as
BasicSR's ``tensor2img``), PSNR with range 255 over all channels, SSIM per channel with an 11×11
Gaussian (σ 1.5) on the valid region (no padding, no border crop, no Y channel), averaged over
channels; RMSE in 8-bit levels. One-channel samples are scored on their single channel (BasicSR
scores the replicated 3-channel image; PSNR and SSIM are the same when the channels are equal).

``promptir`` / ``moce_ir`` (their test scripts): RGB in [0, 1] centre-cropped to multiples of
16, scikit-image PSNR with range 1 and scikit-image SSIM — uniform 7×7 window (PromptIR) or
Gaussian σ 1.5 (MoCE-IR), sample covariance, averaged over channels; RMSE normalised.

Every protocol returns ``psnr``, ``ssim`` and ``rmse`` (in the protocol's units: normalised
for ``normalised``, physical for ``tat``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from medrestore.metrics.image import psnr, rmse, ssim, ssim_valid, ssim_zero_pad
from medrestore.registry import Registry, get_task

ProtocolFn = Callable[[torch.Tensor, torch.Tensor, Mapping[str, Any]], dict[str, torch.Tensor]]

PROTOCOLS = Registry("metric protocol")


@PROTOCOLS.register("normalised")
def normalised(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """PSNR/SSIM in the normalised [0, 1] window, data range 1."""
    p = pred.clamp(0, 1).unsqueeze(0)
    g = gt.clamp(0, 1).unsqueeze(0)
    return {"psnr": psnr(p, g, 1.0)[0], "ssim": ssim(p, g, 1.0)[0], "rmse": rmse(p, g)[0]}


#: TAT's test windows (physical units) per modality; the training normalisation windows
#: (CT [-1024, 3072] HU, PET [0, 20], MRI [0, 4095]) come from each sample's meta.
TAT_TEST_WINDOWS = {"CT": (-160.0, 240.0), "PT": (0.0, 20.0), "MR": (0.0, 4095.0)}


@PROTOCOLS.register("tat")
def tat(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """TAT's protocol: de-normalise with the sample's window, clip both to the modality's test
    window, PSNR/SSIM with ``data_range = gt.max() - gt.min()`` of the clipped slice, RMSE in
    physical units. A flat slice (range 0) scores with range 1 rather than dividing by zero."""
    from medrestore.sample import Normalisation

    modality = meta.get("modality")
    if modality not in TAT_TEST_WINDOWS:
        from medrestore.errors import ConfigError

        raise ConfigError(f"model.metrics.protocol=tat scores CT, MR and PT slices only; sample "
                          f"{meta.get('key', '?')} has modality {modality!r} (set "
                          "model.metrics.protocol=null to score each task its own way)")
    lo, hi = TAT_TEST_WINDOWS[modality]
    norm = Normalisation.from_dict(meta["normalisation"])
    p = norm.denormalise(pred.double().clamp(0, 1)).clamp(lo, hi).unsqueeze(0)
    g = norm.denormalise(gt.double().clamp(0, 1)).clamp(lo, hi).unsqueeze(0)
    data_range = float(g.max() - g.min()) or 1.0
    return {"psnr": psnr(p, g, data_range)[0], "ssim": ssim_zero_pad(p, g, data_range)[0],
            "rmse": rmse(p, g)[0]}


@PROTOCOLS.register("datprl")
def datprl(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """BasicSR-style PSNR/SSIM on uint8 images (crop 0, RGB, no Y channel)."""
    p = torch.round(pred.double().clamp(0, 1) * 255.0).unsqueeze(0)
    g = torch.round(gt.double().clamp(0, 1) * 255.0).unsqueeze(0)
    return {"psnr": psnr(p, g, 255.0)[0], "ssim": ssim_valid(p, g, 255.0)[0], "rmse": rmse(p, g)[0]}


def centre_crop_to(x: torch.Tensor, base: int) -> torch.Tensor:
    """``x[..., H, W]`` centre-cropped to multiples of ``base`` (the PromptIR / MoCE-IR test
    loaders' ``crop_img``: the odd pixel goes to the bottom / right)."""
    h, w = x.shape[-2:]
    ch, cw = h % base, w % base
    return x[..., ch // 2:h - ch + ch // 2, cw // 2:w - cw + cw // 2]


def _skimage_scores(pred: torch.Tensor, gt: torch.Tensor, **ssim_kwargs: Any) -> dict[str, torch.Tensor]:
    """PSNR / SSIM of scikit-image on ``[0, 1]`` images (H×W×C float64), data range 1, after
    the test loaders' centre crop to multiples of 16. The crop is applied to the scored images;
    the authors crop the input before inference, which only differs near the border."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = centre_crop_to(pred.double().clamp(0, 1), 16)
    g = centre_crop_to(gt.double().clamp(0, 1), 16)
    pn = p.permute(1, 2, 0).cpu().numpy()
    gn = g.permute(1, 2, 0).cpu().numpy()
    if pn.shape[-1] == 1:
        pn, gn, axis = pn[..., 0], gn[..., 0], None
    else:
        axis = -1
    score = {"psnr": peak_signal_noise_ratio(gn, pn, data_range=1.0),
             "ssim": structural_similarity(gn, pn, data_range=1.0, channel_axis=axis, **ssim_kwargs),
             "rmse": float(np.sqrt(np.mean((pn - gn) ** 2)))}
    return {k: torch.tensor(float(v), dtype=torch.float32) for k, v in score.items()}


@PROTOCOLS.register("promptir")
def promptir(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """PromptIR's test script: RGB in [0, 1], centre crop to /16, scikit-image PSNR (range 1)
    and SSIM with its default uniform 7×7 window (averaged over channels)."""
    return _skimage_scores(pred, gt)


@PROTOCOLS.register("moce_ir")
def moce_ir(pred: torch.Tensor, gt: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """MoCE-IR's test script: as ``promptir`` but SSIM with a Gaussian window (σ 1.5)."""
    return _skimage_scores(pred, gt, gaussian_weights=True, sigma=1.5)


def protocol_for(task: str, override: str | None = None) -> ProtocolFn:
    """The protocol a task is scored with: ``override`` if given, else the task's default."""
    return PROTOCOLS.get(override or get_task(task).protocol)


METRIC_NAMES = ("psnr", "ssim", "rmse")
