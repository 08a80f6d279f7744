"""No file a user hands us may run code: crafted checkpoints are refused by every entry point,
before anything in them is executed or imported, with one line naming the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import RunsCode, REPO, compose, tiny_overrides
from medrestore.errors import ConfigError, MedrestoreError

TINY = {"name": "restormer_tiny", "dim": 8}


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    from medrestore.modules.restoration import RestorationModule

    d = tmp_path_factory.mktemp("ckpt")
    model = RestorationModule(TINY, {"_target_": "torch.optim.AdamW", "lr": 1e-3})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(d / "good.ckpt")
    return d / "good.ckpt"


def _variants(good: Path, d: Path, marker: Path) -> dict[str, Path]:
    """Crafted files: a code-running pickle in a Lightning-shaped checkpoint and in plain
    weights, and weights-only-safe checkpoints that name code to import or call."""
    ckpt = torch.load(good, weights_only=True)
    out = {}
    evil = dict(ckpt, callbacks={"x": RunsCode(marker)})
    torch.save(evil, d / "pickle.ckpt")
    out["pickle.ckpt"] = d / "pickle.ckpt"
    torch.save({"params": {"w": torch.zeros(1)}, "x": RunsCode(marker)}, d / "pickle.pth")
    out["pickle.pth"] = d / "pickle.pth"
    torch.save(dict(ckpt, medrestore_module="os:system"), d / "module.ckpt")
    out["module.ckpt"] = d / "module.ckpt"
    hp = dict(ckpt["hyper_parameters"], optimizer={"_target_": "os.system", "command": "true"})
    torch.save(dict(ckpt, hyper_parameters=hp), d / "target.ckpt")
    out["target.ckpt"] = d / "target.ckpt"
    hp = dict(ckpt["hyper_parameters"], _instantiator="os.system")
    torch.save(dict(ckpt, hyper_parameters=hp), d / "instantiator.ckpt")
    out["instantiator.ckpt"] = d / "instantiator.ckpt"
    return out


def test_pickle_really_runs_code_without_weights_only(tmp_path):
    # the fixture is dangerous for real: proves the tests below would notice execution
    marker = tmp_path / "ran"
    torch.save({"x": RunsCode(marker)}, tmp_path / "f.ckpt")
    torch.load(tmp_path / "f.ckpt", weights_only=False)
    assert marker.exists()


def test_restorer_and_loaders_refuse_crafted_files(tmp_path, good_ckpt):
    from medrestore.inference.restorer import Restorer
    from medrestore.models.pretrained import load_pretrained
    from medrestore.modules.restoration import RestorationModule

    marker = tmp_path / "ran"
    files = _variants(good_ckpt, tmp_path, marker)
    assert Restorer.from_checkpoint(str(good_ckpt)).module.arch == "restormer_tiny"
    expected = {"pickle.ckpt": "refused: the file holds pickled Python objects",
                "pickle.pth": "refused: the file holds pickled Python objects",
                "module.ckpt": "refused: medrestore_module='os:system'",
                "target.ckpt": "refused: hyper_parameters.optimizer._target_='os.system'",
                "instantiator.ckpt": "refused: hyper_parameters._instantiator"}
    for name, path in files.items():
        with pytest.raises(ConfigError) as info:
            Restorer.from_checkpoint(str(path))
        msg = str(info.value)
        assert "\n" not in msg and name in msg and expected[name] in msg, msg
    model = RestorationModule(TINY)
    with pytest.raises(ConfigError, match="pickle.pth: refused"):
        load_pretrained(model.net, files["pickle.pth"])
    with pytest.raises(ConfigError, match="pickle.pth: refused"):
        model.load_pretrained(str(files["pickle.pth"]))
    with pytest.raises(ConfigError, match="pickle.pth: refused"):
        load_pretrained(model.net, files["pickle.pth"], "official", "tat")
    assert not marker.exists()


def test_train_and_eval_refuse_crafted_checkpoints(tmp_path, toy_shard, good_ckpt, capsys):
    from medrestore.cli.eval import evaluate
    from medrestore.cli.train import train

    marker = tmp_path / "ran"
    files = _variants(good_ckpt, tmp_path, marker)
    for name in ("pickle.ckpt", "module.ckpt", "target.ckpt"):
        run = tmp_path / f"train_{name}"
        cfg = compose("train", tiny_overrides(toy_shard) + [f"ckpt_path={files[name]}"], run)
        with pytest.raises(SystemExit) as info:
            train(cfg)
        assert info.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and name in err[0] and "refused" in err[0], err
        assert not (run / "checkpoints").exists()          # refused before any work
    for name in ("pickle.ckpt", "pickle.pth", "module.ckpt"):
        cfg = compose("eval", [f"data.sets=[{toy_shard}]", f"ckpt_path={files[name]}",
                               "trainer.enable_progress_bar=false"], tmp_path / f"eval_{name}")
        with pytest.raises(SystemExit) as info:
            evaluate(cfg)
        assert info.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and name in err[0] and "refused" in err[0], err
    # model.net.pretrained is read at fit start: refused there too
    cfg = compose("train", tiny_overrides(toy_shard) + [
        f"+model.net.pretrained={files['pickle.pth']}", "model.net.pretrained_format=medrestore"],
        tmp_path / "train_pretrained")
    with pytest.raises(SystemExit):
        train(cfg)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "pickle.pth: refused" in err[0], err
    assert not marker.exists()


@pytest.mark.slow
def test_eval_cli_refuses_crafted_checkpoint(tmp_path, toy_shard, good_ckpt):
    marker = tmp_path / "ran"
    files = _variants(good_ckpt, tmp_path, marker)
    out = subprocess.run([sys.executable, "-m", "medrestore.cli.eval", f"ckpt_path={files['pickle.ckpt']}",
                          f"data.sets=[{toy_shard}]", f"paths.log_dir={tmp_path}/logs"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    err = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "pickle.ckpt: refused" in err[0]
    assert "Traceback" not in out.stderr and not marker.exists()


def test_src_never_loads_without_weights_only():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "src").rglob("*.py")
                 if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_medrestore_error_is_the_user_error_base():
    assert issubclass(ConfigError, MedrestoreError)
