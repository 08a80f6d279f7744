"""Training-step throughput and peak memory of a registered architecture.

    python benchmarks/restormer_step.py --arch restormer --batch 4 --channels 3 --size 128

Times forward + backward + AdamW step (after warm-up) and prints images/s, ms/step and peak
memory (CUDA allocator peak on GPU; on CPU the growth of the process's max RSS, model included). With --compare it also runs
the second arch in the same process and prints the speed ratio, so the figure does not depend
on the machine's absolute speed.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from medrestore.registry import build_arch


def measure(arch: str, batch: int, channels: int, size: int, steps: int, device: str) -> dict:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the model: CPU peak includes it
    net = build_arch(arch, in_channels=channels, out_channels=channels).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch, channels, size, size, device=device)
    y = torch.rand_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (net(x) - y).abs().mean()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"arch": arch, "params": sum(p.numel() for p in net.parameters()),
            "ms_per_step": 1000 * dt, "images_per_s": batch / dt, "peak_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="restormer")
    p.add_argument("--compare", default=None, help="second arch, measured in the same run")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    # --compare runs first: on CPU the peak is the growth of the process's max RSS, which only
    # shows for a model bigger than everything measured before it in the same process
    names = ([a.compare] if a.compare else []) + [a.arch]
    results = [measure(n, a.batch, a.channels, a.size, a.steps, a.device) for n in names][::-1]
    print(f"device={a.device} batch={a.batch}x{a.channels}x{a.size}x{a.size} torch={torch.__version__}")
    for r in results:
        print(f"{r['arch']:<18} params={r['params']:>11,}  {r['ms_per_step']:9.1f} ms/step  "
              f"{r['images_per_s']:8.2f} img/s  peak={r['peak_mib']:8.1f} MiB")
    if len(results) == 2:
        print(f"speed ratio {results[1]['arch']}/{results[0]['arch']}: "
              f"{results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
