"""HDF5 shards, datasets and the DataModule's rank-aware samplers."""

from __future__ import annotations

import pickle
from collections import Counter

import h5py
import numpy as np
import pytest

from conftest import TOY_TASKS, write_toy_shard
from medrestore.datasets.datamodule import EpochBlockSampler, RestorationDataModule, StridedEvalSampler
from medrestore.datasets.pairs import ShardPairs, TaskUniformPatches
from medrestore.errors import ConfigError
from medrestore.io.hdf5 import PairWriter, ShardError, read_manifest
from medrestore.registry import RegistryError
from medrestore.sample import make_meta, validate_sample


def test_manifest_and_atomic_write(tmp_path, toy_shard):
    rows = read_manifest(toy_shard)
    assert {r["task"] for r in rows} == set(TOY_TASKS)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    # refuses to overwrite, and leaves the existing file intact
    before = toy_shard.read_bytes()
    with pytest.raises(ShardError, match="already exists"):
        PairWriter(toy_shard)
    assert toy_shard.read_bytes() == before
    # an exception inside the block leaves no file under the final name
    out = tmp_path / "broken.h5"
    with pytest.raises(RuntimeError):
        with PairWriter(out) as w:
            w.add(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), task="ct_denoise", key="a",
                  split="train", meta=make_meta("ct_denoise"))
            raise RuntimeError("interrupted")
    assert not out.exists() and not (tmp_path / "broken.h5.partial").exists()


def test_bad_shards_give_one_line_errors(tmp_path):
    with pytest.raises(ShardError, match="no such shard"):
        read_manifest(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(ShardError, match="not a medrestore pair shard"):
        read_manifest(other)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ShardError, match="unreadable HDF5"):
        read_manifest(junk)


def test_full_image_dataset_yields_contract_samples(toy_shard):
    ds = ShardPairs([toy_shard], "test")
    assert len(ds) == len(TOY_TASKS)
    for i in range(len(ds)):
        validate_sample(ds[i])
    with pytest.raises(RegistryError, match="unknown task"):
        ShardPairs([toy_shard], "test", tasks=["ct_denoising"])


def test_patches_are_task_uniform_deterministic_and_picklable(toy_shard):
    ds = TaskUniformPatches([toy_shard], patch_size=32, length=30, augment=True, seed=3)
    tasks = [ds[i]["task"] for i in range(30)]
    assert Counter(tasks) == {t: 10 for t in TOY_TASKS}
    a, b = ds[7], ds[7]
    assert np.array_equal(a["lq"], b["lq"]) and a["lq"].shape[-2:] == (32, 32)
    assert not np.array_equal(ds[7]["gt"], ds[7 + 30 * 3]["gt"])  # next epochs draw new crops
    clone = pickle.loads(pickle.dumps(ds))   # with an open handle: must not pickle h5py objects
    assert np.array_equal(clone[7]["lq"], a["lq"])


def test_patch_larger_than_image_is_reflect_padded(tmp_path):
    shard = write_toy_shard(tmp_path / "small.h5", sizes=((20, 24),), tasks=("ct_denoise",))
    s = TaskUniformPatches([shard], patch_size=32, length=2)[0]
    assert s["lq"].shape == (1, 32, 32)


def test_samplers_are_disjoint_across_ranks_and_epochs():
    n, world = 24, 2
    ranks = [EpochBlockSampler(n, r, world) for r in range(world)]
    seen = []
    for epoch in range(2):
        for s in ranks:
            s.set_epoch(epoch)
            seen += list(s)
    assert len(seen) == len(set(seen)) == 2 * n
    evals = [list(StridedEvalSampler(5, r, world)) for r in range(world)]
    assert sorted(evals[0] + evals[1]) == [0, 1, 2, 3, 4]   # no padding, no duplicates


def test_balanced_batches_per_rank(toy_shard):
    # each rank's batch of 6 consecutive indices holds 2 samples of each of the 3 tasks
    ds = TaskUniformPatches([toy_shard], patch_size=16, length=24)
    for rank in (0, 1):
        idx = list(EpochBlockSampler(24, rank, 2))
        for start in range(0, len(idx), 6):
            batch = [ds[i]["task"] for i in idx[start:start + 6]]
            assert Counter(batch) == {t: 2 for t in TOY_TASKS}


def test_datamodule_batches_and_config_errors(toy_shard, tmp_path):
    dm = RestorationDataModule([str(toy_shard)], patch_size=32, batch_size=6, samples_per_epoch=12)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["lq"].shape == (6, 3, 32, 32) and sorted(set(batch["task"])) == sorted(TOY_TASKS)
    assert len(dm.val_dataloader()) == len(TOY_TASKS)
    with pytest.raises(ConfigError, match="no 'train' samples"):
        RestorationDataModule([str(toy_shard)], tasks=["deblur"]).setup("fit")
    with pytest.raises(ShardError, match="no such shard"):
        RestorationDataModule([str(tmp_path / "nope.h5")]).setup("fit")


def test_task_weights_repeat_tasks_in_the_cycle(toy_shard):
    ds = TaskUniformPatches([toy_shard], patch_size=16, length=40,
                            task_weights={"rs_sr": 3})
    counts = Counter(ds[i]["task"] for i in range(40))
    assert counts["rs_sr"] == 3 * counts["ct_denoise"] == 3 * counts["natural_denoise"]
    with pytest.raises(ConfigError, match="task_weights names task"):
        TaskUniformPatches([toy_shard], patch_size=16, length=4, task_weights={"derain": 2})
    with pytest.raises(ConfigError, match="positive integer"):
        TaskUniformPatches([toy_shard], patch_size=16, length=4, task_weights={"rs_sr": 0})
