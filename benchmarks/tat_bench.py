"""TAT speed, memory and size, optionally against a second architecture measured in the same run.

    python benchmarks/tat_bench.py --compare restormer
    python benchmarks/tat_bench.py --steps 1 --warmup 1 --infer-batches 1   # quick CPU run

Prints, per architecture:

* size: parameter count, and MACs of one forward at 1 x C x 128² counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, including
  the attention products and the per-sample depthwise convs; norms and activations are not
  counted). thop, which only hooks modules, misses the attention products and the functional
  dynamic convs, so its figure for TAT is lower;
* training: forward + backward + AdamW step at ``--batch`` x C x ``--size``² (after warm-up):
  median and minimum ms/step, images/s (from the median), peak memory;
* inference at ``--infer-size``² (eval, no grad; TAT uses TLC windowed attention since the map
  differs from its 128² training size) for each batch in ``--infer-batches``.

**Implementation paths and the authors' class** (``--impl`` and/or ``--reference-repo DIR``):

    python benchmarks/tat_bench.py --impl fast reference --reference-repo DIR --threads 2

measures, in one process tree, each variant of ``--impl`` (``fast``, ``reference``, and
``fast+ckpt`` = fast with ``checkpoint_blocks``, ``fast-<piece>`` = fast with one piece of
``medrestore.models.layers.restormer.FAST_PIECES`` off, ``+compile`` suffix = ``torch.compile``
with eager fallback) and, with ``--reference-repo`` (a checkout of Yaziwel/TAT), the authors'
``TAT`` class: training steps at ``--train-batches`` x C x ``--size``², inference at
``--infer-size``² (batch 1: the authors' TLC asserts it), peak memory, and every variant's
ratio to the authors' class (or to ``reference`` without a repo), medians of ``--steps`` steps.
On CUDA the fast variants run with bfloat16 autocast, ``torch.compile`` and channels-last and the
table adds MFU = 3 x forward FLOPs (``torch.utils.flop_counter``) / step time / ``--peak-tflops``.
(The CUDA branch is written for GPUs; the numbers in the README come from the CPU.)

Peak memory is the CUDA allocator peak on GPU; on CPU it is the growth of the process's max
RSS, model included. Every measurement runs in its own fresh process, so CPU peaks do not
hide behind an earlier, larger one. Ratios (``arch / compare``) are taken within the run, so
they do not depend on the machine's absolute speed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

#: family -> (image channels, optimiser) of its recipe
FAMILY_SETUP = {"tat": (1, "adamw"), "datprl": (3, "adam"), "restormer": (3, "adamw")}


def _peak_mib(device: str, rss0: int) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Any, warmup: int, steps: int, device: str) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls (CUDA peak reset after them)."""
    import torch

    for _ in range(warmup):
        step()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _build(arch: str, channels: int, device: str):
    from medrestore.registry import build_arch

    return build_arch(arch, in_channels=channels, out_channels=channels).to(device)


def build_variant(arch: str, variant: str, channels: int, device: str,
                  repo: str | None = None) -> Any:
    """``authors`` (their class from ``repo``), ``reference``, ``fast``, ``fast+ckpt``,
    ``fast-<piece>`` (one fast piece off), optionally ending in ``+compile``."""
    from medrestore.models.layers import restormer as layers
    from medrestore.registry import build_arch

    base = variant.removesuffix("+compile")
    family = arch.removesuffix("_tiny")
    if base == "authors":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import reference_check

        if family == "tat":
            net = reference_check.authors_tat(Path(repo))(inp_channels=channels,
                                                          out_channels=channels)
        else:
            net = reference_check.authors_datprl(Path(repo))(img_channel=channels)
    else:
        impl = "reference" if base == "reference" else "fast"
        for piece in base.split("-")[1:]:
            layers.FAST_PIECES[piece] = False  # this process only (fresh per measurement)
        net = build_arch(arch, in_channels=channels, out_channels=channels, impl=impl,
                         checkpoint_blocks=base.startswith("fast+ckpt"))
    net = net.to(device)
    if variant.endswith("+compile"):
        net = _compiled(net)
    return net


def _compiled(net: Any) -> Any:
    """``torch.compile`` with the same guard as ``model.compile`` in training: a failure at
    compile or first call falls back to eager with a warning."""
    import torch

    try:
        compiled = torch.compile(net)
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); eager")
        return net

    def call(*args: Any) -> Any:
        nonlocal compiled
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); eager")
            compiled = net
            return net(*args)

    call.parameters = net.parameters  # type: ignore[attr-defined]
    call.train, call.eval = net.train, net.eval  # type: ignore[attr-defined]
    return call


def _variant_run(job: dict[str, Any]) -> dict[str, Any]:
    """One variant, one measurement, in a fresh process (spawned)."""
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device, kind, c = job["device"], job["kind"], job["channels"]
    gpu = device.startswith("cuda")
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net = build_variant(job["arch"], job["variant"], c, device, job.get("repo"))
    fast_gpu = gpu and job["variant"].startswith("fast")
    if fast_gpu and not job["variant"].endswith("+compile"):
        net = _compiled(net)  # on a GPU the fast path is measured compiled
    x = torch.rand(job["batch"], c, job["size"], job["size"], device=device)
    if fast_gpu:  # bf16-mixed + channels-last: what the fast path is meant for on a GPU
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=fast_gpu)
    params = list(net.parameters())
    result: dict[str, Any] = {"params": sum(p.numel() for p in params)}
    if job.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.train(kind == "train")
            net(x)
        result["fwd_flops"] = float(counter.get_total_flops())

    def pred(out: Any) -> Any:
        return out[0] if isinstance(out, tuple) else out

    if kind == "train":
        net.train()
        opt_cls = torch.optim.AdamW if job["optimizer"] == "adamw" else torch.optim.Adam
        opt = opt_cls(params, lr=2e-4, betas=(0.9, 0.99))
        y = torch.rand_like(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast:
                out = pred(net(x))
            (out.float() - y).abs().mean().backward()
            opt.step()
    else:
        net.eval()

        def step() -> None:
            with torch.no_grad(), autocast:
                net(x)

    times = time_steps(step, job["warmup"], job["steps"], device)
    result.update(ms=1000 * statistics.median(times), min_ms=1000 * min(times),
                  peak_mib=_peak_mib(device, rss0))
    return result


def _measure_variant(job: dict[str, Any]) -> dict[str, Any] | None:
    """:func:`_variant_run` in a fresh process (see :func:`_in_fresh_process`)."""
    return _in_fresh_process(_variant_run, job, f"{job['variant']} {job['kind']}")


def _default_peak_tflops() -> float | None:
    """Dense bf16 peak of known GPUs (MFU denominator); ``None`` elsewhere."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0)):
        if key in name:
            return tflops
    return None


def compare_impls(arch: str, variants: list[str], repo: str | None, train_batches: list[int],
                  size: int, infer_size: int, steps: int, warmup: int, threads: int,
                  device: str, peak_tflops: float | None = None) -> dict[tuple, dict]:
    """Measure ``variants`` (and the authors' class when ``repo`` is given) in fresh processes
    of one run and print times, peaks and ratios to the baseline (authors', else reference)."""
    family = arch.removesuffix("_tiny")
    channels, optimizer = FAMILY_SETUP[family]
    names = list(variants) + (["authors"] if repo else [])
    baseline = "authors" if repo else ("reference" if "reference" in names else names[0])
    gpu = device.startswith("cuda")
    peak_tflops = peak_tflops or (_default_peak_tflops() if gpu else None)
    jobs = [("train", b, size) for b in train_batches] + ([("infer", 1, infer_size)]
                                                           if infer_size else [])
    rows: dict[tuple, dict] = {}
    for kind, batch, sz in jobs:
        for name in names:
            job = dict(arch=arch, variant=name, repo=repo, channels=channels,
                       optimizer=optimizer, kind=kind, batch=batch, size=sz, device=device,
                       threads=threads, steps=steps, warmup=warmup,
                       count_flops=bool(peak_tflops) and kind == "train")
            r = _measure_variant(job)
            if r is None:
                continue
            rows[(kind, batch, name)] = r
            print(f"  {family} {name:>18s} {kind} {batch}x{channels}x{sz}²: "
                  f"{r['ms']:10.1f} ms (min {r['min_ms']:.1f})  peak {r['peak_mib']:8.1f} MiB",
                  flush=True)
    print(f"\n{family}: median of {steps} steps after {warmup} warm-up, device={device}, "
          f"threads={threads or 'default'}; ratios = {baseline} / variant (time: speed-up) and "
          f"variant / {baseline} (memory)")
    head = f"| case | {' | '.join(names)} |"
    print(head)
    print("|" + " --- |" * (len(names) + 1))
    for kind, batch, sz in jobs:
        base = rows.get((kind, batch, baseline))
        cells, mem = [], []
        for name in names:
            r = rows.get((kind, batch, name))
            if r is None:
                cells.append("—"), mem.append("—")
                continue
            speed = f" ({base['ms'] / r['ms']:.2f}x)" if base else ""
            cells.append(f"{r['ms'] / 1000:.2f} s{speed}")
            ratio = f" ({r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x)" if base else ""
            mem.append(f"{r['peak_mib']:.0f} MiB{ratio}")
            if peak_tflops and "fwd_flops" in r:
                mfu = 3 * r["fwd_flops"] / (r["ms"] / 1000) / (peak_tflops * 1e12)
                cells[-1] += f", MFU {100 * mfu:.1f}%"
        label = f"{kind} {batch}x{channels}x{sz}²"
        print(f"| {label} time | {' | '.join(cells)} |")
        print(f"| {label} peak | {' | '.join(mem)} |")
    return rows


def _run(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process (spawned)."""
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device, kind = job["device"], job["kind"]
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net = _build(job["arch"], job["channels"], device)
    x = torch.rand(job["batch"], job["channels"], job["size"], job["size"], device=device)
    result: dict[str, Any] = {"params": sum(p.numel() for p in net.parameters())}

    if kind == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        net.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        by_op = {str(op).removeprefix("aten."): n / 2
                 for op, n in counter.get_flop_counts().get("Global", {}).items()}
        result.update(macs=counter.get_total_flops() / 2, macs_by_op=by_op)
        return result

    if kind == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=0.01)
        y = torch.rand_like(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            (net(x) - y).abs().mean().backward()
            opt.step()
    else:
        net.eval()

        def step() -> None:
            with torch.no_grad():
                net(x)

    times = time_steps(step, job["warmup"], job["steps"], device)
    # Median per step; the minimum is the better estimate on a machine shared with other jobs.
    dt = statistics.median(times)
    result.update(ms=1000 * dt, min_ms=1000 * min(times), images_per_s=job["batch"] / dt,
                  peak_mib=_peak_mib(device, rss0))
    return result


def _in_fresh_process(fn: Any, job: dict[str, Any], label: str) -> dict[str, Any] | None:
    """``fn(job)`` in a fresh spawned process, so CPU memory peaks are its own; ``None`` (and
    a line saying why) when the process dies (e.g. out of memory) or the job raises."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, job).result()
        except BrokenProcessPool:
            print(f"[killed] {label} (out of memory?)", flush=True)
            return None
        except Exception as err:  # noqa: BLE001 - a variant that cannot run is reported
            print(f"[failed] {label}: {type(err).__name__}: {err}", flush=True)
            return None


def measure(job: dict[str, Any]) -> dict[str, Any] | None:
    """Run ``job`` in a fresh process; ``None`` when that process dies (e.g. out of memory)."""
    return _in_fresh_process(_run, job, f"{job['arch']} {job['kind']} batch {job['batch']} at "
                                        f"{job['size']}²")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tat")
    p.add_argument("--compare", default=None, help="second arch (e.g. restormer), same run")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--infer-size", type=int, default=512, help="0 skips inference (--impl mode)")
    p.add_argument("--infer-batches", type=int, nargs="*", default=[1, 2])
    p.add_argument("--infer-steps", type=int, default=1)
    p.add_argument("--flops-size", type=int, default=128, help="0 skips the FLOP count")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default=None)
    p.add_argument("--impl", nargs="*", default=None,
                   help="variants to compare: fast, reference, fast+ckpt, fast-<piece>, ...+compile")
    p.add_argument("--reference-repo", default=None,
                   help="checkout of the authors' repository (Yaziwel/TAT for tat): adds their class")
    p.add_argument("--train-batches", type=int, nargs="*", default=[1, 4])
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU peak for MFU (CUDA only)")
    a = p.parse_args()
    if a.impl is not None or a.reference_repo:
        import torch

        if a.reference_repo and not Path(a.reference_repo).is_dir():
            raise SystemExit(f"--reference-repo={a.reference_repo}: not a folder")
        compare_impls(a.arch, a.impl or ["fast", "reference"],
                      a.reference_repo, a.train_batches, a.size, a.infer_size, a.steps,
                      a.warmup, a.threads,
                      a.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                      a.peak_tflops)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device} threads={a.threads or torch.get_num_threads()} "
          f"torch={torch.__version__} channels={a.channels}", flush=True)
    archs = [a.arch] + ([a.compare] if a.compare else [])
    base = dict(device=device, channels=a.channels, threads=a.threads)
    jobs = [("train", a.batch, a.size, a.steps, a.warmup)]
    jobs += [(f"infer{b}", b, a.infer_size, a.infer_steps, 1) for b in a.infer_batches]
    rows: dict[str, dict[str, Any]] = {}
    for arch in archs:
        r: dict[str, Any] = rows.setdefault(arch, {})
        if a.flops_size:
            f = measure({**base, "arch": arch, "kind": "flops", "batch": 1, "size": a.flops_size})
            if f is not None:
                r["flops"] = f
                ops = ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in
                                sorted(f["macs_by_op"].items(), key=lambda kv: -kv[1]))
                print(f"{arch}: params={f['params']:,}  MACs at 1x{a.channels}x{a.flops_size}²: "
                      f"{f['macs'] / 1e9:.2f} G ({ops})", flush=True)
        for key, batch, size, steps, warmup in jobs:
            kind = "train" if key == "train" else "infer"
            res = measure({**base, "arch": arch, "kind": kind, "batch": batch, "size": size,
                           "steps": steps, "warmup": warmup})
            if res is None:
                continue
            r[key] = res
            unit = "step" if kind == "train" else "batch"
            print(f"{arch}: {kind} {batch}x{a.channels}x{size}²: {res['ms']:10.1f} ms/{unit} "
                  f"(min {res['min_ms']:.1f})  {res['images_per_s']:8.3f} img/s  "
                  f"peak={res['peak_mib']:9.1f} MiB", flush=True)
    if a.compare:
        x, y = rows[a.arch], rows[a.compare]
        print(f"ratios {a.arch}/{a.compare}:")
        if "flops" in x and "flops" in y:
            print(f"  params {x['flops']['params'] / y['flops']['params']:.2f}x  "
                  f"MACs {x['flops']['macs'] / y['flops']['macs']:.2f}x")
        for key, *_ in jobs:
            if key in x and key in y:
                print(f"  {key}: time {x[key]['ms'] / y[key]['ms']:.2f}x  peak memory "
                      f"{x[key]['peak_mib'] / max(y[key]['peak_mib'], 1e-9):.2f}x")

if __name__ == "__main__":
    main()
