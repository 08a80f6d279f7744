"""Restore files and folders with a checkpoint: the work behind ``medrestore-predict``.

:func:`plan` maps an input to ``(source, destination)`` items:

* a file (DICOM, NIfTI, PNG/TIFF/JPEG/JPEG 2000, HDF5; ``file.h5::dataset`` for one array) or a
  DICOM series folder -> ``output`` (inside ``output`` when that is an existing folder and the
  input a file);
* any other folder -> the same tree under ``output``: every folder that holds DICOM files is
  one series, every other image file is one item; hidden files and unknown suffixes are
  skipped.

:func:`predict_items` restores them one by one with a :class:`~medrestore.inference.restorer.Restorer`.
A file that cannot be read, restored or written is one line in the summary and the others are
still restored; an existing destination is refused (that item fails) unless ``overwrite``.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from medrestore.errors import ConfigError, MedrestoreError


class PredictError(MedrestoreError):
    """Some inputs failed (the summary names them); exit code 2."""


@dataclass
class PredictResult:
    source: str
    output: str
    status: str = "pending"        # "ok" | "failed"
    seconds: float = 0.0
    shape: str = ""
    message: str = ""
    events: list[str] = field(default_factory=list)


def _hidden(p: Path) -> bool:
    return p.name.startswith(".")


def _image_file(p: Path) -> bool:
    from medrestore.io.base import format_for_suffix, sniff_format

    if not p.is_file() or _hidden(p):
        return False
    return format_for_suffix(p) is not None or sniff_format(p) is not None


def _walk(folder: Path, rel: Path, out: list[tuple[Path, Path]]) -> None:
    from medrestore.io.base import is_dicom_file
    from medrestore.io.dicom import dicom_files_in

    entries = sorted(p for p in folder.iterdir() if not _hidden(p))
    if dicom_files_in(folder, recursive=False, limit=1):
        out.append((folder, rel))
    for p in entries:
        if p.is_dir():
            _walk(p, rel / p.name, out)
        elif _image_file(p) and not is_dicom_file(p):
            out.append((p, rel / p.name))


def plan(input: str | os.PathLike, output: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(source, destination)`` pairs for an input file, series folder or folder tree."""
    from medrestore.io.base import split_dataset_path

    src_path, dataset = split_dataset_path(input, None)
    dst = Path(output)
    if not src_path.exists():
        raise ConfigError(f"input={input}: no such file or directory")
    if src_path.is_file():
        if dst.is_dir():
            dst = dst / src_path.name
        if dataset is not None and "::" not in str(output):
            dst = Path(f"{dst}::{dataset}")
        return [(Path(str(input)), dst)]
    if dst.exists() and dst.is_file():
        raise ConfigError(f"output={output}: is a file, but input={input} is a folder; give a "
                          "folder name")
    found: list[tuple[Path, Path]] = []
    _walk(src_path, Path("."), found)
    if not found:
        raise ConfigError(f"input={input}: no DICOM series or image files found in this folder")
    items = []
    for src, rel in found:
        if src == src_path and len(found) > 1:  # the root series beside other files: a sub-folder
            rel = Path(src_path.name + "_series")
        items.append((src, dst if str(rel) == "." else dst / rel))
    return items


def predict_items(restorer: Any, items: Iterable[tuple[Path, Path]], task: str | None = None, *,
                  overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], object] = print, **options: Any) -> list[PredictResult]:
    """Restore each ``(source, destination)``; ``options`` go to
    :meth:`Restorer.restore_file` (``normalisation``, ``scale``, ``tile``, ``overlap``, ``tta``,
    ``batch_size``, ``amp``, ``reader``). Never raises for a bad file: see the results."""
    from medrestore.io.base import one_line

    results = []
    for src, dst in items:
        res = PredictResult(source=str(src), output=str(dst))
        bar = _Bar(src.name or str(src), enabled=progress)
        t0 = time.perf_counter()
        try:
            written = restorer.restore_file(src, dst, task, overwrite=overwrite,
                                            progress=bar.update, on_start=bar.start, **options)
            res.status, res.output = "ok", str(written)
            res.events = list(restorer.last_events)
        except MedrestoreError as exc:
            res.status, res.message = "failed", one_line(exc)
        except (OSError, ValueError, RuntimeError) as exc:  # a file our readers did not foresee
            res.status, res.message = "failed", f"{src}: {type(exc).__name__}: {one_line(exc)}"
        finally:
            bar.close()
        res.seconds = round(time.perf_counter() - t0, 3)
        res.shape = bar.shape
        for e in res.events:
            log(f"{src}: {e}")
        log(f"{'restored' if res.status == 'ok' else 'FAILED'} {src} -> "
            f"{res.output if res.status == 'ok' else res.message} ({res.seconds:.2f} s)")
        results.append(res)
    return results


class _Bar:
    """A per-file tqdm bar over slices (created when the slice count is known)."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled, self.bar, self.shape = name, enabled, None, ""

    def start(self, n: int) -> None:
        self.shape = f"{n} slice(s)"
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n, desc=self.name, unit="slice", leave=False)

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_summary(results: list[PredictResult], path: str | os.PathLike) -> Path:
    """One CSV row per input: source, output, status, seconds, slices, message."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source", "output", "status", "seconds", "shape",
                                          "message", "events"])
        w.writeheader()
        for r in results:
            row = asdict(r)
            row["events"] = "; ".join(r.events)
            w.writerow(row)
    return p


def summary_line(results: list[PredictResult], seconds: float) -> str:
    ok = sum(r.status == "ok" for r in results)
    failed = [r for r in results if r.status != "ok"]
    line = f"restored {ok} of {len(results)} input(s) in {seconds:.1f} s"
    if failed:
        line += f"; {len(failed)} failed: " + "; ".join(r.message for r in failed)
    return line
