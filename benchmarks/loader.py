"""Training-loader throughput beside the model's consumption, measured in one run.

    python benchmarks/loader.py [--arch restormer] [--batch 4] [--patches 200] [--workers 2]

Builds a temporary shard from real photographs shipped with scikit-image (512², physical
uint8 storage, lzf chunks, like the converters write), then measures **128² patches per second
in one worker** (in-process, no DataLoader, so it is the per-worker rate) for:

* stored pairs (read two crops, normalise, rot90/flip),
* an SR pair stored at ×4 low resolution (read, MATLAB-bicubic up-sampling to 128²),
* clean-only samples degraded on the fly by each cheap simulator (noise, bicubic, rain,
  motion blur, haze, cloud), and CT low dose on the fly (projection + FBP per patch; shown to
  explain why converters precompute it),

then a DataLoader with ``--workers`` processes over the denoising rows (stored pairs and
clean-only rows with on-the-fly noise, half each), and finally the model's
training-step consumption (forward + backward + AdamW on ``--batch`` × 128² crops) of
``--arch``. Ratios = loader patches/s ÷ model samples/s; the loader keeps a GPU fed when the
ratio × workers is comfortably above 1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PATCH = 128


def _photos(n: int) -> list[np.ndarray]:
    from skimage import data
    from skimage.transform import resize

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    out = []
    for name in (names * n)[:n]:
        img = getattr(data, name)()
        img = resize(img, (512, 512), preserve_range=True, anti_aliasing=True)
        out.append(np.rint(np.moveaxis(img, -1, 0)).clip(0, 255).astype(np.uint8))
    return out


def build_shard(path: Path, n: int) -> None:
    from medrestore.degradations.simulators import default_simulator
    from medrestore.io.hdf5 import PairWriter
    from medrestore.sample import Normalisation, make_meta

    u8 = Normalisation(0, 255, "8-bit").to_dict()
    hu = Normalisation(-1024, 3072, "HU").to_dict()
    rng = np.random.default_rng(0)
    with PairWriter(path) as w:
        for i, gt in enumerate(_photos(n)):
            lq = np.clip(gt + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)
            w.add(lq, gt, task="natural_denoise", key=f"p{i}", split="train", storage="physical",
                  meta=make_meta("natural_denoise", normalisation=u8))
            w.add(gt[:, ::4, ::4].copy(), gt, task="natural_sr", key=f"p{i}", split="train",
                  scale=4, storage="physical", meta=make_meta("natural_sr", normalisation=u8))
            for task in ("natural_sr", "derain", "deblur", "dehaze", "cloud_removal"):
                sim = default_simulator(task)
                w.add(None, gt, task=task, key=f"clean/{sim}/{i}", split="train",
                      storage="physical", meta=make_meta(task, normalisation=u8,
                                                         simulator={"name": sim, "params": {}}))
            w.add(None, gt, task="natural_denoise", key=f"clean/gaussian_noise/{i}", split="train",
                  storage="physical", meta=make_meta("natural_denoise", normalisation=u8,
                                                     simulator={"name": "gaussian_noise", "params": {}}))
            ct = (gt.mean(0, keepdims=True).astype(np.int16) * 6 - 1000).astype(np.int16)
            w.add(None, ct, task="ct_denoise", key=f"clean/ct/{i}", split="train",
                  storage="physical", meta=make_meta("ct_denoise", normalisation=hu, spacing=[0.7, 0.7],
                                                     simulator={"name": "ct_low_dose", "params": {}}))


def per_worker_rate(shard: Path, row_filter, n_patches: int) -> float:
    from medrestore.datasets.pairs import TrainPatches, load_sets, normalise_sets

    rows = [r for r in load_sets(normalise_sets([shard]), ["train"]) if row_filter(r)]
    ds = TrainPatches(rows, PATCH, augment=True, seed=0)
    ds[(0, 0)]  # open the file outside the timing
    t0 = time.perf_counter()
    for k in range(n_patches):
        ds[(k % len(rows), k + 1)]
    return n_patches / (time.perf_counter() - t0)


def dataloader_rate(shard: Path, workers: int, batches: int, batch: int) -> float:
    from medrestore.datasets.datamodule import MultiTaskDataModule

    dm = MultiTaskDataModule([{"shard": str(shard), "tasks": ["natural_denoise"]}], patch_size=PATCH,
                             batch_size=batch, augment=True, num_workers=workers,
                             samples_per_epoch=batch * (batches + 2))
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it), next(it)  # worker start-up outside the timing
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["gt"].shape[0]
    return n / (time.perf_counter() - t0)


def model_rate(arch: str, batch: int, steps: int) -> float:
    from medrestore.registry import build_arch

    net = build_arch(arch, in_channels=3, out_channels=3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, PATCH, PATCH)
    y = torch.rand_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (net(x) - y).abs().mean().backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="restormer", help="model whose training step is the consumer")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--patches", type=int, default=200, help="patches timed per loader case")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=6)
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        build_shard(shard, a.images)
        print(f"shard: {a.images} photos 512², {shard.stat().st_size / 2**20:.1f} MiB, "
              f"built in {time.perf_counter() - t0:.1f} s; patch {PATCH}², one worker (in-process)")
        cases = [
            ("stored pair (uint8, lzf)", lambda r: r["task"] == "natural_denoise" and r["lq_shape"]),
            ("stored SR ×4 LR + bicubic up", lambda r: r["task"] == "natural_sr" and r["lq_shape"]),
        ]
        for sim in ("gaussian_noise", "bicubic", "rain", "motion_blur", "haze", "cloud"):
            cases.append((f"on the fly: {sim}",
                          lambda r, s=sim: r["simulator"] and r["simulator"]["name"] == s))
        rates = {}
        for name, flt in cases:
            rates[name] = per_worker_rate(shard, flt, a.patches)
        ct_name = "on the fly: ct_low_dose (slow)"
        rates[ct_name] = per_worker_rate(
            shard, lambda r: r["simulator"] and r["simulator"]["name"] == "ct_low_dose", max(4, a.patches // 50))
        dl = dataloader_rate(shard, a.workers, batches=max(4, a.patches // (4 * a.batch)), batch=4 * a.batch)
    model = model_rate(a.arch, a.batch, a.steps)
    print(f"model {a.arch}: training step consumes {model:.2f} samples/s "
          f"(batch {a.batch}×3×{PATCH}², forward+backward+AdamW, {torch.get_num_threads()} threads)")
    print(f"{'loader case':<34} {'patches/s/worker':>17} {'÷ model':>9}")
    for name, r in rates.items():
        print(f"{name:<34} {r:17.1f} {r / model:8.1f}x")
    label = f"DataLoader {a.workers} workers (denoise mix)"
    print(f"{label:<34} {dl:17.1f} {dl / model:8.1f}x   (all workers; stored + on-the-fly noise)")


if __name__ == "__main__":
    main()
