"""A volume store's MRI as 2-D restoration pairs: ``medrestore-prepare volume_slices``.

The restoration models of this library are 2-D; the downstream evaluation
(:mod:`medrestore.inference.downstream`) restores the analysis data (BraTS, the 3-D demo) slice
by slice. A restoration model that is to be judged on those volumes is best trained on slices
of the *training* cases of the same store, degraded the way the downstream evaluation degrades
them. This converter cuts every modality of every case of a volume store
(``medrestore-prepare brats`` / ``brats_demo``) into slices along ``--slice-axis``, keeps the
slices with at least ``--min-foreground`` non-zero voxels (BraTS is skull-stripped: the rest is
empty background) and degrades them with a simulator (default ``mri_kspace``: the central
``1/scale`` of k-space, with ``--param rician_sigma=…`` for noise), exactly as ``clean_folder``
does for image folders. Each case keeps its store split, so no test case is seen in training.

The normalisation window is one fixed physical window for the whole shard (``--window``; default
``[0, the 99.9th percentile of the training cases' non-zero voxels]``): MR intensities have no
absolute scale, and a fixed window is what a restoration checkpoint records and reapplies
(``medrestore-downstream ... restore_window=checkpoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medrestore.prepare.base import Converter, ConvertError, Item, Record, parse_param
from medrestore.prepare.options import Options, option

#: store axes are RAS voxel axes (i, j, k): the axial plane is across k
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(kw_only=True)
class VolumeSlicesOptions(Options):
    store: Path = option(help="volume store to cut (medrestore-prepare brats / brats_demo)",
                         metavar="FILE.h5")
    task: str = option("mri_sr", "restoration task of the pairs (default mri_sr)")
    simulator: str | None = option(None, "simulator name (default: the task's default: "
                                   "mri_kspace for mri_sr)")
    param: tuple[str, ...] = option((), "simulator parameter (repeatable), e.g. scale=4, "
                                    "rician_sigma=30", metavar="KEY=VALUE", append=True)
    modalities: tuple[str, ...] | None = option(None, "modalities to cut (default: all of the "
                                                "store's, e.g. t1 t1ce t2 flair)")
    slice_axis: str = option("axial", "plane of the slices", choices=tuple(SLICE_AXES))
    every: int = option(1, "keep every N-th slice (default 1: all; neighbouring slices are "
                        "nearly alike)")
    min_foreground: float = option(0.1, "keep a slice when at least this fraction of its "
                                   "voxels is non-zero (default 0.1)")
    noisy_background: bool = option(False, "keep the simulator's output outside the brain "
                                    "(default: voxels that are zero in the clean volume stay "
                                    "zero, as in skull-stripped data and medrestore-downstream)")
    window: tuple[float, float] | None = option(
        None, "normalisation window (default: 0 and the 99.9th percentile of the training "
        "cases' non-zero voxels)", metavar=("LOW", "HIGH"))
    unit: str = option("a.u.", "unit of the window (default a.u.)")
    splits: tuple[str, ...] = option(("train", "val", "test"), "store splits to cut "
                                     "(default all three)")

    def validate(self) -> None:
        super().validate()
        if not self.store.is_file():
            raise ConvertError(f"--store {self.store}: no such volume store")
        if self.every < 1:
            raise ConvertError(f"--every must be >= 1, got {self.every}")
        if not 0.0 <= float(self.min_foreground) < 1.0:
            raise ConvertError(f"--min-foreground must be within [0, 1), got {self.min_foreground}")
        if self.window is not None and not float(self.window[0]) < float(self.window[1]):
            raise ConvertError(f"--window must be LOW < HIGH, got {list(self.window)}")
        bad = [s for s in self.splits if s not in ("train", "val", "test")]
        if bad:
            raise ConvertError(f"--splits must be train, val and/or test, got {bad[0]!r}")


class VolumeSlices(Converter):
    """2-D restoration pairs (clean slice + simulated degradation) from a 3-D volume store."""

    name = "volume_slices"
    help = "slices of a 3-D volume store (brats, brats_demo) + a simulator -> restoration pairs"
    unit = "case"
    Options = VolumeSlicesOptions

    def _store(self, opts: VolumeSlicesOptions):
        from medrestore.io.volumes import VolumeStore

        return VolumeStore(opts.store)

    def _simulator(self, opts: VolumeSlicesOptions) -> tuple[str, dict[str, Any]]:
        from medrestore.degradations.simulators import SIMULATORS, default_simulator
        from medrestore.registry import get_task

        get_task(opts.task)
        name = opts.simulator or default_simulator(opts.task)
        if name not in SIMULATORS:
            raise ConvertError(f"--simulator {name!r} is unknown; known simulators: "
                               f"{', '.join(sorted(SIMULATORS))}")
        return name, dict(parse_param(p) for p in opts.param)

    def _channels(self, opts: VolumeSlicesOptions, store: Any) -> list[int]:
        if opts.modalities is None:
            return list(range(len(store.modalities)))
        unknown = [m for m in opts.modalities if m not in store.modalities]
        if unknown:
            raise ConvertError(f"--modalities {unknown[0]!r} is not in {opts.store} (it has "
                               f"{', '.join(store.modalities)})")
        return [store.modalities.index(m) for m in opts.modalities]

    def _window(self, opts: VolumeSlicesOptions, store: Any, channels: list[int]) -> tuple[float, float]:
        if opts.window is not None:
            return float(opts.window[0]), float(opts.window[1])
        # one window for the shard, from the training cases only (never the test cases)
        values = []
        for key in store.keys("train"):
            image = store.read(key)[0][channels]
            fg = image[image > 0]
            if fg.size:
                values.append(np.percentile(fg, 99.9))
        if not values:
            raise ConvertError(f"--store {opts.store}: no training case with non-zero voxels to "
                               "choose the window from; give --window LOW HIGH")
        return 0.0, float(np.median(values))

    def discover(self, opts: VolumeSlicesOptions) -> list[Item]:
        store = self._store(opts)
        self._simulator(opts)                      # unknown simulator: fail before slow work
        channels = self._channels(opts, store)
        self._win = self._window(opts, store, channels)
        return [Item(key, row["split"], {"key": key}) for row in store.manifest
                if row["split"] in opts.splits for key in [row["key"]]]

    def convert(self, item: Item, opts: VolumeSlicesOptions) -> Iterable[Record]:
        from medrestore.degradations.rng import keyed_rng
        from medrestore.degradations.simulators import simulate
        from medrestore.sample import Normalisation, make_meta

        store = self._store(opts)
        sim, params = self._simulator(opts)
        channels = self._channels(opts, store)
        image, _, info = store.read(item.data["key"])
        spacing = list((info.get("meta") or {}).get("spacing") or []) or None
        axis = SLICE_AXES[opts.slice_axis]
        inplane = [float(spacing[i]) for i in range(3) if i != axis] if spacing else None
        norm = {"low": self._win[0], "high": self._win[1], "unit": opts.unit, "kind": "minmax"}
        for c in channels:
            vol = np.moveaxis(image[c].astype(np.float32), axis, 0)
            modality = store.modalities[c]
            for i, sl in enumerate(vol):
                if i % int(opts.every) or float((sl != 0).mean()) < float(opts.min_foreground):
                    continue
                key = f"{item.unit}/{modality}/{i:03d}"
                gt = sl[None]
                lq = simulate(sim, gt, rng=keyed_rng(f"{opts.task}:{key}", opts.seed),
                              normalisation=Normalisation.from_dict(norm), spacing=inplane,
                              **params)
                if not opts.noisy_background:
                    lq = np.where(gt != 0, lq, 0.0)
                meta = make_meta(opts.task, normalisation=norm, spacing=inplane, channels=1,
                                 source={"store": str(opts.store.name), "case": item.unit},
                                 image=item.unit, modality_name=modality, slice_index=i,
                                 slice_axis=opts.slice_axis,
                                 degradation={"simulator": sim, "params": params,
                                              "seed": int(opts.seed)})
                yield Record(opts.task, key, gt, np.asarray(lq, dtype=np.float32), meta,
                             f"{opts.store.name}:{item.unit}")

    def space_needed(self, opts: VolumeSlicesOptions, items: Any) -> tuple[int, str]:
        # float32 pairs of every kept slice: at most ~8x the (int16, compressed) store
        return 8 * opts.store.stat().st_size, f"8x the size of {opts.store.name}"

    def notes(self, opts: VolumeSlicesOptions) -> list[str]:
        win = getattr(self, "_win", None)
        return [f"window {win[0]:g}..{win[1]:g} {opts.unit}"] if win else []
