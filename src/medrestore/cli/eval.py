"""``medrestore-eval ckpt_path=...``: test a checkpoint on the configured data.

A Lightning checkpoint rebuilds the model from its own hyper-parameters (the class named by
``model._target_``), so the evaluated network is the trained one whatever the config's
defaults say. Any other weights file (e.g. the authors' released ``.pth``) is loaded into the
configured ``model`` (``model.net.pretrained_format: official|medrestore``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medrestore.errors import ConfigError
from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    import lightning as L
    from hydra.utils import get_class, instantiate

    from medrestore.cli.common import build_trainer, report

    ckpt = Path(str(cfg.ckpt_path))
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    out_dir = Path(cfg.paths.output_dir)
    print_config(cfg, out_dir / "config_resolved.yaml")
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    model_cls = get_class(cfg.model._target_)
    if _is_lightning_checkpoint(ckpt):
        try:
            model = model_cls.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False)
        except (KeyError, RuntimeError, EOFError) as exc:
            raise ConfigError(f"ckpt_path={ckpt}: not a loadable {model_cls.__name__} checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
    else:  # plain weights (ours or the authors'): into the configured architecture
        model = instantiate(cfg.model, _recursive_=False)
        model.load_pretrained(str(ckpt))
    trainer, _, _ = build_trainer(cfg)
    rank_zero_info(f"evaluating {ckpt}")
    trainer.test(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    report(trainer, datamodule, "test", out_dir, f"Test set, {ckpt.name}")
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


def _is_lightning_checkpoint(path: Path) -> bool:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ConfigError(f"ckpt_path={path}: unreadable ({type(exc).__name__})") from None
    return isinstance(obj, dict) and "pytorch-lightning_version" in obj


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
