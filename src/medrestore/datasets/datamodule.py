"""The one DataModule every model family trains on.

``MultiTaskDataModule`` mixes any prepared shards ("sets", each optionally restricted to some
tasks, with a repeat factor), trains on task-balanced, rank-disjoint batches of paired random
crops (:mod:`medrestore.datasets.samplers`) and validates / tests on full images per task.
It owns its samplers (trainer configs set ``use_distributed_sampler: false``).

With ``text_cache`` (a file built by ``medrestore-cache build``) every train/val/test sample
carries ``text_emb``, the pooled caption embedding of its clean image; only the cache file is
read, never a captioner or text encoder.

Exact resume, mid-epoch included: the training loader is a :class:`ResumableLoader`, whose
state is the epoch and how many of its batches Lightning has taken. The DataModule saves that
state in its own checkpoint section (``state_dict``) and hands it to the loader it builds when
a fit resumes (``load_state_dict``); the batch sampler then skips those batches
(:meth:`~medrestore.datasets.samplers.BalancedBatchSampler.resume_at`, no data is read), and
since crops, augmentation and simulation are seeded by the draw ids, the rest of the epoch is
the uninterrupted run's, with any ``num_workers``. (Lightning's own restore of loader states
is skipped when the loader was built before the checkpoint's loops were restored, as
``estimated_stepping_batches`` in ``configure_optimizers`` does; the loader still follows
Lightning's stateful protocol, so Lightning knows it is resumable.) The global RNG states are
restored by :class:`medrestore.modules.resume.RngState`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from medrestore.datasets.pairs import (ShardPairs, TrainPatches, check_degrade_on, load_sets,
                                      normalise_sets)
from medrestore.datasets.samplers import BalancedBatchSampler, StridedEvalSampler, group_rows
from medrestore.errors import ConfigError
from medrestore.sample import collate_samples
from medrestore.utils.validate import check_ints


def _check_scoreable(rows: Sequence[Mapping[str, Any]], split: str) -> None:
    """Val / test images must hold the SSIM window (smaller ones fail inside the metric)."""
    from medrestore.metrics.image import SSIM_KERNEL

    for r in rows:
        h, w = r["shape"][-2:]
        if min(h, w) < SSIM_KERNEL:
            raise ConfigError(f"{r['shard']}: {split} sample {r['key']} is {h}×{w}, smaller than "
                              f"the {SSIM_KERNEL}×{SSIM_KERNEL} SSIM window; scored images need "
                              f"at least {SSIM_KERNEL} pixels a side")


class ResumableLoader(DataLoader):
    """The training ``DataLoader``: counts the batches Lightning takes from it, and resumes a
    pass part-way through (see the module docstring).

    ``state_dict()`` is ``{"epoch", "batches"}``, the batches counted where Lightning takes
    them. That is exactly what it has trained on when a checkpoint is written: Lightning's
    fetcher does not prefetch from a loader with a length, and what worker processes prefetch
    from the sampler is not counted. ``load_state_dict`` makes the next pass over that epoch
    start there (any other epoch starts at its beginning).

    A pass begins (``iter(batch_sampler)``, where workers prefetch) at its first batch, not when
    ``iter()`` is called, because Lightning creates the resumed epoch's iterator before it calls
    ``set_epoch``. The loader has its own ``generator`` (the worker base seed), reseeded from
    ``(seed, epoch)`` per pass, so iterating never draws from the global torch RNG, whose state
    is restored from the checkpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch, self._taken = 0, 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches taken), used once

    def __iter__(self):
        sampler = self.batch_sampler
        epoch = int(sampler.epoch)
        taken = self._resume[1] if self._resume and self._resume[0] == epoch else 0
        self._resume = None
        sampler.resume_at(epoch, taken)
        if self.generator is not None:
            self.generator.manual_seed((int(sampler.seed) * 1_000_003 + epoch) % 2**63)
        self._epoch, self._taken = epoch, taken
        for batch in super().__iter__():
            self._taken += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._taken)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))


class BalancedDataModule(L.LightningDataModule):
    """What every task-balanced DataModule shares (restoration pairs, lesion segmentation): the
    distributed context, the balanced training loader with exact resume and its checkpoint
    state, and the rank-strided evaluation loaders.

    A subclass sets ``collate_fn`` and the attributes read here (``batch_size`` global,
    ``balance``, ``weights``, ``samples_per_epoch``, ``seed``, ``num_workers``, ``pin_memory``,
    ``val_batch_size``, ``test_batch_size``) and provides ``dataset(name)``,
    ``train_sampler(rank, world_size)`` (usually through :meth:`_balanced_sampler`) and
    ``_eval_dataset(name)`` -> ``(dataset, what to say when it is empty)``."""

    collate_fn: Any = None

    def _init_loader_state(self) -> None:
        self.batch_size_per_device = self.batch_size
        self._train_loader: ResumableLoader | None = None
        self._train_resume: dict[str, int] | None = None  # from a checkpoint, until fit ends

    # -- distributed context ---------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _check_world(self) -> None:
        """The global batch must split evenly over the ranks (called by ``setup``)."""
        _, world = self._rank_world()
        if self.batch_size % world:
            raise ConfigError(f"data.batch_size={self.batch_size} (global) is not divisible by "
                              f"the world size {world}")
        self.batch_size_per_device = self.batch_size // world

    def _balanced_sampler(self, pools: Sequence[Sequence[int]], names: Sequence[str], rank: int,
                          world_size: int) -> BalancedBatchSampler:
        num_batches = None
        if self.samples_per_epoch is not None:
            num_batches = max(1, self.samples_per_epoch // self.batch_size)
        return BalancedBatchSampler(pools, self.batch_size // world_size,
                                    weights=[float(self.weights.get(n, 1.0)) for n in names],
                                    balance=self.balance, num_batches=num_batches, rank=rank,
                                    world_size=world_size, seed=self.seed)

    # -- loaders ---------------------------------------------------------------------------
    def _workers(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "collate_fn": type(self).collate_fn,
                "pin_memory": self.pin_memory, "persistent_workers": self.num_workers > 0}

    def train_dataloader(self) -> ResumableLoader:
        rank, world = self._rank_world()
        loader = ResumableLoader(self.dataset("train"), batch_sampler=self.train_sampler(rank, world),
                                 generator=torch.Generator(), **self._workers())
        if self._train_resume is not None:
            loader.load_state_dict(self._train_resume)
        self._train_loader = loader
        return loader

    def _eval_loader(self, name: str, batch_size: int) -> DataLoader:
        rank, world = self._rank_world()
        ds, empty = self._eval_dataset(name)
        if len(ds) == 0:
            raise ConfigError(empty)
        return DataLoader(ds, batch_size=batch_size, sampler=StridedEvalSampler(len(ds), rank, world),
                          drop_last=False, **self._workers())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.val_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict", self.test_batch_size)

    # -- checkpoint state (see the module docstring) ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._train_loader is None:
            return {}
        return {"train_loader": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        trainer = getattr(self, "trainer", None)
        fitting = trainer is None or trainer.state.fn == "fit"  # test / validate restore it too
        if "train_loader" in state_dict and fitting:
            self._train_resume = {k: int(v) for k, v in state_dict["train_loader"].items()}

    def teardown(self, stage: str) -> None:
        if stage == "fit":  # a later fit of this DataModule starts where it is told to
            self._train_resume = None


class MultiTaskDataModule(BalancedDataModule):
    """Prepared HDF5 shards -> balanced training patches and full-image val/test sets.

    Args:
        sets: shard path(s), or dicts ``{shard, tasks: null|[...], repeat: 1, name: null}``;
            ``repeat`` is the per-dataset repeat factor (DATPRL: DF2K ×12, UCMerced ×22, …).
        tasks: keep only these task ids (``None`` = every task in the sets).
        patch_size: square training crop on the GT grid (a multiple of any stored SR scale),
            at most the smallest training image's side unless ``pad_small``.
        pad_small: reflect-pad crops of training images smaller than the patch (default: such
            an image is an error naming it).
        batch_size: **global** training batch, divided by the world size (must divide evenly).
        balance: ``equal`` (every group ``b // G`` per batch, remainders by ``weights``),
            ``weighted`` (all slots by ``weights``) or ``none`` (concatenated pools).
        group_by: balance over ``task`` ids or over ``set`` names.
        weights: ``{group: w}`` (default 1 each).
        samples_per_epoch: training patches per epoch over all ranks (``None``: the sum of
            the repeated pools, like a BasicSR epoch over repeated datasets).
        augment: random rot90 + flip of training patches.
        upsample_lq: bring low-resolution SR inputs to the GT grid (scale-1 networks).
        val_batch_size / test_batch_size: full images of different sizes need 1. Val / test
            images must be at least the SSIM window (11×11) a side (checked at setup).
        text_cache: a caption cache (:mod:`medrestore.io.textcache`); adds ``text_emb``
            (float32, the pooled embedding, looked up by ``key``) to every sample. Every key of
            a split must have an entry (a missing one is an error naming key and cache).
        text_dim: the embedding width expected of the cache (error if it differs); ``None``
            accepts the cache's. ``dm.text_dim`` reports the cache's width for models to check
            with :func:`medrestore.io.textcache.check_text_width`.
        degrade_on: where clean-only training crops are degraded: ``worker`` (numpy, in the
            loader workers; every simulator) or ``device`` (CT / MRI k-space / PET simulators
            batched in torch on the training device after transfer, by
            ``RestorationModule.on_after_batch_transfer``; other simulators stay in the
            workers). See :mod:`medrestore.datasets.pairs`.
    """

    collate_fn = collate_samples

    def __init__(self, sets: Any, tasks: Sequence[str] | None = None, patch_size: int = 128,
                 batch_size: int = 8, balance: str = "equal", group_by: str = "task",
                 weights: Mapping[str, float] | None = None, samples_per_epoch: int | None = None,
                 augment: bool = False, upsample_lq: bool = True, num_workers: int = 0,
                 pin_memory: bool = False, val_batch_size: int = 1, test_batch_size: int = 1,
                 seed: int = 0, val_split: str = "val", test_split: str = "test",
                 predict_split: str = "test", text_cache: str | os.PathLike | None = None,
                 text_dim: int | None = None, pad_small: bool = False,
                 degrade_on: str = "worker") -> None:
        super().__init__()
        check_ints((("patch_size", patch_size, 1), ("batch_size", batch_size, 1),
                    ("samples_per_epoch", samples_per_epoch, 1),
                    ("val_batch_size", val_batch_size, 1),
                    ("test_batch_size", test_batch_size, 1),
                    ("num_workers", num_workers, 0)))
        self.sets = normalise_sets(sets, tasks)
        self.tasks = list(tasks) if tasks is not None else None
        self.patch_size, self.batch_size = int(patch_size), int(batch_size)
        self.balance, self.group_by = balance, group_by
        self.weights = dict(weights) if weights else {}
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.augment, self.upsample_lq = bool(augment), bool(upsample_lq)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.val_batch_size, self.test_batch_size = int(val_batch_size), int(test_batch_size)
        self.seed, self.pad_small = int(seed), bool(pad_small)
        self.degrade_on = check_degrade_on(degrade_on)
        self.splits = {"val": val_split, "test": test_split, "predict": predict_split}
        self._init_loader_state()
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
            from medrestore.io.textcache import TextCache

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

    def setup(self, stage: str | None = None) -> None:
        self._check_world()
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
                                               text_cache=self.text_cache(),
                                               pad_small=self.pad_small,
                                               degrade_on=self.degrade_on)
        for name, needed in (("val", stage in (None, "fit", "validate")),
                             ("test", stage in (None, "test")),
                             ("predict", stage in (None, "predict"))):
            if needed and name not in self._sets:
                ds = ShardPairs(self.sets, self.splits[name], upsample_lq=self.upsample_lq,
                                text_cache=self.text_cache())
                if name != "predict":
                    _check_scoreable(ds.rows, self.splits[name])
                self._sets[name] = ds

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
        return self._balanced_sampler(pools, names, rank, world_size)

    def _eval_dataset(self, name: str) -> tuple[Any, str]:
        return self.dataset(name), (f"no '{self.splits[name]}' samples in "
                                    f"{[s['shard'] for s in self.sets]}"
                                    + (f" for tasks {self.tasks}" if self.tasks else ""))
