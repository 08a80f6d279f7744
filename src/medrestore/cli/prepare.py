"""``medrestore-prepare``: build HDF5 pair shards from raw data.

    medrestore-prepare demo [--out data/demo/demo.h5] [--seed 0] [--max-side 256] [--overwrite]
    medrestore-prepare DATASET --src DIR --out FILE.h5 [--overwrite] [--quiet] [--seed S]
                               [--limit N] [dataset options]

DATASET is one of the converters of ``medrestore.prepare`` (aapm_mayo, ixi, pet, div2k, df2k,
rain100l, gopro, ucmerced, cuhk_cr1, rice1, paired_folder, clean_folder); each one's expected
layout, split rule and normalisation are in docs/datasets.md and its --help. The flags of each
sub-command are generated from the converter's options dataclass; from Python the same run is
``medrestore.prepare.run(DATASET, src=..., out=...)``."""

from __future__ import annotations

import argparse
import sys

from medrestore.errors import MedrestoreError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``error: ...`` line (exit 2), like every
    other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from medrestore.prepare import CONVERTERS
    from medrestore.prepare.options import add_options

    p = _Parser(prog="medrestore-prepare", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in CONVERTERS.names():
        conv = CONVERTERS.build(name)
        c = sub.add_parser(name, help=conv.help, description=type(conv).__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(c, conv.Options)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from medrestore.prepare import CONVERTERS
        from medrestore.prepare.base import format_summary, run_converter
        from medrestore.prepare.options import options_from_args

        conv = CONVERTERS.build(args.dataset)
        print(format_summary(run_converter(conv, options_from_args(conv.Options, args))))
        return 0
    except MedrestoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
