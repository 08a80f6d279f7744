"""Datasets over prepared HDF5 pair shards (:mod:`medrestore.io.hdf5`).

* :class:`ShardPairs` — every sample of the chosen split(s), full images (validation / test /
  predict), in manifest order.
* :class:`TaskUniformPatches` — training patches. Index ``i`` belongs to task
  ``cycle[i % len(cycle)]``, where the cycle lists every task once (or ``task_weights[t]``
  times); the image and crop are drawn from ``np.random.default_rng((seed, i))``, so a batch of
  consecutive indices is task-balanced, the stream is reproducible, and ranks that receive
  disjoint index ranges never see the same crops.

Both store only paths and the manifest; HDF5 files are opened lazily in the process that
reads them (keyed by pid, so a forked DataLoader worker never reuses its parent's handle).
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medrestore.errors import ConfigError
from medrestore.io.hdf5 import read_manifest, read_pair
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


def _load_index(shards: Sequence[str | os.PathLike], splits: Sequence[str],
                tasks: Sequence[str] | None) -> list[dict[str, Any]]:
    if isinstance(shards, (str, os.PathLike)):
        shards = [shards]
    if not shards:
        raise ConfigError("data.shards is empty: give at least one prepared .h5 shard")
    if tasks is not None:
        for t in tasks:
            get_task(t)  # unknown ids fail with the list of known ones
    rows = []
    for shard in shards:
        for row in read_manifest(shard):
            if row["split"] in splits and (tasks is None or row["task"] in tasks):
                rows.append({**row, "shard": str(shard)})
    return rows


class ShardPairs(Dataset):
    """Full-image samples of one or more splits."""

    def __init__(self, shards: Sequence[str | os.PathLike], split: str | Sequence[str] = "val",
                 tasks: Sequence[str] | None = None) -> None:
        splits = [split] if isinstance(split, str) else list(split)
        self.rows = _load_index(shards, splits, tasks)
        self.reader = _ShardReader(sorted({r["shard"] for r in self.rows}))

    def __len__(self) -> int:
        return len(self.rows)

    def tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.rows})

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        lq, gt, attrs = read_pair(self.reader.file(row["shard"]), row["id"])
        return make_sample(lq, gt, attrs["task"], attrs["key"], attrs["meta"])


class TaskUniformPatches(Dataset):
    """Random paired crops with tasks drawn uniformly (see module docstring)."""

    def __init__(self, shards: Sequence[str | os.PathLike], patch_size: int,
                 length: int, tasks: Sequence[str] | None = None, split: str = "train",
                 augment: bool = False, seed: int = 0,
                 task_weights: Mapping[str, int] | None = None) -> None:
        self.rows = _load_index(shards, [split], tasks)
        if not self.rows:
            raise ConfigError(f"no '{split}' samples in {list(shards)}"
                             + (f" for tasks {list(tasks)}" if tasks else ""))
        by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.rows:
            by_task[r["task"]].append(r)
        self.tasks = sorted(by_task)
        self.by_task = [by_task[t] for t in self.tasks]
        weights = dict(task_weights or {})
        unknown = sorted(set(weights) - set(self.tasks))
        if unknown:
            raise ConfigError(f"data.task_weights names task(s) {unknown} that have no '{split}' "
                              f"samples; tasks present: {self.tasks}")
        for t, w in weights.items():
            if int(w) != w or w < 1:
                raise ConfigError(f"data.task_weights.{t}={w}; expected a positive integer "
                                  "(how many times the task appears per sampling cycle)")
        # interleaved cycle (a b c a b c b ...) so weighted tasks spread over the batch
        counts = [int(weights.get(t, 1)) for t in self.tasks]
        self.cycle = [k for r in range(max(counts)) for k, c in enumerate(counts) if c > r]
        self.patch_size = int(patch_size)
        self.length = int(length)
        self.augment = augment
        self.seed = int(seed)
        self.reader = _ShardReader(sorted({r["shard"] for r in self.rows}))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        # ``i`` may exceed len(self): the sampler offsets indices by epoch (see datamodule).
        rng = np.random.default_rng((self.seed, int(i)))
        rows = self.by_task[self.cycle[int(i) % len(self.cycle)]]
        row = rows[int(rng.integers(len(rows)))]
        _, h, w = row["shape"]
        p = self.patch_size
        ph, pw = min(p, h), min(p, w)
        top, left = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
        lq, gt, attrs = read_pair(self.reader.file(row["shard"]), row["id"], (top, left, ph, pw))
        if (ph, pw) != (p, p):  # image smaller than the patch: reflect-pad both alike
            pad = ((0, 0), (0, p - ph), (0, p - pw))
            lq, gt = np.pad(lq, pad, mode="reflect"), np.pad(gt, pad, mode="reflect")
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            lq, gt = (_rot_flip(a, k, flip) for a in (lq, gt))
        return make_sample(torch.from_numpy(np.ascontiguousarray(lq)),
                           torch.from_numpy(np.ascontiguousarray(gt)),
                           attrs["task"], attrs["key"], attrs["meta"])


def _rot_flip(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(1, 2))
    return a[:, :, ::-1] if flip else a
