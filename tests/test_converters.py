"""Dataset converters (``medrestore-prepare NAME``) on tiny fake trees with the real layouts.

Every converter runs in-process through :func:`medrestore.cli.prepare.main`; the shard is read
back with ``read_manifest`` / ``read_pair`` and compared with the pixels the fake tree wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import fake_trees as ft
from medrestore.cli.prepare import main


def prepare(*argv: Any) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def load(path: Path) -> dict[str, dict[str, Any]]:
    """``{key: {"lq", "gt", "attrs", "row"}}`` of a whole shard."""
    import h5py

    from medrestore.io.hdf5 import read_manifest, read_pair

    rows = read_manifest(path)
    out = {}
    with h5py.File(path, "r") as f:
        for r in rows:
            lq, gt, attrs = read_pair(f, r["id"])
            out[r["key"]] = {"lq": lq, "gt": gt, "attrs": attrs, "row": r}
    return out


def split_counts(shard: dict[str, dict[str, Any]], task: str | None = None) -> dict[str, int]:
    c = Counter(s["row"]["split"] for s in shard.values() if task in (None, s["row"]["task"]))
    return {k: c.get(k, 0) for k in ("train", "val", "test")}


def assert_disjoint(shard: dict[str, dict[str, Any]], unit_of: Callable[[str], str]) -> None:
    """No unit (patient, subject, sequence, image) has samples in two splits."""
    splits: dict[str, set[str]] = {}
    for key, s in shard.items():
        splits.setdefault(unit_of(key), set()).add(s["row"]["split"])
    mixed = {u: sorted(v) for u, v in splits.items() if len(v) > 1}
    assert not mixed, f"units in several splits: {mixed}"


def assert_physical(s: dict[str, Any], task: str, window: tuple[float, float], unit: str) -> None:
    assert s["row"]["task"] == task
    assert s["attrs"]["storage"] == "physical" and s["row"]["storage"] == "physical"
    norm = s["attrs"]["meta"]["normalisation"]
    assert (norm["low"], norm["high"], norm["unit"]) == (window[0], window[1], unit)
    assert s["attrs"]["meta"]["channels"] == s["gt"].shape[0]


def refuses_overwrite(argv: list[Any], out: Path, capsys) -> None:
    """A second run without --overwrite fails (exit 2, one line naming the file) and leaves
    the shard untouched; with --overwrite it succeeds."""
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert prepare(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "--overwrite" in err
    assert out.stat().st_mtime_ns == before
    assert prepare(*argv, "--overwrite") == 0


def fails_with(argv: list[Any], capsys, *needles: str) -> str:
    capsys.readouterr()
    assert prepare(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


# ============================================================================= medical


def test_aapm_mayo_pairs_by_position_and_splits_by_patient(tmp_path, capsys):
    truth = ft.aapm_tree(tmp_path / "mayo")
    out = tmp_path / "ct.h5"
    argv = ["aapm_mayo", "--src", tmp_path / "mayo", "--out", out]
    assert prepare(*argv) == 0
    printed = capsys.readouterr().out
    assert "ct_denoise" in printed and "12 samples" in printed
    shard = load(out)
    assert split_counts(shard) == {"train": 6, "val": 3, "test": 3}
    by_patient = {k.split("/")[1]: s["row"]["split"] for k, s in shard.items()}
    assert by_patient["L506"] == "test" and by_patient["L333"] == "val"
    assert_disjoint(shard, lambda k: k.split("/")[1])
    for pid, t in truth.items():
        for i, z in enumerate(t["z"]):
            s = shard[f"aapm_mayo/{pid}/full_3mm/{i:04d}"]
            assert_physical(s, "ct_denoise", (-1024.0, 3072.0), "HU")
            assert s["gt"].dtype == np.int16 and s["lq"].dtype == np.int16
            assert s["gt"].shape == (1, 16, 16) and s["attrs"]["scale"] == 1
            # quarter-dose files are numbered backwards: only position pairing gets this right
            np.testing.assert_array_equal(s["gt"][0], t["full"][i])
            np.testing.assert_array_equal(s["lq"][0], t["quarter"][i])
            meta = s["attrs"]["meta"]
            assert meta["spacing"] == [0.7, 0.7] and meta["position_z"] == z
            assert meta["patient"] == pid and meta["slice_thickness"] == 3.0
            assert meta["source"]["gt"].startswith(f"{pid}/full_3mm/{pid}_FD_3_1.CT.0004.")
            assert meta["source"]["lq"].startswith(f"{pid}/quarter_3mm/{pid}_QD_3_1.CT.0004.")
    refuses_overwrite(argv, out, capsys)


def test_aapm_mayo_counts_limit_and_errors(tmp_path, capsys):
    ft.aapm_tree(tmp_path / "mayo", patients=("L067", "L096", "L143", "L192"), n_slices=2)
    out = tmp_path / "ct.h5"
    assert prepare("aapm_mayo", "--src", tmp_path / "mayo", "--out", out, "--val-patients", "1",
                   "--test-patients", "1") == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 4, "val": 2, "test": 2}
    assert_disjoint(shard, lambda k: k.split("/")[1])
    # --limit keeps the first unit of each split
    assert prepare("aapm_mayo", "--src", tmp_path / "mayo", "--out", tmp_path / "lim.h5",
                   "--val-patients", "L096", "--test-patients", "L143", "--limit", "1") == 0
    assert split_counts(load(tmp_path / "lim.h5")) == {"train": 2, "val": 2, "test": 2}
    # the default validation/test patients are not in this tree: the error names them
    fails_with(["aapm_mayo", "--src", tmp_path / "mayo", "--out", tmp_path / "x.h5"], capsys,
               "--val-patients", "L333")
    # a missing full-dose slice: the error names the patient and both counts
    victim = sorted((tmp_path / "mayo" / "L096" / "full_3mm").iterdir())[0]
    victim.unlink()
    fails_with(["aapm_mayo", "--src", tmp_path / "mayo", "--out", tmp_path / "y.h5",
                "--val-patients", "L067", "--test-patients", "L143"], capsys,
               "L096", "quarter_3mm has 2 slices", "full_3mm has 1")
    assert not (tmp_path / "y.h5").exists()
    fails_with(["aapm_mayo", "--src", tmp_path / "mayo", "--out", tmp_path / "z.h5",
                "--thickness", "1mm"], capsys, "quarter_1mm")


def test_aapm_mayo_dose_first_layout_1mm(tmp_path, capsys):
    truth = ft.aapm_tree(tmp_path / "m", patients=("L067", "L109", "L286"), n_slices=2,
                         thickness="1mm", dose_first=True)
    out = tmp_path / "ct1.h5"
    assert prepare("aapm_mayo", "--src", tmp_path / "m", "--out", out, "--thickness", "1mm",
                   "--val-patients", "L109", "--test-patients", "L286", "--float32") == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 2, "val": 2, "test": 2}
    s = shard["aapm_mayo/L109/full_1mm/0001"]
    assert s["gt"].dtype == np.float32 and s["attrs"]["meta"]["slice_spacing"] == 1.0
    np.testing.assert_array_equal(s["gt"][0], truth["L109"]["full"][1])
    np.testing.assert_array_equal(s["lq"][0], truth["L109"]["quarter"][1])
    import shutil

    shutil.rmtree(tmp_path / "m" / "full_1mm" / "L286")
    fails_with(["aapm_mayo", "--src", tmp_path / "m", "--out", tmp_path / "e.h5", "--thickness",
                "1mm"], capsys, "L286", "full_1mm")


def test_ixi_central_slices_kspace_lq_and_subject_split(tmp_path, capsys):
    truth = ft.ixi_tree(tmp_path / "ixi")
    out = tmp_path / "mri.h5"
    argv = ["ixi", "--src", tmp_path / "ixi", "--out", out, "--slices", "5"]
    assert prepare(*argv) == 0
    shard = load(out)
    # 6 subjects in TAT's 405/59/114 proportions -> 4/1/1 subjects, 5 slices each
    assert split_counts(shard) == {"train": 20, "val": 5, "test": 5}
    assert_disjoint(shard, lambda k: k.split("/")[1])
    for sid, vol in truth.items():
        zs = sorted(int(k.rsplit("/z", 1)[1]) for k in shard if k.split("/")[1] == sid)
        assert zs == [2, 3, 4, 5, 6]                      # central 5 of 9
        for z in zs:
            s = shard[f"ixi/{sid}/T2/z{z:03d}"]
            assert_physical(s, "mri_sr", (0.0, 4095.0), "a.u.")
            assert s["gt"].dtype == np.int16 and s["lq"].dtype == np.float32
            np.testing.assert_array_equal(s["gt"][0], vol[z])
            assert s["lq"].shape == s["gt"].shape == (1, 10, 12)
            assert not np.allclose(s["lq"], s["gt"])
            meta = s["attrs"]["meta"]
            assert meta["degradation"]["simulator"] == "mri_kspace"
            assert meta["spacing"] == pytest.approx([0.9375, 0.9375])
    # same seed, same LQ; explicit subject lists
    out2 = tmp_path / "mri2.h5"
    assert prepare("ixi", "--src", tmp_path / "ixi", "--out", out2, "--slices", "5",
                   "--val-subjects", "IXI002", "--test-subjects", "IXI003,IXI004") == 0
    shard2 = load(out2)
    assert split_counts(shard2) == {"train": 15, "val": 5, "test": 10}
    k = "ixi/IXI005/T2/z004"
    np.testing.assert_array_equal(shard2[k]["lq"], shard[k]["lq"])
    fails_with(["ixi", "--src", tmp_path / "ixi", "--out", tmp_path / "e.h5",
                "--test-subjects", "IXI999"], capsys, "--test-subjects", "IXI999")
    fails_with(["ixi", "--src", tmp_path / "ixi", "--out", tmp_path / "e.h5", "--modality", "PD"],
               capsys, "IXI-PD")
    refuses_overwrite(argv, out, capsys)


def test_pet_nifti_and_bqml_dicom_to_suv(tmp_path, capsys):
    truth = ft.pet_tree(tmp_path / "pet")
    out = tmp_path / "pet.h5"
    argv = ["pet", "--src", tmp_path / "pet", "--out", out]
    assert prepare(*argv) == 0
    shard = load(out)
    # 6 patients, coronal slices j = 1..4 (j = 0 is air and dropped)
    assert len(shard) == 6 * 4
    assert split_counts(shard) == {"train": 16, "val": 4, "test": 4}
    assert_disjoint(shard, lambda k: k.split("/")[1])
    for pid, t in truth.items():
        assert f"pet/{pid}/coronal/000" not in shard
        for j in range(1, 5):
            s = shard[f"pet/{pid}/coronal/{j:03d}"]
            assert_physical(s, "pet_synthesis", (0.0, 20.0), "SUV")
            assert s["gt"].dtype == np.float32 and s["gt"].shape == (1, 4, 6)
            np.testing.assert_allclose(s["gt"][0], t["gt"][:, j, :], rtol=1e-5)
            np.testing.assert_allclose(s["lq"][0], t["lq"][:, j, :], rtol=1e-5)
    assert "BQML" in shard["pet/P006/coronal/001"]["attrs"]["meta"]["suv"]["gt"]
    # axial slicing of the NIfTI patients: slice k is the (i, j) plane
    out2 = tmp_path / "axial.h5"
    assert prepare("pet", "--src", tmp_path / "pet", "--out", out2, "--slice-axis", "axial",
                   "--test-patients", "P006", "--val-patients", "P001") == 0
    s = load(out2)["pet/P002/axial/001"]
    np.testing.assert_array_equal(s["gt"][0], truth["P002"]["gt"][1])
    refuses_overwrite(argv, out, capsys)


def test_pet_errors_name_the_missing_tag_or_volume(tmp_path, capsys):
    root = tmp_path / "pet"
    ft.pet_tree(root, nifti_patients=("P001", "P002", "P003"), dicom_patient=None)
    raw = np.full((2, 3, 3), 500, dtype=np.int16)
    ft.pet_dicom_series(root / "P009" / "fd", raw, patient="P009", drop=("PatientWeight",))
    ft.pet_dicom_series(root / "P009" / "ld", raw, patient="P009")
    fails_with(["pet", "--src", root, "--out", tmp_path / "x.h5"], capsys,
               "P009", "PatientWeight (0010,1030)")
    import shutil

    shutil.rmtree(root / "P009")
    (root / "P002" / "fd.nii.gz").unlink()
    fails_with(["pet", "--src", root, "--out", tmp_path / "x.h5"], capsys,
               "patient P002", "full-dose")


# ============================================================================= natural


def test_div2k_official_and_generated_lr(tmp_path, capsys):
    from medrestore.degradations.resize import imresize

    truth = ft.div2k_tree(tmp_path / "div2k")
    out = tmp_path / "sr.h5"
    argv = ["div2k", "--src", tmp_path / "div2k", "--out", out, "--val-count", "1"]
    assert prepare(*argv) == 0
    assert "4 official, 3 generated with imresize" in capsys.readouterr().out
    shard = load(out)
    assert split_counts(shard) == {"train": 4, "val": 1, "test": 2}
    assert {k for k, s in shard.items() if s["row"]["split"] == "test"} == {"div2k/0801",
                                                                          "div2k/0802"}
    for stem, t in truth.items():
        s = shard[f"div2k/{stem}"]
        assert_physical(s, "natural_sr", (0.0, 255.0), "8-bit")
        assert s["attrs"]["scale"] == 4 and s["gt"].dtype == np.uint8 == s["lq"].dtype
        hr = ft.chw(t["hr"])
        h, w = hr.shape[1] // 4 * 4, hr.shape[2] // 4 * 4
        np.testing.assert_array_equal(s["gt"], hr[:, :h, :w])
        assert s["lq"].shape == (3, h // 4, w // 4)
        if t["lr"] is not None:
            np.testing.assert_array_equal(s["lq"], ft.chw(t["lr"])[:, :h // 4, :w // 4])
            assert s["attrs"]["meta"]["lr_source"] == "official"
        else:
            np.testing.assert_array_equal(s["lq"], imresize(hr, output_shape=(h // 4, w // 4),
                                                            layout="chw"))
            assert s["attrs"]["meta"]["lr_source"] == "imresize"
    assert shard["div2k/0002"]["attrs"]["meta"]["hr_crop"] == [24, 20]
    fails_with(["div2k", "--src", tmp_path / "div2k", "--out", tmp_path / "e.h5", "--lr",
                "official"], capsys, "0003.png")
    refuses_overwrite(argv, out, capsys)


def test_df2k_adds_flickr2k(tmp_path, capsys):
    ft.div2k_tree(tmp_path / "df2k", flickr=True)
    out = tmp_path / "df2k.h5"
    assert prepare("df2k", "--src", tmp_path / "df2k", "--out", out, "--val-count", "2") == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 5, "val": 2, "test": 2}
    assert {"flickr2k/000001", "flickr2k/000002"} <= set(shard)
    assert shard["flickr2k/000001"]["attrs"]["meta"]["lr_source"] == "official"
    import shutil

    shutil.rmtree(tmp_path / "df2k" / "Flickr2K")
    fails_with(["df2k", "--src", tmp_path / "df2k", "--out", tmp_path / "e.h5"], capsys,
               "Flickr2K_HR")


@pytest.mark.parametrize("variant", ["prenet", "jorder"])
def test_rain100l_variants(tmp_path, capsys, variant):
    truth = ft.rain100l_tree(tmp_path / "rain", variant=variant)
    out = tmp_path / "rain.h5"
    argv = ["rain100l", "--src", tmp_path / "rain", "--out", out, "--val-count", "2"]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 8, "val": 2, "test": 4}
    for split, pairs in truth.items():
        for ident, (rainy, clean) in pairs.items():
            s = shard[f"rain100l/{split}/{ident}"]
            assert_physical(s, "derain", (0.0, 255.0), "8-bit")
            assert (s["row"]["split"] == "test") == (split == "test")
            np.testing.assert_array_equal(s["lq"], ft.chw(rainy))
            np.testing.assert_array_equal(s["gt"], ft.chw(clean))
    if variant == "prenet":
        refuses_overwrite(argv, out, capsys)
        (tmp_path / "rain" / "Rain100L" / "norain-003.png").unlink()
        fails_with(["rain100l", "--src", tmp_path / "rain", "--out", tmp_path / "e.h5"], capsys,
                   "unmatched", "rain-003.png")


def test_gopro_split_by_sequence(tmp_path, capsys):
    truth = ft.gopro_tree(tmp_path / "gopro")
    out = tmp_path / "gopro.h5"
    argv = ["gopro", "--src", tmp_path / "gopro", "--out", out, "--val-sequences", "1"]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 8, "val": 2, "test": 4}
    assert_disjoint(shard, lambda k: k.split("/")[1])
    test_seqs = {k.split("/")[1] for k, s in shard.items() if s["row"]["split"] == "test"}
    assert test_seqs == set(ft.GOPRO_TEST)
    for seq, frames in truth.items():
        for frame, imgs in frames.items():
            s = shard[f"gopro/{seq}/{frame}"]
            assert_physical(s, "deblur", (0.0, 255.0), "8-bit")
            np.testing.assert_array_equal(s["lq"], ft.chw(imgs["blur"]))
            np.testing.assert_array_equal(s["gt"], ft.chw(imgs["sharp"]))
    out2 = tmp_path / "gamma.h5"
    assert prepare("gopro", "--src", tmp_path / "gopro", "--out", out2, "--blur-gamma") == 0
    s = load(out2)["gopro/GOPR0384_11_00/000047"]
    np.testing.assert_array_equal(s["lq"], ft.chw(truth["GOPR0384_11_00"]["000047"]["blur_gamma"]))
    refuses_overwrite(argv, out, capsys)
    import shutil

    shutil.rmtree(tmp_path / "gopro" / "GOPRO_Large" / "test" / "GOPR0396_11_00" / "sharp")
    fails_with(["gopro", "--src", tmp_path / "gopro", "--out", tmp_path / "e.h5"], capsys,
               "GOPR0396_11_00", "sharp")


# ============================================================================= remote sensing


def test_ucmerced_per_class_split_crop_and_bicubic_lr(tmp_path, capsys):
    from medrestore.degradations.resize import imresize

    truth = ft.ucmerced_tree(tmp_path / "ucm")
    out = tmp_path / "ucm.h5"
    argv = ["ucmerced", "--src", tmp_path / "ucm", "--out", out]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 24, "val": 3, "test": 3}
    for cls in ft.UCM_CLASSES:                   # 8/1/1 inside every class
        per = Counter(s["row"]["split"] for k, s in shard.items() if k[9:].startswith(cls))
        assert per == Counter({"train": 8, "val": 1, "test": 1})
    for stem, img in truth.items():
        s = shard[f"ucmerced/{stem}"]
        assert_physical(s, "rs_sr", (0.0, 255.0), "8-bit")
        hr = ft.chw(img)
        hr = hr[:, :hr.shape[1] // 4 * 4, :hr.shape[2] // 4 * 4]
        np.testing.assert_array_equal(s["gt"], hr)
        np.testing.assert_array_equal(
            s["lq"], imresize(hr, output_shape=(hr.shape[1] // 4, hr.shape[2] // 4), layout="chw"))
        assert s["attrs"]["scale"] == 4
    assert shard["ucmerced/beach03"]["gt"].shape == (3, 16, 12)
    assert shard["ucmerced/beach03"]["attrs"]["meta"]["hr_size"] == [16, 15]
    refuses_overwrite(argv, out, capsys)
    fails_with(["ucmerced", "--src", tmp_path / "nothing_here", "--out", tmp_path / "e.h5"], capsys,
               "nothing_here")


def test_cuhk_cr1_rgb_and_nir(tmp_path, capsys):
    truth = ft.cuhk_cr1_tree(tmp_path / "cr")
    out = tmp_path / "cr.h5"
    argv = ["cuhk_cr1", "--src", tmp_path / "cr", "--out", out, "--val-count", "1"]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 5, "val": 1, "test": 3}
    for split, items in truth.items():
        for stem, imgs in items.items():
            s = shard[f"cuhk_cr1/{split}/{stem}"]
            assert_physical(s, "cloud_removal", (0.0, 255.0), "8-bit")
            np.testing.assert_array_equal(s["lq"], ft.chw(imgs["cloud"]))
            np.testing.assert_array_equal(s["gt"], ft.chw(imgs["label"]))
            assert s["attrs"]["meta"]["bands"] == ["R", "G", "B"]
    out4 = tmp_path / "cr4.h5"
    assert prepare("cuhk_cr1", "--src", tmp_path / "cr", "--out", out4, "--nir") == 0
    s = load(out4)["cuhk_cr1/test/2"]
    assert s["gt"].shape == (4, 16, 16) and s["attrs"]["meta"]["bands"] == ["R", "G", "B", "NIR"]
    np.testing.assert_array_equal(s["gt"][3], truth["test"]["2"]["nir_label"])
    np.testing.assert_array_equal(s["lq"][3], truth["test"]["2"]["nir_cloud"])
    refuses_overwrite(argv, out, capsys)
    import shutil

    shutil.rmtree(tmp_path / "cr" / "CUHK-CR1" / "test" / "label")
    fails_with(["cuhk_cr1", "--src", tmp_path / "cr", "--out", tmp_path / "e.h5"], capsys,
               "label")


def test_rice1_seeded_split_and_dehaze(tmp_path, capsys):
    truth = ft.rice1_tree(tmp_path / "rice")
    out = tmp_path / "rice.h5"
    argv = ["rice1", "--src", tmp_path / "rice", "--out", out]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 7, "val": 1, "test": 2}
    for stem, imgs in truth.items():
        s = shard[f"rice1/{stem}"]
        assert_physical(s, "cloud_removal", (0.0, 255.0), "8-bit")
        np.testing.assert_array_equal(s["lq"], ft.chw(imgs["cloud"]))
        np.testing.assert_array_equal(s["gt"], ft.chw(imgs["label"]))
    # another seed, another split; same seed, same split
    assert prepare("rice1", "--src", tmp_path / "rice", "--out", tmp_path / "d.h5", "--task",
                   "dehaze") == 0
    hazy = load(tmp_path / "d.h5")
    assert {k: s["row"]["split"] for k, s in hazy.items()} == \
        {k: s["row"]["split"] for k, s in shard.items()}
    assert {s["row"]["task"] for s in hazy.values()} == {"dehaze"}
    refuses_overwrite(argv, out, capsys)
    (tmp_path / "rice" / "RICE1" / "label" / "4.png").unlink()
    fails_with(["rice1", "--src", tmp_path / "rice", "--out", tmp_path / "e.h5"], capsys,
               "unmatched", "4.png")


# ============================================================================= generic


def test_paired_folder_split_folders_window_and_unmatched(tmp_path, capsys):
    truth = ft.paired_split_tree(tmp_path / "pf")
    out = tmp_path / "pf.h5"
    argv = ["paired_folder", "--src", tmp_path / "pf", "--out", out, "--task", "cloud_removal",
            "--name", "tiles"]
    assert prepare(*argv) == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 3, "val": 1, "test": 2}
    for stem, t in truth.items():
        s = shard[f"tiles/{stem}"]
        assert s["row"]["split"] == t["split"]
        assert_physical(s, "cloud_removal", (0.0, 10000.0), "DN")
        assert s["gt"].dtype == np.uint16
        np.testing.assert_array_equal(s["gt"][0], t["gt"])
        np.testing.assert_array_equal(s["lq"][0], t["lq"])
    out2 = tmp_path / "win.h5"
    assert prepare("paired_folder", "--src", tmp_path / "pf", "--out", out2, "--task",
                   "cloud_removal", "--window", "0", "4095", "--unit", "DN12") == 0
    s = next(iter(load(out2).values()))
    assert_physical(s, "cloud_removal", (0.0, 4095.0), "DN12")
    refuses_overwrite(argv, out, capsys)
    (tmp_path / "pf" / "val" / "gt" / "tile_03.tif").rename(tmp_path / "pf" / "val" / "gt" / "x.tif")
    fails_with(argv + ["--overwrite"], capsys, "unmatched", "tile_03.tif", "x.tif")
    with pytest.raises(SystemExit):                 # argparse: --task is required
        prepare("paired_folder", "--src", tmp_path / "pf", "--out", tmp_path / "e.h5")


def test_paired_folder_volumes_and_sr_scale(tmp_path, capsys):
    truth = ft.paired_volume_tree(tmp_path / "vol")
    out = tmp_path / "vol.h5"
    assert prepare("paired_folder", "--src", tmp_path / "vol", "--out", out, "--task",
                   "pet_synthesis", "--split-fractions", "0.5", "0.25", "0.25") == 0
    shard = load(out)
    assert split_counts(shard) == {"train": 6, "val": 3, "test": 3}     # 2/1/1 volumes × 3 slices
    assert_disjoint(shard, lambda k: k.split("/")[1])
    for stem, t in truth.items():
        for z in range(3):
            s = shard[f"vol/{stem}/{z:03d}"]
            assert_physical(s, "pet_synthesis", (0.0, 20.0), "SUV")
            np.testing.assert_array_equal(s["gt"][0], t["gt"][z])
            np.testing.assert_array_equal(s["lq"][0], t["lq"][z])
    # an LQ folder at half size is stored LR-native with scale 2
    rng = np.random.default_rng(1)
    for i in range(3):
        ft.write_png(tmp_path / "sr" / "gt" / f"{i}.png", ft.rgb(rng, 8, 12))
        ft.write_png(tmp_path / "sr" / "lq" / f"{i}.png", ft.rgb(rng, 4, 6))
    assert prepare("paired_folder", "--src", tmp_path / "sr", "--out", tmp_path / "sr.h5",
                   "--task", "natural_sr") == 0
    s = next(iter(load(tmp_path / "sr.h5").values()))
    assert s["attrs"]["scale"] == 2 and s["lq"].shape == (3, 4, 6)
    ft.write_png(tmp_path / "sr" / "lq" / "0.png", ft.rgb(rng, 5, 6))
    fails_with(["paired_folder", "--src", tmp_path / "sr", "--out", tmp_path / "e.h5", "--task",
                "natural_sr"], capsys, "0.png", "5×6")


def test_paired_folder_dicom_series_and_files(tmp_path):
    """DICOM series folders (volumes -> slices) and single DICOM files, in HU."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(2)
    truth = {}
    for case in ("case1", "case2", "case3"):
        for role in ("lq", "gt"):
            raw = rng.integers(0, 2000, size=(2, 8, 8)).astype(np.int16)
            series, study = generate_uid(), generate_uid()
            for k in range(2):                           # written in reverse position order
                ft.write_dicom_slice(tmp_path / "dcm" / role / case / f"IM{k}.dcm", raw[1 - k],
                                     z=5.0 * (1 - k), series_uid=series, study_uid=study,
                                     instance=k + 1, patient=case)
            truth[(case, role)] = raw.astype(np.float32) - 1024
    single = rng.integers(0, 2000, size=(2, 8, 8)).astype(np.int16)
    for role, r in zip(("lq", "gt"), single):
        ft.write_dicom_slice(tmp_path / "dcm" / role / "slab.dcm", r, z=0.0, series_uid=generate_uid(),
                             study_uid=generate_uid(), instance=1, patient="slab")
    out = tmp_path / "dcm.h5"
    assert prepare("paired_folder", "--src", tmp_path / "dcm", "--out", out, "--task",
                   "ct_denoise", "--split-fractions", "2", "1", "1") == 0
    shard = load(out)
    assert len(shard) == 3 * 2 + 1
    assert_disjoint(shard, lambda k: k.split("/")[1])
    for (case, role), vol in truth.items():
        for z in range(2):
            s = shard[f"dcm/{case}/{z:03d}"]
            assert_physical(s, "ct_denoise", (-1024.0, 3072.0), "HU")
            np.testing.assert_array_equal(s[role][0], vol[z])
            assert s["attrs"]["meta"]["spacing"] == [0.7, 0.7]
    np.testing.assert_array_equal(shard["dcm/slab"]["gt"][0], single[1].astype(np.float32) - 1024)


def test_clean_folder_simulator_seed_and_on_the_fly(tmp_path, capsys):
    truth = ft.clean_tree(tmp_path / "clean")
    argv = ["clean_folder", "--src", tmp_path / "clean", "--task", "natural_denoise",
            "--simulator", "gaussian_noise", "--param", "sigma=25"]
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert prepare(*argv, "--out", a) == 0
    assert prepare(*argv, "--out", b) == 0
    assert prepare(*argv, "--out", c, "--seed", "1") == 0
    sa, sb, sc = load(a), load(b), load(c)
    assert split_counts(sa) == {"train": 8, "val": 1, "test": 1}
    for stem, img in truth.items():
        s = sa[f"clean/{stem}"]
        assert_physical(s, "natural_denoise", (0.0, 255.0), "8-bit")
        np.testing.assert_array_equal(s["gt"], ft.chw(img))
        assert s["lq"].dtype == np.float32 and s["lq"].shape == s["gt"].shape
        np.testing.assert_array_equal(s["lq"], sb[f"clean/{stem}"]["lq"])   # same seed
        assert s["attrs"]["meta"]["degradation"]["params"] == {"sigma": 25}
        noise = s["lq"].astype(np.float64) - s["gt"]
        assert 5 < noise[(s["gt"] > 60) & (s["gt"] < 190)].std() < 40     # sigma 25 of 255
    assert any(not np.array_equal(sa[k]["lq"], sc[k]["lq"]) for k in sa)     # other seed
    fly = tmp_path / "fly.h5"
    assert prepare(*argv, "--out", fly, "--on-the-fly") == 0
    sf = load(fly)
    for k, s in sf.items():
        if s["row"]["split"] == "train":
            assert s["lq"] is None
            assert s["row"]["simulator"] == {"name": "gaussian_noise", "params": {"sigma": 25}}
        else:
            np.testing.assert_array_equal(s["lq"], sa[k]["lq"])
    fails_with(["clean_folder", "--src", tmp_path / "clean", "--out", tmp_path / "e.h5",
                "--task", "derain", "--simulator", "snow"], capsys, "snow", "rain")
    refuses_overwrite(argv + ["--out", a], a, capsys)


def test_shard_attrs_record_the_converter(tmp_path):
    from medrestore.io.hdf5 import shard_attrs

    ft.rice1_tree(tmp_path / "rice", n=4)
    out = tmp_path / "rice.h5"
    assert prepare("rice1", "--src", tmp_path / "rice", "--out", out, "--seed", "3") == 0
    attrs = shard_attrs(out)
    assert attrs["dataset"] == "rice1" and attrs["seed"] == 3
    args = attrs["args"] if isinstance(attrs["args"], dict) else json.loads(attrs["args"])
    assert args["task"] == "cloud_removal" and args["split_fractions"] == [0.7, 0.1, 0.2]


def test_missing_src_and_unknown_converter(tmp_path, capsys):
    fails_with(["rice1", "--src", tmp_path / "nope", "--out", tmp_path / "e.h5"], capsys,
               "--src", "nope")
    from medrestore.errors import MedrestoreError
    from medrestore.prepare import CONVERTERS

    with pytest.raises(MedrestoreError, match="known converters"):
        CONVERTERS.build("imagenet")
    assert {"aapm_mayo", "ixi", "pet", "div2k", "df2k", "rain100l", "gopro", "ucmerced",
            "cuhk_cr1", "rice1", "paired_folder", "clean_folder", "demo", "brats",
            "brats_demo", "volume_slices", "tpseg_demo", "seg_folder", "tpseg_folder", "isic2018",
            "busi", "kvasir_seg", "polyp", "tn3k", "ebhi_seg", "figshare_brain_tumour",
            "covid_ct"} == set(CONVERTERS.names())


def test_converted_shards_load_as_contract_samples(tmp_path):
    """The loaders turn converted shards into valid samples (normalised, SR input on the GT
    grid), so physical storage and LR-native ``scale`` round-trip."""
    from medrestore.datasets.pairs import ShardPairs

    truth = ft.div2k_tree(tmp_path / "div2k")
    ft.aapm_tree(tmp_path / "mayo", patients=("L067", "L333", "L506"), n_slices=1)
    assert prepare("div2k", "--src", tmp_path / "div2k", "--out", tmp_path / "sr.h5",
                   "--val-count", "1") == 0
    assert prepare("aapm_mayo", "--src", tmp_path / "mayo", "--out", tmp_path / "ct.h5") == 0
    ds = ShardPairs([tmp_path / "sr.h5", tmp_path / "ct.h5"], split="test")
    samples = {s["key"]: s for s in (ds[i] for i in range(len(ds)))}
    assert set(samples) == {"div2k/0801", "div2k/0802", "aapm_mayo/L506/full_3mm/0000"}
    sr = samples["div2k/0801"]
    assert tuple(sr["lq"].shape) == tuple(sr["gt"].shape) == (3, 20, 16)
    np.testing.assert_allclose(sr["gt"].numpy(), ft.chw(truth["0801"]["hr"]) / 255.0, atol=1e-6)
    ct = samples["aapm_mayo/L506/full_3mm/0000"]
    assert float(ct["gt"].min()) >= 0.0 and float(ct["gt"].max()) <= 1.0
