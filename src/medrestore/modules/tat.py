"""``TATModule``: the Task-Adaptive Transformer's training logic on the shared base.

The architecture is :class:`medrestore.models.archs.tat.TAT` (a plain ``nn.Module``, blind:
it sees only the image). What differs from the base module is the loss: with
``loss.balance: uncertainty`` (TAT's recipe) each sample's L1 is weighted by a learned σ from
:class:`~medrestore.losses.balancing.UncertaintyEstimator` on detached per-sample statistics;
``loss.balance: none`` is plain L1 (the ablation). The estimator is trained jointly, by the
same optimiser, and is not part of the network (it is not used at inference).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from medrestore.losses.balancing import UncertaintyEstimator, per_sample_l1, uncertainty_weighted
from medrestore.modules.restoration import RestorationModule
from medrestore.sample import adapt_channels


class TATModule(RestorationModule):
    BALANCE_MODES = ("none", "input", "uncertainty")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sigma_net = UncertaintyEstimator() if self.balance == "uncertainty" else None

    def weight_sample_losses(self, losses: torch.Tensor, batch: Mapping[str, Any],
                             pred: torch.Tensor, aux: Mapping[str, Any]) -> torch.Tensor:
        if self.sigma_net is None:
            return super().weight_sample_losses(losses, batch, pred, aux)
        lq = adapt_channels(batch["lq"], self.out_channels)
        gt = adapt_channels(batch["gt"], self.out_channels)
        stats = torch.stack([per_sample_l1(lq, gt), per_sample_l1(lq, pred),
                             per_sample_l1(pred, gt)], dim=1).detach().float()
        sigma = self.sigma_net(stats)
        bs = pred.shape[0]
        self.log("train/sigma", sigma.detach().mean(), batch_size=bs)
        for task in sorted(set(batch["task"])):  # σ per task: which tasks the loss favours
            idx = [i for i, t in enumerate(batch["task"]) if t == task]
            self.log(f"train/sigma_{task}", sigma.detach()[idx].mean(), batch_size=len(idx))
        return uncertainty_weighted(losses, sigma)
