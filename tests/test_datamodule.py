"""HDF5 shards (both storages, SR scale, clean-only samples), datasets, the balanced
rank-aware batch sampler and the MultiTaskDataModule."""

from __future__ import annotations

import pickle
from collections import Counter

import h5py
import numpy as np
import pytest

from conftest import TOY_TASKS, write_toy_shard
from medrestore.datasets.datamodule import MultiTaskDataModule
from medrestore.datasets.pairs import ShardPairs, TrainPatches, load_sets, normalise_sets
from medrestore.datasets.samplers import BalancedBatchSampler, StridedEvalSampler, group_rows
from medrestore.errors import ConfigError
from medrestore.io.hdf5 import PairWriter, ShardError, read_manifest, read_pair, to_unit
from medrestore.registry import RegistryError
from medrestore.sample import Normalisation, make_meta, validate_sample


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


def _patches(shard, patch=32, **kw):
    return TrainPatches(load_sets(normalise_sets([shard]), ["train"]), patch, **kw)


def test_full_image_dataset_yields_contract_samples(toy_shard):
    ds = ShardPairs([toy_shard], "test")
    assert len(ds) == len(TOY_TASKS)
    for i in range(len(ds)):
        validate_sample(ds[i])
    with pytest.raises(RegistryError, match="unknown task"):
        ShardPairs([toy_shard], "test", tasks=["ct_denoising"])


# ------------------------------------------------------------------ physical storage, SR scale
@pytest.fixture(scope="module")
def v2_shard(tmp_path_factory):
    """int16 HU CT, uint8 RGB with a ×4 LR-native lq, and a clean-only (on-the-fly) photo."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("v2") / "v2.h5"
    ct_norm = Normalisation(-1024, 3072, "HU").to_dict()
    u8 = Normalisation(0, 255, "8-bit").to_dict()
    with PairWriter(path, attrs={"dataset": "unit-test", "args": {"seed": 0}}) as w:
        for i, split in enumerate(("train", "val", "test")):
            hu = rng.integers(-1024, 2000, size=(1, 40, 48)).astype(np.int16)
            w.add((hu + 7).astype(np.int16), hu, task="ct_denoise", key=f"ct/p{i}", split=split,
                  storage="physical", meta=make_meta("ct_denoise", normalisation=ct_norm))
            gt = rng.integers(0, 256, size=(3, 64, 72)).astype(np.uint8)
            lr = gt[:, ::4, ::4].copy()
            w.add(lr, gt, task="natural_sr", key=f"img/{i}", split=split, scale=4,
                  storage="physical", meta=make_meta("natural_sr", normalisation=u8))
        gt = rng.integers(0, 256, size=(3, 40, 40)).astype(np.uint8)
        w.add(None, gt, task="natural_denoise", key="img/clean", split="train", storage="physical",
              meta=make_meta("natural_denoise", normalisation=u8,
                             simulator={"name": "gaussian_noise", "params": {"sigma": 25}}))
    return path


def test_physical_storage_keeps_dtype_and_normalises_on_read(v2_shard):
    rows = {r["id"]: r for r in read_manifest(v2_shard)}
    assert rows["ct_denoise:ct|p0"]["storage"] == "physical"
    assert rows["natural_sr:img|0"]["lq_shape"] == [3, 16, 18] and rows["natural_sr:img|0"]["scale"] == 4
    assert rows["natural_denoise:img|clean"]["simulator"]["name"] == "gaussian_noise"
    with h5py.File(v2_shard) as f:
        lq, gt, attrs = read_pair(f, "ct_denoise:ct|p1")
        assert gt.dtype == np.int16 and attrs["storage"] == "physical"
        np.testing.assert_allclose(to_unit(gt, "physical", attrs["meta"]),
                                   (gt.astype(np.float32) + 1024) / 4096, atol=1e-6)
        lq, gt, _ = read_pair(f, "natural_sr:img|0", window=(8, 12, 32, 40))
        assert gt.shape == (3, 32, 40) and lq.shape == (3, 8, 10)
        with pytest.raises(ShardError, match="not aligned to scale 4"):
            read_pair(f, "natural_sr:img|0", window=(1, 0, 32, 32))
    sample = ShardPairs([v2_shard], "val", tasks=["ct_denoise"])[0]
    validate_sample(sample)
    assert abs(float(sample["lq"].mean() - sample["gt"].mean()) - 7 / 4096) < 1e-5


def test_writer_rejects_bad_v2_samples(tmp_path):
    meta = make_meta("natural_sr", normalisation=Normalisation(0, 255))
    with PairWriter(tmp_path / "x.h5") as w:
        with pytest.raises(ShardError, match="at scale 4"):
            w.add(np.zeros((3, 10, 10), np.uint8), np.zeros((3, 32, 32), np.uint8), task="natural_sr",
                  key="a", split="train", scale=4, storage="physical", meta=meta)
        with pytest.raises(ShardError, match="clean-only sample .* needs"):
            w.add(None, np.zeros((3, 8, 8), np.uint8), task="natural_sr", key="b", split="train",
                  storage="physical", meta=meta)
        with pytest.raises(ShardError, match="'test' needs a fixed"):
            w.add(None, np.zeros((3, 8, 8), np.uint8), task="natural_sr", key="c", split="test",
                  storage="physical", meta={**meta, "simulator": {"name": "bicubic"}})
        with pytest.raises(ShardError, match="needs meta\\['normalisation'\\]"):
            w.add(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), task="ct_denoise", key="d",
                  split="train", storage="physical", meta={})


def test_scale_aware_crops_and_upsampled_full_images(v2_shard):
    ds = TrainPatches(load_sets(normalise_sets([{"shard": v2_shard, "tasks": ["natural_sr"]}]),
                                ["train"]), 32, seed=1)
    s = ds[(0, 5)]
    validate_sample(s)
    assert s["lq"].shape == s["gt"].shape == (3, 32, 32) and s["meta"]["scale"] == 4
    # the GT patch is an aligned window of the stored image, and the LR window matches it
    with h5py.File(v2_shard) as f:
        _, gt_full, _ = read_pair(f, "natural_sr:img|0")
    gt_patch = np.rint(s["gt"].numpy() * 255).astype(np.uint8)
    hits = [(t, l) for t in range(0, 64 - 31, 4) for l in range(0, 72 - 31, 4)
            if np.array_equal(gt_full[:, t:t + 32, l:l + 32], gt_patch)]
    assert len(hits) == 1
    raw = TrainPatches(ds.rows, 32, seed=1, upsample_lq=False)[(0, 5)]
    assert raw["lq"].shape == (3, 8, 8)          # kept low-resolution for SR-head networks
    t, l = hits[0]
    np.testing.assert_allclose(raw["lq"].numpy(), gt_full[:, t:t + 32:4, l:l + 32:4] / 255, atol=1e-6)
    with pytest.raises(ConfigError, match="multiple of the stored SR scale"):
        TrainPatches(ds.rows, 30)
    full = ShardPairs([v2_shard], "test", tasks=["natural_sr"])[0]
    assert full["lq"].shape == full["gt"].shape == (3, 64, 72)


def test_clean_only_samples_are_degraded_on_the_fly_reproducibly(v2_shard):
    ds = TrainPatches(load_sets(normalise_sets([{"shard": v2_shard, "tasks": ["natural_denoise"]}]),
                                ["train"]), 32, seed=0)
    a, b, c = ds[(0, 11)], ds[(0, 11)], ds[(0, 12)]
    assert np.array_equal(a["lq"], b["lq"]) and not np.array_equal(a["lq"], c["lq"])
    noise = (a["lq"] - a["gt"]).numpy()
    assert 0.07 < noise.std() < 0.12                 # sigma 25/255 = 0.098, a little clipping


def test_patches_are_deterministic_and_picklable(toy_shard):
    ds = _patches(toy_shard, augment=True, seed=3)
    a, b = ds[(4, 7)], ds[(4, 7)]
    assert np.array_equal(a["lq"], b["lq"]) and a["lq"].shape[-2:] == (32, 32)
    assert not np.array_equal(a["gt"], ds[(4, 8)]["gt"])
    clone = pickle.loads(pickle.dumps(ds))   # with an open handle: must not pickle h5py objects
    assert np.array_equal(clone[(4, 7)]["lq"], a["lq"])


def test_patch_larger_than_image_is_reflect_padded(tmp_path):
    shard = write_toy_shard(tmp_path / "small.h5", sizes=((20, 24),), tasks=("ct_denoise",))
    s = _patches(shard, pad_small=True)[(0, 0)]   # opt-in (default: an error, tested below)
    assert s["lq"].shape == (1, 32, 32)


# ------------------------------------------------------------------ balanced batch sampler
def _take(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_tat_batches_hold_four_per_task():
    groups = [list(range(0, 50)), list(range(50, 60)), list(range(60, 300))]
    s = BalancedBatchSampler(groups, 12, num_batches=20)
    for batch in _take(s):
        counts = Counter(0 if r < 50 else 1 if r < 60 else 2 for r, _ in batch)
        assert counts == {0: 4, 1: 4, 2: 4}


def test_datprl_batches_and_remainder_weights():
    sizes = [3450 * 12, 1680 * 22, 405, 200 * 200, 534 * 75, 2039 * 2]   # DATPRL repeat factors
    groups, start = [], 0
    for n in sizes:
        groups.append(list(range(start, start + min(n, 500))))
        start += 500
    for batch in _take(BalancedBatchSampler(groups, 12, num_batches=10)):
        assert Counter(r // 500 for r, _ in batch) == {k: 2 for k in range(6)}
    # batch 8 over 6 groups: 1 each, and the 2 remainder slots go preferentially to the heavier
    weights = [1.0, 1.0, 1.0, 1.0, 1.2, 1.1]
    total = Counter()
    for batch in _take(BalancedBatchSampler(groups, 8, weights=weights, num_batches=126)):
        c = Counter(r // 500 for r, _ in batch)
        assert all(c[k] >= 1 for k in range(6)) and sum(c.values()) == 8
        total.update(c)
    extra = {k: total[k] - 126 for k in range(6)}
    assert extra[4] > extra[5] > extra[0] and sum(extra.values()) == 252
    assert abs(extra[4] / extra[0] - 1.2) < 0.05


def test_weighted_and_none_modes_follow_weights_and_repeats():
    groups = [list(range(10)), list(range(10, 20))]
    total = Counter()
    for batch in _take(BalancedBatchSampler(groups, 6, weights=[1, 2], balance="weighted", num_batches=30)):
        total.update(r // 10 for r, _ in batch)
    assert total == {0: 60, 1: 120}
    pools = [list(range(10)) * 3, list(range(10, 20))]            # repeat 3 vs 1
    total = Counter()
    s = BalancedBatchSampler(pools, 8, balance="none", num_batches=100)
    for batch in _take(s):
        total.update(r // 10 for r, _ in batch)
    assert total[0] == 3 * total[1]                                # exact: whole passes of 40


def test_ranks_get_disjoint_balanced_batches_reshuffled_per_epoch():
    groups = [list(range(0, 7)), list(range(7, 20)), list(range(20, 23))]
    world, per_rank = 2, 6
    ranks = [BalancedBatchSampler(groups, per_rank, rank=r, world_size=world, seed=5)
             for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == 2                    # ceil(23 / 12)
    epochs = []
    for epoch in range(3):
        draws = []
        for s in ranks:
            for batch in _take(s, epoch):
                assert Counter(0 if r < 7 else 1 if r < 20 else 2 for r, _ in batch) == {0: 2, 1: 2, 2: 2}
                draws += [d for _, d in batch]
        assert len(draws) == len(set(draws)) == 24                # no item shared by ranks
        epochs.append(draws)
    assert len(set(epochs[0]) & set(epochs[1])) == 0             # each epoch draws anew
    again = BalancedBatchSampler(groups, per_rank, rank=1, world_size=world, seed=5)
    assert _take(again, 2) == _take(ranks[1], 2)                  # reproducible from the seed
    # within one pass a group's rows are a permutation: rows of group 2 (3 images) cycle
    per_rank_batches = [_take(s, 0) for s in ranks]
    stream = [r for step in range(2) for rank in range(world)
              for r, _ in per_rank_batches[rank][step] if r >= 20]   # step-major, rank-minor
    assert len(stream) == 8 and sorted(stream[:3]) == sorted(stream[3:6]) == [20, 21, 22]


def test_eval_sampler_has_no_padding():
    evals = [list(StridedEvalSampler(5, r, 2)) for r in range(2)]
    assert sorted(evals[0] + evals[1]) == [0, 1, 2, 3, 4]


def test_sampler_config_errors():
    with pytest.raises(ConfigError, match="data.balance"):
        BalancedBatchSampler([[0]], 2, balance="uniform")
    with pytest.raises(ConfigError, match="at least one training image"):
        BalancedBatchSampler([[0], []], 2)
    with pytest.raises(ConfigError, match="positive numbers"):
        BalancedBatchSampler([[0], [1]], 2, weights=[1, 0])


# ------------------------------------------------------------------ the DataModule
def test_sets_repeat_factors_and_groups(toy_shard, v2_shard):
    sets = normalise_sets([{"shard": toy_shard, "tasks": ["ct_denoise"], "repeat": 3},
                           {"shard": v2_shard, "repeat": 2}])
    rows = load_sets(sets, ["train"])
    names, pools = group_rows(rows, "task")
    assert names == ["ct_denoise", "natural_denoise", "natural_sr"]
    assert len(pools[0]) == 4 * 3 + 1 * 2          # toy: 4 train CT images ×3, v2: 1 ×2
    set_names, _ = group_rows(rows, "set")
    assert set_names == ["toy[ct_denoise]", "v2"]
    with pytest.raises(ConfigError, match="repeat=0"):
        normalise_sets([{"shard": toy_shard, "repeat": 0}])
    with pytest.raises(ConfigError, match="unknown key"):
        normalise_sets([{"shard": toy_shard, "repeats": 2}])
    with pytest.raises(ConfigError, match="selected by two"):
        load_sets(normalise_sets([{"shard": toy_shard, "name": "a"}, {"shard": toy_shard, "name": "b"}]),
                  ["train"])


def test_datamodule_batches_and_config_errors(toy_shard, tmp_path):
    dm = MultiTaskDataModule([str(toy_shard)], patch_size=32, batch_size=6, samples_per_epoch=12)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 2
    batch = next(iter(loader))
    assert batch["lq"].shape == (6, 3, 32, 32)
    assert Counter(batch["task"]) == {t: 2 for t in TOY_TASKS}
    assert len(dm.val_dataloader()) == len(TOY_TASKS)
    default_epoch = MultiTaskDataModule([{"shard": str(toy_shard), "repeat": 5}], batch_size=6,
                                        patch_size=32)
    assert len(default_epoch.train_sampler()) == 10          # 3 tasks × 4 images × 5 / 6
    with pytest.raises(ConfigError, match="no 'train' samples"):
        MultiTaskDataModule([str(toy_shard)], tasks=["deblur"]).setup("fit")
    with pytest.raises(ShardError, match="no such shard"):
        MultiTaskDataModule([str(tmp_path / "nope.h5")]).setup("fit")
    with pytest.raises(ConfigError, match="data.weights names"):
        MultiTaskDataModule([str(toy_shard)], weights={"derain": 2}).setup("fit")


# ------------------------------------------------------------------ impossible data settings
def test_patch_larger_than_smallest_training_image_is_refused(toy_shard):
    with pytest.raises(ConfigError, match=r"data.patch_size=1024 is larger than the smallest "
                       r"training image toy\.\w+\.train1 \(40×56, .*toy.h5\).*data.pad_small=true"):
        MultiTaskDataModule([str(toy_shard)], patch_size=1024).setup("fit")
    dm = MultiTaskDataModule([str(toy_shard)], patch_size=48, batch_size=3, pad_small=True)
    assert dm.dataset("train")[(1, 0)]["gt"].shape[-2:] == (48, 48)   # 40×56 padded


@pytest.mark.parametrize("option, value", [
    ("batch_size", 0), ("batch_size", -6), ("patch_size", 0), ("patch_size", -32),
    ("samples_per_epoch", 0), ("samples_per_epoch", -1), ("val_batch_size", 0),
    ("test_batch_size", -1), ("num_workers", -1), ("batch_size", 2.5)])
def test_impossible_sizes_are_one_config_error(toy_shard, option, value):
    with pytest.raises(ConfigError, match=rf"^data\.{option}={value}; expected an integer >= "):
        MultiTaskDataModule([str(toy_shard)], **{option: value})


def test_eval_images_smaller_than_the_ssim_window_are_refused(tmp_path):
    shard = write_toy_shard(tmp_path / "dots.h5", sizes=((2, 3),), tasks=("ct_denoise",))
    for stage, split in (("validate", "val"), ("test", "test")):
        with pytest.raises(ConfigError, match=rf"dots.h5: {split} sample toy.ct_denoise.{split}0 "
                           r"is 2×3, smaller than the 11×11 SSIM window"):
            MultiTaskDataModule([str(shard)], patch_size=1).setup(stage)
    MultiTaskDataModule([str(shard)], patch_size=1).setup("predict")   # nothing is scored
