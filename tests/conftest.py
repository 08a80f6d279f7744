"""Shared fixtures: small generated shards and composed Hydra configs (CPU, tiny models)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Subprocesses (CLI runs, DDP ranks, the killed runs of the resume tests) run several at a time
# on 2 cores: one OpenMP thread each, or their spinning threads starve each other (the kill -9
# fixture took 57 s instead of 19). This process keeps the thread count it had.
import torch  # noqa: E402  (after the offline settings, before the thread setting)

_THREADS = torch.get_num_threads()
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(_THREADS)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

#: tasks of the generated shard: 1-channel medical and 3-channel natural / remote sensing
TOY_TASKS = ("ct_denoise", "natural_denoise", "rs_sr")


def _smooth_image(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    """Band-limited random image in [0, 1] (sum of a few random sinusoids)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((c, h, w))
    for _ in range(4):
        fy, fx, ph = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.3, 1.0, size=(c, 1, 1))
        img += amp * np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
    img -= img.min()
    return (img / img.max()).astype(np.float32)


def write_toy_shard(path: Path, seed: int = 0, sizes=((48, 48), (40, 56)), per_split=(4, 1, 1),
                    tasks=TOY_TASKS) -> Path:
    """A shard with Gaussian-noise lq/gt pairs for ``tasks`` and train/val/test splits."""
    from medrestore.io.hdf5 import PairWriter
    from medrestore.registry import get_task
    from medrestore.sample import make_meta

    rng = np.random.default_rng(seed)
    with PairWriter(path) as w:
        for task in tasks:
            c = get_task(task).channels
            for split, n in zip(("train", "val", "test"), per_split):
                for i in range(n):
                    h, wd = sizes[i % len(sizes)]
                    gt = _smooth_image(rng, c, h, wd)
                    lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
                    key = f"toy.{task}.{split}{i}"
                    w.add(lq, gt, task=task, key=key, split=split,
                          meta=make_meta(task, source="generated", split=split))
    return path


def tiny_restormer_checkpoint(path: Path, identity: bool = True) -> Path:
    """A 3-channel tiny Restormer checkpoint without training: the identity network (zero output
    convolution: the global residual passes the input) or its seeded random initialisation."""
    import lightning as L

    from medrestore.modules.restoration import RestorationModule

    torch.manual_seed(0)
    model = RestorationModule({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3},
                              {"_target_": "torch.optim.Adam", "lr": 1e-3})
    if identity:
        torch.nn.init.zeros_(model.net.output.weight)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def toy_shard(tmp_path_factory) -> Path:
    return write_toy_shard(tmp_path_factory.mktemp("shards") / "toy.h5")


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a real config with Hydra and give it a run directory, as the CLI would."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = hcompose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        del cfg.hydra
    return cfg


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious checkpoint does): ``torch.save`` it
    inside a checkpoint, and ``marker`` appears if anything ever unpickles it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_overrides(shard: Path) -> list[str]:
    return [
        "model=restormer_tiny", "trainer=cpu", "logger=csv", "extras.print_config=false",
        f"data.sets=[{shard}]", "data.patch_size=32", "data.batch_size=6",
        "data.samples_per_epoch=48", "data.num_workers=0", "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "~callbacks.model_summary",
        "validate_best=false",  # the extra validation pass: tests that read results_val ask for it
    ]
