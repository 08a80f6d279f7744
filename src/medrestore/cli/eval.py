"""``medrestore-eval ckpt_path=...``: test a checkpoint on the configured data.

The model is rebuilt from the checkpoint's own hyper-parameters (the class named by
``model._target_``), so the evaluated network is the trained one whatever the config's
defaults say."""

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
    try:
        model = model_cls.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False)
    except (KeyError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"ckpt_path={ckpt}: not a loadable {model_cls.__name__} checkpoint "
                          f"({type(exc).__name__}: {exc})") from None
    trainer, _, _ = build_trainer(cfg)
    rank_zero_info(f"evaluating {ckpt}")
    trainer.test(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    report(trainer, datamodule, "test", out_dir, f"Test set, {ckpt.name}")
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
