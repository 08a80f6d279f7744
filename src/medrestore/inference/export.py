"""Export a trained checkpoint to ONNX or TorchScript, checked against eager execution.

    from medrestore.inference.export import export_checkpoint
    info = export_checkpoint("logs/demo/runs/<run>/checkpoints/last.ckpt", format="onnx")

What is exported is the restoration network as the module runs it at test time
(``module.eval()``; the EMA copy when the module evaluates with EMA), on a normalised
``B×C×H×W`` float32 input in [0, 1] in the model's channel layout; the output has the same
layout. Batch, height and width are dynamic axes (the networks pad internally to their size
multiple and crop back; ``dynamic_batch=False`` fixes the batch at 1).

**How.** Both formats come from one ``torch.jit.trace`` of the network (the ONNX file through
the TorchScript-based exporter). A trace records shape arithmetic on tensors, so sizes computed
from ``x.shape`` stay symbolic, but Python branches and loops are frozen at the traced size.
Two parts of our networks have such size-dependent Python control flow, and the export runs a
copy of the network in which they are replaced by equivalents written with tensor operations
(the weights and the eager module are untouched):

* TAT's test-time local converter (:mod:`medrestore.models.layers.tlc`): the number and origins
  of the attention windows depend on the feature-map size. The replacement computes the same
  window grid with tensor arithmetic, cuts windows with gathers and folds them back with
  scatter-adds. It always runs the windowed path when TLC is on in eval mode: on a map no larger
  than a window that is one window, i.e. global attention — what eager runs at the training
  size — so it is exact for every size provided windows are at least the training size
  (``tlc_window_scale >= 1``; refused otherwise).
* TAT's per-image depthwise convolution (:mod:`medrestore.models.layers.dynamic`) groups
  ``B·C`` channels, and a convolution's groups and kernel shape are constants in a graph; the
  replacement sums the nine shifted products, which takes any batch.
* DATPRL-IR's query projectors pool to fixed 8×8 / 4×4 / 2×2 grids
  (``AdaptiveAvgPool2d``), which ONNX cannot express for a size unknown at export time; the
  replacement averages with per-size pooling matrices (the same bins as PyTorch). Its prompt
  pools (scores, top-k, weighted sum) trace as they are.

The replacements equal eager execution up to float summation order (measured ≤ 1e-6 on the
tiny models). DATPRL-IR's top-k prompt selection could in principle flip on a near tie between
two prompt scores; the parity check would then fail rather than pass a different network.

Also frozen at the traced size is the "no padding needed" shortcut: the trace is taken at a
size that needs padding on both axes, so the graph always pads (a pad of zero is a no-op).
Inputs smaller than the size multiple are refused by the exported graph's reflect padding
(eager falls back to replicate there); the sidecar records ``min_size``.

**Parity.** The written file is run (ONNX: ``onnxruntime`` on the CPU; TorchScript:
``torch.jit.load``) at each of ``sizes`` and compared with the eager module; the largest
absolute difference must be ``<= atol``. On success the file is moved to ``out``; on a failure
it is kept as ``<out>.failed`` (with ``<out>.failed.json``) for inspection — never under the
good name — and :class:`ExportError` names the size and the difference.

**Sidecar** ``<out>.json``: arch, channels, input/output names, dynamic axes, the training
data's normalisation windows (``None`` for checkpoints written before they were recorded),
parity results, versions (torch, onnx, onnxruntime), opset.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError, MedrestoreError

__all__ = ["ExportError", "FORMATS", "SUFFIXES", "export_checkpoint", "export_module",
           "default_output", "parity_check", "traceable_copy"]

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME = "lq"
OUTPUT_NAME = "restored"
#: 64² needs no padding, 75×90 is padded on both axes (the networks pad to multiples of 8)
DEFAULT_SIZES = ((64, 64), (75, 90))
#: a size not a multiple of 2, 4 or 8 on either axis, so the traced graph takes the padding path
DEFAULT_TRACE_SIZE = (61, 75)


class ExportError(MedrestoreError):
    """An export that cannot be made or failed its parity check (one line)."""


# ------------------------------------------------------------------ traceable replacements
def _window_index(length: Tensor | int, window: int, device: Any = None) -> Tensor:
    """``m × k`` pixel indices of the TLC windows along one axis, from tensor arithmetic.

    Same grid as :func:`medrestore.models.layers.tlc.window_starts`: ``k = min(n, window)``,
    ``m = ⌈n / k⌉``, stride ``s = ⌈(n − k) / (m − 1)⌉`` and starts ``min(i·s, n − k)`` (equal
    to the reference loop for every ``n`` and window; the stride of a single window never
    matters). Under a trace ``length`` is a 0-d tensor, so the grid follows the input size."""
    n = torch.as_tensor(length, device=device)
    k = torch.clamp(n, max=window)
    m = torch.div(n - 1, k, rounding_mode="floor") + 1
    d = torch.clamp(m - 1, min=1)
    step = torch.div(n - k + d - 1, d, rounding_mode="floor")
    starts = torch.minimum(torch.arange(m, device=device) * step, n - k)
    return starts[:, None] + torch.arange(k, device=device)[None, :]


def traceable_windowed_attend(attend: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor,
                              k: Tensor, v: Tensor, window: tuple[int, int]) -> Tensor:
    """:func:`medrestore.models.layers.tlc.windowed_attend` without Python loops over windows:
    windows are gathered into the batch axis (window-major, row-major, as the reference) and
    their outputs scatter-added back; the coverage count is the product of the per-axis
    counts. Equal to the eager result up to float summation order."""
    b, h, w = q.shape[0], q.shape[2], q.shape[3]
    rows, cols = _window_index(h, window[0], q.device), _window_index(w, window[1], q.device)
    m1, k1 = rows.shape[0], rows.shape[1]
    m2, k2 = cols.shape[0], cols.shape[1]

    def cut(t: Tensor) -> Tensor:
        t = t.index_select(2, rows.flatten()).index_select(3, cols.flatten())
        t = t.reshape(b, t.shape[1], m1, k1, m2, k2)           # B C m1 k1 m2 k2
        return t.permute(2, 4, 0, 1, 3, 5).reshape(m1 * m2 * b, t.shape[1], k1, k2)

    out = attend(cut(q), cut(k), cut(v))
    co = out.shape[1]
    out = out.reshape(m1, m2, b, co, k1, k2).permute(2, 3, 0, 4, 1, 5)  # B C' m1 k1 m2 k2
    out = out.reshape(b, co, m1 * k1, m2 * k2)
    # scatter_add, not index_add: ONNX's index_add drops repeated indices (overlapping windows)
    r, c_ = rows.flatten(), cols.flatten()
    acc = out.new_zeros(b, co, m1 * k1, w).scatter_add(3, c_[None, None, None, :].expand_as(out), out)
    acc = out.new_zeros(b, co, h, w).scatter_add(2, r[None, None, :, None].expand_as(acc), acc)
    count_h = out.new_zeros(h).scatter_add(0, r, out.new_ones(m1 * k1))
    count_w = out.new_zeros(w).scatter_add(0, c_, out.new_ones(m2 * k2))
    return acc / (count_h[:, None] * count_w[None, :])


def _traceable_tlc_class() -> type:
    from medrestore.models.layers.tlc import TLC

    @dataclasses.dataclass(frozen=True)
    class TraceableTLC(TLC):
        """TLC whose size test and window loop are tensor operations (see the module doc)."""

        def __call__(self, attend: Any, q: Tensor, k: Tensor, v: Tensor, training: bool) -> Tensor:
            if self.mode is False or (self.mode == "auto" and training):
                return attend(q, k, v)
            return traceable_windowed_attend(attend, q, k, v, self.window)

    return TraceableTLC


def _pool_matrix(length: Tensor | int, bins: int, like: Tensor) -> Tensor:
    """``bins × length`` averaging matrix of ``AdaptiveAvgPool`` along one axis: bin ``i``
    averages ``[⌊i·n/bins⌋, ⌈(i+1)·n/bins⌉)``, PyTorch's bins."""
    n = torch.as_tensor(length, device=like.device)
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    y = torch.arange(n, device=like.device)
    inside = (y[None, :] >= start[:, None]) & (y[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class TraceableAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` as two matrix products, so its bins follow the input size in a
    trace (ONNX has no adaptive pooling to a fixed grid from an unknown size)."""

    def __init__(self, output_size: Any) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if any(s is None for s in size):
            raise ExportError(f"AdaptiveAvgPool2d({output_size}) keeps an input axis; not supported")
        self.bins = (int(size[0]), int(size[1]))

    def forward(self, x: Tensor) -> Tensor:
        ph = _pool_matrix(x.shape[-2], self.bins[0], x)
        pw = _pool_matrix(x.shape[-1], self.bins[1], x)
        return ph @ x @ pw.transpose(0, 1)


def traceable_depthwise_conv2d(x: Tensor, weight: Tensor) -> Tensor:
    """:func:`medrestore.models.layers.dynamic.dynamic_depthwise_conv2d` as a sum of shifted
    products: its ``groups = B·C`` convolution needs the batch fixed and a kernel of known
    shape in a graph; this form takes any batch. Equal up to float summation order."""
    if weight.dim() == 5:
        weight = weight.flatten(1, 2)
    kh, kw = int(weight.shape[-2]), int(weight.shape[-1])  # parameter shapes: constants
    h, w = x.shape[-2], x.shape[-1]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = None
    for i in range(kh):
        for j in range(kw):
            term = xp[:, :, i:i + h, j:j + w] * weight[:, :, i:i + 1, j:j + 1]
            out = term if out is None else out + term
    return out


def _dwconv_method(self: Any, x: Tensor, generated: Tensor | None = None) -> Tensor:
    from medrestore.models.layers.dynamic import modulated_kernel

    kernel = (self.dw_kernel if generated is None
              else modulated_kernel(self.dw_kernel, self.lambda_dw, generated))
    return traceable_depthwise_conv2d(x, kernel)


def _traceable_class(cls: type, method: str) -> type:
    """``cls`` with its per-sample depthwise conv ``method`` replaced (module docstring)."""
    return type(f"Traceable{cls.__name__}", (cls,), {method: _dwconv_method,
                                                    "__module__": __name__})


def traceable_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (same weights) whose size-dependent Python control flow is replaced
    by tensor operations (module docstring); ``net`` itself is not changed."""
    from medrestore.models.layers.tlc import TLCAttentionMixin

    from medrestore.models.layers.dynamic import AdaptiveGDFN, AdaptiveMDTA

    tlc_cls = _traceable_tlc_class()
    net = copy.deepcopy(net)
    swapped: dict[type, type] = {}
    for name, m in list(net.named_modules()):
        for base, method in ((AdaptiveMDTA, "apply_qkv_dwconv"), (AdaptiveGDFN, "apply_dwconv")):
            if isinstance(m, base):  # same attributes, only the method differs
                cls = type(m)
                m.__class__ = swapped.setdefault(cls, _traceable_class(cls, method))
        if isinstance(m, TLCAttentionMixin) and m.tlc is not None:
            t = m.tlc
            if t.mode is not False and (t.window[0] < t.train_hw[0] or t.window[1] < t.train_hw[1]):
                raise ExportError(f"{name}: TLC window {t.window} is smaller than its training "
                                  f"size {t.train_hw} (tlc_window_scale < 1): eager global "
                                  "attention at the training size has no traceable equivalent; "
                                  "export a model with model.net.tlc=false or tlc_window_scale >= 1")
            m.tlc = tlc_cls(**{f.name: getattr(t, f.name) for f in dataclasses.fields(t)})
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(m, child_name, TraceableAdaptiveAvgPool2d(child.output_size))
    return net


class _Restore(nn.Module):
    """The network's prediction only (DATPRL also returns its prompt selections)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, lq: Tensor) -> Tensor:
        out = self.net(lq)
        return out[0] if isinstance(out, tuple) else out


# ------------------------------------------------------------------ options
def _sizes(sizes: Any, option: str = "sizes") -> list[tuple[int, int]]:
    """``[[H, W], ...]`` (or ``[S, ...]`` for squares) as int pairs, at least one."""
    try:
        out = []
        for s in sizes:
            pair = (s, s) if isinstance(s, int) else tuple(s)
            if len(pair) != 2 or any(isinstance(v, bool) or int(v) != v or int(v) < 1 for v in pair):
                raise ValueError
            out.append((int(pair[0]), int(pair[1])))
    except (TypeError, ValueError):
        raise ConfigError(f"{option}={sizes!r}; expected a list of [H, W] pairs of positive "
                          "integers, e.g. [[64, 64], [80, 96]]") from None
    if not out:
        raise ConfigError(f"{option}=[]; expected at least one [H, W] size")
    return out


def default_output(ckpt_path: str | os.PathLike, format: str) -> Path:
    """``<checkpoint folder>/<checkpoint stem><suffix>``: beside the checkpoint it came from."""
    p = Path(ckpt_path)
    return p.with_name(p.stem + SUFFIXES[format])


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; expected one of {', '.join(FORMATS)}")
    return format


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # a trace warns about every frozen Python branch; the parity check is what decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ------------------------------------------------------------------ export + parity
def _write(wrapper: nn.Module, example: Tensor, path: Path, format: str, opset: int,
           dynamic_batch: bool) -> None:
    with _quiet(), torch.no_grad():
        if format == "torchscript":
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(path))
            return
        axes = {2: "height", 3: "width"}
        if dynamic_batch:
            axes = {0: "batch", **axes}
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: dict(axes)},
                          do_constant_folding=True)


def _runner(path: Path, format: str) -> Callable[[Tensor], Tensor]:
    if format == "torchscript":
        with _quiet():
            loaded = torch.jit.load(str(path), map_location="cpu")

        def run(x: Tensor) -> Tensor:
            with torch.no_grad():
                return loaded(x.cpu())

        return run
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0])

    return run_onnx


def parity_check(path: str | os.PathLike, format: str, reference: Callable[[Tensor], Tensor],
                 channels: int, sizes: Sequence[tuple[int, int]], batch: int = 1,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Run the written file and ``reference`` (eager) on the same random ``[0, 1]`` inputs at
    each size: ``[{size, batch, max_abs_diff}]`` (``inf`` for a wrong shape or a non-finite
    output; a run that raises is reported with its error)."""
    run = _runner(Path(path), _check_format(format))
    gen = torch.Generator().manual_seed(seed)
    results = []
    for h, w in sizes:
        x = torch.rand(batch, channels, h, w, generator=gen)
        with torch.no_grad():
            ref = reference(x).float().cpu()
        row: dict[str, Any] = {"size": [h, w], "batch": batch}
        try:
            got = run(x).float()
        except Exception as exc:  # noqa: BLE001 - a runtime that rejects the size is a failure
            row.update(max_abs_diff=float("inf"),
                       error=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
            results.append(row)
            continue
        if got.shape != ref.shape:
            row.update(max_abs_diff=float("inf"), error=f"output shape {tuple(got.shape)}, "
                       f"expected {tuple(ref.shape)}")
        else:
            diff = (got - ref).abs().max().item()
            row["max_abs_diff"] = diff if torch.isfinite(got).all() else float("inf")
        results.append(row)
    return results


def _versions(format: str) -> dict[str, str]:
    out = {"torch": torch.__version__}
    if format == "onnx":
        import onnx
        import onnxruntime

        out.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return out


def _check_options(format: str, sizes: Any, trace_size: Any, atol: Any, opset: Any,
                   out: Path, overwrite: bool) -> tuple[list[tuple[int, int]], tuple[int, int], float]:
    """One-line errors for every option, and the refusal to replace existing outputs, before
    anything slow runs."""
    _check_format(format)
    sizes = _sizes(sizes)
    (th, tw), = _sizes([trace_size], "trace_size")
    try:
        atol = float(atol)
    except (TypeError, ValueError):
        atol = float("nan")
    if not (atol > 0 and atol != float("inf")):
        raise ConfigError(f"atol={atol!r}; expected a positive number (e.g. 1e-4)")
    if format == "onnx":
        from torch.onnx._constants import ONNX_MAX_OPSET

        # 16: ScatterElements with reduction=add (the TLC fold); older opsets drop repeats
        if isinstance(opset, bool) or not isinstance(opset, int) or not 16 <= opset <= ONNX_MAX_OPSET:
            raise ConfigError(f"opset={opset!r}; expected an integer in [16, {ONNX_MAX_OPSET}]")
    if out.is_dir():
        raise ConfigError(f"out={out}: is a folder; expected a file name")
    for p in (out, out.with_name(out.name + ".json")):
        if p.exists() and not overwrite:
            raise ExportError(f"{p}: already exists; pass overwrite=true to replace it")
    return sizes, (th, tw), atol


def _tlc_size(net: nn.Module, sizes: Sequence[tuple[int, int]], trace: tuple[int, int],
              pad: int) -> tuple[int, int] | None:
    """A parity size whose full-resolution map has more TLC windows on both axes than the
    traced size (and at least two), when no parity size has: a graph that froze the traced
    window count or origins then fails the check. ``None`` without TLC."""
    from medrestore.models.layers.tlc import TLCAttentionMixin

    windows = [m.tlc.window for m in net.modules()
               if isinstance(m, TLCAttentionMixin) and m.tlc is not None and m.tlc.mode is not False]
    if not windows:
        return None
    win = (max(w[0] for w in windows), max(w[1] for w in windows))  # the full-resolution level

    def counts(size: Sequence[int]) -> tuple[int, int]:
        padded = [n + (-n) % pad if pad else n for n in size]
        return tuple((n - 1) // min(n, k) + 1 for n, k in zip(padded, win))  # type: ignore[return-value]

    traced = counts(trace)
    if any(all(c > max(t, 1) for c, t in zip(counts(s), traced)) for s in sizes):
        return None
    # just above t·window: one window more than traced; odd, so the input is padded too
    above = [max(t, 1) * k for t, k in zip(traced, win)]
    return above[0] + 3 + above[0] % 2, above[1] + 3 + above[1] % 2


def export_module(module: Any, out: str | os.PathLike, format: str = "onnx", *,
                  sizes: Sequence[Any] = DEFAULT_SIZES, atol: float = 1e-4, opset: int = 17,
                  overwrite: bool = False, trace_size: Sequence[int] = DEFAULT_TRACE_SIZE,
                  dynamic_batch: bool | None = None, extra: dict[str, Any] | None = None,
                  echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Export a loaded :class:`~medrestore.modules.restoration.RestorationModule` (see the
    module docstring); returns the sidecar dict (also written to ``<out>.json``)."""
    out = Path(out)
    sizes, (th, tw), atol = _check_options(format, sizes, trace_size, atol, opset, out, overwrite)
    sidecar = out.with_name(out.name + ".json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out={out}: cannot create its folder ({exc.strerror})") from None

    module = module.eval()
    net = module.active_net()
    device = next(module.parameters()).device
    pad = int(getattr(net, "pad_multiple", 0) or 0)
    if not pad:
        raise ExportError(f"{type(net).__name__}: the checkpoint sets net.pad_multiple=0, so the "
                          "network takes only multiples of 8 and its graph could not take any "
                          "H×W; re-save it with net.pad_multiple=8 (padding adds no weights)")
    if pad and (th % pad == 0 or tw % pad == 0):
        raise ConfigError(f"trace_size={[th, tw]}; expected sizes that are not multiples of the "
                          f"model's pad multiple {pad} (the trace must take the padding path)")
    small = [s for s in sizes if pad and min(s) < pad]
    if small:
        raise ConfigError(f"sizes={[list(s) for s in small]}: below the model's size multiple "
                          f"{pad} (the smallest input the exported graph takes)")
    in_ch, out_ch = int(module.in_channels), int(module.out_channels)
    tlc = getattr(net, "tlc", None)
    extra_size = _tlc_size(net, sizes, (th, tw), pad)
    if extra_size is not None:
        sizes = [*sizes, extra_size]
        if echo is not None:
            echo(f"parity also at {extra_size[0]}x{extra_size[1]}: more TLC windows than at the "
                 "traced size")
    dynamic_batch = True if dynamic_batch is None else bool(dynamic_batch)
    batch = 2 if dynamic_batch else 1  # the parity check then also covers a batch of two

    # traced on the CPU: the file must not depend on where the export ran (devices are
    # constants in a trace); ``device`` is where the eager reference runs
    wrapper = _Restore(traceable_copy(net).cpu()).eval()
    example = torch.rand(batch, in_ch, th, tw, generator=torch.Generator().manual_seed(1))
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _write(wrapper, example, partial, format, opset, dynamic_batch)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a network the tracer or exporter cannot take
        partial.unlink(missing_ok=True)
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ExportError(f"{format} export of {type(net).__name__} failed ({type(exc).__name__}: "
                          f"{first})") from exc

    def reference(x: Tensor) -> Tensor:
        return module(x.to(device))

    try:
        parity = parity_check(partial, format, reference, in_ch, sizes, batch)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    info: dict[str, Any] = {
        "format": format,
        "file": out.name,
        "arch": (module.hparams.get("net") or {}).get("name", type(net).__name__),
        "module": f"{type(module).__module__}:{type(module).__name__}",
        "in_channels": in_ch,
        "out_channels": out_ch,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "layout": "BxCxHxW float32 in [0, 1], the model's channels; output the same",
        "normalise": "x = (clip(v, low, high) - low) / (high - low) with the task's window in "
                     "'normalisation'; back: v = x * (high - low) + low",
        "dynamic_axes": {"batch": bool(dynamic_batch), "height": True, "width": True},
        "batch": None if dynamic_batch else batch,
        "min_size": pad or 1,
        "pad_multiple": pad,
        "ema": module.net_ema is not None,
        "tlc": tlc if tlc is None or isinstance(tlc, bool) else str(tlc),
        "trace_size": [th, tw],
        "atol": float(atol),
        "parity": parity,
        "opset": opset if format == "onnx" else None,
        "exporter": "torch.onnx.export(dynamo=False) of a torch.jit.trace" if format == "onnx"
                    else "torch.jit.trace",
        "versions": _versions(format),
        **(extra or {}),
    }
    bad = next((r for r in parity if not r["max_abs_diff"] <= atol), None)
    for r in parity:
        if echo is not None:
            h, w = r["size"]
            echo(f"parity {h}x{w} (batch {r['batch']}): max |Δ| = {r['max_abs_diff']:.3g}"
                 + (f" ({r['error']})" if "error" in r else ""))
    if bad is not None:
        failed = out.with_name(out.name + ".failed")
        os.replace(partial, failed)
        info["status"] = "parity_failed"
        failed.with_name(failed.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
        h, w = bad["size"]
        why = f" ({bad['error']})" if "error" in bad else ""
        raise ExportError(f"parity failed at {h}x{w}: max |Δ| = {bad['max_abs_diff']:.3g} > "
                          f"atol={atol:g}{why}; the export is kept as {failed} for inspection")
    info["status"] = "ok"
    os.replace(partial, out)
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    if echo is not None:
        echo(f"wrote {out} and {sidecar.name}")
    return info


def export_checkpoint(ckpt_path: str | os.PathLike, format: str = "onnx",
                      out: str | os.PathLike | None = None, *, sizes: Sequence[Any] = DEFAULT_SIZES,
                      atol: float = 1e-4, opset: int = 17, overwrite: bool = False,
                      device: str = "cpu", trace_size: Sequence[int] = DEFAULT_TRACE_SIZE,
                      dynamic_batch: bool | None = None,
                      echo: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Export the checkpoint ``ckpt_path`` (read with ``weights_only=True`` through
    :func:`medrestore.modules.checkpoint.load_module`) to ``out`` (default: beside the
    checkpoint, :func:`default_output`), check parity and write the sidecar JSON."""
    from medrestore.modules.checkpoint import load_module, read_module_checkpoint
    from medrestore.modules.restoration import NORMALISATION_KEY

    format = _check_format(format)
    ckpt_path = Path(ckpt_path)
    out = default_output(ckpt_path, format) if out in (None, "") else Path(out)
    _check_options(format, sizes, trace_size, atol, opset, out, overwrite)  # before the load
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r}; expected cpu, cuda or cuda:<n>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: no CUDA device is visible; use device=cpu")
    ckpt = read_module_checkpoint(ckpt_path, "ckpt_path")
    norm = ckpt.get(NORMALISATION_KEY)
    module = load_module(ckpt_path, "ckpt_path", map_location=dev, ckpt=ckpt)
    del ckpt
    extra = {"checkpoint": ckpt_path.name, "checkpoint_sha256": _sha256(ckpt_path),
             "normalisation": norm}
    if norm is None:
        extra["normalisation_note"] = ("not recorded in this checkpoint (written before "
                                       "self-describing checkpoints): use the task's default window")
    return export_module(module, out, format, sizes=sizes, atol=atol, opset=opset,
                         overwrite=overwrite, trace_size=trace_size, dynamic_batch=dynamic_batch,
                         extra=extra, echo=echo)
