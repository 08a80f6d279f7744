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
``metrics``, ``ema``) saved into every checkpoint, so ``load_from_checkpoint(path)`` alone
rebuilds the model.

``on_after_batch_transfer`` fills the ``lq`` of clean-only crops whose simulation the loader left
to the device (``data.degrade_on=device``, :func:`medrestore.datasets.pairs.degrade_on_device`).

EMA (``ema: {decay, power, inv_gamma, update_after_step, update_every}``): an exponential moving
average of the network's weights (``net_ema``, saved in checkpoints) with the warm-up of the
``ema_pytorch`` package that TAT uses — decay ``min(decay, 1 − (1 + k/inv_gamma)^−power)`` at
update ``k`` (weights copied on the first updates). When enabled, validation, test, predict
and :class:`~medrestore.inference.restorer.Restorer` use the EMA weights, so the best
checkpoint is picked by the EMA model's score.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import lightning as L
import torch
from torch import nn

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.losses.pixel import PIXEL_LOSSES
from medrestore.metrics.aggregate import PerTaskMean, summarise
from medrestore.metrics.protocols import METRIC_NAMES, protocol_for
from medrestore.registry import TASKS, build_arch
from medrestore.sample import adapt_channels, to_native_channels

# Lightning warns on every fit that the module's on_after_batch_transfer is used although a
# DataModule is passed; that is intended here (the module owns the device-side degradation)
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in "
                        r"`LightningModule` but have passed in a `LightningDataModule`")

STAGES = ("val", "test")
#: checkpoint keys of the self-describing part (plain containers; read back with
#: medrestore.modules.checkpoint.checkpoint_config / checkpoint_normalisation)
CONFIG_KEY = "medrestore_config"
NORMALISATION_KEY = "medrestore_normalisation"
#: what a non-finite training loss does: stop with one line (default) or skip the step, counted
NONFINITE_MODES = ("error", "skip")
SOURCES = ("pred", "lq")  # scores of the restored output and of the degraded input


class NonFiniteLossError(MedrestoreError, FloatingPointError):
    """A NaN/inf training loss (the message names the step, the tasks and the keys)."""


def _plain(x: Any) -> Any:
    """DictConfig -> plain containers (checkpoints must not pickle OmegaConf nodes)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    return copy.deepcopy(x)


def _ema_config(ema: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not ema:
        return None
    defaults = {"decay": 0.999, "power": 2.0 / 3.0, "inv_gamma": 1.0, "update_after_step": 0,
                "update_every": 1}
    unknown = sorted(set(ema) - set(defaults))
    if unknown:
        raise ConfigError(f"model.ema has unknown key(s) {unknown}; allowed: {sorted(defaults)}")
    cfg = {**defaults, **ema}
    if not 0.0 < float(cfg["decay"]) < 1.0:
        raise ConfigError(f"model.ema.decay={cfg['decay']}; expected a value in (0, 1)")
    if int(cfg["update_every"]) < 1:
        raise ConfigError(f"model.ema.update_every={cfg['update_every']}; expected >= 1")
    return cfg


#: ``model.compile`` modes (``true`` = ``default``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _compile_mode(value: Any) -> str | None:
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("false", "none", "")):
        return None
    if value is True or (isinstance(value, str) and value.lower() == "true"):
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(f"model.compile={value!r}; expected false, true or one of {list(COMPILE_MODES)}")


class RestorationModule(L.LightningModule):
    """Base LightningModule for all-in-one restoration.

    Args:
        net: ``{"name": <registered arch>, **kwargs}``.
        optimizer: ``{"_target_": "torch.optim.AdamW", "lr": ..., ...}``.
        scheduler: optional ``{"_target_": ..., ...}`` built with the optimiser; a
            ``total_steps: null`` entry is filled with the trainer's estimated step count.
        scheduler_interval: ``"step"`` or ``"epoch"``.
        loss: ``{"name": "l1"|"mse"|"charbonnier", "weight": 1.0, "balance": "none"|"input",
            "balance_power": 1.0, "nonfinite": "error"|"skip"}`` (families add balance
            modes, e.g. TAT's ``uncertainty``). A NaN/inf loss stops training with one line
            naming the step, tasks and keys (``error``) or skips the step and counts it
            (``skip``: logged as ``train/skipped_nonfinite``, kept in checkpoints).
        ema: ``None`` or ``{"decay": 0.999, "power": 2/3, "inv_gamma": 1.0,
            "update_after_step": 0, "update_every": 1}``.
        metrics: ``{"protocol": null|<name>}`` — null uses each task's registry default.
        monitor: the logged figure that checkpoints and sweeps optimise.
        compile: ``torch.compile`` the training network: ``False`` (eager), ``True`` (default
            mode) or a mode name (``COMPILE_MODES``). Applied in ``configure_model``
            (:meth:`compile_net`) with ``nn.Module.compile``, so state-dict keys are unchanged;
            a compile that fails falls back to eager with a warning. A run option, not a model
            property: not saved in checkpoints.
    """

    #: True for families whose network is conditioned on the task (a prompt chosen by task
    #: id): ``Restorer.restore(task=None)`` then refuses with the choices. Blind families
    #: (Restormer, TAT, DATPRL-IR) infer the degradation from the image.
    needs_task: bool = False

    def __init__(self, net: Mapping[str, Any], optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, scheduler_interval: str = "step",
                 loss: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                 monitor: str = "val/psnr", ema: Mapping[str, Any] | None = None,
                 compile: bool | str | None = False) -> None:
        super().__init__()
        self.compile_mode = _compile_mode(compile)
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        loss, metrics = _plain(loss) or {"name": "l1", "weight": 1.0}, _plain(metrics) or {}
        ema = _plain(ema) or None
        self.save_hyperparameters({"net": net, "optimizer": optimizer, "scheduler": scheduler,
                                   "scheduler_interval": scheduler_interval, "loss": loss,
                                   "metrics": metrics, "monitor": monitor, "ema": ema})
        net_kwargs = dict(net)
        if "name" not in net_kwargs:
            raise ConfigError("model.net needs a 'name' (a registered architecture, e.g. 'restormer')")
        self.arch = net_kwargs.pop("name")
        # weights to start from: loaded at fit start (setup), so a resumed or evaluated
        # checkpoint never needs the original file
        self.pretrained = net_kwargs.pop("pretrained", None)
        self.pretrained_format = net_kwargs.pop("pretrained_format", "medrestore")
        self._pretrained_loaded = False
        self.net = self.build_net(self.arch, net_kwargs)
        self.in_channels = int(getattr(self.net, "in_channels", net_kwargs.get("in_channels", 3)))
        self.out_channels = int(getattr(self.net, "out_channels", net_kwargs.get("out_channels", self.in_channels)))
        self.pixel_loss = PIXEL_LOSSES.get(loss.get("name", "l1"))
        self.pixel_weight = float(loss.get("weight", 1.0))
        self.nonfinite_loss = loss.get("nonfinite", "error")
        if self.nonfinite_loss not in NONFINITE_MODES:
            raise ConfigError(f"model.loss.nonfinite={self.nonfinite_loss!r}; expected one of "
                              f"{list(NONFINITE_MODES)}")
        self.skipped_nonfinite = 0  # steps skipped with nonfinite=skip (kept in checkpoints)
        self.balance = loss.get("balance", "none")
        self.balance_power = float(loss.get("balance_power", 1.0))
        if self.balance not in self.BALANCE_MODES:
            raise ConfigError(f"model.loss.balance={self.balance!r}; expected one of "
                              f"{list(self.BALANCE_MODES)}")
        self.ema_cfg = _ema_config(ema)
        self.net_ema = None
        if self.ema_cfg is not None:
            self.net_ema = copy.deepcopy(self.net).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.protocol_override = metrics.get("protocol")
        if self.protocol_override is not None:
            protocol_for(next(iter(TASKS)), self.protocol_override)  # fail early on a typo
        self.scores = nn.ModuleDict({
            f"{stage}_{src}_{m}": PerTaskMean()
            for stage in STAGES for src in SOURCES for m in METRIC_NAMES})
        self.results: dict[str, dict[str, float]] = {}
        # per-image test scores, kept only when a caller asks for them (medrestore-eval sets a
        # list here): one dict per sample, this rank's samples only
        self.sample_scores: list[dict[str, Any]] | None = None

    BALANCE_MODES: tuple[str, ...] = ("none", "input")

    def configure_model(self) -> None:
        self.compile_net()

    def compile_net(self) -> bool:
        """Compile ``net``'s forward in place (``model.compile``); returns whether it is compiled.

        ``nn.Module.compile`` wraps the module's call, not the module, so parameter names (and
        checkpoints) keep their keys (no ``_orig_mod.``). Compilation is lazy: an error at
        ``torch.compile`` or at the first compiled call makes the network run eager from then
        on, with a warning naming the error. The EMA copy (validation on full images of varying
        sizes) stays eager."""
        if self.compile_mode is None or getattr(self, "_compiled", False):
            return bool(getattr(self, "_compiled", False))
        from lightning.pytorch.utilities import rank_zero_warn

        net, mode = self.net, self.compile_mode

        def fall_back(err: BaseException) -> None:
            net._compiled_call_impl = None
            self._compiled = False
            rank_zero_warn(f"model.compile={mode}: torch.compile failed "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           "running the network eager")

        try:
            compiled = torch.compile(net._call_impl, mode=None if mode == "default" else mode)
        except Exception as err:  # noqa: BLE001 - any compiler failure means: run eager
            fall_back(err)
            return False

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                fall_back(err)
                return net._call_impl(*args, **kwargs)

        net._compiled_call_impl = guarded
        self._compiled = True
        return True

    # ------------------------------------------------------------------ hooks
    def build_net(self, name: str, kwargs: Mapping[str, Any]) -> nn.Module:
        return build_arch(name, **kwargs)

    def conditioning(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def run_net(self, lq: torch.Tensor, cond: Mapping[str, Any]) -> Any:
        return self.active_net()(lq, **cond)

    def active_net(self) -> nn.Module:
        """The weights in use: the EMA copy outside training when EMA is on, else ``net``."""
        if self.net_ema is not None and not self.training:
            return self.net_ema
        return self.net

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

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Degrade, batched on this device, the clean-only crops the loader deferred
        (``data.degrade_on=device``); other batches pass through untouched."""
        from medrestore.datasets.pairs import degrade_on_device

        return degrade_on_device(super().on_after_batch_transfer(batch, dataloader_idx))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        pred, aux = self.restore(batch)
        gt = adapt_channels(batch["gt"], self.out_channels)
        per_sample = self.sample_losses(pred, gt)
        pixel = self.weight_sample_losses(per_sample, batch, pred, aux)
        terms = {"pixel": self.pixel_weight * pixel, **self.extra_losses(batch, pred, aux)}
        total = torch.stack(list(terms.values())).sum()
        bs = pred.shape[0]
        if not self._all_finite(total):
            return self._nonfinite_step(terms, batch)
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=bs)
        return total

    def _all_finite(self, total: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (one decision for all, so under DDP every
        rank stops or skips together instead of hanging in the next all-reduce)."""
        finite = bool(torch.isfinite(total.detach()))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            finite = bool(trainer.strategy.reduce_boolean_decision(finite, all=True))
        return finite

    def _nonfinite_step(self, terms: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        """Stop with one line naming the step, the loss terms and the batch's tasks and keys
        (and which inputs hold NaN/inf), or with ``loss.nonfinite: skip`` skip the step
        (``training_step`` returns None: no backward, no optimiser step, no EMA update)."""
        step = self.trainer.global_step if self._trainer is not None else 0
        if self.nonfinite_loss == "skip":
            self.skipped_nonfinite += 1
            self._skip_ema = True
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=1)
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"non-finite training loss at global step {step}: step skipped "
                           f"({self.skipped_nonfinite} so far; keys {list(batch['key'])})")
            return None
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        bad = []
        for name in ("lq", "gt"):
            x = batch[name]
            per_sample = (~torch.isfinite(x)).any(1).flatten(1).sum(1)  # pixels, not channels
            bad += [f"{name} of {batch['key'][i]} ({int(n)} px)"
                    for i, n in enumerate(per_sample.tolist()) if n]
        where = (f"non-finite values in {'; '.join(bad)}" if bad else
                 "the inputs are finite (diverged: lower model.optimizer.lr or set "
                 "trainer.gradient_clip_val)")
        raise NonFiniteLossError(
            f"non-finite training loss at global step {step} ({values}); batch tasks "
            f"{sorted(set(batch['task']))}, keys {list(batch['key'])}; {where}; set "
            "model.loss.nonfinite=skip to skip such steps and count them")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.pretrained and not self._pretrained_loaded:
            self.load_pretrained()

    def load_pretrained(self, path: str | None = None, fmt: str | None = None) -> None:
        """Load ``model.net.pretrained`` (our layout or the authors', ``pretrained_format``)
        into the network (and the EMA copy) with the library's one weights loader,
        :func:`medrestore.models.pretrained.load_pretrained`."""
        from medrestore.models.pretrained import load_pretrained

        path = path or self.pretrained
        if not path:
            raise ConfigError("no weights to load: set model.net.pretrained")
        load_pretrained(self.net, path, fmt or self.pretrained_format, self.arch)
        if self.net_ema is not None:
            self.net_ema.load_state_dict(self.net.state_dict())
        self._pretrained_loaded = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # which LightningModule wrote it, so tools can reload any family from the file alone
        cls = type(self)
        checkpoint["medrestore_module"] = f"{cls.__module__}:{cls.__qualname__}"
        checkpoint["medrestore_skipped_nonfinite"] = int(self.skipped_nonfinite)
        # self-describing: the resolved run config (set by cli/train.py) and the data's
        # normalisation windows, so eval / predict / export need nothing but the file
        from medrestore.sample import normalisation_by_task

        config = getattr(self, "medrestore_config", None)
        if config is not None:
            checkpoint[CONFIG_KEY] = _plain(config)
        norm = dict(getattr(self, "medrestore_normalisation", None) or {})
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        for split in ("train", "val", "test"):
            ds = getattr(dm, "_sets", {}).get(split) if dm is not None else None
            for task, window in normalisation_by_task(getattr(ds, "rows", None)).items():
                norm.setdefault(task, window)
        if norm:
            self.medrestore_normalisation = norm
            checkpoint[NORMALISATION_KEY] = norm

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_nonfinite = int(checkpoint.get("medrestore_skipped_nonfinite", 0))
        if CONFIG_KEY in checkpoint and getattr(self, "medrestore_config", None) is None:
            self.medrestore_config = checkpoint[CONFIG_KEY]
        if NORMALISATION_KEY in checkpoint:
            self.medrestore_normalisation = {**checkpoint[NORMALISATION_KEY],
                                             **(getattr(self, "medrestore_normalisation", None) or {})}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after the step, not in on_train_batch_end: Lightning writes step
        # checkpoints from the callbacks' on_train_batch_end, before the module's, so an update
        # made there would be missing from the checkpoint and lost on resume
        skipped, self._skip_ema = getattr(self, "_skip_ema", False), False
        if self.net_ema is not None and not skipped:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> float:
        """One EMA update (after an optimiser step); returns the decay used (0 = copy)."""
        cfg = self.ema_cfg
        step = int(self.ema_updates)
        self.ema_updates += 1
        if step % int(cfg["update_every"]):
            return float("nan")
        after = int(cfg["update_after_step"])
        if step <= after + 1:   # ema_pytorch copies up to update_after_step, and once more to init
            decay = 0.0
        else:
            decay = min(float(cfg["decay"]),
                        1.0 - (1.0 + (step - after) / float(cfg["inv_gamma"])) ** -float(cfg["power"]))
        for e, p in zip(self.net_ema.parameters(), self.net.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.net_ema.buffers(), self.net.buffers()):
            e.copy_(b)
        return decay

    def _score(self, stage: str, batch: Mapping[str, Any]) -> torch.Tensor:
        pred, _ = self.restore(batch)
        keep = stage == "test" and self.sample_scores is not None
        for i, task in enumerate(batch["task"]):
            c = int(batch["channels"][i])
            protocol = protocol_for(task, self.protocol_override)
            gt = to_native_channels(batch["gt"][i], c)
            meta = batch["meta"][i]
            record = {"task": task, "domain": batch["domain"][i], "key": batch["key"][i]}
            for src, img in (("pred", to_native_channels(pred[i].float(), c)),
                             ("lq", to_native_channels(batch["lq"][i], c))):
                scores = protocol(img, gt, meta)
                for m in METRIC_NAMES:
                    self.scores[f"{stage}_{src}_{m}"].update(scores[m].reshape(1),
                                                             batch["task_id"][i:i + 1])
                    if keep:  # .item() syncs the device: only when asked
                        record[m if src == "pred" else f"{m}_input"] = float(scores[m])
            if keep:
                self.sample_scores.append(record)
        return pred

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("test", batch)

    def _finish(self, stage: str) -> dict[str, float]:
        summary: dict[str, dict[str, float]] = {}
        for src in SOURCES:
            computed = {m: self.scores[f"{stage}_{src}_{m}"].compute() for m in METRIC_NAMES}
            means = {m: mean for m, (mean, _, _) in computed.items()}
            _, counts, nonfinite = computed["psnr"]
            summary[src] = summarise(means, counts, nonfinite)
            for m in METRIC_NAMES:
                self.scores[f"{stage}_{src}_{m}"].reset()
        # Logged: restored scores as <stage>/<task|domain>/<metric> and <stage>/<metric>
        # (mean over tasks, the monitored figure); input scores under <stage>_input/...
        logged = {}
        for src, prefix in (("pred", stage), ("lq", f"{stage}_input")):
            bad = {k[:-len("/nonfinite")]: int(v) for k, v in summary[src].items()
                   if k.endswith("/nonfinite") and v}
            if bad:  # NaN scores stay NaN (never capped): say which tasks, once per evaluation
                from lightning.pytorch.utilities import rank_zero_warn

                what = "restored outputs" if src == "pred" else "degraded inputs"
                rank_zero_warn(f"{stage}: non-finite PSNR for {sum(bad.values())} image(s) "
                               f"({bad}) of the {what}: a NaN/inf pixel in an output, input or "
                               f"target; {prefix}/psnr is NaN")
        for name, value in summary["pred"].items():
            if name.endswith(("/n", "/nonfinite")):
                continue
            logged[f"{stage}/{name[len('mean/'):]}" if name.startswith("mean/") else f"{stage}/{name}"] = value
        for name, value in summary["lq"].items():
            if not name.endswith(("/n", "/nonfinite")):
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
    def optimizer_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters (the EMA copy is not trained)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        from hydra.utils import instantiate

        opt_cfg = self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 2e-4}
        optimizer = instantiate(opt_cfg, params=self.optimizer_parameters())
        sched_cfg = self.hparams.scheduler
        if not sched_cfg:
            return optimizer
        sched_cfg = dict(sched_cfg)
        if "total_steps" in sched_cfg and sched_cfg["total_steps"] is None:
            sched_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(sched_cfg, optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}
