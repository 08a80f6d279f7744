"""Downstream evaluation of restoration: does restoring a degraded image help the analysis
model (segmentation, detection, grading) that reads it next?

For one trained analysis model (MTMed3D on 3-D MRI, TP-Seg on 2-D lesion images) and its test
split, every **condition** runs the model's own test loop on the same images:

- ``clean``: the images as stored;
- ``degraded``: each image degraded by a named simulator of
  :mod:`medrestore.degradations.simulators` (MRI: k-space truncation ×4 plus Rician noise);
- ``restored:<label>``: the degraded image restored by a restoration checkpoint
  (:class:`medrestore.inference.restorer.Restorer`; 2-D models slice by slice, in physical
  units).

The images reach the analysis model through the dataset's ``pre_normalise`` hook (applied to the
physical / [0, 1] image before the dataset's own normalisation), so the analysis model sees
exactly what it sees in training. Its metrics come from its test loop
(``module.results_rows(trainer.callback_metrics, "test")``); the hook also scores each
condition's image against the clean one (PSNR / SSIM), so every row carries the restoration
quality next to the downstream scores.

**Seeds: the degradation is identical in every condition.** The generator of an image is
``keyed_rng(f"{task}/{key}", seed)`` (:func:`medrestore.degradations.rng.keyed_rng`): it depends
only on the task, the image key and ``seed``, never on the order of images, the condition or the
worker. ``degraded`` and every ``restored:*`` condition therefore start from the same degraded
array (a test checks it bit for bit).

3-D volumes (``C×X×Y×Z``): each channel is degraded and restored as a stack of axial (``Z``)
slices; Rician ``sigma`` may be given relative to the channel (``sigma_fraction`` × the 99th
percentile of its non-zero voxels, since MR intensities have no absolute scale); with
``keep_background`` the voxels that are zero in the clean volume stay zero (skull-stripped data
stay skull-stripped: the datasets z-score over non-zero voxels). The restoration window of a
channel is ``[min(0, min), max]`` of the degraded channel (nothing clipped; MR intensities have no
absolute scale, so ``restore_window: auto`` does not use the checkpoint's training window) unless
the configuration gives one (``window``) or asks for the checkpoint's (``restore_window: checkpoint``).

2-D images (``H×W×3`` in [0, 1]): the image is taken as window-normalised with the task's
``window`` ``[low, high]`` (physical units of the simulator: HU for ``ct_low_dose``, MR a.u. for
``mri_kspace``, the 8-bit scale for natural images), turned to grey first when ``gray`` (medical
models are one-channel), degraded, restored with the same window (or the checkpoint's), and
mapped back (grey replicated to RGB); ``restore_window: auto`` uses the restoration checkpoint's
window for ``restore_task`` when it recorded one (HU, SUV and 8-bit are absolute scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from medrestore.errors import ConfigError, MedrestoreError

#: restoration windows a condition can use
RESTORE_WINDOWS = ("auto", "checkpoint", "degradation")


@dataclass(frozen=True)
class DegradationSpec:
    """How one task's images are degraded (see the module docstring)."""

    simulator: str
    params: Mapping[str, Any] = field(default_factory=dict)
    sigma_fraction: float | None = None   # 3-D: Rician sigma relative to the channel's p99
    keep_background: bool = True          # 3-D: zero stays zero
    window: tuple[float, float] | None = None  # 2-D: physical [low, high] of the [0, 1] image
    gray: bool = False                    # 2-D: grey before degrading, RGB again after
    restore_task: str | None = None       # the restoration model's task (window, task-conditioned models)


def check_spec(raw: Mapping[str, Any], key: str) -> DegradationSpec:
    """A :class:`DegradationSpec` from a config mapping; one-line :class:`ConfigError` naming
    ``key`` otherwise (the simulator and its parameters are checked here, before any work)."""
    from medrestore.degradations.simulators import get_simulator

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping with simulator, params, ..., got {raw!r}")
    allowed = {"simulator", "params", "sigma_fraction", "keep_background", "window", "gray", "restore_task"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"{key}.{extra[0]}: unknown option; expected {', '.join(sorted(allowed))}")
    name = raw.get("simulator")
    if not isinstance(name, str):
        raise ConfigError(f"{key}.simulator: required (a simulator name, e.g. mri_kspace)")
    try:
        sim = get_simulator(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}.simulator: {exc}") from None
    params = dict(raw.get("params") or {})
    bad = sorted(k for k in params if k not in sim.defaults)
    if bad:
        raise ConfigError(f"{key}.params.{bad[0]}: simulator {name!r} accepts {', '.join(sim.defaults)}")
    frac = raw.get("sigma_fraction")
    if frac is not None:
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (0 <= frac < 1):
            raise ConfigError(f"{key}.sigma_fraction={frac!r}: expected null or a number in [0, 1)")
        if "rician_sigma" not in sim.defaults:
            raise ConfigError(f"{key}.sigma_fraction: simulator {name!r} has no rician_sigma")
        if "rician_sigma" in params:
            raise ConfigError(f"{key}: give params.rician_sigma or sigma_fraction, not both")
    window = raw.get("window")
    if window is not None:
        try:
            lo, hi = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.window={window!r}: expected [low, high]") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ConfigError(f"{key}.window={window!r}: expected finite low < high")
        window = (lo, hi)
    rt = raw.get("restore_task")
    if rt is not None:
        from medrestore.registry import RegistryError, get_task

        try:
            get_task(str(rt))
        except RegistryError as exc:
            raise ConfigError(f"{key}.restore_task: {exc}") from None
    return DegradationSpec(simulator=name, params=params, sigma_fraction=None if frac is None else float(frac),
                           keep_background=bool(raw.get("keep_background", True)), window=window,
                           gray=bool(raw.get("gray", False)), restore_task=None if rt is None else str(rt))


def image_rng(task: str, key: str, seed: int) -> np.random.Generator:
    """The one generator of an image's degradation (identical in every condition)."""
    from medrestore.degradations.rng import keyed_rng

    return keyed_rng(f"{task}/{key}", int(seed))


# ---------------------------------------------------------------------------------- volumes
def degrade_volume(image: np.ndarray, key: str, spec: DegradationSpec, seed: int, task: str = "brats") -> np.ndarray:
    """``C×X×Y×Z`` physical → degraded, float32; each channel as axial slices (``Z`` first)."""
    from medrestore.degradations.simulators import simulate

    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 4:
        raise MedrestoreError(f"{key}: expected a C×X×Y×Z volume, got shape {x.shape}")
    rng = image_rng(task, key, seed)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        vol = x[c]
        params = dict(spec.params)
        if spec.sigma_fraction is not None:
            fg = vol[vol > 0]
            params["rician_sigma"] = float(spec.sigma_fraction * np.percentile(fg, 99)) if fg.size else 0.0
        slices = np.moveaxis(vol, -1, 0)                          # Z×X×Y: one 2-D slice per "channel"
        lq = np.moveaxis(simulate(spec.simulator, slices, rng=rng, **params), 0, -1)
        if spec.keep_background:
            lq = np.where(vol != 0, lq, 0.0)
        out[c] = lq
    return out


def _volume_window(lq: np.ndarray) -> dict[str, Any]:
    high = float(lq.max())   # the whole range: the window itself clips nothing
    low = float(min(0.0, lq.min()))
    return {"low": low, "high": high if high > low else low + 1.0, "unit": "a.u.", "kind": "minmax"}


def restore_volume(restorer: Any, lq: np.ndarray, clean_support: np.ndarray | None, spec: DegradationSpec,
                   window: str, opts: Mapping[str, Any]) -> np.ndarray:
    """Restore a degraded ``C×X×Y×Z`` volume channel by channel, axial slice by slice."""
    from medrestore.sample import Normalisation

    out = np.empty_like(lq)
    for c in range(lq.shape[0]):
        slices = np.moveaxis(lq[c], -1, 0)[:, None]               # Z×1×X×Y
        # MR intensities have no absolute scale: "auto" uses the volume's own range, not the
        # restoration checkpoint's training window ("checkpoint" asks for that one)
        if window == "checkpoint":
            norm = restorer.window(spec.restore_task)
        elif spec.window is not None:
            norm = Normalisation.from_dict({"low": spec.window[0], "high": spec.window[1], "unit": "a.u."})
        else:
            norm = Normalisation.from_dict(_volume_window(lq[c]))
        rest = restorer.restore_slices(slices, norm, **opts)[:, 0]
        rest = np.moveaxis(rest, 0, -1)
        if spec.keep_background and clean_support is not None:
            rest = np.where(clean_support[c], rest, 0.0)
        out[c] = rest
    return out


# ---------------------------------------------------------------------------------- 2-D images
def _spec_window(spec: DegradationSpec) -> tuple[float, float]:
    return spec.window if spec.window is not None else (0.0, 255.0)


def degrade_image(image: np.ndarray, key: str, task: str, spec: DegradationSpec, seed: int) -> np.ndarray:
    """``H×W×3`` in [0, 1] → ``C×H×W`` degraded **physical** image (C = 1 when ``gray``)."""
    from medrestore.degradations.simulators import simulate

    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise MedrestoreError(f"{task}/{key}: expected an H×W×3 image in [0, 1], got shape {x.shape}")
    chw = x.mean(-1, keepdims=True).transpose(2, 0, 1) if spec.gray else x.transpose(2, 0, 1)
    lo, hi = _spec_window(spec)
    phys = lo + np.clip(chw, 0.0, 1.0) * (hi - lo)
    return simulate(spec.simulator, phys, rng=image_rng(task, key, seed),
                    normalisation={"low": lo, "high": hi}, **spec.params)


def to_unit_rgb(phys: np.ndarray, spec: DegradationSpec) -> np.ndarray:
    """``C×H×W`` physical → ``H×W×3`` in [0, 1] (grey replicated)."""
    lo, hi = _spec_window(spec)
    unit = np.clip((np.asarray(phys, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if unit.shape[0] == 1:
        unit = np.repeat(unit, 3, axis=0)
    return np.ascontiguousarray(unit.transpose(1, 2, 0), dtype=np.float32)


def restore_image(restorer: Any, lq: np.ndarray, spec: DegradationSpec, window: str,
                  opts: Mapping[str, Any]) -> np.ndarray:
    from medrestore.sample import Normalisation

    if window == "checkpoint" or (window == "auto" and spec.restore_task in restorer.windows):
        norm = restorer.window(spec.restore_task)
    else:
        lo, hi = _spec_window(spec)
        norm = Normalisation.from_dict({"low": lo, "high": hi})
    return restorer.restore_slices(lq[None], norm, **opts)[0]


# ---------------------------------------------------------------------------------- the hook
@dataclass
class ImageScores:
    """PSNR / SSIM of one condition's images against the clean ones, by (task, key)."""

    records: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def add(self, task: str, key: str, pred: np.ndarray, clean: np.ndarray, volume: bool) -> None:
        from medrestore.metrics.image import psnr, ssim

        p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))
        t = torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))
        if volume:  # C×X×Y×Z: per channel, range of the clean channel; SSIM over axial slices
            ps, ss = [], []
            for c in range(t.shape[0]):
                rng = float(t[c].max() - t[c].min()) or 1.0
                pc, tc = p[c].permute(2, 0, 1)[:, None], t[c].permute(2, 0, 1)[:, None]
                mse = float(((pc.double() - tc.double()) ** 2).mean())
                ps.append(10 * math.log10(rng ** 2 / mse) if mse > 0 else float("inf"))
                keep = tc.flatten(1).amax(1) > 0  # slices with signal (BraTS volumes are mostly empty)
                if bool(keep.any()):
                    ss.append(float(ssim(pc[keep], tc[keep], rng).mean()))
            self.records[(task, key)] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)) if ss else float("nan")}
        else:       # H×W×3 in [0, 1]
            pc, tc = p.permute(2, 0, 1)[None], t.permute(2, 0, 1)[None]
            self.records[(task, key)] = {"psnr": float(psnr(pc, tc, 1.0)[0]), "ssim": float(ssim(pc, tc, 1.0)[0])}

    def means(self) -> dict[str, dict[str, float]]:
        """``{task: {psnr, ssim, n}}`` plus ``"mean"`` (mean over tasks of the task means)."""
        by: dict[str, list[dict[str, float]]] = {}
        for (task, _), r in self.records.items():
            by.setdefault(task, []).append(r)
        out = {}
        for task, rs in by.items():
            ps = [r["psnr"] for r in rs if math.isfinite(r["psnr"])]
            ss = [r["ssim"] for r in rs if math.isfinite(r["ssim"])]
            out[task] = {"psnr": float(np.mean(ps)) if ps else float("nan"),
                         "ssim": float(np.mean(ss)) if ss else float("nan"), "n": len(rs)}
        if out:
            allrow: dict[str, float] = {m: float(np.nanmean([v[m] for v in out.values()])) for m in ("psnr", "ssim")}
            allrow["n"] = sum(v["n"] for v in out.values())
            out["mean"] = allrow
        return out


class ConditionHook:
    """The ``pre_normalise`` callable of one condition: ``(image, key[, task]) -> image``.

    ``kind``: ``"volume"`` (``C×X×Y×Z`` physical, task from ``default_task``) or ``"image"``
    (``H×W×3`` in [0, 1]). ``condition``: ``"clean"``, ``"degraded"`` or ``"restored"`` (then
    ``restorer`` is required). ``specs``: ``{task: DegradationSpec}``, ``"*"`` for every task."""

    def __init__(self, kind: str, condition: str, specs: Mapping[str, DegradationSpec], seed: int,
                 restorer: Any = None, restore_window: str = "auto", restore_opts: Mapping[str, Any] | None = None,
                 default_task: str = "brats", score: bool = True) -> None:
        if kind not in ("volume", "image"):
            raise ConfigError(f"downstream.kind={kind!r}: expected volume or image")
        if condition not in ("clean", "degraded", "restored"):
            raise MedrestoreError(f"unknown condition {condition!r}")
        if condition == "restored" and restorer is None:
            raise MedrestoreError("the restored condition needs a restorer")
        self.kind, self.condition, self.specs, self.seed = kind, condition, dict(specs), int(seed)
        self.restorer, self.restore_window = restorer, restore_window
        self.restore_opts = dict(restore_opts or {})
        self.default_task = default_task
        self.scores = ImageScores() if score else None

    def spec(self, task: str) -> DegradationSpec:
        spec = self.specs.get(task) or self.specs.get("*")
        if spec is None:
            raise ConfigError(f"degradation.{task}: no degradation configured for task {task!r} "
                              f"(configured: {', '.join(self.specs) or 'none'}; '*' covers every task)")
        return spec

    def __call__(self, image: np.ndarray, key: str, task: str | None = None) -> np.ndarray:
        task = task or self.default_task
        clean = np.asarray(image, dtype=np.float32)
        if self.condition == "clean":
            out = clean
        else:
            spec = self.spec(task)
            if self.kind == "volume":
                out = degrade_volume(clean, key, spec, self.seed, task)
                if self.condition == "restored":
                    out = restore_volume(self.restorer, out, clean != 0, spec, self.restore_window, self.restore_opts)
            else:
                lq = degrade_image(clean, key, task, spec, self.seed)
                if self.condition == "restored":
                    lq = restore_image(self.restorer, lq, spec, self.restore_window, self.restore_opts)
                out = to_unit_rgb(lq, spec)
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.scores is not None:
            self.scores.add(task, str(key), out, clean, self.kind == "volume")
        return out


# ---------------------------------------------------------------------------------- the loop
def set_pre_normalise(datamodule: Any, dataset: Any, hook: Callable[..., np.ndarray] | None) -> None:
    """Install ``hook`` on the DataModule (``set_pre_normalise`` when it has one) and on the
    test dataset itself."""
    if datamodule is not None and hasattr(datamodule, "set_pre_normalise"):
        datamodule.set_pre_normalise(hook)
    if dataset is not None and hasattr(dataset, "pre_normalise"):
        dataset.pre_normalise = hook
    elif dataset is not None:
        raise ConfigError(f"the test dataset ({type(dataset).__name__}) has no pre_normalise hook; "
                          "downstream evaluation needs one")


def test_loader(datamodule: Any, limit: int | None = None, batch_size: int | None = None) -> Any:
    """The DataModule's test loader rebuilt in the main process (the hook holds a model, so no
    worker processes), optionally on the first ``limit`` images."""
    from torch.utils.data import DataLoader, Subset

    if hasattr(datamodule, "setup"):
        datamodule.setup("test")
    base = datamodule.test_dataloader()
    ds = base.dataset
    if limit is not None:
        ds = Subset(ds, range(min(int(limit), len(ds))))
    return DataLoader(ds, batch_size=batch_size or base.batch_size or 1, shuffle=False, num_workers=0,
                      collate_fn=base.collate_fn)


def _base_dataset(ds: Any) -> Any:
    while hasattr(ds, "dataset") and not hasattr(ds, "pre_normalise"):
        ds = ds.dataset
    return ds


def run_condition(module: Any, datamodule: Any, loader: Any, hook: ConditionHook | None,
                  trainer_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The analysis module's test loop on ``loader`` with ``hook`` installed; its result rows."""
    import lightning as L

    set_pre_normalise(datamodule, _base_dataset(loader.dataset), hook)
    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, **dict(trainer_kwargs or {})}
    trainer = L.Trainer(**kw)
    try:
        trainer.test(module, dataloaders=loader, verbose=False)
    finally:
        set_pre_normalise(datamodule, _base_dataset(loader.dataset), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not hasattr(module, "results_rows"):
        raise ConfigError(f"{type(module).__name__} has no results_rows(metrics, stage): not an analysis module")
    return [dict(r) for r in module.results_rows(metrics, "test")]


@dataclass
class Condition:
    """One column of the table: ``label`` and how its images are made."""

    label: str
    kind: str                    # clean | degraded | restored
    restorer: Any = None


def evaluate_downstream(module: Any, datamodule: Any, conditions: Sequence[Condition],
                        specs: Mapping[str, DegradationSpec], *, kind: str, seed: int = 0,
                        limit: int | None = None, batch_size: int | None = None,
                        restore_window: str = "auto", restore_opts: Mapping[str, Any] | None = None,
                        default_task: str = "brats", trainer_kwargs: Mapping[str, Any] | None = None,
                        log: Callable[[str], object] = print) -> list[dict[str, Any]]:
    """Run every condition and return the long table: per condition, the analysis module's rows
    (``results_rows``) and one row per task with the condition's image quality against clean
    (``psnr``, ``ssim``; plus a ``mean`` row, the mean over tasks, when there are several tasks;
    none for the clean condition, where they are ``inf`` / 1 by definition)."""
    if restore_window not in RESTORE_WINDOWS:
        raise ConfigError(f"restore_window={restore_window!r}: expected one of {', '.join(RESTORE_WINDOWS)}")
    module.eval()
    loader = test_loader(datamodule, limit, batch_size)
    rows: list[dict[str, Any]] = []
    for cond in conditions:
        log(f"downstream: condition {cond.label} ({len(loader.dataset)} test images)")
        hook = ConditionHook(kind, cond.kind, specs, seed, restorer=cond.restorer, restore_window=restore_window,
                             restore_opts=restore_opts, default_task=default_task, score=cond.kind != "clean")
        res = run_condition(module, datamodule, loader, hook, trainer_kwargs)
        rows += [{"condition": cond.label, **r} for r in res]
        quality = hook.scores.means() if hook.scores is not None else {}
        rows += [{"condition": cond.label, "task": task, "n": q["n"], "psnr": q["psnr"], "ssim": q["ssim"]}
                 for task, q in quality.items() if task != "mean" or len(quality) > 2]
    return rows


# ---------------------------------------------------------------------------------- the table
def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric columns of the long table in first-seen order (``n`` excluded)."""
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in ("condition", "n") or k in cols:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                cols.append(k)
    return cols


def _identity(r: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a row is about: its string cells (task, region, evaluation mode, ...)."""
    return tuple((k, v) for k, v in r.items() if k != "condition" and isinstance(v, str))


def side_by_side(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pivot the long table: one row per (row identity, metric), one column per condition. A
    row's identity is its string cells (``task``, and e.g. ``region``), so MTMed3D's TC / WT /
    ET rows stay apart."""
    conditions = list(dict.fromkeys(str(r["condition"]) for r in rows))
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        ident = _identity(r)
        for m in metric_columns([r]):
            cell = out.setdefault((ident, m), {**dict(ident), "metric": m})
            cell[str(r["condition"])] = float(r[m])
    table = list(out.values())
    for t in table:
        for c in conditions:
            t.setdefault(c, float("nan"))
    return table


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.4g}"
    return str(v)


def markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Per task, a Markdown table of metric × condition (other identity cells in brackets)."""
    table = side_by_side(rows)
    conditions = list(dict.fromkeys(str(r["condition"]) for r in rows))
    parts = [f"## {title}"] if title else []
    for task in dict.fromkeys(str(t.get("task", "")) for t in table):
        parts.append(f"\n### {task}\n")
        parts.append("| metric | " + " | ".join(conditions) + " |")
        parts.append("| --- | " + " | ".join("---:" for _ in conditions) + " |")
        for t in (t for t in table if str(t.get("task", "")) == task):
            extra = [str(v) for k, v in t.items() if k not in ("task", "metric", *conditions)]
            label = t["metric"] + (f" ({', '.join(extra)})" if extra else "")
            parts.append(f"| {label} | " + " | ".join(_cell(t[c]) for c in conditions) + " |")
    return "\n".join(parts) + "\n"


def write_tables(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, stem: str = "downstream",
                 title: str = "", notes: Sequence[str] = ()) -> dict[str, Path]:
    """``<stem>.csv`` (side by side: task, metric, one column per condition), ``<stem>.json``
    (the long rows) and ``<stem>.md``; refuses to replace any existing file."""
    import csv
    import json

    out = Path(out_dir)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("csv", "json", "md")}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; choose another run directory (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    table = side_by_side(rows)
    conditions = list(dict.fromkeys(str(r["condition"]) for r in rows))
    ident = list(dict.fromkeys(k for t in table for k in t if k not in ("metric", *conditions)))
    with open(paths["csv"], "x", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*ident, "metric", *conditions])
        w.writeheader()
        w.writerows(table)

    def plain(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    with open(paths["json"], "x") as f:
        json.dump([{k: plain(v) for k, v in r.items()} for r in rows], f, indent=2)
    text = markdown(rows, title) + "".join(f"\n{n}\n" for n in notes)
    with open(paths["md"], "x") as f:
        f.write(text)
    return paths
