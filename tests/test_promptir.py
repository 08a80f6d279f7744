"""PromptIR architecture: parity with the authors' class (counts, keys, order), the prompt
generation (per-sample mix, bilinear resize), the reference/fast switch, padding, released-
checkpoint loading and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import ConfigError
from medrestore.models.archs.promptir import (
    UNUSED_MODULES,
    PromptGenBlock,
    PromptIR,
    promptir,
    promptir_tiny,
)
from medrestore.models.layers.restormer import TransformerBlock
from medrestore.models.pretrained import load_pretrained
from medrestore.registry import FAMILIES, build_arch

FIXTURE = Path(__file__).parent / "fixtures" / "promptir_official_keys.json"

# The authors' PromptIR(decoder=True), instantiated and counted; 215,296 of these sit in six
# 1x1 convs the forward never calls.
OFFICIAL_PARAMS = 35_592_263
USED_PARAMS = 35_376_967
TINY_PARAMS = 403_670  # the baseline notes' 514,134 minus the authors' fixed-size unused convs
                       # (114,496 at dim 8) plus ours, which follow the prompt dims (4,032)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n(model: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def _meta(**kw: object) -> PromptIR:
    with torch.device("meta"):
        return promptir(**kw)


def _tiny(seed: int = 0, **kw: object) -> PromptIR:
    """A tiny net whose prompt-mix layers are far from uniform, so the mix varies per sample."""
    torch.manual_seed(seed)
    net = promptir_tiny(**kw)
    with torch.no_grad():
        for k in (1, 2, 3):
            getattr(net, f"prompt{k}").linear_layer.weight.mul_(50)
    return net


# --------------------------------------------------------------------------- parity
def test_parameter_counts_match_official() -> None:
    net = _meta()
    assert _n(net) == OFFICIAL_PARAMS
    assert _n(net, trainable=True) == USED_PARAMS  # the unused convs are frozen
    assert _n(_meta(unused_convs=False)) == USED_PARAMS
    assert json.loads(FIXTURE.read_text())["num_params"] == OFFICIAL_PARAMS
    assert _n(promptir_tiny()) == TINY_PARAMS


def test_state_dict_keys_shapes_and_order_match_official() -> None:
    ref = json.loads(FIXTURE.read_text())["state_dict_shapes"]
    sd = _meta().state_dict()
    ours = {k: list(v.shape) for k, v in sd.items()}
    assert len(ours) == 548
    assert ours == ref and list(ours) == list(ref)
    dropped = _meta(unused_convs=False).state_dict()
    assert set(sd) - set(dropped) == {f"{m}.weight" for m in UNUSED_MODULES}


def test_widths_follow_dim() -> None:
    net = promptir_tiny()
    d = net.dim
    c1, c2, c3 = net.prompt_dims
    for level, width in ((1, 2 * d + c1), (2, 4 * d + c2), (3, 8 * d + c3)):
        block = getattr(net, f"noise_level{level}")
        assert type(block) is TransformerBlock and block.attn.num_heads == net.heads[2]
        assert block.norm1.body.weight.shape == (width,)
    assert net.reduce_chan_level3.weight.shape[:2] == (4 * d, 6 * d)
    assert net.reduce_noise_level3.weight.shape[:2] == (4 * d, 8 * d + c3)
    assert net.reduce_noise_level2.weight.shape[:2] == (4 * d, 4 * d + c2)
    assert net.reduce_noise_level1.weight.shape[:2] == (2 * d, 2 * d + c1)
    assert net.prompt3.prompt_param.shape == (1, 5, c3, 8, 8)
    for name in UNUSED_MODULES:
        assert not getattr(net, name).weight.requires_grad


# --------------------------------------------------------------------------- prompts
def test_prompt_generation_matches_definition() -> None:
    torch.manual_seed(0)
    block = PromptGenBlock(prompt_dim=6, prompt_len=5, prompt_size=8, lin_dim=4)
    x = torch.randn(3, 4, 12, 20)
    w = torch.softmax(block.linear_layer(x.mean(dim=(2, 3))), dim=1)
    mixed = (w.view(3, 5, 1, 1, 1) * block.prompt_param.expand(3, -1, -1, -1, -1)).sum(1)
    expected = block.conv3x3(F.interpolate(mixed, (12, 20), mode="bilinear"))
    assert torch.equal(block(x), expected)  # reference: the same ops, bit for bit
    block.impl = "fast"
    assert torch.allclose(block(x), expected, atol=1e-5)
    same = torch.randn(2, 4, 8, 8)  # prompt size == feature size: the resize is the identity
    block.impl = "reference"
    ref = block(same)
    block.impl = "fast"
    assert torch.allclose(block(same), ref, atol=1e-6)
    assert torch.allclose(block.prompt_weights(x).sum(1), torch.ones(3))


def test_prompt_weights_per_sample_and_batch_independent() -> None:
    net = _tiny().eval()
    torch.manual_seed(5)
    x = torch.cat([torch.rand(1, 3, 48, 48), 0.3 * torch.rand(1, 3, 48, 48),
                   torch.rand(1, 3, 48, 48).pow(3)])
    for impl in ("reference", "fast"):
        net.set_impl(impl)
        with torch.no_grad():
            batch = net(x)
            alone = torch.cat([net(x[i:i + 1]) for i in range(3)])
            weights = net.prompt_weights(x)
        assert (batch - alone).abs().max().item() <= 1e-5, impl
    w3 = weights["prompt3"]
    assert w3.shape == (3, 5) and (w3[0] - w3[1]).abs().max() > 1e-3  # the mix differs per image


# --------------------------------------------------------------------------- contract
def test_forward_backward_and_return_types() -> None:
    net = _tiny().train()
    x = torch.rand(2, 3, 32, 32)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    F.l1_loss(out, torch.rand_like(x)).backward()
    for name, p in net.named_parameters():
        if name.split(".")[0] in UNUSED_MODULES:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is not None for p in net.prompt1.parameters())
    with torch.no_grad():
        assert isinstance(net.eval()(x), torch.Tensor)


def test_reference_and_fast_agree_in_training() -> None:
    nets = {impl: _tiny(seed=3, impl=impl).train() for impl in ("reference", "fast")}
    x, y = torch.rand(2, 3, 40, 24), torch.rand(2, 3, 40, 24)
    outs, grads = {}, {}
    for impl, net in nets.items():
        outs[impl] = net(x)
        F.l1_loss(outs[impl], y).backward()
        grads[impl] = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    assert (outs["reference"] - outs["fast"]).abs().max() < 1e-5
    assert grads["reference"].keys() == grads["fast"].keys()
    for k, g in grads["reference"].items():
        assert torch.allclose(g, grads["fast"][k], atol=1e-4, rtol=1e-3), k


def test_interaction_blocks_go_through_call_block(monkeypatch) -> None:
    # call_block is where checkpoint_blocks applies (tested with Restormer); the three
    # interaction blocks must be routed through it like the stage blocks.
    net = _tiny()
    seen = []
    original = PromptIR.call_block

    def spy(self, block, x, *args):
        seen.append(block)
        return original(self, block, x, *args)

    monkeypatch.setattr(PromptIR, "call_block", spy)
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
    assert all(any(b is getattr(net, f"noise_level{k}") for b in seen) for k in (1, 2, 3))
    assert len(seen) == sum(isinstance(m, TransformerBlock) for m in net.modules())


def test_any_size_padding_and_channels() -> None:
    net = _tiny().eval()
    x = torch.rand(1, 3, 37, 45)  # not a multiple of 8: padded, then cropped
    with torch.no_grad():
        assert net(x).shape == x.shape
        torch.nn.init.zeros_(net.output.weight)
        assert torch.equal(net(x), x)  # global residual
    gray = promptir_tiny(in_channels=1, out_channels=1).eval()
    assert gray(torch.rand(2, 1, 16, 24)).shape == (2, 1, 16, 24)
    to_one = promptir_tiny(in_channels=3, out_channels=1).eval()  # no residual across widths
    assert not to_one.use_residual and to_one(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)


def test_released_checkpoint_loads_strictly(tmp_path: Path) -> None:
    src = _tiny(seed=1).eval()
    # the authors' release: a Lightning checkpoint of a module holding the net as ``net``
    ckpt = {"state_dict": {f"net.{k}": v for k, v in src.state_dict().items()},
            "epoch": 119, "pytorch-lightning_version": "2.0.1"}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    dst = _tiny(seed=2).eval()
    load_pretrained(dst, path, "official", arch="promptir_tiny")
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    lean = promptir_tiny(unused_convs=False)
    with pytest.raises(ConfigError):  # strict: the unused convs are in every release
        load_pretrained(lean, path, "official", arch="promptir_tiny")


@pytest.mark.parametrize("kw, match", [
    ({"decoder": False}, "model.net.decoder=False"),
    ({"prompt_dims": (8, 16)}, "model.net.prompt_dims"),
    ({"prompt_sizes": (32, 0, 8)}, "model.net.prompt_sizes"),
    ({"prompt_dims": (9, 16, 32)}, "interaction width 25"),
    ({"prompt_len": 0}, "model.net.prompt_len"),
    ({"unused_convs": "yes"}, "model.net.unused_convs"),
    ({"heads": (1, 2, 3, 8)}, "model.net.heads"),
])
def test_bad_config_is_one_line(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        promptir_tiny(**kw)
    assert "\n" not in str(info.value)


def test_registered() -> None:
    assert FAMILIES.meta("promptir")["archs"] == ("promptir", "promptir_tiny")
    assert FAMILIES.meta("promptir")["official"] is None  # the authors' keys are ours
    assert isinstance(build_arch("promptir_tiny"), PromptIR)
