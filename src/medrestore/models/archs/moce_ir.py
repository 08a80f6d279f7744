"""MoCE-IR (CVPR 2025): mixture of *complexity experts* for all-in-one image restoration.

"Complexity Experts are Task-Discriminative Learners for Any Image Restoration": an asymmetric
4-level U-Net whose ten decoder blocks each route the whole image (top-k, k = 1 as released) to
one of four experts that differ in cost and receptive field, plus a frequency embedding of the
bottleneck that every router reads. Our own implementation, checked layer for layer against
the authors' released class (same parameter count, same state-dict keys and
shapes, same outputs at equal weights: ``benchmarks/refcheck_moce_ir.py``).

Network (``dim`` = 48 for ``MoCE_IR``, 32 for ``MoCE_IR_S``; widths ``dim·2^l``):

* ``patch_embed`` (3x3) → encoder levels ``enc.<i>.0`` (Restormer blocks with **biases on**:
  ``norms.{0,1}``, ``mixer`` = MDTA, ``ffn`` = GDFN, factor 2) each followed by ``enc.<i>.1``
  (Downsample) → ``latent`` (8·dim, biases on);
* ``freq_embed``: depthwise 3x3 initialised as a Laplacian high-pass (centre 8, neighbours −1)
  + GELU → spatial mean → MLP (8d → 16d → 8d): one vector per image for all routers;
* decoder levels ``dec.<i>`` (i = 0, 1, 2 at 1/4, 1/2, 1): ``.0`` Upsample, concat skip,
  ``.1`` 1x1 fusion (2w → w), ``.2`` group of :class:`MoCEDecoderBlock` s (4/4/2 released);
  level 1 stays at ``dim`` (unlike Restormer's 2·dim);
* ``refinement`` (dim, biases on) → ``output`` (3x3) + the input image.

Decoder block: ``n = LN(x)``; ``s = MDTA(1x1(n))`` (the shared path); ``a = adapter(1x1(n), f,
s)``; ``x = x + CrossAttn(q from a, k/v from s)``; ``x = x + GDFN(LN(x))``. The adapter routes
each image by ``softmax(Linear(GAP(a)) + Linear(f) + noise)`` (noise std 1/num_experts), keeps
the top-k scores **without renormalising** them as gates, and returns ``proj_out(Σ gate ·
expert(a, s))``. Expert e has rank ``r_e`` (``spread``: C/8, C/4, C/2, C) and FFT window
``p_e`` = 4, 8, 16, 32: ``a + 1x1_{r→C}(FFTAttn_r(1x1_{C→r}(a)) ⊙ SiLU(1x1_{C→r}(s)))``,
where FFTAttn multiplies the 2-D spectra of q and k per zero-padded p×p window (fp32), then
LayerNorm, times v, 1x1. Training adds the load-balancing loss ``0.5·CV²(importance) + 0.5·CV²(load)``
per block (importance optionally weighted by each expert's relative parameter count,
``with_complexity``), averaged over the blocks.

Output contract: training mode returns ``(pred, {"aux_loss": scalar, "routes": B×blocks×k})``,
eval mode the tensor ``pred``.

The authors' behaviours that we consider bugs are options (defaults = the corrected behaviour):

* ``eval_routing_noise`` (default ``False``): the authors add the router noise at test time as
  well, so their evaluation depends on the seed and on image order; ``True`` reproduces that.
* ``eval_dispatch`` (default ``"per_sample"``): every image gets its own experts, in training
  and eval alike. ``"authors"`` reproduces their eval branch, which applies every expert chosen
  anywhere in the batch to every image and sums the results (scaled by the image's own gate):
  correct at batch 1 only.

Other departures from the authors' class, none changing outputs at the sizes it accepts:

* any H, W: right/bottom padding to a multiple of ``pad_multiple`` and cropping back (theirs
  needs multiples of 8); the global residual is skipped when channel counts differ;
* four levels only, and the experts' ``depth`` options are dropped: their depth loop re-applies
  the expert to its original input, so any depth gives the depth-1 output (and no parameters);
* the "frozen" high-pass kernel stays **trainable**, as in theirs (their freeze assigns an
  attribute instead of calling ``requires_grad_``), so released checkpoints hold a trained kernel.

Run options as :class:`~medrestore.models.archs.restormer.Restormer`: ``impl`` (``"reference"``:
the authors' op sequence; ``"fast"``: channels-last, fused LayerNorm / 1x1 / attention from
:mod:`medrestore.models.layers.restormer`) and ``checkpoint_blocks``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medrestore.errors import ConfigError
from medrestore.models.archs.restormer import pad_to_multiple
from medrestore.models.layers.restormer import (
    GDFN,
    MDTA,
    Downsample,
    Impl,
    ImplSwitch,
    LayerNorm2d,
    LayerNormType,
    OverlapPatchEmbed,
    Upsample,
    check_impl,
    pointwise_conv,
    set_impl,
    to_channels_last,
)

__all__ = [
    "RANK_TYPES",
    "EVAL_DISPATCH",
    "MoCEIR",
    "MoCEEncoderBlock",
    "MoCEDecoderBlock",
    "MoCEAdapter",
    "ComplexityExpert",
    "ComplexityRouter",
    "FFTAttention",
    "CrossAttention",
    "FrequencyEmbedding",
    "expert_ranks",
    "moce_ir",
    "moce_ir_s",
    "moce_ir_tiny",
]

RANK_TYPES = ("spread", "constant", "lin", "double", "exp", "fact")
EVAL_DISPATCH = ("per_sample", "authors")
EvalDispatch = Literal["per_sample", "authors"]
_DOWNSCALE = 8  # three 2x down-samplings


def expert_ranks(dim: int, num_experts: int, rank_type: str, rank: int) -> list[int]:
    """Expert ranks at width ``dim`` (the authors' ``rank_type`` rules; ``spread`` is released:
    ``dim/2^(E-1), …, dim/2, dim``, cheapest first)."""
    e = range(num_experts)
    if rank_type == "spread":
        return [dim // 2 ** i for i in e][::-1]
    if rank_type == "constant":
        return [rank for _ in e]
    if rank_type == "lin":
        return [rank + i for i in e]
    if rank_type == "double":
        return [rank + 2 * i for i in e]
    if rank_type == "exp":
        return [rank ** (i + 1) for i in e]
    if rank_type == "fact":
        return [math.factorial(rank + i) for i in e]
    raise ConfigError(f"model.net.rank_type={rank_type!r}; expected one of {list(RANK_TYPES)}")


# --------------------------------------------------------------------------- encoder side
class MoCEEncoderBlock(nn.Module):
    """Restormer block under the authors' names (``norms.{0,1}``, ``mixer``, ``ffn``): the
    shared LayerNorm / MDTA / GDFN layers, so both implementation paths apply."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 layernorm_type: LayerNormType) -> None:
        super().__init__()
        self.norms = nn.ModuleList([LayerNorm2d(dim, layernorm_type),
                                    LayerNorm2d(dim, layernorm_type)])
        self.mixer = MDTA(dim, num_heads, bias)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norms[0](x))
        return x + self.ffn(self.norms[1](x))


class BlockGroup(nn.Module):
    """A stage: its blocks under ``layers.<j>`` (the authors' residual-group container; despite
    the name it adds no residual of its own). The network applies the blocks itself, so that
    ``checkpoint_blocks`` can wrap each one."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)


# --------------------------------------------------------------------------- attention pieces
class CrossAttention(MDTA):
    """Transposed (channel) attention with the query from one map and key/value from another.

    The attention core is MDTA's (reference and fast paths); only the projections differ:
    ``q`` 1x1 + ``q_dwconv`` 3x3 on the query map, ``kv`` 1x1 + ``kv_dwconv`` **7x7** on the
    key/value map. Registered in the authors' order (temperature, q, q_dwconv, kv, kv_dwconv,
    project_out) so the state dict reads like theirs.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__(dim, num_heads, bias)
        del self.qkv, self.qkv_dwconv, self.project_out
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim, bias=bias)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, stride=1, padding=3, groups=dim * 2,
                                   bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        fast = self.impl == "fast"
        q = self.q_dwconv(pointwise_conv(self.q, x, fast))
        k, v = self.kv_dwconv(pointwise_conv(self.kv, y, fast)).chunk(2, dim=1)
        return pointwise_conv(self.project_out, self.attend(q, k, v), fast)


class FFTAttention(ImplSwitch, nn.Module):
    """Window-wise spectral product of q and k, normalised, gating v (one expert's body).

    q: 1x1 (no bias) + 3x3 depthwise (bias); k, v: 1x1 to 2r (no bias) + 7x7 depthwise (bias).
    q and k are zero-padded on the right/bottom to a multiple of ``window`` and cut into
    non-overlapping windows; per window ``irfft2(rfft2(q)·rfft2(k))`` (a circular
    cross-correlation-like mixing, computed in fp32), cropped back, LayerNorm, ``· v``, 1x1 (bias).
    """

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, stride=1, padding=1, groups=dim)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 7, stride=1, padding=3, groups=dim * 2)
        self.norm = LayerNorm2d(dim, "WithBias")
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1)

    def to_windows(self, x: Tensor) -> Tensor:
        """B x C x H x W -> B x C x nh x nw x p x p (zero-padded on the right/bottom)."""
        p = self.window
        b, c, h, w = x.shape
        x = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        nh, nw = x.shape[-2] // p, x.shape[-1] // p
        return x.reshape(b, c, nh, p, nw, p).permute(0, 1, 2, 4, 3, 5)

    def from_windows(self, x: Tensor, h: int, w: int) -> Tensor:
        b, c, nh, nw, p, _ = x.shape
        return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * p, nw * p)[:, :, :h, :w]

    def forward(self, x: Tensor) -> Tensor:
        fast = self.impl == "fast"
        h, w = x.shape[-2:]
        q = self.q_dwconv(pointwise_conv(self.q, x, fast))
        k, v = self.kv_dwconv(pointwise_conv(self.kv, x, fast)).chunk(2, dim=1)
        p = self.window
        spec = torch.fft.rfft2(self.to_windows(q).float()) * torch.fft.rfft2(
            self.to_windows(k).float())
        out = self.from_windows(torch.fft.irfft2(spec, s=(p, p)), h, w)
        out = self.norm(out) * v
        return pointwise_conv(self.proj_out, out, fast)


# --------------------------------------------------------------------------- experts, routing
class ComplexityExpert(ImplSwitch, nn.Module):
    """``a + 1x1_{r→C}(FFTAttn_r(1x1_{C→r}(a)) ⊙ SiLU(1x1_{C→r}(s)))`` (``proj.{0,1,2}``,
    ``body``); its cost grows with the rank ``r`` and its receptive field with the window."""

    def __init__(self, dim: int, rank: int, window: int) -> None:
        super().__init__()
        self.rank, self.window = rank, window
        self.proj = nn.ModuleList([
            nn.Conv2d(dim, rank, kernel_size=1, bias=False),
            nn.Conv2d(dim, rank, kernel_size=1, bias=False),
            nn.Conv2d(rank, dim, kernel_size=1, bias=False),
        ])
        self.body = FFTAttention(rank, window)

    def forward(self, x: Tensor, shared: Tensor) -> Tensor:
        fast = self.impl == "fast"
        y = self.body(pointwise_conv(self.proj[0], x, fast))
        y = y * F.silu(pointwise_conv(self.proj[1], shared, fast))
        return pointwise_conv(self.proj[2], y, fast) + x


class ComplexityRouter(nn.Module):
    """Per-image noisy top-k router with the load-balancing statistic (``routing``).

    ``logits = gate(GAP(a)) + freq_gate(f)`` (``gate.2``, ``freq_gate``: bias-free linears);
    ``scores = softmax(logits + N(0, σ²))`` with ``σ = 1/num_experts``; gates = the top-k scores
    as they are (not renormalised over the k). ``complexity`` (a persistent buffer, in the
    authors' checkpoints) is each expert's parameter count over the largest (``max``) or the
    smallest (``min``).
    """

    def __init__(self, dim: int, freq_dim: int, num_experts: int, k: int,
                 complexity: Tensor, with_complexity: bool, complexity_scale: str) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(dim, num_experts, bias=False))
        self.freq_gate = nn.Linear(freq_dim, num_experts, bias=False)
        scale = complexity.max() if complexity_scale == "max" else complexity.min()
        self.register_buffer("complexity", complexity / scale)
        self.k = k
        self.num_experts = num_experts
        self.noise_std = 1.0 / num_experts
        self.with_complexity = with_complexity

    def draw_noise(self, logits: Tensor) -> Tensor:
        """The routing noise (global RNG, one ``randn_like`` per call, as the authors: the same
        seed gives the same draws in both classes). Tests may replace it to fix the noise."""
        return torch.randn_like(logits) * self.noise_std

    @staticmethod
    def cv_squared(x: Tensor) -> Tensor:
        """Squared coefficient of variation (unbiased std), the balancing statistic."""
        return (x.std() / (x.mean() + 1e-8)) ** 2

    def importance_loss(self, probs: Tensor) -> Tensor:
        importance = probs.sum(dim=0)
        if self.with_complexity:  # cheap experts are pushed to take more of the mass
            importance = importance * self.complexity
        return self.cv_squared(importance)

    def load_loss(self, logits: Tensor, noisy: Tensor) -> Tensor:
        """CV² of each expert's batch-mean probability that fresh noise lifts its clean logit
        above the current k-th noisy logit."""
        kth = noisy.topk(self.k, dim=-1).values[:, -1:]
        z = (kth - logits) / self.noise_std
        p = 1.0 - 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # 1 − Φ(z)
        return self.cv_squared(p.mean(dim=0))

    def forward(self, x: Tensor, freq_emb: Tensor,
                noisy: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(indices B×k, gates B×k, aux)``; ``aux`` only in training mode."""
        logits = self.gate(x) + self.freq_gate(freq_emb)
        noisy_logits = logits + self.draw_noise(logits) if noisy else logits
        gates, indices = noisy_logits.softmax(dim=-1).topk(self.k, dim=-1)
        aux = None
        if self.training:
            aux = 0.5 * self.importance_loss(logits.softmax(dim=-1)) + \
                0.5 * self.load_loss(logits, noisy_logits)
        return indices, gates, aux


class MoCEAdapter(nn.Module):
    """The mixture: ``experts.<e>.0`` (:class:`ComplexityExpert`), ``proj_out``, ``routing``.

    Dispatch is per sample: each expert runs once on the images that chose it and each image
    receives ``Σ_k gate_k · expert_k(its own a, s)``, so a batch gives every image the output it
    gets alone. ``eval_dispatch="authors"`` reproduces the authors' eval branch instead.
    """

    def __init__(self, dim: int, freq_dim: int, num_experts: int, top_k: int, rank_type: str,
                 rank: int, with_complexity: bool, complexity_scale: str,
                 eval_routing_noise: bool, eval_dispatch: EvalDispatch) -> None:
        super().__init__()
        ranks = expert_ranks(dim, num_experts, rank_type, rank)
        windows = [2 ** (i + 2) for i in range(num_experts)]
        # ``experts.<e>.0``: one expert in a one-slot container, the authors' layout.
        self.experts = nn.ModuleList(nn.ModuleList([ComplexityExpert(dim, r, p)])
                                     for r, p in zip(ranks, windows))
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        complexity = torch.tensor([sum(p.numel() for p in e.parameters()) for e in self.experts])
        self.routing = ComplexityRouter(dim, freq_dim, num_experts, top_k, complexity,
                                        with_complexity, complexity_scale)
        self.eval_routing_noise = eval_routing_noise
        self.eval_dispatch = eval_dispatch

    def expert(self, e: int) -> ComplexityExpert:
        return self.experts[e][0]

    def dispatch(self, x: Tensor, shared: Tensor, indices: Tensor, gates: Tensor) -> Tensor:
        """Per-sample mixture: group the images by expert, run each expert on its group, add the
        gated outputs back at the images' positions (fp32 accumulation, as the authors)."""
        out = x.new_zeros(x.shape, dtype=torch.float32)
        for e in indices.unique().tolist():
            rows, slot = (indices == e).nonzero(as_tuple=True)
            y = self.expert(e)(x[rows], shared[rows])
            w = gates[rows, slot].view(-1, 1, 1, 1)
            out = out.index_add(0, rows, (w * y).float())
        return out

    def dispatch_authors(self, x: Tensor, shared: Tensor, indices: Tensor, gates: Tensor) -> Tensor:
        """The authors' eval branch (bug kept on request): image b gets ``gate_b · Σ_j
        expert_{e_j}(a_b, s_b)`` over the experts ``e_j`` chosen by *every* image j of the batch
        (k = 1; at batch 1 this is the per-sample mixture)."""
        if indices.shape[0] == 1:
            return self.dispatch(x, shared, indices, gates)
        if indices.shape[1] != 1:
            raise ConfigError("model.net.eval_dispatch='authors' is defined for top_k=1 at batch "
                              "> 1 (the authors' eval branch fails otherwise); use per_sample")
        out = sum(self.expert(e)(x, shared) for e in indices[:, 0].tolist())
        return gates.view(-1, 1, 1, 1) * out

    def forward(self, x: Tensor, freq_emb: Tensor,
                shared: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        noisy = self.training or self.eval_routing_noise
        indices, gates, aux = self.routing(x, freq_emb, noisy)
        if not self.training and self.eval_dispatch == "authors":
            out = self.dispatch_authors(x, shared, indices, gates)
        else:
            out = self.dispatch(x, shared, indices, gates)
        return self.proj_out(out), aux, indices


class MoCEDecoderBlock(ImplSwitch, nn.Module):
    """Decoder block (``norms``, ``proj``, ``shared``, ``mixer``, ``ffn``, ``adapter``): bias-free
    except the two 1x1 ``proj`` convs and the experts' internals."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 layernorm_type: LayerNormType, freq_dim: int, **adapter: Any) -> None:
        super().__init__()
        self.norms = nn.ModuleList([LayerNorm2d(dim, layernorm_type),
                                    LayerNorm2d(dim, layernorm_type)])
        self.proj = nn.ModuleList([nn.Conv2d(dim, dim, kernel_size=1),
                                   nn.Conv2d(dim, dim, kernel_size=1)])
        self.shared = MDTA(dim, num_heads, bias)
        self.mixer = CrossAttention(dim, num_heads, bias)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)
        self.adapter = MoCEAdapter(dim, freq_dim, **adapter)

    def forward(self, x: Tensor, freq_emb: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        fast = self.impl == "fast"
        n = self.norms[0](x)
        s = self.shared(pointwise_conv(self.proj[0], n, fast))
        a, aux, indices = self.adapter(pointwise_conv(self.proj[1], n, fast), freq_emb, s)
        x = self.mixer(a, s) + x
        return x + self.ffn(self.norms[1](x)), aux, indices


# --------------------------------------------------------------------------- frequency embedding
class HighPassConv(nn.Module):
    """Depthwise 3x3 (``conv``) initialised as the 8-neighbour Laplacian; trainable, as in the
    released model (its "freeze" never took effect)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        kernel = -torch.ones(3, 3)
        kernel[1, 1] = 8.0
        with torch.no_grad():
            self.conv.weight.copy_(kernel.expand_as(self.conv.weight))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FrequencyEmbedding(nn.Module):
    """High-frequency summary of the bottleneck (``high_conv.0.conv``, ``mlp.{0,2}``): one
    vector per image, read by every router."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.high_conv = nn.Sequential(HighPassConv(dim), nn.GELU())
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.high_conv(x).mean(dim=(-2, -1)))


# --------------------------------------------------------------------------- the network
def _check_config(dim: int, num_blocks: Sequence[int], num_dec_blocks: Sequence[int],
                  heads: Sequence[int], num_refinement_blocks: int, num_experts: int, topk: int,
                  rank_type: str, rank: int, complexity_scale: str, layernorm_type: str,
                  eval_dispatch: str, eval_routing_noise: object, pad_multiple: int | None,
                  checkpoint_blocks: object) -> None:
    """Reject settings that cannot build or run, naming the option (``model.net.*``)."""
    for name, value, n in (("num_blocks", num_blocks, 4), ("heads", heads, 4),
                           ("num_dec_blocks", num_dec_blocks, 3)):
        sized = hasattr(value, "__len__") and not isinstance(value, str)
        if not sized or len(value) != n or any(int(v) < 1 for v in value):
            shown = list(value) if sized else value
            raise ConfigError(f"model.net.{name}={shown!r}; expected {n} positive entries")
    if dim < 1 or num_refinement_blocks < 0:
        raise ConfigError(f"model.net.dim={dim}, num_refinement_blocks={num_refinement_blocks};"
                          " expected dim >= 1 and num_refinement_blocks >= 0")
    for level, h in enumerate(heads):
        if dim * 2 ** level % h:
            raise ConfigError(f"model.net.heads={list(heads)}; expected level {level + 1}'s heads "
                              f"({h}) to divide its {dim * 2 ** level} channels "
                              f"(model.net.dim={dim})")
    if num_experts < 1 or not 1 <= topk <= num_experts:
        raise ConfigError(f"model.net.topk={topk}, num_experts={num_experts}; expected "
                          "1 <= topk <= num_experts")
    if rank_type not in RANK_TYPES:
        raise ConfigError(f"model.net.rank_type={rank_type!r}; expected one of {list(RANK_TYPES)}")
    smallest = min(expert_ranks(dim, num_experts, rank_type, rank))
    if smallest < 1:
        raise ConfigError(f"model.net.dim={dim}: the smallest expert rank is {smallest} with "
                          f"rank_type={rank_type!r} and {num_experts} experts; expected >= 1")
    if complexity_scale not in ("max", "min"):
        raise ConfigError(f"model.net.complexity_scale={complexity_scale!r}; expected 'max' "
                          "or 'min'")
    if layernorm_type not in ("WithBias", "BiasFree"):
        raise ConfigError(f"model.net.layernorm_type={layernorm_type!r}; expected 'WithBias' "
                          "or 'BiasFree'")
    if eval_dispatch not in EVAL_DISPATCH:
        raise ConfigError(f"model.net.eval_dispatch={eval_dispatch!r}; expected one of "
                          f"{list(EVAL_DISPATCH)}")
    for name, flag in (("eval_routing_noise", eval_routing_noise),
                       ("checkpoint_blocks", checkpoint_blocks)):
        if not isinstance(flag, bool):
            raise ConfigError(f"model.net.{name}={flag!r}; expected true or false")
    if pad_multiple and pad_multiple % _DOWNSCALE:
        raise ConfigError(f"model.net.pad_multiple={pad_multiple}; expected a multiple of "
                          f"{_DOWNSCALE} (or 0/null for no padding)")


class MoCEIR(nn.Module):
    """MoCE-IR restoration network (module names and registration order as the authors').

    Args:
        in_channels, out_channels: image channels (3 as released).
        dim: level-1 width (48 ``MoCE_IR``, 32 ``MoCE_IR_S``).
        num_blocks: encoder blocks at levels 1-3 and latent blocks.
        num_dec_blocks: decoder blocks at levels 1, 2, 3 (the authors' order; released 2/4/4,
            i.e. 4 at 1/4 resolution, 4 at 1/2, 2 at full).
        num_refinement_blocks: full-resolution refinement blocks.
        heads: attention heads per level.
        ffn_expansion_factor: GDFN width factor (2, the authors' class default).
        bias: bias of the decoder blocks' convolutions, the fusion 1x1s and ``output``
            (encoder, latent and refinement always have biases, as released).
        layernorm_type: ``"WithBias"`` or ``"BiasFree"``.
        num_experts, topk: experts per decoder block and experts per image (4, 1).
        rank_type, rank: expert ranks (``"spread"``: C/8..C, ``rank`` unused; other rules use
            ``rank``, the authors' ``latent_dim``).
        with_complexity: weight the importance term by the experts' relative parameter counts
            (the paper's bias toward cheap experts). Default ``False``: the README command does
            not pass ``--with_complexity``.
        complexity_scale: ``"max"`` (released) or ``"min"`` normalisation of those counts.
        eval_routing_noise: add the routing noise in eval mode too (the authors' behaviour);
            default ``False`` = deterministic evaluation.
        eval_dispatch: ``"per_sample"`` (default) or ``"authors"`` (their batch-union eval sum).
        global_residual: add the input to the output (only when channel counts match).
        pad_multiple: pad inputs on the right/bottom to this multiple (a multiple of 8; 0/None:
            H, W must be multiples of 8 already) and crop the output back.
        zero_init_output: start ``output`` at zero (the untrained network is then the identity).
        impl: ``"reference"`` or ``"fast"`` (see :meth:`set_impl`).
        checkpoint_blocks: recompute each block's activations in backward (training only; the
            routing noise is replayed with the RNG state, so the same experts are recomputed).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_dec_blocks: Sequence[int] = (2, 4, 4),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.0,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        num_experts: int = 4,
        topk: int = 1,
        rank_type: str = "spread",
        rank: int = 2,
        with_complexity: bool = False,
        complexity_scale: str = "max",
        eval_routing_noise: bool = False,
        eval_dispatch: EvalDispatch = "per_sample",
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        _check_config(dim, num_blocks, num_dec_blocks, heads, num_refinement_blocks,
                      num_experts, topk, rank_type, rank, complexity_scale, layernorm_type,
                      eval_dispatch, eval_routing_noise, pad_multiple, checkpoint_blocks)
        check_impl(impl)
        self.in_channels, self.out_channels, self.dim = in_channels, out_channels, dim
        self.num_blocks = tuple(int(n) for n in num_blocks)
        self.num_dec_blocks = tuple(int(n) for n in num_dec_blocks)
        self.heads = tuple(int(h) for h in heads)
        self.num_experts, self.topk = num_experts, topk
        self.with_complexity = with_complexity
        self.pad_multiple = pad_multiple or 0
        self.use_residual = global_residual and in_channels == out_channels
        self.checkpoint_blocks = checkpoint_blocks
        widths = [dim * 2 ** i for i in range(4)]

        def encoder_group(width: int, n_heads: int, depth: int) -> BlockGroup:
            return BlockGroup([MoCEEncoderBlock(width, n_heads, ffn_expansion_factor, True,
                                                layernorm_type) for _ in range(depth)])

        self.patch_embed = OverlapPatchEmbed(in_channels, dim, bias=False)
        self.freq_embed = FrequencyEmbedding(widths[-1])
        self.enc = nn.ModuleList(
            nn.ModuleList([encoder_group(widths[i], self.heads[i], self.num_blocks[i]),
                           Downsample(widths[i])])
            for i in range(3))
        self.latent = encoder_group(widths[3], self.heads[3], self.num_blocks[3])

        adapter = dict(num_experts=num_experts, top_k=topk, rank_type=rank_type, rank=rank,
                       with_complexity=with_complexity, complexity_scale=complexity_scale,
                       eval_routing_noise=eval_routing_noise, eval_dispatch=eval_dispatch)
        self.dec = nn.ModuleList()
        for i in range(3):  # 1/4, 1/2, full resolution
            level = 2 - i
            width = widths[level]
            blocks = [MoCEDecoderBlock(width, self.heads[level], ffn_expansion_factor, bias,
                                       layernorm_type, widths[-1], **adapter)
                      for _ in range(self.num_dec_blocks[level])]
            self.dec.append(nn.ModuleList([
                Upsample(widths[level + 1]),
                nn.Conv2d(widths[level + 1], width, kernel_size=1, bias=bias),
                BlockGroup(blocks),
            ]))
        self.refinement = encoder_group(dim, self.heads[0], num_refinement_blocks)
        self.output = nn.Conv2d(dim, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            if self.output.bias is not None:
                nn.init.zeros_(self.output.bias)
        self.set_impl(impl)

    # ------------------------------------------------------------------ options
    def set_impl(self, impl: Impl) -> None:
        """Select ``"reference"`` (the authors' ops) or ``"fast"`` (channels-last activations,
        fused LayerNorm / 1x1 / attention) for every switchable layer."""
        set_impl(self, impl)
        self.impl = impl

    def set_eval_routing(self, noise: bool | None = None,
                         dispatch: EvalDispatch | None = None) -> None:
        """Switch the eval-time authors'-bug options after construction (e.g. to reproduce
        their numbers with released weights)."""
        if noise is not None and not isinstance(noise, bool):
            raise ConfigError(f"model.net.eval_routing_noise={noise!r}; expected true or false")
        if dispatch is not None and dispatch not in EVAL_DISPATCH:
            raise ConfigError(f"model.net.eval_dispatch={dispatch!r}; expected one of "
                              f"{list(EVAL_DISPATCH)}")
        for m in self.adapters():
            if noise is not None:
                m.eval_routing_noise = noise
            if dispatch is not None:
                m.eval_dispatch = dispatch

    def adapters(self) -> list[MoCEAdapter]:
        return [m for m in self.modules() if isinstance(m, MoCEAdapter)]

    # ------------------------------------------------------------------ forward
    def _call(self, block: nn.Module, *args: Tensor) -> Any:
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def run_group(self, group: BlockGroup, x: Tensor) -> Tensor:
        for block in group.layers:
            x = self._call(block, x)
        return x

    def forward_padded(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """The authors' network proper (H, W multiples of 8): ``(pred, aux, routes)``."""
        fast = self.impl == "fast"
        feats = self.patch_embed(to_channels_last(x) if fast else x)
        if fast:
            feats = to_channels_last(feats)
        skips = []
        for group, down in self.enc:
            feats = self.run_group(group, feats)
            skips.append(feats)
            feats = down(feats)
        feats = self.run_group(self.latent, feats)
        freq_emb = self.freq_embed(feats)
        aux_terms, routes = [], []
        for up, fusion, group in self.dec:
            feats = fusion(torch.cat([up(feats), skips.pop()], dim=1))
            for block in group.layers:
                feats, aux, indices = self._call(block, feats, freq_emb)
                aux_terms.append(aux)
                routes.append(indices)
        feats = self.run_group(self.refinement, feats)
        out = self.output(feats)
        if self.use_residual:
            out = out + x
        aux = torch.stack(aux_terms).mean() if self.training else None
        return out, aux, torch.stack(routes, dim=1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Restore ``x`` (B x C x H x W). Eval: the prediction. Training: ``(pred, {"aux_loss":
        mean of the blocks' balancing terms, "routes": B x blocks x k chosen experts})``."""
        h, w = x.shape[-2:]
        if self.pad_multiple:
            x = pad_to_multiple(x, self.pad_multiple)[0]
        out, aux, routes = self.forward_padded(x)
        if out.shape[-2:] != (h, w):
            out = out[..., :h, :w]
        if self.impl == "fast":
            out = out.contiguous()
        if not self.training:
            return out
        return out, {"aux_loss": aux, "routes": routes}


def moce_ir(**kwargs: Any) -> MoCEIR:
    """``MoCE_IR`` as released (dim 48; 25,353,796 parameters); kwargs override."""
    return MoCEIR(**kwargs)


def moce_ir_s(**kwargs: Any) -> MoCEIR:
    """``MoCE_IR_S`` as released (dim 32; 11,477,752 parameters); kwargs override."""
    return MoCEIR(**{"dim": 32, **kwargs})


def moce_ir_tiny(**kwargs: Any) -> MoCEIR:
    """A very small MoCE-IR for tests and CPU runs (every code path: routers, dispatch, FFT
    window padding at 32² inputs, aux loss); kwargs override."""
    cfg: dict[str, Any] = dict(dim=16, num_blocks=(1, 1, 1, 1), num_dec_blocks=(1, 1, 1),
                               num_refinement_blocks=1, heads=(1, 2, 4, 8))
    cfg.update(kwargs)
    return MoCEIR(**cfg)
