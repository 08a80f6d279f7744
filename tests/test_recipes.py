"""The three recipes of docs/architecture.md ("Adding a model family", "Adding a task",
"Adding a converter"), each followed the documented way with a toy entry, end to end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_toy_shard


# ------------------------------------------------------------------------- a model family
class ToyNet(nn.Module):
    """A plain nn.Module: one conv on a global residual (what models/archs/<name>.py holds)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, dim: int = 4) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(dim, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def toy_net(**kwargs) -> ToyNet:
    return ToyNet(**kwargs)


@pytest.fixture
def toy_family():
    from medrestore.registry import ARCHS, FAMILIES, register_family

    register_family("toy", module="medrestore.modules.restoration:RestorationModule",
                    archs={"toy_net": "test_recipes:toy_net"})
    yield
    ARCHS.remove("toy_net")
    FAMILIES.remove("toy")


def _fit(model, shard: Path, tmp_path: Path) -> L.Trainer:
    from medrestore.datasets.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule([str(shard)], patch_size=32, batch_size=6, samples_per_epoch=12)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        use_distributed_sampler=False, enable_checkpointing=False)
    trainer.fit(model, dm)
    return trainer


def test_recipe_model_family(toy_family, toy_shard, tmp_path):
    from medrestore.inference.restorer import Restorer
    from medrestore.modules.restoration import RestorationModule
    from medrestore.registry import FAMILIES, family_of

    assert family_of("toy_net") == "toy" and "toy" in FAMILIES
    model = RestorationModule({"name": "toy_net", "dim": 4},
                              {"_target_": "torch.optim.AdamW", "lr": 1e-2})
    trainer = _fit(model, toy_shard, tmp_path)
    assert "val/psnr" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "toy.ckpt")
    restorer = Restorer.from_checkpoint(str(tmp_path / "toy.ckpt"))   # family from the file
    assert isinstance(restorer.module.net, ToyNet)
    assert restorer.restore(np.zeros((3, 20, 24), np.float32), task="derain").shape == (3, 20, 24)


# ------------------------------------------------------------------------------- a task
@pytest.fixture
def toy_task():
    from medrestore.registry import TASKS, TaskSpec, register_task

    spec = TaskSpec("toy_inpaint", "natural", "toy inpainting", 3, "RGB", (0.0, 255.0), "8-bit")
    register_task(spec)
    yield spec
    TASKS.pop(spec.name)


def test_recipe_task(toy_task, tmp_path):
    from medrestore.modules.restoration import RestorationModule
    from medrestore.registry import task_index

    assert task_index("toy_inpaint") == 10          # appended: existing ids never move
    shard = write_toy_shard(tmp_path / "t.h5", tasks=("ct_denoise", "toy_inpaint"))
    model = RestorationModule({"name": "restormer_tiny", "dim": 8},
                              {"_target_": "torch.optim.AdamW", "lr": 1e-3})
    metrics = _fit(model, shard, tmp_path).callback_metrics
    assert "val/toy_inpaint/psnr" in metrics and "val/natural/psnr" in metrics
    assert torch.isfinite(metrics["val/toy_inpaint/psnr"])


# -------------------------------------------------------------------------- a converter
def test_recipe_converter(tmp_path, capsys):
    from medrestore.cli.prepare import main
    from medrestore.io.hdf5 import read_manifest
    from medrestore.prepare import CONVERTERS, run
    from medrestore.prepare.base import Converter, Item, Record
    from medrestore.prepare.options import SourceOptions, option
    from medrestore.sample import make_meta

    @dataclass(kw_only=True)
    class ToyOptions(SourceOptions):
        sigma: float = option(10.0, "noise σ on the 0-255 scale (10)")

    class ToyNoise(Converter):
        """Clean 8-bit .npy images -> Gaussian-noise pairs (natural_denoise)."""

        name, help, unit, Options = "toy_noise", "toy: .npy images with added noise", "image", ToyOptions

        def discover(self, opts: ToyOptions) -> list[Item]:
            files = sorted(Path(opts.src).glob("*.npy"))
            splits = ["train"] * (len(files) - 2) + ["val", "test"]
            return [Item(f.stem, s, {"path": f}) for f, s in zip(files, splits)]

        def convert(self, item: Item, opts: ToyOptions):
            gt = np.load(item.data["path"])
            rng = np.random.default_rng(opts.seed)
            lq = np.clip(gt + rng.normal(0, opts.sigma, gt.shape), 0, 255).astype(np.uint8)
            meta = make_meta("natural_denoise", source=item.data["path"].name, split=item.split)
            meta["normalisation"] = {"low": 0.0, "high": 255.0, "unit": "8-bit", "kind": "minmax"}
            yield Record("natural_denoise", f"toy/{item.unit}", gt, lq, meta,
                         source=item.data["path"].name)

    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        np.save(src / f"im{i}.npy", np.random.default_rng(i).integers(0, 255, (3, 16, 16)).astype(np.uint8))
    CONVERTERS.add("toy_noise", ToyNoise)
    try:
        summary = run("toy_noise", src=str(src), out=str(tmp_path / "a.h5"), sigma=5.0, quiet=True)
        assert summary["counts"]["natural_denoise"] == {"train": 2, "val": 1, "test": 1}
        assert main(["toy_noise", "--src", str(src), "--out", str(tmp_path / "b.h5"),
                     "--sigma", "5", "--quiet"]) == 0          # the CLI is generated
        assert [r["key"] for r in read_manifest(tmp_path / "b.h5")] == \
            [r["key"] for r in read_manifest(tmp_path / "a.h5")]
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:       # argparse's exit: code 2, one line
            main(["toy_noise", "--src", str(src), "--out", str(tmp_path / "c.h5"),
                  "--sigma", "loud"])
        assert info.value.code == 2 and not (tmp_path / "c.h5").exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "--sigma" in err[0]
    finally:
        CONVERTERS.remove("toy_noise")
