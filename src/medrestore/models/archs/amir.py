"""AMIR (MICCAI 2024): all-in-one medical image restoration via task-adaptive routing.

A Restormer U-Net (dim 42, blocks 5/7/7/9, 4 refinement blocks, heads 1/2/4/8, 1 -> 1 channels)
that decides, for every image, which paths its features take, without any task label:

* **routing instruction** (``dict_generator``, the authors' "RIN"): from the raw input image,
  two *unpadded* stride-3 3x3 convolutions and three 1x1 convolutions (LeakyReLU 0.1) → global
  average pool → Linear → softmax over ``num_atoms`` dictionary atoms → their weighted sum
  (a learned ``num_atoms x instruction_dim`` dictionary, N(0, 1) init) → GELU: one instruction
  vector per sample;
* **spatial routing** at the input of each of the three encoder levels
  (``spatial_routing_encoder_level{1,2,3}``): every *pixel* is a token; its gating input is
  ``[feature ‖ Linear(instruction)]``; noisy top-k gating (the sparsely-gated
  mixture-of-experts gate, arXiv:1701.06538: noise
  ``N(0,1)·(softplus(token·W_noise) + 0.01)`` in training only) picks ``top_k`` of
  ``num_experts`` expert MLPs (C → int(ffn_expansion_factor·C) → C, GELU); their outputs are
  combined *in log space*, ``log Σ_i gate_i·exp(expert_i(token))`` (fp32; an exact zero sum is
  replaced by float64 machine epsilon before the log), and the routed features are added to the
  level input;
* **channel routing** after ``down3_4`` (before the latent) and after each decoder skip fusion
  (``channel_routing_{latent,decoder_level3,decoder_level2,decoder_level1}``):
  ``x + sigmoid(Linear(instruction)) ⊙ (γ ⊙ x + β)``, γ, β per channel, zero-initialised;
* **auxiliary loss** (training mode): per spatial router ``CV²(importance) + CV²(load)``
  (importance = gates summed over all tokens of the batch; load = the smooth probability of
  being in the top-k under the noise, summed over tokens), summed over the three routers.

Routing is decided per sample: the instruction is computed per image and the spatial routing
per pixel, so in eval mode a batch gives every image the output it gets alone. In training the
gating noise is drawn per token; the only batch coupling is the aux statistic, a batch
statistic by design (importance and load are summed over the batch's tokens), so it depends on
the batch size and composition, as in the authors' training.

``forward(x)`` returns ``(pred, {"aux_loss": scalar})`` in training mode and ``pred`` in eval
mode. Module names, shapes and buffers are the authors' (``AMIR()`` in their
``model/Model_AMIR.py``): 23,540,498 parameters, 666 state-dict entries including the six
``moe.mean`` / ``moe.std`` buffers, so their plain ``state_dict`` files load strictly with no
key conversion. The routers are plain ops (no fast variant); ``impl`` switches the Restormer
blocks as for every family built on :class:`~medrestore.models.archs.restormer.Restormer`.

Options and departures (labelled; none change outputs at sizes and settings the authors run):

* ``combine``: ``"log_space"`` (default, the authors' op sequence, for fidelity) or
  ``"logsumexp"`` (added here: ``logsumexp_i(log gate_i + expert_i)``, the same function
  wherever the authors' version neither overflows — ``exp`` of an expert output above ≈88 is
  ``inf`` in fp32 — nor underflows to their epsilon, and finite everywhere else).
* ``instruction_dim``, ``num_atoms``, ``num_experts``, ``top_k`` (hard-coded 256/32/4/2 by the
  authors) and the instruction network's widths ``rin_hidden``/``rin_features`` (64/32) are
  arguments, so tiny test models keep every code path.
* any H, W >= 9: the input is padded (reflect, right/bottom) to a multiple of ``pad_multiple``
  and cropped back, as our Restormer; the instruction network sees the padded image. Inputs
  whose padded size is below 9 px (i.e. 8 px or less with the default padding to 8; 9–15 px
  are padded to 16 and work) are refused with a one-line error.
* the global residual is skipped when input and output channel counts differ.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError
from medrestore.models.archs.restormer import Restormer, pad_to_multiple
from medrestore.models.layers.restormer import Impl, LayerNormType, to_channels_last

__all__ = [
    "AMIR",
    "COMBINES",
    "ChannelRouting",
    "NoisyTopKMoE",
    "RoutingInstructionNetwork",
    "SpatialRouting",
    "amir",
    "amir_tiny",
    "cv_squared",
]

Combine = Literal["log_space", "logsumexp"]
COMBINES: tuple[str, ...] = ("log_space", "logsumexp")

#: The smallest H, W the instruction network accepts: two unpadded 3x3 stride-3 convolutions
#: need >= 3 px after the first, i.e. >= 9 px at the input.
MIN_SIZE = 9

# Additive floor of the gating-noise std (the authors' ``noise_epsilon``).
_NOISE_FLOOR = 1e-2
# The authors replace an exact zero before the log with float64 machine epsilon (≈2.2e-16,
# representable in fp32).
_LOG_FLOOR = float(np.finfo(float).eps)
# Stages preceded by a channel router, and the router's attribute (the authors' names).
_CHANNEL_ROUTERS = {
    "latent": "channel_routing_latent",
    "decoder_level3": "channel_routing_decoder_level3",
    "decoder_level2": "channel_routing_decoder_level2",
    "decoder_level1": "channel_routing_decoder_level1",
}


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation ``var(x) / (mean(x)² + 1e-10)`` (unbiased variance,
    fp32): the load-balancing penalty; 0 for a single expert."""
    if x.numel() == 1:
        return x.new_zeros((), dtype=torch.float32)
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


class _ExpertMLP(nn.Module):
    """One expert: ``fc2(GELU(fc1(token)))`` with biases (names as the authors' ``Mlp``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NoisyTopKMoE(nn.Module):
    """Sparsely gated mixture of token-wise expert MLPs with noisy top-k gating.

    The gate reads ``2·dim`` numbers per token (its feature and its sample's projected
    instruction). ``w_gate`` starts N(0, 1) and ``w_noise`` at zero, as the authors'; the
    ``mean``/``std`` buffers parametrise the standard normal of the load estimator (they are
    part of the authors' state dict).
    """

    def __init__(self, dim: int, hidden: int, num_experts: int = 4, top_k: int = 2,
                 combine: Combine = "log_space") -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
        if combine not in COMBINES:
            raise ValueError(f"combine={combine!r}; expected one of {list(COMBINES)}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.combine_mode: Combine = combine
        self.experts = nn.ModuleList(_ExpertMLP(dim, hidden) for _ in range(num_experts))
        self.w_gate = nn.Parameter(torch.randn(2 * dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(2 * dim, num_experts))
        self.register_buffer("mean", torch.tensor([0.0]))
        self.register_buffer("std", torch.tensor([1.0]))

    # ------------------------------------------------------------------ gating
    def _normal_cdf(self, x: Tensor) -> Tensor:
        # the standard-normal CDF with the buffers as location / scale (no validation sync)
        return 0.5 * (1 + torch.erf((x - self.mean) * self.std.reciprocal() / math.sqrt(2)))

    def draw_noise(self, logits: Tensor) -> Tensor:
        """The gating noise: one N(0, 1) draw per token and expert (``torch.randn_like`` of the
        ``N x E`` logits, tokens in ``(b, h, w)`` order, so a seed reproduces the authors'
        draws). Nothing is shared across tokens or samples."""
        return torch.randn_like(logits)

    def gate(self, gate_in: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(gates N x E, load E)`` for gating inputs ``N x 2·dim``. ``gates`` holds the
        softmax over each token's top-k logits and zero elsewhere. ``load`` (training only;
        ``None`` in eval) is the smooth probability of each expert being in a token's top-k
        under fresh noise, summed over tokens (the hard count when ``top_k == num_experts``)."""
        clean = gate_in @ self.w_gate
        noisy = noise_std = None
        if self.training:
            noise_std = F.softplus(gate_in @ self.w_noise) + _NOISE_FLOOR
            noisy = clean + self.draw_noise(clean) * noise_std
            logits = noisy
        else:
            logits = clean
        k = self.top_k
        top_vals, top_idx = logits.topk(min(k + 1, self.num_experts), dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, :k],
                                                 F.softmax(top_vals[:, :k], dim=1))
        if not self.training:
            return gates, None
        if k < self.num_experts:
            assert noisy is not None and noise_std is not None
            threshold_in = top_vals[:, k:k + 1]       # the (k+1)-th noisy logit
            threshold_out = top_vals[:, k - 1:k]      # the k-th
            prob = torch.where(noisy > threshold_in,
                               self._normal_cdf((clean - threshold_in) / noise_std),
                               self._normal_cdf((clean - threshold_out) / noise_std))
            load = prob.sum(0)
        else:
            load = (gates > 0).sum(0)
        return gates, load

    # ------------------------------------------------------------------ combine
    def _dispatch(self, tokens: Tensor, gates: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``(token indices, expert output, gate)`` per expert, over the tokens that chose it.

        Every expert runs, on an empty batch if nobody chose it (as the authors'), so all
        parameters take part in the graph (DDP needs no unused-parameter search)."""
        out = []
        for e, expert in enumerate(self.experts):
            idx = torch.nonzero(gates[:, e] > 0).squeeze(1)
            out.append((idx, expert(tokens.index_select(0, idx)),
                        gates.index_select(0, idx)[:, e:e + 1]))
        return out

    def combine(self, tokens: Tensor, gates: Tensor) -> Tensor:
        """The routed features ``N x dim`` (fp32) for ``tokens`` and ``gates``."""
        parts = self._dispatch(tokens, gates)
        n, c = tokens.shape
        acc = torch.zeros(n, c, dtype=torch.float32, device=tokens.device)
        if self.combine_mode == "log_space":
            # The authors' log-space mixture: exp, gate-weighted sum, eps for exact zeros, log.
            for idx, y, g in parts:
                acc.index_add_(0, idx, y.float().exp() * g.float())
            acc = acc.masked_fill(acc == 0, _LOG_FLOOR)  # no gradient there, as theirs
            return acc.log()
        # logsumexp of log(gate) + expert, shifted by the per-token max (a constant for the
        # gradient: d/dm [m + log Σ exp(t - m)] = 0, so it is computed without a graph).
        terms = [(idx, y.float() + g.float().log()) for idx, y, g in parts]
        with torch.no_grad():
            top = torch.full((n, c), -math.inf, dtype=torch.float32, device=tokens.device)
            for idx, t in terms:
                top.scatter_reduce_(0, idx[:, None].expand_as(t), t, "amax")
        for idx, t in terms:
            acc.index_add_(0, idx, (t - top.index_select(0, idx)).exp())
        return top + acc.log()

    def forward(self, tokens: Tensor, instruction: Tensor) -> tuple[Tensor, Tensor | None]:
        """``tokens``, ``instruction``: ``N x dim`` (the instruction repeated per token).
        Returns the routed features (fp32) and, in training, ``CV²(importance) + CV²(load)``."""
        gates, load = self.gate(torch.cat((tokens, instruction), dim=1))
        y = self.combine(tokens, gates)
        if load is None:
            return y, None
        return y, cv_squared(gates.sum(0)) + cv_squared(load)


class SpatialRouting(nn.Module):
    """Per-pixel mixture of experts conditioned on the sample's instruction, plus the input."""

    def __init__(self, instruction_dim: int, dim: int, ffn_expansion_factor: float,
                 num_experts: int = 4, top_k: int = 2, combine: Combine = "log_space") -> None:
        super().__init__()
        self.fc = nn.Linear(instruction_dim, dim)
        self.moe = NoisyTopKMoE(dim, int(dim * ffn_expansion_factor), num_experts, top_k,
                                combine)

    def forward(self, x: Tensor, instruction: Tensor) -> tuple[Tensor, Tensor | None]:
        b, c, h, w = x.shape
        d = self.fc(instruction)
        # tokens in (b, h, w) order: the order of the authors' noise draws
        tokens = x.permute(0, 2, 3, 1).reshape(-1, c)
        d_tokens = d[:, None, :].expand(b, h * w, c).reshape(-1, c)
        y, aux = self.moe(tokens, d_tokens)
        return y.view(b, h, w, c).permute(0, 3, 1, 2) + x, aux


class ChannelRouting(nn.Module):
    """``x + sigmoid(fc(instruction)) ⊙ (γ ⊙ x + β)``: per-sample channel gates on a learned
    per-channel affine branch (γ = β = 0 at init, so the router starts as the identity)."""

    def __init__(self, instruction_dim: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(instruction_dim, dim)
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor, instruction: Tensor) -> Tensor:
        g = torch.sigmoid(self.fc(instruction))[:, :, None, None]
        return x + (x * self.gamma + self.beta) * g


class RoutingInstructionNetwork(nn.Module):
    """The instruction vector (``B x instruction_dim``) of each input image.

    Attribute names (``CondNet``, ``lastOut``, ``dictionary``) are the authors', for their keys.
    """

    def __init__(self, in_channels: int, num_atoms: int = 32, instruction_dim: int = 256,
                 hidden: int = 64, features: int = 32) -> None:
        super().__init__()
        self.CondNet = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 3), nn.LeakyReLU(0.1, True),
            nn.Conv2d(hidden, hidden, 3, 3), nn.LeakyReLU(0.1, True),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(hidden, hidden, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(hidden, features, 1),
        )
        self.lastOut = nn.Linear(features, num_atoms)
        self.dictionary = nn.Parameter(torch.randn(num_atoms, instruction_dim))

    def atom_weights(self, x: Tensor) -> Tensor:
        """The softmax weights over the dictionary atoms (``B x num_atoms``)."""
        f = F.adaptive_avg_pool2d(self.CondNet(x), 1).flatten(1)
        return F.softmax(self.lastOut(f), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.atom_weights(x) @ self.dictionary)


class AMIR(Restormer):
    """AMIR restoration network (see the module docstring).

    Args (backbone; as :class:`Restormer`, with AMIR's defaults): ``in_channels``,
    ``out_channels`` (1), ``dim`` (42), ``num_blocks`` (5, 7, 7, 9), ``num_refinement_blocks``
    (4), ``heads`` (1, 2, 4, 8), ``ffn_expansion_factor`` (2.66; also the experts' width
    ratio), ``bias``, ``layernorm_type``.

    Args (routing):
        instruction_dim: width of the instruction / dictionary atoms (256).
        num_atoms: dictionary atoms (32).
        num_experts: expert MLPs per spatial router (4).
        top_k: experts mixed per pixel (2).
        combine: ``"log_space"`` (default; the authors' exp → weighted sum → log, which
            overflows in fp32 for expert outputs above ≈88) or ``"logsumexp"`` (the same
            function computed stably; finite for any finite expert output).
        rin_hidden, rin_features: widths of the instruction network's convolutions (64, 32).

    Args (run options, as :class:`Restormer`): ``global_residual``, ``pad_multiple``,
    ``zero_init_output``, ``impl`` (``"reference"`` | ``"fast"``: the Restormer blocks),
    ``checkpoint_blocks``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        dim: int = 42,
        num_blocks: Sequence[int] = (5, 7, 7, 9),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        instruction_dim: int = 256,
        num_atoms: int = 32,
        num_experts: int = 4,
        top_k: int = 2,
        combine: Combine = "log_space",
        rin_hidden: int = 64,
        rin_features: int = 32,
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        for name, value in (("instruction_dim", instruction_dim), ("num_atoms", num_atoms),
                            ("num_experts", num_experts), ("rin_hidden", rin_hidden),
                            ("rin_features", rin_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.net.{name}={value!r}; expected an integer >= 1")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= num_experts:
            raise ConfigError(f"model.net.top_k={top_k!r}; expected an integer in [1, "
                              f"model.net.num_experts={num_experts}]")
        if combine not in COMBINES:
            raise ConfigError(f"model.net.combine={combine!r}; expected one of "
                              f"{list(COMBINES)} (log_space: the authors' mixture; logsumexp: "
                              "its overflow-free form)")
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
        self.instruction_dim = instruction_dim
        self.num_atoms = num_atoms
        self.num_experts = num_experts
        self.top_k = top_k
        self.combine: Combine = combine
        # Registered after the backbone (the authors register them before the encoder): the
        # keys are the same, only the state-dict order differs, which strict loading ignores.
        self.dict_generator = RoutingInstructionNetwork(in_channels, num_atoms, instruction_dim,
                                                        rin_hidden, rin_features)
        for level in (1, 2, 3):
            self.add_module(f"spatial_routing_encoder_level{level}", SpatialRouting(
                instruction_dim, dim * 2 ** (level - 1), ffn_expansion_factor, num_experts,
                top_k, combine))
        for stage, channels in (("latent", dim * 8), ("decoder_level3", dim * 4),
                                ("decoder_level2", dim * 2), ("decoder_level1", dim * 2)):
            self.add_module(_CHANNEL_ROUTERS[stage], ChannelRouting(instruction_dim, channels))
        self.set_impl(impl)

    # ------------------------------------------------------------------ forward pieces
    def run_stage(self, stage: str, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Channel-route (with the instruction ``cond``) before the latent and decoder stages."""
        router = _CHANNEL_ROUTERS.get(stage)
        if router is not None:
            if cond is None:
                raise ValueError(f"stage {stage!r} is channel-routed and needs the instruction")
            x = getattr(self, router)(x, cond)
        return super().run_stage(stage, x)

    def encode_routed(self, x: Tensor, instruction: Tensor
                      ) -> tuple[list[Tensor], Tensor, Tensor | None]:
        """Embedding and encoder levels 1-3, each level's input spatially routed.

        Returns ``([embedding, enc1, enc2, enc3], latent_input, aux)``; ``aux`` is the summed
        load-balancing loss of the three routers in training, ``None`` in eval."""
        fast = self.impl == "fast"
        emb = self.patch_embed(to_channels_last(x) if fast else x)
        if fast:
            emb = to_channels_last(emb)
        feats: list[Tensor] = [emb]
        losses: list[Tensor] = []
        h = emb
        for level, down in ((1, None), (2, self.down1_2), (3, self.down2_3)):
            if down is not None:
                h = down(feats[-1])
            h, loss = getattr(self, f"spatial_routing_encoder_level{level}")(h, instruction)
            if loss is not None:
                losses.append(loss)
            feats.append(self.run_stage(f"encoder_level{level}", h))
        aux = None
        if losses:
            aux = losses[0]
            for loss in losses[1:]:
                aux = aux + loss
        return feats, self.down3_4(feats[-1]), aux

    def forward_padded(  # type: ignore[override]
        self, x: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """The authors' network proper (H, W multiples of 8 and >= 9): ``(pred, aux or None)``."""
        instruction = self.dict_generator(x)
        skips, latent_in, aux = self.encode_routed(x, instruction)
        latent = self.run_stage("latent", latent_in, instruction)
        return self.head(self.decode(latent, skips, instruction), x, skips), aux

    def forward(  # type: ignore[override]
        self, x: Tensor
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """``pred`` (eval) or ``(pred, {"aux_loss": scalar})`` (training); ``pred`` has x's size."""
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-(-h // m) * m, -(-w // m) * m) if m else (h, w)
        if min(ph, pw) < MIN_SIZE:
            raise ConfigError(
                f"AMIR needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (its routing "
                f"instruction network uses two unpadded stride-3 3x3 convolutions); got {h}x{w}"
                + (f", padded to {ph}x{pw}" if (ph, pw) != (h, w) else ""))
        x_p = pad_to_multiple(x, m)[0] if m else x
        pred, aux = self.forward_padded(x_p)
        if pred.shape[-2:] != (h, w):
            pred = pred[..., :h, :w]
        pred = self.finish(pred)
        if not self.training:
            return pred
        if aux is None:  # unreachable: routers always report in training mode
            raise RuntimeError("AMIR: no aux loss in training mode")
        return pred, {"aux_loss": aux}


def amir(**kwargs: Any) -> AMIR:
    """AMIR at the authors' sizes (dim 42, blocks 5/7/7/9 + 4, heads 1/2/4/8, instruction 256,
    32 atoms, 4 experts, top-2): 23,540,498 parameters; kwargs override."""
    return AMIR(**kwargs)


def amir_tiny(**kwargs: Any) -> AMIR:
    """A very small AMIR for tests and CPU smoke runs (every routing path kept); kwargs
    override."""
    cfg: dict[str, Any] = dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 2, 4, 8),
        instruction_dim=16,
        num_atoms=4,
        num_experts=4,
        top_k=2,
        rin_hidden=16,
        rin_features=8,
    )
    cfg.update(kwargs)
    return AMIR(**cfg)
