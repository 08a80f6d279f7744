"""TAT architecture: reference layout and size, adaptive kernels, generator, TLC, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import ConfigError
from medrestore.models.archs.tat import TAT, tat, tat_tiny
from medrestore.models.archs.tat_official import convert_official_state_dict, to_official_state_dict
from medrestore.models.layers import tlc as tlc_mod
from medrestore.models.layers.dynamic import (AdaptiveTransformerBlock,
                                              dynamic_depthwise_conv2d)
from medrestore.models.layers.restormer import MDTA, TransformerBlock
from medrestore.models.layers.tlc import LocalMDTA, TLC, window_grid, window_starts
from medrestore.models.pretrained import load_pretrained
from medrestore.registry import build_arch

FIXTURE = Path(__file__).parent / "fixtures" / "tat_official_keys.json"
OFFICIAL_PARAMS = 41_687_424


def _meta_tat(**kw: object) -> TAT:
    with torch.device("meta"):  # full size without allocating 41.7M weights
        return tat(**kw)


def _randomise_lambdas(net: torch.nn.Module, scale: float = 2.0) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("lambda_dw"):
                p.copy_(torch.randn_like(p) * scale)


def _perturb_generator(net: TAT) -> None:
    with torch.no_grad():
        for p in net.tren.parameters():
            p.add_(torch.randn_like(p) * 0.5)


# ------------------------------------------------------------------ layout and size
def test_parameter_count_and_official_keys() -> None:
    net = _meta_tat()
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMS
    ref = json.loads(FIXTURE.read_text())
    expected = [(k, list(v)) for k, v in ref["state_dict_shapes"].items()]
    ours = [(k, list(v.shape)) for k, v in convert_official_state_dict(net.state_dict()).items()]
    assert ours == expected  # same keys, order and shapes: the converter is the identity
    assert ref["num_params"] == OFFICIAL_PARAMS
    # 16 static encoder blocks, 28 adaptive ones
    n_static = sum(isinstance(m, TransformerBlock) and not isinstance(m, AdaptiveTransformerBlock)
                   for m in net.modules())
    assert n_static == 16 and sum(isinstance(m, AdaptiveTransformerBlock) for m in net.modules()) == 28


def test_initialisation_follows_reference() -> None:
    torch.manual_seed(0)
    net = tat_tiny(dim=16)
    blk = net.latent[0]
    assert torch.count_nonzero(blk.attn.lambda_dw) == 0 and torch.count_nonzero(blk.ffn.lambda_dw) == 0
    # attention static kernel ~ N(0, 1); FFN static kernel Kaiming fan-out: std sqrt(2/9)
    assert 0.8 < blk.attn.dw_kernel.std().item() < 1.2
    assert abs(blk.ffn.dw_kernel.std().item() - math.sqrt(2 / 9)) < 0.1


# ------------------------------------------------------------------ dynamic depthwise conv
def test_dynamic_depthwise_conv_equals_per_sample_loop() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 7)
    w = torch.randn(3, 5, 1, 3, 3)
    y = dynamic_depthwise_conv2d(x, w)
    ref = torch.cat([F.conv2d(x[b:b + 1], w[b].reshape(5, 1, 3, 3), padding=1, groups=5)
                     for b in range(3)])
    assert torch.allclose(y, ref, atol=1e-6)
    shared = torch.randn(1, 5, 3, 3)  # one kernel bank broadcast to the batch = a plain dwconv
    assert torch.allclose(dynamic_depthwise_conv2d(x, shared),
                          F.conv2d(x, shared.reshape(5, 1, 3, 3), padding=1, groups=5), atol=1e-6)
    with pytest.raises(ValueError):
        dynamic_depthwise_conv2d(x, torch.randn(2, 5, 3, 3))


def test_adaptive_block_with_zero_lambda_is_a_static_block() -> None:
    torch.manual_seed(0)
    ada = AdaptiveTransformerBlock(16, 2, 2.0).eval()
    static = TransformerBlock(16, 2, 2.0).eval()
    sd = {k: v for k, v in ada.state_dict().items() if "dw_kernel" not in k and "lambda_dw" not in k}
    sd["attn.qkv_dwconv.weight"] = ada.attn.dw_kernel.detach().reshape(48, 1, 3, 3)
    sd["ffn.dwconv.weight"] = ada.ffn.dw_kernel.detach().reshape(64, 1, 3, 3)
    static.load_state_dict(sd, strict=True)
    x = torch.randn(2, 16, 12, 10)
    gen_a, gen_f = torch.randn(2, 48, 1, 3, 3), torch.randn(2, 64, 1, 3, 3)
    with torch.no_grad():
        assert torch.allclose(ada(x, gen_a, gen_f), static(x), atol=1e-5)


# ------------------------------------------------------------------ generator
def test_zero_lambda_ignores_the_generator() -> None:
    torch.manual_seed(0)
    net = tat_tiny().eval()
    x = torch.rand(2, 1, 32, 24)
    with torch.no_grad():
        before = net(x)
        _perturb_generator(net)
        assert torch.equal(net(x), before)


def test_nonzero_lambda_uses_the_generator_per_image() -> None:
    torch.manual_seed(0)
    net = tat_tiny().eval()
    _randomise_lambdas(net)
    x = torch.rand(2, 1, 32, 24)
    with torch.no_grad():
        before = net(x)
        kernels = net.generate_kernels(net.encode(x)[1])
        _perturb_generator(net)
        after = net(x)
    assert (after - before).abs().max() > 1e-4
    # one kernel per image and level: different images get different kernels
    assert set(kernels) == {"latent", "level3", "level2", "level1"}
    assert kernels["latent"].attn.shape == (2, 3 * 64, 1, 3, 3)
    assert kernels["level1"].ffn.shape == (2, 2 * 32, 1, 3, 3)
    assert not torch.allclose(kernels["level1"].attn[0], kernels["level1"].attn[1])


def test_generator_input_is_detached() -> None:
    torch.manual_seed(0)
    net = tat_tiny()
    skips, latent_in = net.encode(torch.rand(2, 1, 32, 32))
    kernels = net.generate_kernels(latent_in)
    sum(k.attn.square().sum() + k.ffn.square().sum() for k in kernels.values()).backward()
    encoder = [p for n, p in net.named_parameters() if n.startswith(("patch_embed", "encoder", "down"))]
    assert encoder and all(p.grad is None for p in encoder)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.tren.parameters())


# ------------------------------------------------------------------ TLC
def test_window_grid_is_the_reference_grid() -> None:
    assert window_starts(400, 192) == [0, 104, 208]   # 3 windows, stride ⌈208/2⌉
    assert window_starts(256, 192) == [0, 64]
    assert window_starts(512, 192) == [0, 160, 320]
    assert window_starts(128, 192) == [0]             # window clipped to the map: global
    assert window_starts(24, 24) == [0]
    origins, size = window_grid(48, 40, (24, 24))
    assert origins == [(0, 0), (0, 16), (24, 0), (24, 16)] and size == (24, 24)


def test_windowed_attention_averages_window_outputs() -> None:
    torch.manual_seed(0)
    attn = LocalMDTA(8, 2).eval()
    attn.tlc = TLC(train_hw=(4, 4), window=(6, 6))
    q, k, v = (torch.randn(2, 8, 10, 7) for _ in range(3))
    got = attn.attend(q, k, v)
    acc, cnt = torch.zeros(2, 8, 10, 7), torch.zeros(1, 1, 10, 7)
    for i in (0, 4):          # rows: 2 windows of 6 over 10 -> stride 4
        for j in (0, 1):      # cols: 2 windows of 6 over 7 -> stride 1
            sl = (slice(None), slice(None), slice(i, i + 6), slice(j, j + 6))
            acc[sl] += MDTA.attend(attn, q[sl], k[sl], v[sl])
            cnt[sl] += 1
    assert torch.allclose(got, acc / cnt, atol=1e-6)


def _count_windowed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = tlc_mod.windowed_attend

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tlc_mod, "windowed_attend", counting)
    return calls


def test_tlc_batch_equals_single_images(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = tat_tiny(train_size=16).eval()
    _randomise_lambdas(net)
    calls = _count_windowed(monkeypatch)
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        batch = net(x)
        assert len(calls) == 8  # every attention layer (4 static + 4 adaptive) used windows
        singles = torch.cat([net(x[:1]), net(x[1:])])
        assert torch.allclose(batch, singles, atol=1e-5)
        net.set_tlc(False)  # global attention: a different result
        glob = net(x)
    assert len(calls) == 24
    assert (glob - batch).abs().max() > 1e-4


def test_tlc_not_used_at_training_size_or_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    calls = _count_windowed(monkeypatch)
    net = tat_tiny(train_size=32).eval()
    with torch.no_grad():
        net(torch.rand(1, 1, 32, 32))
    assert not calls
    net.train()(torch.rand(1, 1, 64, 56))  # "auto": training is global
    assert not calls
    net.set_tlc(True)  # the reference's rule: size only, also in training
    net(torch.rand(1, 1, 64, 56))
    assert calls
    assert tat_tiny(tlc=False).latent[0].attn.tlc.mode is False
    with pytest.raises(ConfigError, match="model.net.tlc='yes'"):
        net.set_tlc("yes")  # type: ignore[arg-type]


def test_tlc_windows_follow_the_reference_sizes() -> None:
    net = _meta_tat()
    expect = {"encoder_level1": (128, 192), "encoder_level2": (64, 96), "encoder_level3": (32, 48),
              "latent": (16, 24), "decoder_level3": (32, 48), "decoder_level2": (64, 96),
              "decoder_level1": (128, 192), "refinement": (128, 192)}
    for stage, (train, window) in expect.items():
        t = getattr(net, stage)[0].attn.tlc
        assert t.train_hw == (train, train) and t.window == (window, window), stage


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_official_containers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tat_tiny().eval()
    _randomise_lambdas(src)
    path = tmp_path / "ours.pth"
    torch.save(src.state_dict(), path)
    x = torch.rand(1, 1, 24, 32)
    dst = tat_tiny().eval()
    load_pretrained(dst, path, format="medrestore")
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    official = to_official_state_dict(src.state_dict())
    for i, wrapped in enumerate([
        {"params_ema": {f"module.{k}": v for k, v in official.items()}},
        {"state_dict": official},
        {"net": {f"net.{k}": v for k, v in official.items()}},
    ]):
        torch.save(wrapped, tmp_path / f"o{i}.pth")
        dst = tat_tiny().eval()
        load_pretrained(dst, tmp_path / f"o{i}.pth", format="official")
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))
    # a Lightning checkpoint of the training module: network under "net.", plus other parts
    lightning = {"state_dict": {**{f"net.{k}": v for k, v in src.state_dict().items()},
                                "sigma_net.out.bias": torch.ones(1)}}
    dst = tat_tiny()
    load_pretrained(dst, lightning, format="medrestore")
    assert torch.equal(dst.output.weight, src.output.weight)


def test_bad_keys_give_one_line_error(tmp_path: Path) -> None:
    sd = tat_tiny().state_dict()
    sd["tren.kernel_level9_attn.0.weight"] = sd.pop("tren.kernel_level1_attn.0.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ConfigError) as err:
        load_pretrained(tat_tiny(), path, format="official")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "tren.kernel_level1_attn.0.weight" in msg and "tren.kernel_level9_attn.0.weight" in msg
    with pytest.raises(ConfigError, match="format"):
        load_pretrained(tat_tiny(), path, format="timm")
    with pytest.raises(ConfigError, match="no such weights file"):
        load_pretrained(tat_tiny(), tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="shape mismatch"):
        load_pretrained(tat_tiny(dim=10), tat_tiny().state_dict())


# ------------------------------------------------------------------ small model end to end
@pytest.mark.parametrize("channels", [1, 3])
def test_tiny_forward_backward(channels: int) -> None:
    torch.manual_seed(0)
    net = build_arch("tat_tiny", in_channels=channels, out_channels=channels)
    _randomise_lambdas(net, 0.5)
    x = torch.rand(2, channels, 32, 32)
    y = net(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net(torch.rand(1, channels, 37, 53)).shape == (1, channels, 37, 53)  # padded, cropped


def test_zero_output_gives_identity_and_aliases() -> None:
    net = tat_tiny(zero_init_output=True).eval()
    x = torch.rand(1, 1, 24, 40)
    with torch.no_grad():
        assert torch.equal(net(x), x)
    alias = tat_tiny(inp_channels=3, out_channels=3, LayerNorm_type="BiasFree")
    assert alias.in_channels == 3 and alias.layernorm_type == "BiasFree"
    with pytest.raises(ConfigError, match=r"model\.net\.dim=9; expected an even number"):
        tat_tiny(dim=9)
    with pytest.raises(ConfigError, match=r"model\.net\.inp_channels=1 and model\.net\.in_ch"):
        tat_tiny(in_channels=1, inp_channels=1)
    with pytest.raises(ConfigError, match=r"model\.net\.train_size=4; expected at least 8"):
        tat_tiny(train_size=4)
    with pytest.raises(ConfigError, match=r"model\.net\.tlc='yes'; expected true, false or 'auto'"):
        tat_tiny(tlc="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model\.net\.heads=\[1, 1, 3, 2\]; expected level 3"):
        tat_tiny(heads=(1, 1, 3, 2))

