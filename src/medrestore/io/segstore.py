"""Lesion-segmentation folders: the TP-Seg / SR-ICL layout, read directly and written by the
lesion converters.

Layout (format ``medrestore-seg/1``)::

    ROOT/
      tpseg.json                      # optional manifest (written by our converters)
      train/image/<name>.png          # one image per name (grey or RGB, 8 or 16 bit)
      train/mask/gt_task<k>/<name>.png  # binary mask of task k for the image <name>
      val/...   test/...

A split folder may also hold ``gt_task<k>/`` directly (no ``mask/`` level), and ``ROOT``
itself may be a split folder (it holds ``image/``). As in the public TP-Seg loader, an image
and a mask pair up when their file names match without the extension, and the task index
``k`` comes from the mask folder. The image folder is shared by every task of a split, so
names are unique per split; an image listed under several ``gt_task<k>`` folders is one sample
per task.

The manifest (``tpseg.json``) names the tasks (``tasks[k]`` = task of ``gt_task<k>``, with its
modality and whether its masks are real or simulated) and holds one row of meta per sample
(key, source file, original shape, extras). A tree without one (a copy of the SR-ICL data)
reads as well; its task names are ``task<k>`` unless the reader is told them.

Writers (:class:`SegStoreWriter`) build ``ROOT.partial/`` and rename it when every sample is
written; they refuse an existing ``ROOT`` unless asked to overwrite it. Masks are written as
8-bit PNG 0 / 255; images as 8-bit PNG (8-bit sources) or 16-bit grey PNG (windowed
volumes: CT, MR, PET phantom), so a restoration harness working on [0, 1] images loses little
to quantisation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from medrestore.errors import MedrestoreError
from medrestore.io.base import jsonable_meta

FORMAT = "medrestore-seg/1"
MANIFEST = "tpseg.json"
SPLITS = ("train", "val", "test")
IMAGE_DIR = "image"
MASK_DIR = "mask"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_TASK_DIR = re.compile(r"^gt_task(\d+)$")


class SegStoreError(MedrestoreError, ValueError):
    """A segmentation folder that does not have the expected layout, or a bad write."""


# -------------------------------------------------------------------------------- pixels
def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as float32 ``H×W×3`` in [0, 1]: grey replicated to three channels,
    alpha dropped, 16-bit images scaled by 65535 and 8-bit ones by 255."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            elif mode in ("L", "RGB"):
                arr = np.asarray(im, dtype=np.float32) / 255.0
            else:                                   # palette, LA, RGBA, CMYK, 1 ...
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise SegStoreError(f"{path}: cannot read image ({exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(np.clip(arr[..., :3], 0.0, 1.0))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as bool ``H×W``: scaled to [0, 1] by its type's range (or kept when its
    values are all 0 / 1, as in masks saved with labels 0 and 1) and thresholded at 0.5, so
    JPEG masks (Kvasir-SEG) lose their compression noise. Colour masks use their maximum
    channel."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "1", "LA", "RGBA", "CMYK", "YCbCr"):
                im = im.convert("RGB" if im.mode != "1" else "L")
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise SegStoreError(f"{path}: cannot read mask ({exc})") from None
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return binarise(arr)


def binarise(arr: np.ndarray) -> np.ndarray:
    """Integer / float label image -> bool foreground (see :func:`read_mask`)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    peak = float(arr.max(initial=0))
    if peak <= 1.0:
        return arr > 0.5
    full = 65535.0 if arr.dtype == np.uint16 or peak > 255 else 255.0
    return arr.astype(np.float32) / full > 0.5


# -------------------------------------------------------------------------------- reading
def _listing(folder: Path) -> dict[str, Path]:
    """``{stem: file}`` of the image files of ``folder`` (two files with one stem: error)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in out:
                raise SegStoreError(f"{folder}: {out[p.stem].name} and {p.name} share the name "
                                    f"{p.stem!r}")
            out[p.stem] = p
    return out


def task_folders(split_dir: Path) -> dict[int, Path]:
    """``{k: folder}`` of the ``gt_task<k>`` folders of a split (under ``mask/`` or not)."""
    found: dict[int, Path] = {}
    for base in (split_dir / MASK_DIR, split_dir):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            m = _TASK_DIR.match(p.name)
            if m and p.is_dir():
                k = int(m.group(1))
                if k in found:
                    raise SegStoreError(f"{split_dir}: gt_task{k} found both under mask/ and "
                                        "beside image/")
                found[k] = p
    return dict(sorted(found.items()))


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SegStoreError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SegStoreError(f"{path}: format {data.get('format') if isinstance(data, dict) else None!r}"
                            f", expected {FORMAT!r}")
    return data


class SegStore:
    """Rows of a lesion-segmentation tree (see the module docstring).

    Args:
        root: the tree (with split folders) or one split folder (holding ``image/``).
        task_names: names of ``gt_task0, gt_task1, …`` (overrides the manifest's; default: the
            manifest's, else ``task<k>``).
    """

    def __init__(self, root: str | os.PathLike, task_names: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SegStoreError(f"{self.root}: no such segmentation folder")
        self.manifest = read_manifest(self.root)
        man_tasks = [t["name"] for t in self.manifest["tasks"]] if self.manifest else None
        self.task_names = list(task_names) if task_names is not None else man_tasks
        self.task_info: dict[str, dict[str, Any]] = {
            t["name"]: dict(t) for t in (self.manifest or {}).get("tasks", [])}
        self._meta: dict[tuple[str, str, int], dict[str, Any]] = {}
        for r in (self.manifest or {}).get("samples", []):
            self._meta[(r["split"], r["name"], int(r["task_index"]))] = r
        if (self.root / IMAGE_DIR).is_dir():
            self.split_dirs = {"all": self.root}
        else:
            self.split_dirs = {s: self.root / s for s in SPLITS if (self.root / s / IMAGE_DIR).is_dir()}
        if not self.split_dirs:
            raise SegStoreError(f"{self.root}: neither image/ nor train|val|test/image/ found "
                                "(expected the TP-Seg layout: <split>/image + <split>/mask/gt_task<k>)")

    @property
    def splits(self) -> list[str]:
        return list(self.split_dirs)

    def task_name(self, k: int) -> str:
        if self.task_names is None:
            return f"task{k}"
        if k >= len(self.task_names):
            raise SegStoreError(f"{self.root}: gt_task{k} found but only {len(self.task_names)} "
                                f"task name(s) given: {self.task_names}")
        return str(self.task_names[k])

    def rows(self, split: str) -> list[dict[str, Any]]:
        """One row per (image, task) pair of ``split``: ``image``, ``mask`` (paths), ``task``,
        ``task_index`` (k of the folder), ``name``, ``key``, ``meta``. Masks without an image
        are an error naming them; images without a mask are not samples (as in TP-Seg)."""
        if split not in self.split_dirs:
            return []
        sdir = self.split_dirs[split]
        images = _listing(sdir / IMAGE_DIR)
        rows = []
        for k, folder in task_folders(sdir).items():
            masks = _listing(folder)
            orphans = sorted(set(masks) - set(images))
            if orphans:
                raise SegStoreError(f"{folder}: {len(orphans)} mask(s) without an image in "
                                    f"{sdir / IMAGE_DIR}, e.g. {masks[orphans[0]].name}")
            task = self.task_name(k)
            for name in sorted(masks):
                rec = self._meta.get((split, name, k), {})
                meta = {"modality": self.task_info.get(task, {}).get("modality", "unknown"),
                        "mask": self.task_info.get(task, {}).get("mask", "unknown"),
                        "source": rec.get("source", images[name].relative_to(self.root).as_posix()),
                        "split": split}
                meta.update(rec.get("meta", {}))
                if "shape" in rec:
                    meta["shape"] = list(rec["shape"])
                rows.append({"image": images[name], "mask": masks[name], "task": task,
                             "task_index": k, "name": name, "key": rec.get("key", name),
                             "meta": meta})
        return rows


# -------------------------------------------------------------------------------- writing
def safe_name(key: str) -> str:
    """A file name for a sample key (``/`` and unsafe characters replaced)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", key.replace("/", "__")).strip("._")
    if not name:
        raise SegStoreError(f"sample key {key!r} gives an empty file name")
    return name


def _to_pil(image: np.ndarray, what: str):
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        return Image.fromarray(a)
    if a.dtype == np.uint16 and a.ndim == 2:
        return Image.fromarray(a)            # 16-bit grey PNG (mode I;16)
    raise SegStoreError(f"{what}: images are stored as uint8 H×W / H×W×3 or uint16 H×W, got "
                        f"{a.dtype} {a.shape}")


class SegStoreWriter:
    """Writes a tree in the layout above (``with SegStoreWriter(out, tasks) as w: w.add(...)``).

    ``tasks`` lists ``{name, modality, mask: real|simulated, ...}`` in folder order
    (``gt_task<k>`` = ``tasks[k]``). Everything goes to ``out.partial/`` first; the manifest is
    written and the folder renamed only when the block ends without an error."""

    def __init__(self, out: str | os.PathLike, tasks: Sequence[Mapping[str, Any]], *,
                 overwrite: bool = False, attrs: Mapping[str, Any] | None = None) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise SegStoreError(f"{self.out}: already exists; pass --overwrite to replace it")
        if self.out.exists() and not (self.out / MANIFEST).is_file():
            # never delete a folder we did not write, even with --overwrite
            raise SegStoreError(f"{self.out}: exists and is not a segmentation tree written by "
                                f"medrestore (no {MANIFEST}); choose another --out")
        self.tasks = [dict(t) for t in tasks]
        self.index = {t["name"]: k for k, t in enumerate(self.tasks)}
        self.attrs = dict(attrs or {})
        self.overwrite = overwrite
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.rows: list[dict[str, Any]] = []
        self._names: set[tuple[str, str]] = set()
        self._masks: set[tuple[str, str, int]] = set()

    def __enter__(self) -> "SegStoreWriter":
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        return self

    def add(self, image: np.ndarray, mask: np.ndarray, *, task: str, key: str, split: str,
            meta: Mapping[str, Any] | None = None, source: str = "",
            name: str | None = None) -> str:
        """Write one (image, mask) sample; returns its file name (without suffix). An image
        already written under ``name`` in this split is reused (one image, several tasks)."""
        if split not in SPLITS:
            raise SegStoreError(f"split {split!r}; expected one of {SPLITS}")
        if task not in self.index:
            raise SegStoreError(f"task {task!r} is not one of {list(self.index)}")
        k = self.index[task]
        name = safe_name(name or key)
        mask = np.asarray(mask)
        img = np.asarray(image)
        if mask.shape != img.shape[:2]:
            raise SegStoreError(f"{key}: mask {mask.shape} and image {img.shape[:2]} differ in size")
        if (split, name, k) in self._masks:
            raise SegStoreError(f"{key}: sample {name!r} of task {task} written twice in {split}")
        idir = self.tmp / split / IMAGE_DIR
        mdir = self.tmp / split / MASK_DIR / f"gt_task{k}"
        idir.mkdir(parents=True, exist_ok=True)
        mdir.mkdir(parents=True, exist_ok=True)
        if (split, name) not in self._names:
            _to_pil(img, key).save(idir / f"{name}.png", compress_level=6)
            self._names.add((split, name))
        from PIL import Image

        Image.fromarray((binarise(mask).astype(np.uint8) * 255)).save(mdir / f"{name}.png")
        self._masks.add((split, name, k))
        self.rows.append({"split": split, "name": name, "task": task, "task_index": k,
                          "key": key, "source": source, "shape": list(img.shape[:2]),
                          "foreground": round(float(binarise(mask).mean()), 6),
                          "meta": jsonable_meta(dict(meta or {}))})
        return name

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        manifest = {"format": FORMAT, "tasks": self.tasks, **jsonable_meta(self.attrs),
                    "samples": self.rows}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)


def iter_counts(rows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str, int]]:
    """``(task, split, count)`` of manifest rows, in first-seen order."""
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        seen[(r["task"], r["split"])] = seen.get((r["task"], r["split"]), 0) + 1
    for (t, s), n in seen.items():
        yield t, s, n
