"""TAT: Task-Adaptive Transformer for all-in-one medical image restoration (MICCAI 2025).

A Restormer U-Net (4 levels, ``dim·2^l`` channels) whose latent, decoder and refinement blocks
are *task-adaptive*: the two depthwise 3x3 convolutions of every such block (on the attention's
3C qkv projection and on the feed-forward's 2h projection) use per-image kernels

    K = K_static + λ ⊙ K_generated(image),    λ per channel, initialised to 0,

where ``K_generated`` comes from a small kernel generator (the reference's "TREN") that reads
the *detached* input of the latent stage: PixelShuffle(4) → 3x3 conv → two residual blocks →
three 3x3 convs → global average pool → 2-layer MLP (256-d) → eight Linear+GELU heads, one
(attention, feed-forward) pair per level. All blocks of a level share that level's kernels; the
refinement stage reuses level 1's. The encoder (16 blocks at the default sizes) is a plain,
static Restormer encoder. The network is blind: it sees only the image (no task id).

After the refinement, a fusion head concatenates the encoder level-1 output (dim), the decoder
level-1 output (2·dim) and the refinement output (2·dim), maps 5·dim → dim (3x3 conv, GELU,
1x1 conv), then a 3x3 conv to the output channels; the input image is added (global residual).

:class:`TAT` subclasses :class:`~medrestore.models.archs.restormer.Restormer` (the shared U-Net
skeleton, as ``DATPRL`` does): Restormer registers the stages in the reference's order and
calls the hooks ``build_block`` (static or adaptive TLC blocks), ``build_head`` (``reduce_final``
then ``output``); ``tren`` is registered after ``super().__init__``, last, as in the reference.
Forward: Restormer's ``encode`` and ``decode_levels``, with ``run_stage`` handing each adaptive
stage its level's kernels.

Layer names, shapes and initialisation follow the authors' reference, so its state dicts load
with ``strict=True`` (key for key; see :mod:`medrestore.models.archs.tat_official`). The
default configuration has exactly 41,687,424 parameters.

Differences from the reference (none change eval-mode outputs at the sizes and batch size it
accepts):

* test-time local converter (:mod:`medrestore.models.layers.tlc`) for every attention layer,
  keyed on the level (training map ``train_size / 2^l``, window ``⌊1.5·train_size⌋ / 2^l``); the
  reference keys it on the head count, which equals ``2^l`` in its configuration. Any batch
  size works (the reference asserts batch 1); ``tlc="auto"`` applies it in eval mode only.
* any H, W (padding to a multiple of 8, then cropping back, as our Restormer);
* the generator is sized from ``dim`` and ``ffn_expansion_factor`` (the reference hard-codes
  48 and 2.66, so only its default size works);
* the global residual is skipped when input and output channel counts differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from medrestore.errors import ConfigError
from medrestore.models.archs.restormer import Restormer
# Re-exported: ``medrestore.models.pretrained`` looks the converter up on the arch's module.
from medrestore.models.archs.tat_official import convert_official_state_dict, to_official_state_dict
from medrestore.models.layers.dynamic import AdaptiveMDTA, AdaptiveTransformerBlock
from medrestore.models.layers.restormer import Impl, LayerNormType
from medrestore.models.layers.tlc import TLC, LocalMDTA, TLCAttentionMixin, TLCMode

__all__ = [
    "TAT",
    "KernelGenerator",
    "LevelKernels",
    "AdaptiveLocalMDTA",
    "tat",
    "tat_tiny",
    "convert_official_state_dict",
    "to_official_state_dict",
]

# Three 2x down-samplings (feature maps at H/8 in the latent).
_DOWNSCALE = 8
# Generator input: the latent (8·dim channels) through PixelShuffle(4) -> dim/2 channels.
_GEN_SHUFFLE = 4
# Generator heads in the reference's registration order (keeps the state-dict order).
_GEN_LEVELS = ("latent", "level3", "level2", "level1")


class LevelKernels(NamedTuple):
    """Generated depthwise kernels of one level: ``B x 3C x 1 x 3 x 3`` and ``B x 2h x 1 x 3 x 3``."""

    attn: Tensor
    ffn: Tensor


class AdaptiveLocalMDTA(TLCAttentionMixin, AdaptiveMDTA):
    """Adaptive-kernel MDTA with the test-time local converter (keys of :class:`AdaptiveMDTA`)."""


class _ResBlock(nn.Module):
    """``x + conv(GELU(conv(x)))`` with biased 3x3 convs (the generator's residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=True),
            nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


class KernelGenerator(nn.Module):
    """Per-image depthwise kernels for every adaptive level (the reference's TREN).

    Input: the latent-stage input ``B x 8·dim x H/8 x W/8``, detached (the generator never sends
    gradients into the encoder). PixelShuffle(4) trades channels for resolution
    (``dim/2`` channels at H/2 x W/2), a CNN trunk pools it to one ``4·width`` vector per image,
    a 2-layer MLP mixes it, and one Linear+GELU head per (level, branch) emits ``C·9`` numbers
    reshaped to ``B x C x 1 x 3 x 3``.

    Attribute names (``E``, ``mlp``, ``kernel_<level>_<ffn|attn>``) are the reference's, so the
    checkpoint keys match.

    Args:
        in_channels: channels after the pixel shuffle (``8·dim / 16``).
        level_channels: ``level -> (attention channels 3C, feed-forward channels 2h)`` for
            ``latent``, ``level3``, ``level2``, ``level1``.
        width: trunk width (64 in the reference; the embedding is ``4·width`` = 256).
        num_res_blocks: residual blocks in the trunk (2 in the reference).
    """

    def __init__(
        self,
        in_channels: int,
        level_channels: Mapping[str, tuple[int, int]],
        width: int = 64,
        num_res_blocks: int = 2,
    ) -> None:
        super().__init__()
        if set(level_channels) != set(_GEN_LEVELS):
            raise ValueError(f"level_channels must have the levels {_GEN_LEVELS}, "
                             f"got {sorted(level_channels)}")
        self.levels = _GEN_LEVELS
        embed = 4 * width
        # Sequential indices are part of the checkpoint keys (E.0, E.2.body.0, E.4, ...).
        self.E = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=True),
            nn.GELU(),
            *(_ResBlock(width) for _ in range(num_res_blocks)),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.GELU(),
            nn.Conv2d(width, width * 2, 3, padding=1, bias=False),
            nn.GELU(),
            nn.Conv2d(width * 2, embed, 3, padding=1, bias=False),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.mlp = nn.Sequential(
            nn.Linear(embed, embed, bias=False),
            nn.GELU(),
            nn.Linear(embed, embed, bias=False),
            nn.GELU(),
        )
        self.pixel_shuffle = nn.PixelShuffle(_GEN_SHUFFLE)
        for level in _GEN_LEVELS:
            attn_ch, ffn_ch = level_channels[level]
            self.add_module(f"kernel_{level}_ffn", self._head(embed, ffn_ch))
            self.add_module(f"kernel_{level}_attn", self._head(embed, attn_ch))

    @staticmethod
    def _head(embed: int, channels: int) -> nn.Sequential:
        # GELU on a kernel is odd but it is what the reference trains; λ absorbs the scale.
        return nn.Sequential(nn.Linear(embed, channels * 9, bias=False), nn.GELU())

    def embed(self, latent_input: Tensor) -> Tensor:
        """The ``B x 4·width`` task representation of each image."""
        x = self.pixel_shuffle(latent_input.detach())
        return self.mlp(self.E(x).flatten(1))

    def forward(self, latent_input: Tensor) -> dict[str, LevelKernels]:
        feat = self.embed(latent_input)
        b = feat.shape[0]

        def head(name: str) -> Tensor:
            return getattr(self, name)(feat).view(b, -1, 1, 3, 3)

        return {lv: LevelKernels(head(f"kernel_{lv}_attn"), head(f"kernel_{lv}_ffn"))
                for lv in self.levels}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


class TAT(Restormer):
    """Task-Adaptive Transformer image-to-image network.

    Built on the :class:`Restormer` skeleton (same stages, names and registration order); it
    overrides the hooks :meth:`build_block` (static TLC blocks in the encoder, adaptive ones
    elsewhere), :meth:`build_head` (the ``reduce_final`` fusion head before ``output``),
    :meth:`run_stage` (adaptive stages get their level's kernels), :meth:`head` and
    :meth:`forward_padded`, and registers the kernel generator ``tren`` last.

    Args:
        in_channels, out_channels: image channels (1 for the medical tasks; 3 for RGB mixes).
        dim: channels at level 1 (level l has ``dim·2^l``); must be even (generator input).
        num_blocks: blocks per level 1-4 (encoder and decoder levels 1-3, latent = level 4).
        num_refinement_blocks: adaptive blocks of the full-resolution refinement stage.
        heads: attention heads per level.
        ffn_expansion_factor: GDFN hidden width multiplier (``int`` truncation).
        bias: bias in the blocks' and heads' convolutions.
        layernorm_type: ``"WithBias"`` or ``"BiasFree"``.
        train_size: training patch size (int or (h, w)); the attention at level l falls back
            to TLC windows when its map differs from ``train_size / 2^l``.
        tlc: ``"auto"`` (eval mode only), ``True`` (also in training) or ``False`` (never).
        tlc_window_scale: window = ``int(scale · train_size) // 2^l`` (1.5 in the reference).
        generator_width: kernel-generator trunk width (64; embedding ``4·width``).
        generator_res_blocks: residual blocks in the generator trunk (2).
        global_residual: add the input image to the output (when channel counts match).
        pad_multiple: pad inputs to this multiple of 8 and crop back; ``0``/``None`` disables.
        zero_init_output: start the output conv at zero (an untrained net returns its input);
            an initialisation choice, off by default as in the reference.
        impl: ``"reference"`` (the authors' ops, bit-identical) or ``"fast"`` (channels-last,
            fused layers, per-sample channels-last dynamic convs; equal up to rounding).
        checkpoint_blocks: activation checkpointing around every transformer block (training).
    """

    #: adaptive stage -> generator level whose kernels it uses
    ADAPTIVE_STAGES: dict[str, str] = {
        "latent": "latent",
        "decoder_level3": "level3",
        "decoder_level2": "level2",
        "decoder_level1": "level1",
        "refinement": "level1",
    }
    #: stage -> resolution level (0 = full resolution)
    STAGE_LEVEL: dict[str, int] = {
        "encoder_level1": 0, "encoder_level2": 1, "encoder_level3": 2, "latent": 3,
        "decoder_level3": 2, "decoder_level2": 1, "decoder_level1": 0, "refinement": 0,
    }

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        train_size: int | Sequence[int] = 128,
        tlc: TLCMode = "auto",
        tlc_window_scale: float = 1.5,
        generator_width: int = 64,
        generator_res_blocks: int = 2,
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        if dim % 2:
            raise ConfigError(f"model.net.dim={dim}; expected an even number (the kernel "
                              "generator pixel-shuffles the 8·dim latent by 4)")
        _check_tlc(tlc)
        # Read by build_block during Restormer.__init__, so set first.
        self.train_size = _pair(train_size)
        if min(self.train_size) < _DOWNSCALE:
            raise ConfigError(f"model.net.train_size={train_size}; expected at least "
                              f"{_DOWNSCALE} (pixels per side)")
        self.tlc_window_scale = tlc_window_scale
        self._tlc_mode: TLCMode = tlc
        # Registers patch_embed ... refinement, then build_head: reduce_final, output.
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            num_blocks=num_blocks,
            num_refinement_blocks=num_refinement_blocks,
            heads=heads,
            ffn_expansion_factor=ffn_expansion_factor,
            bias=bias,
            layernorm_type=layernorm_type,
            dual_pixel_task=False,
            global_residual=global_residual,
            pad_multiple=pad_multiple,
            zero_init_output=zero_init_output,
            impl=impl,
            checkpoint_blocks=checkpoint_blocks,
        )

        def branch_channels(c: int) -> tuple[int, int]:
            return 3 * c, 2 * int(c * ffn_expansion_factor)

        d2, d3, d4 = dim * 2, dim * 4, dim * 8
        # Registered last, as in the reference (keeps the state-dict order).
        self.tren = KernelGenerator(
            in_channels=d4 // _GEN_SHUFFLE**2,
            level_channels={"latent": branch_channels(d4), "level3": branch_channels(d3),
                            "level2": branch_channels(d2), "level1": branch_channels(d2)},
            width=generator_width,
            num_res_blocks=generator_res_blocks,
        )
        self.set_impl(impl)

    # ------------------------------------------------------------------ construction hooks
    def tlc_for_level(self, level: int) -> TLC:
        """TLC settings of the attention layers at resolution level ``level``."""
        s = 2**level
        th, tw = self.train_size
        train_hw = (max(th // s, 1), max(tw // s, 1))
        window = (max(int(self.tlc_window_scale * th) // s, 1),
                  max(int(self.tlc_window_scale * tw) // s, 1))
        return TLC(train_hw=train_hw, window=window, mode=self._tlc_mode)

    def build_block(self, stage: str, dim: int, num_heads: int) -> nn.Module:
        """A static (encoder) or adaptive (latent/decoder/refinement) block with TLC attention."""
        common = dict(dim=dim, num_heads=num_heads, ffn_expansion_factor=self.ffn_expansion_factor,
                      bias=self.use_bias, layernorm_type=self.layernorm_type)
        if stage in self.ADAPTIVE_STAGES:
            block: nn.Module = AdaptiveTransformerBlock(
                **common, attn_cls=AdaptiveLocalMDTA)  # type: ignore[arg-type]
        else:
            block = super().build_block(stage, dim, num_heads)
            block.attn = LocalMDTA(dim, num_heads, self.use_bias)
        block.attn.tlc = self.tlc_for_level(self.STAGE_LEVEL[stage])  # type: ignore[union-attr]
        return block

    def build_head(self, channels: int) -> None:
        """Fusion head ``reduce_final`` ([enc1 dim, dec1 2·dim, refinement 2·dim] -> dim), then
        ``output`` (dim -> out_channels). No dual-pixel ``skip_conv``."""
        dim = self.dim
        self.reduce_final = nn.Sequential(
            nn.Conv2d(dim + 2 * channels, dim, kernel_size=3, stride=1, padding=1,
                      bias=self.use_bias),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=1, bias=self.use_bias),
        )
        self.output = nn.Conv2d(dim, self.out_channels, kernel_size=3, stride=1, padding=1,
                                bias=self.use_bias)

    # ------------------------------------------------------------------ TLC switch
    @property
    def tlc(self) -> TLCMode:
        return self._tlc_mode

    def set_tlc(self, mode: TLCMode) -> None:
        """Switch the test-time local converter of every attention layer (see ``tlc``)."""
        _check_tlc(mode)
        self._tlc_mode = mode
        for m in self.modules():
            if isinstance(m, TLCAttentionMixin) and m.tlc is not None:
                m.tlc = dataclasses.replace(m.tlc, mode=mode)

    # ------------------------------------------------------------------ forward pieces
    def run_stage(self, stage: str, x: Tensor,
                  cond: Mapping[str, LevelKernels] | None = None) -> Tensor:
        """Apply the blocks of ``stage``; adaptive stages take their level's kernels from
        ``cond`` (the output of :meth:`generate_kernels`)."""
        blocks: nn.Sequential = getattr(self, stage)
        if stage not in self.ADAPTIVE_STAGES:
            return super().run_stage(stage, x)
        if cond is None:
            raise ValueError(f"stage {stage!r} is adaptive and needs generated kernels")
        kernels = cond[self.ADAPTIVE_STAGES[stage]]
        for block in blocks:
            x = self.call_block(block, x, kernels.attn, kernels.ffn)
        return x

    def generate_kernels(self, latent_input: Tensor) -> dict[str, LevelKernels]:
        """Per-image kernels of every adaptive level, from the detached latent input."""
        return self.tren(latent_input)

    def head(self, features: Tensor, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """``features`` = concat[enc1, dec1, refinement]: fusion, output conv, global residual."""
        return super().head(self.reduce_final(features), x, skips)

    def forward_padded(self, x: Tensor) -> Tensor:
        """The reference network proper; H and W must be multiples of 8."""
        skips, latent_input = self.encode(x)
        kernels = self.generate_kernels(latent_input)
        latent = self.run_stage("latent", latent_input, kernels)
        dec1 = self.decode_levels(latent, skips, kernels)
        refined = self.run_stage("refinement", dec1, kernels)
        return self.head(torch.cat([skips[1], dec1, refined], dim=1), x, skips)


def _check_tlc(mode: Any) -> None:
    if mode not in (True, False, "auto"):
        raise ConfigError(f"model.net.tlc={mode!r}; expected true, false or 'auto'")


# The reference's constructor spells two arguments differently; accept both spellings.
_ALIASES = {"inp_channels": "in_channels", "LayerNorm_type": "layernorm_type"}


def _canonical(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for alias, name in _ALIASES.items():
        if alias in out:
            if name in out:
                raise ConfigError(f"model.net.{alias}={out[alias]!r} and model.net.{name}="
                                  f"{out[name]!r}; expected only one of them ({alias} is the "
                                  "reference's spelling)")
            out[name] = out.pop(alias)
    return out


def tat(**kwargs: Any) -> TAT:
    """TAT at the reference sizes (dim 48, blocks 4/6/6/8 + 4, heads 1/2/4/8; 41.69 M params)."""
    return TAT(**_canonical(kwargs))


def tat_tiny(**kwargs: Any) -> TAT:
    """A very small TAT for tests and CPU smoke runs (same code paths); kwargs override."""
    cfg: dict[str, Any] = dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 1, 2, 2),
        ffn_expansion_factor=2.0,
        train_size=64,
        generator_width=8,
    )
    cfg.update(_canonical(kwargs))
    return TAT(**cfg)
