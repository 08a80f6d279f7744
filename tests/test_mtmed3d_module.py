"""MTMed3DModule (modules/mtmed3d.py): GradNorm isolation, evaluation modes, results rows,
checkpoint round trip and a short fit on synthetic tumour phantoms (tiny network, 4 x 32^3)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

CONF = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------ synthetic samples
def phantom(seed: int, size: int = 32, grade: int | None = None) -> dict:
    """One sample of the 3-D analysis contract: an ellipsoidal whole tumour with a core and,
    for high grade, an enhancing rim, with modality-specific contrasts on a noisy background."""
    rng = np.random.default_rng(seed)
    g = int(rng.integers(0, 2)) if grade is None else grade
    ax = np.arange(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"))
    c, r = rng.uniform(0.35, 0.65, 3) * size, rng.uniform(0.15, 0.25, 3) * size
    d = np.sqrt((((grid - c[:, None, None, None]) / r[:, None, None, None]) ** 2).sum(0))
    wt, tc = d < 1.0, d < 0.6
    et = tc & (d > 0.4) if g == 1 else np.zeros_like(wt)
    img = rng.normal(0, 0.3, (4, size, size, size)).astype(np.float32)
    img[0] -= 0.8 * tc                     # T1: core dark
    img[1] += 2.0 * et + 0.5 * tc          # T1ce: enhancing rim bright
    img[2] += 1.2 * wt                     # T2: whole tumour bright
    img[3] += 1.5 * (wt & ~tc) + 0.6 * tc  # FLAIR: oedema bright
    idx = np.argwhere(wt)
    box = np.concatenate([idx.min(0), idx.max(0) + 1]).astype(np.float32)[None]
    return {"image": torch.from_numpy(img), "seg": torch.from_numpy(np.stack([tc, wt, et]).astype(np.float32)),
            "boxes": torch.from_numpy(box), "box_labels": torch.zeros(1, dtype=torch.long),
            "grade": torch.tensor(g), "key": f"case{seed}", "task": "brats",
            "meta": {"spacing": [1.0, 1.0, 1.0], "crop": None}}


def collate(samples: list[dict]) -> dict:
    return {"image": torch.stack([s["image"] for s in samples]),
            "seg": torch.stack([s["seg"] for s in samples]),
            "grade": torch.stack([s["grade"] for s in samples]),
            "boxes": [s["boxes"] for s in samples], "box_labels": [s["box_labels"] for s in samples],
            "key": [s["key"] for s in samples], "task": [s["task"] for s in samples],
            "meta": [s["meta"] for s in samples]}


def tiny_config(**over) -> dict:
    """conf/model/mtmed3d_tiny.yaml composed over mtmed3d.yaml, as Hydra would."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / "mtmed3d.yaml"),
                          OmegaConf.load(CONF / "model" / "mtmed3d_tiny.yaml"))
    cfg = OmegaConf.to_container(cfg)
    cfg.pop("defaults"), cfg.pop("_target_")
    for key, value in over.items():
        *parents, leaf = key.split(".")
        target = cfg
        for p in parents:
            target = target[p]
        target[leaf] = value
    return cfg


def module(**over):
    from medrestore.modules.mtmed3d import MTMed3DModule

    torch.manual_seed(0)
    return MTMed3DModule(**tiny_config(**over))


# ------------------------------------------------------------------ GradNorm
def test_gradnorm_moves_only_the_task_weights():
    m = module(**{"loss.balance": {"mode": "gradnorm", "alpha": 0.12, "lr": 0.05}})
    batch = collate([phantom(0, grade=1)])
    twin = copy.deepcopy(m)

    def grads(mod, with_gradnorm: bool):
        out = mod.net(batch["image"])
        losses = mod.task_losses(out, batch)
        assert set(losses) == {"seg", "det", "cls"}
        total = mod.balancer(losses)
        if with_gradnorm:
            mod.balancer.gradnorm_step(losses, mod.net.shared_parameter())
            assert all(p.grad is None for p in mod.net.parameters())   # nothing written
        total.backward()
        return [p.grad.clone() for p in mod.net.parameters() if p.grad is not None]

    before = dict(m.balancer.weights)
    with_step, without = grads(m, True), grads(twin, False)
    assert len(with_step) == len(without) > 0
    for a, b in zip(with_step, without):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    after = m.balancer.weights
    assert after != before                                   # the weights did move ...
    assert sum(after.values()) == pytest.approx(3.0, abs=1e-5)   # ... keeping their sum T = 3


# ------------------------------------------------------------------ evaluation
def test_centre_crop_is_the_authors_roi_and_clips_boxes():
    m = module()                                            # roi 32^3
    s = phantom(3, size=64)
    s["boxes"] = torch.tensor([[10.0, 20.0, 20.0, 30.0, 40.0, 30.0], [0.0, 0.0, 0.0, 8.0, 8.0, 8.0]])
    s["box_labels"] = torch.zeros(2, dtype=torch.long)
    crop = m._centre_crop(collate([s]))
    assert crop["image"].shape[2:] == (32, 32, 32) and crop["seg"].shape[2:] == (32, 32, 32)
    torch.testing.assert_close(crop["image"], s["image"][None, :, 16:48, 16:48, 16:48])
    # shifted by the crop start (16) and clipped to it; the box outside the cube is dropped
    torch.testing.assert_close(crop["boxes"][0], torch.tensor([[0.0, 4.0, 4.0, 14.0, 24.0, 14.0]]))
    assert crop["box_labels"][0].tolist() == [0]


@pytest.mark.parametrize("size", [64, 48])
def test_full_volume_mode_segments_everything_and_keeps_boxes_inside(size):
    m = module(**{"evaluation.mode": "full", "evaluation.overlap": 0.0}).eval()
    x = torch.randn(1, 4, size, size, size)
    res = m.predict_volume(x)
    assert res["seg"].shape == (1, 3, size, size, size)     # sliding window over the whole volume
    assert res["cls"].shape == (1, 2)
    boxes = res["dets"][0]["boxes"]
    assert boxes.shape[1] == 6 and (boxes.numel() == 0 or float(boxes.max()) <= size)


def test_bad_evaluation_options_are_config_errors():
    from medrestore.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation.mode"):
        module(**{"evaluation.mode": "whole"})
    with pytest.raises(ConfigError, match="roi_size"):
        module(**{"evaluation.roi_size": [40, 40, 40]})
    with pytest.raises(ConfigError, match="net.name"):
        module(**{"net.name": "restormer_tiny"})


def test_results_rows_one_per_region_detection_and_grading():
    m = module()
    metrics = {"val/dice_tc": 0.5, "val/dice_wt": 0.7, "val/dice_et": 0.3, "val/dice_mean": 0.5,
               "val/hd95_tc": 4.0, "val/hd95_wt": 3.0, "val/hd95_et": 5.0, "val/hd95_mean": 4.0,
               "val/map": 0.4, "val/ap50": 0.2, "val/mar": 0.6, "val/accuracy": 0.75,
               "val/sensitivity": 1.0, "val/specificity": 0.5, "val/auroc": 0.8, "test/map": 0.0}
    rows = m.results_rows(metrics, "val")
    assert [r.get("region") for r in rows[:4]] == ["TC", "WT", "ET", "mean"]
    assert rows[1]["dice"] == 0.7 and rows[2]["hd95"] == 5.0
    assert rows[4] == {"task": "detection", "map": 0.4, "ap50": 0.2, "mar": 0.6, "eval": "centre_crop"}
    assert rows[5]["task"] == "grading" and rows[5]["auroc"] == 0.8
    assert all(isinstance(v, (str, float)) for r in rows for v in r.values())


# ------------------------------------------------------------------ training
def _trainer(tmp_path, **kw):
    import lightning as L

    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=str(tmp_path), accelerator="cpu", **kw)


def test_checkpoint_round_trip(tmp_path):
    from medrestore.modules.checkpoint import load_module, read_module_checkpoint
    from medrestore.modules.mtmed3d import MTMed3DModule

    m = module(**{"loss.balance": {"mode": "gradnorm", "lr": 0.05}})
    data = torch.utils.data.DataLoader([phantom(i) for i in range(2)], batch_size=2, collate_fn=collate)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(m, data)
    m.medrestore_config = {"model": {"net": {"name": "mtmed3d_tiny"}}}
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = read_module_checkpoint(path)
    assert ckpt["medrestore_module"] == "medrestore.modules.mtmed3d:MTMed3DModule"
    back = load_module(path, module_class=MTMed3DModule)
    assert back.medrestore_config == m.medrestore_config
    assert back.balancer.weights == pytest.approx(m.balancer.weights)
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.slow
def test_short_fit_raises_dice(tmp_path):
    import lightning as L

    L.seed_everything(0)
    over = {"net.tasks": ["seg"], "optimizer.lr": 2e-2, "lr_groups": {"encoder": 2e-2, "seg": 2e-2},
            "scheduler": None}
    m = module(**over)
    train = torch.utils.data.DataLoader([phantom(i) for i in range(4)], batch_size=2, collate_fn=collate,
                                        shuffle=True)
    val = torch.utils.data.DataLoader([phantom(100 + i) for i in range(2)], batch_size=2, collate_fn=collate)
    trainer = _trainer(tmp_path, max_epochs=8, check_val_every_n_epoch=8, enable_checkpointing=False)
    before = trainer.validate(m, val, verbose=False)[0]["val/dice_wt"]
    trainer.fit(m, train, val)
    after = m.last_metrics["val"]["dice_wt"]
    assert after > before + 0.2, (before, after)


def test_per_group_learning_rates_are_the_authors_and_uncertainty_is_trained():
    m = module(**{"loss.balance": {"mode": "uncertainty"}, "scheduler": None})
    opt = m.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"encoder": 1e-4, "seg": 1e-4, "det": 1e-5, "cls": 1e-5, "balancer": 1e-4}
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in m.net.parameters()} | {id(m.balancer.log_vars)}


def test_test_metrics_carry_the_trivial_predictors():
    """At test the table holds what chance gives: every brain voxel as tumour, the brain's box
    as the detection, the more frequent grade as a constant guess."""
    m = module()
    box = torch.tensor([[2.0, 2.0, 2.0, 6.0, 6.0, 6.0]])
    brain = torch.tensor([[0.0, 0.0, 0.0, 32.0, 32.0, 32.0]])
    item = {"dice": torch.tensor([[0.8, 0.9, 0.7]]), "hd95": torch.tensor([[1.0, 1.0, 1.0]]),
            "dice_brain": torch.tensor([[0.1, 0.2, 0.0]]),
            "pred_boxes": [box.clone()], "pred_scores": [torch.tensor([0.9])], "gt_boxes": [box],
            "brain_boxes": [brain], "prob": torch.tensor([0.9, 0.2, 0.3]),
            "grade": torch.tensor([1, 0, 0])}
    metrics = m.compute_metrics([item])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_brain_box"] == 0.0
    assert metrics["dice_brain_wt"] == pytest.approx(0.2)
    assert metrics["accuracy_majority"] == pytest.approx(2 / 3) and metrics["accuracy"] == 1.0
    rows = m.results_rows({f"test/{k}": v for k, v in metrics.items()}, "test")
    assert rows[1]["dice_brain"] == pytest.approx(0.2)
    assert rows[4]["map_brain_box"] == 0.0 and rows[5]["accuracy_majority"] == pytest.approx(2 / 3)
