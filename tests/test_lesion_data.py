"""Lesion-segmentation data (TP-Seg): the folder store, the converters on fake trees with the
real names, the embedded demo and the 2-D sample contract of ``SegDataModule``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fake_trees as ft
from medrestore.cli.prepare import main
from medrestore.errors import MedrestoreError
from medrestore.io.segstore import MANIFEST, SegStore, SegStoreWriter, read_mask, read_rgb


def prepare(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def rows_by_key(root: Path, split: str | None = None) -> dict[str, dict]:
    st = SegStore(root)
    return {r["key"]: r for s in st.splits if split in (None, s) for r in st.rows(s)}


# ------------------------------------------------------------------------------ store


def test_store_round_trip_and_a_bare_srlcl_tree(tmp_path):
    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (10, 12), dtype=np.uint16)
    m = ft.lesion_mask(rng, 10, 12)
    tasks = [{"name": "A", "modality": "RGB", "mask": "real"},
             {"name": "B", "modality": "CT", "mask": "simulated"}]
    with SegStoreWriter(tmp_path / "t", tasks) as w:
        w.add(img8, m, task="A", key="ds/x 1", split="train", meta={"k": 1})
        w.add(img16, ~m, task="B", key="ds/y", split="test")
    st = SegStore(tmp_path / "t")
    assert st.task_names == ["A", "B"] and st.splits == ["train", "test"]
    (a,), (b,) = st.rows("train"), st.rows("test")
    assert a["key"] == "ds/x 1" and a["task_index"] == 0 and a["meta"]["k"] == 1
    assert b["task"] == "B" and b["meta"]["mask"] == "simulated" and b["meta"]["modality"] == "CT"
    np.testing.assert_allclose(read_rgb(a["image"]), img8 / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_rgb(b["image"])[..., 1], img16 / 65535.0, atol=1e-6)
    assert (read_mask(a["mask"]) == m).all() and (read_mask(b["mask"]) == ~m).all()
    with pytest.raises(MedrestoreError, match="already exists"):
        SegStoreWriter(tmp_path / "t", tasks)
    (tmp_path / "other").mkdir()
    with pytest.raises(MedrestoreError, match="not a segmentation tree"):
        SegStoreWriter(tmp_path / "other", tasks, overwrite=True)

    # the public layout: train/image + train/mask/gt_task<k>, no manifest; 0/1 masks
    bare = tmp_path / "srlcl" / "train"
    ft.write_png(bare / "image" / "p1.png", img8)
    ft.write_png(bare / "image" / "p2.jpg", img8)
    ft.write_png(bare / "mask" / "gt_task0" / "p1.png", m.astype(np.uint8))     # labels 0/1
    ft.write_mask_png(bare / "mask" / "gt_task1" / "p1.png", m)
    ft.write_mask_png(bare / "mask" / "gt_task1" / "p2.png", ~m)
    st = SegStore(tmp_path / "srlcl", task_names=["WA", "BT"])
    rows = st.rows("train")
    assert [(r["task"], r["name"]) for r in rows] == [("WA", "p1"), ("BT", "p1"), ("BT", "p2")]
    assert (read_mask(rows[0]["mask"]) == m).all()
    assert SegStore(tmp_path / "srlcl").rows("train")[0]["task"] == "task0"
    ft.write_mask_png(bare / "mask" / "gt_task1" / "orphan.png", m)
    with pytest.raises(MedrestoreError, match="orphan.png"):
        st.rows("train")


# ------------------------------------------------------------------------------ converters


def test_isic2018_official_splits_and_mask_names(tmp_path):
    truth = ft.isic2018_tree(tmp_path / "src", n_train=6, n_val=2, n_test=3)
    assert prepare("isic2018", "--src", tmp_path / "src", "--out", tmp_path / "o") == 0
    rows = rows_by_key(tmp_path / "o")
    assert len(rows) == 11
    for part, split in (("Training", "train"), ("Validation", "val"), ("Test", "test")):
        for uid, m in truth[part].items():
            r = rows[f"isic2018/{uid}"]
            assert r["meta"]["split"] == split and r["task"] == "SL"
            assert (read_mask(r["mask"]) == m).all()
    man = json.loads((tmp_path / "o" / MANIFEST).read_text())
    assert man["tasks"][0] == {"name": "SL", "modality": "dermoscopy", "mask": "real",
                               "dataset": "isic2018"}
    # training only: val / test carved by image, seeded
    ft.isic2018_tree(tmp_path / "src2", n_train=10, n_val=0)
    assert prepare("isic2018", "--src", tmp_path / "src2", "--out", tmp_path / "o2",
                   "--split-fractions", 0.6, 0.2, 0.2, "--task", "skin") == 0
    st = SegStore(tmp_path / "o2")
    assert {s: len(st.rows(s)) for s in st.splits} == {"train": 6, "val": 2, "test": 2}
    assert st.task_names == ["skin"]


def test_busi_ors_extra_masks_and_skips_normal(tmp_path, capsys):
    truth = ft.busi_tree(tmp_path / "src")
    assert prepare("busi", "--src", tmp_path / "src", "--out", tmp_path / "o") == 0
    rows = {Path(r["meta"]["source"]["image"]).stem: r for r in rows_by_key(tmp_path / "o").values()}
    assert set(rows) == {"benign (1)", "benign (2)", "benign (3)", "malignant (1)", "malignant (2)"}
    r = rows["benign (2)"]
    assert len(r["meta"]["source"]["masks"]) == 2 and r["meta"]["class"] == "benign"
    assert (read_mask(r["mask"]) == truth["benign (2)"]).all()
    assert prepare("busi", "--src", tmp_path / "src", "--out", tmp_path / "o2",
                   "--include-normal") == 0
    assert len(rows_by_key(tmp_path / "o2")) == 6
    # an image without its _mask file: one line naming it; nothing written
    (tmp_path / "src" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2)_mask.png").unlink()
    capsys.readouterr()
    assert prepare("busi", "--src", tmp_path / "src", "--out", tmp_path / "o3") == 2
    err = capsys.readouterr().err.strip()
    assert "malignant (2).png" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o3").exists()


def test_kvasir_jpeg_masks_polyp_test_sets_tn3k_ebhi(tmp_path):
    truth = ft.kvasir_seg_tree(tmp_path / "kv")
    assert prepare("kvasir_seg", "--src", tmp_path / "kv", "--out", tmp_path / "o_kv") == 0
    rows = rows_by_key(tmp_path / "o_kv")
    assert len(rows) == 5
    for uid, m in truth.items():                      # JPEG noise gone after thresholding
        assert (read_mask(rows[f"kvasir_seg/{uid}"]["mask"]) == m).mean() > 0.97

    ft.polyp_tree(tmp_path / "polyp")
    assert prepare("polyp", "--src", tmp_path / "polyp", "--out", tmp_path / "o_p",
                   "--split-fractions", 0.8, 0.2, 0.0) == 0
    rows = rows_by_key(tmp_path / "o_p")
    test = [r for r in rows.values() if r["meta"]["split"] == "test"]
    assert {r["meta"]["subset"] for r in test} == {"CVC-300", "ETIS-LaribPolypDB"} and len(test) == 4
    assert {r["meta"]["subset"] for r in rows.values() if r["meta"]["split"] != "test"} == {"TrainDataset"}

    ft.tn3k_tree(tmp_path / "tn")
    assert prepare("tn3k", "--src", tmp_path / "tn", "--out", tmp_path / "o_tn") == 0
    rows = rows_by_key(tmp_path / "o_tn")
    assert sorted(k for k, r in rows.items() if r["meta"]["split"] == "test") == \
        ["tn3k/test/0000", "tn3k/test/0001"]
    assert all(r["task"] == "TN" for r in rows.values())

    ft.ebhi_seg_tree(tmp_path / "eb")
    assert prepare("ebhi_seg", "--src", tmp_path / "eb", "--out", tmp_path / "o_eb") == 0
    rows = rows_by_key(tmp_path / "o_eb")
    assert len(rows) == 4 and {r["meta"]["class"] for r in rows.values()} == {"Adenocarcinoma"}


def test_figshare_mat_v73_split_by_patient(tmp_path):
    truth = ft.figshare_tree(tmp_path / "src")
    assert prepare("figshare_brain_tumour", "--src", tmp_path / "src", "--out", tmp_path / "o",
                   "--split-fractions", 0.6, 0.2, 0.2) == 0
    rows = rows_by_key(tmp_path / "o")
    assert len(rows) == 10
    split_of: dict[str, set] = {}
    for stem, t in truth.items():
        r = rows[f"figshare_brain_tumour/{stem}"]
        assert r["meta"]["patient"] == t["pid"] and r["meta"]["label"] == t["label"]
        assert (read_mask(r["mask"]) == t["mask"]).all()          # not transposed
        img = read_rgb(r["image"])[..., 0]
        lo, hi = t["image"].min(), t["image"].max()
        np.testing.assert_allclose(img, (t["image"] - lo) / (hi - lo), atol=1e-4)
        split_of.setdefault(t["pid"], set()).add(r["meta"]["split"])
    assert all(len(s) == 1 for s in split_of.values())
    # a .mat that is not v7.3 / has no cjdata: one line naming it
    (tmp_path / "src" / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(MedrestoreError, match="bad.mat"):
        from medrestore.prepare import run
        run("figshare_brain_tumour", src=tmp_path / "src", out=tmp_path / "o2", quiet=True)


def test_covid_ct_lesion_slices_window_and_case_split(tmp_path):
    truth = ft.covid_ct_tree(tmp_path / "src")
    assert prepare("covid_ct", "--src", tmp_path / "src", "--out", tmp_path / "o",
                   "--split-fractions", 0.5, 0.25, 0.25) == 0
    rows = rows_by_key(tmp_path / "o")
    assert len(rows) == 8                                   # 2 infected slices × 4 cases
    for c, t in truth.items():
        r = rows[f"covid_ct/{c}/001"]
        assert (read_mask(r["mask"]) == np.rot90(t["mask"][:, :, 1] > 0)).all()
        img = read_rgb(r["image"])[..., 0]
        if "corona" in c:
            want = np.clip((np.rot90(t["volume"][:, :, 1]) + 1250.0) / 1500.0, 0, 1)
            assert r["meta"]["intensity"].startswith("HU window")
        else:
            want = np.rot90(t["volume"][:, :, 1]) / 255.0
        np.testing.assert_allclose(img, want, atol=1e-4)
    assert len({r["meta"]["split"] for r in rows.values() if r["meta"]["case"] == c}) == 1
    assert prepare("covid_ct", "--src", tmp_path / "src", "--out", tmp_path / "o2",
                   "--slices", "all") == 0
    assert len(rows_by_key(tmp_path / "o2")) == 16


def test_generic_folders_and_tpseg_layout_converter(tmp_path):
    rng = np.random.default_rng(1)
    for s, n in (("train", 3), ("test", 1)):
        for i in range(n):
            ft.write_png(tmp_path / "g" / s / "images" / f"{s}{i}.png", ft.rgb(rng, 8, 8))
            ft.write_mask_png(tmp_path / "g" / s / "masks" / f"{s}{i}_mask.png", ft.lesion_mask(rng, 8, 8))
    assert prepare("seg_folder", "--src", tmp_path / "g", "--out", tmp_path / "o", "--task", "X",
                   "--modality", "OCT", "--mask-suffix", "_mask") == 0
    st = SegStore(tmp_path / "o")
    assert (len(st.rows("train")), len(st.rows("test"))) == (3, 1)
    assert st.rows("test")[0]["meta"]["modality"] == "OCT"
    # an unpaired image names itself
    ft.write_png(tmp_path / "g" / "train" / "images" / "lonely.png", ft.rgb(rng, 8, 8))
    with pytest.raises(MedrestoreError, match="lonely.png"):
        from medrestore.prepare import run
        run("seg_folder", src=tmp_path / "g", out=tmp_path / "o3", task="X", mask_suffix="_mask",
            quiet=True)
    # a TP-Seg tree (one split folder, two tasks) -> a tree with a manifest
    bare = tmp_path / "tp"
    for i in range(5):
        ft.write_png(bare / "image" / f"im{i}.png", ft.rgb(rng, 8, 8))
        ft.write_mask_png(bare / "gt_task1" / f"im{i}.png", ft.lesion_mask(rng, 8, 8))
    ft.write_mask_png(bare / "gt_task0" / "im0.png", ft.lesion_mask(rng, 8, 8))
    assert prepare("tpseg_folder", "--src", bare, "--out", tmp_path / "o2", "--task-names",
                   "WA", "BT", "--split-fractions", 0.6, 0.2, 0.2) == 0
    st = SegStore(tmp_path / "o2")
    rows = [r for s in st.splits for r in st.rows(s)]
    assert sorted(r["task"] for r in rows) == ["BT"] * 5 + ["WA"]
    im0 = [r for r in rows if r["name"] == "tpseg_folder__im0"]
    assert len({r["meta"]["split"] for r in im0}) == 1 and len(im0) == 2


# ------------------------------------------------------------------------------ demo


def test_tpseg_demo_small_build_is_seeded_and_split_by_region(tmp_path):
    from medrestore.prepare import run

    kw = dict(size=24, n_train=4, n_val=2, n_test=3, tasks=["cloud", "ct_lesion", "ihc_nuclei"],
              quiet=True)
    s = run("tpseg_demo", out=tmp_path / "a", **kw)
    assert s["counts"]["ct_lesion"] == {"train": 4, "val": 2, "test": 3}
    run("tpseg_demo", out=tmp_path / "b", **kw)
    ra, rb = rows_by_key(tmp_path / "a"), rows_by_key(tmp_path / "b")
    for k in ra:
        assert (read_rgb(ra[k]["image"]) == read_rgb(rb[k]["image"])).all()
        assert (read_mask(ra[k]["mask"]) == read_mask(rb[k]["mask"])).all()
    man = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert {t["name"]: t["mask"] for t in man["tasks"]} == \
        {"cloud": "real", "ct_lesion": "simulated", "ihc_nuclei": "derived"}
    # crops lie inside their split's rectangle of the source image
    from medrestore.prepare.lesions_demo import CLOUD_REGIONS, CT_REGIONS, IHC_REGIONS

    regions = {"cloud": CLOUD_REGIONS, "ihc_nuclei": IHC_REGIONS, "ct_lesion": CT_REGIONS}
    for r in ra.values():
        m = r["meta"]
        shape = {"cloud": (603, 627), "ihc_nuclei": (512, 512)}.get(
            r["task"], (128, 128) if "CT_small" in m["source"] else (512, 512))
        fr = regions[r["task"]][m["split"]]
        top, left, side = m["crop"]
        assert round(fr[0] * shape[0]) <= top and top + side <= round(fr[1] * shape[0])
        assert round(fr[2] * shape[1]) <= left and left + side <= round(fr[3] * shape[1])


def test_mni_slabs_are_apart():
    from medrestore.prepare.lesions_demo import MNI_MIN_GAP, MNI_SLABS, _check_slabs

    _check_slabs()
    zs = {s: set(v) for s, v in MNI_SLABS.items()}
    for a in zs:
        for b in zs:
            if a != b:
                assert min(abs(x - y) for x in zs[a] for y in zs[b]) > MNI_MIN_GAP


@pytest.mark.slow
def test_tpseg_demo_full_build_masks_are_non_trivial(tmp_path):
    from medrestore.prepare import run

    run("tpseg_demo", out=tmp_path / "d", size=48, n_train=10, n_val=4, n_test=12, quiet=True)
    st = SegStore(tmp_path / "d")
    assert st.task_names == ["cloud", "ct_lesion", "mr_tumour", "pet_hot", "ihc_nuclei"]
    for t in st.task_names:
        fg = [read_mask(r["mask"]).mean() for r in st.rows("test") if r["task"] == t]
        assert len(fg) == 12 and 0.005 < np.mean(fg) < 0.6, (t, np.mean(fg))
        assert sum(f > 0 for f in fg) >= 6


# ------------------------------------------------------------------------------ DataModule


@pytest.fixture()
def tree(tmp_path):
    rng = np.random.default_rng(3)
    tasks = [{"name": "A", "modality": "CT", "mask": "simulated"},
             {"name": "B", "modality": "RGB", "mask": "real"}]
    with SegStoreWriter(tmp_path / "t", tasks) as w:
        for split, n in (("train", (6, 2)), ("val", (2, 1)), ("test", (1, 1))):
            for t, k in zip("AB", n):
                for i in range(k):
                    img = rng.integers(0, 65536, (20, 30), dtype=np.uint16) if t == "A" \
                        else rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                    m = np.zeros((20, 30), bool)
                    m[:, :15] = True                           # left half: flips are visible
                    w.add(img, m, task=t, key=f"{t}/{split}/{i}", split=split)
    return tmp_path / "t"


def test_sample_contract_resize_normalise_and_task_ids(tree):
    from medrestore.datasets.segmentation import IMAGENET_MEAN, IMAGENET_STD, SegDataModule, collate_seg

    dm = SegDataModule(tree, tasks=["B", "A"], image_size=16, batch_size=4, flips=False)
    assert dm.tasks == ["B", "A"] and dm.num_tasks == 2
    ds = dm.dataset("val")
    s = next(ds[i] for i in range(len(ds)) if ds.rows[i]["task"] == "A")
    assert s["image"].shape == (3, 16, 16) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, 16, 16) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
    assert s["task_id"].dtype == torch.int64 and int(s["task_id"]) == 1     # index in dm.tasks
    assert s["meta"]["shape"] == [20, 30] and s["meta"]["modality"] == "CT"
    assert s["meta"]["split"] == "val" and s["meta"]["mask"] == "simulated"
    # grey replicated, then ImageNet-normalised per channel
    raw = s["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    assert s["mask"][0, :, :7].all() and not s["mask"][0, :, 9:].any()
    b = collate_seg([ds[0], ds[1]])
    assert b["image"].shape == (2, 3, 16, 16) and b["task_id"].shape == (2,)
    assert isinstance(b["key"], list) and isinstance(b["meta"], list)
    # pre_normalise sees [0, 1] H×W×3 at the stored size, with key and task
    seen = []

    def pre(img, key, task):
        seen.append((img.shape, float(img.min()) >= 0, key, task))
        return np.zeros_like(img)

    dm.set_pre_normalise(pre)
    s = dm.dataset("val")[0]
    assert seen[-1][:2] == ((20, 30, 3), True) and seen[-1][2] == s["key"]
    assert torch.allclose(s["image"][0], torch.full((16, 16), -IMAGENET_MEAN[0] / IMAGENET_STD[0]))
    assert len(SegDataModule(tree, tasks=["A"], image_size=16).dataset("train")) == 6
    with pytest.raises(MedrestoreError, match=r"no training samples for task\(s\) \['C'\]"):
        SegDataModule(tree, tasks=["A", "C"], image_size=16).dataset("train")


def test_task_balanced_batches_flips_and_resume(tree):
    from medrestore.datasets.segmentation import SegDataModule

    dm = SegDataModule(tree, image_size=16, batch_size=4, seed=5)
    assert dm.tasks == ["A", "B"]                               # manifest order
    batches = list(dm.train_dataloader())
    assert len(batches) == 2                                    # 8 training rows / 4
    for b in batches:                                           # 6 A and 2 B rows, yet 2 + 2
        assert sorted(b["task_id"].tolist()) == [0, 0, 1, 1]
    left = [bool(m[0, :, 0].all()) for b in batches for m in b["mask"]]
    assert not all(left)                                        # some horizontal flips happened
    # resuming after one batch yields exactly the rest of the epoch
    dm2 = SegDataModule(tree, image_size=16, batch_size=4, seed=5)
    dm2.load_state_dict({"train_loader": {"epoch": 0, "batches": 1}})
    rest = list(dm2.train_dataloader())
    assert len(rest) == 1 and rest[0]["key"] == batches[1]["key"]
    assert torch.equal(rest[0]["image"], batches[1]["image"])
    # eval has no flips and keeps every image once
    keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert sorted(keys) == sorted(["A/val/0", "A/val/1", "B/val/0"])
    with pytest.raises(MedrestoreError, match="image_size"):
        SegDataModule(tree, image_size=0)


def test_paper_8task_config_order_size_and_one_image_per_task(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose

    order = ["WA", "BT", "ADC", "TN", "CP", "LI", "BL", "SL"]
    rng = np.random.default_rng(0)
    for t in order:
        with SegStoreWriter(tmp_path / "tpseg" / t, [{"name": t, "modality": "x", "mask": "real"}]) as w:
            for split, n in (("train", 2), ("val", 1), ("test", 1)):
                for i in range(n):
                    w.add(ft.rgb(rng, 12, 12), ft.lesion_mask(rng, 12, 12), task=t,
                          key=f"{t}/{split}/{i}", split=split)
    cfg = compose("train", ["data=tpseg_8task", f"paths.data_dir={tmp_path}", "data.num_workers=0",
                            "data.pin_memory=false"], tmp_path)
    assert list(cfg.data.tasks) == order and cfg.data.image_size == 512
    assert cfg.data.batch_size == 8 and cfg.data.flips is True
    dm = instantiate(cfg.data, image_size=32)
    b = next(iter(dm.train_dataloader()))
    assert sorted(b["task_id"].tolist()) == list(range(8))
    assert [order[i] for i in b["task_id"].tolist()] == b["task"]
    cfg = compose("train", ["data=tpseg_demo"], tmp_path)
    assert cfg.data._target_ == "medrestore.datasets.segmentation.SegDataModule"
