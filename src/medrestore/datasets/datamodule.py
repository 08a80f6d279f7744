"""The one DataModule every model family trains on.

Samplers are owned here rather than injected by Lightning (trainer configs set
``use_distributed_sampler: false``):

* training: a virtual index space of ``samples_per_epoch`` per epoch; rank ``r`` of ``W`` takes
  the contiguous block ``[r·N/W, (r+1)·N/W)`` offset by ``epoch·N``, so ranks never share a
  crop, every epoch draws new crops, and consecutive indices cycle through the tasks
  (task-balanced batches when the per-device batch is a multiple of the task count);
* validation / test: each rank takes every W-th image **without padding**, so no image is
  counted twice in the per-task means (metrics are summed across ranks, not averaged).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader, Sampler

from medrestore.datasets.pairs import ShardPairs, TaskUniformPatches
from medrestore.errors import ConfigError
from medrestore.sample import collate_samples


class EpochBlockSampler(Sampler[int]):
    """Contiguous per-rank block of a virtual index space, offset by epoch."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if length < world_size:
            raise ConfigError(f"samples_per_epoch={length} is smaller than world size {world_size}")
        self.length, self.rank, self.world_size, self.epoch = length, rank, world_size, 0
        self.per_rank = length // world_size

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before each epoch
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.length + self.rank * self.per_rank
        return iter(range(start, start + self.per_rank))

    def __len__(self) -> int:
        return self.per_rank


class StridedEvalSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``; uneven shards, no duplicates."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class RestorationDataModule(L.LightningDataModule):
    """Prepared HDF5 shards -> task-balanced training patches and full-image val/test sets.

    Args:
        shards: prepared ``.h5`` files (``medrestore-prepare``).
        tasks: task ids to use; ``None`` = every task found in the shards.
        patch_size: square training crop (pixels).
        batch_size: **global** training batch; divided by the world size (must divide evenly).
        samples_per_epoch: training patches per epoch, over all ranks.
        val_batch_size / test_batch_size: full images of different sizes need 1.
        augment: random rot90 / flips on training patches.
        task_weights: ``{task: k}`` — a task appears ``k`` times per sampling cycle (default 1),
            like the per-dataset repeat factors of the all-in-one recipes.
    """

    def __init__(self, shards: Sequence[str] | str, tasks: Sequence[str] | None = None,
                 patch_size: int = 128, batch_size: int = 8, samples_per_epoch: int = 1000,
                 num_workers: int = 0, val_batch_size: int = 1, test_batch_size: int = 1,
                 augment: bool = False, pin_memory: bool = False, seed: int = 0,
                 val_split: str = "val", test_split: str = "test", predict_split: str = "test",
                 task_weights: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.shards = [str(shards)] if isinstance(shards, (str, os.PathLike)) else [str(s) for s in shards]
        self.tasks = list(tasks) if tasks is not None else None
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.samples_per_epoch, self.num_workers = int(samples_per_epoch), int(num_workers)
        self.val_batch_size, self.test_batch_size = int(val_batch_size), int(test_batch_size)
        self.augment, self.pin_memory, self.seed = augment, pin_memory, int(seed)
        self.splits = {"val": val_split, "test": test_split, "predict": predict_split}
        self.task_weights = dict(task_weights) if task_weights else None
        self.batch_size_per_device = self.batch_size
        self._sets: dict[str, Any] = {}

    # -- distributed context ---------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def setup(self, stage: str | None = None) -> None:
        _, world = self._rank_world()
        if self.batch_size % world:
            raise ConfigError(f"data.batch_size={self.batch_size} (global) is not divisible by "
                             f"the world size {world}")
        self.batch_size_per_device = self.batch_size // world
        if stage in (None, "fit") and "train" not in self._sets:
            self._sets["train"] = TaskUniformPatches(
                self.shards, self.patch_size, self.samples_per_epoch, self.tasks,
                augment=self.augment, seed=self.seed, task_weights=self.task_weights)
        for name, needed in (("val", stage in (None, "fit", "validate")),
                             ("test", stage in (None, "test")),
                             ("predict", stage in (None, "predict"))):
            if needed and name not in self._sets:
                self._sets[name] = ShardPairs(self.shards, self.splits[name], self.tasks)

    def dataset(self, name: str):
        if name not in self._sets:
            self.setup({"train": "fit", "val": "validate"}.get(name, name))
        return self._sets[name]

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, dataset, sampler, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=collate_samples,
                          pin_memory=self.pin_memory, drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.dataset("train")
        return self._loader(ds, EpochBlockSampler(len(ds), rank, world), self.batch_size_per_device)

    def _eval_loader(self, name: str, batch_size: int) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.dataset(name)
        if len(ds) == 0:
            raise ConfigError(f"no '{self.splits[name]}' samples in {self.shards}"
                             + (f" for tasks {self.tasks}" if self.tasks else ""))
        return self._loader(ds, StridedEvalSampler(len(ds), rank, world), batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict", self.test_batch_size)
