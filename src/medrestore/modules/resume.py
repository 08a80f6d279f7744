"""Exact resume: the global random number generators go into every checkpoint.

The data side of an exact resume (the position inside the epoch) is the training loader's own
state (:class:`medrestore.datasets.datamodule.ResumableLoader`); the weights, the EMA copy, the
optimiser and the scheduler are Lightning's. :class:`RngState` adds the global RNG states
(torch CPU, the current CUDA device, numpy, python ``random``), so stochastic layers (dropout,
DATPRL's fusion attention) continue as in the uninterrupted run.

States are stored as tensors, ints, floats and lists only, so a checkpoint loads with
``torch.load(weights_only=True)``. Under DDP the checkpoint holds rank 0's states and every
rank restores them: ranks share the seed (``seed_everything``) and run the same layers, so
their global states are the same.

Also here: ``auto_resume`` (:func:`find_resume_checkpoint`: the newest ``last.ckpt`` /
Lightning ``hpc_ckpt_*.ckpt`` of a run directory; :func:`config_differences`: what changed
against the run's ``config_resolved.yaml``) and :class:`CheckpointOnSignal` (SLURM's warning
signal -> ``last.ckpt`` at the next step, requeue, exit).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The global RNG states as checkpoint-safe values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "state": list(py_state),
                        "gauss_next": gauss_next}}
    # only a device already in use: querying CUDA would otherwise initialise it
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_states(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RngState(L.Callback):
    """Saves the global RNG states in checkpoints and restores them when a fit resumes.

    They are restored at ``on_train_start``, after everything a resumed fit does before its
    first batch (building the optimiser, creating the train iterator) and that the
    uninterrupted run did before the checkpoint was written."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None


# ------------------------------------------------------------------------- auto-resume
#: top-level keys that may differ between the attempts of one run: they say how to start or
#: where the run is, not what to train (``paths`` differ with the node / working directory)
RESUME_IGNORED_KEYS = ("auto_resume", "auto_resume_force", "ckpt_path", "run_name", "paths",
                       "extras", "hydra", "validate_best")


def find_resume_checkpoint(ckpt_dir: str | Path, root_dir: str | Path) -> Path | None:
    """The newest (by modification time) of ``<ckpt_dir>/last.ckpt`` and Lightning's SLURM
    ``<root_dir>/hpc_ckpt_<n>.ckpt`` files, or None when neither exists."""
    found = [p for p in [Path(ckpt_dir) / "last.ckpt", *Path(root_dir).glob("hpc_ckpt_*.ckpt")]
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_differences(previous: Mapping[str, Any], current: Mapping[str, Any],
                       ignored: tuple[str, ...] = RESUME_IGNORED_KEYS) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (plain dicts), leaving out
    the top-level ``ignored`` keys."""
    a = {k: v for k, v in _flatten(previous).items() if k.split(".")[0] not in ignored}
    b = {k: v for k, v in _flatten(current).items() if k.split(".")[0] not in ignored}
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


# ------------------------------------------------------------- checkpoint on a signal
class CheckpointOnSignal(L.Callback):
    """Writes ``last.ckpt`` when the process gets ``signal_name`` (SLURM: ``--signal=USR1@90``),
    requeues the SLURM job (``scontrol requeue``, rank 0) and stops with exit code 0.

    The handler only sets a flag; the checkpoint is written at the next batch boundary
    (``on_train_batch_end``, after the optimiser step and the EMA update), where it is as
    exact as a step checkpoint — a checkpoint written inside the handler (Lightning's own
    ``hpc_ckpt``) can fall in the middle of a step. Under DDP the ranks agree on the flag
    every step (one boolean all-reduce), so all of them save at the same step.

    Installed before Lightning registers its SLURM handlers, so Lightning's own SIGUSR1
    handler (``hpc_ckpt_*.ckpt`` written inside the handler) is not installed for this signal.
    """

    def __init__(self, dirpath: str | Path, signal_name: str = "SIGUSR1",
                 requeue: bool = True) -> None:
        import signal

        self.dirpath = Path(dirpath)
        self.signum = getattr(signal, str(signal_name).upper(), None)
        if not isinstance(self.signum, signal.Signals):
            from medrestore.errors import ConfigError

            raise ConfigError(f"requeue_signal={signal_name!r} is not a signal name "
                              "(e.g. SIGUSR1)")
        self.requeue = requeue
        self.received = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import signal
        import threading

        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import signal
        import threading

        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        import os

        from lightning.pytorch.utilities import rank_zero_info

        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(f"{self.signum.name}: checkpoint {path} written at step "
                       f"{trainer.global_step}; resume with auto_resume=true")
        if self.requeue and trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            _slurm_requeue()
        raise SystemExit(0)


def _slurm_requeue() -> None:
    import os
    import shutil
    import subprocess

    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    if shutil.which("scontrol") is None:
        rank_zero_warn(f"no scontrol here: SLURM job {job} is not requeued")
        return
    rc = subprocess.call(["scontrol", "requeue", job])
    (rank_zero_info if rc == 0 else rank_zero_warn)(
        f"scontrol requeue {job}: {'done' if rc == 0 else f'failed (exit {rc})'}")
