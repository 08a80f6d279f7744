"""Rank-aware samplers owned by the DataModule (trainer configs set
``use_distributed_sampler: false``).

:class:`BalancedBatchSampler` (training) yields, on each rank, batches of ``(row, draw)``
items for :class:`~medrestore.datasets.pairs.TrainPatches`:

* **Groups and pools.** Rows are grouped (by task, or by set); each group's pool lists every
  row ``repeat`` times (the per-dataset repeat factors of the all-in-one recipes). A group's
  stream is its pool shuffled, pass after pass, from ``(seed, epoch, group, pass)``.
* **Batch composition** (the same on every rank at a given step, ``b`` = per-rank batch):
  ``balance="equal"`` gives every group ``b // G`` slots and hands the remaining slots out by
  smooth weighted round-robin over ``weights`` (TAT: 4 per task in a batch of 12; DATPRL:
  2 per dataset in 12, remainders to the heavier datasets); ``"weighted"`` hands *all* slots out
  in proportion to ``weights``; ``"none"`` ignores groups and draws from the concatenated
  pools, so the repeat factors alone set the proportions (BasicSR-style concatenation).
* **Ranks.** At each step every group's next ``count × world`` stream items are split into
  consecutive chunks, one per rank: ranks get distinct items of the same composition.
* **Draw ids.** Each item carries a unique ``draw`` (epoch, group, stream position) that seeds
  its crop, flips and on-the-fly degradation, so nothing depends on worker count or timing.

The epoch has ``num_batches`` steps (default ``ceil(sum of pools / global batch)``); Lightning
calls :meth:`set_epoch` before each epoch, which reshuffles (it looks for ``set_epoch`` on a
loader's ``sampler`` and ``batch_sampler.sampler`` only, so the batch sampler is its own
``sampler``).

* **Resuming mid-epoch.** Everything above is a function of ``(seed, epoch, rank, world)``, so
  :meth:`resume_at` ``(epoch, k)`` makes the next pass over ``epoch`` skip its first ``k``
  batches (streams advanced, no data read) and yield exactly the rest of the uninterrupted
  epoch. The DataModule's :class:`~medrestore.datasets.datamodule.ResumableLoader` counts the
  batches Lightning has taken and calls it from a checkpoint.

:class:`StridedEvalSampler` (validation / test): every ``world``-th image from ``rank``, no
padding, so no image is counted twice in DDP-summed means.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import Sampler

from medrestore.errors import ConfigError

BALANCE_MODES = ("equal", "weighted", "none")
_GROUP_BITS, _POS_BITS = 12, 36  # draw = (epoch << 48) | (group << 36) | position


def swrr(weights: Sequence[float], n: int, state: np.ndarray) -> np.ndarray:
    """Smooth weighted round-robin: counts per group for the next ``n`` slots (``state`` is
    updated in place), spreading groups evenly and matching ``weights`` in the long run."""
    w = np.asarray(weights, dtype=np.float64)
    counts = np.zeros(len(w), dtype=np.int64)
    total = w.sum()
    for _ in range(int(n)):
        state += w
        k = int(np.argmax(state))
        state[k] -= total
        counts[k] += 1
    return counts


class BalancedBatchSampler(Sampler[list]):
    """Task-balanced, DDP-disjoint training batches (see the module docstring).

    Args:
        groups: per group, the row indices of its pool (a row repeated ``repeat`` times).
        batch_size: per-rank batch size.
        weights: per-group weights for remainders (``equal``) or all slots (``weighted``).
        num_batches: steps per epoch (``None``: ``ceil(total pool / (batch_size · world))``).
    """

    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int, *,
                 weights: Sequence[float] | None = None, balance: str = "equal",
                 num_batches: int | None = None, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        if balance not in BALANCE_MODES:
            raise ConfigError(f"data.balance={balance!r}; expected one of {BALANCE_MODES}")
        if not groups or any(len(g) == 0 for g in groups):
            raise ConfigError("every sampling group needs at least one training image")
        if len(groups) >= 2 ** _GROUP_BITS:
            raise ConfigError(f"too many sampling groups ({len(groups)})")
        if int(batch_size) < 1:
            raise ConfigError(f"per-device batch size must be >= 1, got {batch_size}")
        self.weights = np.ones(len(groups)) if weights is None else np.asarray(weights, float)
        if self.weights.shape != (len(groups),) or not np.all(self.weights > 0):
            raise ConfigError(f"sampling weights must be {len(groups)} positive numbers, got "
                              f"{list(self.weights)}")
        self.balance = balance
        if balance == "none":  # one pool: repeat factors alone set the proportions
            groups = [[i for g in groups for i in g]]
            self.weights = np.ones(1)
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.seed, self.epoch = int(seed), 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip), used once
        total = sum(len(g) for g in self.groups)
        self.num_batches = int(num_batches) if num_batches else \
            max(1, math.ceil(total / (self.batch_size * self.world_size)))

    @property
    def sampler(self) -> "BalancedBatchSampler":
        # Lightning calls set_epoch on loader.batch_sampler.sampler, never on a batch sampler
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Make the next pass skip the first ``batches`` batches, if it is over ``epoch``
        (a pass over any other epoch starts at its beginning and drops the request)."""
        if not 0 <= int(batches) <= self.num_batches:
            raise ConfigError(f"cannot resume at batch {batches} of an epoch of "
                              f"{self.num_batches} batches: the data settings differ from the "
                              "checkpoint's (data.batch_size / samples_per_epoch / sets)")
        self._resume = (int(epoch), int(batches))

    def __len__(self) -> int:
        return self.num_batches

    def compositions(self) -> Iterator[np.ndarray]:
        """Per-step slot counts per group (identical on every rank)."""
        g, b = len(self.groups), self.batch_size
        state = np.zeros(g)
        for _ in range(self.num_batches):
            if self.balance == "weighted":
                yield swrr(self.weights, b, state)
            else:
                yield np.full(g, b // g, dtype=np.int64) + swrr(self.weights, b % g, state)

    def _stream(self, k: int) -> Iterator[tuple[int, int]]:
        """Group ``k``'s endless stream of (row, stream position), reshuffled per pass."""
        pool, pos, n_pass = self.groups[k], 0, 0
        while True:
            order = np.random.default_rng((self.seed, self.epoch, k, n_pass)).permutation(len(pool))
            for j in order:
                yield int(pool[j]), pos
                pos += 1
            n_pass += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        self._resume = None
        streams = [self._stream(k) for k in range(len(self.groups))]
        for step, counts in enumerate(self.compositions()):
            if step < skip:  # consume the skipped batches' stream items, read nothing
                for k, c in enumerate(counts):
                    for _ in range(c * self.world_size):
                        next(streams[k])
                continue
            batch = []
            for k, c in enumerate(counts):
                if c == 0:
                    continue
                items = [next(streams[k]) for _ in range(c * self.world_size)]
                for row, pos in items[self.rank * c:(self.rank + 1) * c]:
                    draw = (self.epoch << (_GROUP_BITS + _POS_BITS)) | (k << _POS_BITS) | pos
                    batch.append((row, draw))
            yield batch


class StridedEvalSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``; uneven shards, no duplicates."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def group_rows(rows: Sequence[Mapping], by: str) -> tuple[list[str], list[list[int]]]:
    """Group names and pools (row indices repeated by each row's ``repeat``)."""
    if by not in ("task", "set"):
        raise ConfigError(f"data.group_by={by!r}; expected 'task' or 'set'")
    names: list[str] = sorted({r[by] for r in rows})
    pools: dict[str, list[int]] = {n: [] for n in names}
    for i, r in enumerate(rows):
        pools[r[by]].extend([i] * int(r["repeat"]))
    return names, [pools[n] for n in names]
