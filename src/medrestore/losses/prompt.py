"""DATPRL-IR's auxiliary losses (beside pixel L1).

The released configuration fixes the terms and their weights (FFT 0.1, alignment 1.0,
diversity 1.0, balance 0.1, contrastive 0.1), but the training code that defines most of them
was not released. Status of each formula here:

* :func:`fft_l1` — as BasicSR's FFT loss: ``rfft2`` of prediction and target, real and
  imaginary parts stacked, L1. **Faithful.**
* :func:`alignment_loss` — ``1 − cos(PR_d, text embedding)`` averaged over the batch: the paper's
  description (domain representation aligned with the CLIP text feature of the GT image's
  captions). **Reconstructed** (formula not published; the wording and the 1024-d match make this
  reading the natural one).
* :func:`diversity_loss` — pairwise cosine similarity of a pool's prompts above a margin of 0.1
  (``hinge``), or a temperature-0.1 log-sum-exp repulsion (``softmax``, the other reading of the
  config's "diversity_temperature"). **Reconstructed.**
* :func:`balance_loss` — ``log N − H(mean selection weights over the batch)``: zero at uniform
  prompt usage. **Reconstructed.**
* :func:`contrastive_loss` — supervised InfoNCE over instance representations with samples of
  the same task as positives. **Reconstructed.**

Each has its own weight in the module's config and can be switched off (weight 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the stacked real/imaginary ``rfft2`` spectra (BasicSR's ``FFTLoss``)."""
    p = torch.fft.rfft2(pred.float(), dim=(-2, -1))
    t = torch.fft.rfft2(target.float(), dim=(-2, -1))
    return F.l1_loss(torch.stack([p.real, p.imag], dim=-1), torch.stack([t.real, t.imag], dim=-1))


def alignment_loss(domain_repr: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``mean(1 − cos(PR_d, text))`` (reconstructed)."""
    if domain_repr.shape != text_emb.shape:
        raise ValueError(f"alignment needs matching widths, got {tuple(domain_repr.shape)} and "
                         f"{tuple(text_emb.shape)}")
    return (1.0 - F.cosine_similarity(domain_repr.float(), text_emb.float(), dim=-1)).mean()


def _prompt_matrix(prompts: torch.Tensor) -> torch.Tensor:
    """N×D (keys) or N×T×D (value tokens, flattened per prompt), L2-normalised rows."""
    return F.normalize(prompts.reshape(prompts.shape[0], -1).float(), dim=-1)


def diversity_loss(prompts: torch.Tensor, margin: float = 0.1, mode: str = "hinge",
                   temperature: float = 0.1) -> torch.Tensor:
    """Push a pool's prompts apart (reconstructed).

    ``hinge``: mean over pairs ``i ≠ j`` of ``relu(cos(p_i, p_j) − margin)`` — zero once every
    pair is less similar than the margin. ``softmax``: mean over ``i`` of
    ``τ · log Σ_{j≠i} exp(cos(p_i, p_j) / τ)`` — a smooth repulsion that keeps decreasing as
    prompts spread."""
    z = _prompt_matrix(prompts)
    n = z.shape[0]
    if n < 2:
        return z.new_zeros(())
    sim = z @ z.t()
    off = ~torch.eye(n, dtype=torch.bool, device=z.device)
    if mode == "hinge":
        return F.relu(sim[off] - float(margin)).mean()
    if mode == "softmax":
        logits = (sim / float(temperature)).masked_fill(~off, float("-inf"))
        return float(temperature) * torch.logsumexp(logits, dim=1).mean()
    raise ValueError(f"diversity mode must be 'hinge' or 'softmax', got {mode!r}")


def balance_loss(selection_weights: torch.Tensor) -> torch.Tensor:
    """``log N − H(ū)`` with ``ū`` the batch-mean of the dense selection weights (B×N):
    zero when prompts are used uniformly, ``log N`` when one prompt takes everything
    (reconstructed)."""
    u = selection_weights.float().mean(0)
    u = u / u.sum().clamp(min=1e-12)
    entropy = -(u * torch.log(u.clamp(min=1e-12))).sum()
    return math.log(u.numel()) - entropy


def contrastive_loss(reprs: torch.Tensor, labels: torch.Tensor,
                     temperature: float = 0.1) -> torch.Tensor:
    """Supervised InfoNCE: for each anchor, the other samples of its task are positives and
    every other sample is in the denominator; anchors without a positive are skipped
    (reconstructed). Zero when no anchor has a positive."""
    z = F.normalize(reprs.float(), dim=-1)
    b = z.shape[0]
    logits = (z @ z.t()) / float(temperature)
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.new_zeros(())
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has])
    return per_anchor.mean()
