"""Per-task / per-domain averaging of per-image scores, correct under DDP.

Each rank accumulates a sum and a count per task (torchmetrics states, summed across ranks at
``compute()``), so the task mean is the mean over all images seen by all ranks. Domain means
are the unweighted mean of that domain's task means, and the monitored figure is the
unweighted mean over tasks (the all-in-one papers' convention: a task with many test images
does not dominate)."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torchmetrics import Metric

from medrestore.registry import DOMAINS, TASKS

#: the score given to an exact reconstruction (PSNR +inf); documented in docs/metrics.md
PSNR_CAP = 100.0


class PerTaskMean(Metric):
    """Running mean of one score per task id (``medrestore.registry.task_index``)."""

    full_state_update = False

    def __init__(self, n_tasks: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        n = n_tasks or len(TASKS)
        self.add_state("total", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, task_ids: torch.Tensor) -> None:  # type: ignore[override]
        values = values.detach().to(self.total.device, torch.float64).flatten()
        task_ids = task_ids.to(self.total.device).flatten()
        # Only an exact reconstruction gives PSNR = +inf (MSE 0): cap it at PSNR_CAP so one
        # such image cannot make a mean inf. NaN (a NaN pixel in an output, input or target)
        # is kept, so the task's mean is NaN and can never look good or be selected as best.
        values = torch.where(values == float("inf"), torch.full_like(values, PSNR_CAP), values)
        self.total.index_add_(0, task_ids, values)
        self.count.index_add_(0, task_ids, torch.ones_like(values))
        self.nonfinite.index_add_(0, task_ids, (~torch.isfinite(values)).to(values.dtype))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean per task, image count per task, non-finite scores per task), over all ranks.

        The counts are returned here because outside ``compute()`` the states are this rank's
        own again."""
        mean = torch.where(self.count > 0, self.total / self.count.clamp(min=1),
                           torch.full_like(self.total, float("nan")))
        return mean, self.count.clone(), self.nonfinite.clone()


def summarise(task_means: dict[str, torch.Tensor], counts: torch.Tensor,
              nonfinite: torch.Tensor | None = None) -> dict[str, float]:
    """Flatten per-task mean vectors into named figures.

    ``task_means`` maps a metric name (``psnr``) to its per-task mean vector. Returns keys
    ``<task>/<metric>``, ``<domain>/<metric>`` and ``mean/<metric>`` (over tasks present; a NaN
    task mean makes its domain and the overall mean NaN), ``<task>/n`` and, when given,
    ``<task>/nonfinite`` (images whose score was NaN or -inf)."""
    names = list(TASKS)
    out: dict[str, float] = {}
    present = [i for i, c in enumerate(counts.tolist()) if c > 0]
    for metric, vec in task_means.items():
        vals = {names[i]: float(vec[i]) for i in present}
        for t, v in vals.items():
            out[f"{t}/{metric}"] = v
        for d in DOMAINS:
            dv = [v for t, v in vals.items() if TASKS[t].domain == d]
            if dv:
                out[f"{d}/{metric}"] = _mean(dv)
        if vals:
            out[f"mean/{metric}"] = _mean(vals.values())
    for i in present:
        out[f"{names[i]}/n"] = float(counts[i])
        if nonfinite is not None:
            out[f"{names[i]}/nonfinite"] = float(nonfinite[i])
    return out


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return math.fsum(xs) / len(xs) if xs else float("nan")
