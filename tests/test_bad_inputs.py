"""The bad-input corpus: malformed files and impossible settings, built here, run through every
public entry point. Each case must end in exactly one ``error:`` line (or one-line
``MedrestoreError`` for library calls) naming the file / option, exit code 2, and leave every
output that existed before untouched and no new output behind.

``pytest -v tests/test_bad_inputs.py`` lists the corpus table: one test id per
(entry, entry point)."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import pytest
import torch

import fake_trees as ft
from conftest import RunsCode, compose, tiny_overrides, write_toy_shard
from medrestore.errors import MedrestoreError


# ------------------------------------------------------------------------------- corpus
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Every malformed file once; ``good.ckpt`` and ``toy.h5`` are the valid references."""
    import h5py
    import nibabel as nib

    from medrestore.modules.restoration import RestorationModule

    d = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {"dir": d}
    model = RestorationModule({"name": "restormer_tiny", "dim": 8})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(d / "good.ckpt")
    c["good.ckpt"] = d / "good.ckpt"
    good = torch.load(d / "good.ckpt", weights_only=True)

    c["marker"] = d / "code_ran"
    torch.save(dict(good, loops={"x": RunsCode(c["marker"])}), d / "evil.ckpt")
    torch.save({"params": {"x": RunsCode(c["marker"])}}, d / "evil.pth")
    torch.save(dict(good, medrestore_module="os:system"), d / "foreign_module.ckpt")
    raw = (d / "good.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 3])
    (d / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ("evil.ckpt", "evil.pth", "foreign_module.ckpt", "truncated.ckpt", "random.ckpt"):
        c[name] = d / name
    c["missing.ckpt"] = d / "missing.ckpt"

    vol = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32) * 10
    vol[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / "nan.nii.gz"))
    c["nan.nii.gz"] = d / "nan.nii.gz"
    ok = np.abs(np.nan_to_num(vol))
    nib.save(nib.Nifti1Image(ok, np.eye(4)), str(d / "zero_spacing.nii"))
    raw = bytearray((d / "zero_spacing.nii").read_bytes())
    raw[80:92] = struct.pack("<3f", 1.0, 1.0, 0.0)      # pixdim[1:4]: a zero slice spacing
    (d / "zero_spacing.nii").write_bytes(bytes(raw))
    c["zero_spacing.nii"] = d / "zero_spacing.nii"
    img = np.random.default_rng(2).random((24, 24)).astype(np.float32)
    img[5, 5] = np.inf
    ft.write_tiff(d / "inf.tif", img)
    c["inf.tif"] = d / "inf.tif"
    photo16 = np.random.default_rng(3).integers(0, 40000, (3, 24, 24)).astype(np.uint16)
    ft.write_tiff(d / "photo16.tif", np.moveaxis(photo16, 0, -1))
    c["photo16.tif"] = d / "photo16.tif"
    with h5py.File(d / "nan_array.h5", "w") as f:
        f.create_dataset("image", data=np.full((1, 8, 8), np.nan, np.float32))
    c["nan_array.h5"] = d / "nan_array.h5"
    (d / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    c["truncated.png"] = d / "truncated.png"

    c["toy.h5"] = write_toy_shard(d / "toy.h5")
    c["nan_gt.h5"] = write_toy_shard(d / "nan_gt.h5")
    with h5py.File(c["nan_gt.h5"], "r+") as f:      # one NaN in every ct_denoise training GT
        for g in f["samples"].values():
            if g.attrs["task"] == "ct_denoise" and g.attrs["split"] == "train":
                gt = g["gt"][()]
                gt[:, gt.shape[1] // 2, gt.shape[2] // 2] = np.nan
                g["gt"][...] = gt
    from medrestore.io.hdf5 import PairWriter
    from medrestore.sample import make_meta

    with PairWriter(d / "one_pixel.h5") as w:               # 1×1 images in every split
        for split in ("train", "val", "test"):
            w.add(np.full((1, 1, 1), 0.4, np.float32), np.full((1, 1, 1), 0.5, np.float32),
                  task="ct_denoise", key=f"px.{split}", split=split,
                  meta=make_meta("ct_denoise", source="generated", split=split))
    c["one_pixel.h5"] = d / "one_pixel.h5"
    with h5py.File(d / "foreign.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    c["foreign.h5"] = d / "foreign.h5"
    c["not_a_dir"] = d / "not_a_dir"
    c["not_a_dir"].write_text("a file where a folder is expected")
    return c


def _fill(text: str, corpus: dict[str, Path]) -> str:
    """``"ckpt_path={evil.ckpt}"`` -> the corpus file's path."""
    return re.sub(r"\{([^}]+)\}", lambda m: str(corpus[m.group(1)]), text)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(err: str, needle: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------- library entry points
READ_CASES = [("nan.nii.gz", "not finite"), ("zero_spacing.nii", "spacing must be > 0"),
              ("inf.tif", "not finite"), ("nan_array.h5", "no finite pixel"),
              ("truncated.png", "truncated.png"), ("missing.ckpt", "no such file")]


@pytest.mark.parametrize("name,needle", READ_CASES)
def test_read_image(corpus, name, needle):
    from medrestore.io.base import read_image

    with pytest.raises(MedrestoreError) as info:
        read_image(corpus[name])
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and name in msg, msg


RESTORE_CASES = [("nan.nii.gz", "pet_synthesis", "not finite"),
                 ("zero_spacing.nii", "pet_synthesis", "spacing must be > 0"),
                 ("inf.tif", "ct_denoise", "not finite"),
                 ("photo16.tif", "natural_denoise", "do not fit the 8-bit window")]


@pytest.mark.parametrize("name,task,needle", RESTORE_CASES)
def test_restorer_restore_file(corpus, tmp_path, name, task, needle):
    from medrestore.inference.restorer import Restorer

    r = Restorer.from_checkpoint(str(corpus["good.ckpt"]))
    with pytest.raises(MedrestoreError) as info:
        r.restore_file(corpus[name], tmp_path / f"out_{name}", task=task)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and name in msg, msg
    assert list(tmp_path.iterdir()) == []            # nothing written


CKPT_CASES = [("evil.ckpt", "refused"), ("foreign_module.ckpt", "refused"),
              ("truncated.ckpt", "truncated or corrupt"), ("random.ckpt", "not a loadable"),
              ("missing.ckpt", "no such")]


@pytest.mark.parametrize("name,needle", CKPT_CASES)
def test_restorer_from_checkpoint(corpus, name, needle):
    from medrestore.inference.restorer import Restorer

    with pytest.raises(MedrestoreError) as info:
        Restorer.from_checkpoint(str(corpus[name]))
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and name in msg, msg
    assert not corpus["marker"].exists()


@pytest.mark.parametrize("name,needle", [("evil.pth", "refused"), ("truncated.ckpt", "corrupt"),
                                         ("random.ckpt", "not a loadable"),
                                         ("missing.ckpt", "no such")])
def test_pretrained_loader(corpus, name, needle):
    from medrestore.modules.restoration import RestorationModule

    model = RestorationModule({"name": "restormer_tiny", "dim": 8, "pretrained": str(corpus[name])})
    with pytest.raises(MedrestoreError) as info:
        model.load_pretrained()
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and "model.net.pretrained" in msg, msg
    assert not corpus["marker"].exists()


# ------------------------------------------------------------- train / eval (in process)
def _run(fn: Callable, cfg, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        fn(cfg)
    return int(info.value.code), capsys.readouterr().err


TRAIN_CASES = {
    "ckpt_path=evil.ckpt": (["ckpt_path={evil.ckpt}"], "evil.ckpt: refused"),
    "ckpt_path=foreign_module.ckpt": (["ckpt_path={foreign_module.ckpt}"], "refused"),
    "ckpt_path=truncated.ckpt": (["ckpt_path={truncated.ckpt}"], "truncated or corrupt"),
    "ckpt_path=random.ckpt": (["ckpt_path={random.ckpt}"], "not a loadable"),
    "ckpt_path=missing.ckpt": (["ckpt_path={missing.ckpt}"], "no such checkpoint file"),
    "pretrained=evil.pth": (["+model.net.pretrained={evil.pth}"], "evil.pth: refused"),
    "sets=nan_gt.h5": (["data.sets=[{nan_gt.h5}]"], "non-finite training loss at global step 0"),
    "sets=one_pixel.h5": (["data.sets=[{one_pixel.h5}]"], "one_pixel.h5"),
    "sets=foreign.h5": (["data.sets=[{foreign.h5}]"], "not a medrestore pair shard"),
    "data.patch_size=1024": (["data.patch_size=1024"], "data.patch_size=1024"),
    "data.patch_size=0": (["data.patch_size=0"], "data.patch_size"),
    "data.batch_size=0": (["data.batch_size=0"], "data.batch_size"),
    "paths.output_dir=<file>": (["paths.output_dir={not_a_dir}/run"], "cannot write there"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train(corpus, tmp_path, capsys, case):
    from medrestore.cli.train import train

    overrides, needle = TRAIN_CASES[case]
    overrides = [_fill(o, corpus) for o in overrides]
    before = _snapshot(corpus["dir"])
    run = tmp_path / "run"
    cfg = compose("train", tiny_overrides(corpus["toy.h5"]) + overrides, run)
    if case == "paths.output_dir=<file>":
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.paths.output_dir = f"{corpus['not_a_dir']}/run"
    code, err = _run(train, cfg, capsys)
    assert code == 2
    _one_error_line(err, needle)
    assert _snapshot(corpus["dir"]) == before
    assert not list(run.rglob("*.ckpt"))
    assert not corpus["marker"].exists()


EVAL_CASES = {
    "ckpt_path=evil.ckpt": ("{evil.ckpt}", "evil.ckpt: refused"),
    "ckpt_path=evil.pth": ("{evil.pth}", "evil.pth: refused"),
    "ckpt_path=foreign_module.ckpt": ("{foreign_module.ckpt}", "refused"),
    "ckpt_path=truncated.ckpt": ("{truncated.ckpt}", "truncated or corrupt"),
    "ckpt_path=random.ckpt": ("{random.ckpt}", "not a loadable"),
    "ckpt_path=missing.ckpt": ("{missing.ckpt}", "no such checkpoint file"),
    "ckpt_path missing": (None, "ckpt_path is required"),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_eval(corpus, tmp_path, capsys, case):
    from medrestore.cli.eval import evaluate

    ckpt, needle = EVAL_CASES[case]
    overrides = [f"data.sets=[{corpus['toy.h5']}]", "trainer.enable_progress_bar=false"]
    if ckpt is not None:
        overrides.append(f"ckpt_path={_fill(ckpt, corpus)}")
    before = _snapshot(corpus["dir"])
    code, err = _run(evaluate, compose("eval", overrides, tmp_path / "eval"), capsys)
    assert code == 2
    _one_error_line(err, needle)
    assert _snapshot(corpus["dir"]) == before
    assert not (tmp_path / "eval" / "results_test.csv").exists()
    assert not corpus["marker"].exists()


# ------------------------------------------------------------------------------- prepare
def test_prepare_paired_folder_nan_source_names_the_file(corpus, tmp_path, capsys):
    from medrestore.cli.prepare import main

    src = tmp_path / "src"
    for split in ("train", "val", "test"):
        for i in range(2):
            a = np.random.default_rng(i).random((16, 16)).astype(np.float32)
            ft.write_tiff(src / split / "lq" / f"{split}{i}.tif", a)
            if split == "train" and i == 1:
                a = a.copy()
                a[2, 2] = np.nan
            ft.write_tiff(src / split / "gt" / f"{split}{i}.tif", a)
    out = tmp_path / "out.h5"
    assert main(["paired_folder", "--src", str(src), "--task", "ct_denoise", "--quiet",
                 "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, str(src / "train" / "gt" / "train1.tif"))
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_prepare_refuses_to_overwrite_and_keeps_the_file(corpus, tmp_path, capsys):
    from medrestore.cli.prepare import main

    out = tmp_path / "demo.h5"
    out.write_bytes(b"earlier work")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    _one_error_line(capsys.readouterr().err, "already exists")
    assert out.read_bytes() == b"earlier work"


# ------------------------------------------------------------------------ real CLIs
def _cli(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_settings_fail_before_any_work(corpus, tmp_path):
    # Hydra makes the run directory before our code runs: only a real process shows that an
    # unwritable log dir is still one line
    logs = corpus["not_a_dir"] / "logs"
    out = _cli("medrestore.cli.train", [f"paths.log_dir={logs}", f"data.sets=[{corpus['toy.h5']}]"],
               tmp_path)
    assert out.returncode == 2
    _one_error_line(out.stderr, "cannot write there")
    # other bad settings (data.patch_size=1024, ...) fail the same way in-process (above)
    out = _cli("medrestore.cli.eval", [f"paths.log_dir={tmp_path}/logs"], tmp_path)
    assert out.returncode == 2
    _one_error_line(out.stderr, "ckpt_path is required")
