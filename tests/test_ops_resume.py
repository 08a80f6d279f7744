"""Experiment operations: self-describing checkpoints, ``run_name`` / ``auto_resume`` and a
simulated SLURM requeue (SIGUSR1 -> last.ckpt at the next step -> exit -> re-launch with the
same run directory and ``auto_resume=true`` -> the weights of the uninterrupted run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import CONF, REPO, compose, tiny_overrides
from resume_probe import run_here as _probe
from medrestore.errors import ConfigError
from medrestore.modules.checkpoint import checkpoint_config, checkpoint_normalisation
from medrestore.modules.resume import config_differences, find_resume_checkpoint

SIGUSR1_AT_STEP = 5     # the signal arrives at the start of step 5's batch; saved after it
SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_JOB_NAME": "medrestore", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}




class SignalAt(L.Callback):
    """Send this process ``SIGUSR1`` at the start of the batch after ``step`` (what
    ``sbatch --signal=USR1@90`` does, at a reproducible moment)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_sigusr1_requeue_then_auto_resume_is_exact(tmp_path, toy_shard, capsys):
    out = tmp_path / "job"
    env = {**os.environ, **SLURM_ENV, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run([sys.executable, __file__, str(out), str(toy_shard),
                            "auto_resume=true"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "SLURM job 4242 is not requeued" in log    # requeue tried (no scontrol here)
    assert not (out / "result.pt").exists()            # it stopped early
    ckpt = out / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == SIGUSR1_AT_STEP + 1
    assert not list((out / "run").glob("hpc_ckpt_*.ckpt"))  # ours, not Lightning's handler
    assert find_resume_checkpoint(ckpt.parent, out / "run") == ckpt
    resumed = _probe(out, toy_shard, ["auto_resume=true"])
    ref = _probe(tmp_path / "uninterrupted", toy_shard, [])
    assert _max_abs_diff(ref["net"], resumed["net"]) == 0.0
    assert _max_abs_diff(ref["net_ema"], resumed["net_ema"]) == 0.0
    for key in ("global_step", "optimizer_steps", "lr"):
        assert resumed[key] == ref[key], key
    # the final checkpoint describes itself
    cfg = checkpoint_config(ckpt)
    assert cfg["auto_resume"] is True and cfg["model"]["net"]["name"] == "restormer_tiny"
    norm = checkpoint_normalisation(ckpt)
    assert set(norm) == {"ct_denoise", "natural_denoise", "rs_sr"}
    assert set(norm["ct_denoise"]) == {"low", "high", "unit", "kind"}
    # a different config resuming into the same run directory names the keys
    with pytest.raises(SystemExit) as exc:                  # one line, exit 2
        _probe(out, toy_shard, ["auto_resume=true", "seed=8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "error: auto_resume: the config differs" in err
    assert "in: data.seed, seed;" in err and "auto_resume_force=true" in err
    _probe(out, toy_shard, ["auto_resume=true", "auto_resume_force=true", "seed=8",
                            "trainer.max_epochs=3"])
    assert (out / "run" / "config_resolved.1.yaml").is_file()
    assert "seed: 8" in (out / "run" / "config_resolved.yaml").read_text()


@pytest.mark.slow
def test_step_checkpoints_and_self_description(tmp_path, toy_shard):
    """``callbacks.model_checkpoint.every_n_train_steps`` writes step checkpoints; every one
    carries the resolved config and the data's windows, read back weights_only."""
    from medrestore.cli.train import train

    cfg = compose("train", tiny_overrides(toy_shard) + [
        "trainer.max_epochs=1", "test=false", "data.samples_per_epoch=24",
        "+callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.save_top_k=-1", "callbacks.model_checkpoint.monitor=null",
        "callbacks.model_checkpoint.filename=step_\\{step\\}"], tmp_path / "run")
    train(cfg)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*.ckpt"))
    assert [p.name for p in ckpts] == ["step_2.ckpt", "step_4.ckpt"]
    for p in ckpts + [tmp_path / "run" / "checkpoints" / "last.ckpt"]:
        assert checkpoint_config(p)["data"]["batch_size"] == 6
        norm = checkpoint_normalisation(p)
        assert norm["ct_denoise"]["unit"] == "HU" or norm["ct_denoise"]["high"] > norm["ct_denoise"]["low"]
    old = tmp_path / "old.ckpt"
    state = torch.load(ckpts[0], weights_only=True)
    del state["medrestore_config"]
    torch.save(state, old)
    with pytest.raises(ConfigError, match="no 'medrestore_config'"):
        checkpoint_config(old)


def test_find_resume_checkpoint_takes_the_newest(tmp_path):
    assert find_resume_checkpoint(tmp_path / "checkpoints", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"a"), hpc.write_bytes(b"b")
    os.utime(last, ns=(1, 2_000_000_000)), os.utime(hpc, ns=(1, 1_000_000_000))
    assert find_resume_checkpoint(last.parent, tmp_path) == last
    os.utime(hpc, ns=(1, 3_000_000_000))
    assert find_resume_checkpoint(last.parent, tmp_path) == hpc


def test_config_differences_ignore_how_to_start():
    a = {"seed": 1, "ckpt_path": None, "auto_resume": True, "paths": {"output_dir": "x"},
         "model": {"lr": 1.0, "b": [1, 2]}}
    b = {"seed": 1, "ckpt_path": "y", "auto_resume": False, "paths": {"output_dir": "z"},
         "model": {"lr": 2.0, "b": [1, 2], "new": 0}}
    assert config_differences(a, b) == ["model.lr", "model.new"]


def test_run_name_sets_the_run_and_sweep_dirs():
    import medrestore.cli.train  # noqa: F401
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = hcompose("train", ["run_name=4242", "task_name=t"], return_hydra_config=True)
        default = hcompose("train", ["task_name=t"], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    assert OmegaConf.select(cfg, "hydra.run.dir").endswith("t/runs/4242")
    assert OmegaConf.select(cfg, "hydra.sweep.dir").endswith("t/multiruns/4242")
    HydraConfig().set_config(default)
    assert OmegaConf.select(default, "hydra.run.dir").split("/runs/")[1][:2] == "20"


def test_bad_requeue_signal_is_a_config_error(tmp_path):
    from medrestore.modules.resume import CheckpointOnSignal

    with pytest.raises(ConfigError, match="SIGNOPE"):
        CheckpointOnSignal(tmp_path, "SIGNOPE")


if __name__ == "__main__":  # the interrupted job of the requeue test
    import medrestore.cli.common as common

    _build = common.build_trainer

    def _build_with_signal(cfg):
        trainer, callbacks, loggers = _build(cfg)
        trainer.callbacks.append(SignalAt(SIGUSR1_AT_STEP))
        return trainer, callbacks, loggers

    common.build_trainer = _build_with_signal
    sys.path.insert(0, str(REPO / "tests"))
    from resume_probe import main

    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
