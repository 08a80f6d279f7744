"""``medrestore-predict`` on a real CT DICOM that pydicom ships, scored before and after.

    python scripts/predict_demo.py [--ckpt CKPT [CKPT ...]] [--out data/demo/predict]
                                   [--device auto]

``--ckpt`` defaults to the newest ``logs/demo/runs/*/checkpoints/last.ckpt`` (``make demo``);
give the TAT / DATPRL-IR demo checkpoints too to compare them on the same files.

The clean image is the demo's **test** CT slice (pydicom ``J2K_pixelrep_mismatch.dcm``,
512×512 head CT, JPEG 2000 in the file). Two low-dose DICOM files are made from it with the
demo's own simulator settings (quarter dose, projection-domain Poisson noise, FBP):

* ``ld_256.dcm``: the slice as the demo shard holds it (anti-aliased to 256², the resolution
  the demo model was trained at), keyed like the shard's test sample;
* ``ld_512.dcm``: the full-resolution slice (header copied from the original file), restored
  with ``tile=256`` (four overlapping tiles) to show tiling on a larger image.

Each is restored by running ``python -m medrestore.cli.predict ... task=null`` (a blind model:
the DICOM's Modality picks the checkpoint's CT window), then read back and scored against the
clean slice: PSNR in the demo's CT window ([-1024, 3072] HU, as the results table) and in a
soft-tissue window (W400/L40). Wall time = the whole command (start-up, checkpoint, reading,
restoring, writing); restore time = the per-file seconds of ``predictions.csv``.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def newest_demo_checkpoint(root: Path) -> Path:
    found = sorted(root.glob("logs/demo/runs/*/checkpoints/last.ckpt"))
    if not found:
        sys.exit("error: no logs/demo/runs/*/checkpoints/last.ckpt; run `make demo` first or "
                 "pass --ckpt")
    return found[-1]


def _model_name(ckpt: Path) -> str:
    from medrestore.modules.checkpoint import read_module_checkpoint

    net = (read_module_checkpoint(ckpt, "--ckpt").get("hyper_parameters") or {}).get("net") or {}
    return str(net.get("name") or ckpt.stem)


def psnr(ref: np.ndarray, x: np.ndarray, low: float, high: float) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    r = (np.clip(ref, low, high) - low) / (high - low)
    y = (np.clip(x, low, high) - low) / (high - low)
    return float(peak_signal_noise_ratio(r, y, data_range=1.0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=Path("data/demo/predict"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cases", nargs="+", choices=("ld_256", "ld_512"), default=["ld_256", "ld_512"],
                    help="the demo shard's test slice (256²) and / or the file at full size (512²)")
    args = ap.parse_args(argv)

    from medrestore.degradations import ct
    from medrestore.degradations.rng import keyed_rng
    from medrestore.io.base import read_image
    from medrestore.io.dicom import write_dicom
    from medrestore.prepare import demo_sources as src
    from medrestore.prepare.demo import DEMO_SETTINGS, ct_images

    ckpts = args.ckpt or [newest_demo_checkpoint(Path.cwd())]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    s = DEMO_SETTINGS["ct_denoise"]
    key = "ct.pydicom.J2K_pixelrep_mismatch"

    # the demo shard's test slice (256²) and the file at full resolution (512²)
    original = src.source_path("pydicom", "data/test_files/J2K_pixelrep_mismatch.dcm")
    todo = []
    if "ld_256" in args.cases:
        small = next(c for c in ct_images(256) if c.key == key)
        todo.append(("ld_256", small.image, small.spacing[0], None, None))
    if "ld_512" in args.cases:
        full, meta = read_image(original)
        full = np.maximum(full[0], -1024.0)   # padding outside the scan field -> air, as the demo
        todo.append(("ld_512", full, float(meta["spacing"][1]), original, 256))
    cases = []
    for name, clean, px, ref, tile in todo:
        rng = keyed_rng(f"ct_denoise:{key}" + ("" if name == "ld_256" else ":native"), 0)
        ld = ct.low_dose_ct(clean, s["dose_factor"], s["i0"], px, s["electronic_noise_std"],
                            rng=rng, n_angles=ct.default_n_angles(max(clean.shape)))
        ld_meta = {"modality": "CT", "pixel_spacing": [px, px], "spacing": [1.0, px, px],
                   "axes": "yx"}
        path = write_dicom(ld.astype(np.float32), ld_meta, out / f"{name}.dcm", overwrite=True,
                           series_description="simulated quarter dose",
                           reference_files=[original] if ref else ())
        cases.append((name, clean, path, tile))

    rows = []
    for (name, clean, path, tile), ckpt in ((c, k) for k in ckpts for c in cases):
        model = _model_name(ckpt)
        dst = out / f"{name}_{model}.dcm"
        logs = out / "logs" / f"{name}_{model}"
        cmd = [sys.executable, "-m", "medrestore.cli.predict", f"ckpt_path={ckpt}",
               f"input={path}", f"output={dst}", "overwrite=true", "progress=false",
               f"device={args.device}", f"paths.log_dir={logs}", f"hydra.run.dir={logs}"]
        if tile:
            cmd.append(f"tile={tile}")
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            sys.exit(f"error: medrestore-predict failed for {path}: {run.stderr.strip()[-500:]}")
        with open(logs / "predictions.csv") as f:
            restore_s = float(next(csv.DictReader(f))["seconds"])
        ld = read_image(path)[0][0]
        restored = read_image(dst)[0][0]
        rows.append((model, name, clean.shape, tile,
                     psnr(clean, ld, -1024, 3072), psnr(clean, restored, -1024, 3072),
                     psnr(clean, ld, -160, 240), psnr(clean, restored, -160, 240), wall, restore_s))
        print(" ".join(cmd[1:4] + cmd[4:7]))

    print("\ncheckpoints: " + ", ".join(map(str, ckpts)))
    print("| model | input | size | tile | PSNR LD | PSNR restored | gain | soft tissue LD | soft tissue "
          "restored | gain | wall time | restore time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, name, shape, tile, a, b, c, d, wall, rs in rows:
        print(f"| {model} | {name}.dcm | {shape[0]}×{shape[1]} | {tile or 'whole'} | {a:.2f} | {b:.2f} | "
              f"{b - a:+.2f} | {c:.2f} | {d:.2f} | {d - c:+.2f} | {wall:.1f} s | {rs:.2f} s |")
    print("PSNR in dB against the clean slice: CT window [-1024, 3072] HU (the demo table's) and "
          "soft tissue W400/L40 ([-160, 240] HU).")


if __name__ == "__main__":
    main()
