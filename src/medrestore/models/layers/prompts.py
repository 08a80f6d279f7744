"""Prompt machinery of DATPRL-IR ("Learning Domain-Aware Task Prompt Representations for
Multi-Domain All-in-One Image Restoration", ICLR 2026).

Re-implemented from the paper's description and checked layer for layer against the authors'
released model class (same parameter shapes and names, same numerics at equal weights):

* :class:`QueryProjector` — image feature map -> 1-D query (pool, conv, pool, conv, GAP, linear).
* :class:`PromptPool` — N learnable (key, value) prompts and the Prompt Composition Mechanism
  (PCM): cosine similarity of the query with every key, top-k selection, softmax over the k
  selected similarities, weighted sum of their value tokens, aggregation to one vector.
* :func:`make_task_domain_fusion` / :func:`fuse_task_domain` — the 8-head attention that fuses
  the domain representation (query) with the task representation (key/value).
* :class:`AGFTransformerBlock` — a Restormer block with Adaptive Gated Fusion (AGF): the prompt
  is fused into the *attention branch's input only*; the residual stream keeps the raw feature.

Two attentions here see a single key token, so their softmax is identically 1 (the query path
gets zero gradient). That is how the released model computes them and is kept on purpose: the
layers, their parameters and their (zero) gradients are all present, so checkpoints load and
training behaves as in the original, including attention dropout on the single weight.

Attribute names follow the authors' model so their state dicts load without renaming (e.g.
``prompt_keys``, ``prompt_values``, ``value_aggregation``, ``cross_attn_q``, ``prompt_norm``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.models.layers.restormer import LayerNormType, TransformerBlock, is_fast

__all__ = [
    "TEMPERATURE_RANGE",
    "QueryProjector",
    "task_query_projector",
    "domain_query_projector",
    "PoolSelection",
    "PromptPool",
    "make_task_domain_fusion",
    "fuse_task_domain",
    "AGFTransformerBlock",
]

#: The pool temperature is a free parameter but is clamped to this range where it is used.
TEMPERATURE_RANGE = (0.1, 2.0)


# --------------------------------------------------------------------------- query projectors
class QueryProjector(nn.Module):
    """Feature map (B x C x H x W) -> query vector (B x out_dim).

    ``AdaptiveAvgPool(p1) -> Conv3x3(C, C//2) -> ReLU -> AdaptiveAvgPool(p2) ->
    Conv3x3(C//2, C//4) -> ReLU -> GAP -> Linear(C//4, out_dim)``, convs and linear with bias.
    Pooling first makes the cost independent of the image size. The ``mapper`` Sequential (and
    its indices 1/4/8) is kept for checkpoint compatibility.
    """

    def __init__(self, in_channels: int, out_dim: int, pool_sizes: Sequence[int]) -> None:
        super().__init__()
        if in_channels < 4:
            raise ValueError(f"QueryProjector needs at least 4 input channels, got {in_channels}")
        p1, p2 = pool_sizes
        c1, c2 = in_channels // 2, in_channels // 4
        self.mapper = nn.Sequential(
            nn.AdaptiveAvgPool2d(p1),
            nn.Conv2d(in_channels, c1, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(p2),
            nn.Conv2d(c1, c2, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c2, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mapper(x)


def task_query_projector(in_channels: int, out_dim: int) -> QueryProjector:
    """Task (degradation) query from the deepest encoder feature: pools to 4x4 then 2x2."""
    return QueryProjector(in_channels, out_dim, (4, 2))


def domain_query_projector(in_channels: int, out_dim: int) -> QueryProjector:
    """Domain query from the shallow (patch-embedding) feature: pools to 8x8 then 4x4."""
    return QueryProjector(in_channels, out_dim, (8, 4))


# --------------------------------------------------------------------------- prompt pool + PCM
class PoolSelection(NamedTuple):
    """What a :class:`PromptPool` returns for a batch of B queries."""

    prompt: Tensor  #: B x D composed representation (PR_t or PR_d)
    scores: Tensor  #: B x N clean scaled cosine similarities (before any selection noise)
    weights: Tensor  #: B x N softmax over the selected k, zero elsewhere (rows sum to 1)
    indices: Tensor  #: B x k selected prompt indices (from the noisy scores in training)


class PromptPool(nn.Module):
    """Key-value prompt pool with the Prompt Composition Mechanism (PCM).

    Parameters: keys ``K`` (N x D), values ``V`` (N x T x D, T value tokens per prompt), one
    scalar temperature τ (init 1, clamped to :data:`TEMPERATURE_RANGE` in use) and an
    aggregator ``Linear(T*D, D) -> LayerNorm(D) -> GELU``.

    Forward for a query q (B x D):

    1. ``s = cos(q, K) / clamp(τ)`` (B x N).
    2. Selection: in training the top-k of ``s + σ·ε`` with ``ε = torch.randn_like(s)``
       (σ = ``selection_noise``, 0.1) — noise explores prompts and is used for *selection
       only*; in eval the top-k of ``s`` (deterministic).
    3. ``w = softmax(s[selected])`` on the *clean* scores; the index choice carries no gradient,
       keys and τ get gradient through ``w``.
    4. ``PR = aggregator(flatten(Σ_j w_j V[idx_j]))``.

    Initialisation (as the authors): prompts with index < N//2 Xavier-uniform (per key row
    ``U(±√(6/(D+1)))``, per value token ``U(±√(3/D))``, i.e. the fans torch computes for a
    1 x D and a 1 x 1 x D slice), the others orthogonal (for a single row: a random unit vector),
    then N(0, ``init_noise``²) added to every prompt but the first, keys and values alike.
    """

    def __init__(
        self,
        pool_size: int = 15,
        prompt_dim: int = 1024,
        top_k: int = 3,
        value_tokens: int = 2,
        selection_noise: float = 0.1,
        init_noise: float = 0.5,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in [1, pool_size={pool_size}], got {top_k}")
        if value_tokens < 1:
            raise ValueError(f"value_tokens must be >= 1, got {value_tokens}")
        self.pool_size = pool_size
        self.prompt_dim = prompt_dim
        self.top_k = top_k
        self.value_tokens = value_tokens
        self.selection_noise = float(selection_noise)
        self.init_noise = float(init_noise)
        self.prompt_keys = nn.Parameter(torch.empty(pool_size, prompt_dim))
        self.prompt_values = nn.Parameter(torch.empty(pool_size, value_tokens, prompt_dim))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.value_aggregation = nn.Sequential(
            nn.Linear(value_tokens * prompt_dim, prompt_dim),
            nn.LayerNorm(prompt_dim),
            nn.GELU(),
        )
        self.reset_prompts()

    @property
    def keys(self) -> nn.Parameter:
        """Prompt keys, N x D."""
        return self.prompt_keys

    @property
    def values(self) -> nn.Parameter:
        """Prompt values, N x T x D."""
        return self.prompt_values

    def reset_prompts(self) -> None:
        """Diverse initial prompts: Xavier / orthogonal halves, then Gaussian jitter."""
        n, d = self.pool_size, self.prompt_dim
        half = n // 2
        keys, values = self.prompt_keys, self.prompt_values
        with torch.no_grad():
            bound_k = math.sqrt(6.0 / (d + 1))  # fan_in = D, fan_out = 1
            bound_v = math.sqrt(3.0 / d)  # fan_in = fan_out = D  ->  √(6 / 2D)
            keys[:half].uniform_(-bound_k, bound_k)
            values[:half].uniform_(-bound_v, bound_v)
            # A one-row orthogonal matrix is a uniformly random unit vector.
            keys[half:].copy_(F.normalize(torch.randn_like(keys[half:]), dim=-1))
            values[half:].copy_(F.normalize(torch.randn_like(values[half:]), dim=-1))
            keys[1:].add_(self.init_noise * torch.randn_like(keys[1:]))
            values[1:].add_(self.init_noise * torch.randn_like(values[1:]))

    def clamped_temperature(self) -> Tensor:
        return self.temperature.clamp(*TEMPERATURE_RANGE)

    def scores(self, query: Tensor) -> Tensor:
        """Scaled cosine similarity of each query with each key (B x N)."""
        q = F.normalize(query, dim=1)
        k = F.normalize(self.prompt_keys, dim=1)
        return (q @ k.t()) / self.clamped_temperature()

    def select(self, scores: Tensor) -> Tensor:
        """Top-k indices: noisy scores in training (exploration), clean scores in eval."""
        if self.training and self.selection_noise > 0:
            scores = scores + self.selection_noise * torch.randn_like(scores)
        return scores.topk(self.top_k, dim=1).indices

    def forward(self, query: Tensor) -> PoolSelection:
        scores = self.scores(query)
        indices = self.select(scores)
        selected = scores.gather(1, indices).softmax(dim=1)  # B x k, clean scores
        # Gather-then-sum over the k selected prompts (not a dense N-way sum): same numerics
        # as the released model.
        composed = (self.prompt_values[indices] * selected[..., None, None]).sum(dim=1)
        prompt = self.value_aggregation(composed.flatten(1))
        weights = torch.zeros_like(scores).scatter(1, indices, selected)
        return PoolSelection(prompt, scores, weights, indices)

    def extra_repr(self) -> str:
        return (f"pool_size={self.pool_size}, prompt_dim={self.prompt_dim}, top_k={self.top_k}, "
                f"value_tokens={self.value_tokens}, selection_noise={self.selection_noise}")


# --------------------------------------------------------------------------- task/domain fusion
def make_task_domain_fusion(
    prompt_dim: int, num_heads: int = 8, dropout: float = 0.1
) -> tuple[nn.MultiheadAttention, nn.LayerNorm, nn.Sequential]:
    """The three layers of the task/domain fusion ("CA" in the paper's figure).

    Returned separately (not wrapped in a module) so the network can own them under the
    authors' top-level names (``prompt_cross_attention``, ``prompt_fusion_norm``,
    ``prompt_fusion_ffn``) and their checkpoints load unchanged.
    """
    if prompt_dim % num_heads:
        raise ValueError(f"prompt_dim={prompt_dim} is not divisible by fusion heads={num_heads}")
    attention = nn.MultiheadAttention(prompt_dim, num_heads, dropout=dropout, batch_first=True)
    norm = nn.LayerNorm(prompt_dim)
    ffn = nn.Sequential(
        nn.Linear(prompt_dim, prompt_dim * 2),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(prompt_dim * 2, prompt_dim),
    )
    return attention, norm, ffn


def fuse_task_domain(
    attention: nn.MultiheadAttention,
    norm: nn.LayerNorm,
    ffn: nn.Sequential,
    domain_repr: Tensor,
    task_repr: Tensor,
) -> Tensor:
    """``PR_dt = LN(MHA(q=PR_d, k=v=PR_t) + PR_d)``, then ``PR_dt + FFN(PR_dt)`` (B x D).

    Both sequences are one token long, so the attention weight is 1 and the result is
    ``out_proj(W_v PR_t + b_v)`` whatever the query projection; in training, attention dropout
    zeroes that single weight with probability p (or rescales it by 1/(1-p)). Kept as is.
    """
    q = domain_repr.unsqueeze(1)
    kv = task_repr.unsqueeze(1)
    attended, _ = attention(q, kv, kv)
    out = norm(attended + q)
    out = out + ffn(out)
    return out.squeeze(1)


# --------------------------------------------------------------------------- AGF block
class AGFTransformerBlock(TransformerBlock):
    """Restormer block with Adaptive Gated Fusion of a prompt vector.

    ``(α_f, α_p) = softmax(w_f, w_p)`` (both scalars start at 0.5, so 0.5/0.5), and with the
    pixels flattened to tokens ``x_i`` (C-d) and the prompt p (P-d)::

        q_i = α_f W_q x_i,   k = α_p W_k LN(p),   v = α_p W_v LN(p)
        x̃_i = α_f x_i + W_out(softmax_over_one_key(q_i·k / √C) v)
            = α_f x_i + W_out(α_p (W_v LN(p) + b_v))        (the softmax is 1)

    so AGF is a gated per-image, per-channel bias. The fused ``x̃`` feeds **only** the
    attention branch; the residual stream and the feed-forward half keep the raw feature::

        y = x + MDTA(LN1(x̃));   out = y + GDFN(LN2(y))

    With ``prompt=None`` the block is a plain Restormer block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: LayerNormType = "WithBias",
        prompt_dim: int = 1024,
    ) -> None:
        super().__init__(dim, num_heads, ffn_expansion_factor, bias, layernorm_type)
        self.prompt_dim = prompt_dim
        self.feature_weight = nn.Parameter(torch.full((1,), 0.5))
        self.prompt_weight = nn.Parameter(torch.full((1,), 0.5))
        self.cross_attn_q = nn.Linear(dim, dim)
        self.cross_attn_k = nn.Linear(prompt_dim, dim)
        self.cross_attn_v = nn.Linear(prompt_dim, dim)
        self.cross_attn_out = nn.Linear(dim, dim)
        self.prompt_norm = nn.LayerNorm(prompt_dim)

    def gate(self) -> tuple[Tensor, Tensor]:
        """``(α_f, α_p)``: softmax over the two gate scalars (each of shape (1,))."""
        alpha = torch.softmax(torch.stack([self.feature_weight, self.prompt_weight]), dim=0)
        return alpha[0], alpha[1]

    def fuse_prompt(self, x: Tensor, prompt: Tensor) -> Tensor:
        """AGF: the attention branch's input ``x̃`` (B x C x H x W) from x and a B x P prompt."""
        b, c, h, w = x.shape
        alpha_f, alpha_p = self.gate()
        if is_fast(self, "channels_last"):
            return self.fuse_prompt_fast(x, prompt, alpha_f, alpha_p)
        tokens = x.flatten(2).transpose(1, 2)  # B x HW x C
        p = self.prompt_norm(prompt.unsqueeze(1))  # B x 1 x P
        q = self.cross_attn_q(tokens) * alpha_f
        k = self.cross_attn_k(p) * alpha_p
        v = self.cross_attn_v(p) * alpha_p
        # One key: the softmax is exactly 1. Computed anyway, as the released model does, so
        # the q/k layers exist, receive (zero) gradients and non-finite scores behave the same.
        attn = torch.softmax((q @ k.transpose(-2, -1)) / (c**0.5), dim=-1)  # B x HW x 1
        update = self.cross_attn_out(attn @ v)  # B x HW x C
        return x * alpha_f + update.transpose(1, 2).reshape(b, c, h, w)

    def fuse_prompt_fast(self, x: Tensor, prompt: Tensor, alpha_f: Tensor,
                         alpha_p: Tensor) -> Tensor:
        """:meth:`fuse_prompt` on the ``B x H x W x C`` view of channels-last ``x`` (no copies);
        the same layers and the same (unit) softmax, so parameters get the same gradients."""
        c = x.shape[1]
        tokens = x.permute(0, 2, 3, 1)  # B x H x W x C
        p = self.prompt_norm(prompt)[:, None, None, :]  # B x 1 x 1 x P
        q = self.cross_attn_q(tokens) * alpha_f
        k = self.cross_attn_k(p) * alpha_p
        v = self.cross_attn_v(p) * alpha_p
        attn = torch.softmax((q * k).sum(-1, keepdim=True) / (c**0.5), dim=-1)  # B x H x W x 1
        update = self.cross_attn_out(attn * v)  # B x H x W x C
        return x * alpha_f + update.permute(0, 3, 1, 2)

    def forward(self, x: Tensor, prompt: Tensor | None = None) -> Tensor:  # type: ignore[override]
        fused = x if prompt is None else self.fuse_prompt(x, prompt)
        x = x + self.attn_branch(fused)
        return x + self.ffn_branch(x)
