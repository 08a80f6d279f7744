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


_NORMALISED_NOTE = (
    "normalised protocol: each image in its task's normalisation window (meta.normalisation, "
    "e.g. CT [-1024, 3072] HU, MRI [0, 4095], PET [0, 20] SUV, RGB [0, 255], MSI [0, 10000] DN) "
    "mapped to [0, 1], data range 1; native channels (PSNR/RMSE over all channels, SSIM averaged "
    "over channels); SSIM 11x11 Gaussian (sigma 1.5, reflection padding, torchmetrics); no "
    "border crop; RMSE in normalised units")

PROTOCOL_NOTES = {
    None: _NORMALISED_NOTE,
    "normalised": _NORMALISED_NOTE,
    "tat": "TAT protocol: per slice in physical units clipped to CT [-160, 240] HU, PET [0, 20] "
           "SUV, MRI [0, 4095] (medical tasks only); one channel; data range = the slice's "
           "clipped GT max - min; SSIM 11x11 Gaussian (sigma 1.5) with zero padding, borders "
           "included; no crop; RMSE in physical units",
    "datprl": "DATPRL/BasicSR protocol: the [0, 1] image rounded to uint8 (round(255 x)), data "
              "range 255; native channels (RGB, no Y channel); SSIM 11x11 Gaussian (sigma 1.5) "
              "per channel on the valid region, averaged over channels; no border crop; RMSE in "
              "8-bit levels",
}


def task_protocol(task: str, protocol: str | None) -> str:
    """The protocol a task row is scored with: ``protocol``, or the task's registry default."""
    return protocol or TASKS[task].protocol


def row_protocol(row_task: str, tasks: list[str], protocol: str | None) -> str:
    """Protocol name of a results row (a task, ``[domain]`` or ``[mean]``) over ``tasks``."""
    if protocol:
        return protocol
    name = row_task.strip("[]")
    if name in TASKS:
        return TASKS[name].protocol
    inside = [t for t in tasks if name == "mean" or TASKS[t].domain == name]
    return "+".join(sorted({TASKS[t].protocol for t in inside})) or "normalised"


def protocol_description(protocol: str | None, tasks: list[str] | None = None) -> str:
    """A paragraph naming the protocol that produced a table (channel, crop, data range,
    window); with ``protocol=None`` the registry default of each task in ``tasks``."""
    if protocol:
        return f"Protocol `{protocol}`: {PROTOCOL_NOTES.get(protocol, 'see medrestore.metrics.protocols')}."
    by_default: dict[str, list[str]] = {}
    for t in tasks or []:
        by_default.setdefault(TASKS[t].protocol, []).append(t)
    parts = [f"`{name}` for {', '.join(ts)}: {PROTOCOL_NOTES.get(name, 'see medrestore.metrics.protocols')}."
             for name, ts in by_default.items()]
    return "Protocol: each task's registry default (protocol=null). " + " ".join(parts)


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
    lines.append(f"{note}; averaged per task; domain rows and the mean row are unweighted means "
                 "over tasks.")
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


def write_csv(rows: list[dict[str, object]], path: str | Path, columns: tuple[str, ...] | list[str]) -> Path:
    """``rows`` as CSV with exactly ``columns`` (missing cells empty)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def format_cell(column: str, value: object) -> str:
    """How a results / scores / paired value reads in Markdown and on the console."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if column.startswith("p_"):
            return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"
        if column.startswith("ssim") or "ssim" in column:
            return f"{value:+.4f}" if column.endswith(("gain", "diff")) else f"{value:.4f}"
        if column.startswith("psnr") or "psnr" in column:
            return f"{value:+.2f}" if column.endswith(("gain", "diff")) else f"{value:.2f}"
        return f"{value:+.4g}" if column.endswith(("gain", "diff")) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, object]], columns: tuple[str, ...] | list[str],
                   metric_of: str | None = None) -> str:
    """A Markdown table; ``metric_of`` names a column whose value (psnr/ssim/rmse) decides how
    the numeric cells of each row are formatted (the paired table mixes metrics by row)."""
    text = [str(c) for c in columns]
    lines = ["| " + " | ".join(text) + " |",
             "| " + " | ".join("---:" if c not in ("model", "protocol", "task", "domain", "key",
                                                    "metric", "reference", "method") else "---"
                               for c in columns) + " |"]
    for r in rows:
        prefix = f"{r.get(metric_of)}_" if metric_of else ""
        cells = [format_cell(prefix + c if isinstance(r.get(c), float) and not c.startswith("p_") else c,
                             r.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
