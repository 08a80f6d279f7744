"""Restore arrays in physical units with a trained checkpoint (notebooks, scripts).

    r = Restorer.from_checkpoint("logs/demo/runs/<run>/checkpoints/last.ckpt")
    hu_restored = r.restore(hu_lowdose, task="ct_denoise")     # HU in, HU out
    r.restore_file("ld_series/", "restored_series/", task="ct_denoise")   # DICOM in, DICOM out

The array is normalised with the task's window (or the ``normalisation`` given), passed through
the module's channel adapter, restored, mapped back to the input's channels and de-normalised.
The network pads internally to its size multiple, so any H×W works.

:meth:`Restorer.restore_file` reads any format :func:`medrestore.io.base.read_image` reads
(DICOM series, NIfTI, PNG/JPEG/TIFF/JPEG 2000, HDF5), restores each slice of a volume (or the
one 2-D image) and writes the result **in the format it read**, with the input's geometry
(affine, spacing, DICOM headers with new UIDs) and, for integer images, its dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from medrestore.sample import Normalisation, to_native_channels


def checkpoint_module_class(path: str | os.PathLike) -> Any:
    """The LightningModule class that wrote a checkpoint (``medrestore_module`` entry, or the
    family of its architecture), read with ``weights_only=True``
    (see :mod:`medrestore.modules.checkpoint`)."""
    from medrestore.modules.checkpoint import module_class_of, read_module_checkpoint

    return module_class_of(read_module_checkpoint(path, "checkpoint"), f"checkpoint={path}")


class Restorer:
    def __init__(self, module: Any, device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", module_class: Any = None) -> "Restorer":
        """``module_class`` defaults to the LightningModule recorded in the checkpoint
        (TAT, DATPRL-IR, ...), else the one its architecture's family declares
        (:data:`medrestore.registry.FAMILIES`), else :class:`RestorationModule`. The file is read
        with ``weights_only=True``: a checkpoint that would run code is refused."""
        from medrestore.modules.checkpoint import load_module

        return cls(load_module(path, "checkpoint", module_class, map_location=device), device)

    @torch.no_grad()
    def restore(self, image: np.ndarray, task: str,
                normalisation: Normalisation | Mapping[str, Any] | None = None) -> np.ndarray:
        """``H×W`` or ``C×H×W`` array in physical units -> restored array, same shape and units."""
        norm = Normalisation.for_task(task) if normalisation is None else Normalisation.from_dict(normalisation)
        x = np.asarray(image, dtype=np.float32)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[None]
        if x.ndim != 3:
            raise ValueError(f"expected an H×W or C×H×W array, got shape {x.shape}")
        t = torch.from_numpy(norm.normalise(x)).unsqueeze(0).to(self.device)
        pred = self.module(t)[0].float()
        out = to_native_channels(pred, x.shape[0]).clamp(0, 1).cpu().numpy()
        out = norm.denormalise(out)
        return out[0] if squeeze else out

    def restore_file(self, src: str | os.PathLike, dst: str | os.PathLike, task: str, *,
                     normalisation: Normalisation | Mapping[str, Any] | None = None,
                     scale: int = 1, overwrite: bool = False, reader: str | None = None) -> Path:
        """Restore an image file / DICOM series and write it in the same format.

        ``normalisation`` defaults to the rule the converters use (8-bit data: [0, 255],
        otherwise the task's window), so a model trained on converted shards sees the same
        scaling. ``scale > 1`` (2-D SR inputs only) first brings the low-resolution image to
        the HR grid with MATLAB-compatible bicubic, as the loaders do; the written spacing is
        divided by ``scale``. Refuses an existing ``dst`` unless ``overwrite``."""
        from medrestore.sample import check_window, window_for
        from medrestore.io.base import WriteError, read_image, write_image

        dst = Path(dst)
        if dst.exists() and not overwrite:  # before the (slow) restoration
            raise WriteError(f"{dst}: already exists; pass overwrite=True to replace it")
        image, meta = read_image(src, reader=reader)
        if normalisation is None:  # the default window must hold the data (16-bit photos)
            normalisation = window_for(image.dtype, task)
            check_window(image, normalisation, src, hint="pass normalisation={'low': L, 'high': "
                         "H} for the data's range (e.g. 0 and 65535 for 16 bits)")
        norm = Normalisation.from_dict(normalisation)
        volume = meta.get("axes") == "zyx"
        x = image.astype(np.float32)
        if scale != 1:
            if volume or int(scale) != scale or scale < 1:
                raise ValueError(f"{src}: scale={scale} needs a 2-D image and a positive integer")
            from medrestore.degradations.resize import imresize

            x = imresize(x, scale=int(scale), layout="chw")
            meta = {**meta, "shape": list(x.shape)}
            if meta.get("spacing"):
                meta["spacing"] = [None if v is None else v / scale for v in meta["spacing"]]
        out = np.stack([self.restore(sl, task, norm) for sl in x]) if volume else \
            self.restore(x, task, norm)
        if image.dtype.kind in "ui":  # integer images keep their type (8/16-bit PNG, uint16 DN)
            info = np.iinfo(image.dtype)
            out = np.clip(np.rint(out), info.min, info.max).astype(image.dtype)
        return write_image(out, meta, dst, overwrite=overwrite)
