"""Exact resume: a run SIGKILLed after a checkpoint and resumed from its last.ckpt ends with
the same weights (net and EMA, max |Δw| = 0) as the run that was never interrupted."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import REPO
from resume_probe import run_here as _probe
from medrestore.datasets.datamodule import MultiTaskDataModule, ResumableLoader
from medrestore.datasets.samplers import BalancedBatchSampler
from medrestore.modules.resume import RngState, rng_states, set_rng_states

PROBE = REPO / "tests" / "resume_probe.py"
STEP_CKPT = "+callbacks.model_checkpoint.every_n_train_steps=5"
# tiny config: 2 epochs of 8 steps. A step checkpoint waits for the first val/psnr (the
# monitor), so the mid-epoch kill is at step 10 = batch 2 of epoch 1; step 8 is an epoch end.
SCENARIOS = {"mid_epoch": (10, [STEP_CKPT]), "epoch_end": (8, []),
             "mid_epoch_workers": (10, [STEP_CKPT, "data.num_workers=1"])}




@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, toy_shard):
    """The interrupted runs, SIGKILLed concurrently, and the uninterrupted reference."""
    root = tmp_path_factory.mktemp("resume")
    procs = {name: subprocess.Popen(
        [sys.executable, str(PROBE), str(root / name), str(toy_shard), "--kill-at-step",
         str(step), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, (step, args) in SCENARIOS.items()}
    reference = _probe(root / "uninterrupted", toy_shard, [])
    for name, p in procs.items():
        log = p.communicate(timeout=300)[0]
        assert p.returncode == -9, f"{name}: {log[-3000:]}"
    return root, reference


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _resume_and_compare(name: str, killed_runs, toy_shard) -> dict:
    root, ref = killed_runs
    ckpt = root / name / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)   # checkpoint-safe types only
    step, args = SCENARIOS[name]
    assert state["global_step"] == step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _probe(root / f"{name}_resumed", toy_shard, [*args, f"ckpt_path={ckpt}"])
    assert not [w for w in caught if "before the epoch ended" in str(w.message)]
    assert _max_abs_diff(ref["net"], res["net"]) == 0.0
    assert _max_abs_diff(ref["net_ema"], res["net_ema"]) == 0.0
    for key in ("global_step", "optimizer_steps", "ema_updates", "lr"):
        assert res[key] == ref[key], key
    assert ref["global_step"] == 16 and ref["optimizer_steps"] == [16]
    return state


@pytest.mark.slow
def test_kill9_mid_epoch_resume_is_exact(killed_runs, toy_shard):
    state = _resume_and_compare("mid_epoch", killed_runs, toy_shard)
    assert state["MultiTaskDataModule"] == {"train_loader": {"epoch": 1, "batches": 2}}
    assert set(state["callbacks"]["RngState"]) >= {"torch", "numpy", "python"}


@pytest.mark.slow
def test_kill9_epoch_end_resume_is_exact(killed_runs, toy_shard):
    state = _resume_and_compare("epoch_end", killed_runs, toy_shard)
    assert state["MultiTaskDataModule"] == {"train_loader": {"epoch": 0, "batches": 8}}


@pytest.mark.slow
def test_kill9_resume_with_a_worker_matches_the_run_without(killed_runs, toy_shard):
    _resume_and_compare("mid_epoch_workers", killed_runs, toy_shard)


# ------------------------------------------------------------------ the pieces, in-process
def test_sampler_resume_skips_exactly_the_taken_batches():
    groups = [list(range(0, 7)), list(range(7, 20)), list(range(20, 23))]
    for rank in range(2):
        s = BalancedBatchSampler(groups, 6, rank=rank, world_size=2, seed=3, num_batches=5)
        s.set_epoch(2)
        full = list(s)
        s.resume_at(2, 3)
        assert list(s) == full[3:]
        assert list(s) == full                       # used once
        s.resume_at(1, 3)                            # another epoch: starts at the beginning
        assert list(s) == full
    with pytest.raises(Exception, match="cannot resume at batch 6"):
        s.resume_at(2, 6)


def test_loader_counts_taken_batches_and_lightning_reaches_the_sampler(toy_shard):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dm = MultiTaskDataModule([str(toy_shard)], patch_size=16, batch_size=6, samples_per_epoch=30)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    _set_sampler_epoch(loader, 4)                    # what Lightning does before each epoch
    assert loader.batch_sampler.epoch == 4
    it = iter(loader)
    full = [next(it)["lq"] for _ in range(5)]
    _set_sampler_epoch(loader, 4)
    it = iter(loader)
    next(it), next(it)
    assert loader.state_dict() == {"epoch": 4, "batches": 2}
    dm2 = MultiTaskDataModule([str(toy_shard)], patch_size=16, batch_size=6, samples_per_epoch=30)
    dm2.load_state_dict({"train_loader": loader.state_dict()})
    resumed = dm2.train_dataloader()
    _set_sampler_epoch(resumed, 4)
    rest = [b["lq"] for b in resumed]
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(full[2:], rest))
    assert resumed.state_dict() == {"epoch": 4, "batches": 5}
    # a test / validate run restores the DataModule's state too: it must not move training
    from types import SimpleNamespace

    dm3 = MultiTaskDataModule([str(toy_shard)], patch_size=16, batch_size=6, samples_per_epoch=30)
    dm3.trainer = SimpleNamespace(state=SimpleNamespace(fn="test"), global_rank=0, world_size=1)
    dm3.load_state_dict({"train_loader": {"epoch": 0, "batches": 4}})
    assert len(list(dm3.train_dataloader())) == 5
    # iterating never touches the global torch RNG (restored from checkpoints)
    before = torch.get_rng_state()
    list(resumed)
    assert torch.equal(before, torch.get_rng_state())


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()                               # a cached gaussian in numpy's state
    torch.save({"rng": rng_states()}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_states(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


class _Dropout(L.LightningModule):
    """A stochastic layer fed by the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 4)
        self.drop = torch.nn.Dropout(0.5)

    def training_step(self, batch, _):
        x = batch["lq"].mean(1).flatten(1)[:, :16]
        return self.drop(self.lin(x)).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _fit_dropout(root: Path, shard, ckpt=None, callbacks=()) -> dict:
    L.seed_everything(0)
    dm = MultiTaskDataModule([str(shard)], patch_size=16, batch_size=6, samples_per_epoch=24)
    model = _Dropout()
    saver = L.pytorch.callbacks.ModelCheckpoint(root, filename="{step}", every_n_train_steps=3,
                                                save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[saver, *callbacks],
                        use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_dropout_continues_identically_after_resume(tmp_path, toy_shard):
    full = _fit_dropout(tmp_path / "a", toy_shard, callbacks=[RngState()])
    ckpt = tmp_path / "a" / "step=3.ckpt"                # mid-epoch (4 steps per epoch)
    resumed = _fit_dropout(tmp_path / "b", toy_shard, ckpt, callbacks=[RngState()])
    assert _max_abs_diff(full, resumed) == 0.0
    # without the RNG states the dropout masks after the resume differ
    plain = _fit_dropout(tmp_path / "c", toy_shard, ckpt)
    assert _max_abs_diff(full, plain) > 0.0
