"""Run a 2-D network over large inputs: slice batches, overlapping tiles, TTA, OOM fallback.

The whole input stays in host memory; only the batch (or the tiles) being run goes to the
device, and results come straight back. Tiles are cut and blended by MONAI's
``sliding_window_inference`` with Gaussian importance weights, so seams do not show. The
weight map is built per axis (:func:`blend_weights`): MONAI's own 2-D Gaussian map is floored
at 1e-3 *after* the product, which makes the weights of two tiles equal along the image's
outer rows and columns and lets a tile's border pixels through there. A batch or tile that runs out of device memory is retried with one slice at a time,
then with tiles, then with tiles half as large, down to ``min_tile`` -- the usual failure of
Restormer-style networks at test time on 512² and larger images.

Each tile goes through the network exactly as a whole image would (``eval`` mode): TAT's
test-time local converter therefore applies to a tile as it would to an image of the tile's
size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from medrestore.errors import ConfigError, MedrestoreError

#: test-time augmentation modes: the geometric transforms averaged (self-ensemble)
TTA_MODES = ("none", "flip", "d4")
BLEND_MODES = ("gaussian", "constant")


class OutOfDeviceMemory(MedrestoreError):
    """Even the smallest tile does not fit on the device (one line, exit 2)."""


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto``: CUDA if available, else Apple MPS, else CPU; otherwise ``torch.device(device)``
    (refused with one line when that device is not available)."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r}: {exc}; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine; use "
                          "device=auto or device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _tta_pairs(mode: str) -> list[tuple[Callable[[torch.Tensor], torch.Tensor],
                                        Callable[[torch.Tensor], torch.Tensor]]]:
    """(forward, inverse) geometric transforms on ``B×C×H×W``."""
    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}; expected one of {', '.join(TTA_MODES)}")

    def flip(dims: tuple[int, ...]):
        if not dims:
            return (lambda t: t, lambda t: t)
        return (lambda t: t.flip(dims), lambda t: t.flip(dims))

    def rot(k: int, dims: tuple[int, ...]):
        f, _ = flip(dims)
        return (lambda t: torch.rot90(f(t), k, (-2, -1)),
                lambda t: f(torch.rot90(t, -k, (-2, -1))))

    if mode == "none":
        return [flip(())]
    if mode == "flip":
        return [flip(()), flip((-1,)), flip((-2,)), flip((-2, -1))]
    return [rot(k, d) for d in ((), (-1,)) for k in range(4)]


@dataclass
class TileSettings:
    """How one call runs: ``tile`` None = whole images (tiles only after an out-of-memory),
    else square tiles of that side (clipped to the image); ``overlap`` in pixels."""

    tile: int | None = None
    overlap: int = 32
    batch_size: int = 4
    blend: str = "gaussian"
    min_tile: int = 32

    def __post_init__(self) -> None:
        if self.tile is not None and int(self.tile) < 8:
            raise ConfigError(f"tile={self.tile}; expected null (whole images) or a side >= 8")
        if int(self.overlap) < 0:
            raise ConfigError(f"overlap={self.overlap}; expected pixels >= 0")
        if self.tile is not None and int(self.overlap) >= int(self.tile):
            raise ConfigError(f"overlap={self.overlap} must be smaller than tile={self.tile}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size={self.batch_size}; expected >= 1")
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"blend={self.blend!r}; expected one of {', '.join(BLEND_MODES)}")


def blend_weights(roi: tuple[int, int], mode: str = "gaussian") -> torch.Tensor | None:
    """``H×W`` tile weights: a separable Gaussian (sigma = roi / 8 per axis, MONAI's default
    scale) floored at 1e-3 per axis, so the ratio between two tiles' weights is the same on
    every row; None for ``constant`` (plain averaging)."""
    if mode == "constant":
        return None
    axes = []
    for n in roi:
        i = torch.arange(n, dtype=torch.float32)
        g = torch.exp(-0.5 * ((i - (n - 1) / 2) / max(0.125 * n, 1e-3)) ** 2)
        axes.append((g / g.max()).clamp(min=1e-3))
    return axes[0][:, None] * axes[1][None, :]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class TiledRunner:
    """Apply ``net`` (normalised ``B×C×H×W`` -> ``B×C'×H×W``) to host tensors.

    ``progress`` is called with the number of slices finished after each batch (a tqdm bar's
    ``update``). ``events`` records each out-of-memory fallback (for the run summary)."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 settings: TileSettings | None = None, tta: str = "none",
                 amp: bool = False) -> None:
        self.net = net
        self.device = device
        self.settings = settings or TileSettings()
        self.tta = _tta_pairs(tta)
        self.amp = bool(amp)
        self.events: list[str] = []

    # -- one device call
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in -> device float tensor out, averaged over the TTA transforms."""
        out = None
        for fwd, inv in self.tta:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                y = inv(self.net(fwd(x))).float()
            out = y if out is None else out + y
        return out / len(self.tta)

    def _run_whole(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x.to(self.device)).cpu()

    def _run_tiles(self, x: torch.Tensor, tile: int, batch: int) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        h, w = x.shape[-2:]
        roi = (min(tile, h), min(tile, w))
        # at most half a tile of overlap (tiles shrunk after an out-of-memory error)
        overlap = min(self.settings.overlap, min(roi) // 2) / max(min(roi), 1)
        weights = blend_weights(roi, self.settings.blend)
        return sliding_window_inference(
            x, roi, sw_batch_size=batch, predictor=self._predict,
            overlap=overlap, mode="constant" if weights is None else "gaussian",
            roi_weight_map=weights, sw_device=self.device, device="cpu")

    def _batches(self, n: int, size: int) -> Iterator[slice]:
        for i in range(0, n, size):
            yield slice(i, min(i + size, n))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor,
                 progress: Callable[[int], object] | None = None) -> torch.Tensor:
        """``N×C×H×W`` host tensor (N slices or images) -> ``N×C'×H×W`` host tensor."""
        s = self.settings
        batch, tile = int(s.batch_size), (None if s.tile is None else int(s.tile))
        # one output buffer filled batch by batch (no list + cat, which would hold the
        # restored volume twice): host memory is the input and the output volumes plus one
        # batch, device memory one batch (or one batch of tiles), whatever the slice count
        out: torch.Tensor | None = None
        done = 0
        while done < x.shape[0]:
            part = x[done:done + batch]
            try:
                y = self._run_whole(part) if tile is None or tile >= max(x.shape[-2:]) \
                    else self._run_tiles(part, tile, batch)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_out_of_memory(exc):
                    raise
                _free(self.device)
                batch, tile = self._smaller(batch, tile, tuple(x.shape[-2:]))
                continue
            if out is None:
                out = torch.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype)
            out[done:done + part.shape[0]] = y
            done += part.shape[0]
            if progress is not None:
                progress(part.shape[0])
        if out is None:  # no slices
            return torch.empty((0, *x.shape[1:]), dtype=torch.float32)
        return out

    def _smaller(self, batch: int, tile: int | None, hw: tuple[int, int]) -> tuple[int, int]:
        """The next, smaller way to run after an out-of-memory error."""
        if batch > 1:
            self.events.append(f"out of device memory at batch {batch}: retrying one slice at a time")
            return 1, tile
        side = max(hw)
        if tile is None or tile >= side:
            new = 512
            while new >= side:
                new //= 2
        else:
            new = tile // 2
        if new < self.settings.min_tile:
            raise OutOfDeviceMemory(
                f"out of device memory on {self.device} even with {tile or side}-pixel tiles "
                f"(min_tile={self.settings.min_tile}); use device=cpu or a smaller model")
        self.events.append(f"out of device memory with {'whole images' if tile is None else f'{tile}-pixel tiles'}: "
                           f"retrying with {new}-pixel tiles")
        return 1, new
