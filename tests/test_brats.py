"""BraTS converter (three layouts, both label conventions), the volume store, the 3-D sample
contract of VolumeDataset / VolumeDataModule, and the embedded 3-D demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_trees import (
    BRATS_BASE,
    BRATS_SHAPE,
    brats2018_tree,
    brats2021_tree,
    brats2023_tree,
    msd_brats_tree,
)
from medrestore.errors import MedrestoreError
from medrestore.io.volumes import VolumeStore, mask_box, regions_from_labels
from medrestore.prepare import run

MODS = ("t1", "t1ce", "t2", "flair")


def convert(src: Path, out: Path, **kw):
    return run("brats", src=src, out=out, quiet=True, **kw)


def expected_box(offset: int) -> list[float]:
    # brats_canonical's WT block [1+o:7+o, 1:7, 1:6]
    return [1 + offset, 1, 1, 7 + offset, 7, 6]


# ------------------------------------------------------------------------------ label maps


def test_label_conventions_map_to_tc_wt_et_hand_checked():
    from medrestore.prepare.brats import to_canonical

    # one voxel of each source code; columns: bg, NCR/NET, ED, ET
    brats_124 = np.array([0, 1, 2, 4]).reshape(4, 1, 1)
    brats_123 = np.array([0, 1, 2, 3]).reshape(4, 1, 1)
    msd = np.array([0, 2, 1, 3]).reshape(4, 1, 1)       # Decathlon: 1 oedema, 2 non-enh.
    for src, conv in ((brats_124, "brats_124"), (brats_123, "brats_123"), (msd, "msd")):
        lab = to_canonical(src, conv)
        assert lab.ravel().tolist() == [0, 1, 2, 3]
        tc, wt, et = regions_from_labels(lab)[:, :, 0, 0]
        assert tc.tolist() == [False, True, False, True]        # NCR/NET + ET
        assert wt.tolist() == [False, True, True, True]         # every tumour label
        assert et.tolist() == [False, False, False, True]
    with pytest.raises(MedrestoreError, match=r"seg\.nii\.gz.*\[5\].*brats_124.*\[0, 1, 2, 4\]"):
        to_canonical(np.array([0, 5]), "brats_124", "x/seg.nii.gz")


def test_boxes_are_xyzxyz_exclusive_corners():
    m = np.zeros((6, 5, 4), bool)
    m[1:3, 2:5, 3] = True
    assert mask_box(m).tolist() == [[1, 2, 3, 3, 5, 4]]
    assert mask_box(np.zeros((3, 3, 3))).shape == (0, 6)


# ------------------------------------------------------------------------------ layouts


def test_brats2018_hgg_lgg_tree(tmp_path):
    truth = brats2018_tree(tmp_path / "src")
    s = convert(tmp_path / "src", tmp_path / "b.h5", split_fractions=[0.6, 0.2, 0.2])
    assert s["samples"] == 5 and sum(s["counts"]["brats"].values()) == 5
    store = VolumeStore(tmp_path / "b.h5")
    assert store.modalities == list(MODS)
    for row in store.manifest:
        case = row["key"].split("/", 1)[1]
        image, label, info = store.read(row["key"])
        t = truth[case]
        assert info["grade"] == t["grade"] == row["grade"]          # HGG 1, LGG 0
        assert image.shape == (4, *BRATS_SHAPE) and image.dtype == np.int16
        for c, m in enumerate(MODS):                               # stacked T1, T1ce, T2, FLAIR
            np.testing.assert_array_equal(image[c], t["modalities"][m])
        np.testing.assert_array_equal(label, t["label"])           # 4 -> 3
        assert info["meta"]["label_convention"] == "brats_124"
        assert info["meta"]["spacing"] == [1.0, 1.0, 1.0]
        assert len(info["meta"]["affine"]) == 4


def test_brats2021_labels_124_and_no_grade(tmp_path):
    truth = brats2021_tree(tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "b.h5")
    store = VolumeStore(tmp_path / "b.h5")
    for key in store.keys():
        _, label, info = store.read(key)
        t = truth[key.split("/", 1)[1]]
        assert info["grade"] == -1
        np.testing.assert_array_equal(label, t["label"])
        et = regions_from_labels(label)[2]
        assert et.sum() == (44 if (t["label"] == 3).any() else 0)


def test_brats2023_names_labels_123_and_patient_level_split(tmp_path):
    truth = brats2023_tree(tmp_path / "src")
    for seed in range(6):
        out = tmp_path / f"b{seed}.h5"
        convert(tmp_path / "src", out, seed=seed, split_fractions=[0.4, 0.3, 0.3])
        store = VolumeStore(out)
        split = {r["key"]: r["split"] for r in store.manifest}
        # the two time points of patient 00000 always share a split
        assert split["brats/BraTS-GLI-00000-000"] == split["brats/BraTS-GLI-00000-001"]
        assert {"train", "val", "test"} == set(split.values())
    _, label, info = store.read("brats/BraTS-GLI-00002-000")
    np.testing.assert_array_equal(label, truth["BraTS-GLI-00002-000"]["label"])
    assert info["meta"]["label_convention"] == "brats_123"
    assert info["meta"]["patient"] == "BraTS-GLI-00002"


def test_msd_task01_channel_order_and_label_codes(tmp_path):
    for with_json in (True, False):
        src = tmp_path / f"Task01_{with_json}"
        truth = msd_brats_tree(src, dataset_json=with_json)
        out = tmp_path / f"m{with_json}.h5"
        convert(src, out)
        store = VolumeStore(out)
        assert sorted(k.split("/")[1] for k in store.keys()) == sorted(truth)   # no ._ file
        for key in store.keys():
            image, label, info = store.read(key)
            t = truth[key.split("/")[1]]
            for c, m in enumerate(MODS):
                np.testing.assert_array_equal(image[c], t["modalities"][m])
                assert image[c].max() < BRATS_BASE[m] + 40     # FLAIR-first file reordered
            # Decathlon 1 (oedema) -> 2, 2 (non-enhancing) -> 1, 3 -> 3
            np.testing.assert_array_equal(label, t["label"])
            assert info["meta"]["label_convention"] == "msd"


def test_reorientation_to_ras_flips_arrays_and_boxes(tmp_path):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    truth = brats2018_tree(tmp_path / "src", hgg=("Brats18_2013_2_1",), lgg=(), affine=lps)
    convert(tmp_path / "src", tmp_path / "r.h5", split_fractions=[1, 0, 0])
    convert(tmp_path / "src", tmp_path / "k.h5", split_fractions=[1, 0, 0],
            keep_orientation=True)
    _, lab_r, info_r = VolumeStore(tmp_path / "r.h5").read("brats/Brats18_2013_2_1")
    _, lab_k, info_k = VolumeStore(tmp_path / "k.h5").read("brats/Brats18_2013_2_1")
    src_lab = truth["Brats18_2013_2_1"]["label"]
    np.testing.assert_array_equal(lab_k, src_lab)
    np.testing.assert_array_equal(lab_r, src_lab[::-1, ::-1, :])
    assert info_r["meta"]["axcodes"] == "RAS" and info_k["meta"]["axcodes"] == "LPS"
    assert np.diag(np.asarray(info_r["meta"]["affine"]))[:3].tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------ bad inputs


def test_missing_modality_names_the_case_and_the_file(tmp_path):
    brats2018_tree(tmp_path / "src")
    (tmp_path / "src/LGG/Brats18_2013_0_1/Brats18_2013_0_1_t1ce.nii.gz").unlink()
    with pytest.raises(MedrestoreError, match=r"Brats18_2013_0_1.*Brats18_2013_0_1_t1ce\.nii\.gz"):
        convert(tmp_path / "src", tmp_path / "b.h5")
    assert not (tmp_path / "b.h5").exists()


def test_shape_mismatch_and_unknown_label_are_one_line_and_keep_nothing(tmp_path):
    import nibabel as nib

    brats2021_tree(tmp_path / "src")
    case = tmp_path / "src/BraTS2021_00003"
    nib.save(nib.Nifti1Image(np.zeros((10, 9, 7), np.int16), np.eye(4)),
             str(case / "BraTS2021_00003_flair.nii.gz"))
    with pytest.raises(MedrestoreError) as e:
        convert(tmp_path / "src", tmp_path / "b.h5")
    msg = str(e.value)
    assert "\n" not in msg and "BraTS2021_00003_flair.nii.gz" in msg and "(10, 9, 8)" in msg
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "b.h5.partial").exists()

    brats2021_tree(tmp_path / "src2")
    seg = tmp_path / "src2/BraTS2021_00002/BraTS2021_00002_seg.nii.gz"
    bad = np.asarray(nib.load(str(seg)).dataobj).copy()
    bad[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(bad, np.eye(4)), str(seg))
    with pytest.raises(MedrestoreError, match=r"BraTS2021_00002_seg\.nii\.gz.*\[7\].*1, 2, 4"):
        convert(tmp_path / "src2", tmp_path / "b.h5")


def test_nonfinite_voxels_error_or_fill(tmp_path):
    import nibabel as nib

    truth = brats2021_tree(tmp_path / "src")
    f = tmp_path / "src/BraTS2021_00000/BraTS2021_00000_t2.nii.gz"
    vol = truth["BraTS2021_00000"]["modalities"]["t2"].astype(np.float32)
    vol[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(f))
    with pytest.raises(MedrestoreError, match=r"BraTS2021_00000_t2\.nii\.gz.*non-finite"):
        convert(tmp_path / "src", tmp_path / "b.h5")
    convert(tmp_path / "src", tmp_path / "b.h5", nonfinite="fill")
    image = VolumeStore(tmp_path / "b.h5").read("brats/BraTS2021_00000")[0]
    assert image.dtype == np.float32 and np.isfinite(image).all()   # float source kept float
    assert image[2, 2, 2, 2] == np.median(vol[np.isfinite(vol)])


def test_existing_output_is_refused_and_kept(tmp_path):
    brats2021_tree(tmp_path / "src")
    out = tmp_path / "b.h5"
    out.write_bytes(b"precious")
    with pytest.raises(MedrestoreError, match="--overwrite"):
        convert(tmp_path / "src", out)
    assert out.read_bytes() == b"precious"
    convert(tmp_path / "src", out, overwrite=True)
    assert len(VolumeStore(out).manifest) == 4


def test_cli_writes_the_store(tmp_path, capsys):
    from medrestore.cli.prepare import main

    brats2021_tree(tmp_path / "src")
    rc = main(["brats", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "c.h5"),
               "--quiet", "--test-patients", "BraTS2021_00005"])
    assert rc == 0, capsys.readouterr().err
    split = {r["key"]: r["split"] for r in VolumeStore(tmp_path / "c.h5").manifest}
    assert split["brats/BraTS2021_00005"] == "test"
    assert "brats" in capsys.readouterr().out
    assert main(["brats", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "d.h5")]) == 2


# ------------------------------------------------------------------------------ samples


@pytest.fixture
def store2018(tmp_path):
    brats2018_tree(tmp_path / "src")
    out = tmp_path / "b.h5"
    convert(tmp_path / "src", out, split_fractions=[1, 0, 0])
    return out


def test_sample_contract_full_volume(store2018):
    from medrestore.datasets.volumes import VolumeDataset

    ds = VolumeDataset(store2018, "train", crop="none", divisor=4)
    assert len(ds) == 5
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (4, 12, 12, 8) and s["image"].dtype == torch.float32
        assert s["seg"].shape == (3, 12, 12, 8)
        raw = VolumeStore(store2018).read(s["key"])[1]
        box = mask_box(raw > 0)
        assert s["boxes"].tolist() == box.tolist() and s["box_labels"].tolist() == [0]
        x1 = int(box[0, 0]) - 1
        assert s["boxes"][0].tolist() == expected_box(x1)
        tc, wt, et = s["seg"]
        assert wt.sum() == 180 and tc.sum() == 48 and et.sum() == (44 if s["grade"] == 1 else 0)
        assert bool((tc <= wt).all() and (et <= tc).all())
        img = s["image"][:, :10, :9, :8]
        for c in range(4):                                       # z-score over non-zero voxels
            nz = img[c][img[c] != 0]
            assert abs(float(nz.mean())) < 1e-4 and abs(float(nz.std(unbiased=False)) - 1) < 1e-3
        assert float(s["image"][:, 10:].abs().max()) == 0            # padding stays zero
        m = s["meta"]
        assert m["crop"] is None and m["shape"] == list(BRATS_SHAPE)
        assert m["spacing"] == [1.0, 1.0, 1.0] and m["modalities"] == list(MODS)
        assert s["task"] == "brats" and s["grade"].dtype == torch.int64


def test_centre_crop_is_the_authors_and_boxes_follow_the_crop(store2018):
    from medrestore.datasets.volumes import VolumeDataset

    ds = VolumeDataset(store2018, "train", crop="centre", roi_size=(4, 4, 4))
    s = ds[0]
    assert s["meta"]["crop"] == [10 // 2 - 2, 9 // 2 - 2, 8 // 2 - 2]          # [3, 2, 2]
    raw = VolumeStore(store2018).read(s["key"])[1]
    sub = raw[3:7, 2:6, 2:6]
    assert s["boxes"].tolist() == mask_box(sub > 0).tolist()
    np.testing.assert_array_equal(s["seg"].numpy().astype(bool), regions_from_labels(sub))
    big = VolumeDataset(store2018, "train", crop="centre", roi_size=16)[0]   # larger: padded
    assert big["image"].shape == (4, 16, 16, 16) and big["meta"]["crop"] == [0, 0, 0]


def test_random_crops_and_augmentation_keep_targets_consistent(store2018):
    from medrestore.datasets.volumes import VolumeDataset

    ds = VolumeDataset(store2018, "train", crop="random", roi_size=(6, 6, 6), augment=True,
                       foreground_prob=1.0, seed=3)
    seen_aug = set()
    for _ in range(3):
        for i in range(len(ds)):
            s = ds[i]
            wt = s["seg"][1].numpy()
            assert wt.any()                                  # foreground-centred crops
            assert s["boxes"].tolist() == mask_box(wt).tolist()
            assert bool((s["seg"][2] <= s["seg"][0]).all() and (s["seg"][0] <= s["seg"][1]).all())
            a = s["meta"]["augment"]
            seen_aug.add((tuple(a["flips"]), a["rot90_xy"]))
            assert abs(a["scale"] - 1) <= 0.1 and abs(a["shift"]) <= 0.1
    assert len(seen_aug) > 3


def test_augmentation_moves_image_and_targets_together(store2018):
    """The T1ce channel is 10 × label above its base: after flips / rotations, the voxels
    that the ET channel marks must still be the brightest of the image."""
    from medrestore.datasets.volumes import VolumeDataset

    ds = VolumeDataset(store2018, "train", crop="none", divisor=1, augment=True, seed=1)
    for i in range(len(ds)):
        s = ds[i]
        if s["grade"] != 1:
            continue
        t1ce, et = s["image"][1], s["seg"][2].bool()
        wt_not_et = s["seg"][1].bool() & ~et
        assert float(t1ce[et].min()) > float(t1ce[wt_not_et].max())


def test_pre_normalise_hook_gets_physical_intensities(store2018):
    from medrestore.datasets.volumes import VolumeDataModule

    seen = []

    def hook(image, key):
        seen.append((key, float(image[0].max())))
        out = image.copy()
        out[3] = 0                                            # e.g. a lost FLAIR
        return out

    dm = VolumeDataModule(store2018, eval_crop="none", crop="none", divisor=4,
                          augment=False, val_split="train", test_split="train")
    dm.set_pre_normalise(hook)
    batch = next(iter(dm.test_dataloader()))
    assert seen and seen[0][1] > 100                          # raw T1 values (base 100 + ...)
    assert float(batch["image"][:, 3].abs().max()) == 0
    assert batch["image"].shape == (1, 4, 12, 12, 8)


def test_datamodule_batches_and_errors(store2018):
    from medrestore.datasets.volumes import VolumeDataModule, collate_volumes
    from medrestore.errors import ConfigError

    dm = VolumeDataModule(store2018, batch_size=2, crop="random", roi_size=4, augment=True)
    dm.setup("fit")
    assert len(dm.dataset("train")) == 5
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (2, 4, 4, 4, 4) and b["seg"].shape == (2, 3, 4, 4, 4)
    assert b["grade"].shape == (2,) and isinstance(b["boxes"], list) and len(b["boxes"]) == 2
    assert all(x.shape[-1] == 6 for x in b["boxes"]) and len(b["meta"]) == 2
    with pytest.raises(ConfigError, match="split 'val'"):
        dm.val_dataloader()
    with pytest.raises(ConfigError, match="data.crop"):
        VolumeDataModule(store2018, crop="middle")
    with pytest.raises(ConfigError, match="data.roi_size"):
        VolumeDataModule(store2018, roi_size=[4, 4])
    with pytest.raises(ConfigError, match="different shapes"):
        collate_volumes([{"image": torch.zeros(4, 2, 2, 2)}, {"image": torch.zeros(4, 3, 2, 2)}])
    with pytest.raises(MedrestoreError, match="no such volume store"):
        VolumeDataModule(store2018.with_name("none.h5")).setup("fit")


def test_data_configs_build_the_datamodule(tmp_path, store2018):
    from hydra.utils import instantiate

    from conftest import compose

    for name in ("brats", "brats_demo"):
        cfg = compose("train", [f"data={name}", f"data.path={store2018}",
                                "data.num_workers=0"], tmp_path)
        dm = instantiate(cfg.data)
        assert type(dm).__name__ == "VolumeDataModule" and len(dm.dataset("train")) == 5
    assert cfg.data.crop == "none" and list(cfg.data.roi_size) == [64, 64, 64]


# ------------------------------------------------------------------------------ 3-D demo


def test_demo_simulated_lesions_on_the_template(tmp_path):
    from medrestore.datasets.volumes import VolumeDataset

    s = run("brats_demo", out=tmp_path / "d.h5", cases=[4, 1, 1], size=[32, 32, 32],
            spacing=6.5, quiet=True)
    assert s["counts"]["brats"] == {"train": 4, "val": 1, "test": 1}
    assert s["grades"]["train"] == {"1": 2, "0": 2}
    store = VolumeStore(tmp_path / "d.h5")
    assert store.attrs["dataset"] == "brats_demo"
    for key in store.keys():
        image, label, info = store.read(key)
        assert image.shape == (4, 32, 32, 32) and image.dtype == np.int16
        assert "simulated lesions on a real template" in info["meta"]["source"]
        tc, wt, et = regions_from_labels(label)
        assert tc.any() and (tc <= wt).all() and (et <= tc).all() and (wt & ~tc).any()
        assert et.any() == (info["grade"] == 1)                    # grade 0: no enhancement
        brain = image[0] > 0
        assert (image[:, ~brain] == 0).all() and not (wt & ~brain).any()
        t1ce, flair = image[1].astype(float), image[3].astype(float)
        normal = brain & (label == 0)
        assert np.median(flair[label == 2]) > np.median(flair[normal])   # oedema bright
        if et.any():
            assert np.median(t1ce[et]) > 1.3 * np.median(t1ce[normal])  # enhancement
    a, b = store.read(store.keys()[0])[0], store.read(store.keys()[1])[0]
    assert not np.array_equal(a > 0, b > 0)                           # per-case anatomy
    again = run("brats_demo", out=tmp_path / "e.h5", cases=[4, 1, 1], size=[32, 32, 32],
                spacing=6.5, quiet=True)
    assert again["samples"] == 6
    np.testing.assert_array_equal(VolumeStore(tmp_path / "e.h5").read(store.keys()[2])[0],
                                  store.read(store.keys()[2])[0])    # seeded
    sample = VolumeDataset(tmp_path / "d.h5", "train", crop="none")[0]
    assert sample["image"].shape == (4, 32, 32, 32) and sample["boxes"].shape == (1, 6)
    meta = json.loads(json.dumps(sample["meta"]))                     # JSON-able meta
    assert meta["spacing"] == [6.5, 6.5, 6.5]
