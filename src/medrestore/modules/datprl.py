"""``DATPRLModule``: DATPRL-IR's training objective on the shared base.

The architecture (:mod:`medrestore.models.archs.datprl`) returns ``(pred, aux)`` with the
prompt-pool representations and selections. Beside the base module's pixel L1 this module adds,
each weighted from ``loss.<term>.weight`` (0 switches a term off; the paper's "balance" term is
``usage`` here, since ``loss.balance`` is the base module's per-sample balancing switch):

=============== ======= =====================================================================
term            default formula (see :mod:`medrestore.losses.prompt`; *R* = reconstructed)
=============== ======= =====================================================================
``fft``         0.1     L1 of stacked real/imag ``rfft2`` spectra
``align``       1.0     *R* ``1 − cos(PR_d, text_emb)``; ``text_emb`` from the caption cache
``diversity``   1.0     *R* hinge at 0.1 on pairwise cosine of each pool's keys (or softmax)
``usage``       0.1     *R* ``log N − H(batch-mean selection)`` per pool (usage balance)
``contrastive`` 0.1     *R* supervised InfoNCE over ``PR_t`` with tasks as positives
=============== ======= =====================================================================

``align`` reads ``batch["text_emb"]`` (``MultiTaskDataModule(text_cache=...)``); without it,
training stops with an error that names the two fixes. If the text width differs from the
domain representation (e.g. 384-d MiniLM vs 1024-d), ``loss.align.projection: true`` adds a
learnable linear map from ``PR_d`` to the text space — a departure from the paper (which
compares CLIP-RN50 1024-d features directly), so it is off by default and a mismatch is an
error.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from medrestore.errors import ConfigError
from medrestore.losses.prompt import (alignment_loss, balance_loss, contrastive_loss,
                                      diversity_loss, fft_l1)
from medrestore.modules.restoration import RestorationModule
from medrestore.sample import adapt_channels

LOSS_DEFAULTS: dict[str, dict[str, Any]] = {
    "fft": {"weight": 0.1},
    "align": {"weight": 1.0, "projection": False, "text_dim": None},
    "diversity": {"weight": 1.0, "margin": 0.1, "mode": "hinge", "temperature": 0.1,
                  "on": "keys"},
    "usage": {"weight": 0.1},
    "contrastive": {"weight": 0.1, "temperature": 0.1, "representation": "task"},
}
REPRESENTATIONS = {"task": "task_repr", "domain": "domain_repr", "fused": "fused_repr"}


def _loss_terms(loss: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    terms = {}
    for name, defaults in LOSS_DEFAULTS.items():
        given = dict(loss.get(name) or {})
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"model.loss.{name} has unknown key(s) {unknown}; allowed: "
                              f"{sorted(defaults)}")
        terms[name] = {**defaults, **given}
    if terms["diversity"]["mode"] not in ("hinge", "softmax"):
        raise ConfigError(f"model.loss.diversity.mode={terms['diversity']['mode']!r}; "
                          "expected 'hinge' or 'softmax'")
    if terms["diversity"]["on"] not in ("keys", "values", "both"):
        raise ConfigError(f"model.loss.diversity.on={terms['diversity']['on']!r}; "
                          "expected 'keys', 'values' or 'both'")
    if terms["contrastive"]["representation"] not in REPRESENTATIONS:
        raise ConfigError(f"model.loss.contrastive.representation="
                          f"{terms['contrastive']['representation']!r}; expected one of "
                          f"{sorted(REPRESENTATIONS)}")
    return terms


class DATPRLModule(RestorationModule):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terms = _loss_terms(self.hparams.loss)
        align = self.terms["align"]
        self.prompt_dim = int(getattr(self.net, "prompt_dim", 1024))
        self.text_projection: nn.Module | None = None
        if align["weight"] and align["projection"]:
            if not align["text_dim"]:
                raise ConfigError("model.loss.align.projection needs model.loss.align.text_dim "
                                  "(the caption cache's embedding width)")
            self.text_projection = nn.Linear(self.prompt_dim, int(align["text_dim"]))

    def _pools(self) -> list[Any]:
        net = self.net
        return [p for p in (getattr(net, "task_pool", None), getattr(net, "domain_pool", None))
                if p is not None]

    def _align(self, batch: Mapping[str, Any], aux: Mapping[str, Any]) -> torch.Tensor:
        text = batch.get("text_emb")
        if text is None:
            raise ConfigError("model.loss.align needs caption-cache text embeddings: build one "
                              "with 'medrestore-cache build' and set data.text_cache, or set "
                              "model.loss.align.weight=0")
        domain = aux.get("domain_repr")
        if domain is None:
            raise ConfigError("model.loss.align needs the domain prompt pool "
                              "(model.net.use_domain_pool=true) or model.loss.align.weight=0")
        if self.text_projection is not None:
            domain = self.text_projection(domain)
        if domain.shape[-1] != text.shape[-1]:
            raise ConfigError(f"text embeddings are {text.shape[-1]}-d but the domain "
                              f"representation is {domain.shape[-1]}-d; use a {domain.shape[-1]}-d "
                              "encoder (CLIP RN50: 1024) or set model.loss.align.projection=true "
                              f"and model.loss.align.text_dim={text.shape[-1]} (a departure from "
                              "the paper)")
        return alignment_loss(domain, text.to(domain.dtype))

    def extra_losses(self, batch: Mapping[str, Any], pred: torch.Tensor,
                     aux: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        t = self.terms
        out: dict[str, torch.Tensor] = {}
        if t["fft"]["weight"]:
            gt = adapt_channels(batch["gt"], self.out_channels)
            out["fft"] = t["fft"]["weight"] * fft_l1(pred, gt)
        if t["align"]["weight"]:
            out["align"] = t["align"]["weight"] * self._align(batch, aux)
        pools = self._pools()
        if t["diversity"]["weight"] and pools:
            d = t["diversity"]
            parts = []
            for pool in pools:
                if d["on"] in ("keys", "both"):
                    parts.append(diversity_loss(pool.keys, d["margin"], d["mode"], d["temperature"]))
                if d["on"] in ("values", "both"):
                    parts.append(diversity_loss(pool.values, d["margin"], d["mode"], d["temperature"]))
            out["diversity"] = d["weight"] * torch.stack(parts).mean()
        if t["usage"]["weight"]:
            parts = [balance_loss(aux[k]) for k in ("task_weights", "domain_weights") if k in aux]
            if parts:
                out["usage"] = t["usage"]["weight"] * torch.stack(parts).mean()
        if t["contrastive"]["weight"]:
            c = t["contrastive"]
            reprs = aux.get(REPRESENTATIONS[c["representation"]])
            if reprs is not None:
                labels = batch["task_id"].to(reprs.device)
                out["contrastive"] = c["weight"] * contrastive_loss(reprs, labels, c["temperature"])
        return out
