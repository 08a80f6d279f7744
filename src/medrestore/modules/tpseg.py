"""``TPSegModule``: training and evaluation of TP-Seg (task-prompted lesion segmentation).

Batches are 2-D lesion-segmentation samples (``image`` ``B×3×H×W`` ImageNet-normalised, ``mask``
``B×1×H×W`` in {0, 1}, ``task`` names, ``task_id``). The network's task ids follow ``tasks``
(the task names in id order; ``model.tasks``, else the DataModule's ``tasks`` at setup, else
the batch's ``task_id`` as given): each sample's id is looked up by its task name, so a model
can be evaluated on any subset of its tasks.

Objective (the authors' training script as recorded in the research note): the structure loss
(0.5 · soft Dice + 0.5 · boundary-weighted BCE,
:func:`medrestore.losses.segmentation.structure_loss`) on each of the four outputs (the fused
logit and the three decoder stages), summed. The prototypes move by their own moving average
from the ground-truth masks inside the network's training forward.

Optimisation: AdamW over the trainable parameters only (the Hiera trunk is frozen),
ReduceLROnPlateau on the mean validation Dice (mode max), optional linear warm-up over
``warmup_epochs`` (the authors' option: 2), gradient clipping by the trainer
(``trainer.gradient_clip_val``).

EMA (``ema: {decay: 0.999, warmup: false}``): after every optimiser step the trainable
parameters of an EMA copy move toward the network's (``torch.optim.swa_utils`` EMA update; the
first update copies) and its buffers (the prototypes) are copied; the frozen trunk is shared,
not copied. Validation, test and :meth:`predict` use the EMA weights when EMA is on, so the best
checkpoint is chosen by the EMA model's Dice. ``warmup: true`` caps the decay at
``(1 + n) / (10 + n)`` after n updates (short runs).

Metrics (:mod:`medrestore.metrics.segmentation`): the foreground probability binarised at 0.5,
Dice and IoU per image (empty-mask convention there), averaged per task (DDP-correct sums), then
macro over tasks: ``<stage>/dice/<task>``, ``<stage>/iou/<task>``, ``<stage>/dice_mean``,
``<stage>/iou_mean`` (``val/dice_mean`` is monitored). Also per task, the Dice of the trivial
predictors (all background, all foreground), to show what a score is worth. At test, the
salient-object measures (MAE, max / mean F-measure, S-measure, max / mean E-measure,
``py_sod_metrics``) per task: accumulated on each rank's own images (exact on one device).
Scores are computed at the network's input size (the DataModule's ``image_size``); the authors'
evaluator compares with the masks at their original size.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.metrics.aggregate import PerTaskMean
from medrestore.modules.restoration import CONFIG_KEY, _plain
from medrestore.registry import build_arch

STAGES = ("val", "test")
#: per-image scores averaged per task (``<stage>/<name>/<task>``)
IMAGE_SCORES = ("dice", "iou", "dice_all_bg", "dice_all_fg")
#: salient-object measures (test only), from ``SODMeasures.results()``
SOD_SCORES = ("mae", "max_fm", "mean_fm", "sm", "max_em", "mean_em")
THRESHOLD = 0.5


def _ema_config(ema: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not ema:
        return None
    unknown = sorted(set(ema) - {"decay", "warmup"})
    if unknown:
        raise ConfigError(f"model.ema has unknown key(s) {unknown}; allowed: ['decay', 'warmup']")
    decay = float(ema.get("decay", 0.999))
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"model.ema.decay={decay}; expected a value in (0, 1)")
    return {"decay": decay, "warmup": bool(ema.get("warmup", False))}


class TPSegModule(L.LightningModule):
    """LightningModule of the TP-Seg family (module docstring).

    Args:
        net: ``{"name": <registered arch>, **kwargs}``; ``num_tasks: null`` = ``len(tasks)``;
            ``backbone_weights`` (a local SAM2 / timm Hiera file) is loaded at fit start, so a
            checkpoint never needs it again; ``pretrained`` (a whole network in our layout,
            e.g. a previous run's checkpoint) likewise.
        tasks: task names in network-id order (``null``: the DataModule's ``tasks``).
        optimizer: ``{"_target_": "torch.optim.AdamW", "lr": 5e-4, "weight_decay": 5e-4}``.
        scheduler: ``{"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", ...}`` (stepped
            on ``monitor`` after validation) or a step-wise schedule (``total_steps: null`` =
            the trainer's estimate); ``null``: constant learning rate.
        warmup_epochs: linear learning-rate warm-up over this many epochs (0: none).
        loss: keyword arguments of the structure loss (``dice_weight``, ``bce_weight``).
        ema: ``null`` or ``{"decay": 0.999, "warmup": false}``.
        monitor, monitor_mode: the figure checkpoints and the plateau schedule follow.
    """

    needs_task = True

    def __init__(self, net: Mapping[str, Any], tasks: Sequence[str] | None = None,
                 optimizer: Mapping[str, Any] | None = None,
                 scheduler: Mapping[str, Any] | None = None, warmup_epochs: float = 0.0,
                 loss: Mapping[str, Any] | None = None, ema: Mapping[str, Any] | None = None,
                 monitor: str = "val/dice_mean", monitor_mode: str = "max") -> None:
        super().__init__()
        net, optimizer, scheduler = _plain(net), _plain(optimizer), _plain(scheduler)
        loss, ema = _plain(loss) or {}, _plain(ema) or None
        tasks = list(_plain(tasks)) if tasks is not None else None
        self.save_hyperparameters({"net": net, "tasks": tasks, "optimizer": optimizer,
                                   "scheduler": scheduler, "warmup_epochs": warmup_epochs,
                                   "loss": loss, "ema": ema, "monitor": monitor,
                                   "monitor_mode": monitor_mode})
        kwargs = dict(net)
        if "name" not in kwargs:
            raise ConfigError("model.net needs a 'name' (a registered architecture, e.g. 'tpseg')")
        self.arch = kwargs.pop("name")
        self.backbone_weights = kwargs.pop("backbone_weights", None)
        self.pretrained = kwargs.pop("pretrained", None)
        self._weights_loaded = False
        if kwargs.get("num_tasks") is None:
            if not tasks:
                raise ConfigError("model.net.num_tasks is null and model.tasks is not set; give "
                                  "one of them (e.g. model.tasks=${data.tasks})")
            kwargs["num_tasks"] = len(tasks)
        if tasks is not None and len(tasks) != int(kwargs["num_tasks"]):
            raise ConfigError(f"model.net.num_tasks={kwargs['num_tasks']} but model.tasks has "
                              f"{len(tasks)} names {tasks}; they must agree")
        if tasks is not None and len(set(tasks)) != len(tasks):
            raise ConfigError(f"model.tasks={tasks}: task names must be distinct")
        self.num_tasks = int(kwargs["num_tasks"])
        self.tasks: list[str] | None = tasks
        self.net = build_arch(self.arch, **kwargs)
        self.in_channels, self.out_channels = 3, 1
        self.loss_kwargs = {k: float(v) for k, v in loss.items()}
        unknown = sorted(set(self.loss_kwargs) - {"dice_weight", "bce_weight"})
        if unknown:
            raise ConfigError(f"model.loss has unknown key(s) {unknown}; allowed: "
                              "['bce_weight', 'dice_weight']")
        if monitor_mode not in ("max", "min"):
            raise ConfigError(f"model.monitor_mode={monitor_mode!r}; expected 'max' or 'min'")
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.warmup_epochs = float(warmup_epochs)
        self.ema_cfg = _ema_config(ema)
        self.net_ema: nn.Module | None = None
        if self.ema_cfg is not None:
            # share the frozen trunk's tensors: only trainable weights and buffers are averaged
            frozen = {id(p): p for p in self.net.parameters() if not p.requires_grad}
            self.net_ema = copy.deepcopy(self.net, memo=frozen).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.scores = nn.ModuleDict({f"{stage}_{name}": PerTaskMean(self.num_tasks)
                                     for stage in STAGES for name in IMAGE_SCORES})
        self._sod: dict[int, Any] = {}
        self.results: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ tasks
    def setup(self, stage: str) -> None:
        if self.tasks is None:
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            names = getattr(dm, "tasks", None)
            if names:
                names = list(names)
                if len(names) > self.num_tasks:
                    raise ConfigError(f"the data has {len(names)} tasks {names} but "
                                      f"model.net.num_tasks={self.num_tasks}")
                self.tasks = names
                self.hparams["tasks"] = names  # saved with the checkpoints
        if stage == "fit" and not self._weights_loaded:
            self.load_weights()

    def load_weights(self) -> None:
        """``model.net.pretrained`` (the whole network, our layout) and/or
        ``model.net.backbone_weights`` (the Hiera trunk; SAM2 or timm layout)."""
        if self.pretrained:
            from medrestore.models.pretrained import load_pretrained

            load_pretrained(self.net, self.pretrained, "medrestore", self.arch,
                            option="model.net.pretrained")
        if self.backbone_weights:
            self.net.load_backbone(self.backbone_weights)
        if self.net_ema is not None and (self.pretrained or self.backbone_weights):
            self.net_ema.load_state_dict(self.net.state_dict())
        self._weights_loaded = True

    def task_ids(self, batch: Mapping[str, Any]) -> Tensor:
        """The network's task id of every sample (by task name when the model knows its tasks)."""
        device = batch["image"].device
        if self.tasks is None:
            ids = torch.as_tensor(batch["task_id"]).long().to(device)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_tasks):
                raise MedrestoreError(f"task ids {ids.tolist()} outside the model's "
                                      f"{self.num_tasks} tasks")
            return ids
        index = {t: i for i, t in enumerate(self.tasks)}
        missing = sorted({t for t in batch["task"] if t not in index})
        if missing:
            raise MedrestoreError(f"tasks {missing} are not among the model's tasks {self.tasks}")
        return torch.tensor([index[t] for t in batch["task"]], dtype=torch.long, device=device)

    # ------------------------------------------------------------------ forward
    def active_net(self) -> nn.Module:
        """The weights in use: the EMA copy outside training when EMA is on, else ``net``."""
        if self.net_ema is not None and not self.training:
            return self.net_ema
        return self.net

    def forward(self, image: Tensor, task_ids: Tensor) -> Tensor:
        """Foreground logits ``B×1×H×W`` (the fused output) of the weights in use."""
        return self.active_net()(image, task_ids)[0]

    @torch.no_grad()
    def predict(self, image: Tensor, tasks: Sequence[str] | Tensor) -> Tensor:
        """Foreground probabilities for images of the given tasks (names or ids)."""
        if isinstance(tasks, Tensor):
            ids = tasks.long().to(image.device)
        else:
            ids = self.task_ids({"image": image, "task": list(tasks),
                                 "task_id": torch.zeros(len(tasks), dtype=torch.long)})
        return torch.sigmoid(self(image, ids))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        from medrestore.losses.segmentation import deep_supervision_loss

        ids = self.task_ids(batch)
        mask = batch["mask"].to(batch["image"].dtype)
        outputs = self.net(batch["image"], ids, mask)
        loss = deep_supervision_loss(outputs, mask, **self.loss_kwargs)
        if not bool(torch.isfinite(loss.detach())):
            raise MedrestoreError(f"non-finite training loss at global step {self.global_step}; "
                                  f"batch tasks {sorted(set(batch['task']))}, keys "
                                  f"{list(batch['key'])} (lower model.optimizer.lr or check the inputs)")
        self.log("train/loss", loss, prog_bar=True, batch_size=mask.shape[0])
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        self._warmup(optimizer)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.net_ema is not None:
            self.update_ema()

    def _warmup(self, optimizer: Any) -> None:
        """Linear warm-up of every group's learning rate over ``warmup_epochs``."""
        if self.warmup_epochs <= 0 or self._trainer is None:
            return
        per_epoch = max(1, int(self.trainer.num_training_batches) //
                        max(1, int(self.trainer.accumulate_grad_batches)))
        total = max(1, int(round(self.warmup_epochs * per_epoch)))
        step = int(self.trainer.global_step)
        for group in optimizer.param_groups:
            if step < total:
                base = group.setdefault("warmup_base_lr", group["lr"])
                group["lr"] = base * (step + 1) / total
            elif "warmup_base_lr" in group:
                group["lr"] = group.pop("warmup_base_lr")

    @torch.no_grad()
    def update_ema(self) -> float:
        """One EMA step of the trainable parameters (buffers copied); returns the decay used."""
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        n = int(self.ema_updates)
        self.ema_updates += 1
        decay = 0.0 if n == 0 else self.ema_cfg["decay"]
        if self.ema_cfg["warmup"] and n:
            decay = min(decay, (1.0 + n) / (10.0 + n))
        pairs = [(e, p) for e, p in zip(self.net_ema.parameters(), self.net.parameters())
                 if p.requires_grad]
        if pairs:
            ema, cur = zip(*pairs)
            get_ema_multi_avg_fn(decay)(list(ema), [p.detach() for p in cur], None)
        for e, b in zip(self.net_ema.buffers(), self.net.buffers()):
            e.copy_(b)
        return decay

    def configure_optimizers(self) -> Any:
        from hydra.utils import instantiate

        params = [p for p in self.net.parameters() if p.requires_grad]
        opt_cfg = self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 5e-4,
                                             "weight_decay": 5e-4}
        optimizer = instantiate(opt_cfg, params=params)
        sched_cfg = dict(self.hparams.scheduler or {})
        if not sched_cfg:
            return optimizer
        if "total_steps" in sched_cfg and sched_cfg["total_steps"] is None:
            sched_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(sched_cfg, optimizer=optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # stepped after each validation on the monitored figure; epochs without validation
            # leave it alone (strict=False)
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": scheduler, "monitor": self.monitor, "interval": "epoch",
                "frequency": 1, "strict": False}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _score(self, stage: str, batch: Mapping[str, Any]) -> None:
        from medrestore.metrics.segmentation import dice_per_image, iou_per_image

        ids = self.task_ids(batch)
        prob = torch.sigmoid(self(batch["image"], ids).float())
        target = batch["mask"] > THRESHOLD
        pred = prob > THRESHOLD
        scores = {"dice": dice_per_image(pred, target), "iou": iou_per_image(pred, target),
                  "dice_all_bg": dice_per_image(torch.zeros_like(target), target),
                  "dice_all_fg": dice_per_image(torch.ones_like(target), target)}
        for name, value in scores.items():
            self.scores[f"{stage}_{name}"].update(value[:, 0].to(prob.device), ids)
        if stage == "test":
            from medrestore.metrics.segmentation import SODMeasures

            for i, t in enumerate(ids.tolist()):
                acc = self._sod.get(t)
                if acc is None:
                    acc = self._sod[t] = SODMeasures()
                acc.step(prob[i, 0], target[i, 0])

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._score("test", batch)

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """One dict per sample: the foreground probability ``H×W`` (CPU), task, key, meta."""
        prob = torch.sigmoid(self(batch["image"], self.task_ids(batch)).float())
        return [{"prob": prob[i, 0].cpu(), "task": batch["task"][i], "key": batch["key"][i],
                 "meta": (batch.get("meta") or [None] * prob.shape[0])[i]}
                for i in range(prob.shape[0])]

    def on_test_epoch_start(self) -> None:
        self._sod = {}

    def task_name(self, i: int) -> str:
        return self.tasks[i] if self.tasks is not None and i < len(self.tasks) else f"task{i}"

    def _finish(self, stage: str) -> dict[str, float]:
        logged: dict[str, float] = {}
        counts = None
        for name in IMAGE_SCORES:
            mean, n, _ = self.scores[f"{stage}_{name}"].compute()
            with torch.inference_mode(False):  # fresh states usable by a later fit's no-grad loop
                self.scores[f"{stage}_{name}"].reset()
            counts = n
            present = [i for i in range(self.num_tasks) if n[i] > 0]
            for i in present:
                logged[f"{stage}/{name}/{self.task_name(i)}"] = float(mean[i])
            if present:
                logged[f"{stage}/{name}_mean"] = math.fsum(float(mean[i]) for i in present) / len(present)
        if counts is not None:
            for i in range(self.num_tasks):
                if counts[i] > 0:
                    logged[f"{stage}/n/{self.task_name(i)}"] = float(counts[i])
        if stage == "test" and self._sod:
            per_task = {i: acc.results() for i, acc in sorted(self._sod.items())}
            for i, res in per_task.items():
                for m in SOD_SCORES:
                    logged[f"{stage}/{m}/{self.task_name(i)}"] = res[m]
            for m in SOD_SCORES:
                logged[f"{stage}/{m}_mean"] = math.fsum(r[m] for r in per_task.values()) / len(per_task)
        if logged:  # already global (metric states are summed over ranks)
            self.log_dict(logged, sync_dist=False)
        self.results[stage] = logged
        return logged

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def results_rows(self, metrics: Mapping[str, float], stage: str) -> list[dict[str, Any]]:
        """One row per task (``task``, ``n``, ``dice``, ``iou``, the trivial predictors' Dice,
        and at test the salient-object measures) and a ``mean`` row (macro over tasks)."""
        prefix = f"{stage}/"
        names = ["n", *IMAGE_SCORES, *SOD_SCORES]
        tasks = sorted({k[len(prefix):].split("/", 1)[1] for k in metrics
                        if k.startswith(prefix) and k.count("/") == 2},
                       key=lambda t: (self.tasks.index(t) if self.tasks and t in self.tasks else 1 << 30, t))
        rows = []
        for t in tasks:
            row: dict[str, Any] = {"task": t}
            for m in names:
                if f"{prefix}{m}/{t}" in metrics:
                    row[m] = int(metrics[f"{prefix}{m}/{t}"]) if m == "n" else float(metrics[f"{prefix}{m}/{t}"])
            rows.append(row)
        if rows:
            mean: dict[str, Any] = {"task": "mean", "n": sum(r.get("n", 0) for r in rows)}
            for m in names[1:]:
                if f"{prefix}{m}_mean" in metrics:
                    mean[m] = float(metrics[f"{prefix}{m}_mean"])
            rows.append(mean)
        return rows

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        checkpoint["medrestore_module"] = f"{cls.__module__}:{cls.__qualname__}"
        config = getattr(self, "medrestore_config", None)
        if config is not None:
            checkpoint[CONFIG_KEY] = _plain(config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CONFIG_KEY in checkpoint and getattr(self, "medrestore_config", None) is None:
            self.medrestore_config = checkpoint[CONFIG_KEY]
        # weights come from the checkpoint: the backbone / pretrained files are not needed
        self._weights_loaded = True
