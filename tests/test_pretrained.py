"""Starting from released weights: containers, strict loading with a one-line error, loading at
fit start (never at checkpoint restore), and ``medrestore-eval`` on a plain weights file."""

from __future__ import annotations

import pytest
import torch

from medrestore.errors import ConfigError
from medrestore.models.pretrained import load_pretrained, unwrap_state_dict
from medrestore.modules.restoration import RestorationModule

NET = {"name": "restormer_tiny", "in_channels": 3, "out_channels": 3}


def _weights(tmp_path, wrap):
    src = RestorationModule(NET).net
    torch.nn.init.normal_(src.output.weight)
    path = tmp_path / "w.pth"
    torch.save(wrap(src.state_dict()), path)
    return src, path


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"params": sd, "params_ema": {k: v * 0 for k, v in sd.items()}},   # BasicSR: params
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"state_dict": {**{f"net.{k}": v for k, v in sd.items()},          # our Lightning ckpt
                               **{f"net_ema.{k}": v * 0 for k, v in sd.items()},
                               "ema_updates": torch.tensor(3)}},
])
def test_common_containers_load_strictly(tmp_path, wrap):
    src, path = _weights(tmp_path, wrap)
    dst = RestorationModule(NET).net
    load_pretrained(dst, path, "official", "restormer_tiny")   # Restormer keys are the official ones
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_mismatch_is_one_line_naming_keys(tmp_path):
    src, path = _weights(tmp_path, lambda sd: {k.replace("output", "out"): v for k, v in sd.items()})
    with pytest.raises(ConfigError) as e:
        load_pretrained(RestorationModule(NET).net, path)
    msg = str(e.value)
    assert "\n" not in msg and "missing (e.g. output.weight" in msg and "unexpected (e.g. out.weight" in msg
    with pytest.raises(ConfigError, match="no such weights file"):
        load_pretrained(RestorationModule(NET).net, tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="pretrained_format"):
        load_pretrained(RestorationModule(NET).net, path, "timm")
    with pytest.raises(ConfigError, match="no state dict"):
        unwrap_state_dict({"epoch": 3, "meta": {"a": 1}}, "x.pth")


def test_pretrained_loads_at_fit_setup_into_net_and_ema(tmp_path):
    src, path = _weights(tmp_path, lambda sd: sd)
    m = RestorationModule({**NET, "pretrained": str(path), "pretrained_format": "medrestore"},
                          ema={"decay": 0.99})
    assert not torch.equal(m.net.output.weight, src.output.weight)   # not at construction
    m.setup("test")
    assert not torch.equal(m.net.output.weight, src.output.weight)   # nor for evaluation
    m.setup("fit")
    assert torch.equal(m.net.output.weight, src.output.weight)
    assert torch.equal(m.net_ema.output.weight, src.output.weight)
    assert "pretrained" in m.hparams.net                               # recorded for provenance
