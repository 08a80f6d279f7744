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
"""

from __future__ import annotations

import random
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
