"""Pieces shared by the train and eval entry points."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from medrestore.utils.report import COLUMNS, format_table, results_rows, write_results
from medrestore.utils.runtime import rank_zero_info


def build_trainer(cfg: Any, loggers: list[Any] | None = None, extra_callbacks: list[Any] = ()):
    """The configured Trainer; ``loggers`` given (possibly ``[]``) are used instead of building
    ``cfg.logger`` (one logger set over several evaluations), ``extra_callbacks`` are added."""
    from hydra.utils import instantiate

    from medrestore.utils.config import instantiate_dict

    callbacks = instantiate_dict(cfg.get("callbacks"), "callbacks") + list(extra_callbacks)
    if loggers is None:
        loggers = instantiate_dict(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return trainer, callbacks, loggers


def report(trainer: Any, datamodule: Any, stage: str, out_dir: str | Path, title: str,
           table_key: str | None = None, loggers: list[Any] | None = None) -> list[dict]:
    """Print and save the per-task table from the metrics the test loop logged (rank zero);
    log it as ``table_key`` (default ``<stage>/results``) to ``loggers`` (default: the
    trainer's)."""
    if trainer.global_rank != 0:
        return []
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    module = trainer.lightning_module
    if callable(getattr(module, "results_rows", None)):  # analysis families: their own table
        return _report_rows(module.results_rows(metrics, stage), trainer, stage, out_dir, title,
                            table_key, loggers)
    counts = Counter(r["task"] for r in datamodule.dataset(stage).rows)
    rows = results_rows(metrics, stage, counts)
    if rows:
        protocol = getattr(trainer.lightning_module, "protocol_override", None)
        print("\n" + format_table(rows, title, protocol))
        path = write_results(rows, out_dir, f"results_{stage}")
        rank_zero_info(f"results written to {path}")
        log_results_table(trainer.loggers if loggers is None else loggers, rows,
                          table_key or f"{stage}/results", trainer.global_step)
    return rows


def _report_rows(rows: list[dict], trainer: Any, stage: str, out_dir: str | Path, title: str,
                 table_key: str | None, loggers: list[Any] | None) -> list[dict]:
    """The table of a module that defines ``results_rows(metrics, stage)`` (segmentation,
    detection, grading): printed as Markdown, written as ``results_<stage>.csv/json``, logged."""
    import json

    from medrestore.utils.report import markdown_table, write_csv

    if not rows:
        return rows
    columns = list(dict.fromkeys(c for r in rows for c in r))
    print(f"\n{title}\n" + markdown_table(rows, columns))
    out = Path(out_dir)
    path = write_csv(rows, out / f"results_{stage}.csv", columns)
    (out / f"results_{stage}.json").write_text(json.dumps(rows, indent=2))
    rank_zero_info(f"results written to {path}")
    log_results_table(trainer.loggers if loggers is None else loggers, rows,
                      table_key or f"{stage}/results", trainer.global_step, columns)
    return rows


def log_results_table(loggers: list[Any], rows: list[dict], key: str = "test/results",
                      step: int | None = None, columns: tuple[str, ...] | list[str] = COLUMNS) -> int:
    """Log rows as one table (``wandb.Table``) to every W&B logger.

    Columns are ``columns`` (default ``utils.report.COLUMNS``); a metric that was not logged
    (e.g. RMSE) is empty. Returns how many loggers took it (only loggers with ``log_table``:
    W&B)."""
    n = 0
    for lg in loggers:
        if rows and callable(getattr(lg, "log_table", None)):
            data = [[_cell(r.get(c)) for c in columns] for r in rows]
            lg.log_table(key=key, columns=list(columns), data=data, step=step)
            n += 1
    return n


def log_images(loggers: list[Any], key: str, paths: list[str | Path], captions: list[str],
               step: int | None = None) -> int:
    """Log image files (e.g. example grids) to every logger with ``log_image`` (W&B)."""
    n = 0
    for lg in loggers:
        if paths and callable(getattr(lg, "log_image", None)):
            lg.log_image(key=key, images=[str(p) for p in paths], caption=list(captions), step=step)
            n += 1
    return n


def _cell(v: Any) -> Any:
    return None if v == "" else v


def run_hyperparams(cfg: Any, model: Any) -> dict[str, Any]:
    """What loggers get as hyper-parameters: the resolved config (nested, under ``cfg``) and the
    parameter counts ``model/params_total``, ``model/params_trainable``."""
    from omegaconf import OmegaConf

    params = list(model.parameters())
    return {"cfg": OmegaConf.to_container(cfg, resolve=True),
            "model/params_total": sum(p.numel() for p in params),
            "model/params_trainable": sum(p.numel() for p in params if p.requires_grad)}
