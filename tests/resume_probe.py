"""Run by tests/test_resume.py: train the tiny config through ``medrestore.cli.train.train`` and
save the final weights, or die by SIGKILL once the checkpoint of a given step is written.

Usage: python tests/resume_probe.py OUT_DIR SHARD [--kill-at-step K] [hydra overrides...]

Writes OUT_DIR/run/ (the run directory) and, unless killed, OUT_DIR/result.pt with the
``net`` and ``net_ema`` state dicts, ``global_step``, the optimiser's step counts and the
learning rate."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch

from conftest import compose, tiny_overrides

#: EMA on, the warm-up cosine schedule of conf/model/restormer.yaml, a fixed seed
RESUME_OVERRIDES = ["+model.ema={decay: 0.9}", "model.scheduler.warmup_steps=3", "seed=7",
                    "trainer.deterministic=true", "test=false"]


class SigkillAt(L.Callback):
    """SIGKILL this process at the start of the batch after ``step``: that step's checkpoints
    are on disk, and nothing gets a chance to clean up (like a lost node)."""

    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(out: Path, shard: str, args: list[str]) -> None:
    from omegaconf import open_dict

    from medrestore.cli.train import train

    kill_at = None
    if args[:1] == ["--kill-at-step"]:
        kill_at, args = int(args[1]), args[2:]
    cfg = compose("train", tiny_overrides(Path(shard)) + RESUME_OVERRIDES + args, out / "run")
    if kill_at is not None:
        with open_dict(cfg):
            cfg.callbacks.sigkill = {"_target_": "resume_probe.SigkillAt", "step": kill_at}
    _, objs = train(cfg)
    trainer, model = objs["trainer"], objs["model"]
    opt = trainer.optimizers[0]
    torch.save({"net": model.net.state_dict(), "net_ema": model.net_ema.state_dict(),
                "ema_updates": int(model.ema_updates), "global_step": trainer.global_step,
                "optimizer_steps": sorted({int(s["step"]) for s in opt.state.values()}),
                "lr": opt.param_groups[0]["lr"]}, out / "result.pt")


def run_here(out: Path, shard: Path, args: list[str]) -> dict:
    """:func:`main` in the calling process, returning ``result.pt``. The runs it is compared
    with are subprocesses with one OpenMP thread (tests/conftest.py): the same thread count
    here, so the float summation order, and with it every bit of the weights, is the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", threads)))
    try:
        main(out, str(shard), args)
    finally:
        torch.set_num_threads(threads)
    return torch.load(out / "result.pt", weights_only=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
