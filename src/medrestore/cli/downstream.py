"""``medrestore-downstream downstream=<mtmed3d|tpseg> analysis_ckpt=... restore_ckpt=[...]``:
an analysis model's test metrics on clean / degraded / restored images, side by side.

    medrestore-downstream downstream=mtmed3d analysis_ckpt=runs/mtmed3d/last.ckpt \\
        restore_ckpt=[runs/tat/last.ckpt] restore_labels=[tat] limit=20

A thin Hydra entry (options: conf/downstream.yaml, conf/downstream/*.yaml) over
:mod:`medrestore.inference.downstream`. Every option is checked before any checkpoint is read;
the run dir gets ``downstream.csv`` (task, metric, one column per condition), ``downstream.json``
(the long rows) and ``downstream.md``; nothing existing is overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medrestore.errors import ConfigError
from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper

_CHOICES = {"tta": ("none", "flip", "d4"), "restore_window": ("auto", "checkpoint", "degradation")}


def _int(cfg: DictConfig, key: str, low: int, nullable: bool = False) -> int | None:
    v = cfg.get(key)
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{key}={v!r}: expected {'null or ' if nullable else ''}an integer >= {low}")
    return v


def check_options(cfg: DictConfig) -> dict[str, Any]:
    """Every option checked, one line naming the key, before any file is read."""
    from medrestore.inference.downstream import check_spec

    path = cfg.get("analysis_ckpt")
    if path in (None, "", "???"):
        raise ConfigError("analysis_ckpt: required (medrestore-downstream analysis_ckpt=... restore_ckpt=[...])")
    if not Path(str(path)).is_file():
        raise ConfigError(f"analysis_ckpt={path}: no such checkpoint file")
    raw = cfg.get("restore_ckpt") or []
    restore = [str(raw)] if isinstance(raw, str) else [str(p) for p in raw]
    for i, p in enumerate(restore):
        if not Path(p).is_file():
            raise ConfigError(f"restore_ckpt[{i}]={p}: no such checkpoint file")
    labels = cfg.get("restore_labels")
    if labels is None:
        labels = [Path(p).stem for p in restore]
        if len(set(labels)) != len(labels):  # last.ckpt of two runs: name them by their run folder
            labels = [f"{Path(p).parent.parent.name or Path(p).parent.name}_{Path(p).stem}" for p in restore]
    labels = [str(x) for x in labels]
    if len(labels) != len(restore):
        raise ConfigError(f"restore_labels: {len(labels)} label(s) for {len(restore)} restore_ckpt")
    if len(set(labels)) != len(labels) or any(not x or "/" in x for x in labels):
        raise ConfigError(f"restore_labels={labels}: expected distinct non-empty labels without '/'")
    for key, choices in _CHOICES.items():
        if str(cfg.get(key)) not in choices:
            raise ConfigError(f"{key}={cfg.get(key)!r}: expected one of {', '.join(choices)}")
    device = str(cfg.get("device"))
    if not (device in ("cpu", "auto", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"device={device!r}: expected cpu, auto, cuda or cuda:N")
    opts = {"seed": _int(cfg, "seed", 0), "limit": _int(cfg, "limit", 1, True),
            "batch_size": _int(cfg, "batch_size", 1, True)}
    tile = _int(cfg, "tile", 8, True)
    restore_opts = {"tile": tile, "overlap": _int(cfg, "overlap", 0), "tta": str(cfg.tta),
                    "batch_size": _int(cfg, "restore_batch_size", 1)}
    ds = cfg.get("downstream")
    if not isinstance(ds, DictConfig) or "kind" not in ds:
        raise ConfigError("downstream: expected a downstream config (downstream=mtmed3d or downstream=tpseg)")
    kind = str(ds.kind)
    if kind not in ("volume", "image"):
        raise ConfigError(f"downstream.kind={kind!r}: expected volume or image")
    deg = ds.get("degradation")
    if not isinstance(deg, DictConfig) or not len(deg):
        raise ConfigError("downstream.degradation: expected a mapping task -> {simulator, params, ...}")
    specs = {str(t): check_spec(OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v,
                                f"downstream.degradation.{t}") for t, v in deg.items()}
    data = cfg.get("data")
    if data is not None:
        _check_data_target(OmegaConf.to_container(data, resolve=True), "data")
    return {"restore": restore, "labels": labels, "device": device, "kind": kind, "specs": specs,
            "default_task": ds.get("default_task") or "brats", "restore_opts": restore_opts, **opts}


def _check_data_target(data: Any, key: str) -> None:
    target = data.get("_target_") if isinstance(data, dict) else None
    if not (isinstance(target, str) and target.startswith("medrestore.")):
        raise ConfigError(f"{key}._target_={target!r}: expected a medrestore DataModule")


def load_analysis_module(path: str) -> Any:
    """The analysis LightningModule of a checkpoint, through the one safe loader
    (:mod:`medrestore.modules.checkpoint`: ``weights_only`` read, the class named by
    ``medrestore_module`` accepted by its rule, ``_target_`` entries checked); it must have
    ``results_rows`` (MTMed3D, TP-Seg)."""
    from medrestore.modules.checkpoint import load_module, module_class_of, read_module_checkpoint

    ckpt = read_module_checkpoint(path, "analysis_ckpt")
    cls = module_class_of(ckpt, f"analysis_ckpt={path}")
    if not callable(getattr(cls, "results_rows", None)):
        raise ConfigError(f"analysis_ckpt={path}: {cls.__name__} is not an analysis module (no results_rows); "
                          "pass a MTMed3D / TP-Seg checkpoint")
    return load_module(path, "analysis_ckpt", cls, map_location="cpu", ckpt=ckpt)


def load_analysis(cfg: DictConfig, device: str) -> tuple[Any, Any]:
    """The analysis module (:func:`load_analysis_module`) and its DataModule (``data`` given,
    else the data config saved in the checkpoint, ``medrestore_config.data``)."""
    from hydra.utils import instantiate

    from medrestore.modules.checkpoint import checkpoint_config

    path = str(cfg.analysis_ckpt)
    module = load_analysis_module(path)
    if cfg.get("data") is not None:
        data = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        data = (checkpoint_config(path, "analysis_ckpt") or {}).get("data")
        if not isinstance(data, dict):
            raise ConfigError(f"analysis_ckpt={path}: no data config saved in it; pass data=...")
        _check_data_target(data, "analysis_ckpt: medrestore_config.data")
    return module, instantiate(OmegaConf.create(data), _recursive_=False)


def _trainer_kwargs(device: str) -> dict[str, Any]:
    import torch

    if device == "auto":
        return {"accelerator": "gpu" if torch.cuda.is_available() else "cpu"}
    if device.startswith("cuda"):
        idx = device.partition(":")[2]
        return {"accelerator": "gpu", "devices": [int(idx)] if idx else 1}
    return {"accelerator": "cpu"}


@task_wrapper
def downstream(cfg: DictConfig) -> dict[str, Any]:
    from medrestore.inference.downstream import Condition, evaluate_downstream, markdown, write_tables
    from medrestore.inference.restorer import Restorer

    opts = check_options(cfg)
    out_dir = Path(cfg.paths.output_dir)
    existing = [out_dir / f"downstream.{e}" for e in ("csv", "json", "md") if (out_dir / f"downstream.{e}").exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; choose another run_name (nothing is overwritten)")
    print_config(cfg, out_dir / "config_resolved.yaml")
    module, datamodule = load_analysis(cfg, opts["device"])
    conditions = [Condition("clean", "clean"), Condition("degraded", "degraded")]
    for path, label in zip(opts["restore"], opts["labels"]):
        conditions.append(Condition(f"restored:{label}", "restored",
                                    Restorer.from_checkpoint(path, device=opts["device"])))
    rows = evaluate_downstream(
        module, datamodule, conditions, opts["specs"], kind=opts["kind"], seed=opts["seed"],
        limit=opts["limit"], batch_size=opts["batch_size"], restore_window=str(cfg.restore_window),
        restore_opts=opts["restore_opts"], default_task=str(opts["default_task"]),
        trainer_kwargs=_trainer_kwargs(opts["device"]), log=rank_zero_info)
    title = f"Downstream evaluation: {Path(str(cfg.analysis_ckpt)).name}"
    notes = [f"Degradation seed {opts['seed']}: the same degraded image in every condition "
             "(keyed by task and image key); psnr / ssim: each condition's images against the clean ones."]
    print("\n" + markdown(rows, title))
    paths = write_tables(rows, out_dir, "downstream", title, notes)
    rank_zero_info(f"downstream table written to {paths['csv']}")
    return {"rows": rows, "paths": paths, "conditions": [c.label for c in conditions]}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="downstream")
def main(cfg: DictConfig) -> None:
    downstream(cfg)


if __name__ == "__main__":
    main()
