"""``medrestore-prepare``: build HDF5 pair shards from raw data.

    medrestore-prepare demo [--out data/demo/demo.h5] [--seed 0] [--overwrite]
    medrestore-prepare DATASET --src DIR --out FILE.h5 [--overwrite] [--quiet] [--seed S]
                               [--limit N] [dataset options]

DATASET is one of the converters in ``medrestore.datasets.converters`` (aapm_mayo, ixi, pet,
div2k, df2k, rain100l, gopro, ucmerced, cuhk_cr1, rice1, paired_folder, clean_folder); each
one's expected layout, split rule and normalisation are in docs/datasets.md and its --help."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from medrestore.errors import MedrestoreError
from medrestore.io.hdf5 import ShardError

DEFAULT_DEMO = Path(os.environ.get("MEDRESTORE_DATA_DIR", "data")) / "demo" / "demo.h5"


def _refuse_existing(out: Path, overwrite: bool) -> None:
    # checked before any slow work, so a mistyped path costs nothing and loses nothing
    if out.exists() and not overwrite:
        raise ShardError(f"{out}: already exists; pass --overwrite to replace it")


def _demo(args: argparse.Namespace) -> int:
    _refuse_existing(args.out, args.overwrite)
    from medrestore.datasets.demo import build_demo

    t0 = time.perf_counter()
    summary = build_demo(args.out, seed=args.seed, overwrite=args.overwrite,
                         max_side=args.max_side, progress=not args.quiet)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    counts = summary.get("counts", summary)
    if isinstance(counts, dict):
        for task, per_split in counts.items():
            print(f"  {task:<16} {per_split}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrestore-prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    d = sub.add_parser("demo", help="embedded multi-domain demo from images shipped in packages")
    d.add_argument("--out", type=Path, default=DEFAULT_DEMO, help=f"output shard (default {DEFAULT_DEMO})")
    d.add_argument("--seed", type=int, default=0, help="degradation seed (default 0)")
    d.add_argument("--max-side", type=int, default=256, help="longest image side in pixels")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_demo)
    _add_converters(sub)
    return p


def _add_converters(sub) -> None:
    from medrestore.datasets.converters import CONVERTERS, get_converter
    from medrestore.datasets.converters.base import add_common_arguments

    for name in CONVERTERS:
        conv = get_converter(name)
        c = sub.add_parser(name, help=conv.help, description=type(conv).__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(c)
        conv.add_arguments(c)
        c.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from medrestore.datasets.converters import get_converter
    from medrestore.datasets.converters.base import format_summary, run_converter

    summary = run_converter(get_converter(args.dataset), args)
    print(format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedrestoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
