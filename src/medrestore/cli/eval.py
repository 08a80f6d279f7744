"""``medrestore-eval ckpt_path=...``: test a checkpoint on the configured data.

A Lightning checkpoint rebuilds the model from its own hyper-parameters (the family recorded
in the checkpoint), so the evaluated network is the trained one whatever the config's
defaults say. Every file is read with ``torch.load(weights_only=True)``: one that would run
code on load is refused with one line (:mod:`medrestore.modules.checkpoint`). Any other weights file (e.g. the authors' released ``.pth``) is loaded into the
configured ``model`` (``model.net.pretrained_format: official|medrestore``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    import lightning as L
    from hydra.utils import instantiate

    from medrestore.cli.common import build_trainer, report
    from medrestore.models.pretrained import read_weights
    from medrestore.modules.checkpoint import check_module_checkpoint, is_lightning_checkpoint, load_module
    from medrestore.utils.validate import validate_run_config

    validate_run_config(cfg, required=("ckpt_path",))
    ckpt = Path(str(cfg.ckpt_path))
    obj = read_weights(ckpt, "ckpt_path")  # weights_only=True: a file that would run code is refused
    out_dir = Path(cfg.paths.output_dir)
    print_config(cfg, out_dir / "config_resolved.yaml")
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    if is_lightning_checkpoint(obj):
        check_module_checkpoint(obj, f"ckpt_path={ckpt}")
        model = load_module(ckpt, "ckpt_path", ckpt=obj)
    else:  # plain weights (ours or the authors'): into the configured architecture
        model = instantiate(cfg.model, _recursive_=False)
        model.load_pretrained(str(ckpt))
    del obj
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
