"""Fixed validation panels: ``lq | restored | gt | |error|`` for the same images at every validation.

``ImagePanels`` picks the first ``max_per_task`` validation images of each task once (the order
of the val set, so the same images every time and in every run over the same data) and, every
``every_n_val``-th validation (the sanity check excluded), restores them on rank zero with the
module in eval mode under ``no_grad`` (EMA weights when EMA is on, like the val scores). Nothing
runs in training steps, and the other ranks do no work for it.

Display: every image is taken back to physical units with its ``meta.normalisation`` and shown
in a named window: the modality's entry of ``window`` (CT: soft tissue [-160, 240] HU by
default), else the sample's own normalisation window (MRI / PET / RGB / MSI). The error map is
``|restored - gt|`` in the same units, times ``error_scale`` relative to the window width, on a
black-red-yellow-white scale (white = width / error_scale); the caption names both.

Where it goes: every logger with W&B's ``log_image`` (``key=<key>/<task>``, one image per
sample, captions, ``step=global_step``); PNGs ``<dirpath>/epoch_XXX/<task>.png`` when no logger
takes images (``save_png: auto``), always (``true``) or never (``false``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

from medrestore.errors import ConfigError
from medrestore.sample import Normalisation, collate_samples, to_native_channels

#: CT soft tissue window; other modalities show their normalisation window unless named here
DEFAULT_WINDOWS: dict[str, dict[str, Any]] = {"CT": {"name": "soft tissue", "low": -160.0, "high": 240.0}}
_SEP = 2  # pixels between the four tiles


def _check_window(modality: str, w: Any) -> dict[str, Any]:
    if not isinstance(w, Mapping) or "low" not in w or "high" not in w:
        raise ConfigError(f"callbacks.image_panels.window.{modality}: expected {{name, low, high}}, "
                          f"got {w!r}")
    lo, hi = float(w["low"]), float(w["high"])
    if not hi > lo:
        raise ConfigError(f"callbacks.image_panels.window.{modality}: needs high > low, got "
                          f"[{lo:g}, {hi:g}]")
    return {"name": str(w.get("name") or f"[{lo:g}, {hi:g}]"), "low": lo, "high": hi}


def hot(x: np.ndarray) -> np.ndarray:
    """``H×W`` in [0, 1] -> ``H×W×3`` black-red-yellow-white."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * x, 3 * x - 1, 3 * x - 2], axis=-1), 0.0, 1.0)


def render_panel(lq: np.ndarray, pred: np.ndarray, gt: np.ndarray, meta: Mapping[str, Any],
                 window: Mapping[str, Any] | None = None, error_scale: float = 4.0
                 ) -> tuple[np.ndarray, str]:
    """One ``H×(4W+6)×3`` uint8 panel and its caption from normalised ``C×H×W`` arrays."""
    norm = Normalisation.from_dict(meta["normalisation"])
    unit = norm.unit
    if window is not None:
        lo, hi = float(window["low"]), float(window["high"])
        label = f"{window['name']} window [{lo:g}, {hi:g}] {unit}".rstrip()
    else:
        lo, hi = float(norm.low), float(norm.high)
        label = f"normalisation window [{lo:g}, {hi:g}] {unit}".rstrip()
    width = hi - lo

    def show(x: np.ndarray) -> np.ndarray:
        img = np.clip((norm.denormalise(x.astype(np.float64)) - lo) / width, 0.0, 1.0)
        return np.repeat(img, 3, axis=0).transpose(1, 2, 0) if img.shape[0] == 1 \
            else img[:3].transpose(1, 2, 0)

    err = np.abs(norm.denormalise(pred.astype(np.float64)) - norm.denormalise(gt.astype(np.float64)))
    err_map = hot(err.mean(axis=0) / width * error_scale)
    tiles = [show(lq), show(pred), show(gt), err_map]
    h = tiles[0].shape[0]
    sep = np.full((h, _SEP, 3), 0.5)
    parts: list[np.ndarray] = []
    for i, t in enumerate(tiles):
        parts += [t] if i == 0 else [sep, t]
    panel = (np.concatenate(parts, axis=1) * 255.0 + 0.5).astype(np.uint8)
    caption = (f"lq | restored | gt | |error|; {label}; |error| x{error_scale:g} "
               f"(white = {width / error_scale:.4g} {unit})").replace("  ", " ")
    return panel, caption


def stack_rows(images: list[np.ndarray]) -> np.ndarray:
    """Stack panels of different sizes top to bottom (black padding, 2-pixel gaps)."""
    w = max(im.shape[1] for im in images)
    rows = []
    for i, im in enumerate(images):
        if i:
            rows.append(np.zeros((_SEP, w, 3), np.uint8))
        rows.append(np.pad(im, ((0, 0), (0, w - im.shape[1]), (0, 0))))
    return np.concatenate(rows, axis=0)


def fixed_indices(rows: list[Mapping[str, Any]], max_per_task: int) -> dict[str, list[int]]:
    """The first ``max_per_task`` row indices of each task, in row order (tasks sorted)."""
    picked: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        got = picked.setdefault(str(row["task"]), [])
        if len(got) < max_per_task:
            got.append(i)
    return dict(sorted(picked.items()))


class ImagePanels(Callback):
    """Log ``lq | restored | gt | |error|`` panels of fixed val images per task (rank zero)."""

    def __init__(self, max_per_task: int = 1, every_n_val: int = 1,
                 window: Mapping[str, Any] | None = None, error_scale: float = 4.0,
                 dirpath: str | None = None, save_png: bool | str = "auto",
                 key: str = "val_panels") -> None:
        if int(max_per_task) < 1:
            raise ConfigError(f"callbacks.image_panels.max_per_task must be >= 1, got {max_per_task}")
        if int(every_n_val) < 1:
            raise ConfigError(f"callbacks.image_panels.every_n_val must be >= 1, got {every_n_val}")
        if not float(error_scale) > 0:
            raise ConfigError(f"callbacks.image_panels.error_scale must be > 0, got {error_scale}")
        if save_png not in ("auto", True, False):
            raise ConfigError(f"callbacks.image_panels.save_png must be auto, true or false, "
                              f"got {save_png!r}")
        self.max_per_task = int(max_per_task)
        self.every_n_val = int(every_n_val)
        src = DEFAULT_WINDOWS if window is None else window
        self.window = {str(m): _check_window(str(m), w) for m, w in dict(src).items()}
        self.error_scale = float(error_scale)
        self.dirpath = dirpath
        self.save_png = save_png
        self.key = key
        self._samples: dict[str, list[dict[str, Any]]] | None = None
        self._n_val = 0

    # ------------------------------------------------------------------ selection
    def _val_dataset(self, trainer: Any) -> Any:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "dataset"):
            return dm.dataset("val")
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        return getattr(loader, "dataset", None)

    def samples(self, trainer: Any) -> dict[str, list[dict[str, Any]]]:
        """``{task: [sample, ...]}``: read once, the same at every validation."""
        if self._samples is None:
            ds = self._val_dataset(trainer)
            rows = getattr(ds, "rows", None)
            if ds is None or rows is None:
                self._samples = {}
            else:
                picked = fixed_indices(rows, self.max_per_task)
                self._samples = {t: [ds[i] for i in idx] for t, idx in picked.items()}
        return self._samples

    # ------------------------------------------------------------------ hooks
    def state_dict(self) -> dict[str, Any]:
        return {"n_val": self._n_val}  # a resumed run keeps the every_n_val rhythm

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._n_val = int(state_dict.get("n_val", 0))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        self._n_val += 1  # counted on every rank, so all agree on which validations render
        if (self._n_val - 1) % self.every_n_val or trainer.global_rank != 0:
            return
        panels = self.render(trainer, pl_module)
        if panels:
            self.publish(trainer, panels)

    @torch.no_grad()
    def render(self, trainer: Any, pl_module: Any) -> dict[str, list[tuple[np.ndarray, str]]]:
        """``{task: [(panel uint8 H×W×3, caption), ...]}`` restored with the current weights."""
        from lightning.pytorch.utilities import move_data_to_device

        out: dict[str, list[tuple[np.ndarray, str]]] = {}
        was_training = pl_module.training
        pl_module.eval()
        try:
            for task, samples in self.samples(trainer).items():
                out[task] = []
                for s in samples:  # one at a time: a task's images may differ in size
                    batch = move_data_to_device(collate_samples([s]), pl_module.device)
                    with trainer.precision_plugin.forward_context():
                        pred, _ = pl_module.restore(batch)
                    c = int(batch["channels"][0])
                    arr = [to_native_channels(t.float(), c).cpu().numpy()
                           for t in (batch["lq"][0], pred[0], batch["gt"][0])]
                    meta = s["meta"]
                    panel, caption = render_panel(*arr, meta, self.window.get(meta.get("modality")),
                                                  self.error_scale)
                    out[task].append((panel, f"{task} {s.get('key', '')}: {caption}"))
        finally:
            pl_module.train(was_training)
        return out

    def publish(self, trainer: Any, panels: Mapping[str, list[tuple[np.ndarray, str]]]) -> list[Path]:
        """Send panels to every logger that takes images; PNGs per ``save_png``."""
        takers = [lg for lg in trainer.loggers if callable(getattr(lg, "log_image", None))]
        for lg in takers:
            for task, items in panels.items():
                lg.log_image(key=f"{self.key}/{task}", images=[p for p, _ in items],
                             caption=[c for _, c in items], step=trainer.global_step)
        written: list[Path] = []
        if self.save_png is True or (self.save_png == "auto" and not takers):
            from PIL import Image

            root = Path(self.dirpath or Path(trainer.default_root_dir) / "panels")
            folder = root / f"epoch_{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for task, items in panels.items():
                path = folder / f"{task}.png"
                Image.fromarray(stack_rows([p for p, _ in items])).save(path)
                (folder / f"{task}.txt").write_text("\n".join(c for _, c in items) + "\n")
                written.append(path)
        return written
