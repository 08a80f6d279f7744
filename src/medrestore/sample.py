"""The sample contract: what every dataset yields and every model family consumes.

A **sample** is a plain ``dict``:

=========  ======================================================================
key        value
=========  ======================================================================
``lq``     ``torch.float32`` tensor ``C×H×W``, the degraded input, normalised
``gt``     ``torch.float32`` tensor ``C×H×W``, the clean target, same normalisation
``task``   task id from :data:`medrestore.registry.TASKS` (e.g. ``"ct_denoise"``)
``domain`` the task's domain (``"medical"``, ``"natural"``, ``"remote_sensing"``)
``key``    stable id of the *clean* image (shared by every task built on it; the
           caption / text-embedding cache is indexed by it)
``meta``   ``dict`` with at least ``modality`` (str), ``channels`` (int, = C),
           ``normalisation`` (a :class:`Normalisation` as dict, to invert to
           physical units) and ``spacing`` (pixel spacing in mm, or ``None``)
=========  ======================================================================

Optional keys: ``text_emb`` (float32 vector from the caption cache), ``lq_path`` /
``gt_path`` (where the pixels came from).

Normalisation is always ``x_norm = (clip(x, low, high) - low) / (high - low)``, so
``lq``/``gt`` live in [0, 1] and :meth:`Normalisation.denormalise` maps model outputs back to
HU, SUV, MR intensity, 8-bit or DN.

A **batch** (from :func:`collate_samples`) stacks ``lq``/``gt`` to ``B×C×H×W`` where ``C`` is the
largest channel count in the batch (single-channel samples are replicated, the way the
all-in-one papers feed grayscale to RGB networks), keeps ``task``/``domain``/``key``/``meta`` as
lists, and adds ``channels`` (native channel count per sample), ``task_id`` and ``domain_id``
(``LongTensor`` indices into the registries). :func:`to_native_channels` undoes the replication
(channel mean), so metrics are computed in each sample's native channels.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medrestore.errors import MedrestoreError
from medrestore.registry import domain_index, get_task, task_index

LQ, GT, TASK, DOMAIN, KEY, META = "lq", "gt", "task", "domain", "key", "meta"
REQUIRED_KEYS = (LQ, GT, TASK, DOMAIN, KEY, META)
REQUIRED_META = ("modality", "channels", "normalisation", "spacing")


class SampleError(MedrestoreError, ValueError):
    """A sample or batch that breaks the contract."""


class WindowError(SampleError):
    """A normalisation window that cannot hold the data, or an impossible window."""


@dataclass(frozen=True)
class Normalisation:
    """Invertible min-max window: physical ``[low, high]`` (in ``unit``) <-> ``[0, 1]``."""

    low: float
    high: float
    unit: str = ""
    kind: str = "minmax"

    def __post_init__(self) -> None:
        if self.kind != "minmax":
            raise SampleError(f"normalisation kind {self.kind!r} is not supported; expected 'minmax'")
        if not float(self.high) > float(self.low):
            raise SampleError(f"normalisation window needs high > low, got [{self.low}, {self.high}]")

    @classmethod
    def for_task(cls, task: str) -> "Normalisation":
        spec = get_task(task)
        return cls(*spec.intensity_range, unit=spec.unit)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | "Normalisation") -> "Normalisation":
        if isinstance(d, Normalisation):
            return d
        try:
            return cls(low=float(d["low"]), high=float(d["high"]), unit=str(d.get("unit", "")),
                       kind=str(d.get("kind", "minmax")))
        except (KeyError, TypeError) as exc:
            raise SampleError(f"meta.normalisation must have 'low' and 'high', got {d!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def width(self) -> float:
        return float(self.high) - float(self.low)

    def normalise(self, x):
        """Physical units -> [0, 1] (clipped). Works on numpy arrays and tensors."""
        y = (x - self.low) / self.width
        return y.clip(0.0, 1.0) if isinstance(y, np.ndarray) else y.clamp(0.0, 1.0)

    def denormalise(self, y):
        """[0, 1] -> physical units (no clipping: the caller chooses its window)."""
        return y * self.width + self.low


def make_meta(task: str, *, normalisation: Normalisation | Mapping[str, Any] | None = None,
              spacing: Sequence[float] | None = None, channels: int | None = None,
              **extra: Any) -> dict[str, Any]:
    """Meta with the task's defaults filled in (modality, channels, normalisation)."""
    spec = get_task(task)
    norm = Normalisation.for_task(task) if normalisation is None else Normalisation.from_dict(normalisation)
    meta = {
        "modality": spec.modality,
        "channels": int(channels if channels is not None else spec.channels),
        "normalisation": norm.to_dict(),
        "spacing": None if spacing is None else [float(s) for s in spacing],
    }
    meta.update(extra)
    return meta


def window_for(dtype: np.dtype, task: str, window: Sequence[float] | None = None,
               unit: str | None = None) -> dict[str, Any]:
    """The normalisation of a sample, as a dict (the rule of the converters and the restorer).

    An explicit ``window`` (and ``unit``) wins; otherwise 8-bit data get [0, 255] "8-bit" (the
    full range of the type: photos and 8-bit products of any task), everything else the task's
    registry window (HU, MR a.u., SUV, DN)."""
    if window is not None:
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise WindowError(f"--window needs LOW < HIGH, got {lo} {hi}")
        default_unit = Normalisation.for_task(task).unit
        return Normalisation(lo, hi, unit=unit if unit is not None else default_unit).to_dict()
    if np.dtype(dtype) == np.uint8:
        return Normalisation(0.0, 255.0, unit=unit or "8-bit").to_dict()
    n = Normalisation.for_task(task)
    return Normalisation(n.low, n.high, unit=unit or n.unit).to_dict()


_DEPTH_UNIT = re.compile(r"\d+-bit")


def check_window(image: np.ndarray, norm: Mapping[str, Any] | Any, source: Any,
                 hint: str | None = None) -> None:
    """Refuse integer data deeper than a bit-depth window (``unit`` like ``"8-bit"``).

    The natural tasks' default window is the 8-bit [0, 255]: a 16-bit photo (values up to
    65,535) would be clipped to 255 and scored there without a word. Physical windows (HU,
    a.u., SUV, DN) clip out-of-window values by design and are not checked; neither is a window
    the user chose. ``norm`` is a normalisation dict (or object with ``low``/``high``/``unit``);
    ``source`` names the file; ``hint`` says how to choose another window (default: the
    converters' ``--window``)."""
    get = norm.get if isinstance(norm, Mapping) else (lambda k: getattr(norm, k, None))
    image = np.asarray(image)
    if image.dtype.kind not in "iu" or image.size == 0 \
            or not _DEPTH_UNIT.fullmatch(str(get("unit") or "")):
        return
    low, high = float(get("low")), float(get("high"))
    lo, hi = image.min(), image.max()
    if lo >= low and hi <= high:
        return
    info = np.iinfo(image.dtype)
    if hint is None:
        hint = (f"pass --window LOW HIGH for the data's range (e.g. --window {info.min} "
                f"{info.max} for the full {image.dtype} range)")
    raise WindowError(f"{source}: {image.dtype} data with max {int(hi)} (min {int(lo)}) do not "
                      f"fit the {get('unit')} window [{low:g}, {high:g}] and would be clipped; "
                      f"{hint}")


def pick_window(image: np.ndarray, task: str, source: Any,
                window: Sequence[float] | None = None, unit: str | None = None) -> dict[str, Any]:
    """:func:`window_for` the image's dtype, then :func:`check_window` unless ``window`` was
    given explicitly."""
    norm = window_for(np.asarray(image).dtype, task, window, unit)
    if window is None:
        check_window(image, norm, source)
    return norm


def make_sample(lq, gt, task: str, key: str, meta: Mapping[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    """Build and validate a sample; numpy ``H×W`` / ``C×H×W`` inputs are converted."""
    spec = get_task(task)
    lq_t, gt_t = _as_chw(lq, "lq"), _as_chw(gt, "gt")
    meta = dict(meta) if meta is not None else make_meta(task, channels=gt_t.shape[0])
    meta.setdefault("channels", int(gt_t.shape[0]))
    sample = {LQ: lq_t, GT: gt_t, TASK: task, DOMAIN: spec.domain, KEY: str(key), META: meta}
    sample.update(extra)
    validate_sample(sample)
    return sample


def _as_chw(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise SampleError(f"sample[{name!r}] must be C×H×W (or H×W), got shape {tuple(t.shape)}")
    return t.to(torch.float32).contiguous()


def validate_sample(sample: Mapping[str, Any]) -> None:
    """Raise :class:`SampleError` naming the first key that breaks the contract."""
    if not isinstance(sample, Mapping):
        raise SampleError(f"a sample must be a dict, got {type(sample).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in sample]
    if missing:
        raise SampleError(f"sample is missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    key = sample[KEY]
    where = f"sample {key!r}"
    spec = get_task(sample[TASK])
    if sample[DOMAIN] != spec.domain:
        raise SampleError(f"{where}: domain {sample[DOMAIN]!r} does not match task "
                          f"{spec.name!r} (domain {spec.domain!r})")
    lq, gt = sample[LQ], sample[GT]
    for name, t in ((LQ, lq), (GT, gt)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim != 3:
            raise SampleError(f"{where}: {name!r} must be a float32 C×H×W tensor, got "
                              f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if lq.shape != gt.shape:
        raise SampleError(f"{where}: lq shape {tuple(lq.shape)} != gt shape {tuple(gt.shape)} "
                          "(networks here are scale-1: SR inputs are resampled to the GT grid)")
    meta = sample[META]
    if not isinstance(meta, Mapping):
        raise SampleError(f"{where}: 'meta' must be a dict")
    missing_meta = [k for k in REQUIRED_META if k not in meta]
    if missing_meta:
        raise SampleError(f"{where}: meta is missing {missing_meta}; required: {list(REQUIRED_META)}")
    if int(meta["channels"]) != gt.shape[0]:
        raise SampleError(f"{where}: meta.channels={meta['channels']} but gt has {gt.shape[0]} channels")
    Normalisation.from_dict(meta["normalisation"])


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch (see module docstring for the layout)."""
    if not samples:
        raise SampleError("cannot collate an empty list of samples")
    shapes = {tuple(s[GT].shape[-2:]) for s in samples}
    if len(shapes) != 1:
        raise SampleError(f"samples in one batch must share H×W, got {sorted(shapes)}; "
                          "crop for training or use batch_size=1 for full images")
    channels = [int(s[GT].shape[0]) for s in samples]
    c_max = max(channels)
    for s, c in zip(samples, channels):
        if c not in (1, c_max):
            raise SampleError(f"sample {s[KEY]!r} has {c} channels; a batch can mix 1-channel "
                              f"samples with {c_max}-channel ones only")

    def stack(name: str) -> torch.Tensor:
        return torch.stack([s[name].expand(c_max, -1, -1) for s in samples]).contiguous()

    batch: dict[str, Any] = {
        LQ: stack(LQ),
        GT: stack(GT),
        TASK: [s[TASK] for s in samples],
        DOMAIN: [s[DOMAIN] for s in samples],
        KEY: [s[KEY] for s in samples],
        META: [s[META] for s in samples],
        "channels": torch.tensor(channels, dtype=torch.long),
        "task_id": torch.tensor([task_index(s[TASK]) for s in samples], dtype=torch.long),
        "domain_id": torch.tensor([domain_index(s[DOMAIN]) for s in samples], dtype=torch.long),
    }
    if all("text_emb" in s for s in samples):
        batch["text_emb"] = torch.stack([torch.as_tensor(s["text_emb"], dtype=torch.float32)
                                         for s in samples])
    return batch


def to_native_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Map one ``C×H×W`` (or ``B×C×H×W`` of one sample kind) back to ``channels`` channels.

    Replicated grayscale comes back as the channel mean (which is exact when the channels are
    equal, and the natural read-out when a 3-channel model's outputs differ slightly)."""
    c_dim = x.ndim - 3
    if x.shape[c_dim] == channels:
        return x
    if channels == 1:
        return x.mean(dim=c_dim, keepdim=True)
    raise SampleError(f"cannot map {x.shape[c_dim]} channels to {channels}")


def adapt_channels(x: torch.Tensor, model_channels: int) -> torch.Tensor:
    """Map a batch ``B×C×H×W`` to the model's channel count (1 -> N by replication).

    Used by the base LightningModule so 1-channel and 3-channel families run on the same data.
    N -> 1 would throw colour away, so it is an error that names the fix."""
    c = x.shape[1]
    if c == model_channels:
        return x
    if c == 1:
        return x.expand(-1, model_channels, -1, -1)
    raise SampleError(f"batch has {c}-channel samples but the model takes {model_channels} "
                      f"channel(s); set model.net.in_channels={c} (and out_channels) for this data")


def normalisation_by_task(rows: Any) -> dict[str, dict[str, Any]]:
    """``{task: {low, high, unit, kind}}`` from shard manifest rows: the row's own window, or
    the task's registry window for rows stored without one. The first window seen for a task
    is kept (shards of one task share it)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows or ():
        task = str(row.get("task", ""))
        if not task or task in out:
            continue
        norm = row.get("normalisation")
        try:
            n = Normalisation.from_dict(norm) if norm else Normalisation.for_task(task)
        except Exception:  # noqa: BLE001 - a task unknown to the registry: no window to record
            continue
        d = n.to_dict()
        out[task] = {"low": float(d["low"]), "high": float(d["high"]),
                     "unit": str(d.get("unit", "")), "kind": str(d.get("kind", "minmax"))}
    return out
