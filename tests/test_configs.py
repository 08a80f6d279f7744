"""Every config composes, and what it describes can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import CONF, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUP_OPTIONS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
                 for g in ("model", "data", "trainer", "logger", "callbacks", "debug")}


def test_groups_required_by_the_design_exist():
    assert {"cpu", "gpu", "ddp", "ddp_sim"} <= set(GROUP_OPTIONS["trainer"])
    assert {"csv", "wandb", "none"} <= set(GROUP_OPTIONS["logger"])
    assert (CONF / "train.yaml").is_file() and (CONF / "eval.yaml").is_file()
    assert "demo" in EXPERIMENTS


#: experiments of the analysis families (their own DataModules and stores)
ANALYSIS = [e for e in EXPERIMENTS if e.startswith(("mtmed3d", "tpseg"))]
#: released analysis models too large to allocate in a test: built on the meta device
META_MODELS = {"tpseg", "tpseg_hiera_tiny"}   # (MTMed3D, 77 M, builds on the CPU)


def _build_model(cfg):
    import torch

    if cfg.model.net.name in META_MODELS:
        with torch.device("meta"):
            return instantiate(cfg.model, _recursive_=False)
    return instantiate(cfg.model, _recursive_=False)


@pytest.mark.parametrize("experiment", ANALYSIS)
def test_analysis_experiment_composes(experiment, tmp_path):
    from hydra.utils import get_class

    cfg = compose("train", [f"experiment={experiment}", "trainer=cpu"], tmp_path)
    model = _build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert callable(getattr(model, "results_rows", None))
    assert get_class(cfg.data._target_).__name__ in ("VolumeDataModule", "SegDataModule")
    assert cfg.optimized_metric == cfg.model.monitor
    assert cfg.callbacks.get("image_panels") is None      # restoration panels do not apply


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e not in ANALYSIS])
def test_experiment_composes_and_builds(experiment, tmp_path, toy_shard):
    # the toy shard lacks some demo tasks, so per-task sampling weights are dropped here; GPU
    # recipes are built on the CPU trainer and without their caption caches; the toy images
    # (48², 40×56) are smaller than the recipes' patches, hence pad_small
    cfg = compose("train", [f"experiment={experiment}", f"data.sets=[{toy_shard}]",
                            "data.weights=null", "data.balance=equal", "trainer=cpu",
                            "data.pad_small=true",
                            "data.text_cache=null", "data.num_workers=0", "data.pin_memory=false"],
                  tmp_path)
    model = instantiate(cfg.model, _recursive_=False)
    assert sum(p.numel() for p in model.parameters()) > 0
    dm = instantiate(cfg.data)
    dm.setup("fit")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_epochs >= 1 or trainer.max_steps >= 1     # step-based recipes
    assert cfg.optimized_metric == cfg.model.monitor


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose("train", [f"{group}={option}"], tmp_path)
    assert cfg is not None
    if group == "model":
        _build_model(cfg)


def test_eval_config_requires_a_checkpoint(tmp_path):
    from omegaconf import MissingMandatoryValue

    cfg = compose("eval", [], tmp_path)
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.ckpt_path
    cfg = compose("eval", ["ckpt_path=/x.ckpt", "trainer=ddp_sim"], tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2


def test_wandb_logger_builds_offline(tmp_path):
    import os

    assert os.environ["WANDB_MODE"] in ("offline", "disabled")
    cfg = compose("train", ["logger=wandb"], tmp_path)
    assert cfg.logger.wandb.save_dir == str(tmp_path)
    assert cfg.logger.wandb.project == "medrestore"


def test_packaged_config_dir_points_at_repo_conf():
    from medrestore.utils.config import config_dir

    assert Path(config_dir()) == CONF.resolve()


PAPER_MIXES = {  # data config -> {shard stem: task} it expects under paths.data_dir
    "tat": {"aapm_mayo": "ct_denoise", "ixi_t2": "mri_sr", "pet": "pet_synthesis"},
    "datprl_6task": {"df2k": "natural_sr", "ucmerced": "rs_sr", "ixi_t2": "mri_sr",
                     "rain100l": "derain", "cuhk_cr1": "cloud_removal", "aapm_mayo": "ct_denoise"},
    "datprl_9task": {"df2k": "natural_sr", "ucmerced": "rs_sr", "ixi_t2": "mri_sr",
                     "rain100l": "derain", "cuhk_cr1": "cloud_removal", "aapm_mayo": "ct_denoise",
                     "gopro": "deblur", "pet": "pet_synthesis", "rice1": "dehaze"},
}


@pytest.mark.parametrize("mix", sorted(PAPER_MIXES))
def test_paper_data_mixes_give_balanced_batches(mix, tmp_path):
    from collections import Counter

    from conftest import write_toy_shard

    for stem, task in PAPER_MIXES[mix].items():
        write_toy_shard(tmp_path / f"{stem}.h5", tasks=(task,), sizes=((32, 32),), per_split=(2, 1, 1))
    cfg = compose("train", [f"data={mix}", f"paths.data_dir={tmp_path}", "data.patch_size=16",
                            "data.num_workers=0", "data.pin_memory=false"], tmp_path)
    dm = instantiate(cfg.data)
    n_tasks = len(PAPER_MIXES[mix])
    per_task = {"tat": 4, "datprl_6task": 2, "datprl_9task": 2}[mix]
    assert dm.batch_size == per_task * n_tasks
    batch = next(iter(dm.train_dataloader()))
    assert Counter(batch["task"]) == {t: per_task for t in PAPER_MIXES[mix].values()}
    repeats = {s["name"]: s["repeat"] for s in dm.sets}
    if mix.startswith("datprl"):
        assert (repeats["df2k"], repeats["ucmerced"], repeats["rain100l"], repeats["cuhk_cr1"],
                repeats["aapm_mayo"]) == (12, 22, 200, 75, 2)


def test_datprl_demo_recipe_trains_tat_with_one_override(tmp_path, toy_shard):
    """`experiment=datprl_demo model=tat_tiny`: the same data and trainer, TAT's module."""
    from medrestore.modules.datprl import DATPRLModule
    from medrestore.modules.tat import TATModule

    base = [f"data.sets=[{toy_shard}]", "data.weights=null", "data.balance=equal",
            "data.text_cache=null"]
    d = compose("train", ["experiment=datprl_demo", "model.loss.align.weight=0", *base], tmp_path)
    t = compose("train", ["experiment=datprl_demo", "model=tat_tiny", *base], tmp_path)
    assert d.data == t.data and d.trainer == t.trainer
    dm, tm = instantiate(d.model, _recursive_=False), instantiate(t.model, _recursive_=False)
    assert isinstance(dm, DATPRLModule) and isinstance(tm, TATModule)
    assert tm.in_channels == dm.in_channels == 3
    # the tiny TAT's TLC train size follows the crop the recipe trains on
    assert t.model.net.train_size == t.data.patch_size
    t96 = compose("train", ["experiment=datprl_demo", "model=tat_tiny", "data.patch_size=96", *base], tmp_path)
    assert t96.model.net.train_size == 96
