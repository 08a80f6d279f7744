"""2-D lesion segmentation: many tasks, one task id per sample (TP-Seg).

Reads lesion-segmentation trees in the TP-Seg / SR-ICL layout (:mod:`medrestore.io.segstore`:
``<split>/image/`` + ``<split>/mask/gt_task<k>/``, with or without our ``tpseg.json``
manifest) and yields the **2-D segmentation sample**:

==========  ===================================================================================
key         value
==========  ===================================================================================
``image``   float32 ``3×H×W``: RGB (grey images replicated), resized to ``image_size``
            (bilinear, anti-aliased when shrinking), ImageNet-normalised
            (mean 0.485 0.456 0.406, std 0.229 0.224 0.225)
``mask``    float32 ``1×H×W`` in {0, 1}: the mask resized the same way, then binarised at 0.5
``task``    str, the task name; ``task_id``: int64 scalar, its index in the DataModule's
            ``tasks`` list (not the ``gt_task<k>`` folder index, which is per tree)
``key``     str, stable id of the sample; ``meta``: dict with ``modality``, ``source``,
            ``shape`` (original H, W), ``split``, ``mask`` (real / simulated / derived /
            unknown) and the converter's extras
==========  ===================================================================================

Order of operations: read (``[0, 1]``, ``H×W×3``) -> ``pre_normalise(image, key, task)``
(optional, at the original size: the restoration harness degrades / restores images there) ->
resize -> flips (training only: horizontal and vertical, p = 0.5 each, seeded by the sampler's
draw id) -> ImageNet normalisation.

:class:`SegDataModule` trains on task-balanced batches: rows are grouped by task and
:class:`~medrestore.datasets.samplers.BalancedBatchSampler` gives every task ``b // T`` slots
of each per-rank batch (remainders by weighted round-robin), so each task is drawn equally
often whatever its size — the expectation of TP-Seg's sampler with weights ∝ 1 / (task count)
— with DDP-disjoint ranks and exact mid-epoch resume (:class:`ResumableLoader`).
``balance: none`` draws from the concatenation instead (tasks in proportion to their size).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medrestore.datasets.datamodule import BalancedDataModule
from medrestore.datasets.samplers import BalancedBatchSampler
from medrestore.errors import ConfigError
from medrestore.utils.validate import check_ints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``pre_normalise(image H×W×3 float32 in [0, 1], key, task) -> image of the same shape``
PreNormalise = Callable[[np.ndarray, str, str], np.ndarray]


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: int | tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``3×H×W`` image and ``1×H×W`` {0,1} mask -> ``size``: bilinear (anti-aliased when
    shrinking) for both, then the mask binarised at 0.5."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) != hw:
        shrink = image.shape[-2] > hw[0] or image.shape[-1] > hw[1]
        image = torch.nn.functional.interpolate(image[None], size=hw, mode="bilinear",
                                                align_corners=False, antialias=shrink)[0]
        mask = torch.nn.functional.interpolate(mask[None], size=hw, mode="bilinear",
                                               align_corners=False, antialias=shrink)[0]
    return image, (mask > 0.5).to(torch.float32)


class SegDataset(Dataset):
    """Rows of :class:`~medrestore.io.segstore.SegStore` -> 2-D segmentation samples.

    ``__getitem__`` takes an index (val / test) or a ``(row, draw)`` pair from the training
    batch sampler (``draw`` seeds the flips, so augmentation does not depend on workers)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], image_size: int,
                 *, train: bool = False, flips: bool = True,
                 pre_normalise: PreNormalise | None = None, seed: int = 0) -> None:
        self.rows = list(rows)
        self.tasks = list(tasks)
        self.task_id = {t: i for i, t in enumerate(self.tasks)}
        unknown = sorted({r["task"] for r in self.rows} - set(self.task_id))
        if unknown:
            raise ConfigError(f"samples of task(s) {unknown} are not in data.tasks {self.tasks}")
        self.image_size = int(image_size)
        self.train, self.flips, self.seed = bool(train), bool(flips), int(seed)
        self.pre_normalise = pre_normalise
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        out = {t: 0 for t in self.tasks}
        for r in self.rows:
            out[r["task"]] += 1
        return out

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored image (``H×W×3`` float32 in [0, 1]) and mask (bool ``H×W``) of a row."""
        from medrestore.io.segstore import read_mask, read_rgb

        r = self.rows[index]
        image, mask = read_rgb(r["image"]), read_mask(r["mask"])
        if mask.shape != image.shape[:2]:
            raise ConfigError(f"{r['mask']}: mask is {mask.shape[0]}×{mask.shape[1]} but its image "
                              f"{r['image']} is {image.shape[0]}×{image.shape[1]}")
        return image, mask

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = (item if isinstance(item, tuple) else (item, None))
        r = self.rows[index]
        image, mask = self.raw(index)
        shape = list(image.shape[:2])
        if self.pre_normalise is not None:
            out = np.asarray(self.pre_normalise(image, r["key"], r["task"]), dtype=np.float32)
            if out.shape != image.shape:
                raise ConfigError(f"pre_normalise returned shape {out.shape} for {r['key']}; "
                                  f"expected {image.shape}")
            image = out
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        msk = torch.from_numpy(mask.astype(np.float32))[None]
        img, msk = resize_pair(img, msk, self.image_size)
        if self.train and self.flips:
            rng = np.random.default_rng((self.seed, 0 if draw is None else int(draw), index))
            if rng.random() < 0.5:
                img, msk = img.flip(-1), msk.flip(-1)
            if rng.random() < 0.5:
                img, msk = img.flip(-2), msk.flip(-2)
        img = (img - self._mean) / self._std
        meta = {**r["meta"], "shape": shape}
        return {"image": img.contiguous(), "mask": msk.contiguous(), "task": r["task"],
                "task_id": torch.tensor(self.task_id[r["task"]], dtype=torch.int64),
                "key": r["key"], "meta": meta}


def collate_seg(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` (``B×3×H×W``), ``mask`` (``B×1×H×W``) and ``task_id`` (``B``); keep
    ``task``, ``key`` and ``meta`` as lists."""
    if not samples:
        raise ConfigError("collate_seg got an empty batch")
    return {"image": torch.stack([s["image"] for s in samples]),
            "mask": torch.stack([s["mask"] for s in samples]),
            "task_id": torch.stack([s["task_id"] for s in samples]),
            "task": [s["task"] for s in samples], "key": [s["key"] for s in samples],
            "meta": [s["meta"] for s in samples]}


def normalise_roots(roots: Any) -> list[dict[str, Any]]:
    """``root`` config -> ``[{root, task_names, split}]``: a path, a list of paths, or dicts
    with ``root`` (required), ``task_names`` (names of ``gt_task0..``; default the manifest's)
    and ``split`` (a tree that is one split folder: which split it is)."""
    if roots is None or roots == "" or roots == []:
        raise ConfigError("data.root is empty; give a lesion segmentation tree (e.g. "
                          "medrestore-prepare tpseg_demo --out DIR)")
    if isinstance(roots, (str, os.PathLike)) or isinstance(roots, Mapping):
        roots = [roots]
    out = []
    for r in roots:
        if isinstance(r, (str, os.PathLike)):
            r = {"root": r}
        if not isinstance(r, Mapping) or "root" not in r:
            raise ConfigError(f"data.root entry {r!r}: expected a path or {{root, task_names, split}}")
        extra = sorted(set(r) - {"root", "task_names", "split"})
        if extra:
            raise ConfigError(f"data.root entry {r['root']}: unknown key(s) {extra}; allowed: "
                              "root, task_names, split")
        tn = r.get("task_names")
        out.append({"root": str(r["root"]), "task_names": list(tn) if tn is not None else None,
                    "split": r.get("split")})
    return out


class SegDataModule(BalancedDataModule):
    """Lesion-segmentation trees -> task-balanced training batches and per-task val / test.

    Args:
        root: a tree, a list of trees, or dicts ``{root, task_names, split}`` (see
            :func:`normalise_roots`); samples of every tree are pooled per split.
        tasks: task names; their order gives ``task_id``. ``None``: every task of the trees,
            in manifest order (first tree first).
        image_size: side every image and mask is resized to (512 in TP-Seg).
        batch_size: **global** training batch (divided by the world size).
        val_batch_size / test_batch_size: per-rank eval batches (default: ``batch_size``).
        flips: random horizontal + vertical flips (p = 0.5 each) in training.
        balance: ``equal`` (task-balanced, default) or ``none`` (proportional to task size).
        weights: ``{task: w}`` for the remainder slots of ``equal`` (default 1 each).
        samples_per_epoch: training samples per epoch (default: the training set size).
        pre_normalise: see the module docstring; also settable later with
            :meth:`set_pre_normalise` (the downstream-evaluation harness does).
    """

    collate_fn = collate_seg

    def __init__(self, root: Any, tasks: Sequence[str] | None = None, image_size: int = 512,
                 batch_size: int = 8, val_batch_size: int | None = None,
                 test_batch_size: int | None = None, flips: bool = True,
                 balance: str = "equal", weights: Mapping[str, float] | None = None,
                 samples_per_epoch: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0,
                 pre_normalise: PreNormalise | None = None) -> None:
        super().__init__()
        check_ints((("image_size", image_size, 8), ("batch_size", batch_size, 1),
                    ("val_batch_size", val_batch_size, 1),
                    ("test_batch_size", test_batch_size, 1),
                    ("samples_per_epoch", samples_per_epoch, 1),
                    ("num_workers", num_workers, 0)))
        if balance not in ("equal", "none"):
            raise ConfigError(f"data.balance={balance!r}; expected 'equal' or 'none'")
        self.roots = normalise_roots(root)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.test_batch_size = int(test_batch_size or batch_size)
        self.flips, self.balance = bool(flips), balance
        self.weights = dict(weights) if weights else {}
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        self.num_workers, self.pin_memory, self.seed = int(num_workers), bool(pin_memory), int(seed)
        self.pre_normalise = pre_normalise
        self._stores: list[Any] | None = None
        self._tasks = list(tasks) if tasks is not None else None
        if self._tasks is not None and len(set(self._tasks)) != len(self._tasks):
            raise ConfigError(f"data.tasks has duplicates: {self._tasks}")
        self._sets: dict[str, SegDataset] = {}
        self._init_loader_state()

    # -- trees and tasks -------------------------------------------------------------------
    def stores(self) -> list[Any]:
        """The opened trees (layout checked on first use; building from a config reads no file)."""
        if self._stores is None:
            from medrestore.io.segstore import SegStore

            self._stores = [SegStore(r["root"], r["task_names"]) for r in self.roots]
        return self._stores

    @property
    def tasks(self) -> list[str]:
        """Task names in ``task_id`` order."""
        if self._tasks is None:
            names: list[str] = []
            for st, r in zip(self.stores(), self.roots):
                splits = [r["split"]] if r["split"] else SPLIT_NAMES
                for s in splits:
                    for row in self._store_rows(st, r, s):
                        if row["task"] not in names:
                            names.append(row["task"])
            if not names:
                raise ConfigError(f"no samples in {[r['root'] for r in self.roots]}")
            order = [t["name"] for st in self.stores() for t in (st.manifest or {}).get("tasks", [])]
            names.sort(key=lambda t: order.index(t) if t in order else len(order))
            self._tasks = names
        return list(self._tasks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def task_info(self) -> dict[str, dict[str, Any]]:
        """``{task: {modality, mask, ...}}`` from the manifests (empty for bare trees)."""
        info: dict[str, dict[str, Any]] = {}
        for st in self.stores():
            for t, v in st.task_info.items():
                info.setdefault(t, v)
        return info

    @staticmethod
    def _store_rows(store: Any, root: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
        if root["split"] is not None:
            if root["split"] != split:
                return []
            rows = [r for s in store.splits for r in store.rows(s)]
            for r in rows:
                r["meta"]["split"] = split
            return rows
        return store.rows(split)

    def rows(self, split: str) -> list[dict[str, Any]]:
        tasks = set(self.tasks)
        return [r for st, root in zip(self.stores(), self.roots)
                for r in self._store_rows(st, root, split) if r["task"] in tasks]

    # -- datasets ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._check_world()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("test",), None: ("train", "val", "test")}.get(stage, (stage,))
        for split in wanted:
            if split in self._sets:
                continue
            rows = self.rows(split)
            ds = SegDataset(rows, self.tasks, self.image_size, train=split == "train",
                            flips=self.flips, pre_normalise=self.pre_normalise, seed=self.seed)
            if split == "train":
                missing = [t for t, n in ds.counts().items() if n == 0]
                if missing:
                    raise ConfigError(f"no training samples for task(s) {missing} in "
                                      f"{[r['root'] for r in self.roots]}")
                unknown = sorted(set(self.weights) - set(self.tasks))
                if unknown:
                    raise ConfigError(f"data.weights names {unknown}, not in data.tasks "
                                      f"{self.tasks}")
            self._sets[split] = ds

    def dataset(self, stage: str) -> SegDataset:
        """The dataset of ``stage`` (``train``, ``val`` or ``test``), built on first use."""
        if stage not in ("train", "val", "test"):
            raise ConfigError(f"stage {stage!r}; expected train, val or test")
        if stage not in self._sets:
            self.setup(stage)
        return self._sets[stage]

    def set_pre_normalise(self, fn: PreNormalise | None) -> None:
        """Apply ``fn`` to every sample from now on (built datasets included)."""
        self.pre_normalise = fn
        for ds in self._sets.values():
            ds.pre_normalise = fn

    # -- loaders -------------------------------------------------------------------------------
    def train_sampler(self, rank: int = 0, world_size: int = 1) -> BalancedBatchSampler:
        ds = self.dataset("train")
        groups = [[i for i, r in enumerate(ds.rows) if r["task"] == t] for t in self.tasks]
        return self._balanced_sampler(groups, self.tasks, rank, world_size)

    def _eval_dataset(self, name: str) -> tuple[SegDataset, str]:
        split = "test" if name == "predict" else name
        return self.dataset(split), (f"no '{split}' samples in {[r['root'] for r in self.roots]} "
                                     f"for tasks {self.tasks}")

SPLIT_NAMES = ("train", "val", "test")
