"""Lightning callbacks of our own (configured in ``conf/callbacks/``)."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that never ranks a non-finite score.

    Lightning turns a NaN monitored value into ``-inf`` but still keeps it while fewer than
    ``save_top_k`` checkpoints exist, so a run whose validation is NaN from the start would
    test (and hand out) a NaN model as its "best". Here a NaN / inf score is never a top-k
    candidate (``last.ckpt`` and step/time checkpoints are still written).

    ``last.ckpt`` is the state at the latest validation, always: Lightning 2.6 writes it at a
    validation only when a top-k checkpoint was written too, so a run whose score stopped
    improving (or is NaN) would resume from a stale ``last.ckpt``."""

    def _ensure_last(self, trainer: Any) -> None:
        # skipped when this step was saved already (then last.ckpt was written with it)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def check_monitor_top_k(self, trainer: Any, current: Any = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            rank_zero_warn(f"{self.monitor} is {float(current)} at step {trainer.global_step}: "
                           "this checkpoint is not a candidate for the best model")
            return False
        return super().check_monitor_top_k(trainer, current)
