"""Training and evaluation of MTMed3D (:mod:`medrestore.models.archs.mtmed3d`) on 3-D analysis
samples (``image`` 4 x X x Y x Z, ``seg`` TC/WT/ET, ``boxes``/``box_labels``, ``grade``).

Losses (as the authors): segmentation = MONAI ``DiceLoss`` on the three sigmoid channels
(squared denominator, numerator smoothing 0, denominator 1e-6); grading = MONAI ``FocalLoss``
(gamma 2.8) on the two one-hot grade logits, cases of unknown grade (-1) left out; detection =
sigmoid focal (gamma 2) on the anchors + smooth-L1 on box deltas
(:class:`medrestore.losses.detection.RetinaDetection`).

Loss balancing through :func:`medrestore.losses.multitask.build_balancer` (``fixed`` |
``uncertainty`` | ``gradnorm``). Training uses manual optimisation in every mode (one code path):
for GradNorm the balancer's own optimiser moves the task weights from the gradient norms at the
last *shared* parameter (the encoder's final patch-merging projection, read by every decoder),
through ``torch.autograd.grad`` only, so nothing of its loss reaches the network's gradients.
The authors' GradNorm differs: norms at the segmentation decoder's last parameter (its output
bias), where the detection loss has no gradient (its norm is 0 and its weight moves only through
renormalisation); weights reset to 1 and L(0) re-anchored at the first step of every epoch; its
Adam state re-created after every step; and its loss back-propagated into the network's
gradients before the network's optimiser step.

Evaluation (``evaluation.mode``):

* ``centre_crop`` -- **the authors' protocol**: the central ``roi_size`` cube of each volume
  (image, masks; boxes clipped to it with MONAI ``spatial_crop_boxes``), one forward pass. When
  the data module already delivers centre crops of that size this is the identity.
* ``full`` -- the whole volume: segmentation by MONAI ``sliding_window_inference`` with the
  training ``roi_size``; detection and grading by one forward pass over the whole volume,
  zero-padded at the far end of each axis to a multiple of the network's stride (32), boxes
  clipped back to the unpadded volume (our protocol; the authors evaluate only the crop).

Metrics: Dice and HD95 per region (TC/WT/ET, threshold on the sigmoid, 0.3 as the authors) and
their means; COCO mAP over IoU 0.10:0.05:0.50, AP@0.5 and mAR (at most 10 detections per image);
grading accuracy / sensitivity / specificity / AUROC (HGG = positive), via
:mod:`medrestore.metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from medrestore.errors import ConfigError
from medrestore.models.archs.mtmed3d import REGIONS, TASKS

CONFIG_KEY = "medrestore_config"
EVAL_MODES = ("centre_crop", "full")
#: default per-group learning rates (the authors' multi-task AdamW groups)
AUTHORS_LR_GROUPS = {"encoder": 1e-4, "seg": 1e-4, "det": 1e-5, "cls": 1e-5}
TASK_NAMES = {"seg": "segmentation", "det": "detection", "cls": "grading"}


def _plain(x: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return x


def _tuplify(x: Any) -> Any:
    """Config lists -> tuples (MONAI norm specs, anchor shapes)."""
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuplify(v) for k, v in x.items()}
    return x


class MTMed3DModule(L.LightningModule):
    """LightningModule for MTMed3D (see the module docstring).

    Args:
        net: architecture config (``name``: a registered MTMed3D arch; the rest its keyword
            arguments, e.g. ``tasks``, ``cls_input``).
        optimizer: ``_target_`` + keyword arguments (default AdamW); ``lr`` is the fallback for
            a group missing from ``lr_groups``.
        lr_groups: learning rate per parameter group ``encoder | seg | det | cls``.
        scheduler: ``_target_`` + keyword arguments, or null; ``total_steps: null`` is filled
            with the trainer's estimated steps, ``T_max: null`` with ``max_epochs``.
        scheduler_interval: ``epoch`` | ``step``.
        loss: ``balance`` (``mode``, ``weights``, ``alpha``, ``lr``, ``reanchor``), ``seg``
            (DiceLoss options), ``seg_ce_weight`` (0 = Dice only, the authors'; > 0 adds that
            much voxel-wise BCE, our option), ``cls_gamma``.
        detection: :class:`medrestore.losses.detection.RetinaDetection` options.
        evaluation: ``mode`` (centre_crop | full), ``roi_size``, ``threshold``, ``overlap``,
            ``sw_batch_size``, ``sw_mode``.
        grad_clip: clip the global gradient norm at this value (null: off). Manual
            optimisation: set this instead of ``trainer.gradient_clip_val``.
        monitor / monitor_mode: the logged figure checkpoints optimise.
    """

    def __init__(self, net: Mapping[str, Any], optimizer: Mapping[str, Any] | None = None,
                 lr_groups: Mapping[str, float] | None = None, scheduler: Mapping[str, Any] | None = None,
                 scheduler_interval: str = "epoch", loss: Mapping[str, Any] | None = None,
                 detection: Mapping[str, Any] | None = None, evaluation: Mapping[str, Any] | None = None,
                 grad_clip: float | None = None, monitor: str = "val/dice_mean",
                 monitor_mode: str = "max") -> None:
        super().__init__()
        net, optimizer, lr_groups, scheduler, loss, detection, evaluation = (
            _plain(v) for v in (net, optimizer, lr_groups, scheduler, loss, detection, evaluation))
        self.save_hyperparameters({"net": net, "optimizer": optimizer, "lr_groups": lr_groups,
                                   "scheduler": scheduler, "scheduler_interval": scheduler_interval,
                                   "loss": loss, "detection": detection, "evaluation": evaluation,
                                   "grad_clip": grad_clip, "monitor": monitor, "monitor_mode": monitor_mode})
        self.automatic_optimization = False
        self.monitor, self.monitor_mode = monitor, monitor_mode
        if scheduler_interval not in ("epoch", "step"):
            raise ConfigError(f"model.scheduler_interval={scheduler_interval!r}: expected epoch | step")
        self.net = self._build_net(dict(net))
        self.tasks: tuple[str, ...] = self.net.tasks

        from monai.losses import DiceCELoss, DiceLoss, FocalLoss

        from medrestore.losses.detection import build_detection
        from medrestore.losses.multitask import build_balancer

        loss = dict(loss or {})
        seg_opts = {"squared_pred": True, "smooth_nr": 0.0, "smooth_dr": 1e-6, **dict(loss.get("seg") or {})}
        ce = float(loss.get("seg_ce_weight", 0.0))
        if "seg" not in self.tasks:
            self.seg_loss = None
        elif ce > 0:  # our option: Dice + ce x voxel-wise BCE (MONAI DiceCELoss); the authors use Dice only
            self.seg_loss = DiceCELoss(sigmoid=True, to_onehot_y=False, lambda_ce=ce, **seg_opts)
        else:
            self.seg_loss = DiceLoss(sigmoid=True, to_onehot_y=False, **seg_opts)
        self.cls_loss = FocalLoss(gamma=float(loss.get("cls_gamma", 2.8)), reduction="mean")
        self.detection = build_detection(detection) if "det" in self.tasks else None
        if self.detection is not None and self.detection.num_anchors != self.net.num_anchors:
            raise ConfigError(f"model.detection.anchor_shapes has {self.detection.num_anchors} shapes but "
                              f"model.net.num_anchors={self.net.num_anchors}")
        bal = dict(loss.get("balance") or {})
        self.balancer = build_balancer(str(bal.get("mode", "fixed")), list(self.tasks), bal.get("weights"),
                                       alpha=float(bal.get("alpha", 0.12)), lr=float(bal.get("lr", 1e-3)),
                                       reanchor=str(bal.get("reanchor", "first")), key="model.loss.balance")
        ev = {"mode": "centre_crop", "roi_size": [96, 96, 96], "threshold": 0.3, "overlap": 0.25,
              "sw_batch_size": 1, "sw_mode": "constant", **dict(evaluation or {})}
        if ev["mode"] not in EVAL_MODES:
            raise ConfigError(f"model.evaluation.mode={ev['mode']!r}: expected {' | '.join(EVAL_MODES)}")
        roi = [int(v) for v in (ev["roi_size"] if isinstance(ev["roi_size"], (list, tuple)) else [ev["roi_size"]] * 3)]
        if len(roi) != 3 or any(r % self.net.size_divisible for r in roi):
            raise ConfigError(f"model.evaluation.roi_size={ev['roi_size']}: expected 3 sides, each a multiple "
                              f"of {self.net.size_divisible}")
        ev["roi_size"] = roi
        self.evaluation = ev
        self._outputs: dict[str, list[dict[str, Any]]] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.medrestore_config: Any = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _build_net(cfg: dict[str, Any]) -> nn.Module:
        from medrestore.registry import ARCHS, build_arch, family_of

        name = cfg.pop("name", None)
        if name not in ARCHS or family_of(name) != "mtmed3d":
            raise ConfigError(f"model.net.name={name!r}: expected an MTMed3D architecture "
                              "(mtmed3d | mtmed3d_tiny)")
        for key in ("seg_norm", "depths", "num_heads", "tasks", "cls_densenet"):
            if key in cfg:
                cfg[key] = _tuplify(cfg[key]) if key != "cls_densenet" or cfg[key] is None else \
                    {k: _tuplify(v) for k, v in dict(cfg[key]).items()}
        try:
            return build_arch(name, **cfg)
        except TypeError as exc:
            raise ConfigError(f"model.net: {exc}") from None

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        return self.net(x)

    # ------------------------------------------------------------------ losses
    def task_losses(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One scalar per task present in this batch (grading is skipped when every case in the
        batch has unknown grade)."""
        losses: dict[str, torch.Tensor] = {}
        x = batch["image"]
        if "seg" in self.tasks:
            losses["seg"] = self.seg_loss(out["seg"], batch["seg"].to(out["seg"].dtype))
        if "det" in self.tasks:
            losses["det"] = self.detection.loss(x, out["det"], batch["boxes"], batch["box_labels"])["total"]
        if "cls" in self.tasks:
            grade = torch.as_tensor(batch["grade"], device=x.device).reshape(-1)
            known = grade >= 0
            if bool(known.any()):
                target = F.one_hot(grade[known].long(), num_classes=out["cls"].shape[1]).to(out["cls"].dtype)
                losses["cls"] = self.cls_loss(out["cls"][known], target)
        return losses

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        out = self.net(batch["image"])
        losses = self.task_losses(out, batch)
        total = self.balancer(losses)
        bad = [k for k, v in losses.items() if not torch.isfinite(v.detach())]
        if bad:
            from medrestore.errors import MedrestoreError

            raise MedrestoreError(f"non-finite {', '.join(bad)} loss at step {self.global_step} "
                                  f"(cases {batch.get('key')})")
        if self.balancer.mode == "gradnorm":
            # weights only (autograd.grad); the network's .grad are untouched
            self.balancer.gradnorm_step(losses, self.net.shared_parameter())
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        clip = self.hparams.grad_clip
        if clip:
            self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
        opt.step()
        sched = self.lr_schedulers()
        if sched is not None and self.hparams.scheduler_interval == "step":
            sched.step()
        bs = batch["image"].shape[0]
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            self.log(f"train/loss_{k}", v.detach(), batch_size=bs)
        if len(self.tasks) > 1:
            for k, w in self.balancer.weights.items():
                self.log(f"train/weight_{k}", w, batch_size=bs)
        return total.detach()

    def on_train_epoch_start(self) -> None:
        self.balancer.new_epoch()

    def on_train_epoch_end(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None and self.hparams.scheduler_interval == "epoch":
            sched.step()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        from hydra.utils import get_class, instantiate

        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 1e-4})
        base_lr = float(opt_cfg.get("lr", 1e-4))
        lrs = {**AUTHORS_LR_GROUPS, **dict(self.hparams.lr_groups or {})}
        unknown = [k for k in lrs if k not in ("encoder",) + TASKS]
        if unknown:
            raise ConfigError(f"model.lr_groups.{unknown[0]}: expected encoder | seg | det | cls")
        groups = [{"params": list(m.parameters()), "lr": float(lrs.get(k, base_lr)), "name": k}
                  for k, m in self.net.decoder_groups().items()]
        extra = self.balancer.network_parameters()
        if extra:
            groups.append({"params": extra, "lr": base_lr, "name": "balancer"})
        # the groups are passed to the class directly (instantiate would turn them into configs)
        target = opt_cfg.pop("_target_", "torch.optim.AdamW")
        if not str(target).startswith(("torch.optim.", "medrestore.")):
            raise ConfigError(f"model.optimizer._target_={target!r}: expected a torch.optim / medrestore class")
        optimizer = get_class(target)(groups, **opt_cfg)
        sched_cfg = dict(self.hparams.scheduler or {})
        if not sched_cfg:
            return optimizer
        if "total_steps" in sched_cfg and sched_cfg["total_steps"] is None:
            sched_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        if "T_max" in sched_cfg and sched_cfg["T_max"] is None:
            sched_cfg["T_max"] = int(self.trainer.max_epochs if self.hparams.scheduler_interval == "epoch"
                                     else self.trainer.estimated_stepping_batches)
        scheduler = instantiate(sched_cfg, optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}}

    # ------------------------------------------------------------------ evaluation
    def _centre_crop(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        from monai.data.box_utils import spatial_crop_boxes

        x = batch["image"]
        size = list(x.shape[2:])
        roi = self.evaluation["roi_size"]
        start = [max(0, (s - r) // 2) for s, r in zip(size, roi)]
        end = [min(s, a + r) for s, a, r in zip(size, start, roi)]
        if start == [0, 0, 0] and end == size:
            return dict(batch)
        sl = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(start, end))
        out = dict(batch)
        out["image"] = x[sl]
        if "seg" in batch:
            out["seg"] = batch["seg"][sl]
        boxes, labels = [], []
        for b, lab in zip(batch.get("boxes") or [], batch.get("box_labels") or []):
            cropped, keep = spatial_crop_boxes(b.reshape(-1, 6).float(), start, end, remove_empty=True)
            boxes.append(cropped.reshape(-1, 6))
            labels.append(lab.reshape(-1)[keep.bool()])
        out["boxes"], out["box_labels"] = boxes, labels
        return out

    @torch.no_grad()
    def predict_volume(self, x: torch.Tensor) -> dict[str, Any]:
        """Network outputs for a batch of volumes under ``evaluation.mode``: ``seg`` logits,
        ``cls`` logits, ``dets`` (decoded boxes per image)."""
        res: dict[str, Any] = {}
        if self.evaluation["mode"] == "centre_crop":
            out = self.net(x)
            if "seg" in out:
                res["seg"] = out["seg"]
            xin = x
        else:
            from monai.inferers import sliding_window_inference

            div = self.net.size_divisible
            size = list(x.shape[2:])
            pad = [(-s) % div for s in size]
            xin = F.pad(x, [p for d in reversed(pad) for p in (0, d)]) if any(pad) else x
            out = self.net(xin)
            if "seg" in self.tasks:
                roi = self.evaluation["roi_size"]
                if all(s <= r for s, r in zip(size, roi)) and not any(pad):
                    res["seg"] = out["seg"]
                else:
                    res["seg"] = sliding_window_inference(
                        x, roi_size=roi, sw_batch_size=int(self.evaluation["sw_batch_size"]),
                        predictor=self.net.segment, overlap=float(self.evaluation["overlap"]),
                        mode=str(self.evaluation["sw_mode"]))
        if "cls" in out:
            res["cls"] = out["cls"]
        if "det" in out:
            dets = self.detection.decode(xin, out["det"])
            if xin is not x:
                from monai.data.box_utils import clip_boxes_to_image

                for d in dets:
                    d["boxes"], keep = clip_boxes_to_image(d["boxes"], list(x.shape[2:]), remove_empty=True)
                    d["scores"], d["labels"] = d["scores"][keep], d["labels"][keep]
            res["dets"] = dets
        return res

    def _eval_step(self, stage: str, batch: Mapping[str, Any]) -> None:
        from medrestore.metrics.segmentation import dice_per_image, hd95_per_image

        if self.evaluation["mode"] == "centre_crop":
            batch = self._centre_crop(batch)
        x = batch["image"]
        res = self.predict_volume(x)
        rows = self._outputs.setdefault(stage, [])
        b = x.shape[0]
        item: dict[str, Any] = {}
        if "seg" in res:
            pred = torch.sigmoid(res["seg"].float()) > float(self.evaluation["threshold"])
            target = batch["seg"] > 0.5
            item["dice"] = dice_per_image(pred, target).cpu()
            metas = batch.get("meta") or [{}] * b
            spacing = [list(m.get("spacing") or (1.0, 1.0, 1.0)) for m in metas]
            item["hd95"] = hd95_per_image(pred.cpu(), target.cpu(), spacing=spacing)
        if stage == "test":
            # trivial predictors, for the "above chance" question: every brain voxel as tumour,
            # the brain's bounding box as the detection (score 1); grading: see compute_metrics
            brain = (x != 0).any(dim=1, keepdim=True)
            if "seg" in res:
                item["dice_brain"] = dice_per_image(brain.expand_as(target), target).cpu()
            if "dets" in res:
                from medrestore.io.volumes import mask_box

                item["brain_boxes"] = [torch.as_tensor(mask_box(bm[0].cpu().numpy()),
                                                       dtype=torch.float32).reshape(-1, 6)
                                       for bm in brain]
        if "dets" in res:
            item["pred_boxes"] = [d["boxes"].cpu() for d in res["dets"]]
            item["pred_scores"] = [d["scores"].cpu() for d in res["dets"]]
            item["gt_boxes"] = [g.reshape(-1, 6).cpu() for g in batch["boxes"]]
        if "cls" in res:
            item["prob"] = torch.softmax(res["cls"].float(), dim=1)[:, 1].cpu()
            item["grade"] = torch.as_tensor(batch["grade"]).reshape(-1).cpu()
        rows.append(item)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def compute_metrics(self, items: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Data-set metrics from the per-batch records of :meth:`_eval_step`."""
        from medrestore.metrics.classification import classification_metrics
        from medrestore.metrics.detection import detection_map
        from medrestore.metrics.segmentation import nan_mean

        m: dict[str, float] = {}
        if not items:
            return m
        if "dice" in items[0]:
            dice = torch.cat([i["dice"] for i in items]).float()
            hd = torch.cat([i["hd95"] for i in items]).float()
            for k, r in enumerate(REGIONS):
                m[f"dice_{r}"] = float(dice[:, k].mean())
                m[f"hd95_{r}"] = float(nan_mean(hd[:, k]))
            m["dice_mean"] = float(dice.mean())
            m["hd95_mean"] = float(nan_mean(torch.tensor([m[f"hd95_{r}"] for r in REGIONS])))
        if "dice_brain" in items[0]:
            base = torch.cat([i["dice_brain"] for i in items]).float()
            for k, r in enumerate(REGIONS):
                m[f"dice_brain_{r}"] = float(base[:, k].mean())
            m["dice_brain_mean"] = float(base.mean())
        if "pred_boxes" in items[0]:
            pb = [b for i in items for b in i["pred_boxes"]]
            ps = [s for i in items for s in i["pred_scores"]]
            gb = [g for i in items for g in i["gt_boxes"]]
            m.update({k: float(v) for k, v in detection_map(pb, ps, gb).items()})
            if "brain_boxes" in items[0]:
                bb = [b for i in items for b in i["brain_boxes"]]
                base = detection_map(bb, [torch.ones(len(b)) for b in bb], gb)
                m.update({f"{k}_brain_box": float(v) for k, v in base.items() if k in ("map", "ap50")})
        if "prob" in items[0]:
            probs = torch.cat([i["prob"] for i in items])
            grades = torch.cat([i["grade"] for i in items])
            cm = classification_metrics(probs, grades)
            m.update({k: float(cm[k]) for k in ("accuracy", "sensitivity", "specificity", "auroc")})
            known = grades[grades >= 0]
            if known.numel():   # a constant guess of the more frequent grade
                share = float((known == 1).float().mean())
                m["accuracy_majority"] = max(share, 1.0 - share)
        return m

    def _finish(self, stage: str) -> dict[str, float]:
        items = self._outputs.pop(stage, [])
        metrics = self.compute_metrics(items)
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v if math.isfinite(v) else float("nan"), sync_dist=False)
        self.last_metrics[stage] = metrics
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    # ------------------------------------------------------------------ results table
    def results_rows(self, metrics: Mapping[str, float], stage: str) -> list[dict[str, Any]]:
        """Rows of the results table: one per segmentation region (TC, WT, ET, mean) with Dice
        and HD95, one for detection (mAP over IoU 0.10:0.05:0.50, AP@0.5, mAR), one for grading
        (accuracy, sensitivity, specificity, AUROC). ``metrics`` keys with or without the
        ``<stage>/`` prefix."""
        pre = f"{stage}/"
        m = {(k[len(pre):] if k.startswith(pre) else k): float(v) for k, v in metrics.items()
             if "/" not in k or k.startswith(pre)}
        mode = self.evaluation["mode"]
        rows: list[dict[str, Any]] = []
        if "seg" in self.tasks and "dice_mean" in m:
            for r in REGIONS + ("mean",):
                row = {"task": "segmentation", "region": r.upper() if r != "mean" else "mean",
                       "dice": m.get(f"dice_{r}"), "hd95": m.get(f"hd95_{r}"), "eval": mode}
                if f"dice_brain_{r}" in m:
                    row["dice_brain"] = m[f"dice_brain_{r}"]
                rows.append(row)
        if "det" in self.tasks and "map" in m:
            row = {"task": "detection", "map": m.get("map"), "ap50": m.get("ap50"),
                   "mar": m.get("mar"), "eval": mode}
            row.update({k: m[k] for k in ("map_brain_box", "ap50_brain_box") if k in m})
            rows.append(row)
        if "cls" in self.tasks and "accuracy" in m:
            row = {"task": "grading", **{k: m.get(k) for k in
                                         ("accuracy", "sensitivity", "specificity", "auroc")},
                   "eval": mode}
            if "accuracy_majority" in m:
                row["accuracy_majority"] = m["accuracy_majority"]
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        cls = type(self)
        checkpoint["medrestore_module"] = f"{cls.__module__}:{cls.__qualname__}"
        if self.medrestore_config is not None:
            checkpoint[CONFIG_KEY] = _plain(self.medrestore_config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CONFIG_KEY in checkpoint and self.medrestore_config is None:
            self.medrestore_config = checkpoint[CONFIG_KEY]
