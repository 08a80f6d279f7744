"""TP-Seg architecture: released parameter counts (meta device), task adapters, prototypes,
per-sample routing, the expert convolution, backbone weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.models.archs.tpseg import PrototypeStage, TPSeg, tpseg, tpseg_tiny
from medrestore.models.layers.adapters import TaskAdapter

# the authors' network (sam2 Hiera-L trunk, 8 tasks, M = 6, rank 64), counted from their class
RELEASED = {"trainable": 76_313_885, "adapters": 27_037_536, "frozen": 212_149_296,
            "total": 288_463_181, "buffers": 12_827}
TIMM_HIERA_L = 212_151_600          # timm's sam2_hiera_large, with its head LayerNorm(1152)
UNUSED = 431_936 + 7_696 + 3 * 134  # parts the released class builds and never calls


def _tiny(**kw) -> TPSeg:
    torch.manual_seed(0)
    return tpseg_tiny(num_tasks=3, **kw)


def _perturb_adapters(net: TPSeg, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a in net.adapters:
            a.up.copy_(torch.randn(a.up.shape, generator=g) * std)


def test_released_parameter_counts_on_meta():
    import timm

    with torch.device("meta"):
        net = tpseg()
        bare = tpseg(keep_unused=False)
        hiera = timm.create_model("sam2_hiera_large", pretrained=False, num_classes=0)
    assert net.parameter_counts() == RELEASED
    assert len(net.adapters) == 48 and net.trunk.stage_ends == [1, 7, 43, 47]
    # timm's class differs from SAM2's trunk only by its head norm (2 x 1152), which we drop
    assert sum(p.numel() for p in hiera.parameters()) == TIMM_HIERA_L
    assert TIMM_HIERA_L - RELEASED["frozen"] == sum(p.numel() for p in hiera.head.norm.parameters()) == 2304
    assert bare.parameter_counts()["trainable"] == RELEASED["trainable"] - UNUSED


def test_adapter_groupnorm_is_groupnorm_with_one_group():
    a = TaskAdapter(8, num_tasks=2, rank=4)
    with torch.no_grad():
        a.norm.weight.uniform_(0.5, 1.5)
        a.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 5, 6, 8)
    ref = F.group_norm(x.permute(0, 3, 1, 2), 1, a.norm.weight, a.norm.bias, a.norm.eps)
    torch.testing.assert_close(a.normalise(x), ref.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    # zero up-projection: the identity for every task; each task moves only its own samples
    ids = torch.tensor([0, 1, 1])
    assert torch.equal(a(x, ids), x)
    with torch.no_grad():
        a.up[1].normal_()
    y = a(x, ids)
    assert torch.equal(y[0], x[0]) and not torch.allclose(y[1:], x[1:])


def test_zero_initialised_adapters_leave_the_backbone_unchanged_for_every_task():
    net = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        t = net.trunk._pos_embed(net.trunk.patch_embed(x))
        plain = []
        for i, blk in enumerate(net.trunk.blocks):
            t = blk(t)
            if i in net.stage_ends:
                plain.append(t.permute(0, 3, 1, 2))
        for task in range(net.num_tasks):
            adapted = net.encode(x, torch.full((2,), task))
            for a, b in zip(adapted, plain):
                assert torch.equal(a, b)
    assert not any(p.requires_grad for p in net.trunk.parameters())
    assert all(p.requires_grad for p in net.adapters.parameters())


def test_output_shapes_and_size_check():
    net = _tiny()
    net.train()
    x, mask = torch.randn(2, 3, 96, 64), (torch.rand(2, 1, 96, 64) > 0.5).float()
    outs = net(x, torch.tensor([0, 2]), mask)
    assert len(outs) == 4 and all(o.shape == (2, 1, 96, 64) for o in outs)
    net.eval()
    assert all(o.shape == (1, 1, 32, 32) for o in net(torch.randn(1, 3, 32, 32), torch.tensor([1])))
    with pytest.raises(MedrestoreError, match="multiples of 32"):
        net(torch.randn(1, 3, 48, 64), torch.tensor([0]))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mixed_task_batch_equals_one_by_one_runs(mode):
    # float64: the similarity-map bias amplifies float32 rounding of batched products ~50x
    net = _tiny()
    _perturb_adapters(net)
    getattr(net.double(), mode)()
    x, ids = torch.randn(4, 3, 64, 64, dtype=torch.float64), torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        net(x, ids)  # seed every task's prototypes first (seeding is order-dependent by design)
        batch = net(x, ids)
        single = [net(x[i:i + 1], ids[i:i + 1]) for i in range(4)]
        other = net(x[:1], torch.tensor([1]))
    for k in range(4):
        torch.testing.assert_close(batch[k], torch.cat([s[k] for s in single]), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(other[0], batch[0][:1], atol=1e-3)  # the task id changes the output


def test_batch_wide_similarity_norm_couples_samples():
    """The authors' normalisation (sim_norm='batch') makes a sample depend on its batch-mates."""
    net = _tiny(sim_norm="batch").eval()
    x, ids = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    with torch.no_grad():
        net(x, ids)
        together = net(x, ids)[0][:1]
        alone = net(x[:1], ids[:1])[0]
    assert not torch.allclose(together, alone, atol=1e-4)
    with pytest.raises(ConfigError, match="sim_norm"):
        _tiny(sim_norm="global")


def _stage(**kw) -> PrototypeStage:
    torch.manual_seed(0)
    return PrototypeStage(8, 8, 8, num_tasks=2, task_dim=4, num_experts=2, heads=2, **kw)


def test_prototype_moving_average():
    st = _stage()
    emb = torch.randn(2, 4)
    x = torch.randn(1, 8, 16, 16)
    st.eval()
    with torch.no_grad():
        st(x, x, torch.tensor([1]), emb[1:])
    seeded = st.prototypes.clone()
    assert st.proto_ready.tolist() == [False, True]
    assert torch.allclose(seeded[1].norm(dim=-1), torch.ones(2))
    assert torch.equal(seeded[0], torch.zeros(2, 8))

    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1.0                                    # 36 px foreground
    with torch.no_grad():
        st(x, x, torch.tensor([1]), emb[1:], mask)                 # eval: no update
    assert torch.equal(st.prototypes, seeded)

    st.train()
    with torch.no_grad():
        feats = F.normalize(st.encoder(st.fuse(torch.cat([st.proj_high(x), st.proj_low(x)], 1))), dim=1)
        st(x, x, torch.tensor([1]), emb[1:], mask)
    fg_mean = feats[0][:, mask[0, 0] > 0.5].mean(-1)
    bg_mean = feats[0][:, mask[0, 0] < 0.1].mean(-1)
    for k, target in ((0, fg_mean), (1, bg_mean)):
        expect = F.normalize(0.995 * seeded[1, k] + 0.005 * target, dim=0)
        torch.testing.assert_close(st.prototypes[1, k], expect, rtol=1e-5, atol=1e-6)
        old = F.cosine_similarity(seeded[1, k], target, dim=0)
        assert F.cosine_similarity(st.prototypes[1, k], target, dim=0) > old  # toward the mean
    assert torch.equal(st.prototypes[0], seeded[0])                           # other task untouched

    # a foreground of 10 px (not more than min_region) leaves the foreground prototype alone
    before = st.prototypes.clone()
    small = torch.zeros(1, 1, 16, 16)
    small[..., 0, :10] = 1.0
    with torch.no_grad():
        st(x, x, torch.tensor([1]), emb[1:], small)
    assert torch.equal(st.prototypes[1, 0], before[1, 0])
    assert not torch.equal(st.prototypes[1, 1], before[1, 1])             # background still moves

    # state-dict round trip: prototypes, flags and outputs survive
    fresh = _stage()
    fresh.load_state_dict(st.state_dict())
    assert torch.equal(fresh.prototypes, st.prototypes) and torch.equal(fresh.proto_ready, st.proto_ready)
    st.eval()
    fresh.eval()
    with torch.no_grad():
        a = st(x, x, torch.tensor([1]), emb[1:])[0]
        b = fresh(x, x, torch.tensor([1]), emb[1:])[0]
    assert torch.equal(a, b)
    assert {"prototypes", "proto_ready", "proto_momentum", "identity_kernel"} <= set(st.state_dict())


def test_expert_mixture_equals_convolving_with_each_expert():
    """Mixing the M kernels by the gate before one depthwise conv equals the authors' order:
    convolve with every expert (unfold + einsum) and then mix."""
    st = _stage()
    b, c, m = 2, 8, 2
    x = torch.randn(b, c, 16, 16)
    vec = torch.randn(b, c)
    kernels = st.kernel_gen(vec).view(b, m, c, 9)
    kernels = st.mix * kernels + (1 - st.mix) * st.identity_kernel.view(1, 1, c, 9)
    gate = torch.softmax(st.expert_gate(vec), -1)
    cols = F.unfold(x, 3, padding=1).view(b, c, 9, -1)
    each = torch.einsum("bmcr,bcrp->bmcp", kernels, cols)
    ref = (each * gate.view(b, m, 1, 1)).sum(1).view(b, c, 16, 16)
    from medrestore.models.layers.dynamic import dynamic_depthwise_conv2d

    ours = dynamic_depthwise_conv2d(x, torch.einsum("bm,bmcr->bcr", gate, kernels).view(b, c, 3, 3))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_backbone_weights_from_a_sam2_checkpoint(tmp_path):
    src = _tiny()
    sd = {f"image_encoder.trunk.{k}".replace("mlp.fc1", "mlp.layers.0").replace("mlp.fc2", "mlp.layers.1"): v
          for k, v in src.trunk.state_dict().items()}
    sd["sam_mask_decoder.whatever"] = torch.zeros(1)               # other SAM2 parts are ignored
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": sd}, path)
    torch.manual_seed(5)
    dst = tpseg_tiny(num_tasks=3, backbone_weights=str(path))
    for (k, a), b in zip(src.trunk.state_dict().items(), dst.trunk.state_dict().values()):
        assert torch.equal(a, b), k
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"image_encoder.trunk.pos_embed": torch.zeros(1)}}, bad)
    with pytest.raises(ConfigError, match=r"backbone_weights=.*bad\.pt.*missing"):
        tpseg_tiny(num_tasks=3, backbone_weights=str(bad))


def test_constructor_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="model.net.backbone='resnet50'"):
        tpseg_tiny(backbone="resnet50")
    with pytest.raises(ConfigError, match="num_tasks=0"):
        tpseg_tiny(num_tasks=0)
    with pytest.raises(ConfigError, match="decoder_channels"):
        tpseg_tiny(decoder_channels=(16, 16, 30))
