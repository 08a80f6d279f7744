"""Per-sample ("dynamic") depthwise convolutions and the Restormer blocks that use them.

A dynamic depthwise convolution filters every sample of a batch with its own kernel bank:
``y[b, c] = x[b, c] ⋆ K[b, c]``. It runs as ONE grouped convolution over a ``(1, B·C, H, W)``
view of the input with ``B·C`` groups, so the cost is that of a normal depthwise conv and there
is no Python loop over samples.

The adaptive blocks (:class:`AdaptiveMDTA`, :class:`AdaptiveGDFN`,
:class:`AdaptiveTransformerBlock`) replace the static 3x3 depthwise conv of Restormer's
attention and feed-forward by ``K = K_static + λ ⊙ K_generated``: a learnable static kernel
per channel, plus a per-channel scale λ (initialised to 0) of a kernel produced per sample by
an external generator. With λ = 0 they compute exactly what a static block with kernel
``K_static`` computes, whatever the generator outputs. Parameter names (``dw_kernel``,
``lambda_dw``) and shapes follow the task-adaptive transformer reference, so its checkpoints
load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.models.layers.restormer import (
    GDFN,
    MDTA,
    LayerNormType,
    TransformerBlock,
    is_fast,
    pointwise_conv,
)

__all__ = [
    "dynamic_depthwise_conv2d",
    "modulated_kernel",
    "AdaptiveMDTA",
    "AdaptiveGDFN",
    "AdaptiveTransformerBlock",
]


def dynamic_depthwise_conv2d(x: Tensor, weight: Tensor, per_sample: bool = False) -> Tensor:
    """Depthwise 'same' convolution of each sample with its own kernels.

    Args:
        x: ``B x C x H x W``.
        weight: ``B x C x kh x kw`` or ``B x C x 1 x kh x kw`` (one kernel per sample and
            channel; the singleton axis is the reference's layout). A leading batch of 1 is
            broadcast to all samples.

    Odd kernel sizes only (zero padding ``k // 2`` keeps H x W). Cross-correlation, like
    ``F.conv2d``.

    ``per_sample=True`` (the fast path) runs one depthwise conv per sample instead of the
    ``B·C``-group conv: on channels-last input the ``(1, B·C, H, W)`` view does not exist without
    two layout copies, while each sample's slice is a channels-last tensor already.
    """
    b, c, h, w = x.shape
    if weight.dim() == 5:
        weight = weight.flatten(1, 2) if weight.shape[2] == 1 else weight
    if weight.dim() != 4 or weight.shape[1] != c:
        raise ValueError(f"weight must be B x {c} x kh x kw, got {tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {kh}x{kw}")
    if weight.shape[0] != b:
        if weight.shape[0] != 1:
            raise ValueError(f"weight batch {weight.shape[0]} does not match input batch {b}")
        weight = weight.expand(b, -1, -1, -1)
    pad = (kh // 2, kw // 2)
    if per_sample:
        if b == 1:
            return F.conv2d(x, weight.reshape(c, 1, kh, kw), padding=pad, groups=c)
        return torch.cat([F.conv2d(x[i:i + 1], weight[i].unsqueeze(1), padding=pad, groups=c)
                          for i in range(b)])
    # Samples become groups: group g = b*C + c sees only channel c of sample b and its kernel.
    y = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * c, 1, kh, kw),
                 padding=pad, groups=b * c)
    return y.view(b, c, h, w)


def modulated_kernel(static: Tensor, scale: Tensor, generated: Tensor) -> Tensor:
    """``static + scale ⊙ generated`` with shapes ``1xCx1x3x3``, ``1xCx1x1x1``, ``BxCx1x3x3``."""
    return static + scale * generated


class AdaptiveMDTA(MDTA):
    """MDTA whose qkv depthwise 3x3 is ``K_static + λ ⊙ K_generated`` per sample.

    ``K_static`` (``dw_kernel``, ``1 x 3C x 1 x 3 x 3``) starts from a standard normal (std 1,
    no fan scaling — the reference's choice); ``λ`` (``lambda_dw``) starts at 0. The attention
    core (:meth:`attend`) is inherited, so subclasses can still make it windowed.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False) -> None:
        super().__init__(dim, num_heads, bias)
        # The static kernel lives in ``dw_kernel`` instead of a conv module (reference layout).
        del self.qkv_dwconv
        self.dw_kernel = nn.Parameter(torch.randn(1, dim * 3, 1, 3, 3))
        self.lambda_dw = nn.Parameter(torch.zeros(1, dim * 3, 1, 1, 1))

    def apply_qkv_dwconv(  # type: ignore[override]
        self, x: Tensor, generated: Tensor | None = None
    ) -> Tensor:
        """Per-sample depthwise 3x3 on the 3C projection; ``generated`` is ``B x 3C x 1 x 3 x 3``.

        Without a generated kernel the block is static (``K_static`` only).
        """
        kernel = (self.dw_kernel if generated is None
                  else modulated_kernel(self.dw_kernel, self.lambda_dw, generated))
        return dynamic_depthwise_conv2d(x, kernel, per_sample=is_fast(self, "dynamic_conv"))

    def forward(self, x: Tensor, generated: Tensor | None = None) -> Tensor:  # type: ignore[override]
        fast = self.impl == "fast"
        qkv = self.apply_qkv_dwconv(pointwise_conv(self.qkv, x, fast), generated)
        q, k, v = qkv.chunk(3, dim=1)
        return pointwise_conv(self.project_out, self.attend(q, k, v), fast)


class AdaptiveGDFN(GDFN):
    """GDFN whose depthwise 3x3 is ``K_static + λ ⊙ K_generated`` per sample.

    ``K_static`` (``dw_kernel``, ``1 x 2h x 1 x 3 x 3``) starts Kaiming-normal (fan-out, ReLU
    gain) as in the reference; ``λ`` (``lambda_dw``) starts at 0.
    """

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__(dim, ffn_expansion_factor, bias)
        del self.dwconv
        channels = self.hidden_features * 2
        self.dw_kernel = nn.Parameter(torch.empty(1, channels, 1, 3, 3))
        nn.init.kaiming_normal_(self.dw_kernel, mode="fan_out", nonlinearity="relu")
        self.lambda_dw = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))

    def apply_dwconv(self, x: Tensor, generated: Tensor | None = None) -> Tensor:  # type: ignore[override]
        kernel = (self.dw_kernel if generated is None
                  else modulated_kernel(self.dw_kernel, self.lambda_dw, generated))
        return dynamic_depthwise_conv2d(x, kernel, per_sample=is_fast(self, "dynamic_conv"))

    def forward(self, x: Tensor, generated: Tensor | None = None) -> Tensor:  # type: ignore[override]
        fast = self.impl == "fast"
        x1, x2 = self.apply_dwconv(pointwise_conv(self.project_in, x, fast), generated).chunk(2, dim=1)
        return pointwise_conv(self.project_out, self.gate(x1, x2), fast)


class AdaptiveTransformerBlock(TransformerBlock):
    """Pre-norm Restormer block with adaptive depthwise kernels in attention and FFN.

    ``forward(x, attn_kernel, ffn_kernel)``; the kernels come from a generator shared by the
    blocks of a level (``B x 3C x 1 x 3 x 3`` and ``B x 2h x 1 x 3 x 3``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        attn_cls: type[AdaptiveMDTA] = AdaptiveMDTA,
    ) -> None:
        super().__init__(dim, num_heads, ffn_expansion_factor, bias, layernorm_type)
        # Same attribute names as the static block, so keys stay ``attn.*`` / ``ffn.*``.
        self.attn = attn_cls(dim, num_heads, bias)
        self.ffn = AdaptiveGDFN(dim, ffn_expansion_factor, bias)

    def forward(  # type: ignore[override]
        self, x: Tensor, attn_kernel: Tensor | None = None, ffn_kernel: Tensor | None = None
    ) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_kernel)
        return x + self.ffn(self.norm2(x), ffn_kernel)
