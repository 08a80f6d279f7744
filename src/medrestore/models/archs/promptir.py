"""PromptIR (NeurIPS 2023): prompting a Restormer for all-in-one blind image restoration.

The network is a Restormer U-Net whose decoder is conditioned, at three levels, on *prompts*
generated from the features themselves (no task label, no degradation prior):

* :class:`PromptGenBlock` ("prompt generation"): a learnable bank of ``prompt_len`` (5) prompts
  of ``C_p x S x S`` each; the feature map is average-pooled, a Linear layer and a softmax turn
  it into 5 weights **per sample**, the weighted sum of the bank is resized bilinearly to the
  feature size (``align_corners=False``) and passed through a bias-free 3x3 conv.
* "prompt interaction": features ‖ prompt (channel concat) → one Restormer transformer block at
  that width (``heads[2]`` heads at every level) → a 1x1 conv back to the width the next stage
  expects.

Where (default widths at ``dim`` 48 in brackets):

* after the latent stage: ``prompt3`` (C_p 320, S 16) → ``noise_level3`` at 8·dim + C_p3 [704]
  → ``reduce_noise_level3`` to 4·dim [192]; hence ``up4_3`` up-samples 4·dim (not Restormer's
  8·dim) to 2·dim, and ``reduce_chan_level3`` maps 2·dim + 4·dim → 4·dim [288 → 192];
* after ``decoder_level3``: ``prompt2`` (128, 32) → ``noise_level2`` at 4·dim + C_p2 [320]
  → ``reduce_noise_level2`` to 4·dim;
* after ``decoder_level2``: ``prompt1`` (64, 64) → ``noise_level1`` at 2·dim + C_p1 [160]
  → ``reduce_noise_level1`` to 2·dim.

The rest (encoder, decoder stages, refinement, 3x3 output plus the input image) is Restormer's,
so :class:`PromptIR` subclasses :class:`~medrestore.models.archs.restormer.Restormer`: the
interaction blocks are built by the same ``build_block`` hook and follow the ``impl``
(reference | fast) switch and ``checkpoint_blocks`` like every other block.

Fidelity: the default configuration is the released one (the authors' ``PromptIR(decoder=True)``):
35,592,263 parameters, 548 state-dict entries with the authors' names, shapes and order, so
the released Lightning checkpoint (``state_dict`` with ``net.`` keys) loads strictly. With
``impl="reference"`` the op sequence, prompt resize included, is the authors'.

Departures (none changes outputs at the sizes the authors' class accepts):

* **unused modules.** The authors' class builds six 1x1 convs that its forward never calls
  (``chnl_reduce1/2/3``, ``reduce_noise_channel_1/2/3``; 215,296 parameters at the defaults,
  so 35,376,967 are used). Every released checkpoint holds them, so they are kept by default
  (``unused_convs=True``) but frozen (``requires_grad=False``): they never get a gradient in
  the authors' training either (AdamW skips parameters without one), and frozen they need no
  ``find_unused_parameters`` under DDP. ``unused_convs=False`` drops them (released weights
  then need a key filter).
* **any width.** The authors hard-code the prompt/interaction widths for ``dim`` 48 (other
  widths crash). Here they follow ``dim`` and ``prompt_dims`` as listed above (reconstructed
  generalisation; at ``dim`` 48 with the default prompt dims it gives the authors' numbers).
  The unused convs follow the prompt dims too (``chnl_reduce3``: C_p3 → 2·C_p2,
  ``reduce_noise_channel_k``: level width + (C_p1, C_p2, 2·C_p2) → level width), which again
  gives the authors' shapes at the defaults.
* **decoder.** The authors' class defaults to ``decoder=False``, which crashes (channel
  mismatch at ``up4_3``); only the prompted design (``decoder=True``, the one trained and
  released) is offered. Without prompts the network is plain Restormer: ``model=restormer``.
* any H, W (padding to a multiple of 8 and cropping back, as our Restormer); the global
  residual only when input and output channel counts match; configurable in/out channels.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError
from medrestore.models.archs.restormer import Restormer
from medrestore.models.layers.restormer import (
    Impl,
    ImplSwitch,
    LayerNormType,
    Upsample,
    pointwise_conv,
    to_channels_last,
)

__all__ = ["PromptIR", "PromptGenBlock", "UNUSED_MODULES", "promptir", "promptir_tiny"]

#: Modules the authors' class builds but never calls; kept (frozen) so checkpoints load
#: strictly.
UNUSED_MODULES = ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
                  "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3")

# The authors' registration order of the top-level modules (sets the state-dict order, so a
# key list compares equal to theirs, not just the key set).
_OFFICIAL_ORDER = (
    "patch_embed", "prompt1", "prompt2", "prompt3", "chnl_reduce1", "chnl_reduce2",
    "chnl_reduce3", "reduce_noise_channel_1", "encoder_level1", "down1_2",
    "reduce_noise_channel_2", "encoder_level2", "down2_3", "reduce_noise_channel_3",
    "encoder_level3", "down3_4", "latent", "up4_3", "reduce_chan_level3", "noise_level3",
    "reduce_noise_level3", "decoder_level3", "up3_2", "reduce_chan_level2", "noise_level2",
    "reduce_noise_level2", "decoder_level2", "up2_1", "noise_level1", "reduce_noise_level1",
    "decoder_level1", "refinement", "output",
)


class PromptGenBlock(ImplSwitch, nn.Module):
    """Prompt generation: a per-sample soft mix of ``prompt_len`` learned prompts.

    ``x`` (B x lin_dim x H x W) → global average pool → Linear(lin_dim → prompt_len) → softmax
    over the prompts (one weight vector per sample, so a sample's prompt never depends on the
    rest of its batch) → weighted sum of the bank (B x prompt_dim x S x S) → bilinear resize to
    H x W (``align_corners=False``) → bias-free 3x3 conv.

    The bank is initialised uniform in [0, 1), as the authors. Attribute names
    (``prompt_param``, ``linear_layer``, ``conv3x3``) and the bank's 5-D shape
    (1 x prompt_len x prompt_dim x S x S) are theirs, so checkpoints load unchanged.

    ``impl="fast"`` mixes the bank with one matrix product, skips the resize when the size
    already matches (an exact identity for bilinear at scale 1) and returns channels-last.
    """

    def __init__(self, prompt_dim: int, prompt_len: int, prompt_size: int, lin_dim: int) -> None:
        super().__init__()
        self.prompt_param = nn.Parameter(
            torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, stride=1, padding=1,
                                 bias=False)

    def prompt_weights(self, x: Tensor) -> Tensor:
        """The B x prompt_len softmax weights of each sample's prompt mix."""
        return F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        weights = self.prompt_weights(x)
        bank = self.prompt_param
        if self.impl == "fast":
            _, n, c, s1, s2 = bank.shape
            prompt = (weights @ bank.reshape(n, c * s1 * s2)).view(b, c, s1, s2)
            if (s1, s2) != (h, w):
                prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)
            return self.conv3x3(to_channels_last(prompt))
        # Reference: broadcast product over the full B x N x C x S x S tensor, summed over the
        # prompts, then the resize unconditionally: the authors' op sequence.
        prompt = (weights[:, :, None, None, None] * bank).sum(dim=1)
        prompt = F.interpolate(prompt, (h, w), mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    sized = hasattr(value, "__len__") and not isinstance(value, str)
    if not sized or len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int)
                                            or v < 1 for v in value):
        shown = list(value) if sized else value
        raise ConfigError(f"model.net.{name}={shown!r}; expected 3 positive integers "
                          "(levels 1, 2, 3)")
    return int(value[0]), int(value[1]), int(value[2])


class PromptIR(Restormer):
    """PromptIR restoration network (the authors' ``PromptIR(decoder=True)``).

    Args (backbone; as :class:`Restormer`): ``in_channels``, ``out_channels``, ``dim``,
    ``num_blocks`` (encoder levels 1-3 and latent; the decoder mirrors the encoder),
    ``num_refinement_blocks``, ``heads``, ``ffn_expansion_factor``, ``bias`` (the 1x1 convs),
    ``layernorm_type``.

    Args (prompts):
        prompt_dims: prompt channels C_p at levels 1, 2, 3 (``prompt1/2/3``; 64, 128, 320).
        prompt_sizes: prompt side S at levels 1, 2, 3 (64, 32, 16 = the feature sizes of the
            authors' 128² training patches; other sizes are resized bilinearly).
        prompt_len: prompts per bank (5).
        unused_convs: keep the six 1x1 convs the authors build but never use (frozen; default
            ``True`` so released checkpoints load strictly). See the module docstring.
        decoder: the authors' switch; only ``True`` (prompted decoder) is supported.

    Args (run options, as :class:`Restormer`): ``global_residual``, ``pad_multiple``,
    ``zero_init_output``, ``impl`` (``"reference"`` | ``"fast"``), ``checkpoint_blocks``.

    The interaction blocks use ``heads[2]`` heads at every level, as the authors.
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
        prompt_dims: Sequence[int] = (64, 128, 320),
        prompt_sizes: Sequence[int] = (64, 32, 16),
        prompt_len: int = 5,
        unused_convs: bool = True,
        decoder: bool = True,
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        if decoder is not True:
            raise ConfigError(f"model.net.decoder={decoder!r}; only true (the prompted decoder, "
                              "the released design) is supported: the authors' decoder=False "
                              "crashes, and a prompt-free network is model=restormer")
        c1, c2, c3 = _triple(prompt_dims, "prompt_dims")
        s1, s2, s3 = _triple(prompt_sizes, "prompt_sizes")
        if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 1:
            raise ConfigError(f"model.net.prompt_len={prompt_len!r}; expected an integer >= 1")
        if not isinstance(unused_convs, bool):
            raise ConfigError(f"model.net.unused_convs={unused_convs!r}; expected true or false")
        heads_t = tuple(heads) if hasattr(heads, "__len__") else heads
        if isinstance(heads_t, tuple) and len(heads_t) == 4 and int(heads_t[2]) >= 1:
            ih = int(heads_t[2])
            for level, width in ((1, 2 * dim + c1), (2, 4 * dim + c2), (3, 8 * dim + c3)):
                if width % ih:
                    raise ConfigError(
                        f"model.net.prompt_dims={[c1, c2, c3]}; the level-{level} interaction "
                        f"width {width} (level features + prompt) must be divisible by "
                        f"heads[2]={ih} (model.net.dim={dim})")
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
        self.prompt_dims = (c1, c2, c3)
        self.prompt_sizes = (s1, s2, s3)
        self.prompt_len = prompt_len
        self.unused_convs = unused_convs
        self.num_refinement_blocks = num_refinement_blocks
        d1, d2, d3, d4 = dim, 2 * dim, 4 * dim, 8 * dim
        ih = self.heads[2]

        # The latent leaves the interaction at 4·dim, so the first up-sampling and 1x1 differ
        # from Restormer's (re-assigned in place: the registration order is kept).
        self.up4_3 = Upsample(d3)
        self.reduce_chan_level3 = nn.Conv2d(d2 + d3, d3, kernel_size=1, bias=bias)

        self.prompt1 = PromptGenBlock(c1, prompt_len, s1, lin_dim=d2)
        self.prompt2 = PromptGenBlock(c2, prompt_len, s2, lin_dim=d3)
        self.prompt3 = PromptGenBlock(c3, prompt_len, s3, lin_dim=d4)
        self.noise_level3 = self.build_block("noise_level3", d4 + c3, ih)
        self.reduce_noise_level3 = nn.Conv2d(d4 + c3, d3, kernel_size=1, bias=bias)
        self.noise_level2 = self.build_block("noise_level2", d3 + c2, ih)
        self.reduce_noise_level2 = nn.Conv2d(d3 + c2, d3, kernel_size=1, bias=bias)
        self.noise_level1 = self.build_block("noise_level1", d2 + c1, ih)
        self.reduce_noise_level1 = nn.Conv2d(d2 + c1, d2, kernel_size=1, bias=bias)

        if unused_convs:
            # Never called (see the module docstring): present only for strict loading.
            unused = {
                "chnl_reduce1": (c1, c1),
                "chnl_reduce2": (c2, c2),
                "chnl_reduce3": (c3, 2 * c2),
                "reduce_noise_channel_1": (d1 + c1, d1),
                "reduce_noise_channel_2": (d2 + c2, d2),
                "reduce_noise_channel_3": (d3 + 2 * c2, d3),
            }
            for name, (cin, cout) in unused.items():
                conv = nn.Conv2d(cin, cout, kernel_size=1, bias=bias)
                conv.requires_grad_(False)
                self.add_module(name, conv)

        # Registration order = the authors' (state-dict keys in their order).
        order = [n for n in _OFFICIAL_ORDER if n in self._modules]
        rest = [n for n in self._modules if n not in order]
        modules = [(n, self._modules[n]) for n in order + rest]
        self._modules.clear()
        self._modules.update(modules)
        self.set_impl(impl)

    # ------------------------------------------------------------------ forward pieces
    def interact(self, level: int, x: Tensor) -> Tensor:
        """Prompt generation and interaction at ``level`` (3: after the latent, 2: after
        ``decoder_level3``, 1: after ``decoder_level2``)."""
        prompt = getattr(self, f"prompt{level}")(x)
        x = torch.cat([x, prompt], dim=1)
        x = self.call_block(getattr(self, f"noise_level{level}"), x)
        return pointwise_conv(getattr(self, f"reduce_noise_level{level}"), x,
                              self.impl == "fast")

    def prompt_weights(self, x: Tensor) -> dict[str, Tensor]:
        """Each level's B x prompt_len prompt weights for input ``x`` (diagnostics: which
        prompts each image draws on). Runs the network once."""
        found: dict[str, Tensor] = {}
        hooks = [getattr(self, f"prompt{k}").register_forward_hook(
            lambda m, args, out, k=k: found.__setitem__(f"prompt{k}", m.prompt_weights(args[0])))
            for k in (1, 2, 3)]
        try:
            self(x)
        finally:
            for h in hooks:
                h.remove()
        return {k: found[k] for k in sorted(found)}

    def decode_levels(self, latent: Tensor, skips: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Decoder levels 3-1 with the prompt interactions after levels 3 and 2."""
        _, enc1, enc2, enc3 = skips
        fast = self.impl == "fast"
        x = torch.cat([self.up4_3(latent), enc3], dim=1)
        x = self.run_stage("decoder_level3", pointwise_conv(self.reduce_chan_level3, x, fast))
        x = self.interact(2, x)
        x = torch.cat([self.up3_2(x), enc2], dim=1)
        x = self.run_stage("decoder_level2", pointwise_conv(self.reduce_chan_level2, x, fast))
        x = self.interact(1, x)
        x = torch.cat([self.up2_1(x), enc1], dim=1)
        return self.run_stage("decoder_level1", x)

    def forward_padded(self, x: Tensor) -> Tensor:
        """The authors' network proper; H and W must be multiples of 8."""
        skips, latent_in = self.encode(x)
        latent = self.interact(3, self.run_stage("latent", latent_in))
        return self.head(self.decode(latent, skips), x, skips)


def promptir(**kwargs: Any) -> PromptIR:
    """PromptIR at the released sizes (35,592,263 parameters, 35,376,967 used); kwargs override."""
    return PromptIR(**kwargs)


def promptir_tiny(**kwargs: Any) -> PromptIR:
    """A very small PromptIR for tests and CPU runs (every code path: three prompt banks, the
    bilinear prompt resize at inputs other than 64², interactions, unused convs)."""
    cfg: dict[str, Any] = dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 2, 4, 8),
        prompt_dims=(8, 16, 32),
        prompt_sizes=(32, 16, 8),
    )
    cfg.update(kwargs)
    return PromptIR(**cfg)
