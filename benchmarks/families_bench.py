"""Every model family in one run: parameters, training step time and peak memory.

    python benchmarks/families_bench.py --threads 2                 # released configurations
    python benchmarks/families_bench.py --variant tiny --channels 3 --threads 2   # as in the demo

For each family declared in :data:`medrestore.registry.FAMILIES` (or ``--families``), in its own
fresh process: the parameter count of ``<family>`` (``--variant released``) or
``<family>_tiny``, and one training step (forward + backward + the recipe's optimiser step,
``(pred, aux)`` outputs reduced to ``pred``; the families' auxiliary losses are not added, they
are scalars) at ``--batch`` x C x ``--size``² with C the family's recipe channels (1 for the
medical-only TAT and AMIR, 3 otherwise), median and minimum of ``--steps`` steps after
``--warmup``. Peak memory is the growth of the process's max RSS on CPU (model included) or the
CUDA allocator peak. The last column is each family's step time relative to Restormer, measured
in the same run, so it does not depend on the machine's absolute speed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tat_bench import _in_fresh_process, _peak_mib, time_steps  # noqa: E402

#: family -> (image channels, optimiser) of its recipe (conf/model/<family>.yaml)
RECIPE = {"restormer": (3, "adamw"), "tat": (1, "adamw"), "datprl": (3, "adam"),
          "promptir": (3, "adamw"), "amir": (1, "adam"), "moce_ir": (3, "adamw")}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from medrestore.registry import build_arch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = job["device"]
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = job["channels"]
    net = build_arch(job["arch"], in_channels=c, out_channels=c).to(device).train()
    params = sum(p.numel() for p in net.parameters())
    opt_cls = torch.optim.Adam if job["optimizer"] == "adam" else torch.optim.AdamW
    opt = opt_cls(net.parameters(), lr=2e-4)
    x = torch.rand(job["batch"], c, job["size"], job["size"], device=device)
    y = torch.rand_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = net(x)
        pred = out[0] if isinstance(out, tuple) else out
        (pred - y).abs().mean().backward()
        opt.step()

    times = time_steps(step, job["warmup"], job["steps"], device)
    return {"params": params, "ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times), "peak_mib": _peak_mib(device, rss0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="*", default=None, help="default: every declared family")
    p.add_argument("--variant", choices=("released", "tiny"), default="released")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels", type=int, default=None,
                   help="image channels for every family (default: each recipe's; the demo runs all in 3)")
    a = p.parse_args(argv)
    from medrestore.registry import FAMILIES

    families = a.families or FAMILIES.names()
    unknown = [f for f in families if f not in RECIPE]
    if unknown:
        print(f"--families: no recipe channels for {unknown}; known: {sorted(RECIPE)}",
              file=sys.stderr)
        return 2
    print(f"{a.variant} configurations, train step {a.batch} x C x {a.size}², median of "
          f"{a.steps} after {a.warmup} warm-up, device={a.device}, threads={a.threads or 'default'}",
          flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for fam in families:
        channels, optimizer = RECIPE[fam]
        channels = a.channels or channels
        arch = fam if a.variant == "released" else f"{fam}_tiny"
        job = dict(arch=arch, channels=channels, optimizer=optimizer, batch=a.batch, size=a.size,
                   steps=a.steps, warmup=a.warmup, threads=a.threads, device=a.device)
        r = _in_fresh_process(_job, job, arch)
        if r is not None:
            rows[fam] = {**r, "channels": channels}
            print(f"  {arch:14s} {r['params']:>12,d} params  {r['ms'] / 1000:7.2f} s/step "
                  f"(min {r['min_ms'] / 1000:.2f})  peak {r['peak_mib']:8.0f} MiB", flush=True)
    base = rows.get("restormer")
    print("\n| family | arch | C | parameters | train step (s) | peak (MiB) | time / Restormer |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for fam, r in rows.items():
        arch = fam if a.variant == "released" else f"{fam}_tiny"
        rel = f"{r['ms'] / base['ms']:.2f}" if base else "—"
        print(f"| {fam} | `{arch}` | {r['channels']} | {r['params']:,} | {r['ms'] / 1000:.2f} | "
              f"{r['peak_mib']:.0f} | {rel} |")
    return 0 if len(rows) == len(families) else 1


if __name__ == "__main__":
    sys.exit(main())
