"""``medrestore-export ckpt_path=... format=onnx|torchscript``: a checkpoint to a deployable file.

A thin Hydra entry over :func:`medrestore.inference.export.export_checkpoint` (options in
``conf/export.yaml``). The file is written only after it matched eager PyTorch at every parity
size; a failure is one line and exit 2, with the file kept as ``<out>.failed``. Bad options, a
missing or foreign checkpoint, and an existing output without ``overwrite=true`` are one line
and exit 2 as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper


@task_wrapper
def export(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from medrestore.errors import ConfigError
    from medrestore.inference.export import export_checkpoint
    from medrestore.utils.validate import validate_run_config

    validate_run_config(cfg, required=("ckpt_path",))
    for key in ("overwrite", "dynamic_batch"):
        if not isinstance(cfg.get(key, True), bool):
            raise ConfigError(f"{key}={cfg.get(key)!r}; expected true or false")
    print_config(cfg, Path(cfg.paths.output_dir) / "config_resolved.yaml")
    sizes = OmegaConf.to_container(cfg.sizes) if OmegaConf.is_config(cfg.sizes) else cfg.sizes
    return export_checkpoint(
        str(cfg.ckpt_path), format=str(cfg.format),
        out=None if cfg.get("out") in (None, "") else str(cfg.out),
        sizes=sizes, atol=cfg.atol, opset=cfg.opset, overwrite=cfg.overwrite,
        device=str(cfg.device), dynamic_batch=cfg.get("dynamic_batch", True),
        echo=rank_zero_info)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
