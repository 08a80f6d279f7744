"""``RoutedModule``: training of mixture-of-experts restorers (AMIR, MoCE-IR) on the shared base.

What differs from :class:`~medrestore.modules.restoration.RestorationModule` is the objective.
The architecture returns ``(pred, {"aux_loss": scalar, ...})`` in training mode (its routers'
load-balancing statistic, already summed or averaged the way the authors do) and a tensor in
eval mode. This module adds, each from ``model.loss.<term>.weight`` (0 switches a term off):

=========== ============================================================================
term        formula
=========== ============================================================================
``aux``     ``weight × aux_loss`` — AMIR 1e-3 (CV² of importance + load, summed over its
            three spatial routers); MoCE-IR 0.01 (mean over its ten routers)
``fft``     ``weight × L1`` of the stacked real/imaginary ``rfft2`` spectra of prediction and
            target (MoCE-IR's optional term; its published command never switches it on, so
            the family default is 0 and the intended 0.1 is one override)
=========== ============================================================================

The routing itself (per pixel for AMIR, per image for MoCE-IR) lives in the architectures and
is always decided per sample, so a mixed-task batch is routed sample by sample.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from medrestore.errors import ConfigError
from medrestore.losses.prompt import fft_l1
from medrestore.modules.restoration import RestorationModule
from medrestore.sample import adapt_channels

LOSS_DEFAULTS: dict[str, dict[str, float]] = {"aux": {"weight": 0.0}, "fft": {"weight": 0.0}}


def loss_terms(loss: Mapping[str, Any]) -> dict[str, float]:
    """``{term: weight}`` from ``model.loss``; unknown keys inside a term are an error."""
    weights = {}
    for name, defaults in LOSS_DEFAULTS.items():
        given = dict(loss.get(name) or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"model.loss.{name} has unknown key(s) {unknown}; allowed: "
                              f"{sorted(defaults)}")
        weight = given.get("weight", defaults["weight"])
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"model.loss.{name}.weight={weight!r}; expected a number >= 0")
        weights[name] = float(weight)
    return weights


class RoutedModule(RestorationModule):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_weights = loss_terms(self.hparams.loss)

    def extra_losses(self, batch: Mapping[str, Any], pred: torch.Tensor,
                     aux: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        w = self.loss_weights
        if w["aux"]:
            if "aux_loss" not in aux:
                raise ConfigError(f"model.loss.aux.weight={w['aux']:g} but the architecture "
                                  f"{self.arch!r} returns no 'aux_loss' in training mode; set "
                                  "model.loss.aux.weight=0")
            out["aux"] = w["aux"] * aux["aux_loss"]
        if w["fft"]:
            gt = adapt_channels(batch["gt"], self.out_channels)
            out["fft"] = w["fft"] * fft_l1(pred, gt)
        return out
