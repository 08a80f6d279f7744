"""``medrestore.utils.recipe.fit_recipe``: a paper recipe's global batch and optimiser steps kept
on any number of devices by gradient accumulation (pure function, composed configs)."""

from __future__ import annotations

import pytest

from conftest import compose
from medrestore.errors import ConfigError
from medrestore.utils.recipe import fit_recipe


def _tat(tmp_path, *overrides):
    return compose("train", ["experiment=tat_allinone", *overrides], tmp_path)


def test_one_device_no_accumulation(tmp_path):
    cfg = _tat(tmp_path, "trainer.devices=1")
    lines = fit_recipe(cfg, log=False)
    assert cfg.trainer.accumulate_grad_batches == 1 and cfg.data.batch_size == 12
    assert cfg.trainer.max_steps == 400000 and cfg.trainer.max_epochs == -1
    assert cfg.model.optimizer.lr == pytest.approx(2e-4)
    assert lines == ["recipe: global batch 12 = 1 device × 12 per device × accumulate 1",
                     "recipe: 400,000 optimiser steps = 4.8 M samples",
                     "recipe: lr 0.0002 unchanged (effective batch unchanged)"]


def test_four_devices_split_the_batch(tmp_path):
    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=4")
    lines = fit_recipe(cfg, log=False)
    assert cfg.trainer.accumulate_grad_batches == 1 and cfg.data.batch_size == 12
    assert lines[0] == "recipe: global batch 12 = 4 devices × 3 per device × accumulate 1"


def test_two_devices_small_memory_accumulate(tmp_path):
    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=2", "recipe.max_per_device=3")
    lines = fit_recipe(cfg, log=False)
    assert cfg.trainer.accumulate_grad_batches == 2
    assert cfg.data.batch_size == 6          # the DataModule's batch per forward pass, all ranks
    assert cfg.trainer.max_steps == 400000 and cfg.model.optimizer.lr == pytest.approx(2e-4)
    assert lines[0] == "recipe: global batch 12 = 2 devices × 3 per device × accumulate 2"


def test_two_nodes_of_two(tmp_path):
    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2",
               "recipe.max_per_device=2")
    lines = fit_recipe(cfg, log=False)
    # 12 / 4 = 3 per device without accumulation; 2 does not divide 3, so 1 per device × 3
    assert cfg.trainer.accumulate_grad_batches == 3 and cfg.data.batch_size == 4
    assert lines[0] == "recipe: global batch 12 = 2 nodes × 2 devices × 1 per device × accumulate 3"


def test_one_device_max_per_device(tmp_path):
    cfg = compose("train", ["experiment=datprl_6task", "trainer.devices=1",
                            "recipe.max_per_device=4"], tmp_path)
    lines = fit_recipe(cfg, log=False)
    assert cfg.trainer.accumulate_grad_batches == 3 and cfg.data.batch_size == 4
    assert cfg.trainer.max_steps == 1000000 and cfg.model.optimizer.lr == pytest.approx(4e-4)
    assert lines[1] == "recipe: 1,000,000 optimiser steps = 12 M samples"
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.precision == "bf16-mixed"


def test_indivisible_world_is_one_line_error(tmp_path):
    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    with pytest.raises(ConfigError) as err:
        fit_recipe(cfg, log=False)
    msg = str(err.value)
    assert msg == ("recipe.global_batch=12 cannot be split evenly over 8 devices (2 nodes × 4): "
                   "12 % 8 = 4; use a device count that divides 12")
    assert "\n" not in msg


def test_samples_per_epoch_must_hold_whole_optimiser_steps(tmp_path):
    cfg = _tat(tmp_path, "data.samples_per_epoch=1000")
    with pytest.raises(ConfigError, match=r"data.samples_per_epoch=1000 is not a multiple of "
                                          r"the recipe's global batch 12"):
        fit_recipe(cfg, log=False)


def test_auto_devices_refused(tmp_path):
    cfg = _tat(tmp_path, "trainer.devices=auto")
    with pytest.raises(ConfigError, match=r"trainer.devices='auto': a recipe needs the number"):
        fit_recipe(cfg, log=False)


@pytest.mark.parametrize("rule, lr", [("linear", 4e-4), ("sqrt", 2e-4 * 2 ** 0.5), ("none", 2e-4)])
def test_forced_global_batch_applies_lr_rule(tmp_path, rule, lr):
    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=4", "recipe.global_batch=24",
               f"recipe.lr_rule={rule}", "data.samples_per_epoch=24000")
    lines = fit_recipe(cfg, log=False)
    assert cfg.model.optimizer.lr == pytest.approx(lr)
    assert cfg.data.batch_size == 24 and cfg.trainer.accumulate_grad_batches == 1
    assert cfg.trainer.max_steps == 400000
    if rule == "none":
        assert lines[2] == "recipe: lr 0.0002 unchanged (lr_rule=none)"
    else:
        assert lines[2].startswith(f"recipe: lr 0.0002 -> {lr:g} ({rule} rule: global batch 24 vs 12")


def test_no_recipe_changes_nothing(tmp_path):
    cfg = compose("train", ["experiment=demo"], tmp_path)
    before = dict(cfg.trainer)
    assert fit_recipe(cfg, log=False) == [] and dict(cfg.trainer) == before
    cfg = _tat(tmp_path, "recipe=null")
    assert fit_recipe(cfg, log=False) == [] and cfg.data.batch_size == 12


@pytest.mark.parametrize("override, match", [
    ("recipe.lr_rule=cubic", r"recipe.lr_rule='cubic'; expected one of \['linear', 'sqrt', 'none'\]"),
    ("recipe.global_batch=0", r"recipe.global_batch=0; expected an integer >= 1"),
    ("+recipe.batch=3", r"recipe has unknown key\(s\) \['batch'\]"),
])
def test_bad_recipe_settings(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        fit_recipe(_tat(tmp_path, override), log=False)


def test_summary_is_logged_once_on_rank_zero(tmp_path, caplog):
    import logging

    cfg = _tat(tmp_path, "trainer=ddp", "trainer.devices=2", "recipe.max_per_device=3")
    with caplog.at_level(logging.INFO):
        fit_recipe(cfg)
    text = caplog.text
    assert text.count("recipe: global batch 12 = 2 devices × 3 per device × accumulate 2") == 1
    assert "recipe: 400,000 optimiser steps = 4.8 M samples" in text
    assert "recipe: lr 0.0002 unchanged (effective batch unchanged)" in text


def test_trainer_accepts_the_fitted_config(tmp_path):
    """The fitted values are real Trainer arguments (accumulation, clipping, precision)."""
    from hydra.utils import instantiate

    cfg = _tat(tmp_path, "trainer=cpu", "recipe.max_per_device=4", "trainer.gradient_clip_val=0.5",
               "trainer.deterministic=true", "logger=none")
    fit_recipe(cfg, log=False)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.accumulate_grad_batches == 3 and trainer.max_steps == 400000
    assert trainer.gradient_clip_val == 0.5


def test_cpu_16_mixed_maps_to_bf16(tmp_path):
    """Decision: trainer.precision=16-mixed on CPU runs bf16 autocast (Lightning's mapping, with
    a warning) rather than failing: fp16 autocast does not exist on CPU."""
    from hydra.utils import instantiate

    cfg = compose("train", ["trainer=cpu", "trainer.precision=16-mixed"], tmp_path)
    with pytest.warns(UserWarning, match="Using `precision='bf16-mixed'` instead"):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed"
