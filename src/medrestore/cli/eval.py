"""``medrestore-eval ckpt_path=...``: test one checkpoint, or compare several on the same data.

A Lightning checkpoint rebuilds the model from its own hyper-parameters (the family recorded
in the checkpoint), so the evaluated network is the trained one whatever the config's
defaults say. Every file is read with ``torch.load(weights_only=True)``: one that would run
code on load is refused with one line (:mod:`medrestore.modules.checkpoint`). Any other weights
file (e.g. the authors' released ``.pth``) is loaded into the configured ``model``
(``model.net.pretrained_format: official|medrestore``).

``ckpt_path`` is one path or a list (``ckpt_path=[a.ckpt,b.ckpt]``); ``labels=[...]`` names
them (default: derived from each checkpoint's model / run name / file). Every model is scored
with the same ``protocol`` (``null``: each task's registry default; ``tat``; ``datprl``;
``normalised``), per image. The first checkpoint is the reference of the paired comparison.
Outputs in the run directory (``paths.output_dir``; names and columns are a contract):

* ``<label>/results_test.csv|json`` per model (the trainer's table: ``medrestore-report``
  reads each label folder as a run), and for a single checkpoint also ``results_test.csv|json``
  at the top as before;
* ``scores_test.csv``: one row per (model, image), :data:`SCORE_COLUMNS`;
* ``comparison_test.csv|md``: per task, domain and mean, every model, :data:`COMPARISON_COLUMNS`;
* ``paired_test.csv|md`` (two or more checkpoints): model − reference per task and metric,
  paired bootstrap CI and Wilcoxon p (:mod:`medrestore.metrics.paired`), :data:`PAIRED_COLUMNS`;
* ``grids/<task>.png``: example grids (:mod:`medrestore.inference.figures`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig

from medrestore.errors import ConfigError
from medrestore.utils.config import config_dir
from medrestore.utils.runtime import print_config, rank_zero_info, task_wrapper

METRICS = ("psnr", "ssim", "rmse")
SCORE_COLUMNS = ("model", "protocol", "task", "domain", "key", "psnr_input", "psnr",
                 "ssim_input", "ssim", "rmse_input", "rmse")
PAIRED_COLUMNS = ("task", "metric", "reference", "model", "n", "mean_reference", "mean_model",
                  "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "method")
#: file names written at the top of the run directory (refused if present, unless overwrite)
TOP_OUTPUTS = ("scores_test.csv", "comparison_test.csv", "comparison_test.md",
               "paired_test.csv", "paired_test.md", "grids")
_LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


def _comparison_columns() -> tuple[str, ...]:
    from medrestore.utils.report import COLUMNS

    return ("model", "protocol", *COLUMNS)


# ------------------------------------------------------------------ checks before any work
def _checkpoint_paths(cfg: DictConfig) -> tuple[list[Path], bool]:
    """The checkpoint files and whether ``ckpt_path`` was given as a list."""
    from omegaconf import ListConfig, OmegaConf

    from medrestore.utils.validate import validate_run_config

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.get("ckpt_path") in (None, ""):
        validate_run_config(cfg, required=("ckpt_path",))  # the usual one-line hint
    raw = cfg.ckpt_path
    is_list = isinstance(raw, (ListConfig, list, tuple))
    items = list(raw) if is_list else [raw]
    if not items:
        raise ConfigError("ckpt_path=[]: expected one checkpoint or a list of checkpoints")
    paths = []
    for i, item in enumerate(items):
        where = f"ckpt_path[{i}]" if is_list else "ckpt_path"
        if not isinstance(item, (str, Path)) or not str(item):
            raise ConfigError(f"{where}={item!r}: expected a checkpoint file path")
        p = Path(str(item))
        if not p.is_file():
            raise ConfigError(f"{where}={p}: no such checkpoint file")
        paths.append(p)
    dup = [p for p, n in Counter(p.resolve() for p in paths).items() if n > 1]
    if dup:
        raise ConfigError(f"ckpt_path lists {dup[0]} more than once; give each checkpoint once")
    return paths, is_list


def _protocol(cfg: DictConfig) -> str | None:
    from medrestore.metrics.protocols import PROTOCOLS

    value = cfg.get("protocol")
    if value in (None, "", "null", "None"):
        return None
    if str(value) not in PROTOCOLS:
        raise ConfigError(f"protocol={value!r}: expected null (each task's default) or one of "
                          f"{', '.join(PROTOCOLS.names())}")
    return str(value)


def _describe(path: Path, option: str, cfg: DictConfig) -> dict[str, Any]:
    """What labels and checks need from a checkpoint: model name, run name, stored protocol."""
    from medrestore.models.pretrained import read_weights
    from medrestore.modules.checkpoint import check_module_checkpoint, is_lightning_checkpoint
    from medrestore.modules.restoration import CONFIG_KEY

    obj = read_weights(path, option)  # weights_only=True: a file that would run code is refused
    info: dict[str, Any] = {"path": path, "lightning": is_lightning_checkpoint(obj)}
    if info["lightning"]:
        check_module_checkpoint(obj, f"{option}={path}")
        hp = obj.get("hyper_parameters") or {}
        net = hp.get("net") or {}
        stored = obj.get(CONFIG_KEY) or {}
        stored_net = (stored.get("model") or {}).get("net") or {} if isinstance(stored, dict) else {}
        info["model"] = str(net.get("name") or stored_net.get("name") or "model")
        info["run_name"] = stored.get("run_name") if isinstance(stored, dict) else None
        info["stored_protocol"] = (hp.get("metrics") or {}).get("protocol")
    else:
        info["model"] = str(cfg.model.net.name)
        info["run_name"] = None
        info["stored_protocol"] = cfg.model.get("metrics", {}).get("protocol")
    parent = path.parent
    info["folder"] = parent.parent.name if parent.name == "checkpoints" else parent.name
    info["stem"] = path.stem
    del obj
    return info


def _safe(part: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(part)).strip("_") or "x"


def derive_labels(infos: Sequence[dict[str, Any]]) -> list[str]:
    """Short unique labels: the model name, then (only where names clash) the first of run name,
    run folder, file stem that tells the clashing checkpoints apart, then a position."""
    parts = [[_safe(i["model"]), _safe(i.get("run_name") or i["folder"]), _safe(i["folder"]),
              _safe(i["stem"])] for i in infos]
    labels = [p[0] for p in parts]
    used = [1] * len(infos)
    while True:
        groups: dict[str, list[int]] = {}
        for i, lb in enumerate(labels):
            groups.setdefault(lb, []).append(i)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return labels
        progressed = False
        for g in clashes:
            for j in range(max(used[i] for i in g), len(parts[0])):
                if len({parts[i][j] for i in g}) > 1:
                    for i in g:
                        labels[i] = f"{labels[i]}-{parts[i][j]}"
                        used[i] = j + 1
                    progressed = True
                    break
            else:
                for n, i in enumerate(g):
                    labels[i] = f"{labels[i]}-{n + 1}"
                progressed = True
        if not progressed:  # pragma: no cover - every pass changes a clashing label
            return labels


def _labels(cfg: DictConfig, infos: list[dict[str, Any]]) -> list[str]:
    given = cfg.get("labels")
    if given in (None, ""):
        return derive_labels(infos)
    labels = [str(x) for x in (given if not isinstance(given, str) else [given])]
    if len(labels) != len(infos):
        raise ConfigError(f"labels has {len(labels)} entr{'y' if len(labels) == 1 else 'ies'} "
                          f"for {len(infos)} checkpoint(s) in ckpt_path; give one label per "
                          "checkpoint (or leave labels=null)")
    for lb in labels:
        if not _LABEL_OK.match(lb) or lb in TOP_OUTPUTS:
            raise ConfigError(f"labels: {lb!r} is not usable as a folder name; expected letters, "
                              "digits and . _ - + = (not starting with a symbol, not one of the "
                              f"output names {', '.join(TOP_OUTPUTS)})")
    dup = sorted(lb for lb, n in Counter(labels).items() if n > 1)
    if dup:
        raise ConfigError(f"labels: {dup[0]!r} is given more than once; labels must be unique")
    return labels


def _grid_options(cfg: DictConfig) -> tuple[int, tuple[float, float], str | None]:
    n = cfg.get("grid_examples", 3)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"grid_examples={n!r}: expected a whole number >= 0 (0: no grids)")
    win = cfg.get("grid_ct_window", [-160, 240])
    try:
        lo, hi = (float(v) for v in win)
    except (TypeError, ValueError):
        raise ConfigError(f"grid_ct_window={win}: expected [low, high] in HU, e.g. [-160,240]") from None
    if not lo < hi:
        raise ConfigError(f"grid_ct_window=[{lo:g}, {hi:g}]: expected low < high")
    name = cfg.get("grid_ct_window_name")
    return n, (lo, hi), (str(name) if name not in (None, "") else None)


def _check_tat(protocol: str | None, tasks: list[str]) -> None:
    from medrestore.metrics.protocols import TAT_TEST_WINDOWS
    from medrestore.registry import get_task

    if protocol != "tat":
        return
    other = [t for t in tasks if get_task(t).modality not in TAT_TEST_WINDOWS]
    if other:
        raise ConfigError(f"protocol=tat scores CT, MR and PT tasks only; the test data also holds "
                          f"{', '.join(other)} (restrict data.tasks to medical tasks or set "
                          "protocol=null)")


def _check_outputs(out_dir: Path, labels: list[str], single: bool, overwrite: bool) -> None:
    if overwrite:
        return
    names = list(TOP_OUTPUTS) + [f"{lb}/results_test.csv" for lb in labels]
    if single:
        names += ["results_test.csv"]
    found = [n for n in names if (out_dir / n).exists()]
    if found:
        raise ConfigError(f"paths.output_dir={out_dir} already holds {', '.join(found[:3])}"
                          f"{' ...' if len(found) > 3 else ''}; set overwrite=true to replace "
                          "them or choose another run directory")


# ------------------------------------------------------------------ per-image scores
def _gather_callback():
    """A callback that, under DDP, gathers every rank's per-image scores on all ranks at the
    end of the test epoch (each rank scored its own images; none is dropped)."""
    from lightning.pytorch.callbacks import Callback

    class GatherSampleScores(Callback):
        def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.world_size <= 1:
                return
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ConfigError(f"trainer world size {trainer.world_size} without an initialised "
                                  "process group: per-image scores cannot be gathered; evaluate "
                                  "on one device (trainer=gpu or trainer=cpu)")
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, list(pl_module.sample_scores or []))
            pl_module.sample_scores = [r for p in parts for r in p]

    return GatherSampleScores()


def score_rows(label: str, records: list[dict[str, Any]], protocol: str | None) -> list[dict[str, Any]]:
    """``scores_test.csv`` rows of one model, in registry task order then key order."""
    from medrestore.registry import TASKS
    from medrestore.utils.report import task_protocol

    order = {t: i for i, t in enumerate(TASKS)}
    rows = [{"model": label, "protocol": task_protocol(r["task"], protocol), **r} for r in records]
    return sorted(rows, key=lambda r: (order.get(r["task"], len(order)), str(r["key"])))


def paired_rows(scores: list[dict[str, Any]], labels: list[str], n_resamples: int,
                seed: int) -> list[dict[str, Any]]:
    """Model − reference (``labels[0]``) per task and metric, images matched by key."""
    from medrestore.metrics.paired import pair_by_key, paired_stats
    from medrestore.registry import TASKS

    ref = labels[0]
    tasks = [t for t in TASKS if any(s["task"] == t for s in scores)]
    out = []
    for task in tasks:
        for metric in METRICS:
            per_model: dict[str, dict[str, float]] = {}
            dups: dict[str, int] = {}
            for lb in labels:
                values: dict[str, list[float]] = {}
                for s in scores:
                    if s["model"] == lb and s["task"] == task:
                        values.setdefault(str(s["key"]), []).append(float(s[metric]))
                # the same image twice in the test sets (e.g. two shards): its mean score
                per_model[lb] = {k: sum(v) / len(v) for k, v in values.items()}
                dups[lb] = sum(len(v) - 1 for v in values.values())
            for lb in labels[1:]:
                keys, r, m = pair_by_key(per_model[ref], per_model[lb])
                stats = paired_stats(r, m, n_resamples=n_resamples, seed=seed)
                unpaired = len(set(per_model[ref]) ^ set(per_model[lb]))
                if unpaired:
                    stats["method"] += f"; {unpaired} image(s) scored by one model only left out"
                if dups[ref] or dups[lb]:
                    stats["method"] += "; repeated keys averaged"
                out.append({"task": task, "metric": metric, "reference": ref, "model": lb, **stats})
    return out


# ------------------------------------------------------------------ grids
def _grid_examples(datamodule: Any, n: int) -> dict[str, list[int]]:
    """Per task, the test-set rows shown in the grids (keys spread evenly, sorted)."""
    from medrestore.inference.figures import pick_examples

    rows = datamodule.dataset("test").rows
    by_task: dict[str, dict[str, int]] = {}
    for i, r in enumerate(rows):
        by_task.setdefault(r["task"], {}).setdefault(str(r["key"]), i)
    return {t: [keys[k] for k in pick_examples(list(keys), n)] for t, keys in by_task.items()}


def _restore_examples(model: Any, datamodule: Any, chosen: dict[str, list[int]], device: Any,
                      store: dict[str, dict[int, dict[str, Any]]], label: str) -> None:
    """Restore the grid examples with ``model`` (outside the trainer, rank zero) into ``store``."""
    import torch

    from medrestore.sample import collate_samples, to_native_channels

    ds = datamodule.dataset("test")
    model = model.float().to(device).eval()
    with torch.no_grad():
        for task, idxs in chosen.items():
            for i in idxs:
                sample = ds[i]
                batch = collate_samples([sample])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pred, _ = model.restore(batch)
                c = int(batch["channels"][0])
                entry = store.setdefault(task, {}).setdefault(i, {
                    "key": sample["key"], "meta": sample["meta"],
                    "lq": to_native_channels(torch.as_tensor(sample["lq"]), c).numpy(),
                    "gt": to_native_channels(torch.as_tensor(sample["gt"]), c).numpy(), "preds": {}})
                entry["preds"][label] = to_native_channels(pred[0].float(), c).clamp(0, 1).cpu().numpy()


def write_grids(out_dir: Path, store: dict[str, dict[int, dict[str, Any]]], labels: list[str],
                protocol: str | None, ct_window: tuple[float, float],
                ct_window_name: str | None) -> list[Path]:
    from medrestore.inference.figures import task_grid
    from medrestore.registry import TASKS
    from medrestore.utils.report import task_protocol

    paths = []
    for task in [t for t in TASKS if t in store]:
        examples = [store[task][i] for i in sorted(store[task], key=lambda i: str(store[task][i]["key"]))]
        path = out_dir / "grids" / f"{task}.png"
        task_grid(path, task, examples, labels, modality=TASKS[task].modality, ct_window=ct_window,
                  ct_window_name=ct_window_name, protocol=task_protocol(task, protocol))
        paths.append(path)
    return paths


# ------------------------------------------------------------------ the entry point
@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only
    from omegaconf import OmegaConf, open_dict

    from medrestore.cli.common import build_trainer, report
    from medrestore.utils.validate import validate_run_config

    # every check before any evaluation work
    paths, as_list = _checkpoint_paths(cfg)
    first = cfg.copy()
    with open_dict(first):
        first.ckpt_path = str(paths[0])
    validate_run_config(first, required=("ckpt_path",))
    protocol = _protocol(cfg)
    grid_n, ct_window, ct_window_name = _grid_options(cfg)
    resamples, paired_seed = int(cfg.get("paired_resamples", 10_000)), int(cfg.get("paired_seed", 0))
    if resamples < 1:
        raise ConfigError(f"paired_resamples={resamples}: expected >= 1")
    infos = [_describe(p, f"ckpt_path[{i}]" if as_list else "ckpt_path", cfg) for i, p in enumerate(paths)]
    labels = _labels(cfg, infos)
    single = len(paths) == 1
    out_dir = Path(cfg.paths.output_dir)
    rank_zero = rank_zero_only.rank == 0
    if rank_zero:
        _check_outputs(out_dir, labels, single, bool(cfg.get("overwrite", False)))
    datamodule = instantiate(cfg.data)
    tasks = sorted({r["task"] for r in datamodule.dataset("test").rows})
    _check_tat(protocol, tasks)
    for info, label in zip(infos, labels):
        if info["stored_protocol"] != protocol:
            rank_zero_info(f"{label}: model.metrics.protocol={info['stored_protocol']} in the "
                           f"checkpoint/config; scoring every model with protocol={protocol} "
                           "(null: each task's default)")
    print_config(cfg, out_dir / "config_resolved.yaml")
    chosen = _grid_examples(datamodule, grid_n) if grid_n else {}

    from medrestore.utils.config import instantiate_dict

    # one logger set for the whole evaluation; with several models the per-model test scalars
    # would collide under one name, so only the tables (and grids) are logged
    loggers = instantiate_dict(cfg.get("logger"), "logger")
    if not single and rank_zero:
        for lg in loggers:
            lg.log_hyperparams({"cfg": OmegaConf.to_container(cfg, resolve=True),
                                "checkpoints": {lb: str(p) for lb, p in zip(labels, paths)}})
    all_scores: list[dict[str, Any]] = []
    comparison: list[dict[str, Any]] = []
    grid_store: dict[str, dict[int, dict[str, Any]]] = {}
    metrics: dict[str, float] = {}
    objs: dict[str, Any] = {"cfg": cfg, "labels": labels}
    for i, (path, label) in enumerate(zip(paths, labels)):
        if cfg.get("seed") is not None:
            L.seed_everything(int(cfg.seed), workers=True)
        if i:  # a fresh DataModule per model: no loader state carried over
            datamodule = instantiate(cfg.data)
        model = _load(path, infos[i], cfg, f"ckpt_path[{i}]" if as_list else "ckpt_path")
        model.protocol_override = protocol
        model.sample_scores = []
        trainer, _, _ = build_trainer(cfg, loggers=loggers if single else [],
                                      extra_callbacks=[_gather_callback()])
        rank_zero_info(f"evaluating {label}: {path}")
        trainer.test(model=model, datamodule=datamodule, verbose=False)
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if single:
            metrics = m
            rows = report(trainer, datamodule, "test", out_dir, f"Test set, {path.name}")
        else:
            metrics.update({f"{label}/{k}": v for k, v in m.items()})
            rows = report(trainer, datamodule, "test", out_dir / label, f"Test set, {label} ({path.name})",
                          table_key=f"test/results/{label}", loggers=loggers)
        if trainer.global_rank == 0:
            from medrestore.utils.report import row_protocol, write_results

            if single:
                write_results(rows, out_dir / label, "results_test")
            _write_label_config(out_dir / label, infos[i], label, protocol)
            all_scores += score_rows(label, model.sample_scores, protocol)
            comparison += [{"model": label, "protocol": row_protocol(str(r["task"]), tasks, protocol), **r}
                           for r in rows]
            if chosen:
                _restore_examples(model, datamodule, chosen, trainer.strategy.root_device, grid_store, label)
        if single:
            objs.update({"datamodule": datamodule, "model": model, "trainer": trainer})
        else:
            del model
    if rank_zero:
        objs["outputs"] = _write_comparison(out_dir, labels, protocol, tasks, all_scores, comparison,
                                            grid_store, ct_window, ct_window_name, resamples,
                                            paired_seed, loggers)
    for lg in loggers:
        lg.save()
    return metrics, objs


def _load(path: Path, info: dict[str, Any], cfg: DictConfig, option: str) -> Any:
    from hydra.utils import instantiate

    from medrestore.modules.checkpoint import load_module

    if info["lightning"]:
        return load_module(path, option)
    # plain weights (ours or the authors'): into the configured architecture
    model = instantiate(cfg.model, _recursive_=False)
    model.load_pretrained(str(path))
    return model


def _write_label_config(folder: Path, info: dict[str, Any], label: str, protocol: str | None) -> None:
    """A minimal ``config_resolved.yaml`` so ``medrestore-report <run>/<label>`` names the model
    and the label (the checkpoint path sits under ``paths.``, which the report leaves out)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump(
        {"label": label, "protocol": protocol, "model": {"net": {"name": info["model"]}},
         "paths": {"checkpoint": str(info["path"])}}, sort_keys=False))


def _write_comparison(out_dir: Path, labels: list[str], protocol: str | None, tasks: list[str],
                      scores: list[dict[str, Any]], comparison: list[dict[str, Any]],
                      grid_store: dict[str, Any], ct_window: tuple[float, float],
                      ct_window_name: str | None, resamples: int, seed: int,
                      loggers: list[Any]) -> dict[str, Path]:
    from medrestore.cli.common import log_images, log_results_table
    from medrestore.utils.report import markdown_table, protocol_description, write_csv

    cols = _comparison_columns()
    out: dict[str, Path] = {}
    out["scores"] = write_csv(scores, out_dir / "scores_test.csv", SCORE_COLUMNS)
    out["comparison"] = write_csv(comparison, out_dir / "comparison_test.csv", cols)
    described = protocol_description(protocol, tasks)
    table = markdown_table(comparison, cols)
    n_text = ", ".join(f"`{lb}`" for lb in labels)
    # the protocol comes first: a table read on its own must say how it was scored
    md = (f"{described}\n\nTest-set comparison of {n_text}. Rows: tasks (registry order), "
          "domains and the mean (unweighted means over tasks); `_input` = the degraded input, "
          "`_restored` = the model's output, `_gain` = restored − input.\n\n" + table + "\n")
    (out_dir / "comparison_test.md").write_text(md)
    out["comparison_md"] = out_dir / "comparison_test.md"
    print("\n" + described + "\n" + table)
    log_results_table(loggers, comparison, "test/comparison", columns=cols)
    if len(labels) > 1:
        paired = paired_rows(scores, labels, resamples, seed)
        out["paired"] = write_csv(paired, out_dir / "paired_test.csv", PAIRED_COLUMNS)
        short = [c for c in PAIRED_COLUMNS if c != "method"]
        shown = [{**r, "p_wilcoxon": _p_cell(r)} for r in paired]
        ptable = markdown_table(shown, short, metric_of="metric")
        methods = sorted({r["method"] for r in paired})
        pmd = (f"{described}\n\nPaired comparison against `{labels[0]}`. "
               f"Per task and metric: differences model − reference (`{labels[0]}`) over the "
               "images both scored, matched by image key; `mean_diff` is their mean, "
               f"[`ci_low`, `ci_high`] a 95 % percentile paired bootstrap interval "
               f"({resamples} resamples of the images, seed {seed}), `p_wilcoxon` the two-sided "
               "Wilcoxon signed-rank p (scipy.stats.wilcoxon, zero differences dropped). Higher "
               "is better for PSNR and SSIM, lower for RMSE. No correction for multiple "
               "comparisons.\n\n" + ptable + "\n\nMethods:\n\n" +
               "\n".join(f"- {m}" for m in methods) + "\n")
        (out_dir / "paired_test.md").write_text(pmd)
        out["paired_md"] = out_dir / "paired_test.md"
        print(f"\npaired against {labels[0]} (model - reference; 95% bootstrap CI; Wilcoxon p)\n" + ptable)
        log_results_table(loggers, paired, "test/paired", columns=PAIRED_COLUMNS)
    if grid_store:
        grids = write_grids(out_dir, grid_store, labels, protocol, ct_window, ct_window_name)
        for g in grids:
            log_images(loggers, f"test/grids/{g.stem}", [g], [g.stem])
        rank_zero_info(f"example grids written to {out_dir / 'grids'}")
    rank_zero_info(f"comparison written to {out['comparison']}")
    return out


def _p_cell(row: dict[str, Any]) -> Any:
    """A NaN p-value reads as its reason (e.g. too few non-zero differences) in the Markdown."""
    p = row["p_wilcoxon"]
    if isinstance(p, float) and p != p:
        why = next((part for part in str(row["method"]).split("; ") if part.startswith("Wilcoxon: ")), "")
        return f"n/a ({why[len('Wilcoxon: '):]})" if why else "n/a"
    return p


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
