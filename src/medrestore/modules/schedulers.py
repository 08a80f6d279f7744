"""Learning-rate schedules used by the recipes."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from medrestore.errors import ConfigError


class _WarmupCosineFactor:
    """Picklable multiplier: linear warm-up, then cosine from 1 to ``eta_min / base_lr``."""

    def __init__(self, total_steps: int, warmup_steps: int, floor: float) -> None:
        self.total, self.warmup, self.floor = max(1, total_steps), max(0, warmup_steps), floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                  eta_min: float = 0.0) -> LambdaLR:
    """Cosine annealing to ``eta_min`` over ``total_steps`` optimiser steps, after an optional
    linear warm-up (``total_steps: null`` in a config = the trainer's estimated step count)."""
    base = optimizer.param_groups[0]["lr"]
    if eta_min > base:
        raise ConfigError(f"scheduler eta_min={eta_min} is above the optimiser lr={base}")
    return LambdaLR(optimizer, _WarmupCosineFactor(int(total_steps), int(warmup_steps), eta_min / base))
