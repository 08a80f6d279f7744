"""``RestorationModule``: the one LightningModule base every model family builds on.

It owns the train / val / test / predict steps, per-task and per-domain metrics, the channel
adapter, and the optimiser / scheduler from config. A model family changes behaviour only
through these hooks (each has a working default):

=============================  ==============================================================
hook                           default
=============================  ==============================================================
``build_net(name, kwargs)``    ``medrestore.registry.build_arch(name, **kwargs)``
``conditioning(batch)``        ``{}`` — extra keyword inputs for ``net.forward``
``run_net(lq, cond)``          ``net(lq, **cond)``; may return a tensor or ``(pred, aux)``
``sample_losses(pred, gt)``    the configured pixel loss per sample, shape ``(B,)``
``weight_sample_losses(...)``  plain mean over the batch (TAT overrides: per-sample balancing)
``extra_losses(...)``          ``{}`` — named, already weighted scalar losses (DATPRL's five)
=============================  ==============================================================

Hyper-parameters are plain dicts (``net``, ``optimizer``, ``scheduler``, ``loss``,
``metrics``) saved into every checkpoint, so ``load_from_checkpoint(path)`` alone rebuilds the
model.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import lightning as L
import torch
from torch import nn

from medrestore.errors import ConfigError
from medrestore.losses.pixel import PIXEL_LOSSES
from medrestore.metrics.aggregate import PerTaskMean, summarise
from medrestore.metrics.protocols import METRIC_NAMES, protocol_for
from medrestore.registry import TASKS, build_arch
from medrestore.sample import adapt_channels, to_native_channels

STAGES = ("val", "test")
SOURCES = ("pred", "lq")  # scores of the restored output and of the degraded input


def _plain(x: Any) -> Any:
    """DictConfig -> plain containers (checkpoints must not pickle OmegaConf nodes)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return copy.deepcopy(x)


class RestorationModule(L.LightningModule):
    """Base LightningModule for all-in-one restoration.

    Args:
        net: ``{"name": <registered arch>, **kwargs}``.
        optimizer: ``{"_target_": "torch.optim.AdamW", "lr": ..., ...}``.
        scheduler: optional ``{"_target_": ..., ...}`` built with the optimiser; a
            ``total_steps: null`` entry is filled with the trainer's estimated step count.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        loss: ``{"name": "l1"|"mse"|"charbonnier", "weight": 1.0, "balance": "none"|"input",
            "balance_power": 1.0}``.
        metrics: ``{"protocol": null|<name>}`` — null uses each task's registry default.
        monitor: the logged figure that checkpoints and sweeps optimise.
    """

    def __init__(self, net: Mapping[str, Any], optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, scheduler_interval: str = "step",
                 loss: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 monitor: str = "val/psnr") -> None:
        super().__init__()
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        loss, metrics = _plain(loss) or {"name": "l1", "weight": 1.0}, _plain(metrics) or {}
        self.save_hyperparameters({"net": net, "optimizer": optimizer, "scheduler": scheduler,
                                   "scheduler_interval": scheduler_interval, "loss": loss,
                                   "metrics": metrics, "monitor": monitor})
        net_kwargs = dict(net)
        if "name" not in net_kwargs:
            raise ConfigError("model.net needs a 'name' (a registered architecture, e.g. 'restormer')")
        self.net = self.build_net(net_kwargs.pop("name"), net_kwargs)
        self.in_channels = int(getattr(self.net, "in_channels", net_kwargs.get("in_channels", 3)))
        self.out_channels = int(getattr(self.net, "out_channels", net_kwargs.get("out_channels", self.in_channels)))
        self.pixel_loss = PIXEL_LOSSES.get(loss.get("name", "l1"))
        self.pixel_weight = float(loss.get("weight", 1.0))
        self.balance = loss.get("balance", "none")
        self.balance_power = float(loss.get("balance_power", 1.0))
        if self.balance not in ("none", "input"):
            raise ConfigError(f"model.loss.balance={self.balance!r}; expected 'none' or 'input'")
        self.protocol_override = metrics.get("protocol")
        if self.protocol_override is not None:
            protocol_for(next(iter(TASKS)), self.protocol_override)  # fail early on a typo
        self.scores = nn.ModuleDict({
            f"{stage}_{src}_{m}": PerTaskMean()
            for stage in STAGES for src in SOURCES for m in METRIC_NAMES})
        self.results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ hooks
    def build_net(self, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
        return build_arch(name, **kwargs)

    def conditioning(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def run_net(self, lq: torch.Tensor, cond: Mapping[str, Any]) -> Any:
        return self.net(lq, **cond)

    def sample_losses(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.pixel_loss(pred, gt)

    def weight_sample_losses(self, losses: torch.Tensor, batch: Mapping[str, Any],
                             pred: torch.Tensor, aux: Mapping[str, Any]) -> torch.Tensor:
        """Batch mean; with ``loss.balance: input`` each sample's loss is divided by its
        (detached) input error ``L1(lq, gt) ** balance_power`` first, so tasks whose
        degradations are small in pixel terms (SR, thin streaks) are not drowned by heavy
        noise or clouds (power 1: equal relative weight; 0.5: halfway). This balancing is our
        own choice for mixed-task batches (not from a paper) and is off by default."""
        if self.balance == "input":
            lq = adapt_channels(batch["lq"], self.out_channels)
            gt = adapt_channels(batch["gt"], self.out_channels)
            scale = (lq - gt).abs().flatten(1).mean(1).detach().clamp(min=1e-3)
            return (losses / scale**self.balance_power).mean()
        return losses.mean()

    def extra_losses(self, batch: Mapping[str, Any], pred: torch.Tensor,
                     aux: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {}

    # ------------------------------------------------------------------ core
    def forward(self, lq: torch.Tensor, **cond: Any) -> torch.Tensor:
        """Restore a ``B×C×H×W`` batch in the model's channel layout (C = in_channels or 1)."""
        out = self.run_net(adapt_channels(lq, self.in_channels), cond)
        return out[0] if isinstance(out, tuple) else out

    def restore(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(prediction in the model's channels, auxiliary outputs) for a collated batch."""
        out = self.run_net(adapt_channels(batch["lq"], self.in_channels), self.conditioning(batch))
        if isinstance(out, tuple):
            pred, aux = out
            return pred, dict(aux)
        return out, {}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        pred, aux = self.restore(batch)
        gt = adapt_channels(batch["gt"], self.out_channels)
        per_sample = self.sample_losses(pred, gt)
        pixel = self.weight_sample_losses(per_sample, batch, pred, aux)
        terms = {"pixel": self.pixel_weight * pixel, **self.extra_losses(batch, pred, aux)}
        total = torch.stack(list(terms.values())).sum()
        bs = pred.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=bs)
        return total

    def _score(self, stage: str, batch: Mapping[str, Any]) -> torch.Tensor:
        pred, _ = self.restore(batch)
        for i, task in enumerate(batch["task"]):
            c = int(batch["channels"][i])
            protocol = protocol_for(task, self.protocol_override)
            gt = to_native_channels(batch["gt"][i], c)
            meta = batch["meta"][i]
            for src, img in (("pred", to_native_channels(pred[i].float(), c)),
                             ("lq", to_native_channels(batch["lq"][i], c))):
                scores = protocol(img, gt, meta)
                for m in METRIC_NAMES:
                    self.scores[f"{stage}_{src}_{m}"].update(scores[m].reshape(1),
                                                             batch["task_id"][i:i + 1])
        return pred

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("test", batch)

    def _finish(self, stage: str) -> dict[str, float]:
        summary: dict[str, dict[str, float]] = {}
        for src in SOURCES:
            computed = {m: self.scores[f"{stage}_{src}_{m}"].compute() for m in METRIC_NAMES}
            means = {m: mean for m, (mean, _) in computed.items()}
            summary[src] = summarise(means, computed[METRIC_NAMES[0]][1])
            for m in METRIC_NAMES:
                self.scores[f"{stage}_{src}_{m}"].reset()
        # Logged: restored scores as <stage>/<task|domain>/<metric> and <stage>/<metric>
        # (mean over tasks, the monitored figure); input scores under <stage>_input/...
        logged = {}
        for name, value in summary["pred"].items():
            if name.endswith("/n"):
                continue
            logged[f"{stage}/{name[len('mean/'):]}" if name.startswith("mean/") else f"{stage}/{name}"] = value
        for name, value in summary["lq"].items():
            if not name.endswith("/n"):
                logged[f"{stage}_input/{name}"] = value
        if logged:  # values are already global (metric states are summed across ranks)
            self.log_dict(logged, sync_dist=False)
        self.results[stage] = {"pred": summary["pred"], "lq": summary["lq"]}
        return logged

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """One dict per sample: restored image in native channels, clipped to [0, 1]."""
        pred, _ = self.restore(batch)
        return [{"pred": to_native_channels(pred[i].float(), int(batch["channels"][i])).clamp(0, 1).cpu(),
                 "task": batch["task"][i], "key": batch["key"][i], "meta": batch["meta"][i]}
                for i in range(pred.shape[0])]

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from hydra.utils import instantiate

        opt_cfg = self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 2e-4}
        optimizer = instantiate(opt_cfg, params=[p for p in self.parameters() if p.requires_grad])
        sched_cfg = self.hparams.scheduler
        if not sched_cfg:
            return optimizer
        sched_cfg = dict(sched_cfg)
        if "total_steps" in sched_cfg and sched_cfg["total_steps"] is None:
            sched_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(sched_cfg, optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}
