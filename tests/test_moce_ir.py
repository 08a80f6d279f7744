"""MoCE-IR architecture: parity with the released class (counts, keys, buffers), the output
contract, per-sample routing in training and eval, the authors'-bug switches, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import ConfigError
from medrestore.models.archs.moce_ir import (
    ComplexityRouter,
    FFTAttention,
    MoCEAdapter,
    MoCEIR,
    moce_ir,
    moce_ir_s,
    moce_ir_tiny,
)
from medrestore.models.pretrained import load_pretrained
from medrestore.registry import ARCHS, build_arch, family_of

FIXTURE = Path(__file__).parent / "fixtures" / "moce_ir_official_keys.json"

# The authors' class with the arguments their train.py passes, counted.
OFFICIAL_PARAMS = {"MoCE_IR": 25_353_796, "MoCE_IR_S": 11_477_752}
FACTORIES = {"MoCE_IR": moce_ir, "MoCE_IR_S": moce_ir_s}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny forwards are dominated by thread synchronisation; restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(seed: int = 0, **kw: object) -> MoCEIR:
    torch.manual_seed(seed)
    return moce_ir_tiny(**kw)


def _mixed_inputs(n: int = 4, size: int = 32) -> torch.Tensor:
    torch.manual_seed(11)
    x = torch.rand(4, 3, size, size)
    x[1] = 0.5 + 0.02 * torch.randn(3, size, size)                       # flat
    x[2] = torch.linspace(0, 1, size).expand(3, size, size)             # smooth ramp
    x[3] = (torch.rand(3, size, size) > 0.5).float()                    # binary noise
    return x[:n]


def _content_noise(self: ComplexityRouter, logits: torch.Tensor) -> torch.Tensor:
    """A fixed routing "noise" that depends on each image alone: a large bonus for one expert
    picked from the image's own clean logits. Untrained routers send every image to the same
    expert (the logits share a large common part), so the routing tests use this to get
    batches whose images really choose different experts."""
    pick = (logits.sum(-1) * 100).floor().long() % self.num_experts
    return 100.0 * F.one_hot(pick, self.num_experts).to(logits)


@pytest.fixture
def mixed_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ComplexityRouter, "draw_noise", _content_noise)


def _routes_mixed(routes: torch.Tensor) -> bool:
    return any(len(routes[:, b].unique()) > 1 for b in range(routes.shape[1]))


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("variant", sorted(OFFICIAL_PARAMS))
def test_counts_keys_and_shapes_match_official(variant: str) -> None:
    ref = json.loads(FIXTURE.read_text())["variants"][variant]
    with torch.device("meta"):  # full size without allocating the weights
        net = FACTORIES[variant]()
    assert _n_params(net) == ref["num_params"] == OFFICIAL_PARAMS[variant]
    sd = net.state_dict()
    assert list(sd) == list(ref["state_dict_shapes"])  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == ref["state_dict_shapes"]
    assert len(sd) == 1262
    assert sum(k.endswith("adapter.routing.complexity") for k in sd) == 10
    assert sum(isinstance(m, MoCEAdapter) for m in net.modules()) == 10


def test_complexity_buffer_and_high_pass_init() -> None:
    net = _tiny()
    adapter = net.adapters()[0]  # level 3 (1/4 resolution), width 4·16 = 64
    counts = torch.tensor([sum(p.numel() for p in e.parameters()) for e in adapter.experts])
    assert torch.equal(adapter.routing.complexity, counts / counts.max())
    assert adapter.routing.complexity[-1] == 1 and adapter.routing.complexity.dtype == torch.float32
    assert [adapter.expert(e).rank for e in range(4)] == [8, 16, 32, 64]   # spread: C/8..C
    assert [adapter.expert(e).window for e in range(4)] == [4, 8, 16, 32]
    k = net.freq_embed.high_conv[0].conv.weight
    assert k.shape == (128, 1, 3, 3) and k.requires_grad  # trainable, as released
    assert torch.equal(k[0, 0], torch.tensor([[-1.0, -1, -1], [-1, 8, -1], [-1, -1, -1]]))
    with torch.device("meta"):
        assert _n_params(moce_ir(with_complexity=True)) == OFFICIAL_PARAMS["MoCE_IR"]


def test_lightning_checkpoint_loads_strictly(tmp_path: Path) -> None:
    """The released ``last.ckpt`` layout: {"state_dict": {"net.<key>": tensor}, ...}."""
    src = _tiny(seed=1).eval()
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 119, "global_step": 10,
                "state_dict": {f"net.{k}": v for k, v in src.state_dict().items()}}, path)
    for fmt in ("official", "medrestore"):
        dst = _tiny(seed=2).eval()
        load_pretrained(dst, path, fmt, arch="moce_ir_tiny")
        x = torch.rand(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))
    bad = {f"net.{k}": v for k, v in src.state_dict().items() if not k.endswith("complexity")}
    with pytest.raises(ConfigError, match=r"3 missing \(e\.g\. dec\.0\.2\.layers\.0\.adapter"):
        load_pretrained(_tiny(), {"state_dict": bad}, arch="moce_ir_tiny")


# --------------------------------------------------------------------------- contract
def test_train_and_eval_return_types_and_backward() -> None:
    net = _tiny().train()
    x = torch.rand(2, 3, 32, 32)
    pred, aux = net(x)
    assert pred.shape == x.shape and aux["aux_loss"].ndim == 0 and aux["aux_loss"] > 0
    assert aux["routes"].shape == (2, 3, 1)  # B × decoder blocks × k
    ((pred - x).abs().mean() + 0.01 * aux["aux_loss"]).backward()
    router = net.adapters()[0].routing
    assert router.gate[2].weight.grad.abs().sum() > 0   # routers learn from the aux term
    assert net.freq_embed.mlp[0].weight.grad is not None
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape


def test_any_size_pads_and_crops() -> None:
    net = _tiny().eval()
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        y = net(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        torch.nn.init.zeros_(net.output.weight)
        assert torch.equal(net(x), x)  # global residual
    with pytest.raises(RuntimeError):
        _tiny(pad_multiple=0).eval()(x)  # unpadded, odd sizes cannot go through the U-Net


def test_fft_attention_zero_pads_windows_larger_than_the_map() -> None:
    torch.manual_seed(0)
    att = FFTAttention(4, window=16)
    x = torch.randn(2, 4, 8, 12)
    q = att.q_dwconv(att.q(x))
    k, v = att.kv_dwconv(att.kv(x)).chunk(2, dim=1)
    pad = (0, 4, 0, 8)  # one 16×16 window
    full = torch.fft.irfft2(torch.fft.rfft2(F.pad(q, pad)) * torch.fft.rfft2(F.pad(k, pad)),
                            s=(16, 16))[..., :8, :12]
    ref = att.proj_out(att.norm(full) * v)
    assert torch.allclose(att(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- routing per sample
def test_eval_batch_equals_one_by_one(mixed_routes: None) -> None:
    x = _mixed_inputs()
    for noise in (False, True):  # clean routing (default) / the fixed per-image noise
        net = _tiny(eval_routing_noise=noise).eval()
        with torch.no_grad():
            batch = net(x)
            alone = torch.cat([net(x[i:i + 1]) for i in range(len(x))])
        assert (batch - alone).abs().max() <= 1e-5
    net.train()
    with torch.no_grad():
        assert _routes_mixed(net(x)[1]["routes"])  # the images really chose different experts


def test_train_dispatch_is_per_sample_with_fixed_noise(mixed_routes: None) -> None:
    net = _tiny().train()
    x = _mixed_inputs()
    pred, aux = net(x)
    assert _routes_mixed(aux["routes"])
    for i in range(len(x)):
        one, one_aux = net(x[i:i + 1])
        assert torch.equal(one_aux["routes"][0], aux["routes"][i])
        assert (one[0] - pred[i]).abs().max() <= 1e-5


def test_eval_routing_noise_switch() -> None:
    x = _mixed_inputs(2)
    net = _tiny().eval()
    with torch.no_grad():
        torch.manual_seed(0)
        a = net(x)
        torch.manual_seed(1)
        assert torch.equal(net(x), a)  # default: deterministic, seed-independent
        net.set_eval_routing(noise=True)
        outs = []
        for seed in (0, 0, 1, 2, 3, 4, 5):
            torch.manual_seed(seed)
            outs.append(net(x))
    assert torch.equal(outs[0], outs[1])                               # same seed, same output
    assert any(not torch.equal(outs[0], o) for o in outs[2:])  # the authors': seed-dependent
    with pytest.raises(ConfigError, match="eval_routing_noise"):
        net.set_eval_routing(noise="yes")  # type: ignore[arg-type]


def test_authors_eval_dispatch_is_the_batch_union_sum(mixed_routes: None) -> None:
    net = _tiny(eval_routing_noise=True, eval_dispatch="authors").eval()
    x = _mixed_inputs()
    adapter = net.adapters()[0]
    seen = {}

    def grab(module, args, out):  # inputs and output of the first adapter
        seen["args"], seen["out"] = args, out[0]

    handle = adapter.register_forward_hook(grab)
    with torch.no_grad():
        net(x[:1])
        single = seen["out"]
        net.set_eval_routing(dispatch="per_sample")
        net(x[:1])
        assert torch.equal(seen["out"], single)  # identical at batch 1
        net.set_eval_routing(dispatch="authors")
        net(x)
        a, freq, s = seen["args"]
        idx, gates, _ = adapter.routing(a, freq, True)
        union = sum(adapter.expert(e)(a, s) for e in idx[:, 0].tolist())
        expected = adapter.proj_out(gates.view(-1, 1, 1, 1) * union)
        per_sample = adapter.proj_out(adapter.dispatch(a, s, idx, gates))
    handle.remove()
    assert len(idx.unique()) > 1
    assert torch.allclose(seen["out"], expected, atol=1e-5)
    assert (seen["out"] - per_sample).abs().max() > 1e-2  # the bug changes the outputs
    with pytest.raises(ConfigError, match="top_k=1"):
        _tiny(topk=2, eval_dispatch="authors").eval()(x[:2])


def test_topk2_and_complexity_weighting() -> None:
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(5)
    plain = _tiny().train()(x)[1]["aux_loss"]
    torch.manual_seed(5)
    weighted = _tiny(with_complexity=True).train()(x)[1]["aux_loss"]
    assert weighted > plain > 0  # complexity weighting makes the importance term uneven
    net = _tiny(topk=2).train()
    pred, aux = net(x)
    assert aux["routes"].shape == (2, 3, 2) and pred.shape == x.shape
    with torch.no_grad():
        net.eval()
        assert (net(x) - torch.cat([net(x[:1]), net(x[1:])])).abs().max() <= 1e-5


# --------------------------------------------------------------------------- run options
def test_fast_path_and_checkpointing_match_reference() -> None:
    x = _mixed_inputs(2)
    ref = _tiny().eval()
    fast = _tiny(impl="fast").eval()
    with torch.no_grad():
        assert (fast(x) - ref(x)).abs().max() <= 1e-5
    ckpt = _tiny(checkpoint_blocks=True).train()
    plain = _tiny().train()
    grads = []
    for net in (plain, ckpt):
        torch.manual_seed(3)
        pred, aux = net(x)
        (pred.abs().mean() + aux["aux_loss"]).backward()
        grads.append(net.dec[0][2].layers[0].adapter.routing.gate[2].weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_registry_declares_the_three_architectures() -> None:
    assert family_of("moce_ir") == family_of("moce_ir_s") == family_of("moce_ir_tiny") == "moce_ir"
    assert ARCHS.get("moce_ir") is moce_ir and ARCHS.get("moce_ir_s") is moce_ir_s
    net = build_arch("moce_ir_tiny", in_channels=1, out_channels=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 16, 24)).shape == (1, 1, 16, 24)


@pytest.mark.parametrize("kw, match", [
    ({"topk": 5}, "topk=5"),
    ({"num_dec_blocks": [1, 1]}, "num_dec_blocks"),
    ({"heads": [1, 3, 4, 8]}, "heads"),
    ({"rank_type": "spiral"}, "rank_type"),
    ({"dim": 4}, "smallest expert rank"),
    ({"eval_dispatch": "batch"}, "eval_dispatch"),
    ({"eval_routing_noise": "true"}, "eval_routing_noise"),
    ({"complexity_scale": "mean"}, "complexity_scale"),
    ({"pad_multiple": 12}, "pad_multiple"),
    ({"impl": "turbo"}, "impl"),
])
def test_bad_config_is_one_line(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        moce_ir_tiny(**kw)
    assert "\n" not in str(err.value)
