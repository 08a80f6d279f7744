"""AMIR architecture: parity with the authors' class (count, keys, buffers), the train/eval
return contract, per-sample routing, the two log-space combines, padding and the small-input
limit, checkpoints in the authors' layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.models.archs.amir import (
    AMIR,
    ChannelRouting,
    NoisyTopKMoE,
    amir,
    amir_tiny,
    cv_squared,
)
from medrestore.models.archs.restormer import pad_to_multiple
from medrestore.models.pretrained import load_pretrained
from medrestore.registry import build_arch, family_of

FIXTURE = Path(__file__).parent / "fixtures" / "amir_official_keys.json"

# ``AMIR()`` of the authors' model/Model_AMIR.py, instantiated and counted.
OFFICIAL_PARAMS = 23_540_498
OFFICIAL_ENTRIES = 666  # including 6 buffers (moe.mean / moe.std of the 3 spatial routers)
# The authors' class at dim 8, blocks 1/1/1/1 + 1 (their hard-coded 256/32/4/2 routing sizes).
OFFICIAL_PARAMS_DIM8 = 342_745


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(seed: int = 0, **kw: object) -> AMIR:
    torch.manual_seed(seed)
    net = amir_tiny(**kw)
    with torch.no_grad():  # channel routers start as the identity; make them matter
        for m in net.modules():
            if isinstance(m, ChannelRouting):
                m.gamma.normal_(0, 0.5)
                m.beta.normal_(0, 0.5)
            if isinstance(m, NoisyTopKMoE):
                m.w_noise.normal_(0, 0.1)
    return net


# --------------------------------------------------------------------------- parity
def test_parameter_count_keys_and_buffers_match_official() -> None:
    with torch.device("meta"):  # full size without allocating ~23.5 M weights
        net = amir()
        dim8 = amir(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    assert _n_params(net) == OFFICIAL_PARAMS
    assert _n_params(dim8) == OFFICIAL_PARAMS_DIM8
    ref = json.loads(FIXTURE.read_text())
    assert ref["num_params"] == OFFICIAL_PARAMS
    sd = net.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == ref["state_dict_shapes"]
    assert len(sd) == OFFICIAL_ENTRIES
    buffers = sorted(name for name, _ in net.named_buffers())
    assert buffers == sorted(f"spatial_routing_encoder_level{lv}.moe.{b}"
                             for lv in (1, 2, 3) for b in ("mean", "std"))


def test_registered_family() -> None:
    net = build_arch("amir_tiny")
    assert isinstance(net, AMIR) and family_of("amir") == "amir" == family_of("amir_tiny")
    assert net.in_channels == net.out_channels == 1


@pytest.mark.parametrize("layout", ["plain", "lightning"])
def test_strict_load_of_authors_layout(tmp_path: Path, layout: str) -> None:
    src = _tiny(seed=1).eval()
    sd = src.state_dict()
    path = tmp_path / "Generator_best.pth"
    if layout == "plain":  # what their training script saves: torch.save(net.state_dict())
        torch.save(sd, path)
        fmt = "official"
    else:  # our Lightning checkpoint
        torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 1}, path)
        fmt = "medrestore"
    dst = _tiny(seed=2).eval()
    load_pretrained(dst, path, fmt)
    x = torch.rand(1, 1, 24, 16)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    bad = {k: v for k, v in sd.items() if not k.endswith("moe.mean")}
    torch.save(bad, path)
    with pytest.raises(MedrestoreError, match=r"3 missing \(e\.g\. spatial_routing") as err:
        load_pretrained(_tiny(), path, "official")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- contract
def test_train_and_eval_return_types_and_backward() -> None:
    net = _tiny().train()
    x, gt = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    pred, aux = net(x)
    assert pred.shape == x.shape and set(aux) == {"aux_loss"}
    assert aux["aux_loss"].shape == () and torch.isfinite(aux["aux_loss"]) and aux["aux_loss"] > 0
    ((pred - gt).abs().mean() + 1e-3 * aux["aux_loss"]).backward()
    for name, p in net.named_parameters():  # every parameter takes part (DDP without search)
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.dict_generator.dictionary.grad.abs().max() > 0
    assert net.spatial_routing_encoder_level2.moe.w_noise.grad.abs().max() > 0  # via the load term
    out = net.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape


def test_mixed_batch_eval_equals_one_by_one() -> None:
    net = _tiny().eval()
    torch.manual_seed(5)  # inputs as different as tasks: smooth, noisy, dark, bright
    xs = [torch.rand(1, 1, 32, 40), torch.randn(1, 1, 32, 40) * 0.3 + 0.5,
          torch.rand(1, 1, 32, 40) * 0.1, 1 - 0.2 * torch.rand(1, 1, 32, 40)]
    with torch.no_grad():
        batch = net(torch.cat(xs))
        single = torch.cat([net(x) for x in xs])
        inst = net.dict_generator(torch.cat(xs))
    assert (batch - single).abs().max().item() <= 1e-5
    assert (inst[0] - inst[2]).abs().max() > 1e-3  # the instruction really is per sample


def test_training_noise_is_per_token_and_the_prediction_per_sample(monkeypatch) -> None:
    shapes: list[tuple[int, ...]] = []

    def zero_noise(self: NoisyTopKMoE, logits: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(logits.shape))
        return torch.zeros_like(logits)

    net = _tiny().train()
    x = torch.rand(3, 1, 16, 24)
    monkeypatch.setattr(NoisyTopKMoE, "draw_noise", zero_noise)
    with torch.no_grad():
        pred, aux = net(x)
        singles = [net(x[i:i + 1]) for i in range(3)]
    # one draw per token (pixel) and expert at each encoder level
    assert shapes[:3] == [(3 * 16 * 24, 4), (3 * 8 * 12, 4), (3 * 4 * 6, 4)]
    # with the noise fixed, training predictions do not depend on the batch ...
    single_pred = torch.cat([p for p, _ in singles])
    assert (pred - single_pred).abs().max().item() <= 1e-5
    # ... only the aux loss does: it is a statistic of the whole batch (by design)
    assert not math.isclose(aux["aux_loss"].item(), singles[0][1]["aux_loss"].item(),
                            rel_tol=1e-3)


def test_noise_in_training_only_and_reproducible_with_seed() -> None:
    net = _tiny()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        runs = []
        for seed in (7, 7, 8):
            torch.manual_seed(seed)
            runs.append(net(x)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_channel_routing_starts_as_identity() -> None:
    router = ChannelRouting(16, 8)
    x = torch.randn(2, 8, 5, 3)
    assert torch.equal(router(x, torch.randn(2, 16)), x)


# --------------------------------------------------------------------------- mixture of experts
def _moe(combine: str = "log_space", seed: int = 0, k: int = 2) -> NoisyTopKMoE:
    torch.manual_seed(seed)
    return NoisyTopKMoE(8, 21, num_experts=4, top_k=k, combine=combine)  # type: ignore[arg-type]


def test_log_space_combine_is_the_authors_formula() -> None:
    moe = _moe().eval()
    tokens, inst = torch.randn(50, 8), torch.randn(50, 8)
    with torch.no_grad():
        y, aux = moe(tokens, inst)
        gates, _ = moe.gate(torch.cat((tokens, inst), 1))
        outs = torch.stack([e(tokens) for e in moe.experts], 1)  # N x E x C
        expected = (gates[:, :, None] * outs.exp()).sum(1).log()
    assert aux is None  # eval: no balance statistic
    assert ((gates > 0).sum(1) == 2).all() and torch.allclose(gates.sum(1), torch.ones(50))
    assert torch.allclose(y, expected, atol=1e-6)
    # an exact zero sum (both experts' exp underflows) is replaced by float64 eps before the log
    with torch.no_grad():
        for e in moe.experts:
            e.fc2.bias.fill_(-200.0)
        y, _ = moe(tokens, inst)
    assert torch.allclose(y, torch.full_like(y, math.log(2.220446049250313e-16)))


def test_logsumexp_combine_agrees_and_stays_finite() -> None:
    faithful, safe = _moe("log_space"), _moe("logsumexp")
    safe.load_state_dict(faithful.state_dict())
    tokens, inst = torch.randn(64, 8), torch.randn(64, 8)
    for mode in ("eval", "train"):
        for m in (faithful, safe):
            m.train(mode == "train")
        torch.manual_seed(3)
        y1, a1 = faithful(tokens, inst)
        torch.manual_seed(3)
        y2, a2 = safe(tokens, inst)
        assert (y1 - y2).abs().max().item() <= 1e-5, mode
        if mode == "train":
            assert torch.equal(a1, a2)
    # expert outputs above ~88: exp overflows in fp32 in the authors' form, not in the safe one
    with torch.no_grad():
        for m in (faithful, safe):
            m.eval()
            for e in m.experts:
                e.fc2.bias.fill_(100.0)
        y1, _ = faithful(tokens, inst)
        y2, _ = safe(tokens, inst)
        gates, _ = safe.gate(torch.cat((tokens, inst), 1))
        outs = torch.stack([e(tokens) for e in safe.experts], 1).double()
        exact = torch.logsumexp(outs + gates.double().log()[:, :, None], dim=1)
    assert torch.isinf(y1).any()
    assert torch.isfinite(y2).all() and (y2.double() - exact).abs().max().item() < 1e-4
    tokens.requires_grad_(True)
    safe(tokens, inst)[0].sum().backward()
    assert torch.isfinite(tokens.grad).all()


def test_full_tiny_model_with_logsumexp_matches() -> None:
    a = _tiny(seed=3).eval()
    b = amir_tiny(combine="logsumexp").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max().item() <= 1e-5


def test_aux_loss_is_cv2_of_importance_plus_load() -> None:
    moe = _moe(seed=4).train()
    with torch.no_grad():
        moe.w_noise.normal_(0, 0.3)
    tokens, inst = torch.randn(40, 8), torch.randn(40, 8)
    torch.manual_seed(11)
    _, aux = moe(tokens, inst)
    # by hand: noisy top-2 of 4 and the probability of staying in the top-2 under fresh noise
    g_in = torch.cat((tokens, inst), 1)
    clean = g_in @ moe.w_gate
    std = F.softplus(g_in @ moe.w_noise) + 0.01
    torch.manual_seed(11)
    noisy = clean + torch.randn_like(clean) * std
    top = noisy.topk(3, dim=1).values
    gates = torch.zeros_like(noisy).scatter(1, noisy.topk(2, dim=1).indices,
                                            noisy.topk(2, dim=1).values.softmax(1))
    normal = torch.distributions.Normal(0.0, 1.0)
    p_in = normal.cdf((clean - top[:, 2:3]) / std)
    p_out = normal.cdf((clean - top[:, 1:2]) / std)
    load = torch.where(noisy > top[:, 2:3], p_in, p_out).sum(0)
    importance = gates.sum(0)
    expected = (importance.var() / importance.mean() ** 2 + load.var() / load.mean() ** 2)
    assert torch.allclose(aux, expected, rtol=1e-5)
    assert cv_squared(torch.ones(4)) == 0 and cv_squared(torch.tensor([3.0])) == 0


# --------------------------------------------------------------------------- sizes, paths, configs
def test_any_size_from_9_pixels_by_padding() -> None:
    net = _tiny().eval()
    x = torch.rand(1, 1, 21, 30)
    with torch.no_grad():
        pred = net(x)
        ref, _ = net.forward_padded(pad_to_multiple(x, 8)[0])
        assert pred.shape == x.shape and torch.equal(pred, ref[..., :21, :30])
        assert net(torch.rand(1, 1, 9, 12)).shape == (1, 1, 9, 12)  # padded to 16 x 16
        torch.nn.init.zeros_(net.output.weight)
        assert torch.equal(net(x), x)  # global input residual
    with pytest.raises(ConfigError, match=r"at least 9x9 pixels .* got 8x40$") as err:
        net(torch.rand(1, 1, 8, 40))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="got 5x5, padded to 8x8"):
        net(torch.rand(1, 1, 5, 5))


def test_fast_path_and_checkpointing_match_reference() -> None:
    ref = _tiny(seed=6)
    fast = amir_tiny(impl="fast")
    ckpt = amir_tiny(checkpoint_blocks=True)
    for other in (fast, ckpt):
        other.load_state_dict(ref.state_dict())
    x, gt = torch.rand(2, 1, 24, 32), torch.rand(2, 1, 24, 32)
    with torch.no_grad():
        assert (fast.eval()(x) - ref.eval()(x)).abs().max().item() <= 1e-5

    def step(net: AMIR) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.train().zero_grad()
        torch.manual_seed(2)
        pred, aux = net(x)
        ((pred - gt).abs().mean() + 1e-3 * aux["aux_loss"]).backward()
        return pred.detach(), {n: p.grad for n, p in net.named_parameters()}

    y_ref, g_ref = step(ref)
    for other, tol in ((fast, 1e-5), (ckpt, 0.0)):
        y, g = step(other)
        assert (y - y_ref).abs().max().item() <= tol
        scale = max(v.abs().max().item() for v in g_ref.values())
        assert max((g[n] - g_ref[n]).abs().max().item() for n in g_ref) <= max(tol, 1e-6) * scale


@pytest.mark.parametrize("kw, match", [
    ({"top_k": 5}, r"top_k=5; expected an integer in \[1, model.net.num_experts=4\]"),
    ({"top_k": 0}, "top_k=0"),
    ({"combine": "linear"}, "combine='linear'"),
    ({"num_atoms": 0}, "num_atoms=0"),
    ({"heads": (1, 3, 4, 8)}, "heads"),
    ({"impl": "cuda"}, "impl"),
])
def test_invalid_configs_rejected(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        amir_tiny(**kw)
    assert "\n" not in str(err.value)


def test_top_k_equal_to_experts_uses_counted_load() -> None:
    net = _tiny(top_k=4).train()
    pred, aux = net(torch.rand(2, 1, 16, 16))
    assert torch.isfinite(aux["aux_loss"])
