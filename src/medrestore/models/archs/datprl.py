"""DATPRL-IR (ICLR 2026): a Restormer with domain-aware task prompts.

The network is the authors' multi-domain model, layer for layer (checked against their
released class: same parameter count, same state-dict keys and shapes, outputs equal at equal
weights; see ``docs/datprl.md``):

* Restormer backbone (dim 48, encoder 4/6/6, latent 8, **decoder 6/6/4 at levels 1/2/3** —
  i.e. 4 blocks at level 3 and 6 at level 1, unlike plain Restormer — refinement 4);
* a task query from the deepest encoder feature (after the third down-sampling) and a domain
  query from the patch embedding, each through a :class:`QueryProjector`;
* two :class:`PromptPool` s (task and domain) composing ``PR_t`` and ``PR_d`` (PCM);
* ``PR_dt`` = 8-head attention of ``PR_d`` over ``PR_t`` + LayerNorm + residual FFN;
* Adaptive Gated Fusion of ``PR_dt`` into the attention branch of each of the 28 latent,
  decoder and refinement blocks (:class:`AGFTransformerBlock`); encoder blocks are plain.

``use_domain_pool=False`` is the authors' task-prompt-only variant (their natural-image
experiments): no domain query, pool or fusion; the blocks receive ``PR_t``.

``forward(lq)`` returns ``(pred, aux)``: ``pred`` has lq's size (input zero-padded on the
right/bottom to a multiple of 8, as the authors, then cropped; global input residual), ``aux``
holds the representations and pool selections for the training losses (:meth:`DATPRL.forward`).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError
from medrestore.models.archs.datprl_official import convert_official_state_dict
from medrestore.models.archs.restormer import Restormer, pad_to_multiple
from medrestore.models.layers.prompts import (
    AGFTransformerBlock,
    PromptPool,
    domain_query_projector,
    fuse_task_domain,
    make_task_domain_fusion,
    task_query_projector,
)
from medrestore.models.layers.restormer import Impl, LayerNormType

__all__ = ["DATPRL", "PROMPTED_STAGES", "datprl", "datprl_tiny", "convert_official_state_dict"]

#: Stages whose blocks receive the prompt (8 + 4 + 6 + 6 + 4 = 28 blocks at the paper's sizes).
PROMPTED_STAGES = ("latent", "decoder_level3", "decoder_level2", "decoder_level1", "refinement")

# Our stage name -> attribute holding its blocks, where the authors' name differs.
_STAGE_ATTRS = {"latent": "latent_blocks"}

PadMode = Literal["zeros", "reflect"]


class DATPRL(Restormer):
    """DATPRL-IR restoration network.

    Args (backbone; as :class:`Restormer` unless noted):
        num_blocks: encoder blocks at levels 1-3 and latent blocks (level 4).
        num_decoder_blocks: decoder blocks at levels 1, 2, 3 (the authors' ``dec_blk_nums``
            order); ``None`` mirrors the encoder as plain Restormer does.
        pad_mode: ``"zeros"`` (the authors') or ``"reflect"`` for the pad to a multiple of 8.

    Args (prompts):
        task_pool_size, domain_pool_size: prompts per pool (N).
        task_top_k, domain_top_k: prompts composed per image (the released configs: 3 and 5).
        prompt_dim: width of keys, value tokens, queries and representations (1024 = CLIP RN50
            text width, so ``PR_d`` can be aligned with caption embeddings directly).
        value_tokens: value tokens per prompt (T).
        use_domain_pool: ``False`` = the task-prompt-only variant.
        fusion: how blocks fuse the prompt; ``"cross_attention"`` (AGF, the released configs'
            choice) is the one implemented.
        fusion_heads, fusion_dropout: the task/domain fusion attention (8, 0.1).
        selection_noise: std of the training-only noise on the selection scores (0.1).

    Args (run options, as :class:`Restormer`): ``impl`` (``"reference"`` | ``"fast"``),
    ``checkpoint_blocks``.
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
        num_decoder_blocks: Sequence[int] | None = (6, 6, 4),
        task_pool_size: int = 15,
        domain_pool_size: int = 15,
        task_top_k: int = 3,
        domain_top_k: int = 5,
        prompt_dim: int = 1024,
        value_tokens: int = 2,
        use_domain_pool: bool = True,
        fusion: str = "cross_attention",
        fusion_heads: int = 8,
        fusion_dropout: float = 0.1,
        selection_noise: float = 0.1,
        global_residual: bool = True,
        pad_multiple: int | None = 8,
        pad_mode: PadMode = "zeros",
        zero_init_output: bool = False,
        impl: Impl = "reference",
        checkpoint_blocks: bool = False,
    ) -> None:
        if fusion != "cross_attention":
            raise ConfigError(f"model.net.fusion={fusion!r}; expected 'cross_attention' (adaptive "
                              "gated fusion, the released configs' choice, is the one implemented)")
        if pad_mode not in ("zeros", "reflect"):
            raise ConfigError(f"model.net.pad_mode={pad_mode!r}; expected 'zeros' or 'reflect'")
        if num_decoder_blocks is not None and len(num_decoder_blocks) != 3:
            raise ConfigError(f"model.net.num_decoder_blocks={list(num_decoder_blocks)}; expected "
                              "3 entries (levels 1, 2, 3)")
        for name, k, n in (("task", task_top_k, task_pool_size),
                           ("domain", domain_top_k, domain_pool_size)):
            if (name == "task" or use_domain_pool) and not 1 <= k <= n:
                raise ConfigError(f"model.net.{name}_top_k={k}; expected an integer in [1, "
                                  f"{name}_pool_size={n}]")
        if value_tokens < 1:
            raise ConfigError(f"model.net.value_tokens={value_tokens}; expected >= 1")
        if use_domain_pool and dim < 4:  # the domain query projector halves dim twice
            raise ConfigError(f"model.net.dim={dim}; expected >= 4 with use_domain_pool=true")
        if use_domain_pool and prompt_dim % fusion_heads:
            raise ConfigError(f"model.net.prompt_dim={prompt_dim}; expected a multiple of "
                              f"model.net.fusion_heads={fusion_heads}")
        # Read by build_block / make_stage during Restormer.__init__, so set first.
        self.prompt_dim = prompt_dim
        dec = tuple(num_decoder_blocks) if num_decoder_blocks is not None else None
        self._decoder_depths = ({} if dec is None else
                                {"decoder_level1": dec[0], "decoder_level2": dec[1],
                                 "decoder_level3": dec[2]})
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
        # The authors call the latent stage ``latent_blocks``; re-register it under that name
        # so their checkpoints load without renaming.
        latent = self.latent
        del self.latent
        self.latent_blocks = latent
        self.num_decoder_blocks = dec if dec is not None else self.num_blocks[:3]
        self.num_refinement_blocks = num_refinement_blocks
        self.pad_mode: PadMode = pad_mode
        self.use_domain_pool = use_domain_pool
        self.fusion = fusion

        # Attribute names are the authors' ("degradation" = task).
        if use_domain_pool:
            self.domain_prompt_pool = PromptPool(domain_pool_size, prompt_dim, domain_top_k,
                                                 value_tokens, selection_noise)
        self.degradation_prompt_pool = PromptPool(task_pool_size, prompt_dim, task_top_k,
                                                  value_tokens, selection_noise)
        if use_domain_pool:
            self.domain_mapper = domain_query_projector(dim, prompt_dim)
        self.degradation_mapper = task_query_projector(dim * 8, prompt_dim)
        if use_domain_pool:
            attention, norm, ffn = make_task_domain_fusion(prompt_dim, fusion_heads,
                                                           fusion_dropout)
            self.prompt_cross_attention = attention
            self.prompt_fusion_norm = norm
            self.prompt_fusion_ffn = ffn
        self.set_impl(impl)

    # ------------------------------------------------------------------ construction hooks
    def build_block(self, stage: str, dim: int, num_heads: int) -> nn.Module:
        if stage not in PROMPTED_STAGES:
            return super().build_block(stage, dim, num_heads)
        return AGFTransformerBlock(
            dim=dim,
            num_heads=num_heads,
            ffn_expansion_factor=self.ffn_expansion_factor,
            bias=self.use_bias,
            layernorm_type=self.layernorm_type,
            prompt_dim=self.prompt_dim,
        )

    def make_stage(self, stage: str, dim: int, num_heads: int, depth: int) -> nn.Sequential:
        return super().make_stage(stage, dim, num_heads, self._decoder_depths.get(stage, depth))

    # ------------------------------------------------------------------ accessors
    @property
    def task_pool(self) -> PromptPool:
        """The task (degradation) prompt pool."""
        return self.degradation_prompt_pool

    @property
    def domain_pool(self) -> PromptPool | None:
        """The domain prompt pool (``None`` for the task-prompt-only variant)."""
        return self.domain_prompt_pool if self.use_domain_pool else None

    def stage_blocks(self, stage: str) -> nn.Sequential:
        """The blocks of ``stage`` (our stage names; ``"latent"`` is ``latent_blocks``)."""
        return getattr(self, _STAGE_ATTRS.get(stage, stage))

    # ------------------------------------------------------------------ forward pieces
    def run_stage(self, stage: str, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Prompted stages feed every block the prompt (``cond``); the others ignore it."""
        blocks = self.stage_blocks(stage)
        for block in blocks:
            x = (self.call_block(block, x) if stage not in PROMPTED_STAGES
                 else self.call_block(block, x, cond))
        return x

    def compose_prompt(self, shallow: Tensor, deep: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The prompt the blocks receive (``PR_dt``, or ``PR_t`` without a domain pool).

        ``shallow``: the patch embedding (domain query source); ``deep``: the down-sampled
        level-3 output (task query source). The domain pool runs first, as in the released
        model, so training-time random draws come in the same order.
        """
        aux: dict[str, Tensor] = {}
        if self.use_domain_pool:
            domain_query = self.domain_mapper(shallow)
            domain = self.domain_prompt_pool(domain_query)
            aux.update(domain_query=domain_query, domain_repr=domain.prompt,
                       domain_scores=domain.scores, domain_weights=domain.weights,
                       domain_indices=domain.indices)
        task_query = self.degradation_mapper(deep)
        task = self.degradation_prompt_pool(task_query)
        aux.update(task_query=task_query, task_repr=task.prompt, task_scores=task.scores,
                   task_weights=task.weights, task_indices=task.indices)
        if self.use_domain_pool:
            fused = fuse_task_domain(self.prompt_cross_attention, self.prompt_fusion_norm,
                                     self.prompt_fusion_ffn, aux["domain_repr"], task.prompt)
        else:
            fused = task.prompt
        aux["fused_repr"] = fused
        return fused, aux

    def forward_padded(  # type: ignore[override]
        self, x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The network proper; H and W must be multiples of 8."""
        skips, latent_in = self.encode(x)
        prompt, aux = self.compose_prompt(skips[0], latent_in)
        latent = self.run_stage("latent", latent_in, prompt)
        return self.head(self.decode(latent, skips, prompt), x, skips), aux

    def pad(self, x: Tensor) -> Tensor:
        """Right/bottom pad to a multiple of ``pad_multiple`` (zeros as the authors, or reflect)."""
        if not self.pad_multiple:
            return x
        if self.pad_mode == "reflect":
            return pad_to_multiple(x, self.pad_multiple)[0]
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % self.pad_multiple, 0, (-h) % self.pad_multiple))

    def forward(self, lq: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[override]
        """Restore ``lq`` (B x C x H x W).

        Returns ``(pred, aux)``; ``pred`` is B x out_channels x H x W. ``aux`` (all B-first):

        * ``task_query`` / ``domain_query`` (B x D): projected queries;
        * ``task_repr`` (PR_t), ``domain_repr`` (PR_d), ``fused_repr`` (PR_dt; equals
          ``task_repr`` without a domain pool) (B x D);
        * ``{task,domain}_scores`` (B x N, clean scaled cosine similarities),
          ``{task,domain}_weights`` (B x N, softmax over the selected k, zero elsewhere),
          ``{task,domain}_indices`` (B x k).

        Without a domain pool the ``domain_*`` entries are absent.
        """
        h, w = lq.shape[-2:]
        pred, aux = self.forward_padded(self.pad(lq))
        if pred.shape[-2:] != (h, w):
            pred = pred[..., :h, :w]
        return self.finish(pred), aux


def datprl(**kwargs: Any) -> DATPRL:
    """DATPRL-IR at the released multi-domain sizes (≈53.1 M parameters); kwargs override."""
    return DATPRL(**kwargs)


def datprl_tiny(**kwargs: Any) -> DATPRL:
    """A very small DATPRL for tests and smoke runs (fast on CPU); kwargs override."""
    cfg: dict[str, Any] = dict(
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 1, 2, 2),
        ffn_expansion_factor=2.0,
        task_pool_size=6,
        domain_pool_size=6,
        task_top_k=2,
        domain_top_k=3,
        prompt_dim=32,
    )
    cfg.update(kwargs)
    return DATPRL(**cfg)
