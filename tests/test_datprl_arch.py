"""DATPRL-IR architecture: parity with the released classes (counts, keys, config), the aux
contract, prompt-pool selection, AGF, the degenerate attentions, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import MedrestoreError
from medrestore.models.archs.datprl import DATPRL, PROMPTED_STAGES, datprl, datprl_tiny
from medrestore.models.archs.datprl_official import (
    convert_official_state_dict,
    kwargs_from_official_config,
)
from medrestore.models.layers.prompts import AGFTransformerBlock, PromptPool
from medrestore.models.layers.restormer import TransformerBlock
from medrestore.models.pretrained import load_pretrained
from medrestore.registry import build_arch

FIXTURE = Path(__file__).parent / "fixtures" / "datprl_official_keys.json"

# The authors' released classes, instantiated and counted (released 6-task config; task-only
# class as in their CDD11 config).
OFFICIAL_PARAMS_MD = 53_133_552
OFFICIAL_PARAMS_TASK_ONLY = 42_563_115

# ``network_g`` of the released multi-domain test config (keys and values as written there).
RELEASED_MD_NETWORK_G = {
    "type": "DualPromptRestormerv3", "img_channel": 3, "enc_blk_nums": [4, 6, 6],
    "middle_blk_num": 8, "dec_blk_nums": [6, 6, 4], "refine_blk_num": 4, "heads": [1, 2, 4, 8],
    "ffn_expansion_factor": 2.66, "LayerNorm_type": "WithBias", "use_prompt": True,
    "domain_pool_size": 15, "degradation_pool_size": 15, "domain_prompt_dim": 1024,
    "degradation_prompt_dim": 1024, "domain_top_k": 5, "degradation_top_k": 3,
    "value_num_tokens": 2, "prompt_fusion_method": "cross_attention",
    "fusion_method": "cross_attention",
}
RELEASED_TASK_ONLY_NETWORK_G = {
    "type": "DualPromptRestormerv3_only_task_prompt", "img_channel": 3,
    "enc_blk_nums": [4, 6, 6], "middle_blk_num": 8, "dec_blk_nums": [6, 6, 4],
    "refine_blk_num": 4, "heads": [1, 2, 4, 8], "ffn_expansion_factor": 2.66,
    "LayerNorm_type": "WithBias", "use_prompt": True, "degradation_pool_size": 15,
    "degradation_prompt_dim": 1024, "degradation_top_k": 3, "value_num_tokens": 2,
    "fusion_method": "cross_attention",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny forwards are dominated by thread synchronisation; one intra-op thread keeps
    # them fast on a loaded machine. Restored for the rest of the session.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(**kw: object) -> DATPRL:
    # Full size without allocating or initialising ~53 M weights.
    with torch.device("meta"):
        return datprl(**kw)


def _tiny(seed: int = 0, **kw: object) -> DATPRL:
    torch.manual_seed(seed)
    net = datprl_tiny(**kw)
    with torch.no_grad():  # move the gates off their symmetric start so they matter
        for block in net.modules():
            if isinstance(block, AGFTransformerBlock):
                block.feature_weight.add_(0.3 * torch.randn(1))
                block.prompt_weight.add_(0.3 * torch.randn(1))
    return net


# --------------------------------------------------------------------------- parity
def test_parameter_counts_match_official() -> None:
    assert _n_params(_meta()) == OFFICIAL_PARAMS_MD
    assert _n_params(_meta(use_domain_pool=False)) == OFFICIAL_PARAMS_TASK_ONLY
    ref = json.loads(FIXTURE.read_text())
    assert ref["multi_domain"]["num_params"] == OFFICIAL_PARAMS_MD
    assert ref["task_only"]["num_params"] == OFFICIAL_PARAMS_TASK_ONLY


@pytest.mark.parametrize("variant", ["multi_domain", "task_only"])
def test_state_dict_keys_and_shapes_match_official(variant: str) -> None:
    ref = json.loads(FIXTURE.read_text())[variant]["state_dict_shapes"]
    sd = _meta(use_domain_pool=variant == "multi_domain").state_dict()
    ours = {k: list(v.shape) for k, v in sd.items()}
    assert ours == ref  # same keys and shapes -> the authors' checkpoints load strictly
    converted = convert_official_state_dict(sd)
    assert list(converted) == list(sd)  # identity mapping of keys


@pytest.mark.parametrize("network_g, expected", [
    (RELEASED_MD_NETWORK_G, OFFICIAL_PARAMS_MD),
    (RELEASED_TASK_ONLY_NETWORK_G, OFFICIAL_PARAMS_TASK_ONLY),
])
def test_official_config_translates(network_g: dict, expected: int) -> None:
    kwargs = kwargs_from_official_config(network_g)
    assert kwargs["num_decoder_blocks"] == (6, 6, 4) and kwargs["num_blocks"] == (4, 6, 6, 8)
    assert _n_params(_meta(**kwargs)) == expected
    with pytest.raises(MedrestoreError, match="fusion_method"):
        kwargs_from_official_config({**network_g, "fusion_method": "concat"})
    with pytest.raises(MedrestoreError, match="unknown"):
        kwargs_from_official_config({**network_g, "num_experts": 4})


def test_prompts_only_in_latent_decoder_refinement() -> None:
    net = _meta()
    depth = {}
    for stage in ("encoder_level1", "encoder_level2", "encoder_level3", *PROMPTED_STAGES):
        blocks = list(net.stage_blocks(stage))
        depth[stage] = len(blocks)
        if stage in PROMPTED_STAGES:
            assert all(isinstance(b, AGFTransformerBlock) for b in blocks), stage
        else:
            assert all(type(b) is TransformerBlock for b in blocks), stage
    # The released decoder has 4 blocks at level 3 and 6 at level 1 (not Restormer's 6/6/4).
    assert depth == {"encoder_level1": 4, "encoder_level2": 6, "encoder_level3": 6, "latent": 8,
                     "decoder_level3": 4, "decoder_level2": 6, "decoder_level1": 6,
                     "refinement": 4}
    assert sum(isinstance(m, AGFTransformerBlock) for m in net.modules()) == 28


# --------------------------------------------------------------------------- contract
@pytest.mark.parametrize("training", [True, False])
def test_aux_contract(training: bool) -> None:
    net = _tiny().train(training)
    lq = torch.rand(2, 3, 37, 45)  # not a multiple of 8
    pred, aux = net(lq)
    assert pred.shape == lq.shape and net.in_channels == 3 and net.out_channels == 3
    d = net.prompt_dim
    for key in ("task_repr", "domain_repr", "fused_repr", "task_query", "domain_query"):
        assert aux[key].shape == (2, d), key
    for pool_name, pool in (("task", net.task_pool), ("domain", net.domain_pool)):
        assert pool is not None
        n, k = pool.pool_size, pool.top_k
        assert aux[f"{pool_name}_scores"].shape == (2, n)
        assert aux[f"{pool_name}_weights"].shape == (2, n)
        assert aux[f"{pool_name}_indices"].shape == (2, k)
        assert pool.keys.shape == (n, d) and pool.values.shape == (n, 2, d)
        assert isinstance(pool.keys, torch.nn.Parameter) and pool.temperature.shape == ()


def test_task_only_variant_contract() -> None:
    net = _tiny(use_domain_pool=False).eval()
    pred, aux = net(torch.rand(1, 3, 24, 16))
    assert net.domain_pool is None and pred.shape == (1, 3, 24, 16)
    assert not any(k.startswith("domain") for k in aux)
    assert torch.equal(aux["fused_repr"], aux["task_repr"])  # the blocks receive PR_t
    assert not any(k.startswith(("domain_", "prompt_cross", "prompt_fusion"))
                   for k in net.state_dict())


def test_zero_padding_and_crop() -> None:
    net = _tiny().eval()
    lq = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        pred, aux = net(lq)
        padded = F.pad(lq, (0, 2, 0, 3))  # zeros on the right/bottom, as the authors
        ref, ref_aux = net.forward_padded(padded)
        assert torch.equal(pred, ref[..., :21, :30])
        assert torch.equal(aux["task_scores"], ref_aux["task_scores"])
        torch.nn.init.zeros_(net.output.weight)
        assert torch.equal(net(lq)[0], lq)  # global input residual
    assert datprl_tiny(pad_mode="reflect").eval()(lq)[0].shape == lq.shape


# --------------------------------------------------------------------------- prompt pools
def _pool(**kw: object) -> PromptPool:
    torch.manual_seed(3)
    return PromptPool(pool_size=8, prompt_dim=32, top_k=3, **kw)


def test_selection_clean_in_eval_noisy_in_training() -> None:
    pool = _pool()
    query = torch.randn(16, 32)
    with torch.no_grad():
        clean = pool.scores(query)
        pool.eval()
        first = pool(query)
        assert torch.equal(first.scores, clean)
        assert torch.equal(first.indices, clean.topk(3, dim=1).indices)
        assert torch.equal(pool(query).indices, first.indices)  # deterministic
        pool.train()
        differs = False
        for seed in range(10):
            torch.manual_seed(seed)
            sel = pool(query)
            torch.manual_seed(seed)
            noisy = clean + 0.1 * torch.randn_like(clean)
            assert torch.equal(sel.indices, noisy.topk(3, dim=1).indices)
            assert torch.equal(sel.scores, clean)  # reported scores are the clean ones
            # weights: softmax of the *clean* scores of the selected prompts
            expected = clean.gather(1, sel.indices).softmax(dim=1)
            assert torch.allclose(sel.weights.gather(1, sel.indices), expected, atol=1e-7)
            differs |= not torch.equal(sel.indices, first.indices)
        assert differs  # the noise does change the selection for some images


def test_weights_sum_to_one_over_selected_and_zero_elsewhere() -> None:
    pool = _pool().train()
    sel = pool(torch.randn(5, 32))
    mask = torch.zeros_like(sel.weights, dtype=torch.bool).scatter(1, sel.indices, True)
    assert torch.allclose(sel.weights.sum(dim=1), torch.ones(5), atol=1e-6)
    assert (sel.weights[~mask] == 0).all() and (sel.weights[mask] > 0).all()
    assert mask.sum(dim=1).eq(3).all()
    # the prompt is the aggregator of the weighted values of exactly those prompts
    composed = torch.einsum("bn,ntd->btd", sel.weights, pool.values)
    assert torch.allclose(sel.prompt, pool.value_aggregation(composed.flatten(1)), atol=1e-5)


@pytest.mark.parametrize("tau, used", [(10.0, 2.0), (0.01, 0.1), (0.5, 0.5)])
def test_temperature_clamped(tau: float, used: float) -> None:
    pool = _pool().eval()
    query = torch.randn(4, 32)
    cos = F.normalize(query, dim=1) @ F.normalize(pool.keys, dim=1).t()
    with torch.no_grad():
        pool.temperature.fill_(tau)
    sel = pool(query)
    assert torch.allclose(sel.scores, cos / used, atol=1e-5)
    sel.prompt.sum().backward()
    inside = 0.1 < tau < 2.0
    assert (pool.temperature.grad != 0).item() == inside  # no gradient when clamped


def test_prompt_initialisation() -> None:
    torch.manual_seed(0)
    d = 1024
    plain = PromptPool(pool_size=15, prompt_dim=d, init_noise=0.0)
    half = 15 // 2
    # first half Xavier-uniform (fans of a 1 x D row and a 1 x 1 x D token), rest unit vectors
    assert plain.keys[:half].abs().max() <= math.sqrt(6 / (d + 1))
    assert plain.values[:half].abs().max() <= math.sqrt(3 / d)
    assert plain.keys[:half].abs().max() > 0.9 * math.sqrt(6 / (d + 1))
    assert torch.allclose(plain.keys[half:].norm(dim=-1), torch.ones(15 - half))
    assert torch.allclose(plain.values[half:].norm(dim=-1), torch.ones(15 - half, 2))
    torch.manual_seed(0)
    pool = PromptPool(pool_size=15, prompt_dim=d)  # with the default 0.5-std jitter
    assert torch.equal(pool.keys[0], plain.keys[0])  # prompt 0 gets no jitter
    assert 0.48 < pool.keys[1:].std().item() < 0.53
    assert 0.48 < pool.values[1:].std().item() < 0.53
    assert pool.temperature.item() == 1.0


# --------------------------------------------------------------------------- AGF
def _agf_block(seed: int = 0) -> AGFTransformerBlock:
    torch.manual_seed(seed)
    return AGFTransformerBlock(dim=16, num_heads=2, ffn_expansion_factor=2.0, prompt_dim=32)


def test_agf_gate_starts_balanced() -> None:
    alpha_f, alpha_p = _agf_block().gate()
    assert alpha_f.item() == 0.5 and alpha_p.item() == 0.5


def test_agf_feeds_only_the_attention_branch() -> None:
    block = _agf_block().eval()
    x = torch.randn(2, 16, 6, 5)
    p1, p2 = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        assert not torch.allclose(block(x, p1), block(x, p2))  # the prompt matters
        torch.nn.init.zeros_(block.attn.project_out.weight)  # silence the attention branch
        out = block(x, p1)
        # Residual stream and feed-forward half see the raw x, not the fused x~ = 0.5 x + b:
        # without the attention branch the prompt has no effect at all.
        assert torch.equal(out, block(x, p2))
        assert torch.equal(out, x + block.ffn_branch(x))


def test_agf_is_a_gated_per_image_bias_independent_of_q_and_k() -> None:
    block = _agf_block()
    with torch.no_grad():
        block.prompt_weight.fill_(1.3)
    x = torch.randn(2, 16, 4, 7)
    p = torch.randn(2, 32)
    alpha_f, alpha_p = block.gate()
    with torch.no_grad():
        fused = block.fuse_prompt(x, p)
        bias = block.cross_attn_out(alpha_p * block.cross_attn_v(block.prompt_norm(p)))
        assert torch.allclose(fused, alpha_f * x + bias[:, :, None, None], atol=1e-6)
        for layer in (block.cross_attn_q, block.cross_attn_k):
            layer.weight.mul_(-3.0).add_(1.0)
            layer.bias.add_(2.0)
        assert torch.equal(block.fuse_prompt(x, p), fused)
    # the query/key path is present but receives exactly zero gradient
    block.zero_grad()
    block(x, p).square().mean().backward()
    for layer in (block.cross_attn_q, block.cross_attn_k):
        assert layer.weight.grad is not None and layer.weight.grad.abs().max() == 0
    assert block.cross_attn_v.weight.grad.abs().max() > 0


# --------------------------------------------------------------------------- task/domain fusion
def test_fusion_attention_ignores_query_projection() -> None:
    net = _tiny().eval()
    lq = torch.rand(2, 3, 16, 16)
    d = net.prompt_dim
    mha = net.prompt_cross_attention
    with torch.no_grad():
        pred, aux = net(lq)
        # closed form: one key -> weight 1 -> out_proj(W_v PR_t + b_v)
        w_v, b_v = mha.in_proj_weight[2 * d:], mha.in_proj_bias[2 * d:]
        attended = mha.out_proj(aux["task_repr"] @ w_v.t() + b_v)
        fused = net.prompt_fusion_norm(attended + aux["domain_repr"])
        fused = fused + net.prompt_fusion_ffn(fused)
        assert torch.allclose(aux["fused_repr"], fused, atol=1e-5)
        mha.in_proj_weight[: 2 * d].normal_()  # query and key projections
        mha.in_proj_bias[: 2 * d].normal_()
        pred2, aux2 = net(lq)
        assert torch.equal(aux2["fused_repr"], aux["fused_repr"])
        assert torch.equal(pred2, pred)
        mha.in_proj_weight[2 * d:].normal_()  # the value projection does matter
        assert not torch.allclose(net(lq)[1]["fused_repr"], aux["fused_repr"])


def test_eval_deterministic_training_reproducible_with_seed() -> None:
    net = _tiny()
    lq = torch.rand(2, 3, 16, 24)
    net.eval()
    with torch.no_grad():
        a, b = net(lq)[0], net(lq)[0]
    assert torch.equal(a, b)
    net.train()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        pred, aux = net(lq)
        outs.append((pred.detach(), aux["task_indices"], aux["domain_indices"]))
    assert all(torch.equal(u, v) for u, v in zip(*outs))


def test_tiny_forward_backward() -> None:
    torch.manual_seed(0)
    net = build_arch("datprl_tiny").train()
    assert isinstance(net, DATPRL)
    lq, gt = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    pred, aux = net(lq)
    loss = (pred - gt).abs().mean() + aux["task_weights"].square().mean()
    loss.backward()
    for name, p in net.named_parameters():  # no unused parameters (DDP without searching)
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert net.task_pool.keys.grad.abs().max() > 0 and net.domain_pool.values.grad.abs().max() > 0


def test_invalid_configs_rejected() -> None:
    with pytest.raises(MedrestoreError, match="fusion"):
        datprl_tiny(fusion="concat")
    with pytest.raises(MedrestoreError, match="pad_mode"):
        datprl_tiny(pad_mode="edge")
    with pytest.raises(MedrestoreError, match="fusion_heads"):
        datprl_tiny(prompt_dim=36)
    with pytest.raises(MedrestoreError,
                       match=r"task_top_k=7; expected an integer in \[1, task_pool_size=6"):
        datprl_tiny(task_top_k=7)
    with pytest.raises(ValueError, match="top_k"):
        PromptPool(pool_size=4, prompt_dim=8, top_k=5)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"params": sd, "params_ema": {k: v * 0 for k, v in sd.items()}},  # BasicSR
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {"state_dict": {**{f"net.{k}": v for k, v in sd.items()},  # Lightning + EMA
                               **{f"net_ema.{k}": v * 0 for k, v in sd.items()},
                               "text_projection.weight": torch.zeros(4, 32)}},
])
@pytest.mark.parametrize("fmt", ["official", "medrestore"])
def test_pretrained_round_trip(tmp_path: Path, wrap, fmt: str) -> None:
    src = _tiny(seed=1).eval()
    path = tmp_path / "w.pth"
    torch.save(wrap(src.state_dict()), path)
    dst = _tiny(seed=2).eval()
    load_pretrained(dst, path, fmt)
    lq = torch.rand(1, 3, 19, 27)
    with torch.no_grad():
        assert torch.equal(dst(lq)[0], src(lq)[0])


def test_pretrained_picks_requested_copy(tmp_path: Path) -> None:
    src = _tiny(seed=1)
    ema = _tiny(seed=4)
    path = tmp_path / "ema.pth"
    torch.save({"params": src.state_dict(), "params_ema": ema.state_dict()}, path)
    dst = _tiny(seed=2)
    load_pretrained(dst, path, param_key="params_ema")
    assert torch.equal(dst.task_pool.keys, ema.task_pool.keys)
    load_pretrained(dst, path)  # default: ``params``, as the authors' test configs
    assert torch.equal(dst.task_pool.keys, src.task_pool.keys)


def test_pretrained_errors_are_one_line(tmp_path: Path) -> None:
    sd = _tiny().state_dict()
    bad = {k.replace("latent_blocks", "latent"): v for k, v in sd.items()}
    path = tmp_path / "bad.pth"
    torch.save({"params": bad}, path)
    with pytest.raises(MedrestoreError) as err:
        load_pretrained(_tiny(), path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing (e.g. latent_blocks.0." in msg and "unexpected (e.g. latent.0." in msg

    torch.save(datprl_tiny(prompt_dim=64).state_dict(), path)
    with pytest.raises(MedrestoreError, match=r"46 shape mismatch .*\(16, 64\) vs \(16, 32\)"):
        load_pretrained(_tiny(), path)
    torch.save(sd, path)
    with pytest.raises(MedrestoreError, match="use_domain_pool=true"):
        load_pretrained(_tiny(use_domain_pool=False), path)
    with pytest.raises(MedrestoreError, match="no such weights file"):
        load_pretrained(_tiny(), tmp_path / "missing.pth")
    with pytest.raises(MedrestoreError, match="format"):
        load_pretrained(_tiny(), path, "timm")  # type: ignore[arg-type]
    torch.save({"epoch": 3, "iter": 10}, path)
    with pytest.raises(MedrestoreError, match="no state dict"):
        load_pretrained(_tiny(), path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MedrestoreError, match="not a loadable weights file"):
        load_pretrained(_tiny(), path)
