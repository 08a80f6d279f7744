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
import sys
from pathlib import Path

from medrestore.errors import MedrestoreError


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


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _build(args: argparse.Namespace) -> int:
    from medrestore.prepare.captions.build import build_from_config

    report = build_from_config(
        args.cache, sets=args.sets, data=args.data, data_override=args.data_override,
        tasks=args.tasks, splits=args.splits, config=args.config, overrides=args.set,
        batch_size=args.batch_size, flush_every=args.flush_every, rank=args.rank,
        world_size=args.world_size, threads=args.threads, overwrite=args.overwrite,
        quiet=args.quiet)
    path = Path(report["path"])
    per_k = 1000 * report["seconds"] / report["computed"] if report["computed"] else 0.0
    print(f"wrote {path}: {report['count']} entries ({report['computed']} computed, "
          f"{report['total'] - report['computed']} already there) in {report['seconds']:.1f} s"
          + (f" = {per_k:.0f} s per 1,000 images" if report["computed"] else "")
          + f" on {report['threads']} CPU thread(s); {_size_mb(path):.2f} MB; "
          f"fingerprint {report['fingerprint_id']}")
    if report["world_size"] > 1:
        print(f"rank {report['rank']} of {report['world_size']} done; combine the ranks with: "
              f"medrestore-cache merge {args.cache}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from medrestore.io.textcache import check_cache, describe_fingerprint, parts_dir
    from medrestore.prepare.captions.build import SPLITS, resolve_sets, set_keys

    keys = None
    splits = args.splits or list(SPLITS)
    if args.sets or args.data:
        sets, tasks = resolve_sets(args.sets, args.data, args.data_override, args.tasks)
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

    from medrestore.io.textcache import TextCache, describe_fingerprint

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
    from medrestore.io.textcache import merge_ranks

    inputs, n = merge_ranks(args.out, args.inputs, overwrite=args.overwrite)
    print(f"merged {len(inputs)} file(s) into {args.out}: {n} entries, "
          f"{_size_mb(Path(args.out)):.2f} MB")
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
