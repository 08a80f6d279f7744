"""Pieces shared by the train and eval entry points."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from medrestore.utils.report import format_table, results_rows, write_results
from medrestore.utils.runtime import rank_zero_info


def build_trainer(cfg: Any):
    from hydra.utils import instantiate

    from medrestore.utils.config import instantiate_dict

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return trainer, callbacks, loggers


def report(trainer: Any, datamodule: Any, stage: str, out_dir: str | Path, title: str) -> list[dict]:
    """Print and save the per-task table from the metrics the test loop logged (rank zero)."""
    if trainer.global_rank != 0:
        return []
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    counts = Counter(r["task"] for r in datamodule.dataset(stage).rows)
    rows = results_rows(metrics, stage, counts)
    if rows:
        protocol = getattr(trainer.lightning_module, "protocol_override", None)
        print("\n" + format_table(rows, title, protocol))
        path = write_results(rows, out_dir, f"results_{stage}")
        rank_zero_info(f"results written to {path}")
    return rows
