"""TPSegModule: a short fit on synthetic lesions, EMA, metrics and results rows, checkpoints,
task mapping, warm-up / plateau schedule and the configs."""

from __future__ import annotations

import inspect
import warnings

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from conftest import CONF
from medrestore.errors import ConfigError, MedrestoreError
from medrestore.modules.tpseg import TPSegModule

SIZE = 32
TASKS = ["bright", "dark"]


def _samples(n: int, seed: int) -> list[dict]:
    """Two tasks on 32² noise: a square lesion raised in the red channel (task 0) or lowered in
    the green channel (task 1); one sample in eight has no lesion."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = i % 2
        img = torch.randn(3, SIZE, SIZE, generator=g) * 0.4
        mask = torch.zeros(1, SIZE, SIZE)
        if i % 8 != 7:
            s = int(torch.randint(6, 13, (1,), generator=g))
            y, x = torch.randint(0, SIZE - s, (2,), generator=g).tolist()
            mask[:, y:y + s, x:x + s] = 1.0
        img[t] += (1.5 if t == 0 else -1.5) * mask[0]
        out.append({"image": img, "mask": mask, "task": TASKS[t], "task_id": torch.tensor(t),
                    "key": f"s{seed}_{i}"})
    return out


def _collate(samples: list[dict]) -> dict:
    return {"image": torch.stack([s["image"] for s in samples]),
            "mask": torch.stack([s["mask"] for s in samples]),
            "task_id": torch.stack([s["task_id"] for s in samples]),
            "task": [s["task"] for s in samples], "key": [s["key"] for s in samples]}


def _loader(n: int, seed: int, shuffle: bool = False) -> DataLoader:
    return DataLoader(_samples(n, seed), batch_size=8, shuffle=shuffle, collate_fn=_collate)


def _module(**kw) -> TPSegModule:
    torch.manual_seed(0)
    kw.setdefault("net", {"name": "tpseg_tiny", "num_tasks": None})
    kw.setdefault("tasks", TASKS)
    kw.setdefault("optimizer", {"_target_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 5e-4})
    return TPSegModule(**kw)


def _trainer(epochs: int, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
                     num_sanity_val_steps=0, **kw)


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.losses, self.lrs = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture(scope="module")
def fitted():
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    module = _module(ema={"decay": 0.9, "warmup": True}, warmup_epochs=1,
                     optimizer={"_target_": "torch.optim.AdamW", "lr": 5e-3, "weight_decay": 5e-4})
    val = _loader(8, 1)
    rec = _Recorder()
    trainer = _trainer(6, callbacks=[rec])
    trainer.validate(module, val, verbose=False)
    before = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.fit(module, _loader(32, 0, shuffle=True), val)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module, trainer, rec, before, after


@pytest.mark.slow  # shares one ~10 s fit (fixture `fitted`)
def test_short_fit_lowers_the_loss_and_raises_dice(fitted):
    module, trainer, rec, before, after = fitted
    first, last = sum(rec.losses[:4]) / 4, sum(rec.losses[-4:]) / 4
    assert last < 0.8 * first
    for t in TASKS:
        assert after[f"val/dice/{t}"] > before[f"val/dice/{t}"] + 0.2
        assert after[f"val/dice/{t}"] > max(after[f"val/dice_all_bg/{t}"], after[f"val/dice_all_fg/{t}"])
    assert after["val/dice_mean"] == pytest.approx(sum(after[f"val/dice/{t}"] for t in TASKS) / 2)
    assert after["val/n/bright"] == 4 and after["val/iou_mean"] <= after["val/dice_mean"]


@pytest.mark.slow  # shares one ~10 s fit (fixture `fitted`)
def test_warmup_ramps_the_learning_rate_over_the_first_epoch(fitted):
    _, _, rec, _, _ = fitted
    assert rec.lrs[:4] == pytest.approx([5e-3 * k / 4 for k in (1, 2, 3, 4)])
    assert rec.lrs[4:] == pytest.approx([5e-3] * (len(rec.lrs) - 4))


@pytest.mark.slow  # shares one ~10 s fit (fixture `fitted`)
def test_ema_averages_trainable_weights_shares_the_trunk_and_copies_buffers(fitted):
    module = fitted[0]
    ema, net = module.net_ema, module.net
    for pe, p in zip(ema.trunk.parameters(), net.trunk.parameters()):
        assert pe is p and not p.requires_grad
    moved = [not torch.equal(pe, p) for pe, p in zip(ema.parameters(), net.parameters()) if p.requires_grad]
    assert any(moved)
    for be, b in zip(ema.buffers(), net.buffers()):
        assert torch.equal(be, b)
    assert bool(net.dec1.proto_ready.all())
    module.eval()
    assert module.active_net() is ema
    module.train()
    assert module.active_net() is net


@pytest.mark.slow  # shares one ~10 s fit (fixture `fitted`)
def test_test_metrics_results_rows_and_checkpoint_round_trip(fitted, tmp_path):
    module, trainer, *_ = fitted
    trainer.test(module, _loader(8, 2), verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rows = module.results_rows(metrics, "test")
    assert [r["task"] for r in rows] == [*TASKS, "mean"]
    assert set(rows[0]) == {"task", "n", "dice", "iou", "dice_all_bg", "dice_all_fg", "mae",
                            "max_fm", "mean_fm", "sm", "max_em", "mean_em"}
    assert rows[-1]["dice"] == pytest.approx(metrics["test/dice_mean"]) and rows[-1]["n"] == 8
    assert 0.0 <= rows[0]["mae"] <= 1.0

    from medrestore.modules.checkpoint import load_module

    path = tmp_path / "tpseg.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["medrestore_module"] == "medrestore.modules.tpseg:TPSegModule"
    loaded = load_module(path)
    assert isinstance(loaded, TPSegModule) and loaded.tasks == TASKS
    x = _collate(_samples(4, 3))
    module.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.predict(x["image"], x["task"]), module.predict(x["image"], x["task"]))
    out = loaded.predict_step(x, 0)
    assert [o["task"] for o in out] == x["task"] and out[0]["prob"].shape == (SIZE, SIZE)


def test_task_mapping_and_a_one_task_model():
    module = _module(tasks=["dark"])                       # a per-task model: one task
    assert module.num_tasks == 1 and module.net.num_tasks == 1
    batch = _collate([s for s in _samples(8, 0) if s["task"] == "dark"])
    assert module.task_ids(batch).tolist() == [0, 0, 0, 0]
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(MedrestoreError, match=r"tasks \['bright'\] are not among the model's tasks"):
        module.task_ids(_collate(_samples(2, 0)))
    anonymous = _module(tasks=None, net={"name": "tpseg_tiny", "num_tasks": 2})
    assert anonymous.task_ids(_collate(_samples(2, 0))).tolist() == [0, 1]


def test_config_errors():
    with pytest.raises(ConfigError, match="num_tasks is null and model.tasks is not set"):
        _module(tasks=None)
    with pytest.raises(ConfigError, match="num_tasks=3 but model.tasks has 2"):
        _module(net={"name": "tpseg_tiny", "num_tasks": 3})
    with pytest.raises(ConfigError, match="model.ema has unknown key"):
        _module(ema={"decay": 0.9, "beta": 1})
    with pytest.raises(ConfigError, match="model.loss has unknown key"):
        _module(loss={"focal_weight": 1.0})


def test_plateau_schedule_follows_the_monitored_dice():
    module = _module(scheduler={"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                                "mode": "max", "factor": 0.1, "patience": 6, "min_lr": 1e-7})
    conf = module.configure_optimizers()
    sched = conf["lr_scheduler"]
    assert sched["monitor"] == "val/dice_mean" and sched["interval"] == "epoch"
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    trainable = {id(p) for p in module.net.parameters() if p.requires_grad}
    given = [p for g in conf["optimizer"].param_groups for p in g["params"]]
    assert {id(p) for p in given} == trainable and len(given) == len(trainable)


def test_model_configs_build_and_hold_the_released_defaults():
    from hydra.utils import instantiate

    from medrestore.models.archs.tpseg import TPSeg

    released = OmegaConf.load(CONF / "model" / "tpseg.yaml")
    defaults = {k: p.default for k, p in inspect.signature(TPSeg).parameters.items()}
    for key, value in released.net.items():
        if key in ("name", "pretrained"):
            continue
        value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        expect = defaults[key]
        expect = list(expect) if isinstance(expect, tuple) else ({} if expect is None and value == {} else expect)
        assert value == expect, key
    tiny = OmegaConf.merge(released, OmegaConf.load(CONF / "model" / "tpseg_tiny.yaml"))
    tiny.pop("defaults", None)
    tiny.tasks = TASKS
    tiny.net.num_tasks = None
    module = instantiate(tiny, _recursive_=False)
    assert isinstance(module, TPSegModule) and module.monitor == "val/dice_mean"
    assert module.net.parameter_counts()["adapters"] > 0
