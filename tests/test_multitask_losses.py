"""Loss balancers (fixed, uncertainty, GradNorm) and TP-Seg's structure loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.losses.multitask import build_balancer
from medrestore.losses.segmentation import boundary_weights, deep_supervision_loss, structure_loss

TASKS = ["seg", "det", "cls"]


class ToyNet(nn.Module):
    """A shared trunk and one linear head per task (the last shared layer is ``trunk[2]``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS})

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def _losses(net, x, ys):
    out = net(x)
    return {t: ((out[t] - ys[t]) ** 2).mean() for t in TASKS}


def test_fixed_is_plain_weighted_sum():
    bal = build_balancer("fixed", TASKS, {"det": 2.0})
    losses = {"seg": torch.tensor(1.5), "det": torch.tensor(0.25), "cls": torch.tensor(3.0)}
    assert bal(losses).item() == pytest.approx(1.5 + 2 * 0.25 + 3.0)
    assert bal.weights == {"seg": 1.0, "det": 2.0, "cls": 1.0}
    assert bal({"cls": torch.tensor(2.0)}).item() == pytest.approx(2.0)  # single-task build
    assert list(bal.parameters()) == [] and bal.network_parameters() == []


def test_uncertainty_weights_receive_gradients():
    bal = build_balancer("uncertainty", TASKS)
    assert bal.weights == pytest.approx({t: 1.0 for t in TASKS})
    pred = torch.ones(3, requires_grad=True)
    losses = {t: pred[i] * (i + 2.0) for i, t in enumerate(TASKS)}  # 2, 3, 4
    bal(losses).backward()
    g = bal.log_vars.grad
    assert g is not None and torch.all(g != 0)
    # d/ds [exp(−s) L + s] at s = 0 is 1 − L
    assert g.tolist() == pytest.approx([1 - 2.0, 1 - 3.0, 1 - 4.0])
    assert bal.network_parameters() == [bal.log_vars]
    opt = torch.optim.SGD(bal.network_parameters(), lr=0.1)
    opt.step()
    w = bal.weights
    assert w["cls"] < w["det"] < w["seg"]                # larger loss, smaller weight


def test_gradnorm_keeps_sum_and_never_touches_network_gradients():
    net = ToyNet()
    x = torch.randn(16, 4)
    ys = {t: torch.randn(16, 1) * (i + 1) for i, t in enumerate(TASKS)}
    shared = net.trunk[2].weight

    def network_grads(with_gradnorm: bool, bal):
        net.zero_grad(set_to_none=True)
        losses = _losses(net, x, ys)
        total = bal(losses)                              # the weights of this step, as constants
        if with_gradnorm:
            bal.gradnorm_step(losses, shared)
            assert all(p.grad is None for p in net.parameters())
        total.backward()
        return [p.grad.clone() for p in net.parameters()]

    ref_bal = build_balancer("gradnorm", TASKS)
    bal = build_balancer("gradnorm", TASKS)
    ref = network_grads(False, ref_bal)
    got = network_grads(True, bal)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    for _ in range(5):
        bal.gradnorm_step(_losses(net, x, ys), shared)
        assert sum(bal.weights.values()) == pytest.approx(len(TASKS), abs=1e-5)
        assert all(w > 0 for w in bal.weights.values())
    assert bal.weights != pytest.approx({t: 1.0 for t in TASKS})
    assert bal.network_parameters() == []
    # the balancer's own Adam state survives a state-dict round trip
    other = build_balancer("gradnorm", TASKS)
    other.load_state_dict(bal.state_dict())
    assert other.weights == pytest.approx(bal.weights)
    assert torch.equal(other.initial_losses, bal.initial_losses)
    assert other._optimizer.state_dict()["state"][0]["step"] == 6


def test_gradnorm_favours_the_slower_task():
    """Two tasks with equal gradient norms at the shared layer: the one whose loss fell less
    since step 0 (higher inverse training rate) gets the larger weight."""
    w_shared = nn.Parameter(torch.ones(3))
    bal = build_balancer("gradnorm", ["fast", "slow"], alpha=1.0, lr=0.05)
    first = {"fast": (w_shared ** 2).sum(), "slow": (w_shared ** 2).sum()}
    bal.gradnorm_step(first, w_shared)                   # anchors L(0) = 3 for both
    for _ in range(10):
        # same gradient (2·W) for both, values 0.6 (fell to 20 %) and 2.7 (still 90 %)
        losses = {"fast": _with_value((w_shared ** 2).sum(), 0.6),
                  "slow": _with_value((w_shared ** 2).sum(), 2.7)}
        bal.gradnorm_step(losses, w_shared)
    w = bal.weights
    assert w["slow"] > 1.0 > w["fast"]
    assert w["slow"] + w["fast"] == pytest.approx(2.0, abs=1e-5)
    assert w_shared.grad is None


def _with_value(loss: torch.Tensor, value: float) -> torch.Tensor:
    """``loss`` with its gradient kept and its value replaced by ``value``."""
    return loss - loss.detach() + value


def test_gradnorm_reanchor_each_epoch():
    p = nn.Parameter(torch.ones(2))
    bal = build_balancer("gradnorm", ["a", "b"], reanchor="epoch")
    bal.gradnorm_step({"a": p.sum() * 2, "b": p.sum()}, p)
    assert bal.initial_losses.tolist() == pytest.approx([4.0, 2.0])
    bal.gradnorm_step({"a": p.sum(), "b": p.sum()}, p)
    assert bal.initial_losses.tolist() == pytest.approx([4.0, 2.0])
    bal.new_epoch()
    bal.gradnorm_step({"a": p.sum(), "b": p.sum() * 3}, p)
    assert bal.initial_losses.tolist() == pytest.approx([2.0, 6.0])


def test_balancer_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"loss.balance.mode='mgda'"):
        build_balancer("mgda", TASKS)
    with pytest.raises(ConfigError, match=r"loss.balance.weights.grade"):
        build_balancer("fixed", TASKS, {"grade": 1.0})
    with pytest.raises(ConfigError, match=r"weights.seg=-1"):
        build_balancer("fixed", TASKS, {"seg": -1})
    with pytest.raises(ConfigError, match=r"\.lr"):
        build_balancer("gradnorm", TASKS, lr=0)
    with pytest.raises(MedrestoreError, match="unknown task"):
        build_balancer("fixed", TASKS)({"grade": torch.tensor(1.0)})
    with pytest.raises(MedrestoreError, match="not 'gradnorm'"):
        build_balancer("fixed", TASKS).gradnorm_step({}, nn.Parameter(torch.ones(1)))


def _disc(h=64, w=64, r=14):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= r * r).float()[None, None]


def test_boundary_weights_peak_at_edges():
    m = _disc()
    w = boundary_weights(m)
    assert w.min() >= 1.0 and w.max() <= 3.0
    centre, corner, edge = w[0, 0, 32, 32], w[0, 0, 0, 0], w[0, 0, 32, 32 + 14]
    assert edge > centre + 0.3 and edge > corner + 0.3
    assert corner == pytest.approx(1.0)
    # the separable mean equals the plain 31x31 mean (zero padding counted)
    import torch.nn.functional as F

    ref = 1.0 + 2.0 * (F.avg_pool2d(m, 31, stride=1, padding=15) - m).abs()
    assert (w - ref).abs().max().item() < 1e-5


def test_structure_loss_perfect_low_and_deep_supervision_sums():
    m = _disc().repeat(2, 1, 1, 1)
    perfect = (m * 2 - 1) * 20.0                          # confident logits of the right sign
    wrong = -perfect
    lp, lw = structure_loss(perfect, m), structure_loss(wrong, m)
    assert lp.item() < 0.01 < 1.0 < lw.item()
    half = torch.zeros_like(m)
    assert lp < structure_loss(half, m) < lw
    small = torch.nn.functional.avg_pool2d(perfect, 2)    # a side output at half resolution
    total = deep_supervision_loss([perfect, small], m)
    assert total.item() == pytest.approx(lp.item() + structure_loss(
        torch.nn.functional.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False), m).item())
    logits = torch.zeros_like(m, requires_grad=True)
    structure_loss(logits, m).backward()
    g = logits.grad[0, 0]
    # the BCE pull is stronger on the boundary than deep inside the lesion
    assert g[32, 32 + 13].abs() > g[32, 32].abs()
    with pytest.raises(MedrestoreError):
        structure_loss(perfect[:, :, :10], m)
