"""Training-loader throughput beside the model's consumption, measured in one run.

    python benchmarks/loader.py [--arch restormer] [--batch 4] [--patches 200] [--workers 2]
                                [--sim-batch 16] [--appetite SAMPLES_PER_S] [--only-medical]

Builds a temporary shard from real photographs shipped with scikit-image (512², physical
uint8 storage, lzf chunks, like the converters write), then measures **128² patches per second
in one worker** (in-process, no DataLoader, so it is the per-worker rate) for:

* stored pairs (read two crops, normalise, rot90/flip),
* an SR pair stored at ×4 low resolution (read, MATLAB-bicubic up-sampling to 128²),
* clean-only samples degraded on the fly by each cheap simulator (noise, bicubic, rain,
  motion blur, haze, cloud), and CT low dose on the fly (projection + FBP per patch; shown to
  explain why converters precompute it),

then, for the medical simulators (CT low dose, MRI k-space, PET low count), the
``data.degrade_on=device`` path: the worker part (read, crop, augment, no simulation) and the
batched torch simulator (``degrade_on_device`` on batches of ``--sim-batch``) on **one CPU
thread** (per core, the figure comparable with the numpy worker) and on the GPU when there is
one; "per core" combines both parts on one core, and the speed-up is that over the numpy
worker path. The one-off operator build (CT: sparse projector / back-projector per crop size)
is timed separately. ``cores`` columns: CPU cores that simulator alone needs to feed the
trainer's appetite (``--appetite``, e.g. a GPU rate from ``tat_bench.py``; default the model step
measured here).

Then a DataLoader with ``--workers`` processes over the denoising rows (stored pairs and
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
    mr = Normalisation(0, 1020, "a.u.").to_dict()
    suv = Normalisation(0, 10, "SUV").to_dict()
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
            gray = gt.mean(0, keepdims=True).astype(np.float32)
            w.add(None, gray * 4.0, task="mri_sr", key=f"clean/mri/{i}", split="train",
                  storage="physical", meta=make_meta("mri_sr", normalisation=mr,
                                                     simulator={"name": "mri_kspace", "params": {}}))
            w.add(None, gray / 25.5, task="pet_synthesis", key=f"clean/pet/{i}", split="train",
                  storage="physical", meta=make_meta("pet_synthesis", normalisation=suv,
                                                     simulator={"name": "pet_low_count", "params": {}}))


def per_worker_rate(shard: Path, row_filter, n_patches: int) -> float:
    from medrestore.datasets.pairs import TrainPatches, load_sets, normalise_sets

    rows = [r for r in load_sets(normalise_sets([shard]), ["train"]) if row_filter(r)]
    ds = TrainPatches(rows, PATCH, augment=True, seed=0)
    ds[(0, 0)]  # open the file outside the timing
    t0 = time.perf_counter()
    for k in range(n_patches):
        ds[(k % len(rows), k + 1)]
    return n_patches / (time.perf_counter() - t0)


MEDICAL = ("ct_low_dose", "mri_kspace", "pet_low_count")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_path_rates(shard: Path, sim: str, n_patches: int, batch: int,
                      devices: list[torch.device]) -> dict[str, float]:
    """``degrade_on=device``: worker patches/s (no simulation), then per device the batched
    simulator's patches/s and its one-off build time (seconds)."""
    from medrestore.datasets.pairs import TrainPatches, degrade_on_device, load_sets, normalise_sets
    from medrestore.sample import collate_samples

    rows = [r for r in load_sets(normalise_sets([shard]), ["train"])
            if r["simulator"] and r["simulator"]["name"] == sim]
    ds = TrainPatches(rows, PATCH, augment=True, seed=0, degrade_on="device")
    ds[(0, 0)]
    n = max(batch, n_patches - n_patches % batch)
    t0 = time.perf_counter()
    samples = [ds[(k % len(rows), k + 1)] for k in range(n)]
    out = {"worker": n / (time.perf_counter() - t0)}
    batches = [collate_samples(samples[i:i + batch]) for i in range(0, n, batch)]
    for dev in devices:
        moved = [{**b, "lq": b["lq"].to(dev), "gt": b["gt"].to(dev), "channels": b["channels"].to(dev)}
                 for b in batches]
        t0 = time.perf_counter()
        degrade_on_device(moved[0])           # first call builds and caches the operators
        _sync(dev)
        out[f"build:{dev.type}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in moved:
            lq = degrade_on_device(b)["lq"]
        _sync(dev)
        out[dev.type] = n / (time.perf_counter() - t0)
        assert torch.isfinite(lq).all()
    return out


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


def model_rate(arch: str, batch: int, steps: int, device: torch.device = torch.device("cpu")) -> float:
    from medrestore.registry import build_arch

    net = build_arch(arch, in_channels=3, out_channels=3).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, PATCH, PATCH, device=device)
    y = torch.rand_like(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (net(x) - y).abs().mean().backward()
        opt.step()

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="restormer", help="model whose training step is the consumer")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--patches", type=int, default=200, help="patches timed per loader case")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--sim-batch", type=int, default=16, help="batch of the batched torch simulators")
    p.add_argument("--appetite", type=float, default=None,
                   help="samples/s the trainer consumes, e.g. measured by tat_bench.py on the GPU "
                        "(default: the --arch training step measured here); sets the cores columns")
    p.add_argument("--only-medical", action="store_true",
                   help="skip the natural-image cases and the DataLoader (medical simulators + model)")
    a = p.parse_args()
    threads = max(1, torch.get_num_threads())
    torch.set_num_threads(threads)
    cuda = torch.device("cuda") if torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        build_shard(shard, a.images)
        print(f"shard: {a.images} photos 512², {shard.stat().st_size / 2**20:.1f} MiB, "
              f"built in {time.perf_counter() - t0:.1f} s; patch {PATCH}², one worker (in-process)")
        rates = {}
        if not a.only_medical:
            cases = [
                ("stored pair (uint8, lzf)", lambda r: r["task"] == "natural_denoise" and r["lq_shape"]),
                ("stored SR ×4 LR + bicubic up", lambda r: r["task"] == "natural_sr" and r["lq_shape"]),
            ]
            for sim in ("gaussian_noise", "bicubic", "rain", "motion_blur", "haze", "cloud"):
                cases.append((f"on the fly: {sim}",
                              lambda r, s=sim: r["simulator"] and r["simulator"]["name"] == s))
            for name, flt in cases:
                rates[name] = per_worker_rate(shard, flt, a.patches)
        medical = {}
        for sim in MEDICAL:
            slow = sim == "ct_low_dose"
            torch.set_num_threads(1)          # per core: numpy / scikit-image run on one thread
            numpy_rate = per_worker_rate(shard, lambda r, s=sim: r["simulator"] and r["simulator"]["name"] == s,
                                         max(4, a.patches // 50) if slow else a.patches)
            dev = device_path_rates(shard, sim, max(4 * a.sim_batch, a.patches // 2) if slow else a.patches,
                                    a.sim_batch, [torch.device("cpu")])
            torch.set_num_threads(threads)
            if cuda is not None:
                dev.update({k: v for k, v in device_path_rates(shard, sim, 8 * a.sim_batch, a.sim_batch,
                                                                 [cuda]).items() if k != "worker"})
            medical[sim] = (numpy_rate, dev)
        dl = None
        if not a.only_medical:
            dl = dataloader_rate(shard, a.workers, batches=max(4, a.patches // (4 * a.batch)), batch=4 * a.batch)
    model_dev = cuda or torch.device("cpu")
    model = model_rate(a.arch, a.batch, a.steps, model_dev)
    print(f"model {a.arch}: training step consumes {model:.2f} samples/s on {model_dev.type} "
          f"(batch {a.batch}×3×{PATCH}², forward+backward+AdamW, {torch.get_num_threads()} CPU threads)")
    if rates:
        print(f"{'loader case':<34} {'patches/s/worker':>17} {'÷ model':>9}")
        for name, r in rates.items():
            print(f"{name:<34} {r:17.1f} {r / model:8.1f}x")
    appetite = a.appetite or model
    print(f"\non-the-fly medical simulators, {PATCH}² patches, patches/s (CPU columns on 1 thread; "
          f"torch batch {a.sim_batch}):")
    head = (f"{'simulator':<15} {'numpy worker':>12} {'torch sim':>10} {'worker part':>11} "
            f"{'torch/core':>10} {'speed-up':>8} {'build s':>7} {'cores numpy':>11} {'cores torch':>11}")
    if cuda is not None:
        head += f" {'GPU sim':>9} {'GPU build':>9}"
    print(head)
    for sim, (numpy_rate, dev) in medical.items():
        per_core = 1.0 / (1.0 / dev["worker"] + 1.0 / dev["cpu"])
        line = (f"{sim:<15} {numpy_rate:12.1f} {dev['cpu']:10.1f} {dev['worker']:11.1f} {per_core:10.1f} "
                f"{per_core / numpy_rate:7.1f}x {dev['build:cpu']:7.1f} {appetite / numpy_rate:11.2f} "
                f"{appetite / per_core:11.2f}")
        if cuda is not None:
            line += f" {dev['cuda']:9.0f} {dev['build:cuda']:9.1f}"
        print(line)
    print("numpy worker: read + crop + simulate + augment in one worker; torch sim: degrade_on_device "
          "alone; worker part: the same worker without the simulation; torch/core: both on one core; "
          f"speed-up = torch/core ÷ numpy worker; cores = CPU cores needed to feed {appetite:.1f} "
          f"samples/s ({'--appetite' if a.appetite else 'the model step above'}) with that simulator alone")
    if dl is not None:
        label = f"DataLoader {a.workers} workers (denoise mix)"
        print(f"{label:<34} {dl:17.1f} {dl / model:8.1f}x   (all workers; stored + on-the-fly noise)")


if __name__ == "__main__":
    main()
