"""Task-conditioned bottleneck adapters for a frozen token backbone.

:class:`TaskAdapter` adds a per-task residual to channels-last tokens ``B×H×W×C`` before a frozen
block (TP-Seg's "task-conditioned routing block"):

``x + s_t · up_t(GELU(down_t(GN(x))))``

* ``GN`` is one GroupNorm with a single group, shared by all tasks (statistics over H, W and C of
  each sample, a learned scale and shift per channel);
* ``down_t`` (C → rank) and ``up_t`` (rank → C) are bias-free 1×1 projections owned by task
  ``t``; ``up_t`` starts at zero, so a fresh adapter is the identity and the frozen backbone's
  output is unchanged until training moves it;
* ``s_t`` is a learnable per-task scale, initialised to 1.

Each sample is routed by its own task id (hard routing): the per-task weights are gathered per
sample and applied as batched matrix products, so a mixed-task batch gives every sample exactly
what a batch of that sample alone gives, without a Python loop over samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TaskAdapter"]


class TaskAdapter(nn.Module):
    """Per-task bottleneck on channels-last tokens (see the module docstring).

    Parameters: ``norm`` (GroupNorm(1, dim) affine), ``down`` ``T×rank×dim``, ``up``
    ``T×dim×rank``, ``scale`` ``T`` — ``2·T·rank·dim + 2·dim + T`` in all.
    """

    def __init__(self, dim: int, num_tasks: int, rank: int = 64) -> None:
        super().__init__()
        if dim < 1 or num_tasks < 1 or rank < 1:
            raise ValueError(f"dim, num_tasks and rank must be >= 1, got {dim}, {num_tasks}, {rank}")
        self.dim, self.num_tasks, self.rank = dim, num_tasks, rank
        self.norm = nn.GroupNorm(1, dim)
        self.down = nn.Parameter(torch.empty(num_tasks, rank, dim))
        self.up = nn.Parameter(torch.zeros(num_tasks, dim, rank))
        self.scale = nn.Parameter(torch.ones(num_tasks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # down: what a 1×1 Conv2d(dim, rank) draws by default (Kaiming-uniform, a = √5, fan-in
        # dim), one task at a time; up: zero, so the adapter starts as the identity
        for t in range(self.num_tasks):
            nn.init.kaiming_uniform_(self.down.data[t], a=math.sqrt(5))
        nn.init.zeros_(self.up)
        nn.init.ones_(self.scale)
        self.norm.reset_parameters()

    def normalise(self, x: Tensor) -> Tensor:
        """GroupNorm with one group on ``B×H×W×C`` tokens (statistics over H, W, C per sample;
        identical to ``nn.GroupNorm(1, C)`` on the channels-first layout, without the copies)."""
        n = F.layer_norm(x, x.shape[1:], eps=self.norm.eps)
        return n * self.norm.weight + self.norm.bias

    def forward(self, x: Tensor, task_ids: Tensor) -> Tensor:
        """``x``: ``B×H×W×C`` tokens; ``task_ids``: ``B`` integer ids in ``[0, num_tasks)``."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected {self.dim} channels last, got shape {tuple(x.shape)}")
        ids = task_ids.long().reshape(-1)
        b, h, w, c = x.shape
        n = self.normalise(x).reshape(b, h * w, c)
        hidden = F.gelu(torch.bmm(n, self.down[ids].transpose(1, 2)))      # B × HW × rank
        delta = torch.bmm(hidden, self.up[ids].transpose(1, 2))            # B × HW × C
        return x + self.scale[ids].view(b, 1, 1, 1).to(x.dtype) * delta.view(b, h, w, c)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_tasks={self.num_tasks}, rank={self.rank}"
