"""``medrestore-cache``: build, check, show and merge caption / text-embedding caches.

    medrestore-cache build CACHE (--sets A.h5 [B.h5 ...] | --data NAME [--data-override K=V ...])
                         [--config demo|datprl|FILE.yaml] [--set K=V ...] [--tasks T ...]
                         [--splits train val test] [--batch-size N] [--flush-every N]
                         [--rank R --world-size W] [--threads N] [--overwrite] [--quiet]
    medrestore-cache check CACHE [--sets ... | --data NAME] [--splits ...] [--tasks ...]
    medrestore-cache show  CACHE KEY
    medrestore-cache merge OUT [RANK_FILE ...] [--overwrite]

``--config`` names a file of ``conf/cache/`` (captioner + encoder + batch sizes; default
``demo`` = template captions + MiniLM) and ``--set`` overrides its keys, e.g.
``--set captioner.model_dir=LLAVA_DIR``. A build is resumable: rerun the same
command after an interruption and only the missing entries are computed. Sharded builds take
``--rank/--world-size`` (or torchrun's RANK / WORLD_SIZE) and write ``CACHE.rank<R>-of-<W>.h5``;
``merge CACHE`` then combines them. See docs/captions.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medrestore.errors import ConfigError, MedrestoreError


def _add_sets(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--sets", nargs="+", metavar="SHARD", help="prepared .h5 shards")
    g.add_argument("--data", metavar="NAME", help="a Hydra data config (conf/data/NAME.yaml)")
    p.add_argument("--data-override", nargs="*", default=[], metavar="K=V",
                   help="Hydra overrides for --data, e.g. paths.data_dir=/data")
    p.add_argument("--tasks", nargs="+", default=None, help="only these task ids")
    p.add_argument("--splits", nargs="+", default=None, choices=("train", "val", "test"),
                   help="splits whose clean images are captioned (default: the config's, "
                        "train val test)")


def _sets(args: argparse.Namespace):
    from medrestore.captions.build import data_config_sets

    if args.sets:
        return list(args.sets), args.tasks
    sets, tasks = data_config_sets(args.data, args.data_override)
    return sets, args.tasks if args.tasks is not None else tasks


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _build(args: argparse.Namespace) -> int:
    from medrestore.captions.build import (SPLITS, build_cache, collect_images,
                                           load_cache_config)
    from medrestore.captions.captioners import build_captioner
    from medrestore.captions.encoders import build_encoder

    cfg = load_cache_config(args.config, args.set)
    if args.quiet:  # also silences the weight-loading bars of transformers / the hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = args.rank if args.rank is not None else _env_int("RANK", 0)
    world = args.world_size if args.world_size is not None else _env_int("WORLD_SIZE", 1)
    sets, tasks = _sets(args)
    splits = args.splits or cfg.get("splits") or list(SPLITS)
    images = collect_images(sets, splits, tasks)
    if not images:
        raise ConfigError(f"no {'/'.join(splits)} images in the sets"
                              + (f" for tasks {tasks}" if tasks else ""))
    captioner = build_captioner(cfg["captioner"])
    encoder = build_encoder(cfg["encoder"])
    report = build_cache(args.cache, images, captioner, encoder, overwrite=args.overwrite,
                         batch_size=args.batch_size or int(cfg.get("batch_size", 8)),
                         flush_every=args.flush_every or int(cfg.get("flush_every", 128)),
                         progress=not args.quiet, rank=rank, world_size=world)
    path = Path(report["path"])
    per_k = 1000 * report["seconds"] / report["computed"] if report["computed"] else 0.0
    print(f"wrote {path}: {report['count']} entries ({report['computed']} computed, "
          f"{report['total'] - report['computed']} already there) in {report['seconds']:.1f} s"
          + (f" = {per_k:.0f} s per 1,000 images" if report["computed"] else "")
          + f" on {torch.get_num_threads()} CPU thread(s); {_size_mb(path):.2f} MB; "
          f"fingerprint {report['fingerprint_id']}")
    if world > 1:
        print(f"rank {rank} of {world} done; combine the ranks with: medrestore-cache merge {args.cache}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from medrestore.captions.build import SPLITS, set_keys
    from medrestore.captions.cache import check_cache, describe_fingerprint, parts_dir

    keys = None
    splits = args.splits or list(SPLITS)
    if args.sets or args.data:
        sets, tasks = _sets(args)
        keys = set_keys(sets, splits, tasks)
    r = check_cache(args.cache, keys)
    h = r["header"]
    fp = h["fingerprint"]
    print(f"cache        {args.cache} ({_size_mb(Path(args.cache)):.2f} MB)")
    print(f"format       {h['format']}, created {h['created']}")
    print(f"fingerprint  {describe_fingerprint(fp)}")
    for part in ("captioner", "encoder"):
        shown = {k: v for k, v in fp.get(part, {}).items() if k != "prompts"}
        print(f"  {part:<10} {shown}")
    print(f"entries      {r['count']} x {len(h['perspectives'])} perspectives "
          f"({', '.join(h['perspectives'])}), {h['dim']}-d")
    print(f"invalid      {len(r['invalid'])}"
          + "".join(f"\n  {k}: {why}" for k, why in r["invalid"][:10]))
    if keys is not None:
        print(f"missing      {len(r['missing'])} of {len(set(keys))} keys of the sets "
              f"({' '.join(splits)})" + "".join(f"\n  {k}" for k in r["missing"][:10])
              + (f"\n  ... and {len(r['missing']) - 10} more" if len(r["missing"]) > 10 else ""))
    if r["unfinished"]:
        print(f"unfinished   a build in {parts_dir(args.cache)} has not finished; rerun the build")
    return 1 if (r["invalid"] or r["missing"]) else 0


def _show(args: argparse.Namespace) -> int:
    import numpy as np

    from medrestore.captions.cache import TextCache, describe_fingerprint

    cache = TextCache(args.cache)
    e = cache.entry(args.key)
    print(f"key          {e['key']}")
    print(f"source       {e['source']}")
    print(f"fingerprint  {describe_fingerprint(cache.fingerprint)}")
    for p, text in e["captions"].items():
        print(f"{p:<12} {text}")
    norms = np.linalg.norm(e["emb"], axis=-1)
    print(f"emb          {e['emb'].shape[0]} x {e['emb'].shape[1]}, norms "
          + " ".join(f"{n:.3f}" for n in norms))
    print(f"pooled       {cache.dim}-d, norm {np.linalg.norm(e['pooled']):.3f}, first values "
          + " ".join(f"{v:+.4f}" for v in e["pooled"][:6]))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from medrestore.captions.cache import CacheError, merge_files, parts_dir, rank_path

    out = Path(args.out)
    inputs = [Path(p) for p in args.inputs]
    if not inputs:
        found = sorted(out.parent.glob(f"{out.stem}.rank*-of-*{out.suffix}"))
        worlds = {p.stem.rsplit("-of-", 1)[-1] for p in found}
        if not found:
            raise CacheError(f"{out}: no rank files {out.stem}.rank<R>-of-<W>{out.suffix} to merge")
        if len(worlds) != 1:
            raise CacheError(f"{out}: rank files of several world sizes {sorted(worlds)}; "
                             "name the inputs explicitly")
        world = int(worlds.pop())
        inputs = [rank_path(out, r, world) for r in range(world)]
        absent = [str(p) for p in inputs if not p.exists()]
        if absent:
            raise CacheError(f"{out}: rank file(s) missing: {absent}; finish those ranks first")
    for p in inputs:
        if parts_dir(p).exists():
            raise CacheError(f"{p}: its build has not finished ({parts_dir(p)} exists); rerun it")
    n = merge_files(out, inputs, overwrite=args.overwrite)
    print(f"merged {len(inputs)} file(s) into {out}: {n} entries, {_size_mb(out):.2f} MB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrestore-cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="caption and encode the clean images of some sets")
    b.add_argument("cache", type=Path, help="output cache file (.h5)")
    _add_sets(b, required=True)
    b.add_argument("--config", default="demo", help="conf/cache/NAME.yaml or a YAML path (default demo)")
    b.add_argument("--set", nargs="*", default=[], metavar="K=V", help="config overrides")
    b.add_argument("--batch-size", type=int, default=None, help="images per captioning batch")
    b.add_argument("--flush-every", type=int, default=None,
                   help="entries per part file (what an interruption can lose at most)")
    b.add_argument("--rank", type=int, default=None, help="this rank (default $RANK or 0)")
    b.add_argument("--world-size", type=int, default=None,
                   help="number of ranks (default $WORLD_SIZE or 1)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--overwrite", action="store_true",
                   help="rebuild from scratch, replacing a cache built with other models")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    c = sub.add_parser("check", help="validate a cache; report missing keys of some sets")
    c.add_argument("cache", type=Path)
    _add_sets(c, required=False)
    c.set_defaults(func=_check)

    s = sub.add_parser("show", help="print the captions and embedding summary of one key")
    s.add_argument("cache", type=Path)
    s.add_argument("key")
    s.set_defaults(func=_show)

    m = sub.add_parser("merge", help="combine the rank files of a sharded build")
    m.add_argument("out", type=Path)
    m.add_argument("inputs", nargs="*", help="cache files (default: OUT's rank files)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    m.set_defaults(func=_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedrestoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
