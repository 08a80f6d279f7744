"""``data.degrade_on=device``: clean-only crops get their simulator's parameters in the worker and
their ``lq`` from the batched torch simulator after transfer (``on_after_batch_transfer``).

Checks: which rows are deferred, that the device ``lq`` equals the worker ``lq`` where the
simulator is deterministic (MRI k-space) and matches it in distribution where it is not (CT,
PET), mixed-channel batches, a training run on the CPU, and the option's one-line error."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from medrestore.datasets.datamodule import MultiTaskDataModule
from medrestore.datasets.pairs import (DEVICE_DEGRADE, TrainPatches, degrade_on_device, load_sets,
                                       normalise_sets)
from medrestore.errors import ConfigError
from medrestore.io.hdf5 import PairWriter
from medrestore.modules.restoration import RestorationModule
from medrestore.sample import Normalisation, collate_samples, make_meta

HU = Normalisation(-1024, 3072, "HU").to_dict()
MR = Normalisation(0, 1000, "a.u.").to_dict()
SUV = Normalisation(0, 10, "SUV").to_dict()
U8 = Normalisation(0, 255, "8-bit").to_dict()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("devdeg") / "mix.h5"
    yy, xx = np.mgrid[:48, :48] - 23.5
    body = np.where(yy ** 2 + xx ** 2 < 22 ** 2, 40, -1000).astype(np.int16)[None]
    with PairWriter(path) as w:
        w.add(None, body, task="ct_denoise", key="ct/clean", split="train", storage="physical",
              meta=make_meta("ct_denoise", normalisation=HU, spacing=[0.8, 0.8],
                             simulator={"name": "ct_low_dose", "params": {"dose_factor": 0.25}}))
        mr = (200 + 300 * np.sin(xx / 5) ** 2 + 100 * (yy > 0)).astype(np.float32)[None]
        w.add(None, mr, task="mri_sr", key="mr/clean", split="train", storage="physical",
              meta=make_meta("mri_sr", normalisation=MR, simulator={"name": "mri_kspace", "params": {}}))
        w.add(None, np.full((1, 48, 48), 2.0, np.float32), task="pet_synthesis", key="pet/clean",
              split="train", storage="physical",
              meta=make_meta("pet_synthesis", normalisation=SUV, simulator={"name": "pet_low_count", "params": {}}))
        photo = rng.integers(0, 256, size=(3, 48, 48)).astype(np.uint8)
        w.add(None, photo, task="natural_denoise", key="img/clean", split="train", storage="physical",
              meta=make_meta("natural_denoise", normalisation=U8,
                             simulator={"name": "gaussian_noise", "params": {"sigma": 25}}))
        for split in ("val", "test"):
            w.add((body + 30).astype(np.int16), body, task="ct_denoise", key=f"ct/{split}", split=split,
                  storage="physical", meta=make_meta("ct_denoise", normalisation=HU))
    return path


def _patches(shard, degrade_on, task=None, augment=False):
    rows = [r for r in load_sets(normalise_sets([shard]), ["train"]) if task is None or r["task"] == task]
    return TrainPatches(rows, 32, augment=augment, seed=0, degrade_on=degrade_on)


def test_only_batched_simulators_are_deferred(shard):
    ds = _patches(shard, "device")
    by_task = {ds.rows[i]["task"]: ds[(i, 7)] for i in range(len(ds))}
    for task in ("ct_denoise", "mri_sr", "pet_synthesis"):
        s = by_task[task]
        assert torch.isnan(s["lq"]).all() and torch.isfinite(s["gt"]).all()
        d = s["meta"][DEVICE_DEGRADE]
        assert d["simulator"] == s["meta"]["simulator"]["name"] and isinstance(d["seed"], int)
    assert by_task["ct_denoise"]["meta"][DEVICE_DEGRADE]["params"]["dose_factor"] == 0.25
    photo = by_task["natural_denoise"]                        # no torch version: the worker's
    assert DEVICE_DEGRADE not in photo["meta"] and torch.isfinite(photo["lq"]).all()
    worker = _patches(shard, "worker")
    assert all(DEVICE_DEGRADE not in worker[(i, 7)]["meta"] for i in range(len(worker)))


def _device_lq(ds, draws):
    batch = collate_samples([ds[(0, d)] for d in draws])
    out = degrade_on_device(batch)
    assert torch.isfinite(out["lq"]).all()
    return out["lq"], out["gt"]


def test_device_lq_equals_worker_lq_for_deterministic_mri(shard):
    draws = range(6)
    dev_lq, dev_gt = _device_lq(_patches(shard, "device", "mri_sr"), draws)
    worker = _patches(shard, "worker", "mri_sr")
    ref = torch.stack([worker[(0, d)]["lq"] for d in draws])
    assert torch.equal(dev_gt, torch.stack([worker[(0, d)]["gt"] for d in draws]))   # same crops
    assert (dev_lq - ref).abs().max() < 1e-5


@pytest.mark.parametrize("task", ["ct_denoise", "pet_synthesis"])
def test_device_lq_statistics_match_worker_path(shard, task):
    draws = range(48)
    dev_lq, gt = _device_lq(_patches(shard, "device", task), draws)
    worker = _patches(shard, "worker", task)
    ref = torch.stack([worker[(0, d)]["lq"] for d in draws])
    ref_gt = torch.stack([worker[(0, d)]["gt"] for d in draws])
    assert torch.equal(gt, ref_gt)
    inner = (slice(None), 0, slice(8, 24), slice(8, 24))      # inside the body of every crop
    dev_err, ref_err = (dev_lq - gt)[inner], (ref - gt)[inner]
    assert ref_err.std() > 1e-3                                # real noise at this window
    assert dev_err.std().item() == pytest.approx(ref_err.std().item(), rel=0.1)
    assert abs(dev_err.mean().item() - ref_err.mean().item()) < 0.2 * ref_err.std().item()


def test_device_degrade_is_reproducible_and_fills_replicated_channels(shard):
    ds = _patches(shard, "device", augment=True)
    samples = [ds[(i, 3)] for i in range(len(ds))]
    batch = collate_samples(samples)                          # CT / MR / PET replicated to 3
    a, b = degrade_on_device(batch), degrade_on_device(batch)
    assert torch.equal(a["lq"], b["lq"]) and torch.isfinite(a["lq"]).all()
    for i, s in enumerate(samples):
        if s["gt"].shape[0] == 1:
            assert torch.equal(a["lq"][i, 0], a["lq"][i, 2])
    assert torch.isnan(batch["lq"]).any()                     # the input batch is not modified
    plain = {"lq": torch.zeros(1), "meta": [{}]}
    assert degrade_on_device(plain) is plain


class _Seen(RestorationModule):
    def training_step(self, batch, batch_idx):
        self.seen = batch["lq"].detach().clone()
        return super().training_step(batch, batch_idx)


def test_training_runs_with_degrade_on_device(shard):
    torch.manual_seed(0)
    dm = MultiTaskDataModule([str(shard)], patch_size=32, batch_size=4, samples_per_epoch=8,
                             degrade_on="device", augment=True)
    model = _Seen({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3},
                  {"_target_": "torch.optim.Adam", "lr": 1e-3})
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                        num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model.seen.shape == (4, 3, 32, 32) and torch.isfinite(model.seen).all()


def test_degrade_on_is_checked():
    with pytest.raises(ConfigError, match=r"data.degrade_on='gpu'; expected one of worker, device"):
        MultiTaskDataModule(["x.h5"], degrade_on="gpu")


@pytest.mark.parametrize("data", ["demo", "tat", "datprl_9task"])
def test_every_data_config_has_the_option(tmp_path, shard, data):
    from hydra.utils import instantiate
    from conftest import compose

    cfg = compose("train", [f"data={data}", f"data.sets=[{shard}]", "data.weights=null",
                            "data.text_cache=null", "data.degrade_on=device"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.degrade_on == "device"
    assert compose("train", [f"data={data}"], tmp_path).data.degrade_on == "worker"
