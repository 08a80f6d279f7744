"""Restormer building blocks ("Restormer: Efficient Transformer for
High-Resolution Image Restoration", CVPR 2022).

Re-implemented from the paper and checked layer for layer against the authors' reference
implementation. Attribute names deliberately mirror the reference so that its checkpoints
load into our modules with ``strict=True`` (e.g. ``norm1.body.weight``, ``attn.qkv``,
``attn.qkv_dwconv``, ``attn.temperature``, ``ffn.project_in``, ``ffn.dwconv``).

Later families reuse these blocks, so each forward is split into small overridable steps:

* :class:`MDTA` — ``apply_qkv_dwconv`` (the depthwise 3x3 on the 3C projection) and
  ``attend`` (attention core given q, k, v).
* :class:`GDFN` — ``apply_dwconv`` (the depthwise 3x3 on the 2*hidden projection) and
  ``gate``.
* :class:`TransformerBlock` — ``attn_branch`` and ``ffn_branch`` (each returns the residual
  update, i.e. the norm is included).

Two implementations of the same maths share the parameters (and so the state-dict keys):

* ``impl = "reference"`` (default) — the authors' op sequence, bit for bit;
* ``impl = "fast"`` — for channels-last activations: the channel LayerNorm as one
  ``F.layer_norm`` over the contiguous channel axis, the 1x1 convolutions as matrix products
  over that axis, and the transposed attention on pixel-major tokens with the L2 normalisation
  of q and k folded into the (C/heads)² Gram matrix instead of two full-map divisions. Equal to
  the reference up to float rounding (``tests/test_fast_path.py``).

The switch is a plain attribute (:class:`ImplSwitch`), set for a whole network by
:func:`set_impl`; the architectures take it as the constructor argument ``impl``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError

__all__ = [
    "IMPLS",
    "FAST_PIECES",
    "Impl",
    "ImplSwitch",
    "check_impl",
    "set_impl",
    "is_fast",
    "pointwise_conv",
    "to_channels_last",
    "LayerNormType",
    "BiasFreeLayerNorm",
    "WithBiasLayerNorm",
    "LayerNorm2d",
    "MDTA",
    "GDFN",
    "TransformerBlock",
    "OverlapPatchEmbed",
    "Downsample",
    "Upsample",
]

LayerNormType = Literal["WithBias", "BiasFree"]

_LN_EPS = 1e-5

Impl = Literal["reference", "fast"]
IMPLS: tuple[str, ...] = ("reference", "fast")

#: The pieces of the fast path, each switchable so benchmarks can measure what it buys (all on
#: by default; switching one off falls back to the reference op for that piece only).
FAST_PIECES: dict[str, bool] = {
    "channels_last": True,   # activations in channels-last memory from the embedding on
    "layernorm": True,       # F.layer_norm over the channel axis instead of mean/var/elementwise
    "linear1x1": True,       # 1x1 convolutions as matrix products over channels
    "attention": True,       # token-major transposed attention, normalisation in the Gram matrix
    "dynamic_conv": True,    # per-sample depthwise conv as per-sample channels-last convs
}


def check_impl(impl: object) -> None:
    """Reject an unknown implementation name (``model.net.impl``)."""
    if impl not in IMPLS:
        raise ConfigError(f"model.net.impl={impl!r}; expected one of {list(IMPLS)}")


class ImplSwitch:
    """Mixin: modules with a reference and a fast forward read ``self.impl``."""

    impl: str = "reference"


def set_impl(module: nn.Module, impl: str) -> None:
    """Select the implementation of every switchable sub-module of ``module``."""
    check_impl(impl)
    for m in module.modules():
        if isinstance(m, ImplSwitch):
            m.impl = impl


def is_fast(module: ImplSwitch, piece: str) -> bool:
    """Whether ``module`` runs the fast version of ``piece`` (see :data:`FAST_PIECES`)."""
    return module.impl == "fast" and FAST_PIECES[piece]


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last memory (a no-op when the piece is off or x is not 4-D)."""
    if FAST_PIECES["channels_last"] and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def pointwise_conv(conv: nn.Conv2d, x: Tensor, fast: bool) -> Tensor:
    """A 1x1 ``conv`` applied to ``x``; ``fast``: one matrix product over the channel axis.

    On channels-last input the ``B x H x W x C`` view is contiguous, so ``F.linear`` runs one
    GEMM without layout copies; the result is returned as a channels-last ``B x C x H x W`` view.
    """
    if not (fast and FAST_PIECES["linear1x1"]):
        return conv(x)
    y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return y.permute(0, 3, 1, 2)


class BiasFreeLayerNorm(ImplSwitch, nn.Module):
    """Per-pixel channel norm without mean subtraction in the output (scale only).

    The variance is still the centred (biased) one; only the numerator keeps the mean,
    exactly as in the reference ``BiasFree`` variant.
    """

    def __init__(self, num_channels: int, eps: float = _LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if is_fast(self, "layernorm"):
            # Channels-last view: one reduction over the contiguous last axis, one fused scale.
            xt = x.permute(0, 2, 3, 1)
            var = xt.var(dim=-1, keepdim=True, unbiased=False)
            return (xt * torch.rsqrt(var + self.eps) * self.weight).permute(0, 3, 1, 2)
        # Reduce over dim=1 of B x C x H x W directly: same maths as normalising the last
        # dim of the (B, HW, C) view, without the two layout copies.
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)


class WithBiasLayerNorm(ImplSwitch, nn.Module):
    """Standard LayerNorm over channels at every pixel of a B x C x H x W tensor."""

    def __init__(self, num_channels: int, eps: float = _LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if is_fast(self, "layernorm"):
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        # Separate mean/var (not torch.var_mean) reproduces the reference bit for bit.
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class LayerNorm2d(nn.Module):
    """Channel LayerNorm wrapper; the ``body`` indirection keeps reference key names."""

    def __init__(self, num_channels: int, layernorm_type: LayerNormType = "WithBias") -> None:
        super().__init__()
        # Like the reference, anything other than "BiasFree" selects the biased variant;
        # we are stricter and reject typos.
        if layernorm_type == "BiasFree":
            self.body: nn.Module = BiasFreeLayerNorm(num_channels)
        elif layernorm_type == "WithBias":
            self.body = WithBiasLayerNorm(num_channels)
        else:
            raise ValueError(
                f"layernorm_type must be 'WithBias' or 'BiasFree', got {layernorm_type!r}"
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MDTA(ImplSwitch, nn.Module):
    """Multi-Dconv Head Transposed Attention: attention across channels, not pixels.

    Cost is linear in H*W because the attention map is (C/heads) x (C/heads) per head.

    Override points: :meth:`apply_qkv_dwconv` (e.g. per-sample dynamic depthwise kernels)
    and :meth:`attend` (e.g. windowed attention at test time). ``attend`` receives q, k, v
    as B x C x H x W tensors and must return B x C x H x W.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        # Learnable per-head scale, replacing the fixed 1/sqrt(d) since q, k are L2-normalised.
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(
            dim * 3, dim * 3, kernel_size=3, stride=1, padding=1, groups=dim * 3, bias=bias
        )
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def apply_qkv_dwconv(self, x: Tensor) -> Tensor:
        """Depthwise 3x3 over the 3C point-wise projection (local context for q, k, v)."""
        return self.qkv_dwconv(x)

    def split_heads(self, t: Tensor) -> Tensor:
        """B x (heads*c) x H x W -> B x heads x c x (H*W)."""
        b, _, h, w = t.shape
        return t.reshape(b, self.num_heads, -1, h * w)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Transposed attention core; inputs and output are B x C x H x W."""
        if is_fast(self, "attention"):
            return self.attend_fast(q, k, v)
        b, c, h, w = q.shape
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        # Normalising over pixels makes q k^T a cosine similarity between channels.
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        return (attn @ v).reshape(b, c, h, w)

    def attend_fast(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """:meth:`attend` on pixel-major tokens; the output is a channels-last B x C x H x W.

        ``normalize(q) normalize(k)^T = (q k^T) / (|q| |k|^T)``: dividing the small Gram
        matrix replaces two full-map divisions (and their backward) by the norms.
        """
        b, c, h, w = q.shape
        heads = self.num_heads

        def tokens(t: Tensor) -> Tensor:  # B x heads x HW x c (a view on channels-last input)
            return t.permute(0, 2, 3, 1).reshape(b, h * w, heads, c // heads).transpose(1, 2)

        qt, kt, vt = tokens(q), tokens(k), tokens(v)
        eps = 1e-12  # F.normalize's
        nq = torch.linalg.vector_norm(qt, dim=-2).clamp_min(eps)
        nk = torch.linalg.vector_norm(kt, dim=-2).clamp_min(eps)
        gram = qt.transpose(-2, -1) @ kt
        attn = (gram / (nq.unsqueeze(-1) * nk.unsqueeze(-2)) * self.temperature).softmax(dim=-1)
        out = vt @ attn.transpose(-2, -1)  # B x heads x HW x c
        return out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        fast = self.impl == "fast"
        qkv = self.apply_qkv_dwconv(pointwise_conv(self.qkv, x, fast))
        q, k, v = qkv.chunk(3, dim=1)
        return pointwise_conv(self.project_out, self.attend(q, k, v), fast)


class GDFN(ImplSwitch, nn.Module):
    """Gated-Dconv Feed-forward Network: GELU-gated depthwise-conv MLP.

    Override points: :meth:`apply_dwconv` (the depthwise 3x3 on the 2*hidden projection) and
    :meth:`gate`.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)  # truncation, as in the reference
        self.hidden_features = hidden
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(
            hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1, groups=hidden * 2, bias=bias
        )
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def apply_dwconv(self, x: Tensor) -> Tensor:
        """Depthwise 3x3 over both halves (value and gate) at once."""
        return self.dwconv(x)

    def gate(self, x1: Tensor, x2: Tensor) -> Tensor:
        """GELU of the first half gates the second (exact erf GELU, as the reference)."""
        return F.gelu(x1) * x2

    def forward(self, x: Tensor) -> Tensor:
        fast = self.impl == "fast"
        x1, x2 = self.apply_dwconv(pointwise_conv(self.project_in, x, fast)).chunk(2, dim=1)
        return pointwise_conv(self.project_out, self.gate(x1, x2), fast)


class TransformerBlock(ImplSwitch, nn.Module):
    """Pre-norm block: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``.

    Subclasses can swap the sub-modules after ``super().__init__`` (keeping the attribute
    names preserves checkpoint keys) or override :meth:`attn_branch` / :meth:`ffn_branch`,
    e.g. to fuse a prompt into the attention input only.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, layernorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = LayerNorm2d(dim, layernorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def attn_branch(self, x: Tensor) -> Tensor:
        """Residual update of the attention half."""
        return self.attn(self.norm1(x))

    def ffn_branch(self, x: Tensor) -> Tensor:
        """Residual update of the feed-forward half."""
        return self.ffn(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn_branch(x)
        return x + self.ffn_branch(x)


class OverlapPatchEmbed(nn.Module):
    """3x3 conv embedding (overlapping 'patches' of one pixel with 3x3 support)."""

    def __init__(self, in_channels: int = 3, embed_dim: int = 48, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve resolution, double channels: 3x3 conv C -> C/2, then PixelUnshuffle(2)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        # Always bias-free, regardless of the model's ``bias`` flag (as the reference).
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, num_channels // 2, 3, stride=1, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double resolution, halve channels: 3x3 conv C -> 2C, then PixelShuffle(2)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, num_channels * 2, 3, stride=1, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
