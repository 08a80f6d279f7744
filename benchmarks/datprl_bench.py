"""DATPRL-IR speed and memory beside its baselines, measured in one run.

    python benchmarks/datprl_bench.py [--arch datprl] [--compare restormer tat]
        [--batch 4] [--size 128] [--infer-size 512] [--steps N] [--warmup N] [--amp]
        [--flops-only]

For each architecture (built with its registry defaults, 3 -> 3 channels):

* **training step** — forward + backward + Adam step (the DATPRL recipe's optimiser: lr 4e-4,
  β = (0.9, 0.99)) on ``--batch`` x 3 x ``--size``² with an L1 loss; images/s and peak memory;
* **inference** — one ``1 x 3 x --infer-size²`` forward in eval mode without autograd; ms per
  image and peak memory.

Beside the timings it counts forward FLOPs (``torch.utils.flop_counter`` on the meta device:
convolutions and matrix products, multiply-add = 2; no data, no time) at the training batch and
at the inference size, which gives ratios that do not depend on the machine or on other load;
``--flops-only`` prints just those. Backward passes are not counted: torch's counter ignores
``groups`` in the convolution backward formula and overcounts depthwise convolutions by the
group count (a training step is conventionally ~3x its forward).

Every measurement runs in a fresh (spawned) process, so peaks do not mask each other: on CUDA
the allocator peak of the timed steps (parameters, gradients, optimiser state and activations);
on CPU the growth of the process's max RSS from before the model was built. Ratios are
``arch / compare`` from the same run, so they do not depend on the machine's absolute speed.
Compared architectures that are not registered are listed as skipped.

``--impl`` / ``--reference-repo DIR`` (a checkout of GuangluDong0728/DATPRL-IR) switch to the
implementation comparison of ``tat_bench.py``: ours-fast / ours-reference / the authors'
``DualPromptRestormerv3``, training steps at ``--train-batches`` x 3 x ``--size``², inference at
``--infer-size``², peaks and ratios, medians of ``--steps`` steps, all in one run. ``--amp`` runs the
forward passes under bfloat16 autocast (the recipe trains with AMP on GPU).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import resource
import time
from typing import Any

DEFAULT_COMPARE = ("restormer", "tat")


def _prediction(out: Any) -> Any:
    """Architectures return a tensor or ``(pred, aux)``."""
    return out[0] if isinstance(out, tuple) else out


def _measure(kind: str, arch: str, batch: int, size: int, steps: int, warmup: int,
             device: str, amp: bool, threads: int | None) -> dict[str, Any]:
    import torch

    from medrestore.registry import build_arch

    if threads:
        torch.set_num_threads(threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    net = build_arch(arch, in_channels=3, out_channels=3).to(device)
    params = sum(p.numel() for p in net.parameters())
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                              enabled=amp)
    x = torch.rand(batch, 3, size, size, device=device)

    if kind == "train":
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=4e-4, betas=(0.9, 0.99))
        gt = torch.rand_like(x)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast:
                pred = _prediction(net(x))
            (pred.float() - gt).abs().mean().backward()
            opt.step()
    else:
        net.eval()

        def step() -> None:
            with torch.no_grad(), autocast:
                _prediction(net(x))

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    dt = (time.perf_counter() - t0) / steps
    return {"arch": arch, "kind": kind, "params": params, "s_per_step": dt,
            "images_per_s": batch / dt, "peak_mib": peak}


def _flops(arch: str, batch: int, size: int, train: bool) -> float:
    """Forward FLOPs (in train or eval mode) of one batch, counted on meta tensors."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medrestore.registry import build_arch

    with torch.device("meta"):
        net = build_arch(arch, in_channels=3, out_channels=3).train(train)
        x = torch.empty(batch, 3, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x)
    return float(counter.get_total_flops())


def _run_isolated(*args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_measure, *args).result()


def main() -> None:
    import torch

    from medrestore.registry import ARCHS

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="datprl")
    p.add_argument("--compare", nargs="*", default=list(DEFAULT_COMPARE),
                   help="architectures measured in the same run (unregistered ones skipped)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="training crop size")
    p.add_argument("--infer-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=None, help="timed steps (cuda 20, cpu 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (cuda 5, cpu 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per measurement")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs, skip the timings")
    p.add_argument("--impl", nargs="*", default=None,
                   help="variants to compare: fast, reference, fast+ckpt, fast-<piece>, ...+compile")
    p.add_argument("--reference-repo", default=None,
                   help="checkout of GuangluDong0728/DATPRL-IR: adds the authors' class")
    p.add_argument("--train-batches", type=int, nargs="*", default=[1, 4])
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU peak for MFU (CUDA only)")
    a = p.parse_args()
    if a.impl is not None or a.reference_repo:
        from pathlib import Path

        from tat_bench import compare_impls

        if a.reference_repo and not Path(a.reference_repo).is_dir():
            raise SystemExit(f"--reference-repo={a.reference_repo}: not a folder")
        compare_impls(a.arch, a.impl or ["fast", "reference"], a.reference_repo,
                      a.train_batches, a.size, a.infer_size, a.steps or 3,
                      1 if a.warmup is None else a.warmup, a.threads or 0, a.device,
                      a.peak_tflops)
        return
    gpu = a.device.startswith("cuda")
    steps = a.steps if a.steps is not None else (20 if gpu else 1)
    warmup = a.warmup if a.warmup is not None else (5 if gpu else 1)

    names = [a.arch] + [n for n in a.compare if n != a.arch and n in ARCHS]
    skipped = [n for n in a.compare if n not in ARCHS]
    print(f"device={a.device} torch={torch.__version__} amp={a.amp} steps={steps} "
          f"warmup={warmup} threads={a.threads or torch.get_num_threads()}", flush=True)
    flops = {(n, kind): _flops(n, batch, size, kind == "train") for n in names
             for kind, batch, size in (("train", a.batch, a.size), ("infer", 1, a.infer_size))}
    print(f"\nforward FLOPs (meta device): train mode at {a.batch}x3x{a.size}^2, "
          f"eval at 1x3x{a.infer_size}^2")
    for n in names:
        print(f"{n:<12} train {flops[(n, 'train')] / 1e9:9.1f} GFLOP/batch   "
              f"infer {flops[(n, 'infer')] / 1e9:9.1f} GFLOP/image")
    for other in names[1:]:
        print(f"{a.arch}/{other} FLOPs: train x"
              f"{flops[(a.arch, 'train')] / flops[(other, 'train')]:.2f}, infer x"
              f"{flops[(a.arch, 'infer')] / flops[(other, 'infer')]:.2f}")
    if skipped:
        print(f"skipped (not registered): {', '.join(skipped)}")
    if a.flops_only:
        return
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for name in names:
        for kind, batch, size in (("train", a.batch, a.size), ("infer", 1, a.infer_size)):
            try:
                r = _run_isolated(kind, name, batch, size, steps, warmup, a.device, a.amp,
                                  a.threads)
                results[(name, kind)] = r
                print(f"  measured {name} {kind}: {r['s_per_step']:.3f} s/step, "
                      f"peak {r['peak_mib']:.0f} MiB", flush=True)
            except Exception as exc:  # a compared family may not build with defaults yet
                print(f"{name} {kind}: failed ({type(exc).__name__}: {exc})")
    print(f"\ntraining step: batch {a.batch}x3x{a.size}^2, forward + backward + Adam")
    print(f"{'arch':<12} {'params':>12} {'s/step':>9} {'img/s':>9} {'peak MiB':>10}")
    for name in names:
        r = results.get((name, "train"))
        if r:
            print(f"{name:<12} {r['params']:>12,} {r['s_per_step']:>9.3f} "
                  f"{r['images_per_s']:>9.2f} {r['peak_mib']:>10.1f}")
    print(f"\ninference: 1x3x{a.infer_size}^2, eval, no autograd")
    print(f"{'arch':<12} {'ms/image':>10} {'peak MiB':>10}")
    for name in names:
        r = results.get((name, "infer"))
        if r:
            print(f"{name:<12} {1000 * r['s_per_step']:>10.1f} {r['peak_mib']:>10.1f}")
    for other in names[1:]:
        parts = []
        for kind, label in (("train", "train img/s"), ("infer", "infer time")):
            mine, theirs = results.get((a.arch, kind)), results.get((other, kind))
            if mine and theirs:
                speed = (mine["images_per_s"] / theirs["images_per_s"] if kind == "train"
                         else mine["s_per_step"] / theirs["s_per_step"])
                parts.append(f"{label} x{speed:.2f}, {kind} peak x"
                             f"{mine['peak_mib'] / max(theirs['peak_mib'], 1e-9):.2f}")
        if parts:
            print(f"{a.arch}/{other}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
