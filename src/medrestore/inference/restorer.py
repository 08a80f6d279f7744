"""Restore arrays and files in physical units with a trained checkpoint (notebooks, scripts).

    r = Restorer.from_checkpoint("logs/demo/runs/<run>/checkpoints/last.ckpt")
    hu_restored = r.restore(hu_lowdose, task="ct_denoise")     # HU in, HU out
    restored = r.restore("ld_series/")                         # a path: read, restore, return
    r.restore_file("ld_series/", "restored_series/")           # DICOM in, DICOM out

**The window.** An array is normalised with, in order: the ``normalisation`` given; the
window the checkpoint recorded for ``task`` (``medrestore_normalisation``: the training
data's); the rule of the converters (8-bit data [0, 255], otherwise the task's registry
window). ``task=None`` is fine for blind models (TAT, DATPRL-IR, Restormer): the window is then
the checkpoint's only one, or the one of the task matching the image (8-bit data; a DICOM's
``Modality``), and otherwise an error naming the checkpoint's tasks. A task-conditioned model
(``needs_task = True`` on its module) refuses ``task=None`` with its choices.

The normalised input goes through the module's channel adapter and network (eval mode; the EMA
weights when the module keeps them), comes back in the input's channels, is clipped to [0, 1]
and de-normalised. The network pads internally to its size multiple, so any H×W works.
Volumes (``Z×H×W``) run slice by slice in batches; ``tile=`` cuts large slices into
overlapping tiles (:mod:`medrestore.inference.tiling`), ``tta=`` averages flips / rotations,
and an out-of-memory batch or tile is retried smaller. Inputs stay in host memory.

:meth:`Restorer.restore_file` writes the result **in the format it read**, with the input's
geometry (affine, spacing, DICOM headers with new Series/SOP Instance UIDs and a derivation
description naming the model; NIfTI header and ``descrip``) and, for integer images, its dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from medrestore.errors import ConfigError
from medrestore.sample import Normalisation, to_native_channels

PathLike = str | os.PathLike


def checkpoint_module_class(path: PathLike) -> Any:
    """The LightningModule class that wrote a checkpoint (``medrestore_module`` entry, or the
    family of its architecture), read with ``weights_only=True``
    (see :mod:`medrestore.modules.checkpoint`)."""
    from medrestore.modules.checkpoint import module_class_of, read_module_checkpoint

    return module_class_of(read_module_checkpoint(path, "checkpoint"), f"checkpoint={path}")


class Restorer:
    """A module (or any ``nn.Module`` on normalised ``B×C×H×W``) ready for inference.

    ``windows`` are the checkpoint's training windows (``{task: {low, high, unit, kind}}``),
    ``name`` describes the model in written headers (architecture and checkpoint file)."""

    def __init__(self, module: Any, device: str | torch.device = "cpu", *,
                 windows: Mapping[str, Mapping[str, Any]] | None = None,
                 name: str | None = None) -> None:
        from medrestore.inference.tiling import pick_device

        self.device = pick_device(device)
        self.module = module.eval().to(self.device)
        self.windows = {k: dict(v) for k, v in (windows or {}).items()}
        net = getattr(getattr(module, "hparams", {}), "get", lambda *_: None)("net") or {}
        self.name = name or str(net.get("name") or type(module).__name__)
        self.last_events: list[str] = []

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str = "cpu", module_class: Any = None) -> "Restorer":
        """``module_class`` defaults to the LightningModule recorded in the checkpoint
        (TAT, DATPRL-IR, ...), else the one its architecture's family declares
        (:data:`medrestore.registry.FAMILIES`), else :class:`RestorationModule`. The file is read
        with ``weights_only=True``: a checkpoint that would run code is refused. ``device``:
        ``cpu``, ``cuda[:N]``, ``mps`` or ``auto``."""
        from medrestore.inference.tiling import pick_device
        from medrestore.modules.checkpoint import load_module, read_module_checkpoint
        from medrestore.modules.restoration import NORMALISATION_KEY

        dev = pick_device(device)
        ckpt = read_module_checkpoint(path, "checkpoint")
        windows = ckpt.get(NORMALISATION_KEY) or {}
        module = load_module(path, "checkpoint", module_class, map_location=dev, ckpt=ckpt)
        del ckpt
        net = (getattr(module, "hparams", None) or {}).get("net") or {}
        name = f"{net.get('name') or type(module).__name__} ({Path(path).name})"
        return cls(module, dev, windows=windows, name=name)

    # ------------------------------------------------------------------ windows and tasks
    @property
    def tasks(self) -> list[str]:
        """The tasks the checkpoint recorded a window for (its training data's tasks)."""
        return list(self.windows)

    def window(self, task: str | None, image: np.ndarray | None = None,
               meta: Mapping[str, Any] | None = None,
               normalisation: Normalisation | Mapping[str, Any] | None = None,
               source: Any = "input") -> Normalisation:
        """The normalisation for ``image`` (see the module docstring for the order)."""
        return self.resolve(task, image, meta, normalisation, source)[1]

    def resolve(self, task: str | None, image: np.ndarray | None = None,
                meta: Mapping[str, Any] | None = None,
                normalisation: Normalisation | Mapping[str, Any] | None = None,
                source: Any = "input") -> tuple[str | None, Normalisation]:
        """``(task, normalisation)`` for ``image``: the task given or the one ``task=None``
        resolves to (None when the checkpoint's windows are all the same and it has several
        tasks), and its window."""
        from medrestore.registry import TASKS, get_task
        from medrestore.sample import check_window, window_for

        if task is None and getattr(self.module, "needs_task", False):
            choices = self.tasks or list(TASKS)
            raise ConfigError(f"task=None: {self.name} is task-conditioned; pass task= one "
                              f"of {', '.join(choices)}")
        dtype = np.asarray(image).dtype if image is not None else np.dtype(np.float32)
        if normalisation is not None:
            return task, Normalisation.from_dict(normalisation)
        if task is None:
            task = self._infer_task(dtype, meta, source)
            if task is None:  # one window for everything the checkpoint knows
                only = self.tasks[0] if len(self.tasks) == 1 else None
                return only, Normalisation.from_dict(next(iter(self.windows.values())))
        get_task(task)  # an unknown task is one line naming the choices
        if task in self.windows:
            norm = dict(self.windows[task])
        else:
            norm = window_for(dtype, task)
        if image is not None:
            check_window(image, norm, source, hint="pass normalisation={'low': L, 'high': H} "
                         "(window=[L,H] for medrestore-predict) for the data's range, e.g. 0 "
                         "and 65535 for 16 bits")
        return task, Normalisation.from_dict(norm)

    def _infer_task(self, dtype: np.dtype, meta: Mapping[str, Any] | None, source: Any) -> str | None:
        """The task whose window fits an image when ``task=None``: None when all of the
        checkpoint's windows are the same; else the checkpoint's tasks (the registry's for a
        checkpoint that recorded none) matching the DICOM ``Modality`` or 8-bit data, if they
        agree on one window."""
        from medrestore.registry import TASKS
        from medrestore.sample import window_for

        known = self.tasks or list(TASKS)

        def win(t: str) -> tuple:
            w = self.windows.get(t) or (window_for(dtype, t) if t in TASKS else {})
            return tuple(sorted(w.items()))

        if self.windows and len({win(t) for t in known}) == 1:
            return None
        modality = str((meta or {}).get("modality") or "").upper()
        if modality in ("CT", "MR", "PT"):
            match = [t for t in known if t in TASKS and TASKS[t].modality == modality]
        elif dtype == np.uint8:
            match = [t for t in known if t in TASKS and TASKS[t].unit == "8-bit"]
        else:
            match = []
        if match and len({win(t) for t in match}) == 1:
            return match[0]
        listed = ", ".join(f"{t} {self._window_text(t)}" for t in known)
        raise ConfigError(f"{source}: task=None is ambiguous for {self.name}: its tasks use "
                          f"different windows ({listed}); pass task= or a normalisation window")

    def _window_text(self, task: str) -> str:
        w = self.windows.get(task)
        if not w:
            return "(registry window)"
        return f"[{w['low']:g}, {w['high']:g}] {w.get('unit', '')}".rstrip()

    # ------------------------------------------------------------------ arrays
    def _net(self) -> Callable[[torch.Tensor], torch.Tensor]:
        module = self.module

        def run(t: torch.Tensor) -> torch.Tensor:
            out = module(t)
            return out[0] if isinstance(out, tuple) else out

        return run

    @torch.no_grad()
    def restore_slices(self, x: np.ndarray, norm: Normalisation, *, tile: int | None = None,
                       overlap: int = 32, tta: str = "none", batch_size: int = 4,
                       blend: str = "gaussian", min_tile: int = 32, amp: bool = False,
                       progress: Callable[[int], object] | None = None) -> np.ndarray:
        """``N×C×H×W`` physical -> restored ``N×C×H×W`` physical (float32)."""
        from medrestore.inference.tiling import TiledRunner, TileSettings

        runner = TiledRunner(self._net(), self.device,
                             TileSettings(tile=tile, overlap=overlap, batch_size=batch_size,
                                          blend=blend, min_tile=min_tile), tta=tta, amp=amp)
        t = torch.from_numpy(norm.normalise(np.asarray(x, dtype=np.float32)))
        pred = runner(t, progress=progress)
        self.last_events = runner.events
        del t  # the normalised input copy is not needed any more
        out = to_native_channels(pred, x.shape[1]).clamp_(0, 1).numpy()
        return norm.denormalise(out).astype(np.float32, copy=False)

    def restore(self, image: np.ndarray | PathLike, task: str | None = None,
                normalisation: Normalisation | Mapping[str, Any] | None = None, *,
                volume: bool = False, tile: int | None = None, overlap: int = 32,
                tta: str = "none", batch_size: int = 4, amp: bool = False,
                reader: str | None = None) -> np.ndarray:
        """An array or a file path in physical units -> the restored array (float32).

        Arrays: ``H×W`` or ``C×H×W`` (one image), or ``Z×H×W`` with ``volume=True`` (slices).
        A path (any format :func:`medrestore.io.base.read_image` reads: DICOM series folder,
        NIfTI, PNG/TIFF/JPEG 2000, ``file.h5::dataset``) is read first; a volume comes back
        ``Z×H×W``, an image ``C×H×W``."""
        meta: Mapping[str, Any] | None = None
        source: Any = "array"
        if isinstance(image, (str, os.PathLike)):
            from medrestore.io.base import read_image

            source = image
            image, meta = read_image(image, reader=reader)
            volume = meta.get("axes") == "zyx"
        x = np.asarray(image)
        norm = self.window(task, x, meta, normalisation, source)
        if x.ndim == 2:
            return self.restore_slices(x[None, None], norm, tile=tile, overlap=overlap, tta=tta,
                                       batch_size=batch_size, amp=amp)[0, 0]
        if x.ndim != 3:
            raise ConfigError(f"{source}: expected an H×W, C×H×W or Z×H×W array, got shape {x.shape}")
        if volume:
            return self.restore_slices(x[:, None], norm, tile=tile, overlap=overlap, tta=tta,
                                       batch_size=batch_size, amp=amp)[:, 0]
        return self.restore_slices(x[None], norm, tile=tile, overlap=overlap, tta=tta,
                                   batch_size=batch_size, amp=amp)[0]

    # ------------------------------------------------------------------ files
    def describe(self, task: str | None, norm: Normalisation) -> str:
        """What written headers say about the pixels (DICOM DerivationDescription, NIfTI descrip)."""
        return (f"restored by medrestore {self.name}, task {task or 'blind'}, window "
                f"[{norm.low:g}, {norm.high:g}] {norm.unit}").strip()

    def restore_file(self, src: PathLike, dst: PathLike, task: str | None = None, *,
                     normalisation: Normalisation | Mapping[str, Any] | None = None,
                     scale: int = 1, overwrite: bool = False, reader: str | None = None,
                     tile: int | None = None, overlap: int = 32, tta: str = "none",
                     batch_size: int = 4, blend: str = "gaussian", min_tile: int = 32,
                     amp: bool = False, progress: Callable[[int], object] | None = None,
                     on_start: Callable[[int], object] | None = None) -> Path:
        """Restore an image file / DICOM series and write it in the same format.

        ``normalisation``: see the module docstring (the checkpoint's window for ``task``, else
        8-bit data [0, 255], otherwise the task's window; integer data deeper than an 8-bit
        window are refused). ``scale > 1`` (2-D SR inputs only) first brings the
        low-resolution image to the HR grid with MATLAB-compatible bicubic, as the loaders do;
        the written spacing is divided by ``scale``. Refuses an existing ``dst`` unless
        ``overwrite``. ``on_start(n_slices)`` and ``progress(k)`` drive a progress bar."""
        from medrestore.io.base import WriteError, format_for_suffix, read_image, write_image

        dst = Path(dst)
        if dst.exists() and not overwrite:  # before the (slow) restoration
            raise WriteError(f"{dst}: already exists; pass overwrite=True to replace it")
        image, meta = read_image(src, reader=reader)
        task, norm = self.resolve(task, image, meta, normalisation, src)
        volume = meta.get("axes") == "zyx"
        x = image.astype(np.float32)
        if scale != 1:
            if volume or int(scale) != scale or scale < 1:
                raise ConfigError(f"{src}: scale={scale} needs a 2-D image and a positive integer")
            from medrestore.degradations.resize import imresize

            x = imresize(x, scale=int(scale), layout="chw")
            meta = {**meta, "shape": list(x.shape)}
            if meta.get("spacing"):
                meta["spacing"] = [None if v is None else v / scale for v in meta["spacing"]]
        stack = x[:, None] if volume else x[None]
        if on_start is not None:
            on_start(stack.shape[0])
        out = self.restore_slices(stack, norm, tile=tile, overlap=overlap, tta=tta,
                                  batch_size=batch_size, blend=blend, min_tile=min_tile,
                                  amp=amp, progress=progress)
        out = out[:, 0] if volume else out[0]
        if image.dtype.kind in "ui":  # integer images keep their type (8/16-bit PNG, uint16 DN)
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
        options: dict[str, Any] = {}
        fmt = str(format_for_suffix(dst) or meta.get("format") or "")
        text = self.describe(task, norm)
        if fmt == "dicom":
            options["derivation_description"] = text
            old = str(meta.get("series_description") or "").strip()
            options["series_description"] = f"{old} restored".strip()[:64]
        elif fmt == "nifti":
            options["description"] = text
        return write_image(out, meta, dst, overwrite=overwrite, **options)
