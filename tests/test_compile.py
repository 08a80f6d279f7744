"""``model.compile``: torch.compile of the training network, same keys, eager fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrestore.errors import ConfigError
from medrestore.modules.restoration import RestorationModule


class TinyModule(RestorationModule):
    """RestorationModule around a two-conv network (fast to compile on a CPU)."""

    def build_net(self, name, kwargs):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1))
        net.in_channels = net.out_channels = 3
        return net


def _module(compile_mode, ema=None):
    return TinyModule(net={"name": "tiny"}, compile=compile_mode, ema=ema)


@pytest.mark.parametrize("value, mode", [(False, None), (None, None), ("false", None),
                                         (True, "default"), ("true", "default"),
                                         ("max-autotune", "max-autotune")])
def test_compile_option_values(value, mode):
    assert _module(value).compile_mode == mode


def test_unknown_compile_mode_is_one_line_error():
    with pytest.raises(ConfigError, match=r"model.compile='fast'; expected false, true or one of"):
        _module("fast")


def test_compile_off_leaves_net_eager():
    m = _module(False)
    m.configure_model()
    assert m.net._compiled_call_impl is None


def test_compiled_output_matches_eager_and_keeps_keys(tmp_path):
    eager, compiled = _module(False, ema={"decay": 0.9}), _module(True, ema={"decay": 0.9})
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    compiled.configure_model()
    assert compiled.net._compiled_call_impl is not None
    assert list(compiled.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    x = torch.rand(2, 3, 16, 16)
    compiled.train()
    eager.train()
    out_c = compiled(x)
    assert compiled.compile_net()  # still compiled: the first call did not fall back
    torch.testing.assert_close(out_c, eager(x), atol=1e-5, rtol=1e-5)
    out_c.mean().backward()        # gradients flow through the compiled graph
    assert all(p.grad is not None for p in compiled.net.parameters())
    torch.save(compiled.state_dict(), tmp_path / "w.pt")   # a compiled module still saves
    eager.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))


def test_compile_error_at_first_call_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler\nlong trace")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    m, ref = _module(True), _module(False)
    m.configure_model()
    x = torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: inductor: no C\+\+ compiler\); running the network eager"):
        out = m(x)
    torch.testing.assert_close(out, ref(x))
    assert m.net._compiled_call_impl is None and not m._compiled


def test_compile_error_at_compile_time_falls_back(monkeypatch):
    def refuse(fn, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    m = _module("reduce-overhead")
    with pytest.warns(UserWarning, match="running the network eager"):
        assert m.compile_net() is False
    assert m.net._compiled_call_impl is None


def test_model_configs_expose_compile(tmp_path):
    from conftest import compose

    for name in ("restormer", "tat", "datprl", "restormer_tiny"):
        cfg = compose("train", [f"model={name}", "model.compile=true"], tmp_path)
        assert cfg.model.compile is True
