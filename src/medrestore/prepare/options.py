"""Typed converter options: one dataclass per converter, and the CLI generated from it.

A converter's options are a ``@dataclass(kw_only=True)`` subclass of :class:`Options` (every
converter: ``out``, ``overwrite``, ``quiet``, ``seed``) or :class:`SourceOptions` (converters
that read a source tree: adds ``src``, ``limit``, ``nonfinite``, ``bad_spacing``). Each field
is declared with :func:`option`, whose metadata drive the generated ``argparse`` flag:

* the flag is ``--<field name with - for _>``, plus ``flags=`` aliases;
* the type comes from the annotation: ``bool`` is a switch, ``X | None`` takes an ``X``,
  ``tuple[float, float]`` takes exactly two values, ``tuple[str, ...]`` one or more
  (``append=True``: a repeatable flag instead);
* ``help``, ``choices`` (a tuple, or a callable evaluated when the parser is built),
  ``metavar``; ``cli=False`` keeps a field Python-only.

The same checks run whether options come from the command line or from Python
(:meth:`Options.validate`): choices, types, ``--seed``/``--limit`` ranges, ``--src`` exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from medrestore.errors import MedrestoreError


class ConvertError(MedrestoreError, ValueError):
    """A source tree that does not have the expected layout, or a bad converter option."""


def option(default: Any = MISSING, help: str = "", *, flags: tuple[str, ...] = (),
           choices: tuple[Any, ...] | Callable[[], Any] | None = None,
           metavar: str | tuple[str, ...] | None = None, append: bool = False,
           cli: bool = True) -> Any:
    """A dataclass field with its command-line description (see the module docstring).
    A list default is turned into a factory, so instances never share it."""
    meta = {"help": help, "flags": tuple(flags), "choices": choices, "metavar": metavar,
            "append": append, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X`` (anything else unchanged)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _shape(tp: Any) -> tuple[Any, int | str | None]:
    """``(element type, nargs)`` of a field type; nargs ``None`` for a scalar."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return args[0], len(args)
        return (args[0] if args else str), "+"
    return tp, None


def _choices(f: dataclasses.Field) -> tuple[Any, ...] | None:
    c = f.metadata.get("choices")
    return tuple(c()) if callable(c) else (tuple(c) if c is not None else None)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, resolved type)`` of the options shown on the command line: required ones
    first (in declaration order), then the rest."""
    hints = typing.get_type_hints(cls)
    fields = [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    return sorted(fields, key=lambda ft: _default(ft[0]) is not MISSING)


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per :func:`cli_fields` entry of the options class ``cls``."""
    for f, tp in cli_fields(cls):
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help") or None}
        default = _default(f)
        elem, nargs = _shape(tp)
        if elem is bool and nargs is None:
            kw.update(action="store_true", default=bool(default) if default is not MISSING
                      else False)
        else:
            kw["type"] = elem
            if f.metadata.get("append"):
                kw["action"] = "append"
            elif nargs is not None:
                kw["nargs"] = nargs
            if default is MISSING:
                kw["required"] = True
            else:
                # argparse would append to a shared default list; a copy keeps it pristine
                kw["default"] = list(default) if isinstance(default, (list, tuple)) else default
            if f.metadata.get("choices") is not None:
                kw["choices"] = _choices(f)
            if f.metadata.get("metavar") is not None:
                kw["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag_name(f.name), *f.metadata.get("flags", ()), **kw)


def options_from_args(cls: type, args: argparse.Namespace) -> "Options":
    """The options instance of a parsed command line (fields not on the CLI keep defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f, _ in cli_fields(cls)})


def _type_ok(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


@dataclass(kw_only=True)
class Options:
    """Options every converter has (the demo included)."""

    out: Path = option(help="output shard", metavar="FILE.h5")
    overwrite: bool = option(False, "replace an existing output file")
    quiet: bool = option(False, "no progress bar")
    seed: int = option(0, "seed of split permutations and simulated degradations (default 0)")

    def __post_init__(self) -> None:
        # Python callers pass str paths and lists; the CLI passes Path and lists
        for f, tp in typing.get_type_hints(type(self)).items():
            value = getattr(self, f, None)
            elem, nargs = _shape(tp)
            if elem is Path and nargs is None and isinstance(value, (str, os.PathLike)):
                setattr(self, f, Path(value))

    def validate(self) -> None:
        """Types and choices of every field, then the range checks; one-line ConvertErrors."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints[f.name]
            elem, nargs = _shape(tp)
            if value is None and _strip_optional(tp) is not tp:
                continue
            values = list(value) if nargs is not None and isinstance(value, (list, tuple)) \
                else [value]
            if nargs is not None and not isinstance(value, (list, tuple)):
                raise ConvertError(f"{flag_name(f.name)} takes a list of {elem.__name__}, got "
                                   f"{value!r}")
            if isinstance(nargs, int) and len(values) != nargs:
                raise ConvertError(f"{flag_name(f.name)} takes {nargs} values, got {value!r}")
            for v in values:
                if not _type_ok(v, elem):
                    raise ConvertError(f"{flag_name(f.name)} must be {elem.__name__}, got {v!r}")
            choices = _choices(f)
            if choices is not None:
                bad = [v for v in values if v not in choices]
                if bad:
                    raise ConvertError(f"{flag_name(f.name)} must be one of "
                                       f"{', '.join(map(str, choices))}, got {bad[0]!r}")
        if self.seed < 0:
            raise ConvertError(f"--seed must be a non-negative integer, got {self.seed}")

    def read_options(self) -> dict[str, Any]:
        """``read_image`` options of the run (see :class:`SourceOptions`)."""
        return {}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able ``{field: value}`` (recorded in the shard's ``args`` attribute)."""
        from medrestore.io.base import jsonable_meta

        return jsonable_meta({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


@dataclass(kw_only=True)
class SourceOptions(Options):
    """Options of converters that read a source tree (every dataset converter)."""

    src: Path = option(help="root folder of the dataset as downloaded (see docs/datasets.md)",
                       metavar="DIR")
    limit: int | None = option(None, "keep only the first N units (patients/subjects/sequences/"
                               "images) of each split: a quick dry run", metavar="N")
    nonfinite: str = option("error", "source pixels that are NaN or inf: an error (default) or "
                            "filled with the median of the finite pixels (read_image's "
                            "nonfinite option)", choices=("error", "fill"))
    bad_spacing: str = option("error", "a source spacing that is not > 0 (e.g. NIfTI pixdim 0): "
                              "an error (default) or read as unknown (read_image's bad_spacing "
                              "option)", choices=("error", "unknown"))

    def validate(self) -> None:
        super().validate()
        if not self.src.is_dir():
            raise ConvertError(f"--src {self.src}: no such folder")
        if self.limit is not None and self.limit < 1:
            raise ConvertError(f"--limit must be >= 1, got {self.limit}")

    def read_options(self) -> dict[str, Any]:
        return {"nonfinite": self.nonfinite, "bad_spacing": self.bad_spacing}


@dataclass(kw_only=True)
class WindowOptions(SourceOptions):
    """Source converters whose normalisation window may be chosen (``--window``/``--unit``)."""

    window: tuple[float, float] | None = option(
        None, "normalisation window in physical units (default: [0, 255] for uint8, else the "
        "task's registry window: HU, a.u., SUV, [0, 10000] DN)", metavar=("LOW", "HIGH"))
    unit: str | None = option(None, "unit of --window (default: 8-bit for uint8, else the "
                              "task's unit)")


def split_fractions(default: tuple[float, float, float], help: str) -> Any:
    """The ``--split-fractions TRAIN VAL TEST`` field."""
    return option(default, help, metavar=("TRAIN", "VAL", "TEST"))


def build_options(cls: type, name: str, values: Mapping[str, Any]) -> Options:
    """``cls(**values)`` with unknown / missing option names as one ConvertError line."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    missing = [n for n, f in fields.items() if _default(f) is MISSING and n not in values]
    if unknown or missing:
        what = (f"unknown option(s) {', '.join(unknown)}" if unknown
                else f"missing required option(s) {', '.join(missing)}")
        raise ConvertError(f"{name}: {what}; options: {', '.join(fields)}")
    return cls(**values)
