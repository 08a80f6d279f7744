"""The train CLI's results table for analysis families (modules with ``results_rows``) and the
checkpoint rule that lets their modules be rebuilt while still refusing any other class."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medrestore.errors import ConfigError


class _Module:
    def results_rows(self, metrics, stage):
        return [{"task": "brats", "dice_wt": metrics[f"{stage}/dice_wt"], "n": 3},
                {"task": "[mean]", "dice_wt": metrics[f"{stage}/dice_wt"], "map": 0.5}]


def test_report_uses_the_modules_own_table(tmp_path, capsys):
    from medrestore.cli.common import report

    trainer = SimpleNamespace(global_rank=0, callback_metrics={"val/dice_wt": 0.75},
                              lightning_module=_Module(), loggers=[], global_step=7)
    rows = report(trainer, None, "val", tmp_path, "Validation set, mtmed3d_tiny")
    assert [r["task"] for r in rows] == ["brats", "[mean]"]
    out = capsys.readouterr().out
    assert "Validation set, mtmed3d_tiny" in out and "| task | dice_wt | n | map |" in out
    saved = json.loads((tmp_path / "results_val.json").read_text())
    assert saved == rows
    header = (tmp_path / "results_val.csv").read_text().splitlines()[0]
    assert header == "task,dice_wt,n,map"


def test_checkpoint_module_must_be_restoration_or_a_declared_family():
    from medrestore.modules.checkpoint import module_class_of
    from medrestore.modules.restoration import RestorationModule

    assert module_class_of({"medrestore_module": "medrestore.modules.restoration:RestorationModule"},
                           "f.ckpt") is RestorationModule
    # importable, inside medrestore.modules, but neither kind: refused
    with pytest.raises(ConfigError, match="neither a RestorationModule nor a registered"):
        module_class_of({"medrestore_module": "medrestore.modules.checkpoint:ConfigError"}, "f.ckpt")
