"""Test-time local converter (TLC) for Restormer's transposed attention (MDTA).

MDTA attends across channels with statistics pooled over the *whole* feature map, so a network
trained on 128² patches sees different statistics on a 512² image. TLC ("Improving
image restoration by revisiting global information aggregation", ECCV 2022) restores the
training-time behaviour at test time: q, k, v are cut into overlapping windows, attention runs
in each window independently, and each pixel's output is the mean over the windows that cover
it.

Window grid (per axis, map length ``n``, window ``k``), as in the task-adaptive transformer
reference: ``k ← min(n, k)``; ``m = ⌈n / k⌉`` windows; stride ``s = ⌈(n − k) / (m − 1)⌉``
(``k`` when ``m = 1``); starts ``0, s, 2s, …`` with the last window moved to end exactly at
``n``. Windows are visited row-major and their outputs summed in that order before dividing by
the coverage count, so results for one image equal the reference's.

Unlike the reference (which asserts batch 1), any batch size works: the windows of all samples
are stacked along the batch axis, ``(windows · B) x C x k1 x k2``, and every sample is folded
back into its own output, so a batch gives the same result as its samples one by one.

``mode``:

* ``"auto"`` (default) — windowed in eval mode when the map differs from the training size;
  global attention in training mode (training patches are the training size).
* ``True`` — the same rule also in training mode (what the reference does: it checks the size
  only).
* ``False`` — always global attention.

A map no larger than a window gives a single window, i.e. global attention, so the switch only
changes outputs on maps larger than ``window`` (1.5x the training size by default).

Fast path (``impl="fast"`` on the attention module): :func:`region_windowed_attend` computes the
same result without cutting windows. The window edges split the map into rectangular regions,
each covered by a fixed set of windows; a window's Gram matrix and norms are sums of its
regions' (each pixel visited once, not once per covering window), and each region's output is
``v`` times the mean of its covering windows' (C/heads)² attention matrices. No window copies,
no overlap recomputation; equal up to float summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
from torch import Tensor

from medrestore.models.layers.restormer import MDTA, is_fast

__all__ = [
    "TLCMode",
    "TLC",
    "window_starts",
    "window_grid",
    "windowed_attend",
    "region_windowed_attend",
    "TLCAttentionMixin",
    "LocalMDTA",
]

TLCMode = Union[bool, Literal["auto"]]
Attend = Callable[[Tensor, Tensor, Tensor], Tensor]


def window_starts(length: int, window: int) -> list[int]:
    """Start offsets of the windows along one axis (see the module docstring)."""
    if length < 1 or window < 1:
        raise ValueError(f"length and window must be positive, got {length}, {window}")
    k = min(length, window)
    count = (length - 1) // k + 1
    # The 1e-8 guards the ceil against a quotient that is an integer up to rounding; kept so
    # the grid is the reference's to the pixel.
    step = k if count == 1 else math.ceil((length - k) / (count - 1) - 1e-8)
    starts: list[int] = []
    i = 0
    while True:
        if i + k >= length:  # last window: flush with the end of the map
            starts.append(length - k)
            return starts
        starts.append(i)
        i += step


def window_grid(h: int, w: int, window: tuple[int, int]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Row-major window origins and the (clipped) window size for an ``h x w`` map."""
    k1, k2 = min(h, window[0]), min(w, window[1])
    origins = [(i, j) for i in window_starts(h, k1) for j in window_starts(w, k2)]
    return origins, (k1, k2)


def windowed_attend(attend: Attend, q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int]) -> Tensor:
    """Run ``attend`` on overlapping windows of ``q, k, v`` (``B x C x H x W``) and average.

    ``attend`` maps ``N x C x k1 x k2`` windows to ``N x C x k1 x k2``. The output has the
    channels of ``attend``'s output and the input's ``H x W``.
    """
    b, _, h, w = q.shape
    origins, (k1, k2) = window_grid(h, w, window)
    n = len(origins)

    def cut(t: Tensor) -> Tensor:
        # (n, B, C, k1, k2) -> (n·B, C, k1, k2): window-major, the reference's order for B=1.
        parts = [t[:, :, i:i + k1, j:j + k2] for i, j in origins]
        return torch.stack(parts, dim=0).flatten(0, 1)

    out = attend(cut(q), cut(k), cut(v))
    out = out.view(n, b, -1, k1, k2)
    acc = out.new_zeros(b, out.shape[2], h, w)
    count = out.new_zeros(1, 1, h, w)
    for idx, (i, j) in enumerate(origins):
        acc[:, :, i:i + k1, j:j + k2] += out[idx]
        count[:, :, i:i + k1, j:j + k2] += 1.0
    return acc / count


def _segments(length: int, window: int) -> tuple[list[int], list[tuple[int, int]], list[list[int]]]:
    """Window starts along one axis, the segments cut by all window edges, and for each
    segment the indices of the windows that cover it."""
    k = min(length, window)
    starts = window_starts(length, k)
    cuts = sorted({0, length, *starts, *(s + k for s in starts)})
    segs = list(zip(cuts[:-1], cuts[1:]))
    cover = [[i for i, s in enumerate(starts) if s <= a and b <= s + k] for a, b in segs]
    return starts, segs, cover


def region_windowed_attend(q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int],
                           num_heads: int, temperature: Tensor) -> Tensor:
    """MDTA's windowed (TLC) attention from per-region statistics (see the module docstring).

    ``q, k, v``: ``B x C x H x W`` (views of a channels-last tensor cost no copies); returns a
    channels-last ``B x C x H x W``. Same maths as :func:`windowed_attend` with MDTA's attention.
    """
    b, c, h, w = q.shape
    d = c // num_heads
    row_starts, row_segs, row_cover = _segments(h, window[0])
    col_starts, col_segs, col_cover = _segments(w, window[1])
    regions = [(i, j) for i in range(len(row_segs)) for j in range(len(col_segs))]

    def tokens(t: Tensor, i: int, j: int) -> Tensor:  # B x heads x n x d
        (i0, i1), (j0, j1) = row_segs[i], col_segs[j]
        part = t.permute(0, 2, 3, 1)[:, i0:i1, j0:j1, :]
        return part.reshape(b, -1, num_heads, d).transpose(1, 2)

    stats = {}
    for i, j in regions:
        qt, kt = tokens(q, i, j), tokens(k, i, j)
        stats[i, j] = (qt.transpose(-2, -1) @ kt, qt.square().sum(-2), kt.square().sum(-2))
    eps = 1e-12  # F.normalize's
    attn = {}
    for a in range(len(row_starts)):
        for bb in range(len(col_starts)):
            inside = [r for r in regions if a in row_cover[r[0]] and bb in col_cover[r[1]]]
            gram = sum(stats[r][0] for r in inside)
            nq = sum(stats[r][1] for r in inside).sqrt().clamp_min(eps)  # type: ignore[union-attr]
            nk = sum(stats[r][2] for r in inside).sqrt().clamp_min(eps)  # type: ignore[union-attr]
            attn[a, bb] = (gram / (nq.unsqueeze(-1) * nk.unsqueeze(-2)) * temperature).softmax(-1)
    rows = []
    for i in range(len(row_segs)):
        cols = []
        for j in range(len(col_segs)):
            covering = [(a, bb) for a in row_cover[i] for bb in col_cover[j]]
            mean = sum(attn[wd] for wd in covering) / len(covering)
            out = tokens(v, i, j) @ mean.transpose(-2, -1)  # type: ignore[union-attr]
            (i0, i1), (j0, j1) = row_segs[i], col_segs[j]
            cols.append(out.transpose(1, 2).reshape(b, i1 - i0, j1 - j0, c))
        rows.append(torch.cat(cols, dim=2))
    return torch.cat(rows, dim=1).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class TLC:
    """TLC settings of one attention layer.

    ``train_hw``: the feature-map size this layer saw in training; ``window``: window size at
    test time (the reference uses 1.5x ``train_hw``); ``mode``: see the module docstring.
    """

    train_hw: tuple[int, int]
    window: tuple[int, int]
    mode: TLCMode = "auto"

    def __post_init__(self) -> None:
        if self.mode not in (True, False, "auto"):
            raise ValueError(f"tlc must be True, False or 'auto', got {self.mode!r}")
        if min(*self.train_hw, *self.window) < 1:
            raise ValueError(f"TLC sizes must be positive, got train {self.train_hw}, window {self.window}")

    def applies(self, h: int, w: int, training: bool) -> bool:
        """Whether an ``h x w`` map is attended in windows."""
        if self.mode is False or (self.mode == "auto" and training):
            return False
        return (h, w) != self.train_hw

    def __call__(self, attend: Attend, q: Tensor, k: Tensor, v: Tensor, training: bool) -> Tensor:
        h, w = q.shape[-2:]
        if not self.applies(h, w, training):
            return attend(q, k, v)
        return windowed_attend(attend, q, k, v, self.window)


class TLCAttentionMixin:
    """Mixin for :class:`MDTA` subclasses: ``attend`` goes through ``self.tlc`` when set.

    Put it first in the bases (``class X(TLCAttentionMixin, MDTA)``) so its ``attend`` wraps
    the inherited one. ``tlc = None`` keeps global attention.
    """

    tlc: TLC | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        base: Attend = super().attend  # type: ignore[misc]
        if self.tlc is None:
            return base(q, k, v)
        if (is_fast(self, "attention")  # type: ignore[arg-type]
                and type(self.tlc) is TLC  # a subclass (e.g. export's) keeps its own rule
                and self.tlc.applies(q.shape[-2], q.shape[-1], self.training)):  # type: ignore[attr-defined]
            return region_windowed_attend(q, k, v, self.tlc.window,
                                          self.num_heads, self.temperature)  # type: ignore[attr-defined]
        return self.tlc(base, q, k, v, self.training)  # type: ignore[attr-defined]


class LocalMDTA(TLCAttentionMixin, MDTA):
    """MDTA with the test-time local converter (keys identical to :class:`MDTA`)."""
