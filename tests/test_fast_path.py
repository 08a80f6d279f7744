"""The fast implementation path (``impl="fast"``) and activation checkpointing against the
reference path, for the same weights: outputs, gradients, keys, options."""

from __future__ import annotations

import pytest
import torch

from medrestore.errors import ConfigError
from medrestore.models.layers import restormer as layers
from medrestore.models.layers.dynamic import dynamic_depthwise_conv2d
from medrestore.registry import build_arch

FAMILIES = {"restormer": 3, "tat": 1, "datprl": 3, "promptir": 3, "amir": 1, "moce_ir": 3}  # arch -> channels
TINY = ["restormer_tiny", "tat_tiny", "datprl_tiny", "promptir_tiny", "amir_tiny", "moce_ir_tiny"]
OUT_TOL = 1e-5  # max |Δ| of outputs (images in [0, 1], outputs of order 1)
GRAD_TOL = 1e-4  # per parameter: ‖Δ‖ / ‖g_reference‖


def _pred(out):
    return out[0] if isinstance(out, tuple) else out


def _pair(arch: str, seed: int = 0, lambda_std: float = 1.0, **kw):
    """Reference and fast networks with the same random weights (TAT's λ made non-zero so the
    generated kernels matter)."""
    c = FAMILIES[arch.removesuffix("_tiny")]
    torch.manual_seed(seed)
    ref = build_arch(arch, in_channels=c, out_channels=c, impl="reference", **kw)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("lambda_dw"):
                p.normal_(0, lambda_std)
    fast = build_arch(arch, in_channels=c, out_channels=c, impl="fast", **kw)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast, c


def _run(net, x, seed: int = 1):
    torch.manual_seed(seed)  # DATPRL's selection noise / dropout draw the same numbers
    return _pred(net(x))


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _assert_grads_close(g_ref: dict, g_new: dict) -> None:
    assert g_ref.keys() == g_new.keys()
    scale = max(g.norm().item() for g in g_ref.values())
    for name, g in g_ref.items():
        # Relative to the parameter's own gradient (L2 norms, so one element summed in another
        # order does not decide), floored by the network's largest one so a parameter whose
        # gradient is (near) zero, e.g. AGF's single-key attention, is not judged on noise.
        ref = max(g.norm().item(), 1e-3 * scale)
        err = (g - g_new[name]).norm().item() / ref
        assert err <= GRAD_TOL, f"{name}: relative gradient difference {err:.2e}"


@pytest.mark.parametrize("arch", TINY)
@pytest.mark.parametrize("batch", [1, 3])
def test_training_outputs_and_gradients_match(arch: str, batch: int) -> None:
    ref, fast, c = _pair(arch)
    x = torch.rand(batch, c, 128, 128)
    ref.train(), fast.train()
    y_ref, y_fast = _run(ref, x), _run(fast, x)
    assert y_fast.shape == y_ref.shape and y_fast.is_contiguous()
    assert (y_ref - y_fast).abs().max().item() <= OUT_TOL
    target = torch.rand_like(y_ref)
    (y_ref - target).abs().mean().backward()
    (y_fast - target).abs().mean().backward()
    _assert_grads_close(_grads(ref), _grads(fast))


@pytest.mark.parametrize("arch", TINY)
@pytest.mark.parametrize("batch", [1, 3])
def test_eval_outputs_match_at_a_tlc_size(arch: str, batch: int) -> None:
    ref, fast, c = _pair(arch)
    ref.eval(), fast.eval()
    x = torch.rand(batch, c, 192, 160)  # tat_tiny trains at 64²: TLC windows at every level
    with torch.no_grad():
        assert (_run(ref, x) - _run(fast, x)).abs().max().item() <= OUT_TOL


def test_reference_path_unchanged_by_the_switch() -> None:
    """``set_impl`` back to reference gives the reference's output bit for bit."""
    ref, fast, c = _pair("tat_tiny")
    fast.set_impl("reference")
    x = torch.rand(2, c, 64, 64)
    with torch.no_grad():
        assert torch.equal(_run(ref.eval(), x), _run(fast.eval(), x))


@pytest.mark.parametrize("piece", sorted(layers.FAST_PIECES))
def test_each_fast_piece_alone_matches(piece: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks switch pieces off one at a time; every such mix is still equivalent."""
    monkeypatch.setitem(layers.FAST_PIECES, piece, False)
    ref, fast, c = _pair("tat_tiny")
    x = torch.rand(2, c, 64, 64)
    with torch.no_grad():
        assert (_run(ref, x) - _run(fast, x)).abs().max().item() <= OUT_TOL


def test_per_sample_dynamic_conv_matches_grouped() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6, 11, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 6, 1, 3, 3)
    torch.testing.assert_close(dynamic_depthwise_conv2d(x, w, per_sample=True),
                               dynamic_depthwise_conv2d(x, w), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", TINY)
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_checkpoint_blocks_gives_the_same_gradients(arch: str, impl: str) -> None:
    c = FAMILIES[arch.removesuffix("_tiny")]
    nets = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        nets.append(build_arch(arch, in_channels=c, out_channels=c, impl=impl,
                               checkpoint_blocks=ckpt).train())
    x = torch.rand(2, c, 64, 64)
    outs = [_run(net, x) for net in nets]
    assert torch.equal(outs[0], outs[1])
    for out in outs:
        out.square().mean().backward()
    g0, g1 = _grads(nets[0]), _grads(nets[1])
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-7, rtol=1e-5, msg=name)


def test_options_keep_keys_and_reject_bad_values() -> None:
    ref, fast, _ = _pair("tat_tiny", checkpoint_blocks=True)
    assert list(ref.state_dict()) == list(fast.state_dict())
    ref.load_state_dict(fast.state_dict(), strict=True)
    with pytest.raises(ConfigError, match="model.net.impl"):
        build_arch("tat_tiny", impl="turbo")
    with pytest.raises(ConfigError, match="model.net.checkpoint_blocks"):
        build_arch("restormer_tiny", checkpoint_blocks="yes")


@pytest.mark.slow
# the baselines' full-size fast paths are checked against the authors' code by
# benchmarks/reference_check.py (outputs and gradients); here the tiny variants above
@pytest.mark.parametrize("arch", ["restormer", "tat", "datprl"])
def test_full_size_fast_path_matches(arch: str) -> None:
    """One forward/backward per family at the paper sizes (64², batch 1: short). TAT's λ at
    std 0.5 (as benchmarks/reference_check.py): with std 1 the random per-image kernels of 44
    blocks amplify rounding until single gradients sit at the tolerance."""
    ref, fast, c = _pair(arch, lambda_std=0.5)
    x = torch.rand(1, c, 64, 64)
    ref.train(), fast.train()
    y_ref, y_fast = _run(ref, x), _run(fast, x)
    # Random full-size weights give outputs of a few units: the tolerance scales with them.
    tol = OUT_TOL * max(1.0, y_ref.abs().max().item())
    assert (y_ref - y_fast).abs().max().item() <= tol
    y_ref.abs().mean().backward()
    y_fast.abs().mean().backward()
    _assert_grads_close(_grads(ref), _grads(fast))


@pytest.mark.parametrize("shape,window", [((1, 8, 50, 37), (20, 16)), ((3, 8, 17, 40), (12, 12)),
                                          ((2, 4, 24, 24), (24, 30))])
def test_region_tlc_equals_window_cutting(shape: tuple, window: tuple) -> None:
    from medrestore.models.layers.restormer import MDTA
    from medrestore.models.layers.tlc import region_windowed_attend, windowed_attend

    torch.manual_seed(0)
    mdta = MDTA(shape[1], num_heads=2)
    with torch.no_grad():
        mdta.temperature.uniform_(0.5, 2.0)
    q, k, v = (torch.randn(shape) for _ in range(3))
    expected = windowed_attend(mdta.attend, q, k, v, window)
    got = region_windowed_attend(q, k, v, window, mdta.num_heads, mdta.temperature)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_tlc_in_training_gradients_match() -> None:
    """``tlc=True`` windows in training too: the region form's gradients equal the windows'."""
    ref, fast, c = _pair("tat_tiny", tlc=True)
    x = torch.rand(2, c, 96, 80)
    y_ref, y_fast = _run(ref.train(), x), _run(fast.train(), x)
    assert (y_ref - y_fast).abs().max().item() <= OUT_TOL
    y_ref.square().mean().backward()
    y_fast.square().mean().backward()
    _assert_grads_close(_grads(ref), _grads(fast))
