"""Restore arrays in physical units with a trained checkpoint (notebooks, scripts).

    r = Restorer.from_checkpoint("logs/demo/runs/<run>/checkpoints/last.ckpt")
    hu_restored = r.restore(hu_lowdose, task="ct_denoise")     # HU in, HU out

The array is normalised with the task's window (or the ``normalisation`` given), passed through
the module's channel adapter, restored, mapped back to the input's channels and de-normalised.
The network pads internally to its size multiple, so any H×W works.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from medrestore.sample import Normalisation, to_native_channels


class Restorer:
    def __init__(self, module: Any, device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", module_class: Any = None) -> "Restorer":
        from medrestore.modules.restoration import RestorationModule

        cls_ = module_class or RestorationModule
        return cls(cls_.load_from_checkpoint(path, map_location=device, weights_only=False), device)

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
