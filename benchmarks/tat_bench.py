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
import time
from typing import Any


def _peak_mib(device: str, rss0: int) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _build(arch: str, channels: int, device: str):
    from medrestore.registry import build_arch

    return build_arch(arch, in_channels=channels, out_channels=channels).to(device)


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

    for _ in range(job["warmup"]):
        step()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(job["steps"]):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    # Median per step; the minimum is the better estimate on a machine shared with other jobs.
    dt = statistics.median(times)
    result.update(ms=1000 * dt, min_ms=1000 * min(times), images_per_s=job["batch"] / dt,
                  peak_mib=_peak_mib(device, rss0))
    return result


def measure(job: dict[str, Any]) -> dict[str, Any] | None:
    """Run ``job`` in a fresh process; ``None`` when that process dies (e.g. out of memory)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_run, job).result()
        except BrokenProcessPool:
            print(f"[killed] {job['arch']} {job['kind']} batch {job['batch']} at {job['size']}² "
                  f"(out of memory?)", flush=True)
            return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="tat")
    p.add_argument("--compare", default=None, help="second arch (e.g. restormer), same run")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--infer-size", type=int, default=512)
    p.add_argument("--infer-batches", type=int, nargs="*", default=[1, 2])
    p.add_argument("--infer-steps", type=int, default=1)
    p.add_argument("--flops-size", type=int, default=128, help="0 skips the FLOP count")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default=None)
    a = p.parse_args()
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
