"""``medrestore-report RUNDIR...``: one comparison table over finished runs.

Reads each run's own ``results_test.json`` (the table ``medrestore-train`` / ``medrestore-eval``
wrote) and ``config_resolved.yaml`` / ``.hydra/overrides.yaml`` (model name, overrides, seed).
Rows: tasks (registry order), domain rows, mean; columns: runs, labelled by the model name and
the config keys that differ between the runs. A multirun folder (or any folder) stands for the
runs inside it. ``--out FILE.csv|FILE.md`` also writes the table.

    medrestore-report logs/train/multiruns/2026-11-26_12-00-00
    medrestore-report logs/a/runs/X logs/b/runs/Y --metric ssim --out compare.md
    medrestore-report logs/demo/multiruns/<time> --stage val --metric psnr_gain   # pick a recipe
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from medrestore.errors import MedrestoreError
from medrestore.registry import DOMAINS, TASKS

RESULTS = "results_{stage}.json"
RUN_MARKERS = ("config_resolved.yaml", ".hydra/config.yaml")
#: config keys never used to tell runs apart (where outputs go, how they are logged)
NOISE_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.", "extras.", "trainer.default_root_dir",
                  "trainer.enable_progress_bar", "tags", "run_name")
METRICS = ("psnr", "ssim", "rmse")


class ReportError(MedrestoreError):
    """A run folder that cannot be reported (one line, exit 2)."""


def _natural(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def _is_run(d: Path, stage: str) -> bool:
    return (d / RESULTS.format(stage=stage)).is_file() or any((d / m).is_file() for m in RUN_MARKERS)


def find_runs(paths: Sequence[str | Path], stage: str = "test") -> list[Path]:
    """Run folders named, or found inside the folders named (a multirun: its job folders)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ReportError(f"{p}: no such run directory")
        results = RESULTS.format(stage=stage)
        # a multi-checkpoint medrestore-eval run: its results live in one folder per label
        labelled = [] if (p / results).is_file() else sorted(
            (d.parent for d in p.glob(f"*/{results}")), key=_natural)
        if _is_run(p, stage) and not labelled:
            runs.append(p)
            continue
        if labelled:
            runs += labelled
            continue
        inside = sorted({d.parent if d.name != "config.yaml" else d.parent.parent
                         for m in ("**/config_resolved.yaml", "**/.hydra/config.yaml",
                                   f"**/{RESULTS.format(stage=stage)}")
                         for d in p.glob(m)}, key=_natural)
        # a run's own sub-folders (wandb/, checkpoints/) never hold another run
        inside = [d for d in inside if not any(o != d and o in d.parents for o in inside)]
        if not inside:
            raise ReportError(f"{p}: not a run directory (no {RESULTS.format(stage=stage)} or "
                              "config_resolved.yaml) and no runs inside")
        runs += inside
    seen: set[Path] = set()
    return [r for r in runs if not (r.resolve() in seen or seen.add(r.resolve()))]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else node}


def load_run(run: Path, stage: str = "test") -> dict[str, Any]:
    """``{dir, rows, config (flat), overrides {key: value}, model}``; one-line error if no results."""
    path = run / RESULTS.format(stage=stage)
    if not path.is_file():
        raise ReportError(f"{run}: no {path.name} (the run has not finished its test; "
                          "--skip-missing leaves it out)")
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "task" in r for r in rows):
            raise ValueError("expected a list of rows with a 'task'")
    except ValueError as exc:
        raise ReportError(f"{path}: not a results table ({exc})") from None
    config: dict[str, Any] = {}
    for name in RUN_MARKERS:
        if (run / name).is_file():
            from omegaconf import OmegaConf

            try:
                node = OmegaConf.to_container(OmegaConf.load(run / name), resolve=False)
            except Exception as exc:  # noqa: BLE001 - a broken YAML is the user's file
                raise ReportError(f"{run / name}: unreadable YAML ({exc})") from None
            config = _flatten(node)
            break
    overrides: dict[str, str] = {}
    ov = run / ".hydra" / "overrides.yaml"
    if ov.is_file():
        import yaml

        for item in yaml.safe_load(ov.read_text()) or []:
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
    model = str(config.get("model.net.name") or overrides.get("model") or "?")
    return {"dir": run, "rows": rows, "config": config, "overrides": overrides, "model": model}


def differing_keys(runs: list[dict[str, Any]]) -> list[str]:
    """Override keys whose value differs between runs (not ``model``: the label starts with it);
    without overrides, the config keys that differ (outputs and logging left out)."""
    if len(runs) < 2:
        return []

    def differs(key: str, source: str) -> bool:
        return len({json.dumps(r[source].get(key), default=str) for r in runs}) > 1

    keys = sorted({k for r in runs for k in r["overrides"]})
    found = [k for k in keys if k != "model" and not k.startswith(NOISE_PREFIXES) and differs(k, "overrides")]
    if "seed" not in found and any("seed" in r["config"] for r in runs) and differs("seed", "config"):
        found.append("seed")
    if found or any(r["overrides"] for r in runs):
        return found
    keys = sorted({k for r in runs for k in r["config"]})
    models_differ = len({r["model"] for r in runs}) > 1
    return [k for k in keys if not k.startswith(NOISE_PREFIXES) and differs(k, "config")
            and not (models_differ and k.startswith(("model.net.", "model._target_")))]


def label_runs(runs: list[dict[str, Any]]) -> list[str]:
    keys = differing_keys(runs)
    labels = []
    for r in runs:
        parts = [r["model"]]
        for k in keys:
            v = r["overrides"].get(k, r["config"].get(k, "-"))
            parts.append(f"{k.split('.')[-1] if k.count('.') > 1 else k}={v}")
        labels.append(" ".join(parts))
    count: dict[str, int] = {}
    for lb in labels:
        count[lb] = count.get(lb, 0) + 1
    return [f"{lb} [{r['dir'].name}]" if count[lb] > 1 else lb for lb, r in zip(labels, runs)]


def _row_order(name: str) -> tuple[int, int]:
    bare = name.strip("[]")
    if bare in TASKS:
        return 0, list(TASKS).index(bare)
    if bare in DOMAINS:
        return 1, list(DOMAINS).index(bare)
    return (2, 0) if bare == "mean" else (3, 0)


def comparison(runs: list[dict[str, Any]], metric: str = "psnr_restored") -> tuple[list[str], list[list[Any]]]:
    """Header ``[row, domain, <run labels>...]`` and rows (``None`` where a run lacks the row)."""
    labels = label_runs(runs)
    names = sorted({str(row["task"]) for r in runs for row in r["rows"]}, key=_row_order)
    table = []
    for name in names:
        line: list[Any] = [name, ""]
        for r in runs:
            row = next((x for x in r["rows"] if str(x["task"]) == name), None)
            if row is not None:
                line[1] = line[1] or row.get("domain", "")
            v = None if row is None else row.get(metric)
            line.append(None if v in (None, "") else float(v))
        table.append(line)
    return ["task", "domain", *labels], table


def _fmt(v: Any, metric: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.4f}" if metric.startswith("ssim") else f"{v:.2f}" if metric.startswith("psnr") else f"{v:.4g}"


def _best(values: list[Any], metric: str) -> int | None:
    ok = [(v, i) for i, v in enumerate(values) if isinstance(v, float) and math.isfinite(v)]
    if len(ok) < 2:
        return None
    lower_better = metric.startswith("rmse") and not metric.endswith("gain")
    return (min(ok) if lower_better else max(ok))[1]


def format_console(header: list[str], table: list[list[Any]], metric: str, markdown: bool = False) -> str:
    cells = [header] + [[r[0], r[1]] + [_fmt(v, metric) + ("*" if i == _best(r[2:], metric) else "")
                                        for i, v in enumerate(r[2:])] for r in table]
    if markdown:
        lines = ["| " + " | ".join(c) + " |" for c in cells]
        lines.insert(1, "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |")
        return "\n".join(lines)
    widths = [max(len(str(c[j])) for c in cells) for j in range(len(header))]
    out = []
    for n, c in enumerate(cells):
        out.append("  ".join(str(v).ljust(w) if j < 2 else str(v).rjust(w)
                             for j, (v, w) in enumerate(zip(c, widths))))
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def write_table(path: Path, header: list[str], table: list[list[Any]], metric: str,
                runs: list[dict[str, Any]], stage: str = "test") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows([[("" if v is None else v) for v in r] for r in table])
        path.write_text(buf.getvalue())
    else:
        legend = "\n".join(f"- `{lb}`: `{r['dir']}`" for lb, r in zip(header[2:], runs))
        path.write_text(f"{metric} per task ({RESULTS.format(stage=stage)}; * = best)\n\n"
                        f"{format_console(header, table, metric, markdown=True)}\n\nRuns:\n\n{legend}\n")


def _metric_column(name: str) -> str:
    from medrestore.utils.report import COLUMNS

    col = f"{name}_restored" if name in METRICS else name
    if col not in COLUMNS or col in ("task", "domain", "n"):
        raise ReportError(f"--metric {name}: expected one of {', '.join(METRICS)} or a results "
                          f"column ({', '.join(c for c in COLUMNS[3:])})")
    return col


def run_report(paths: Sequence[str | Path], out: str | Path | None = None, metric: str = "psnr",
               skip_missing: bool = False, stage: str = "test") -> str:
    """The comparison table as text (and ``out`` written); raises ``ReportError``."""
    col = _metric_column(metric)
    if out is not None and Path(out).suffix not in (".csv", ".md"):
        raise ReportError(f"--out {out}: expected a .csv or .md file")
    runs, skipped = [], []
    for d in find_runs(paths, stage):
        try:
            runs.append(load_run(d, stage))
        except ReportError:
            if not skip_missing or (d / RESULTS.format(stage=stage)).is_file():
                raise
            skipped.append(d)
    if not runs:
        raise ReportError(f"no run with {RESULTS.format(stage=stage)} in {', '.join(map(str, paths))}")
    header, table = comparison(runs, col)
    text = f"{col} per task, {stage} split, {len(runs)} run(s) (* = best)\n" + format_console(header, table, col)
    text += "\n" + "\n".join(f"  {lb}: {r['dir']}" for lb, r in zip(header[2:], runs))
    if skipped:
        text += "\nskipped (no results): " + ", ".join(map(str, skipped))
    if out is not None:
        write_table(Path(out), header, table, col, runs, stage)
        text += f"\nwritten to {out}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medrestore-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUNDIR", help="run folders or multirun folders")
    parser.add_argument("--out", help="also write the table to FILE.csv or FILE.md")
    parser.add_argument("--metric", default="psnr",
                        help="psnr | ssim | rmse (restored) or a results column, e.g. psnr_gain")
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out runs without results instead of stopping")
    parser.add_argument("--stage", choices=("test", "val"), default="test",
                        help="which table: test (default) or val (results_val.json: the "
                             "validation table recipes are chosen on)")
    args = parser.parse_args(argv)
    try:
        print(run_report(args.runs, args.out, args.metric, args.skip_missing, args.stage))
    except MedrestoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
