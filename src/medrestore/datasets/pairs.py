"""Datasets over prepared HDF5 pair shards (:mod:`medrestore.io.hdf5`).

* :func:`load_sets` — the manifest rows of a list of *sets* (a shard, optionally restricted to
  some tasks, with a repeat factor), for one split.
* :class:`ShardPairs` — every sample of the chosen split(s), full images (validation / test /
  predict), in manifest order.
* :class:`TrainPatches` — training patches addressed by ``(row, draw)`` pairs that a batch
  sampler (:mod:`medrestore.datasets.samplers`) hands out; the crop, the augmentation and any
  on-the-fly degradation come from ``np.random.default_rng((seed, draw))``, so a stream of
  draws is reproducible in any worker and on any rank.

Reads turn stored arrays into the sample contract: physical storage is normalised with the
sample's window, a low-resolution ``lq`` (``scale > 1``) is brought to the GT grid with
MATLAB-compatible bicubic (networks are scale-1), and a clean-only sample is degraded with its
named simulator. Crops are scale-aware: the GT window is aligned to the scale and the matching
LR window is read, so no pixel is resampled twice.

**Degrading on the training device** (``degrade_on="device"``): a clean-only crop whose
simulator has a batched torch version (CT, MRI k-space, PET; see
:data:`medrestore.degradations.torch_ops.BATCHED`) is not degraded in the worker. The worker
only crops and augments it, fills ``lq`` with NaN (so a forgotten device step fails loudly as a
non-finite input) and adds ``meta["device_degrade"] = {simulator, params, seed}``: the
simulator's checked parameters and a torch seed derived from ``(seed, draw)``. After the batch
reaches the device, :func:`degrade_on_device` (called by
``RestorationModule.on_after_batch_transfer``) builds those ``lq`` in one batched call per
simulator. Other simulators still run in the worker. The simulation then starts from the
window-clipped, augmented ``gt`` (the worker path uses the stored, unclipped crop before
augmentation), which changes nothing where the clean image lies inside its window.

Datasets store only paths and manifest rows; HDF5 files are opened lazily in the process that
reads them (keyed by pid, so a forked DataLoader worker never reuses its parent's handle).

With a caption cache (``text_cache``, :class:`medrestore.io.textcache.TextCache` or its
path) every sample also gets ``text_emb``: the pooled text embedding of its clean image, looked
up by ``key``. Every key is checked when the dataset is built, so a missing entry fails at once,
naming the key and the cache. Only the cache file is read: no captioner or encoder is loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medrestore.errors import ConfigError
from medrestore.io.hdf5 import read_manifest, read_pair, to_unit
from medrestore.registry import get_task
from medrestore.sample import make_sample


class _ShardReader:
    """Lazily opened, per-process read-only handles to a set of shards."""

    def __init__(self, shards: Sequence[str | os.PathLike]) -> None:
        self.shards = [str(s) for s in shards]
        self._pid: int | None = None
        self._files: dict[str, Any] = {}

    def file(self, shard: str):
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            import h5py

            f = self._files[shard] = h5py.File(shard, "r")
        return f

    def __getstate__(self) -> dict[str, Any]:  # h5py handles cannot be pickled (spawn, DDP)
        return {"shards": self.shards, "_pid": None, "_files": {}}


def open_text_cache(text_cache: Any, rows: Sequence[Mapping[str, Any]], what: str):
    """``None`` | path | ``TextCache`` -> ``TextCache`` (or ``None``) holding every row's key."""
    if text_cache is None:
        return None
    from medrestore.io.textcache import TextCache

    cache = text_cache if isinstance(text_cache, TextCache) else TextCache(text_cache)
    cache.require((r["key"] for r in rows), what)
    return cache


def _with_text(sample: dict[str, Any], cache) -> dict[str, Any]:
    if cache is not None:
        sample["text_emb"] = torch.from_numpy(cache.pooled(sample["key"]))
    return sample


# ------------------------------------------------------------------------------------ sets
def normalise_sets(sets: Any, tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Accept a shard path, a list of paths, or a list of set dicts
    ``{shard, tasks: null|[...], repeat: 1, name: null}``; return complete set dicts.

    ``tasks`` (global) keeps only those tasks in every set."""
    if isinstance(sets, (str, os.PathLike)):
        sets = [sets]
    if sets is None or len(sets) == 0:
        raise ConfigError("data.sets is empty: give at least one prepared .h5 shard")
    if tasks is not None:
        for t in tasks:
            get_task(t)  # unknown ids fail with the list of known ones
    out = []
    for i, s in enumerate(sets):
        if isinstance(s, (str, os.PathLike)):
            s = {"shard": s}
        if not isinstance(s, Mapping) or "shard" not in s:
            raise ConfigError(f"data.sets[{i}] must be a shard path or a dict with 'shard', got {s!r}")
        unknown = sorted(set(s) - {"shard", "tasks", "repeat", "name"})
        if unknown:
            raise ConfigError(f"data.sets[{i}] has unknown key(s) {unknown}; "
                              "allowed: shard, tasks, repeat, name")
        set_tasks = None if s.get("tasks") is None else [str(t) for t in s["tasks"]]
        for t in set_tasks or []:
            get_task(t)
        if tasks is not None:
            set_tasks = [t for t in (set_tasks or tasks) if t in tasks]
        repeat = s.get("repeat", 1)
        if int(repeat) != repeat or repeat < 1:
            raise ConfigError(f"data.sets[{i}].repeat={repeat}; expected a positive integer "
                              "(how many times each image appears per epoch)")
        name = s.get("name") or (os.path.splitext(os.path.basename(str(s["shard"])))[0]
                                 + (f"[{','.join(set_tasks)}]" if s.get("tasks") else ""))
        out.append({"shard": str(s["shard"]), "tasks": set_tasks, "repeat": int(repeat),
                    "name": str(name)})
    names = [s["name"] for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"data.sets names must be unique, got {dup} twice; give each a 'name'")
    return out


def load_sets(sets: Sequence[Mapping[str, Any]], splits: Sequence[str]) -> list[dict[str, Any]]:
    """Manifest rows of the sets for ``splits``, each with ``shard``, ``set`` (its name) and
    ``repeat`` added. A task present in two sets appears once per set."""
    rows, seen = [], set()
    for s in sets:
        for row in read_manifest(s["shard"]):
            if row["split"] in splits and (s["tasks"] is None or row["task"] in s["tasks"]):
                uid = (s["shard"], row["id"])
                if uid in seen:  # the same shard listed twice with overlapping tasks
                    raise ConfigError(f"sample {row['id']} of {s['shard']} is selected by two "
                                      "data.sets entries; give them disjoint 'tasks'")
                seen.add(uid)
                rows.append({**row, "shard": s["shard"], "set": s["name"], "repeat": s["repeat"]})
    return rows


# ------------------------------------------------------------------------------------ reads
def _upsample(lq: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Low-resolution ``C×h×w`` in [0, 1] -> ``C×H×W`` with MATLAB-compatible bicubic."""
    from medrestore.degradations.resize import imresize

    up = imresize(lq, output_shape=shape, layout="chw")
    return np.clip(up, 0.0, 1.0).astype(np.float32, copy=False)


def _simulate(gt_stored: np.ndarray, attrs: Mapping[str, Any],
              rng: np.random.Generator) -> np.ndarray:
    """Degrade a clean-only crop with the simulator named in its meta -> lq in [0, 1]."""
    from medrestore.degradations.simulators import simulate
    from medrestore.sample import Normalisation

    meta = attrs["meta"]
    sim = meta["simulator"]
    norm = Normalisation.from_dict(meta["normalisation"])
    phys = gt_stored.astype(np.float32) if attrs["storage"] == "physical" else \
        norm.denormalise(gt_stored.astype(np.float32))
    lq = simulate(sim["name"], phys, rng=rng, normalisation=norm, spacing=meta.get("spacing"),
                  **dict(sim.get("params") or {}))
    return norm.normalise(np.asarray(lq, dtype=np.float32)).astype(np.float32)


def pair_to_unit(lq: np.ndarray | None, gt: np.ndarray, attrs: Mapping[str, Any],
                 rng: np.random.Generator | None = None, upsample_lq: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Stored ``(lq, gt)`` -> float32 ``[0, 1]`` arrays on the GT grid (see module docstring)."""
    storage, meta = attrs["storage"], attrs["meta"]
    gt_u = to_unit(gt, storage, meta)
    if lq is None:
        if rng is None:
            raise ConfigError(f"{attrs['key']}: clean-only sample read without a random stream")
        return _simulate(gt, attrs, rng), gt_u
    lq_u = to_unit(lq, storage, meta)
    if lq_u.shape != gt_u.shape and upsample_lq:
        lq_u = _upsample(lq_u, gt_u.shape[-2:])
    return lq_u, gt_u


def _sample_meta(attrs: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(attrs["meta"])
    meta.setdefault("split", attrs["split"])
    if attrs["scale"] > 1:
        meta["scale"] = attrs["scale"]
    return meta


#: Where clean-only crops are degraded: in the data-loader workers (numpy, every simulator) or
#: on the training device after transfer (batched torch, the simulators that have a version).
DEGRADE_ON = ("worker", "device")
#: The ``meta`` entry that asks the device to degrade a sample.
DEVICE_DEGRADE = "device_degrade"


def check_degrade_on(value: Any) -> str:
    if value not in DEGRADE_ON:
        raise ConfigError(f"data.degrade_on={value!r}; expected one of {', '.join(DEGRADE_ON)}")
    return str(value)


def _device_params(attrs: Mapping[str, Any], seed: int, draw: int) -> dict[str, Any] | None:
    """The parameter dict of a clean-only crop whose simulator runs batched on the device, or
    ``None`` when it has no batched version (then the worker degrades it)."""
    from medrestore.degradations import torch_ops

    sim = attrs["meta"].get("simulator") or {}
    if sim.get("name") not in torch_ops.BATCHED:
        return None
    return {"simulator": sim["name"], "params": torch_ops.resolved_params(sim["name"], sim.get("params")),
            "seed": torch_ops.torch_seed(seed, draw)}


def degrade_on_device(batch: Any) -> Any:
    """Fill the ``lq`` of the samples marked ``meta["device_degrade"]`` (see the module
    docstring) on the batch's device: one batched simulator call per (simulator, parameters,
    channels) group. Batches without marked samples are returned untouched."""
    metas = batch.get("meta") if isinstance(batch, Mapping) else None
    if not isinstance(metas, (list, tuple)):
        return batch
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, m in enumerate(metas):
        d = m.get(DEVICE_DEGRADE) if isinstance(m, Mapping) else None
        if d is not None:
            c = int(batch["channels"][i]) if "channels" in batch else int(batch["gt"].shape[1])
            groups.setdefault((d["simulator"], json.dumps(d["params"], sort_keys=True), c), []).append(i)
    if not groups:
        return batch
    from medrestore.degradations.torch_ops import generators, simulate_batch
    from medrestore.sample import Normalisation

    gt = batch["gt"]
    lq = batch["lq"].clone()
    for (name, _, c), idx in groups.items():
        norms = [Normalisation.from_dict(metas[i]["normalisation"]) for i in idx]
        low = gt.new_tensor([n.low for n in norms]).view(-1, 1, 1, 1)
        width = gt.new_tensor([n.width for n in norms]).view(-1, 1, 1, 1)
        sel = torch.tensor(idx, device=gt.device)
        phys = gt[sel, :c].clamp(0.0, 1.0) * width + low
        out = simulate_batch(name, phys, gens=generators([metas[i][DEVICE_DEGRADE]["seed"] for i in idx], gt.device),
                             spacing=[metas[i].get("spacing") for i in idx],
                             **metas[idx[0]][DEVICE_DEGRADE]["params"])
        unit = ((out - low) / width).clamp(0.0, 1.0).to(lq.dtype)
        lq[sel] = unit.expand(-1, lq.shape[1], -1, -1) if c != lq.shape[1] else unit
    return {**batch, "lq": lq}


class ShardPairs(Dataset):
    """Full-image samples of one or more splits (validation, test, predict).

    ``sets`` as in :func:`normalise_sets`. With ``upsample_lq=False`` an SR sample keeps its
    low-resolution ``lq`` (for networks with their own up-sampler); such samples do not fit the
    scale-1 sample contract and are returned as plain dicts of arrays. ``text_cache`` adds
    ``text_emb`` (see the module docstring)."""

    def __init__(self, sets: Any, split: str | Sequence[str] = "val",
                 tasks: Sequence[str] | None = None, upsample_lq: bool = True,
                 text_cache: Any = None) -> None:
        splits = [split] if isinstance(split, str) else list(split)
        self.sets = normalise_sets(sets, tasks)
        self.rows = load_sets(self.sets, splits)
        clean_only = [r["id"] for r in self.rows if r["lq_shape"] is None]
        if clean_only:
            raise ConfigError(f"{len(clean_only)} clean-only sample(s) (e.g. {clean_only[0]}) in "
                              f"split {splits}: evaluation needs fixed, written lq images")
        self.upsample_lq = upsample_lq
        self.reader = _ShardReader(sorted({r["shard"] for r in self.rows}))
        self.text_cache = open_text_cache(text_cache, self.rows, f"split {splits}")

    def __len__(self) -> int:
        return len(self.rows)

    def tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.rows})

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        lq, gt, attrs = read_pair(self.reader.file(row["shard"]), row["id"])
        lq_u, gt_u = pair_to_unit(lq, gt, attrs, upsample_lq=self.upsample_lq)
        meta = _sample_meta(attrs)
        if lq_u.shape[-2:] != gt_u.shape[-2:]:
            return _with_text({"lq": lq_u, "gt": gt_u, "task": attrs["task"], "key": attrs["key"],
                               "meta": meta}, self.text_cache)
        return _with_text(make_sample(lq_u, gt_u, attrs["task"], attrs["key"], meta), self.text_cache)


class TrainPatches(Dataset):
    """Paired random crops of the training rows, addressed by ``(row_index, draw)``.

    ``patch_size`` is on the GT grid and must be a multiple of every stored scale. A patch
    larger than the smallest training image is an error naming that image, unless
    ``pad_small`` is set: then crops of smaller images are reflect-padded (both alike) up to the
    patch. ``augment`` adds a random rot90 and horizontal flip (the BasicSR/DATPRL
    augmentation). ``text_cache`` adds ``text_emb`` (see the module docstring).
    ``degrade_on="device"`` defers the simulators that have a batched torch version to the
    training device (see the module docstring)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], patch_size: int, augment: bool = False,
                 seed: int = 0, upsample_lq: bool = True, text_cache: Any = None,
                 pad_small: bool = False, degrade_on: str = "worker") -> None:
        self.rows = list(rows)
        self.degrade_on = check_degrade_on(degrade_on)
        self.patch_size, self.augment, self.seed = int(patch_size), augment, int(seed)
        self.upsample_lq = upsample_lq
        if self.patch_size < 1:
            raise ConfigError(f"data.patch_size={self.patch_size}; expected a positive number of "
                              "pixels")
        bad = sorted({r["scale"] for r in self.rows if self.patch_size % r["scale"]})
        if bad:
            raise ConfigError(f"data.patch_size={self.patch_size} is not a multiple of the stored "
                              f"SR scale(s) {bad}; scale-aware crops need whole LR pixels")
        if self.rows and not pad_small:
            # padding is opt-in: a patch far above the images silently pads every crop (and
            # once grew a run to tens of GB)
            small = min(self.rows, key=lambda r: min(r["shape"][-2:]))
            h, w = small["shape"][-2:]
            if self.patch_size > min(h, w):
                raise ConfigError(
                    f"data.patch_size={self.patch_size} is larger than the smallest training "
                    f"image {small['key']} ({h}×{w}, {small['shard']}); lower data.patch_size "
                    "or set data.pad_small=true to reflect-pad smaller crops")
        self.reader = _ShardReader(sorted({r["shard"] for r in self.rows}))
        self.text_cache = open_text_cache(text_cache, self.rows, "the training rows")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> dict[str, Any]:
        row_idx, draw = item if isinstance(item, tuple) else (int(item), int(item))
        row = self.rows[int(row_idx)]
        rng = np.random.default_rng((self.seed, int(draw)))
        s = int(row["scale"])
        _, h, w = row["shape"]
        p = self.patch_size
        ph, pw = min(p, h - h % s), min(p, w - w % s)
        top = int(rng.integers((h - ph) // s + 1)) * s
        left = int(rng.integers((w - pw) // s + 1)) * s
        lq, gt, attrs = read_pair(self.reader.file(row["shard"]), row["id"], (top, left, ph, pw))
        deferred = None
        if lq is None and self.degrade_on == "device":
            deferred = _device_params(attrs, self.seed, int(draw))
        if deferred is None:
            lq_u, gt_u = pair_to_unit(lq, gt, attrs, rng=rng, upsample_lq=self.upsample_lq)
        else:   # the device fills lq (degrade_on_device); NaN until then
            gt_u = to_unit(gt, attrs["storage"], attrs["meta"])
            lq_u = np.full_like(gt_u, np.nan)
        if (ph, pw) != (p, p):  # image smaller than the patch: reflect-pad both alike
            lq_u, gt_u = _pad_to(lq_u, gt_u, p, s)
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            lq_u, gt_u = (_rot_flip(a, k, flip) for a in (lq_u, gt_u))
        meta = _sample_meta(attrs)
        if deferred is not None:
            meta[DEVICE_DEGRADE] = deferred
        lq_t = torch.from_numpy(np.ascontiguousarray(lq_u))
        gt_t = torch.from_numpy(np.ascontiguousarray(gt_u))
        if lq_t.shape[-2:] != gt_t.shape[-2:]:
            return _with_text({"lq": lq_t, "gt": gt_t, "task": attrs["task"], "key": attrs["key"],
                               "meta": meta}, self.text_cache)
        return _with_text(make_sample(lq_t, gt_t, attrs["task"], attrs["key"], meta), self.text_cache)


def _pad_to(lq: np.ndarray, gt: np.ndarray, p: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pad a crop of a small image up to the patch (a still low-resolution lq to p/s)."""
    def pad(a: np.ndarray, size: int) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, size - a.shape[1]), (0, size - a.shape[2])), mode="reflect")

    lq_size = p if lq.shape[-2:] == gt.shape[-2:] else p // s
    return pad(lq, lq_size), pad(gt, p)


def _rot_flip(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(1, 2))
    return a[:, :, ::-1] if flip else a
