"""RestorationModule: steps, hooks, channel adapter, optimisation."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from medrestore.datasets.datamodule import MultiTaskDataModule
from medrestore.errors import ConfigError
from medrestore.modules.restoration import RestorationModule
from medrestore.modules.schedulers import warmup_cosine
from medrestore.registry import RegistryError

TINY = {"name": "restormer_tiny", "in_channels": 3, "out_channels": 3}
OPT = {"_target_": "torch.optim.Adam", "lr": 2e-3}


def _batch(dm):
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_short_fit_lowers_the_loss(toy_shard):
    torch.manual_seed(0)
    dm = MultiTaskDataModule([str(toy_shard)], patch_size=32, batch_size=6, samples_per_epoch=6)
    batch = _batch(dm)
    model = RestorationModule(TINY, OPT)
    model.log = lambda *a, **k: None  # training_step logs; no trainer attached here
    opt = model.configure_optimizers()
    first = None
    for _ in range(40):   # overfit one fixed batch: the loss must fall clearly
        loss = model.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.7 * first


class Weighted(RestorationModule):
    """A family that weights samples and adds an extra loss, to check the hooks are used."""

    def weight_sample_losses(self, losses, batch, pred, aux):
        self.seen = losses.detach().clone()
        return (losses * torch.arange(1, losses.numel() + 1, dtype=losses.dtype)).mean()

    def extra_losses(self, batch, pred, aux):
        return {"tv": 0.5 * (pred[..., 1:, :] - pred[..., :-1, :]).abs().mean()}


def test_family_hooks_shape_the_training_loss(toy_shard):
    dm = MultiTaskDataModule([str(toy_shard)], patch_size=32, batch_size=6, samples_per_epoch=6)
    batch = _batch(dm)
    model = Weighted(TINY, OPT)
    model.log = lambda *a, **k: None
    total = model.training_step(batch, 0)
    pred, _ = model.restore(batch)
    expected = (model.seen * torch.arange(1, 7)).mean() + 0.5 * (pred[..., 1:, :] - pred[..., :-1, :]).abs().mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.seen.shape == (6,)


def test_one_channel_model_on_gray_data_and_clear_error_on_rgb(toy_shard):
    dm = MultiTaskDataModule([str(toy_shard)], tasks=["ct_denoise"], patch_size=32,
                               batch_size=2, samples_per_epoch=2)
    batch = _batch(dm)
    assert batch["lq"].shape[1] == 1
    gray = RestorationModule({"name": "restormer_tiny", "in_channels": 1, "out_channels": 1}, OPT)
    assert gray.restore(batch)[0].shape == (2, 1, 32, 32)
    rgb_batch = _batch(MultiTaskDataModule([str(toy_shard)], tasks=["natural_denoise"],
                                             patch_size=32, batch_size=2, samples_per_epoch=2))
    with pytest.raises(Exception, match="in_channels=3"):
        gray.restore(rgb_batch)


def test_predict_step_returns_native_channels(toy_shard):
    dm = MultiTaskDataModule([str(toy_shard)])
    dm.setup("predict")
    model = RestorationModule(TINY, OPT)
    outs = [o for b in dm.predict_dataloader() for o in model.predict_step(b, 0)]
    by_task = {o["task"]: o for o in outs}
    assert by_task["ct_denoise"]["pred"].shape[0] == 1
    assert by_task["natural_denoise"]["pred"].shape[0] == 3
    assert all(0 <= o["pred"].min() and o["pred"].max() <= 1 for o in outs)


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs a 'name'"):
        RestorationModule({"dim": 8}, OPT)
    with pytest.raises(RegistryError, match="unknown architecture 'restormerx'"):
        RestorationModule({"name": "restormerx"}, OPT)
    with pytest.raises(RegistryError, match="unknown metric protocol"):
        RestorationModule(TINY, OPT, metrics={"protocol": "nope"})
    with pytest.raises(RegistryError, match="unknown pixel loss"):
        RestorationModule(TINY, OPT, loss={"name": "l3"})


def test_warmup_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2, eta_min=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[1:10], lrs[2:11]))
    with pytest.raises(ConfigError, match="eta_min"):
        warmup_cosine(opt, 10, eta_min=5.0)


def test_checkpoint_is_self_describing(tmp_path, toy_shard):
    dm = MultiTaskDataModule([str(toy_shard)], patch_size=32, batch_size=6, samples_per_epoch=12)
    model = RestorationModule(dict(TINY, dim=8), OPT)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        use_distributed_sampler=False, limit_val_batches=1)
    trainer.fit(model, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = RestorationModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.net["name"] == "restormer_tiny"
    x = torch.rand(1, 3, 24, 24)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
