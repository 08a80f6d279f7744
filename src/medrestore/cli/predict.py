"""``medrestore-predict ckpt_path=... input=... output=... [task=...]``: restore files.

    medrestore-predict ckpt_path=run/checkpoints/last.ckpt input=ld_series/ output=restored/
    medrestore-predict ckpt_path=... input=photos/ output=out/ task=derain tile=256 tta=flip

A thin Hydra entry over :mod:`medrestore.inference.predict` (options: conf/predict.yaml).
Outputs are written in the input's format with its metadata; the run folder gets
``predictions.csv`` (one row per input). A file that fails is one line and the others are
still restored; the exit code is 2 if any failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper

#: options of conf/predict.yaml and what they must be
_CHOICES = {"tta": ("none", "flip", "d4"), "blend": ("gaussian", "constant")}


def _check(cfg: DictConfig) -> dict[str, Any]:
    """One line per bad option, before the checkpoint is read."""
    from medrestore.errors import ConfigError

    for key in ("ckpt_path", "input", "output"):
        if cfg.get(key) in (None, ""):
            raise ConfigError(f"{key}: required (medrestore-predict ckpt_path=... input=... output=...)")
    if cfg.get("task") is not None:
        from medrestore.registry import get_task

        get_task(str(cfg.task))  # one line naming the tasks
    if not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    for key, choices in _CHOICES.items():
        if str(cfg.get(key)) not in choices:
            raise ConfigError(f"{key}={cfg.get(key)!r}; expected one of {', '.join(choices)}")
    ints = {}
    for key, low in (("scale", 1), ("overlap", 0), ("batch_size", 1), ("min_tile", 8)):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"{key}={v!r}; expected an integer >= {low}")
        ints[key] = v
    tile = cfg.get("tile")
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 8):
        raise ConfigError(f"tile={tile!r}; expected null or an integer >= 8")
    norm = None
    if cfg.get("window") is not None:
        w = list(cfg.window)
        try:
            lo, hi = (float(v) for v in w)
        except (TypeError, ValueError):
            raise ConfigError(f"window={w}; expected [low, high]") from None
        if not hi > lo:
            raise ConfigError(f"window={w}; expected low < high")
        norm = {"low": lo, "high": hi, "unit": str(cfg.get("unit") or "")}
    return {"normalisation": norm, "tile": tile, **ints}


@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    from medrestore.inference.predict import (PredictError, plan, predict_items, summary_line,
                                              write_summary)
    from medrestore.inference.restorer import Restorer

    opts = _check(cfg)
    items = plan(str(cfg.input), str(cfg.output))
    out_dir = Path(cfg.paths.output_dir)
    print_config(cfg, out_dir / "config_resolved.yaml")
    restorer = Restorer.from_checkpoint(str(cfg.ckpt_path), device=str(cfg.device))
    rank_zero_info(f"restoring {len(items)} input(s) with {restorer.name} on {restorer.device}")
    t0 = time.perf_counter()
    results = predict_items(
        restorer, items, cfg.get("task"), overwrite=bool(cfg.overwrite),
        progress=bool(cfg.progress), normalisation=opts["normalisation"], scale=opts["scale"],
        tile=opts["tile"], overlap=opts["overlap"], blend=str(cfg.blend), min_tile=opts["min_tile"],
        tta=str(cfg.tta), batch_size=opts["batch_size"], amp=bool(cfg.amp),
        reader=cfg.get("reader"))
    seconds = time.perf_counter() - t0
    table = write_summary(results, out_dir / "predictions.csv")
    line = summary_line(results, seconds)
    print(line)
    rank_zero_info(f"per-input summary: {table}")
    if any(r.status != "ok" for r in results):
        raise PredictError(line)
    return {"results": results, "seconds": seconds, "restorer": restorer}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
