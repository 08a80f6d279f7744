"""The per-task results table: degraded input vs restored output."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping

from medrestore.registry import DOMAINS, TASKS

COLUMNS = ("task", "domain", "n", "psnr_input", "psnr_restored", "psnr_gain",
           "ssim_input", "ssim_restored", "ssim_gain", "rmse_input", "rmse_restored", "rmse_gain")


def results_rows(metrics: Mapping[str, float], stage: str = "test",
                 counts: Mapping[str, int] | None = None) -> list[dict[str, object]]:
    """Rows per task (registry order), then per domain and the mean over tasks, read from the
    logged keys ``<stage>/<task>/<metric>`` and ``<stage>_input/<task>/<metric>``."""
    m = {k: float(v) for k, v in metrics.items()}
    rows = []
    groups = [(t, TASKS[t].domain) for t in TASKS] + [(d, d) for d in DOMAINS] + [("mean", "all")]
    for name, domain in groups:
        out_key = f"{stage}/psnr" if name == "mean" else f"{stage}/{name}/psnr"
        in_key = f"{stage}_input/mean/psnr" if name == "mean" else f"{stage}_input/{name}/psnr"
        if out_key not in m or in_key not in m:
            continue
        row: dict[str, object] = {"task": name if name in TASKS else f"[{name}]", "domain": domain,
                                  "n": (counts or {}).get(name, "")}
        for metric in ("psnr", "ssim", "rmse"):
            if f"{stage}/{metric}" not in m:
                continue
            o = m[f"{stage}/{metric}"] if name == "mean" else m[f"{stage}/{name}/{metric}"]
            i = m[f"{stage}_input/mean/{metric}"] if name == "mean" else m[f"{stage}_input/{name}/{metric}"]
            row[f"{metric}_input"], row[f"{metric}_restored"], row[f"{metric}_gain"] = i, o, o - i
        rows.append(row)
    return rows


PROTOCOL_NOTES = {
    None: "PSNR in dB and SSIM (11x11 Gaussian, sigma 1.5) per image in each task's "
          "normalisation window, data range 1",
    "normalised": "PSNR in dB and SSIM (11x11 Gaussian, sigma 1.5) per image in each task's "
                  "normalisation window, data range 1",
    "tat": "TAT protocol: PSNR in dB / SSIM (11x11 Gaussian, sigma 1.5, zero padding) / RMSE per "
           "slice in physical units clipped to CT [-160, 240] HU, PET [0, 20], MRI [0, 4095], "
           "data range = the slice's GT max - min",
    "datprl": "DATPRL/BasicSR protocol: PSNR in dB / SSIM (11x11 Gaussian, sigma 1.5, valid "
              "region) per image on uint8, no border crop, no Y channel",
}


def format_table(rows: list[dict[str, object]], title: str = "", protocol: str | None = None) -> str:
    """Console table (PSNR/SSIM, plus RMSE when logged) with a footnote on how it was scored."""
    with_rmse = any(r.get("rmse_restored") not in (None, "") for r in rows)
    head = f"{'task':<18}{'domain':<16}{'n':>4}  {'PSNR in':>8}{'PSNR out':>9}{'gain':>7}  " \
           f"{'SSIM in':>8}{'SSIM out':>9}{'gain':>8}" + \
           (f"  {'RMSE in':>9}{'RMSE out':>10}" if with_rmse else "")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['task']!s:<18}{r['domain']!s:<16}{r['n']!s:>4}  {r['psnr_input']:>8.2f}"
                f"{r['psnr_restored']:>9.2f}{r['psnr_gain']:>+7.2f}  {r['ssim_input']:>8.4f}"
                f"{r['ssim_restored']:>9.4f}{r['ssim_gain']:>+8.4f}")
        if with_rmse:
            line += f"  {r['rmse_input']:>9.4g}{r['rmse_restored']:>10.4g}"
        lines.append(line)
    note = PROTOCOL_NOTES.get(protocol, f"protocol {protocol!r}")
    lines.append(f"{note}; RMSE in the protocol's units; averaged per task; domain rows and "
                 "the mean row are unweighted means over tasks.")
    return "\n".join(lines)


def write_results(rows: list[dict[str, object]], out_dir: str | Path, stem: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    return out / f"{stem}.csv"
