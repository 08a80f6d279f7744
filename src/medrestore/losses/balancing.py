"""Per-sample loss balancing by learned uncertainty (TAT's "task-adaptive" loss).

For each sample ``i`` the detached statistics ``s_i = [L1(lq, gt), L1(lq, pred), L1(pred, gt)]``
(how degraded the input is, how much the network changed it, how far the output still is)
go through a small MLP that outputs ``σ_i``; the loss is

    L = mean_i [ 0.5 · c_i / (σ_i² + 1e-8) + 0.5 · log(1 + σ_i²) ],   c_i = L1(pred_i, gt_i).

The MLP is trained jointly with the network (same optimiser, every step). For a fixed ``c`` the
minimising ``σ² = (c + sqrt(c² + 4c)) / 2`` grows with ``c``: harder samples get a larger σ and
a smaller weight ``0.5 / σ²``; the ``log(1 + σ²)`` term (not Kendall's ``log σ²``) is never
negative. Shapes and initialisation follow the public TAT code: 3 → 16, a pre-norm residual MLP
block (LayerNorm(16) → 16·16 → GELU → 16), → 1 with weight 0 and bias 1, so σ = 1 at start.
"""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyEstimator(nn.Module):
    """MLP from the three detached per-sample L1 statistics to a scalar σ per sample."""

    def __init__(self, n_stats: int = 3, width: int = 16, expansion: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(n_stats, width)
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, width * expansion)
        self.act = nn.GELU()
        self.reduce = nn.Linear(width * expansion, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)  # σ = 1 for every sample at the start
        nn.init.ones_(self.out.bias)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        h = self.inp(stats)
        h = h + self.reduce(self.act(self.expand(self.norm(h))))
        return self.out(h).squeeze(-1)


def per_sample_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per sample, ``(B,)``."""
    return (a - b).abs().flatten(1).mean(1)


def uncertainty_weighted(c: torch.Tensor, sigma: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean(0.5 · c / (σ² + eps) + 0.5 · log(1 + σ²))`` over the batch."""
    s2 = sigma.square()
    return (0.5 * c / (s2 + eps) + 0.5 * torch.log1p(s2)).mean()


def optimal_sigma(c: torch.Tensor) -> torch.Tensor:
    """The σ that minimises the loss for a fixed per-sample loss ``c`` (for tests / analysis)."""
    return ((c + torch.sqrt(c.square() + 4 * c)) / 2).sqrt()
