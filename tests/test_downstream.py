"""Downstream evaluation harness: clean / degraded / restored conditions through an analysis
model's own test loop, with a tiny fake analysis model and dataset (2-D and 3-D) and a tiny
restoration checkpoint."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from conftest import compose, tiny_restormer_checkpoint
from medrestore.errors import ConfigError, MedrestoreError
from medrestore.inference.downstream import (Condition, ConditionHook, check_spec, degrade_image, degrade_volume,
                                             evaluate_downstream, side_by_side, write_tables)
from medrestore.metrics.segmentation import dice_per_image


# ------------------------------------------------------------------ fakes
class FakeSegData(Dataset):
    """H×W×3 images in [0, 1]: a bright disc (0.8) on a dark background (0.2); two tasks."""

    def __init__(self, n: int = 4, size: int = 32, tasks=("cloud", "other")) -> None:
        self.n, self.size, self.tasks = n, size, tasks
        self.pre_normalise = None
        self.seen: list[np.ndarray] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        s = self.size
        yy, xx = np.mgrid[:s, :s]
        mask = ((yy - s / 2 - i) ** 2 + (xx - s / 2 + i) ** 2) <= (s / 4) ** 2
        img = np.repeat(np.where(mask, 0.8, 0.2)[..., None], 3, axis=-1).astype(np.float32)
        task, key = self.tasks[i % len(self.tasks)], f"img{i}"
        if self.pre_normalise is not None:
            img = self.pre_normalise(img, key, task)
            self.seen.append(img)
        return {"image": torch.from_numpy(img.transpose(2, 0, 1).copy()),
                "mask": torch.from_numpy(mask[None].astype(np.float32)), "task": task, "key": key}


class FakeVolumeData(Dataset):
    """C×X×Y×Z volumes: zero background, a 'brain' ellipsoid at 100, a 'tumour' at 300;
    z-scored over non-zero voxels after ``pre_normalise`` (as the 3-D dataset)."""

    def __init__(self, n: int = 2) -> None:
        self.n = n
        self.pre_normalise = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x, y, z = np.mgrid[:24, :24, :8]
        brain = ((x - 12) / 10) ** 2 + ((y - 12) / 9) ** 2 + ((z - 4) / 5) ** 2 <= 1
        tumour = ((x - 10 - i) ** 2 + (y - 12) ** 2 + (z - 4) ** 2) <= 16
        vol = np.stack([np.where(tumour, 300.0, np.where(brain, 100.0, 0.0))] * 2).astype(np.float32)
        key = f"case{i}"
        if self.pre_normalise is not None:
            vol = self.pre_normalise(vol, key)
        nz = vol != 0
        z = np.zeros_like(vol)
        for c in range(vol.shape[0]):
            v = vol[c][nz[c]]
            z[c][nz[c]] = (v - v.mean()) / (v.std() + 1e-8)
        return {"image": torch.from_numpy(z), "seg": torch.from_numpy(tumour[None].astype(np.float32)),
                "task": "brats", "key": key}


def _collate(samples):
    out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if torch.is_tensor(samples[0][k])}
    out.update({k: [s[k] for s in samples] for k in samples[0] if not torch.is_tensor(samples[0][k])})
    return out


class FakeDataModule(L.LightningDataModule):
    def __init__(self, ds: Dataset) -> None:
        super().__init__()
        self.ds = ds
        self.hooks_set: list = []

    def dataset(self, stage: str) -> Dataset:
        return self.ds

    def set_pre_normalise(self, fn) -> None:
        self.hooks_set.append(fn)
        self.ds.pre_normalise = fn

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.ds, batch_size=2, collate_fn=_collate, num_workers=0)


class FakeAnalysis(L.LightningModule):
    """Thresholds the (grey) image; logs per-task Dice as ``test/dice/<task>``."""

    def __init__(self, image_key: str = "image", mask_key: str = "mask", threshold: float = 0.5) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.image_key, self.mask_key, self.threshold = image_key, mask_key, threshold
        self.scores: dict[str, list[float]] = {}

    def on_test_epoch_start(self) -> None:
        self.scores = {}

    def test_step(self, batch, _):
        img = batch[self.image_key]
        pred = img[:, :1] > self.threshold if img.ndim == 5 else img.mean(1, keepdim=True) > self.threshold
        d = dice_per_image(pred, batch[self.mask_key].bool())[:, 0]
        for t, v in zip(batch["task"], d.tolist()):
            self.scores.setdefault(t, []).append(v)

    def on_test_epoch_end(self) -> None:
        for t, v in self.scores.items():
            self.log(f"test/dice/{t}", float(np.mean(v)))

    def results_rows(self, metrics, stage):
        tasks = sorted(k.split("/")[-1] for k in metrics if k.startswith(f"{stage}/dice/"))
        return [{"task": t, "n": len(self.scores[t]), "dice": metrics[f"{stage}/dice/{t}"]} for t in tasks]


class SmoothingRestorer:
    """Duck-typed restorer: a Gaussian filter in the normalised window (a crude denoiser)."""

    windows: dict = {}

    def window(self, task):  # pragma: no cover - the degradation window is used
        raise AssertionError("no checkpoint window expected")

    def restore_slices(self, x, norm, **_):
        from scipy.ndimage import gaussian_filter

        u = norm.normalise(np.asarray(x, dtype=np.float32))
        u = gaussian_filter(u, sigma=(0, 0, 1.5, 1.5))
        return norm.denormalise(np.clip(u, 0, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory):
    return tiny_restormer_checkpoint(tmp_path_factory.mktemp("ds") / "identity.ckpt")


NOISE = {"*": check_spec({"simulator": "gaussian_noise", "params": {"sigma": 90}, "window": [0, 255]}, "d")}


# ------------------------------------------------------------------ tests
def test_degradation_is_keyed_and_identical_across_conditions():
    img = FakeSegData()[0]["image"].numpy().transpose(1, 2, 0)
    a = degrade_image(img, "img0", "cloud", NOISE["*"], seed=3)
    assert np.array_equal(a, degrade_image(img, "img0", "cloud", NOISE["*"], seed=3))
    assert not np.array_equal(a, degrade_image(img, "img1", "cloud", NOISE["*"], seed=3))
    assert not np.array_equal(a, degrade_image(img, "img0", "cloud", NOISE["*"], seed=4))
    # the degraded and restored conditions see the same degraded array
    seen = []

    class Spy(SmoothingRestorer):
        def restore_slices(self, x, norm, **kw):
            seen.append(np.array(x[0]))
            return np.asarray(x)

    degraded = ConditionHook("image", "degraded", NOISE, 3)(img, "img0", "cloud")
    restored = ConditionHook("image", "restored", NOISE, 3, restorer=Spy())(img, "img0", "cloud")
    assert np.array_equal(seen[0], a)
    assert np.array_equal(degraded, restored)             # the identity restorer changes nothing
    assert np.array_equal(ConditionHook("image", "clean", NOISE, 3)(img, "img0", "cloud"), img)


def test_volume_degradation_keeps_background_and_sigma_is_relative():
    x, y, z = np.mgrid[:24, :24, :8]
    clean = np.stack([np.where(((x - 12) / 10) ** 2 + ((y - 12) / 9) ** 2 + ((z - 4) / 5) ** 2 <= 1, 100.0, 0.0)] * 2
                     ).astype(np.float32)
    spec = check_spec({"simulator": "mri_kspace", "params": {"scale": 4}, "sigma_fraction": 0.05}, "d")
    lq = degrade_volume(clean, "case0", spec, seed=0)
    assert lq.shape == clean.shape and lq.dtype == np.float32
    assert np.all(lq[clean == 0] == 0) and not np.allclose(lq[clean != 0], 100.0)
    assert np.array_equal(lq, degrade_volume(clean, "case0", spec, seed=0))
    assert not np.array_equal(lq, degrade_volume(clean, "case1", spec, seed=0))
    # sigma is 5 % of the channel's p99 (100): background-free noise of that size inside
    inside = lq[0][clean[0] != 0] - degrade_volume(clean, "case0", check_spec(
        {"simulator": "mri_kspace", "params": {"scale": 4}}, "d"), seed=0)[0][clean[0] != 0]
    assert 2.0 < float(inside.std()) < 10.0


def test_image_conditions_table(identity_ckpt):
    from medrestore.inference.restorer import Restorer

    dm = FakeDataModule(FakeSegData(n=4))
    conds = [Condition("clean", "clean"), Condition("degraded", "degraded"),
             Condition("restored:identity", "restored", Restorer.from_checkpoint(identity_ckpt)),
             Condition("restored:smooth", "restored", SmoothingRestorer())]
    rows = evaluate_downstream(FakeAnalysis(), dm, conds, NOISE, kind="image", seed=0, log=lambda _: None)
    by: dict = {}
    for r in rows:  # analysis rows and image-quality rows of one (condition, task) merged
        by.setdefault((r["condition"], r["task"]), {}).update(r)
    assert set(by) == {(c.label, t) for c in conds for t in ("cloud", "other")} | {
        (c.label, "mean") for c in conds[1:]}
    for t in ("cloud", "other"):
        assert by[("clean", t)]["dice"] == 1.0
        assert by[("degraded", t)]["dice"] < 0.95
        # same degraded input: the identity model scores exactly as the degraded condition
        assert by[("restored:identity", t)]["dice"] == by[("degraded", t)]["dice"]
        assert by[("restored:identity", t)]["psnr"] == pytest.approx(by[("degraded", t)]["psnr"], abs=1e-3)
        # a denoiser helps both the image and the downstream Dice
        assert by[("restored:smooth", t)]["dice"] > by[("degraded", t)]["dice"]
        assert by[("restored:smooth", t)]["psnr"] > by[("degraded", t)]["psnr"]
        assert "psnr" not in by[("clean", t)]
    assert dm.ds.pre_normalise is None                   # the hook is removed after each condition
    table = side_by_side(rows)
    assert {t["metric"] for t in table} == {"dice", "psnr", "ssim"}
    assert set(table[0]) == {"task", "metric", "clean", "degraded", "restored:identity", "restored:smooth"}
    psnr_cloud = next(t for t in table if t["task"] == "cloud" and t["metric"] == "psnr")
    assert np.isnan(psnr_cloud["clean"]) and psnr_cloud["restored:smooth"] > psnr_cloud["degraded"]


def test_side_by_side_keeps_rows_with_the_same_task_apart(tmp_path):
    rows = [{"condition": c, "task": "segmentation", "region": reg, "dice": d, "hd95": None}
            for c, vals in (("clean", (0.9, 0.8)), ("degraded", (0.7, 0.6))) for reg, d in zip(("TC", "WT"), vals)]
    table = side_by_side(rows)
    assert [(t["region"], t["clean"], t["degraded"]) for t in table] == [("TC", 0.9, 0.7), ("WT", 0.8, 0.6)]
    paths = write_tables(rows, tmp_path)
    assert paths["csv"].read_text().splitlines()[0] == "task,region,metric,clean,degraded"
    assert "| dice (TC) | 0.9 | 0.7 |" in paths["md"].read_text()


def test_volume_conditions_with_a_2d_model_slice_by_slice(identity_ckpt):
    from medrestore.inference.restorer import Restorer

    spec = {"*": check_spec({"simulator": "mri_kspace", "params": {"scale": 4}, "sigma_fraction": 0.3}, "d")}
    dm = FakeDataModule(FakeVolumeData(n=2))
    conds = [Condition("clean", "clean"), Condition("degraded", "degraded"),
             Condition("restored:identity", "restored", Restorer.from_checkpoint(identity_ckpt))]
    rows = evaluate_downstream(FakeAnalysis("image", "seg", threshold=1.0), dm, conds, spec, kind="volume",
                               seed=0, log=lambda _: None)
    by: dict = {}
    for r in rows:
        by.setdefault(r["condition"], {}).update(r)
    assert {r["task"] for r in rows} == {"brats"}
    assert by["clean"]["dice"] == 1.0
    assert by["degraded"]["dice"] < 1.0
    assert by["restored:identity"]["dice"] == pytest.approx(by["degraded"]["dice"], abs=1e-6)
    assert 0 < by["degraded"]["ssim"] < 1 and np.isfinite(by["degraded"]["psnr"])


def test_write_tables_never_overwrites(tmp_path):
    rows = [{"condition": "clean", "task": "a", "n": 2, "dice": 1.0, "psnr": float("nan"), "ssim": float("nan")},
            {"condition": "degraded", "task": "a", "n": 2, "dice": 0.5, "psnr": 20.0, "ssim": 0.5}]
    paths = write_tables(rows, tmp_path, "downstream", "t")
    with open(paths["csv"]) as f:
        got = list(csv.DictReader(f))
    assert got[0] == {"task": "a", "metric": "dice", "clean": "1.0", "degraded": "0.5"}
    assert json.loads(paths["json"].read_text())[0]["psnr"] is None
    assert "| dice | 1 | 0.5 |" in paths["md"].read_text()
    with pytest.raises(ConfigError, match="already exists"):
        write_tables(rows, tmp_path, "downstream")


def test_spec_errors_name_the_key():
    cases = [({"simulator": "nope"}, "d.simulator"), ({"simulator": "gaussian_noise", "params": {"x": 1}}, "d.params.x"),
             ({"simulator": "bicubic", "sigma_fraction": 0.1}, "d.sigma_fraction"),
             ({"simulator": "gaussian_noise", "window": [3, 1]}, "d.window"),
             ({"simulator": "gaussian_noise", "colour": 1}, "d.colour"),
             ({"simulator": "gaussian_noise", "restore_task": "nope"}, "d.restore_task")]
    for raw, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            check_spec(raw, "d")
    with pytest.raises(ConfigError, match="degradation.pet"):
        ConditionHook("image", "degraded", {"cloud": NOISE["*"]}, 0)(np.zeros((4, 4, 3), np.float32), "k", "pet")
    with pytest.raises(MedrestoreError):
        ConditionHook("image", "restored", NOISE, 0)


def _cli(tmp_path, overrides, monkeypatch, run="run"):
    import medrestore.cli.downstream as cli

    monkeypatch.setattr(cli, "load_analysis", lambda cfg, device: (FakeAnalysis(), FakeDataModule(FakeSegData(n=4))))
    cfg = compose("downstream", ["downstream=tpseg", "extras.print_config=false", *overrides], tmp_path / run)
    return cli.downstream(cfg)


def test_cli_writes_the_side_by_side_table(tmp_path, identity_ckpt, monkeypatch, capsys):
    fake = tmp_path / "analysis.ckpt"
    fake.write_bytes(b"")
    out = _cli(tmp_path, [f"analysis_ckpt={fake}", f"restore_ckpt=[{identity_ckpt}]", "restore_labels=[ident]",
                          "limit=2"], monkeypatch)
    assert out["conditions"] == ["clean", "degraded", "restored:ident"]
    with open(out["paths"]["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["task", "metric", "clean", "degraded", "restored:ident"]
    assert {r["task"] for r in rows} == {"cloud", "other", "mean"}    # limit=2: one image of each task
    assert "### cloud" in capsys.readouterr().out
    with pytest.raises(SystemExit):                       # the same run dir again: refused
        _cli(tmp_path, [f"analysis_ckpt={fake}"], monkeypatch)
    assert "already exists" in capsys.readouterr().err


def test_cli_bad_options_are_one_line(tmp_path, identity_ckpt, monkeypatch, capsys):
    fake = tmp_path / "analysis.ckpt"
    fake.write_bytes(b"")
    cases = [([f"analysis_ckpt={tmp_path / 'nope.ckpt'}"], "analysis_ckpt="),
             ([f"analysis_ckpt={fake}", f"restore_ckpt=[{tmp_path / 'x.ckpt'}]"], "restore_ckpt[0]"),
             ([f"analysis_ckpt={fake}", f"restore_ckpt=[{identity_ckpt}]", "restore_labels=[a,b]"], "restore_labels"),
             ([f"analysis_ckpt={fake}", "tta=rot"], "tta="),
             ([f"analysis_ckpt={fake}", "seed=-1"], "seed="),
             ([f"analysis_ckpt={fake}", "restore_window=mine"], "restore_window="),
             ([f"analysis_ckpt={fake}", "downstream.degradation.cloud.simulator=blur"],
              "downstream.degradation.cloud.simulator"),
             ([f"analysis_ckpt={fake}", "+data._target_=os.system"], "data._target_")]
    for i, (overrides, key) in enumerate(cases):
        with pytest.raises(SystemExit) as exc:
            _cli(tmp_path, overrides, monkeypatch, run=f"bad{i}")
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], (key, err)


@pytest.mark.parametrize("option", ["mtmed3d", "tpseg"])
def test_shipped_downstream_configs_pass_the_checks(option, tmp_path):
    from medrestore.cli.downstream import check_options

    fake = tmp_path / "analysis.ckpt"
    fake.write_bytes(b"")
    opts = check_options(compose("downstream", [f"downstream={option}", f"analysis_ckpt={fake}"], tmp_path / "r"))
    assert opts["kind"] == {"mtmed3d": "volume", "tpseg": "image"}[option]
    assert "*" in opts["specs"] and opts["seed"] == 0


def test_analysis_loader_refuses_a_restoration_checkpoint(identity_ckpt, tmp_path):
    from medrestore.cli.downstream import load_analysis_module

    with pytest.raises(ConfigError, match="not an analysis module"):
        load_analysis_module(str(identity_ckpt))
    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(ConfigError, match="analysis_ckpt="):
        load_analysis_module(str(junk))
