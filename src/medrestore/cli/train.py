"""``medrestore-train`` / ``python -m medrestore.cli.train``: fit, then test.

``train(cfg)`` is a plain function (tests call it with a composed config); ``main`` only wraps
it with Hydra and returns the optimised metric for sweepers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    import lightning as L
    from hydra.utils import instantiate

    from medrestore.cli.common import build_trainer, report
    from medrestore.utils.validate import validate_run_config

    validate_run_config(cfg)
    ckpt_path = cfg.get("ckpt_path") or None
    if ckpt_path:  # refuse a file that would run code, or is not ours, before any work
        from medrestore.modules.checkpoint import read_module_checkpoint

        read_module_checkpoint(ckpt_path, "ckpt_path")
    out_dir = Path(cfg.paths.output_dir)
    print_config(cfg, out_dir / "config_resolved.yaml")
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    trainer, callbacks, loggers = build_trainer(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    rank_zero_info(f"model {cfg.model.net.name}: {n_params:,} parameters")
    for lg in loggers:
        lg.log_hyperparams({"cfg": _container(cfg), "model/params_total": n_params})

    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", False):
        ckpt = None
        cb = getattr(trainer, "checkpoint_callback", None)
        if cfg.get("train", True) and cb is not None and getattr(cb, "best_model_path", ""):
            ckpt = cb.best_model_path
            rank_zero_info(f"testing best checkpoint {ckpt}")
        else:
            rank_zero_info("testing the current weights (no best checkpoint)")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True,
                     verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        report(trainer, datamodule, "test", out_dir,
               f"Test set, {cfg.get('task_name', 'train')} ({cfg.model.net.name})")
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def _container(cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
