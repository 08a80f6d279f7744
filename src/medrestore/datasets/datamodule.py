"""The one DataModule every model family trains on.

``MultiTaskDataModule`` mixes any prepared shards ("sets", each optionally restricted to some
tasks, with a repeat factor), trains on task-balanced, rank-disjoint batches of paired random
crops (:mod:`medrestore.datasets.samplers`) and validates / tests on full images per task.
It owns its samplers (trainer configs set ``use_distributed_sampler: false``).

With ``text_cache`` (a file built by ``medrestore-cache build``) every train/val/test sample
carries ``text_emb``, the pooled caption embedding of its clean image; only the cache file is
read, never a captioner or text encoder.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader

from medrestore.datasets.pairs import ShardPairs, TrainPatches, load_sets, normalise_sets
from medrestore.datasets.samplers import BalancedBatchSampler, StridedEvalSampler, group_rows
from medrestore.errors import ConfigError
from medrestore.sample import collate_samples


class MultiTaskDataModule(L.LightningDataModule):
    """Prepared HDF5 shards -> balanced training patches and full-image val/test sets.

    Args:
        sets: shard path(s), or dicts ``{shard, tasks: null|[...], repeat: 1, name: null}``;
            ``repeat`` is the per-dataset repeat factor (DATPRL: DF2K ×12, UCMerced ×22, …).
        tasks: keep only these task ids (``None`` = every task in the sets).
        patch_size: square training crop on the GT grid (a multiple of any stored SR scale).
        batch_size: **global** training batch, divided by the world size (must divide evenly).
        balance: ``equal`` (every group ``b // G`` per batch, remainders by ``weights``),
            ``weighted`` (all slots by ``weights``) or ``none`` (concatenated pools).
        group_by: balance over ``task`` ids or over ``set`` names.
        weights: ``{group: w}`` (default 1 each).
        samples_per_epoch: training patches per epoch over all ranks (``None``: the sum of
            the repeated pools, like a BasicSR epoch over repeated datasets).
        augment: random rot90 + flip of training patches.
        upsample_lq: bring low-resolution SR inputs to the GT grid (scale-1 networks).
        val_batch_size / test_batch_size: full images of different sizes need 1.
        text_cache: a caption cache (:mod:`medrestore.captions.cache`); adds ``text_emb``
            (float32, the pooled embedding, looked up by ``key``) to every sample. Every key of
            a split must have an entry (a missing one is an error naming key and cache).
        text_dim: the embedding width expected of the cache (error if it differs); ``None``
            accepts the cache's. ``dm.text_dim`` reports the cache's width for models to check
            with :func:`medrestore.captions.cache.check_text_width`.
    """

    def __init__(self, sets: Any, tasks: Sequence[str] | None = None, patch_size: int = 128,
                 batch_size: int = 8, balance: str = "equal", group_by: str = "task",
                 weights: Mapping[str, float] | None = None, samples_per_epoch: int | None = None,
                 augment: bool = False, upsample_lq: bool = True, num_workers: int = 0,
                 pin_memory: bool = False, val_batch_size: int = 1, test_batch_size: int = 1,
                 seed: int = 0, val_split: str = "val", test_split: str = "test",
                 predict_split: str = "test", text_cache: str | os.PathLike | None = None,
                 text_dim: int | None = None) -> None:
        super().__init__()
        self.sets = normalise_sets(sets, tasks)
        self.tasks = list(tasks) if tasks is not None else None
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.balance, self.group_by = balance, group_by
        self.weights = dict(weights) if weights else {}
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.augment, self.upsample_lq = bool(augment), bool(upsample_lq)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.val_batch_size, self.test_batch_size = int(val_batch_size), int(test_batch_size)
        self.seed = int(seed)
        self.splits = {"val": val_split, "test": test_split, "predict": predict_split}
        self.batch_size_per_device = self.batch_size
        self._sets: dict[str, Any] = {}
        self._groups: tuple[list[str], list[list[int]]] | None = None
        self.text_cache_path = None if text_cache in (None, "") else str(text_cache)
        self.expected_text_dim = None if text_dim is None else int(text_dim)
        self._text = None
        if self.text_cache_path is None and text_dim is not None:
            raise ConfigError(f"data.text_dim={text_dim} is set but data.text_cache is not")

    def text_cache(self):
        """The opened caption cache (``None`` without one). Opened on first use, like the
        shards: building the DataModule from a config touches no file."""
        if self.text_cache_path is not None and self._text is None:
            from medrestore.captions.cache import TextCache

            cache = TextCache(self.text_cache_path)  # reads the header and key index only
            if self.expected_text_dim is not None and self.expected_text_dim != cache.dim:
                raise ConfigError(f"data.text_dim={self.expected_text_dim} but "
                                  f"{self.text_cache_path} holds {cache.dim}-d embeddings")
            self._text = cache
        return self._text

    @property
    def text_dim(self) -> int | None:
        """Width of the cached text embeddings (``None`` without a cache)."""
        cache = self.text_cache()
        return None if cache is None else cache.dim

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
            rows = load_sets(self.sets, ["train"])
            if not rows:
                raise ConfigError(f"no 'train' samples in {[s['shard'] for s in self.sets]}"
                                 + (f" for tasks {self.tasks}" if self.tasks else ""))
            names, pools = group_rows(rows, self.group_by)
            unknown = sorted(set(self.weights) - set(names))
            if unknown:
                raise ConfigError(f"data.weights names {unknown}, which are not training "
                                  f"{self.group_by}s here; {self.group_by}s present: {names}")
            self._groups = (names, pools)
            self._sets["train"] = TrainPatches(rows, self.patch_size, augment=self.augment,
                                               seed=self.seed, upsample_lq=self.upsample_lq,
                                               text_cache=self.text_cache())
        for name, needed in (("val", stage in (None, "fit", "validate")),
                             ("test", stage in (None, "test")),
                             ("predict", stage in (None, "predict"))):
            if needed and name not in self._sets:
                self._sets[name] = ShardPairs(self.sets, self.splits[name],
                                              upsample_lq=self.upsample_lq,
                                              text_cache=self.text_cache())

    def dataset(self, name: str):
        if name not in self._sets:
            self.setup({"train": "fit", "val": "validate"}.get(name, name))
        return self._sets[name]

    def group_names(self) -> list[str]:
        self.dataset("train")
        assert self._groups is not None
        return self._groups[0]

    def train_sampler(self, rank: int = 0, world_size: int = 1) -> BalancedBatchSampler:
        """The training batch sampler of ``rank`` (also used by tests and benchmarks)."""
        self.dataset("train")
        assert self._groups is not None
        names, pools = self._groups
        b = self.batch_size // world_size
        num_batches = None
        if self.samples_per_epoch is not None:
            num_batches = max(1, self.samples_per_epoch // self.batch_size)
        return BalancedBatchSampler(pools, b, weights=[float(self.weights.get(n, 1.0)) for n in names],
                                    balance=self.balance, num_batches=num_batches, rank=rank,
                                    world_size=world_size, seed=self.seed)

    # -- loaders ---------------------------------------------------------------------------
    def _workers(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "collate_fn": collate_samples,
                "pin_memory": self.pin_memory, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return DataLoader(self.dataset("train"), batch_sampler=self.train_sampler(rank, world),
                          **self._workers())

    def _eval_loader(self, name: str, batch_size: int) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.dataset(name)
        if len(ds) == 0:
            raise ConfigError(f"no '{self.splits[name]}' samples in {[s['shard'] for s in self.sets]}"
                             + (f" for tasks {self.tasks}" if self.tasks else ""))
        return DataLoader(ds, batch_size=batch_size, sampler=StridedEvalSampler(len(ds), rank, world),
                          drop_last=False, **self._workers())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict", self.test_batch_size)
