"""The offline-preparation API: ``medrestore.prepare.run`` from Python, the command line
generated from the converters' option dataclasses, and the demo as one converter among
others."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest

import fake_trees as ft
from medrestore.cli.prepare import main
from medrestore.errors import MedrestoreError
from medrestore.prepare import CONVERTERS, run
from medrestore.prepare.options import ConvertError, SourceOptions, add_options, option


def one_line(text: str, *needles: str) -> str:
    text = text.strip()
    assert text.startswith("error: ") and "\n" not in text, text
    for n in needles:
        assert n in text, text
    return text


# ----------------------------------------------------------------------------- Python API
def test_run_paired_folder_from_python(tmp_path):
    from medrestore.io.hdf5 import read_manifest, shard_attrs

    truth = ft.paired_split_tree(tmp_path / "pf")
    out = tmp_path / "pf.h5"
    summary = run("paired_folder", src=str(tmp_path / "pf"), out=str(out),
                  task="cloud_removal", name="tiles", quiet=True)
    assert summary["path"] == str(out) and summary["samples"] == len(truth)
    assert summary["counts"] == {"cloud_removal": {"train": 3, "val": 1, "test": 2}}
    assert summary["units"] == {"train": 3, "val": 1, "test": 2}
    rows = {r["key"]: r for r in read_manifest(out)}
    assert {k: r["split"] for k, r in rows.items()} == \
        {f"tiles/{stem}": t["split"] for stem, t in truth.items()}
    attrs = shard_attrs(out)
    args = attrs["args"] if isinstance(attrs["args"], dict) else json.loads(attrs["args"])
    assert attrs["dataset"] == "paired_folder" and args["task"] == "cloud_removal"
    assert args["src"] == str(tmp_path / "pf") and args["split_fractions"] == [0.8, 0.1, 0.1]
    # the same run again refuses to replace the shard; overwrite=True replaces it
    with pytest.raises(MedrestoreError, match="already exists"):
        run("paired_folder", src=tmp_path / "pf", out=out, task="cloud_removal", quiet=True)
    assert run("paired_folder", src=tmp_path / "pf", out=out, task="cloud_removal",
               overwrite=True, quiet=True, window=(0, 4095), unit="DN12")["samples"] == 6
    row = read_manifest(out)[0]
    assert row["normalisation"]["high"] == 4095.0 and row["normalisation"]["unit"] == "DN12"


_GOOD = {"src": "SRC", "out": "OUT", "task": "cloud_removal"}


@pytest.mark.parametrize("options,needles", [
    ({"src": "SRC", "outt": "OUT"}, ("paired_folder", "unknown option(s) outt")),
    ({"out": "OUT"}, ("missing required option(s) src, task",)),
    ({**_GOOD, "slice_axis": "oblique"},
     ("--slice-axis must be one of axial, coronal, sagittal", "'oblique'")),
    ({**_GOOD, "task": "snow_removal"}, ("--task must be one of", "'snow_removal'")),
    ({**_GOOD, "seed": "3"}, ("--seed must be int, got '3'",)),
    ({**_GOOD, "seed": -1}, ("--seed must be a non-negative integer, got -1",)),
    ({**_GOOD, "window": (0, 1, 2)}, ("--window takes 2 values",)),
    ({**_GOOD, "limit": 0}, ("--limit must be >= 1, got 0",)),
    ({**_GOOD, "src": "NOPE"}, ("--src", "no such folder")),
])
def test_run_checks_options_in_one_line(tmp_path, options, needles):
    ft.paired_split_tree(tmp_path / "pf")
    where = {"SRC": tmp_path / "pf", "OUT": tmp_path / "o.h5", "NOPE": tmp_path / "nope"}
    options = {k: where.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ConvertError) as exc:
        run("paired_folder", quiet=True, **options)
    msg = str(exc.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not list(tmp_path.glob("*.h5*"))


def test_unknown_converter_lists_the_known_ones():
    with pytest.raises(MedrestoreError, match="unknown converter 'imagenet'; known converters: "):
        run("imagenet", out="x.h5")
    assert "demo" in CONVERTERS and "div2k" in CONVERTERS.names()


# ----------------------------------------------------------------------------- generated CLI
@dataclass(kw_only=True)
class ToyOptions(SourceOptions):
    level: int = option(3, "how loud (default 3)", choices=(1, 2, 3))
    pair: tuple[float, float] | None = option(None, "two numbers", metavar=("A", "B"))
    ids: tuple[str, ...] = option(("a",), "some ids", metavar="ID")
    tag: tuple[str, ...] = option((), "a tag (repeatable)", append=True)
    fast: bool = option(False, "go fast")
    internal: dict | None = option(None, cli=False)


def test_options_dataclass_generates_the_flags(tmp_path):
    from medrestore.prepare.options import options_from_args

    p = argparse.ArgumentParser()
    add_options(p, ToyOptions)
    flags = {a.dest: a for a in p._actions}
    assert "internal" not in flags
    level = flags["level"]
    assert level.option_strings == ["--level"] and level.default == 3
    assert level.help == "how loud (default 3)" and level.choices == (1, 2, 3)
    assert level.type is int and not level.required
    assert flags["src"].required and flags["out"].required and flags["src"].metavar == "DIR"
    assert flags["bad_spacing"].option_strings == ["--bad-spacing"]
    assert flags["pair"].nargs == 2 and flags["pair"].type is float
    assert flags["ids"].nargs == "+" and flags["ids"].default == ["a"]
    assert flags["fast"].default is False and flags["fast"].nargs == 0
    ns = p.parse_args(["--src", str(tmp_path), "--out", "o.h5", "--pair", "1", "2.5",
                       "--tag", "x", "--tag", "y", "--fast", "--level", "2"])
    opts = options_from_args(ToyOptions, ns)
    assert (opts.pair, opts.tag, opts.fast, opts.level, opts.ids) == \
        ([1.0, 2.5], ["x", "y"], True, 2, ["a"])
    assert opts.src == tmp_path and opts.internal is None
    opts.validate()                               # what the command line gives is valid
    assert ToyOptions(src=tmp_path, out="o.h5").tag == ()


def test_converter_help_shows_field_defaults_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["rice1", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--split-fractions TRAIN VAL TEST image split fractions (default 0.7 0.1 0.2)" in text
    assert "--task {cloud_removal,dehaze}" in text and "--window LOW HIGH" in text
    assert "--nonfinite {error,fill}" in text


@pytest.mark.parametrize("argv,needles", [
    (["--task", "haze"], ("invalid choice: 'haze'", "--help")),
    (["--seed", "abc"], ("invalid int value: 'abc'",)),
    (["--split-fractions", "0.5"], ("--split-fractions", "expected 3 arguments")),
    (["--seed", "-2"], ("--seed must be a non-negative integer, got -2",)),
])
def test_bad_command_line_value_is_one_line_exit_2(tmp_path, capsys, argv, needles):
    ft.rice1_tree(tmp_path / "rice", n=4)
    base = ["rice1", "--src", str(tmp_path / "rice"), "--out", str(tmp_path / "r.h5"), "--quiet"]
    try:
        code = main(base + argv)
    except SystemExit as exc:                     # argparse-level errors exit from the parser
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    one_line(captured.err, *needles)
    assert captured.out == "" and not (tmp_path / "r.h5").exists()


# ----------------------------------------------------------------------------- the demo
def test_demo_command_goes_through_run_converter(tmp_path, monkeypatch, capsys):
    from medrestore.prepare import base
    from medrestore.prepare.demo import DEFAULT_DEMO, Demo, DemoOptions

    seen = []

    def spy(conv, opts):
        seen.append((conv, opts))
        return {"path": str(opts.out), "counts": {"derain": {"train": 1}}, "units": {},
                "samples": 1, "seconds": 0.0, "notes": ["spied"]}

    monkeypatch.setattr(base, "run_converter", spy)
    out = tmp_path / "d.h5"
    assert main(["demo", "--out", str(out), "--seed", "3", "--max-side", "64", "--quiet"]) == 0
    conv, opts = seen[-1]
    assert isinstance(conv, Demo) and isinstance(opts, DemoOptions)
    assert (opts.out, opts.seed, opts.max_side, opts.quiet, opts.overwrite) == \
        (out, 3, 64, True, False)
    assert "note: spied" in capsys.readouterr().out
    assert main(["demo"]) == 0 and seen[-1][1].out == DEFAULT_DEMO   # the default --out
    assert run("demo", out=out, quiet=True)["notes"] == ["spied"]      # Python: the same path


def test_demo_options_are_checked_before_any_work(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d.h5"), "--max-side", "8", "--quiet"]) == 2
    one_line(capsys.readouterr().err, "max_side must be >= 32 pixels, got 8")
    (tmp_path / "d.h5").write_bytes(b"keep")
    assert main(["demo", "--out", str(tmp_path / "d.h5"), "--quiet"]) == 2
    one_line(capsys.readouterr().err, "already exists", "--overwrite")
    assert (tmp_path / "d.h5").read_bytes() == b"keep"


def test_window_rule_lives_with_the_sample_contract():
    from medrestore.sample import WindowError, check_window, pick_window, window_for

    assert window_for(np.uint8, "ct_denoise")["unit"] == "8-bit"
    assert window_for(np.int16, "ct_denoise") == {"low": -1024.0, "high": 3072.0, "unit": "HU",
                                                  "kind": "minmax"}
    photo = np.full((3, 4, 4), 300, np.uint16)
    with pytest.raises(WindowError, match="do not fit the 8-bit window"):
        pick_window(photo, "natural_denoise", "p.tif", unit="8-bit")
    assert pick_window(photo, "natural_denoise", "p.tif", window=(0, 65535))["high"] == 65535
    check_window(photo, window_for(np.uint16, "rs_sr"), "dn.tif")     # physical: never refused
    with pytest.raises(WindowError, match="LOW < HIGH"):
        window_for(np.uint16, "rs_sr", window=(5, 5))
