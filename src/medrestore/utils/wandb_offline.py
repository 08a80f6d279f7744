"""Read an offline W&B run (``wandb/offline-run-*``) without syncing it.

An offline run keeps everything in one ``run-<id>.wandb`` log (``files/config.yaml`` and
``wandb-summary.json`` are only written on sync). The log is a ``:W&B`` header followed by
32 KiB blocks of records, each ``crc32 (4 B), length (2 B), kind (1 B)`` + payload; kind 1 is a
whole record, 2 / 3 / 4 the first / middle / last piece of one split across blocks, 0 padding.
Payloads are ``wandb.proto`` ``Record`` messages: ``run`` (name, id, initial config),
``config`` (later config updates), ``history`` (one ``wandb.log`` call) and ``summary``
(latest values).

    run = read_offline_run("logs/x/runs/<run>/wandb/offline-run-20261126_120000-abc123")
    run.summary["test/ct_denoise/psnr"], run.config["cfg"]["model"]["net"]["name"]
    rows = results_from_summary(run.summary)     # the rows of results_test.csv
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from medrestore.errors import MedrestoreError

BLOCK = 32768
HEADER = 7          # b":W&B" + 2-byte version + 1-byte magic


class WandbLogError(MedrestoreError):
    """A folder that is not a readable offline W&B run (names the path)."""


@dataclass
class OfflineRun:
    dir: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def series(self, key: str, x: str = "_step") -> tuple[list[float], list[Any]]:
        """``(x values, values)`` of one logged key over the history rows that have it."""
        pts = [(r.get(x), r[key]) for r in self.history if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise WandbLogError(f"{path}: not a W&B run log (no ':W&B' header)")
    pos, buf = HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:                           # a record header never straddles blocks
            pos += room
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind not in (1, 2, 3, 4):           # 0: padding / space not yet written
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            yield buf


def _key(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _set(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[keys[-1]] = value


def _pop(target: dict[str, Any], keys: list[str]) -> None:
    for k in keys[:-1]:
        target = target.get(k) if isinstance(target.get(k), dict) else {}
    target.pop(keys[-1], None)


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json)
    except ValueError:
        return item.value_json


def read_offline_run(run_dir: str | Path) -> OfflineRun:
    """Config, summary (latest value per key; a key with ``/`` stays one key) and history rows
    of one offline run folder. A record still being written (a live run) is skipped."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb2

    d = Path(run_dir)
    logs = sorted(d.glob("run-*.wandb"))
    if not d.is_dir() or not logs:
        raise WandbLogError(f"{d}: not an offline W&B run folder (no run-*.wandb inside)")
    run = OfflineRun(dir=d)
    for raw in _records(logs[-1]):
        rec = pb2.Record()
        try:
            rec.ParseFromString(raw)
        except DecodeError:
            continue
        which = rec.WhichOneof("record_type")
        if which == "run":
            r = rec.run
            run.run_id, run.name, run.project = r.run_id, r.display_name, r.project
            for u in r.config.update:
                _set(run.config, _key(u), _value(u))
            for u in r.summary.update:
                _set(run.summary, _key(u), _value(u))
        elif which == "config":
            for u in rec.config.update:
                _set(run.config, _key(u), _value(u))
            for u in rec.config.remove:
                _pop(run.config, _key(u))
        elif which == "summary":
            for u in rec.summary.update:
                _set(run.summary, _key(u), _value(u))
            for u in rec.summary.remove:
                _pop(run.summary, _key(u))
        elif which == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set(row, _key(item), _value(item))
            run.history.append(row)
    run.config.pop("_wandb", None)
    return run


def find_offline_runs(*roots: str | Path) -> list[Path]:
    """``offline-run-*`` folders at, or anywhere below, the given folders (sorted by path)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.name.startswith("offline-run-") and root.is_dir():
            found.add(root)
        elif root.is_dir():
            found.update(p for p in root.rglob("offline-run-*") if p.is_dir())
    return sorted(found)


def results_from_summary(summary: dict[str, Any], stage: str = "test") -> list[dict[str, object]]:
    """The per-task results rows (as in ``results_<stage>.csv``) from a run's logged
    ``<stage>/<task>/<metric>`` and ``<stage>_input/<task>/<metric>`` values."""
    from medrestore.utils.report import results_rows

    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return results_rows(numbers, stage)


def run_label(run: OfflineRun) -> str:
    """The model name from the run's nested config (``cfg.model.net.name``), else its name."""
    net = ((run.config.get("cfg") or {}).get("model") or {}).get("net") or {}
    model = net.get("name") if isinstance(net, dict) else None
    return f"{model} ({run.name or run.run_id})" if model else (run.name or run.run_id or run.dir.name)
