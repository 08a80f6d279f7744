"""Restormer architecture: parity with the reference layout, shapes, gradients, hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from medrestore.errors import ConfigError
from medrestore.models.archs.restormer import Restormer, pad_to_multiple, restormer, restormer_tiny
from medrestore.models.layers.restormer import MDTA, LayerNorm2d, TransformerBlock
from medrestore.registry import build_arch

FIXTURE = Path(__file__).parent / "fixtures" / "restormer_official_keys.json"

# Official class (swz30/Restormer restormer_arch.py), counted.
OFFICIAL_PARAMS_3TO3 = 26_126_644
OFFICIAL_PARAMS_1TO1 = 26_124_052


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_restormer(**kw: object) -> Restormer:
    # Meta tensors: full-size model without allocating or initialising 26M weights.
    with torch.device("meta"):
        return restormer(**kw)


def test_parameter_count_matches_official() -> None:
    assert _n_params(_meta_restormer()) == OFFICIAL_PARAMS_3TO3
    assert _n_params(_meta_restormer(in_channels=1, out_channels=1)) == OFFICIAL_PARAMS_1TO1


def test_state_dict_keys_and_shapes_match_official() -> None:
    ref = json.loads(FIXTURE.read_text())
    expected = [(k, list(v)) for k, v in ref["state_dict_shapes"].items()]
    ours = [(k, list(v.shape)) for k, v in _meta_restormer().state_dict().items()]
    assert ours == expected  # same keys, same order, same shapes -> strict loading works
    assert ref["num_params"] == OFFICIAL_PARAMS_3TO3


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward_odd_size(channels: int) -> None:
    torch.manual_seed(0)
    net = restormer_tiny(in_channels=channels, out_channels=channels)
    x = torch.rand(1, channels, 37, 53)
    y = net(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


def test_zero_output_conv_gives_identity() -> None:
    torch.manual_seed(0)
    net = restormer_tiny().eval()
    torch.nn.init.zeros_(net.output.weight)
    x = torch.rand(2, 3, 29, 40)
    with torch.no_grad():
        assert torch.equal(net(x), x)


def test_residual_skipped_when_channels_differ() -> None:
    net = restormer_tiny(in_channels=4, out_channels=1).eval()
    assert not net.use_residual
    torch.nn.init.zeros_(net.output.weight)
    with torch.no_grad():
        assert torch.equal(net(torch.rand(1, 4, 16, 16)), torch.zeros(1, 1, 16, 16))
    assert not restormer_tiny(global_residual=False).use_residual


def test_padding_is_transparent_on_multiples_and_handles_tiny_inputs() -> None:
    torch.manual_seed(0)
    net = restormer_tiny().eval()
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(net(x), net.forward_padded(x))
        assert net(torch.rand(1, 3, 3, 5)).shape == (1, 3, 3, 5)  # replicate fallback
    img = torch.rand(1, 1, 37, 53)
    padded, hw = pad_to_multiple(img, 8)
    assert padded.shape[-2:] == (40, 56) and hw == (37, 53)
    assert torch.equal(padded[..., :37, :53], img)  # right/bottom only
    assert torch.equal(padded[..., 37, :53], img[..., 35, :])  # reflect, edge not repeated


def test_pad_disabled_needs_multiples_of_8() -> None:
    net = restormer_tiny(pad_multiple=None)
    assert net(torch.rand(1, 3, 16, 8)).shape == (1, 3, 16, 8)
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 3, 15, 8))


def test_invalid_config_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.net\.pad_multiple=12; expected a multiple of 8"):
        restormer_tiny(pad_multiple=12)
    with pytest.raises(ConfigError, match=r"model\.net\.layernorm_type='withbias'; expected"):
        restormer_tiny(layernorm_type="withbias")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model\.net\.num_blocks=\[1, 1, 1\]; expected 4"):
        restormer_tiny(num_blocks=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"model\.net\.heads=\[1, 3, 2, 2\]; expected level 2"):
        restormer_tiny(heads=(1, 3, 2, 2))


def test_variants_run() -> None:
    x6 = torch.rand(1, 6, 16, 16)
    dp = restormer_tiny(in_channels=6, out_channels=3, dual_pixel_task=True)
    assert dp.skip_conv.weight.shape == (16, 8, 1, 1)
    assert dp(x6).shape == (1, 3, 16, 16)
    bf = restormer_tiny(bias=True, layernorm_type="BiasFree")
    assert "encoder_level1.0.norm1.body.bias" not in bf.state_dict()
    assert bf(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def _reference_layernorm(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The reference recipe: move C last, normalise the last dim, move back."""
    t = x.permute(0, 2, 3, 1)
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    if bias is None:
        out = t / torch.sqrt(var + 1e-5) * weight
    else:
        out = (t - mu) / torch.sqrt(var + 1e-5) * weight + bias
    return out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layernorm_matches_reference(kind: str) -> None:
    torch.manual_seed(0)
    ln = LayerNorm2d(24, kind)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in ln.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 24, 9, 13) * 3 + 1
    bias = getattr(ln.body, "bias", None)
    ref = _reference_layernorm(x, ln.body.weight, bias)
    assert (ln(x) - ref).abs().max().item() <= 1e-6
    if kind == "WithBias":
        torch_ln = F.layer_norm(x.permute(0, 2, 3, 1), (24,), ln.body.weight, bias, eps=1e-5)
        assert torch.allclose(ln(x), torch_ln.permute(0, 3, 1, 2), atol=1e-5)


def test_override_points_are_used() -> None:
    calls: list[str] = []

    class TracingMDTA(MDTA):
        def apply_qkv_dwconv(self, x: Tensor) -> Tensor:
            calls.append("dw")
            return super().apply_qkv_dwconv(x)

        def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            calls.append("attend")
            return super().attend(q, k, v)

    class TracingRestormer(Restormer):
        def build_block(self, stage: str, dim: int, num_heads: int) -> torch.nn.Module:
            block = super().build_block(stage, dim, num_heads)
            assert isinstance(block, TransformerBlock)
            block.attn = TracingMDTA(dim, num_heads, self.use_bias)
            return block

    tiny = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                ffn_expansion_factor=2.0)
    net = TracingRestormer(**tiny)  # type: ignore[arg-type]
    plain = Restormer(**tiny)  # type: ignore[arg-type]
    net.load_state_dict(plain.state_dict(), strict=True)  # keys unchanged by the swap
    with torch.no_grad():
        x = torch.rand(1, 3, 16, 16)
        assert torch.equal(net.eval()(x), plain.eval()(x))
    assert calls.count("dw") == calls.count("attend") == 8  # 3 enc + latent + 3 dec + refine


def test_head_and_conditioning_hooks() -> None:
    seen: list[tuple[str, object]] = []

    class Hooked(Restormer):
        def build_head(self, channels: int) -> None:
            self.pre_output = torch.nn.Identity()  # registered between refinement and output
            super().build_head(channels)

        def run_stage(self, stage: str, x: Tensor, cond: object = None) -> Tensor:
            seen.append((stage, cond))
            return super().run_stage(stage, x, cond)

    tiny = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                ffn_expansion_factor=2.0)
    net = Hooked(**tiny).eval()  # type: ignore[arg-type]
    names = list(dict(net.named_children()))
    assert names[-3:] == ["refinement", "pre_output", "output"]
    skips, latent_in = net.encode(torch.rand(1, 3, 16, 16))
    seen.clear()
    with torch.no_grad():
        out = net.decode(net.latent(latent_in), skips, "c")
        dec1 = net.decode_levels(net.latent(latent_in), skips, "c")
        assert torch.equal(out, net.refinement(dec1))  # decode = refinement(decode_levels)
    assert seen[:4] == [("decoder_level3", "c"), ("decoder_level2", "c"),
                        ("decoder_level1", "c"), ("refinement", "c")]


def test_registry_builds() -> None:
    net = build_arch("restormer_tiny", in_channels=1, out_channels=1)
    assert isinstance(net, Restormer) and net.dim == 8 and net.in_channels == 1


def test_zero_init_output_starts_as_identity():
    import torch

    from medrestore.models.archs.restormer import restormer_tiny

    net = restormer_tiny(in_channels=1, out_channels=1, zero_init_output=True).eval()
    x = torch.rand(1, 1, 24, 40)
    with torch.no_grad():
        assert torch.equal(net(x), x)
    ref = restormer_tiny(in_channels=1, out_channels=1)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in ref.parameters())
