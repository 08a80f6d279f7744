"""W&B as researchers use it: config + parameter counts, per-task test table, fixed validation
panels (W&B images, or PNGs without W&B), and the sweep specs in conf/sweep/."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CONF, compose, tiny_overrides

SWEEPS = sorted((CONF / "sweep").glob("*.yaml"))


# ---------------------------------------------------------------- panels (units)
def test_panel_shows_ct_in_the_named_hu_window_and_scales_the_error():
    from medrestore.modules.panels import DEFAULT_WINDOWS, render_panel
    from medrestore.sample import Normalisation, make_meta

    meta = make_meta("ct_denoise", normalisation={"low": -1024, "high": 3071, "unit": "HU"})
    norm = Normalisation.from_dict(meta["normalisation"])
    gt = norm.normalise(np.full((1, 8, 10), 40.0))           # 40 HU: the middle of [-160, 240]
    pred = norm.normalise(np.full((1, 8, 10), 140.0))        # 100 HU off = 1/4 of the window
    lq = norm.normalise(np.full((1, 8, 10), 1000.0))         # bone: white in soft tissue
    panel, caption = render_panel(lq, pred, gt, meta, DEFAULT_WINDOWS["CT"], error_scale=4)
    assert panel.shape == (8, 4 * 10 + 3 * 2, 3) and panel.dtype == np.uint8
    assert tuple(panel[0, 0]) == (255, 255, 255)             # lq tile: clipped at 240 HU
    assert tuple(panel[0, 2 * 12]) == (128, 128, 128)        # gt tile: 40 HU -> mid grey
    assert tuple(panel[0, 12]) == (191, 191, 191)            # restored: 140 HU -> 3/4 grey
    assert tuple(panel[0, 3 * 12]) == (255, 255, 255)        # error 100 HU x4 / 400 -> white
    assert "soft tissue window [-160, 240] HU" in caption
    assert "|error| x4 (white = 100 HU)" in caption


def test_panel_uses_the_normalisation_window_when_none_is_named():
    from medrestore.modules.panels import render_panel
    from medrestore.sample import make_meta

    meta = make_meta("natural_denoise")
    gt = np.zeros((3, 4, 4), np.float32)
    gt[0] = 1.0                                              # red
    panel, caption = render_panel(gt, gt, gt, meta, None)
    assert tuple(panel[0, 0]) == (255, 0, 0) and tuple(panel[0, -1]) == (0, 0, 0)  # no error
    assert "normalisation window [0, 255] 8-bit" in caption


def test_fixed_samples_are_the_first_k_of_each_task():
    from medrestore.modules.panels import fixed_indices

    rows = [{"task": t} for t in ("b", "a", "b", "a", "b", "c")]
    assert fixed_indices(rows, 1) == {"a": [1], "b": [0], "c": [5]}
    assert fixed_indices(rows, 2) == {"a": [1, 3], "b": [0, 2], "c": [5]}


@pytest.mark.parametrize("option, value", [("max_per_task", 0), ("every_n_val", 0),
                                           ("error_scale", 0), ("save_png", "sometimes"),
                                           ("window", {"CT": {"low": 5, "high": 5}})])
def test_bad_panel_option_is_one_line(option, value):
    from medrestore.errors import ConfigError
    from medrestore.modules.panels import ImagePanels

    with pytest.raises(ConfigError, match=f"callbacks.image_panels.{option}") as exc:
        ImagePanels(**{option: value})
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------- panels in a run, no W&B
def test_panels_are_pngs_without_wandb_same_images_every_n_val(tmp_path, toy_shard):
    from medrestore.cli.train import train

    run = tmp_path / "csv"
    cfg = compose("train", tiny_overrides(toy_shard) + [
        "test=false", "data.samples_per_epoch=12", "trainer.max_epochs=3",
        "callbacks.image_panels.every_n_val=2"], run)
    train(cfg)
    epochs = sorted(p.name for p in (run / "panels").iterdir())
    assert epochs == ["epoch_000", "epoch_002"]              # 1st and 3rd validation; no sanity
    for ep in epochs:
        pngs = sorted(p.name for p in (run / "panels" / ep).glob("*.png"))
        assert pngs == ["ct_denoise.png", "natural_denoise.png", "rs_sr.png"]
    from PIL import Image

    ct = np.asarray(Image.open(run / "panels/epoch_002/ct_denoise.png"))
    assert ct.shape == (48, 4 * 48 + 6, 3)                    # the first val image, 48x48
    caps = [(run / "panels" / ep / "ct_denoise.txt").read_text() for ep in epochs]
    assert all("toy.ct_denoise.val0" in c and "soft tissue window [-160, 240] HU" in c for c in caps)
    rs = (run / "panels/epoch_000/rs_sr.txt").read_text()
    assert "normalisation window" in rs


# ---------------------------------------------------------------- W&B
def test_run_hyperparams_nested_config_and_parameter_counts(tmp_path):
    from hydra.utils import instantiate

    from medrestore.cli.common import run_hyperparams

    cfg = compose("train", ["model=restormer_tiny"], tmp_path)
    model = instantiate(cfg.model, _recursive_=False)
    total = sum(p.numel() for p in model.parameters())
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    hp = run_hyperparams(cfg, model)
    assert hp["cfg"]["model"]["net"]["name"] == "restormer_tiny"          # nested, resolved
    assert hp["model/params_total"] == total
    assert hp["model/params_trainable"] == total - frozen.numel()


def test_results_table_goes_only_to_loggers_with_tables():
    from lightning.pytorch.loggers import CSVLogger

    from medrestore.cli.common import log_results_table
    from medrestore.utils.report import COLUMNS

    class Taker:
        def __init__(self):
            self.got = []

        def log_table(self, **kw):
            self.got.append(kw)

    rows = [{"task": "ct_denoise", "domain": "medical", "n": 1, "psnr_input": 20.0,
             "psnr_restored": 25.0, "psnr_gain": 5.0, "ssim_input": 0.5, "ssim_restored": 0.6,
             "ssim_gain": 0.1}]
    taker = Taker()
    assert log_results_table([CSVLogger("/nonexistent"), taker], rows, step=7) == 1
    (got,) = taker.got
    assert got["key"] == "test/results" and got["columns"] == list(COLUMNS) and got["step"] == 7
    assert got["data"] == [[rows[0].get(c) for c in COLUMNS]]           # rmse: None
    assert log_results_table([taker], []) == 0


def _offline_runs(root: Path) -> list[Path]:
    return sorted((root / "wandb").glob("offline-run-*"))


def wandb_config(run: Path) -> dict:
    """The config an offline run recorded, read from its ``run-*.wandb`` log (W&B writes
    ``files/config.yaml`` only when synced): 32 KiB blocks of ``crc, length, kind`` records."""
    import struct

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb2

    (path,) = run.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, config = 7, b"", {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind not in (1, 2, 3, 4):       # 0: padding / pre-allocated space, not a record
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb2.Record()
            try:
                rec.ParseFromString(buf)
            except DecodeError:            # a record still being written when read: skip it
                continue
            which = rec.WhichOneof("record_type")
            items = rec.config.update if which == "config" else \
                rec.run.config.update if which == "run" else []
            config.update({u.key: json.loads(u.value_json) for u in items})
    return config


def check_wandb_run(run_dir: Path, tasks=("ct_denoise", "natural_denoise", "rs_sr")) -> dict:
    """One offline W&B run in ``run_dir`` with panels per task, the test table and the config."""
    (wb,) = _offline_runs(run_dir)
    images = wb / "files" / "media" / "images" / "val_panels"
    for task in tasks:
        assert list(images.glob(f"{task}_*.png")), f"no panel for {task} in {images}"
    tables = list((wb / "files" / "media" / "table" / "test").glob("results_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["task", "domain", "n"]
    assert {r[0] for r in table["data"]} >= set(tasks) | {"[mean]"}
    config = wandb_config(wb)
    assert config["model/params_total"] > 0
    assert config["cfg"]["model"]["net"]["name"] and config["cfg"]["data"]["sets"]   # nested
    assert not (run_dir / "panels").exists()                  # W&B took the panels
    return config


def test_wandb_run_has_panels_test_table_and_config(tmp_path, toy_shard):
    import wandb

    from medrestore.cli.train import train

    if os.environ.get("WANDB_MODE") != "offline":
        pytest.skip("needs WANDB_MODE=offline to read the run's files")
    run = tmp_path / "wb"
    cfg = compose("train", tiny_overrides(toy_shard) + [
        "logger=wandb", "trainer.max_epochs=1", "data.samples_per_epoch=12", "test=true"], run)
    train(cfg)
    assert wandb.run is None
    config = check_wandb_run(run)
    assert config["cfg"]["model"]["net"]["name"] == "restormer_tiny"


# ---------------------------------------------------------------- sweeps
@pytest.mark.parametrize("spec", SWEEPS, ids=lambda p: p.stem)
def test_sweep_spec_is_wandb_format_and_every_combination_composes(spec, tmp_path):
    from omegaconf import OmegaConf

    doc = yaml.safe_load(spec.read_text())
    assert doc["method"] in ("grid", "random", "bayes")
    assert doc["metric"] == {"name": "val/psnr", "goal": "maximize"}
    assert "${args_no_hyphens}" in doc["command"]
    assert doc["command"][:4] == ["${env}", "${interpreter}", "-m", "medrestore.cli.train"]
    params = doc["parameters"]
    assert all(set(p) & {"value", "values"} for p in params.values())
    names = list(params)
    grids = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
    combos = list(itertools.product(*grids))
    assert len(combos) >= 3
    for combo in combos:
        overrides = [f"{k}={v}" for k, v in zip(names, combo)]
        cfg = compose("train", overrides, tmp_path)          # a bad key or option fails here
        for k, v in zip(names, combo):
            got = cfg.model.net.name if k == "model" else (
                OmegaConf.select(cfg, k) if "." in k or k in ("seed", "task_name") else None)
            if got is not None and "${" in str(v):            # an interpolation: resolved
                assert "${" not in str(got) and str(got).endswith(str(v).rsplit("}", 1)[1]), (k, got, v)
            elif got is not None:
                assert str(got) == str(v) or float(got) == float(v), (k, got, v)


def test_sweeps_cover_the_models_and_the_lr_balance_grid():
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in SWEEPS}
    assert set(docs) >= {"models", "lr_balance"}
    assert docs["models"]["parameters"]["model"]["values"] == [
        "tat_tiny", "datprl_tiny", "restormer_tiny", "promptir_tiny", "amir_tiny", "moce_ir_tiny"]
    lb = docs["lr_balance"]["parameters"]
    assert len(lb["model.optimizer.lr"]["values"]) >= 2 and len(lb["model.loss.balance"]["values"]) >= 2
