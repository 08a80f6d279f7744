"""Build a caption cache over the clean images of a data config.

The images are the gt of the sets' samples (a shard path, or ``{shard, tasks, ...}`` dicts as
in ``MultiTaskDataModule``; or a Hydra data config such as ``demo``). One clean image = one
``key``: a key used by several tasks (e.g. the same photograph for SR, denoising and
deraining) is captioned once, from the gt of its first sample in set and manifest order.

Order of work: keys sorted; a sharded build (rank ``r`` of ``W``) takes every W-th key from
``r``. Each batch of images is captioned, every caption encoded, and the entries handed to the
resumable :class:`medrestore.io.textcache.CacheWriter`. :func:`build_from_config` is the whole
``medrestore-cache build`` (config, sets, captioner, encoder, ranks).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from medrestore.errors import ConfigError
from medrestore.io.textcache import CacheWriter, Entry, fingerprint_id, rank_path

SPLITS = ("train", "val", "test")
CONFIG_KEYS = {"captioner", "encoder", "batch_size", "flush_every", "splits"}


@dataclass(frozen=True)
class ImageRef:
    """Where the clean image of one key is read from."""

    key: str
    shard: str
    sid: str
    task: str
    domain: str
    split: str


def collect_images(sets: Any, splits: Sequence[str] = SPLITS,
                   tasks: Sequence[str] | None = None) -> list[ImageRef]:
    """One :class:`ImageRef` per distinct key of the sets' ``splits``, sorted by key."""
    from medrestore.datasets.pairs import load_sets, normalise_sets

    bad = sorted(set(splits) - set(SPLITS))
    if bad or not splits:
        raise ConfigError(f"splits {list(splits)}: expected some of {list(SPLITS)}")
    refs: dict[str, ImageRef] = {}
    for row in load_sets(normalise_sets(sets, tasks), list(splits)):
        refs.setdefault(row["key"], ImageRef(row["key"], row["shard"], row["id"], row["task"],
                                             row["domain"], row["split"]))
    return [refs[k] for k in sorted(refs)]


def set_keys(sets: Any, splits: Sequence[str] = SPLITS, tasks: Sequence[str] | None = None) -> list[str]:
    return [r.key for r in collect_images(sets, splits, tasks)]


class _Reader:
    """Opens each shard once (sequential use in one process)."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}

    def read(self, ref: ImageRef):
        import h5py
        import numpy as np

        from medrestore.prepare.captions.captioners import CaptionInput
        from medrestore.io.hdf5 import to_unit

        f = self.files.get(ref.shard)
        if f is None:
            f = self.files[ref.shard] = h5py.File(ref.shard, "r")
        g = f["samples"][ref.sid]
        meta = json.loads(g.attrs["meta"])
        storage = str(g.attrs.get("storage", "normalised"))
        gt = to_unit(g["gt"][()], storage, meta)  # only the gt: the clean image is captioned
        return CaptionInput(key=ref.key, image=np.asarray(gt, np.float32), domain=ref.domain,
                            modality=str(meta.get("modality", "")), task=ref.task,
                            spacing=meta.get("spacing"), meta=meta)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def build_cache(out: str | os.PathLike, images: Sequence[ImageRef], captioner, encoder, *,
                overwrite: bool = False, batch_size: int = 8, flush_every: int = 128,
                progress: bool = True, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Caption and encode every image not yet in the cache; returns a report dict
    (``path, total, computed, count, seconds, fingerprint_id``).

    With ``world_size > 1`` this rank's share goes to ``rank_path(out, rank, world_size)``;
    combine the ranks with :func:`medrestore.io.textcache.merge_files`."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in [0, world size {world_size})")
    path = Path(out) if world_size == 1 else rank_path(out, rank, world_size)
    mine = sorted(images, key=lambda r: r.key)[rank::world_size]
    fp = {"captioner": captioner.fingerprint(), "encoder": encoder.fingerprint(),
          "pooling": "mean of L2-normalised perspectives, re-normalised", "image": "gt"}
    perspectives = list(captioner.perspectives)
    t0 = time.perf_counter()
    with CacheWriter(path, fp, perspectives, encoder.dim, overwrite=overwrite,
                     flush_every=flush_every) as writer:
        todo = [r for r in mine if r.key not in writer.done]
        _check_space(path, len(todo), len(mine), len(perspectives), encoder.dim)
        bar = None
        if progress and todo:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=f"captions {path.name}", unit="img", file=sys.stderr)
        reader = _Reader()
        memo: dict[str, Any] = {}
        try:
            for i in range(0, len(todo), max(1, int(batch_size))):
                refs = todo[i:i + max(1, int(batch_size))]
                items = [reader.read(r) for r in refs]
                captions = captioner.caption(items)
                texts = [c[p] for c in captions for p in perspectives]
                emb = _encode(encoder, texts, memo).reshape(len(refs), len(perspectives), -1)
                for ref, caps, e in zip(refs, captions, emb):
                    writer.add(Entry.make(ref.key, {p: caps[p] for p in perspectives}, e,
                                          {"shard": Path(ref.shard).name, "id": ref.sid,
                                           "task": ref.task, "split": ref.split}))
                if bar is not None:
                    bar.update(len(refs))
        finally:
            reader.close()
            if bar is not None:
                bar.close()
    from medrestore.io.textcache import read_header

    return {"path": str(path), "total": len(mine), "computed": len(todo),
            "count": read_header(path)["count"], "seconds": time.perf_counter() - t0,
            "fingerprint_id": fingerprint_id(fp)}


def _check_space(path: Path, todo: int, total: int, n_perspectives: int, dim: int) -> None:
    """Refuse up front when the cache cannot fit: the new rows go to part files, then every
    row is copied once more into the merged file (float32 per-perspective and pooled
    embeddings, plus about 256 bytes of caption text per perspective)."""
    from medrestore.io.textcache import CacheError
    from medrestore.io.base import ensure_free_space

    if todo == 0:
        return
    row = (n_perspectives + 1) * dim * 4 + 256 * n_perspectives
    ensure_free_space(path, (todo + total) * row, CacheError,
                      f"{todo} new entries of {n_perspectives} x {dim}-d embeddings")


def _encode(encoder, texts: list[str], memo: dict[str, Any], limit: int = 50_000):
    """Encode each distinct text once per build (template captions repeat a lot; an encoder
    is a pure function of the text, so a repeat gets the identical vector)."""
    import numpy as np

    new = [t for t in dict.fromkeys(texts) if t not in memo]
    if new:
        if len(memo) + len(new) > limit:
            memo.clear()
        vecs = np.asarray(encoder.encode(new), dtype=np.float32)
        if vecs.shape != (len(new), encoder.dim):
            raise ConfigError(f"encoder {getattr(encoder, 'name', '?')} returned shape "
                              f"{vecs.shape} for {len(new)} texts; expected {(len(new), encoder.dim)}")
        memo.update(zip(new, vecs))
    return np.stack([memo[t] for t in texts])


# ----------------------------------------------------------------------------- configs
def load_cache_config(config: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A cache config: a name under ``conf/cache/`` (``demo``, ``datprl``) or a YAML path,
    with ``key=value`` overrides (OmegaConf dot-list). Required values (``???``) that are still
    missing are a one-line error naming the key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from medrestore.utils.config import config_dir

    path = Path(config)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(config_dir()) / "cache" / f"{config}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (Path(config_dir()) / "cache").glob("*.yaml"))
        raise ConfigError(f"cache config {config!r}: no such file {path} (known: {known})")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or str(exc).split("\n")[0]
        raise ConfigError(f"cache config {config!r}: {key} is required; set it with "
                          f"--set {key}=...") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cache config {config!r}: {str(exc).splitlines()[0]}") from None
    unknown = sorted(set(out) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"cache config {config!r}: unknown key(s) {unknown}; allowed: "
                          f"{sorted(CONFIG_KEYS)}")
    for k in ("captioner", "encoder"):
        if not isinstance(out.get(k), Mapping):
            raise ConfigError(f"cache config {config!r}: '{k}' must be a mapping with a 'name'")
    return out


def data_config_sets(name: str, overrides: Sequence[str] = ()) -> tuple[Any, list[str] | None]:
    """``(sets, tasks)`` of a Hydra data config (``conf/data/<name>.yaml``), resolved the way
    ``medrestore-train data=<name>`` resolves it (paths relative to the current directory or
    ``$MEDRESTORE_ROOT`` / ``$MEDRESTORE_DATA_DIR``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from medrestore.utils.config import config_dir

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=config_dir()):
            cfg = compose(config_name="train", overrides=[f"data={name}", *overrides],
                          return_hydra_config=True)
    except HydraException as exc:
        raise ConfigError(f"data config {name!r}: {str(exc).splitlines()[0]}") from None
    HydraConfig.instance().set_config(cfg)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return data["sets"], data.get("tasks")


def resolve_sets(sets: Sequence[str] | None = None, data: str | None = None,
                 data_override: Sequence[str] = (), tasks: Sequence[str] | None = None
                 ) -> tuple[Any, list[str] | None]:
    """``(sets, tasks)`` to caption: shard paths as given, or the sets of a Hydra data config
    (its tasks unless ``tasks`` is given)."""
    if sets:
        return list(sets), None if tasks is None else list(tasks)
    if not data:
        raise ConfigError("name the sets: shard paths or a data config")
    found, cfg_tasks = data_config_sets(data, data_override)
    return found, list(tasks) if tasks is not None else cfg_tasks


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def build_from_config(cache: str | os.PathLike, *, sets: Sequence[str] | None = None,
                      data: str | None = None, data_override: Sequence[str] = (),
                      tasks: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                      config: str = "demo", overrides: Sequence[str] = (),
                      batch_size: int | None = None, flush_every: int | None = None,
                      rank: int | None = None, world_size: int | None = None,
                      threads: int | None = None, overwrite: bool = False,
                      quiet: bool = False) -> dict[str, Any]:
    """Build (or resume) the cache ``cache`` as configured by the cache config ``config``
    (:func:`load_cache_config` with ``overrides``) over ``sets`` or the data config ``data``.
    ``rank``/``world_size`` default to ``$RANK``/``$WORLD_SIZE``. Returns
    :func:`build_cache`'s report plus ``rank``, ``world_size`` and ``threads``."""
    cfg = load_cache_config(config, overrides)
    if quiet:  # also silences the weight-loading bars of transformers / the hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    from medrestore.prepare.captions.captioners import build_captioner
    from medrestore.prepare.captions.encoders import build_encoder

    if threads:
        torch.set_num_threads(threads)
    rank = rank if rank is not None else _env_int("RANK", 0)
    world = world_size if world_size is not None else _env_int("WORLD_SIZE", 1)
    sets, tasks = resolve_sets(sets, data, data_override, tasks)
    splits = list(splits or cfg.get("splits") or SPLITS)
    images = collect_images(sets, splits, tasks)
    if not images:
        raise ConfigError(f"no {'/'.join(splits)} images in the sets"
                          + (f" for tasks {tasks}" if tasks else ""))
    report = build_cache(cache, images, build_captioner(cfg["captioner"]),
                         build_encoder(cfg["encoder"]), overwrite=overwrite,
                         batch_size=batch_size or int(cfg.get("batch_size", 8)),
                         flush_every=flush_every or int(cfg.get("flush_every", 128)),
                         progress=not quiet, rank=rank, world_size=world)
    return {**report, "rank": rank, "world_size": world, "threads": torch.get_num_threads()}
