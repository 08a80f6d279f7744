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

    from medrestore.cli.common import build_trainer, report, run_hyperparams
    from medrestore.utils.recipe import fit_recipe
    from medrestore.utils.validate import validate_run_config

    fit_recipe(cfg)  # a paper recipe's global batch / steps on this hardware (accumulation)
    validate_run_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    _add_signal_checkpoint(cfg)
    ckpt_path = cfg.get("ckpt_path") or _auto_resume(cfg, out_dir)
    if ckpt_path:  # refuse a file that would run code, or is not ours, before any work
        from medrestore.modules.checkpoint import read_module_checkpoint

        read_module_checkpoint(ckpt_path, "ckpt_path")
    print_config(cfg, out_dir / "config_resolved.yaml")
    if cfg.get("seed") is not None:
        from lightning.pytorch.utilities import rank_zero_only

        # every rank seeds; only rank zero says so (one log for the run)
        L.seed_everything(int(cfg.seed), workers=True, verbose=rank_zero_only.rank == 0)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    model.medrestore_config = _container(cfg)  # written into every checkpoint
    trainer, callbacks, loggers = build_trainer(cfg)
    hparams = run_hyperparams(cfg, model)  # nested config + parameter counts, for every logger
    rank_zero_info(f"model {cfg.model.net.name}: {hparams['model/params_total']:,} parameters")
    for lg in loggers:
        lg.log_hyperparams(hparams)

    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    ckpt = None
    cb = getattr(trainer, "checkpoint_callback", None)
    if cfg.get("train", True) and cb is not None and getattr(cb, "best_model_path", ""):
        ckpt = cb.best_model_path
    title = f"{cfg.get('task_name', 'train')} ({cfg.model.net.name})"

    if cfg.get("train", True) and cfg.get("validate_best", True) and _has_split(datamodule, "val"):
        # the validation table of the weights the test will use: what recipes are chosen on
        trainer.validate(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True,
                         verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        report(trainer, datamodule, "val", out_dir, f"Validation set, {title}")

    if cfg.get("test", False):
        if ckpt:
            rank_zero_info(f"testing best checkpoint {ckpt}")
        else:
            rank_zero_info("testing the current weights (no best checkpoint)")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True,
                     verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        report(trainer, datamodule, "test", out_dir, f"Test set, {title}")
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def _has_split(datamodule: Any, name: str) -> bool:
    """Whether ``datamodule`` has a non-empty ``name`` split (a DataModule of one's own without
    ``dataset(name)`` counts as having none)."""
    dataset = getattr(datamodule, "dataset", None)
    return dataset is not None and len(dataset(name)) > 0


def _ckpt_dir(cfg: DictConfig, out_dir: Path) -> Path:
    from omegaconf import OmegaConf

    d = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    return Path(str(d)) if d else out_dir / "checkpoints"


def _auto_resume(cfg: DictConfig, out_dir: Path) -> str | None:
    """``auto_resume=true``: the newest ``last.ckpt`` / ``hpc_ckpt_*.ckpt`` of this run
    directory (``logs/<task_name>/runs/<run_name>``), or None (a fresh start). Resuming with
    a config that differs from the run's ``config_resolved.yaml`` is refused, naming the
    keys, unless ``auto_resume_force=true`` (then the old file is kept as
    ``config_resolved.<n>.yaml``)."""
    if not cfg.get("auto_resume", False):
        return None
    from omegaconf import OmegaConf

    from medrestore.errors import ConfigError
    from medrestore.modules.resume import config_differences, find_resume_checkpoint

    ckpt = find_resume_checkpoint(_ckpt_dir(cfg, out_dir), out_dir)
    if ckpt is None:
        rank_zero_info(f"auto_resume: no checkpoint in {out_dir}: starting a fresh run")
        return None
    prev = out_dir / "config_resolved.yaml"
    if prev.is_file():
        diff = config_differences(OmegaConf.to_container(OmegaConf.load(prev)), _container(cfg))
        if diff and not cfg.get("auto_resume_force", False):
            shown = ", ".join(diff[:12]) + (f" (+{len(diff) - 12} more)" if len(diff) > 12 else "")
            raise ConfigError(f"auto_resume: the config differs from the run's {prev} in: "
                              f"{shown}; use the same settings, another run_name, or "
                              "auto_resume_force=true")
        if diff:
            from lightning.pytorch.utilities import rank_zero_only

            if rank_zero_only.rank == 0:
                n = 1
                while (out_dir / f"config_resolved.{n}.yaml").exists():
                    n += 1
                prev.rename(out_dir / f"config_resolved.{n}.yaml")
            rank_zero_info(f"auto_resume_force: config changed in {', '.join(diff)}")
    rank_zero_info(f"auto_resume: resuming from {ckpt}")
    return str(ckpt)


def _add_signal_checkpoint(cfg: DictConfig) -> None:
    """``requeue_signal`` (default SIGUSR1): on that signal write last.ckpt at the next step
    boundary, requeue the SLURM job and exit (:class:`medrestore.modules.resume.CheckpointOnSignal`)."""
    from omegaconf import open_dict

    sig = cfg.get("requeue_signal")
    if not sig or not cfg.get("callbacks") or "checkpoint_on_signal" in cfg.callbacks:
        return
    with open_dict(cfg):
        cfg.callbacks.checkpoint_on_signal = {
            "_target_": "medrestore.modules.resume.CheckpointOnSignal",
            "dirpath": str(_ckpt_dir(cfg, Path(cfg.paths.output_dir))), "signal_name": str(sig)}


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
