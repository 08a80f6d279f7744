"""3-D brain-tumour analysis samples from a volume store (:mod:`medrestore.io.volumes`).

A sample (the 3-D analysis contract, see docs/architecture.md) is a dict:

* ``image`` float32 ``C×X×Y×Z`` (T1, T1ce, T2, FLAIR), z-scored per channel over the non-zero
  voxels of the whole volume (zeros stay zero, as MONAI ``NormalizeIntensity(nonzero=True,
  channel_wise=True)``), after the optional ``pre_normalise(image, key)`` hook on physical
  intensities (the downstream-evaluation harness degrades / restores images there);
* ``seg`` float32 ``3×X×Y×Z`` in {0, 1}: TC, WT, ET from the canonical label map;
* ``boxes`` float32 ``n×6`` ``[x1, y1, z1, x2, y2, z2]`` (MONAI ``xyzxyz``, ``x2`` = last
  index + 1) from the WT mask of this very (cropped, augmented) sample; ``0×6`` without
  tumour; ``box_mode="union"`` gives the one WT bounding box (the authors' one box per case),
  ``"components"`` one box per connected WT component;
* ``box_labels`` int64 ``n`` (0: the one class, tumour); ``grade`` int64 scalar (1 high, 0 low,
  -1 unknown); ``key``; ``task`` = ``"brats"``; ``meta`` with ``affine``, ``spacing``,
  ``modalities``, ``source``, ``label_convention``, ``shape`` (the stored X, Y, Z), ``crop``
  (start indices of the crop in the stored volume; ``None`` for the full volume), ``split``,
  ``augment`` (the flips / rotation applied, or ``None``).

Crops: ``centre`` — the authors' fixed centre crop of ``roi_size`` (start ``dim//2 − roi//2``,
as MONAI's ``SpatialCrop(roi_center=dim//2)``), ``random`` — uniform crops for training,
centred on a random WT voxel with probability ``foreground_prob``; ``none`` — the full volume.
A volume smaller than the crop, and ``none`` volumes, are zero-padded at the far end (to
``roi_size``, or to a multiple of ``divisor``), so crop starts stay valid indices of the stored
volume. Training augmentation (``augment``) follows the authors' recipe: flips along each axis
(p 0.5 each), a 90° rotation in the (X, Y) plane (p 0.75, k ∈ {1, 2, 3}; only k = 2 when X ≠ Y),
one intensity scale ``× (1 + U(−0.1, 0.1))`` and shift ``+ U(−0.1, 0.1)``. Geometry is applied
to image and label map together and every target is recomputed afterwards, so boxes and masks
agree by construction. With augmentation, ``meta["affine"]`` still describes the stored
(un-flipped) volume.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medrestore.errors import ConfigError
from medrestore.io.volumes import VolumeStore, component_boxes, mask_box, regions_from_labels
from medrestore.utils.validate import check_ints

CROPS = ("centre", "random", "none")
BOX_MODES = ("union", "components")
STAGES = ("train", "val", "test")
PreNormalise = Callable[[np.ndarray, str], np.ndarray]


def _check_sampling(crops: Mapping[str, Any], box_mode: Any, foreground_prob: Any) -> None:
    """One line for a crop mode, box mode or foreground probability out of its range."""
    for name, value in crops.items():
        if value not in CROPS:
            raise ConfigError(f"data.{name}={value!r}; expected one of {', '.join(CROPS)}")
    if box_mode not in BOX_MODES:
        raise ConfigError(f"data.box_mode={box_mode!r}; expected one of {', '.join(BOX_MODES)}")
    if not 0.0 <= float(foreground_prob) <= 1.0:
        raise ConfigError(f"data.foreground_prob={foreground_prob}; expected a number in [0, 1]")


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    vals = [value] * 3 if isinstance(value, (int, np.integer)) else list(value)
    try:
        out = tuple(int(v) for v in vals)
        ok = len(out) == 3 and all(int(v) == v and v >= 1 for v in vals)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"data.{name}={value}; expected one integer >= 1 or three of them")
    return out  # type: ignore[return-value]


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score over each channel's non-zero voxels; zero voxels stay 0 (a channel
    with fewer than two non-zero voxels is only centred)."""
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32, copy=False)
        nz = x != 0
        if not nz.any():
            continue
        v = x[nz]
        sd = float(v.std())
        out[c][nz] = (v - float(v.mean())) / (sd if sd > 0 else 1.0)
    return out


def crop_start(shape: Sequence[int], roi: Sequence[int], mode: str, rng: np.random.Generator,
               label: np.ndarray | None = None, foreground_prob: float = 0.0) -> list[int]:
    """Start indices of a ``roi`` crop of a ``shape`` volume (``centre`` or ``random``)."""
    if mode == "centre":
        return [max(d // 2 - r // 2, 0) for d, r in zip(shape, roi)]
    if foreground_prob > 0 and label is not None and rng.random() < foreground_prob:
        fg = np.argwhere(label > 0)
        if len(fg):
            c = fg[rng.integers(len(fg))]
            return [int(np.clip(ci - r // 2, 0, max(d - r, 0))) for ci, d, r in zip(c, shape, roi)]
    return [int(rng.integers(0, max(d - r, 0) + 1)) for d, r in zip(shape, roi)]


def _pad_to(x: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """Zero-pad the last three axes at their far end up to ``target``."""
    pad = [(0, 0)] * (x.ndim - 3) + [(0, max(t - s, 0)) for s, t in zip(x.shape[-3:], target)]
    return np.pad(x, pad) if any(p[1] for p in pad) else x


class VolumeDataset(Dataset):
    """The cases of one split of a volume store as 3-D analysis samples (module docstring).

    The store is opened lazily per process, so the dataset can be handed to DataLoader
    workers."""

    def __init__(self, path: str | os.PathLike | VolumeStore, split: str = "train",
                 crop: str = "centre", roi_size: int | Sequence[int] = 96, divisor: int = 32,
                 augment: bool = False, foreground_prob: float = 0.0,
                 pre_normalise: PreNormalise | None = None, box_mode: str = "union",
                 seed: int = 0, keys: Sequence[str] | None = None) -> None:
        self.store = path if isinstance(path, VolumeStore) else VolumeStore(path)
        _check_sampling({"crop": crop}, box_mode, foreground_prob)
        if int(divisor) < 1:
            raise ConfigError(f"data.divisor={divisor}; expected an integer >= 1")
        self.split, self.crop, self.roi = split, crop, _triple(roi_size, "roi_size")
        self.divisor, self.augment = int(divisor), bool(augment)
        self.foreground_prob, self.box_mode = float(foreground_prob), box_mode
        self.pre_normalise, self.seed = pre_normalise, int(seed)
        self.keys = list(keys) if keys is not None else self.store.keys(split)
        self._draws = 0

    def __len__(self) -> int:
        return len(self.keys)

    def _rng(self, index: int) -> np.random.Generator:
        # distinct per item, per call and per worker / epoch (torch seeds workers afresh)
        self._draws += 1
        return np.random.default_rng([self.seed, torch.initial_seed() % 2**63, index,
                                      self._draws])

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        raw, label, info = self.store.read(key)
        meta = info["meta"]
        image = raw.astype(np.float32)
        if self.pre_normalise is not None:
            image = np.asarray(self.pre_normalise(image, key), dtype=np.float32)
            if image.shape != raw.shape:
                raise ConfigError(f"pre_normalise changed the shape of {key} from {raw.shape} "
                                  f"to {image.shape}")
        image = zscore_nonzero(image)
        has_label = label is not None
        lab = label if has_label else np.zeros(raw.shape[1:], np.uint8)
        rng = self._rng(index) if (self.crop == "random" or self.augment) else None
        start: list[int] | None
        if self.crop == "none":
            start = None
            target = [-(-s // self.divisor) * self.divisor for s in lab.shape]
        else:
            start = crop_start(lab.shape, self.roi, self.crop, rng or np.random.default_rng(0),
                               lab, self.foreground_prob)
            sl = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
            image, lab = image[(slice(None),) + sl], lab[sl]
            target = list(self.roi)
        image, lab = _pad_to(image, target), _pad_to(lab, target)
        aug = None
        if self.augment:
            image, lab, aug = self._augment(image, lab, rng)  # type: ignore[arg-type]
        seg = regions_from_labels(lab)
        boxes = mask_box(seg[1]) if self.box_mode == "union" else component_boxes(seg[1])
        sample_meta = {
            "affine": meta.get("affine"), "spacing": meta.get("spacing"),
            "modalities": meta.get("modalities", self.store.modalities),
            "source": meta.get("source", info.get("source")),
            "label_convention": meta.get("label_convention"),
            "shape": list(raw.shape[1:]), "crop": start, "split": info["split"],
            "augment": aug, "has_label": has_label,
        }
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "seg": torch.from_numpy(np.ascontiguousarray(seg, dtype=np.float32)),
            "boxes": torch.from_numpy(boxes),
            "box_labels": torch.zeros(len(boxes), dtype=torch.int64),
            "grade": torch.tensor(int(info["grade"]), dtype=torch.int64),
            "key": key, "task": "brats", "meta": sample_meta,
        }

    @staticmethod
    def _augment(image: np.ndarray, lab: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        flips = [ax for ax in range(3) if rng.random() < 0.5]
        for ax in flips:
            image, lab = np.flip(image, ax + 1), np.flip(lab, ax)
        k = 0
        if rng.random() < 0.75:
            k = int(rng.integers(1, 4)) if lab.shape[0] == lab.shape[1] else 2
            image, lab = np.rot90(image, k, axes=(1, 2)), np.rot90(lab, k, axes=(0, 1))
        scale = 1.0 + float(rng.uniform(-0.1, 0.1))
        shift = float(rng.uniform(-0.1, 0.1))
        image = image * scale + shift
        return np.ascontiguousarray(image), np.ascontiguousarray(lab), \
            {"flips": flips, "rot90_xy": k, "scale": round(scale, 4), "shift": round(shift, 4)}


def collate_volumes(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack ``image``/``seg``/``grade`` to ``B×…``; ``boxes``/``box_labels`` stay lists of
    tensors (one per sample), ``key``/``task``/``meta`` lists."""
    if not samples:
        raise ValueError("collate_volumes needs at least one sample")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise ConfigError(f"volumes of different shapes {sorted(shapes)} in one batch; use a "
                          "crop (data.crop / data.eval_crop) or batch size 1 for full volumes")
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "seg": torch.stack([s["seg"] for s in samples]),
        "grade": torch.stack([torch.as_tensor(s["grade"]) for s in samples]),
        "boxes": [s["boxes"] for s in samples],
        "box_labels": [s["box_labels"] for s in samples],
        "key": [s["key"] for s in samples],
        "task": [s["task"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }


class VolumeDataModule(L.LightningDataModule):
    """A volume store (``medrestore-prepare brats`` / ``brats_demo``) -> train / val / test
    loaders of 3-D analysis samples.

    Args:
        path: the store (``.h5``).
        crop / eval_crop: ``centre`` (the authors' fixed centre crop), ``random``, ``none``
            (full volume, zero-padded to a multiple of ``divisor``) for training / for val and
            test.
        roi_size / eval_roi_size: crop size (one int or three); ``eval_roi_size`` null = the
            training one.
        divisor: full volumes (``none``) are padded to a multiple of it (32 for a 5-level Swin).
        augment: the authors' training augmentation (flips, rot90, intensity scale / shift).
        foreground_prob: with ``random`` training crops, the chance a crop is centred on a WT
            voxel.
        box_mode: ``union`` (one WT box per sample, the authors') or ``components``.
        pre_normalise: ``f(image C×X×Y×Z physical, key) -> image`` applied before z-scoring in
            every split (Python only; :meth:`set_pre_normalise` changes it later).
    """

    def __init__(self, path: str | os.PathLike, batch_size: int = 1, val_batch_size: int = 1,
                 test_batch_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 crop: str = "centre", eval_crop: str = "centre",
                 roi_size: int | Sequence[int] = 96,
                 eval_roi_size: int | Sequence[int] | None = None, divisor: int = 32,
                 augment: bool = True, foreground_prob: float = 0.0, box_mode: str = "union",
                 seed: int = 0, train_split: str = "train", val_split: str = "val",
                 test_split: str = "test", pre_normalise: PreNormalise | None = None,
                 persistent_workers: bool = False) -> None:
        super().__init__()
        check_ints((("batch_size", batch_size, 1),
                    ("val_batch_size", val_batch_size, 1),
                    ("test_batch_size", test_batch_size, 1),
                    ("num_workers", num_workers, 0), ("divisor", divisor, 1)), allow_none=False)
        _check_sampling({"crop": crop, "eval_crop": eval_crop}, box_mode, foreground_prob)
        self.path = str(path)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.test_batch_size, self.num_workers = int(test_batch_size), int(num_workers)
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        self.crop, self.eval_crop = crop, eval_crop
        self.roi_size = _triple(roi_size, "roi_size")
        self.eval_roi_size = self.roi_size if eval_roi_size is None else \
            _triple(eval_roi_size, "eval_roi_size")
        self.divisor, self.augment = int(divisor), bool(augment)
        self.foreground_prob, self.box_mode, self.seed = float(foreground_prob), box_mode, int(seed)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.pre_normalise = pre_normalise
        self._store: VolumeStore | None = None
        self._sets: dict[str, VolumeDataset] = {}

    @property
    def store(self) -> VolumeStore:
        if self._store is None:
            self._store = VolumeStore(self.path)
        return self._store

    def set_pre_normalise(self, fn: PreNormalise | None) -> None:
        """Use ``fn`` for every dataset built from now on (built ones are dropped)."""
        self.pre_normalise = fn
        self._sets.clear()

    def dataset(self, stage: str) -> VolumeDataset:
        """The dataset of ``stage`` (train / val / test; built once)."""
        if stage not in STAGES:
            raise ConfigError(f"VolumeDataModule.dataset: stage {stage!r}; expected one of "
                              f"{', '.join(STAGES)}")
        if stage not in self._sets:
            split = self.splits[stage]
            keys = self.store.keys(split)
            if not keys:
                raise ConfigError(f"{self.path}: no cases in split {split!r} (data."
                                  f"{stage}_split); the store has "
                                  f"{sorted({r['split'] for r in self.store.manifest})}")
            train = stage == "train"
            self._sets[stage] = VolumeDataset(
                self.store, split, crop=self.crop if train else self.eval_crop,
                roi_size=self.roi_size if train else self.eval_roi_size, divisor=self.divisor,
                augment=self.augment and train,
                foreground_prob=self.foreground_prob if train else 0.0,
                pre_normalise=self.pre_normalise, box_mode=self.box_mode, seed=self.seed,
                keys=keys)
        return self._sets[stage]

    def setup(self, stage: str | None = None) -> None:
        self.store                                   # a missing store fails here, in one line

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        ds = self.dataset(stage)
        gen = torch.Generator()
        gen.manual_seed(self.seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          collate_fn=collate_volumes, generator=gen if shuffle else None,
                          drop_last=False,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.test_batch_size, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.test_batch_size, False)


__all__ = ["VolumeDataset", "VolumeDataModule", "collate_volumes", "zscore_nonzero",
           "crop_start", "CROPS"]
