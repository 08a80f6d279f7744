"""Restormer (CVPR 2022): 4-level U-shaped transformer for restoration.

Structure and parameter names follow the authors' reference implementation, so its
checkpoints load into :class:`Restormer` with ``strict=True``.

Differences from the reference (none change the maths at sizes it accepts):

* any H, W: the input is padded on the right/bottom to a multiple of ``pad_multiple``
  (reflect, or replicate when the image is too small to reflect) and the output cropped
  back. Sizes that are already multiples pass through untouched.
* the global residual is only added when ``in_channels == out_channels`` (the reference adds
  it unconditionally, which silently broadcasts or fails otherwise), and can be switched off.

Two run options change speed and memory, never parameters, keys or (beyond float rounding)
outputs: ``impl`` (``"reference"``: the authors' op sequence bit for bit; ``"fast"``:
channels-last activations and fused layers, see :mod:`medrestore.models.layers.restormer`) and
``checkpoint_blocks`` (activation checkpointing around every transformer block in training:
activations inside a block are recomputed in the backward pass instead of stored).

This class is also the shared U-Net skeleton of the families built on it (``TAT``, ``DATPRL``):
a subclass keeps the module names, registration order and hence the state-dict layout, and
overrides only hooks.

* construction: :meth:`build_block` (block type per stage), :meth:`make_stage` (a stage's
  container/depth), :meth:`build_head` (the modules after the refinement stage);
* forward: :meth:`run_stage` (how a stage's blocks are applied; receives an optional
  conditioning ``cond`` that :meth:`decode_levels` / :meth:`decode` pass through unchanged),
  :meth:`encode`, :meth:`decode_levels`, :meth:`decode`, :meth:`head`, :meth:`forward_padded`.

A subclass sets the attributes its hooks read *before* calling ``super().__init__`` (hooks
run inside it) and registers any extra modules after it (they then follow ``output`` in the
state dict).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medrestore.errors import ConfigError
from medrestore.models.layers.restormer import (
    Downsample,
    Impl,
    LayerNormType,
    OverlapPatchEmbed,
    TransformerBlock,
    Upsample,
    check_impl,
    set_impl,
    to_channels_last,
)

__all__ = ["Restormer", "check_backbone_config", "restormer", "restormer_tiny", "pad_to_multiple"]

# Three 2x down-samplings: the core network needs H, W divisible by 2**3.
_DOWNSCALE = 8


def check_backbone_config(dim: int, num_blocks: Sequence[int], heads: Sequence[int],
                          layernorm_type: str, pad_multiple: int | None) -> None:
    """Reject backbone settings that cannot build, naming the config option (``model.net.*``)."""
    for name, value in (("num_blocks", num_blocks), ("heads", heads)):
        sized = hasattr(value, "__len__") and not isinstance(value, str)
        if not sized or len(value) != 4:
            shown = list(value) if sized else value
            raise ConfigError(f"model.net.{name}={shown!r}; expected 4 entries (levels 1-4)")
    if layernorm_type not in ("WithBias", "BiasFree"):
        raise ConfigError(f"model.net.layernorm_type={layernorm_type!r}; expected 'WithBias' or "
                          "'BiasFree'")
    for level, h in enumerate(heads, start=1):
        channels = dim * 2 ** (level - 1)
        if h < 1 or channels % h:
            raise ConfigError(f"model.net.heads={list(heads)}; expected level {level}'s heads "
                              f"({h}) to divide its {channels} channels (model.net.dim={dim})")
    if pad_multiple and pad_multiple % _DOWNSCALE:
        raise ConfigError(f"model.net.pad_multiple={pad_multiple}; expected a multiple of "
                          f"{_DOWNSCALE} (or 0/null for no padding)")


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``x`` (… x H x W) on the right/bottom so H and W are multiples of ``multiple``.

    Reflect padding avoids the artificial edge a zero pad would feed the convolutions; it
    needs the pad to be smaller than the image, so tiny images fall back to replicate.
    Returns the padded tensor and the original (H, W) for cropping.
    """
    h, w = x.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


class Restormer(nn.Module):
    """Restormer image-to-image network.

    Args:
        in_channels: input image channels.
        out_channels: output image channels.
        dim: channels at level 1; level k has ``dim * 2**(k-1)``.
        num_blocks: transformer blocks per level (levels 1-3 are used by both encoder and
            decoder, level 4 is the latent).
        num_refinement_blocks: blocks in the full-resolution refinement stage.
        heads: attention heads per level.
        ffn_expansion_factor: GDFN hidden width multiplier.
        bias: bias in the blocks' convolutions and the 1x1 reduce/output convs.
        layernorm_type: ``"WithBias"`` or ``"BiasFree"``.
        dual_pixel_task: reference option for dual-pixel defocus deblurring (in_channels=6):
            adds a 1x1 ``skip_conv`` from the embedding and drops the image residual.
        global_residual: add the input image to the output (only when channel counts match).
        pad_multiple: pad inputs to this multiple (must be a multiple of 8); ``0``/``None``
            disables padding, and then H, W must already be multiples of 8.
        zero_init_output: start the output conv at zero, so an untrained network with the
            global residual returns its input (short CPU runs then only learn corrections).
            An initialisation choice, off by default (the reference uses PyTorch's default
            init); layers, parameters and outputs for given weights are unchanged.
        impl: ``"reference"`` (the authors' ops, bit-identical outputs) or ``"fast"``
            (channels-last, fused; equal up to float rounding). Switchable later with
            :meth:`set_impl`.
        checkpoint_blocks: recompute each transformer block's activations in the backward pass
            (``torch.utils.checkpoint``) instead of storing them; training only, same gradients.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        dual_pixel_task: bool = False,
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        check_backbone_config(dim, num_blocks, heads, layernorm_type, pad_multiple)
        check_impl(impl)
        if not isinstance(checkpoint_blocks, bool):
            raise ConfigError(f"model.net.checkpoint_blocks={checkpoint_blocks!r}; expected "
                              "true or false")
        self.checkpoint_blocks = checkpoint_blocks
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim = dim
        self.num_blocks = tuple(int(n) for n in num_blocks)
        self.heads = tuple(int(h) for h in heads)
        self.ffn_expansion_factor = ffn_expansion_factor
        self.use_bias = bias
        self.layernorm_type: LayerNormType = layernorm_type
        self.dual_pixel_task = dual_pixel_task
        self.pad_multiple = pad_multiple or 0
        # Dual-pixel mode never had an image residual in the reference.
        self.use_residual = global_residual and not dual_pixel_task and in_channels == out_channels

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        h1, h2, h3, h4 = self.heads
        n1, n2, n3, n4 = self.num_blocks

        # The embedding conv is bias-free whatever ``bias`` says (as the reference).
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, bias=False)

        self.encoder_level1 = self.make_stage("encoder_level1", d1, h1, n1)
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = self.make_stage("encoder_level2", d2, h2, n2)
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = self.make_stage("encoder_level3", d3, h3, n3)
        self.down3_4 = Downsample(d3)
        self.latent = self.make_stage("latent", d4, h4, n4)

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = self.make_stage("decoder_level3", d3, h3, n3)
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = self.make_stage("decoder_level2", d2, h2, n2)
        # Level 1 keeps the concatenated 2*dim channels (no 1x1 reduction), so the decoder,
        # refinement and output all work at 2*dim with level-1 heads.
        self.up2_1 = Upsample(d2)
        self.decoder_level1 = self.make_stage("decoder_level1", d2, h1, n1)
        self.refinement = self.make_stage("refinement", d2, h1, num_refinement_blocks)

        self.build_head(d2)  # registers ``output`` (and ``skip_conv`` / a subclass's extras)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            if self.output.bias is not None:
                nn.init.zeros_(self.output.bias)
        self.set_impl(impl)

    # ------------------------------------------------------------------ run options
    def set_impl(self, impl: Impl) -> None:
        """Select the implementation of every block (``"reference"`` or ``"fast"``).

        A subclass that registers switchable modules after ``super().__init__`` calls this
        again at the end of its own ``__init__``."""
        set_impl(self, impl)
        self.impl = impl

    def call_block(self, block: nn.Module, x: Tensor, *args: Any) -> Tensor:
        """``block(x, *args)``, checkpointed when ``checkpoint_blocks`` is on and a graph is
        being recorded (non-reentrant, so kernels/prompts in ``args`` get their gradients and
        the RNG state of dropout is replayed)."""
        if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, *args, use_reentrant=False)
        return block(x, *args)

    # ------------------------------------------------------------------ construction hooks
    def build_block(self, stage: str, dim: int, num_heads: int) -> nn.Module:
        """One transformer block of ``stage``; override to substitute a block subclass.

        Called from ``__init__``, so a subclass must set any attributes it reads here
        before calling ``super().__init__``.
        """
        return TransformerBlock(
            dim=dim,
            num_heads=num_heads,
            ffn_expansion_factor=self.ffn_expansion_factor,
            bias=self.use_bias,
            layernorm_type=self.layernorm_type,
        )

    def make_stage(self, stage: str, dim: int, num_heads: int, depth: int) -> nn.Sequential:
        """A stage is an ``nn.Sequential`` of blocks (keeps reference keys ``<stage>.<i>.*``)."""
        return nn.Sequential(*(self.build_block(stage, dim, num_heads) for _ in range(depth)))

    def build_head(self, channels: int) -> None:
        """Register the modules that follow the refinement stage (``channels`` = 2·dim wide).

        Restormer: the dual-pixel ``skip_conv`` (when enabled) and the 3x3 ``output`` conv. An
        override must register ``output`` (``zero_init_output`` zeroes it afterwards) and sets
        the state-dict order of everything between ``refinement`` and ``output``.
        """
        if self.dual_pixel_task:
            self.skip_conv = nn.Conv2d(self.dim, channels, kernel_size=1, bias=self.use_bias)
        self.output = nn.Conv2d(channels, self.out_channels, kernel_size=3, stride=1, padding=1,
                                bias=self.use_bias)

    # ------------------------------------------------------------------ forward pieces
    def run_stage(self, stage: str, x: Tensor, cond: Any = None) -> Tensor:
        """Apply the blocks of ``stage`` (attribute name).

        ``cond`` is a subclass's conditioning (generated kernels, prompts, ...), passed through
        unchanged by :meth:`decode_levels` / :meth:`decode`; plain Restormer has none.
        """
        for block in getattr(self, stage):
            x = self.call_block(block, x)
        return x

    def encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Embed and run encoder levels 1-3.

        Returns ``([embedding, enc1, enc2, enc3], latent_input)`` where ``latent_input`` is
        the down-sampled level-3 output that feeds the latent stage.
        """
        # The fast path switches to channels-last once; convs, norms, shuffles and cats keep it.
        # The embedding's output is converted too: a 1-channel input is NCHW and channels-last
        # at once, and the convolution then returns NCHW.
        emb = self.patch_embed(to_channels_last(x) if self.impl == "fast" else x)
        if self.impl == "fast":
            emb = to_channels_last(emb)
        enc1 = self.run_stage("encoder_level1", emb)
        enc2 = self.run_stage("encoder_level2", self.down1_2(enc1))
        enc3 = self.run_stage("encoder_level3", self.down2_3(enc2))
        return [emb, enc1, enc2, enc3], self.down3_4(enc3)

    def decode_levels(self, latent: Tensor, skips: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Decoder levels 3-1 (no refinement); returns the full-resolution 2*dim features."""
        _, enc1, enc2, enc3 = skips
        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], dim=1))
        x = self.run_stage("decoder_level3", x, cond)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], dim=1))
        x = self.run_stage("decoder_level2", x, cond)
        x = torch.cat([self.up2_1(x), enc1], dim=1)
        return self.run_stage("decoder_level1", x, cond)

    def decode(self, latent: Tensor, skips: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Decoder levels 3-1 plus refinement; returns full-resolution 2*dim features."""
        return self.run_stage("refinement", self.decode_levels(latent, skips, cond), cond)

    def head(self, features: Tensor, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """Output conv plus the dual-pixel skip or the global image residual."""
        if self.dual_pixel_task:
            return self.output(features + self.skip_conv(skips[0]))
        out = self.output(features)
        return out + x if self.use_residual else out

    def forward_padded(self, x: Tensor) -> Tensor:
        """The reference network proper; H and W must be multiples of 8."""
        skips, latent_in = self.encode(x)
        latent = self.run_stage("latent", latent_in)
        return self.head(self.decode(latent, skips), x, skips)

    def forward(self, x: Tensor) -> Tensor:
        if not self.pad_multiple:
            return self.finish(self.forward_padded(x))
        x_p, (h, w) = pad_to_multiple(x, self.pad_multiple)
        out = self.forward_padded(x_p)
        return self.finish(out if out.shape[-2:] == (h, w) else out[..., :h, :w])

    def finish(self, out: Tensor) -> Tensor:
        """The output in the caller's (contiguous) layout; a no-op on the reference path."""
        return out.contiguous() if self.impl == "fast" else out


def restormer(**kwargs: Any) -> Restormer:
    """Restormer with the paper's defaults (dim 48, blocks 4/6/6/8, 4 refinement blocks)."""
    return Restormer(**kwargs)


def restormer_tiny(**kwargs: Any) -> Restormer:
    """A very small Restormer for tests and smoke runs (fast on CPU); kwargs override."""
    cfg: dict[str, Any] = dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 1, 2, 2),
        ffn_expansion_factor=2.0,
    )
    cfg.update(kwargs)
    return Restormer(**cfg)
