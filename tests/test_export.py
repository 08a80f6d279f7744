"""``medrestore-export``: checkpoints to ONNX / TorchScript with dynamic H×W, checked against eager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose
from medrestore.errors import ConfigError
from medrestore.inference import export as ex

NORM = {"ct_denoise": {"low": -1000.0, "high": 2000.0, "unit": "HU", "kind": "minmax"}}


def _save(model, path: Path) -> Path:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def _randomise(net: torch.nn.Module, seed: int) -> None:
    # freshly built networks start near identity (zero λ, zero output conv in places); random
    # weights make every branch (generated kernels, prompts) count in the parity check
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    from medrestore.modules.datprl import DATPRLModule
    from medrestore.modules.restoration import RestorationModule
    from medrestore.modules.tat import TATModule

    root = tmp_path_factory.mktemp("export_ckpts")
    torch.manual_seed(0)
    restormer = RestorationModule({"name": "restormer_tiny", "in_channels": 1, "out_channels": 1},
                                  {"_target_": "torch.optim.Adam", "lr": 1e-3},
                                  ema={"decay": 0.9})
    _randomise(restormer.net, 1)
    _randomise(restormer.net_ema, 2)  # EMA weights differ from net: the export must use them
    restormer.medrestore_normalisation = NORM
    # train size 32: at 64² and 75×90 the full-resolution maps exceed the 48² TLC window
    tat = TATModule({"name": "tat_tiny", "in_channels": 3, "out_channels": 3, "train_size": 32})
    _randomise(tat.net, 3)
    datprl = DATPRLModule({"name": "datprl_tiny", "in_channels": 3, "out_channels": 3,
                           "prompt_dim": 32})
    _randomise(datprl.net, 4)
    return {name: _save(m, root / f"{name}.ckpt")
            for name, m in (("restormer", restormer), ("tat", tat), ("datprl", datprl))}


def _module(path: Path):
    from medrestore.modules.checkpoint import load_module

    return load_module(path).eval()


# ------------------------------------------------------------------ traceable replacements
def test_window_index_is_the_tlc_grid():
    from medrestore.models.layers.tlc import window_starts

    for n in range(1, 200):
        for win in (1, 3, 7, 16, 24, 48, 96, 192):
            idx = ex._window_index(n, win)
            k = min(n, win)
            assert idx[:, 0].tolist() == window_starts(n, win), (n, win)
            assert idx.shape[1] == k and int(idx.max()) == n - 1


def test_replacements_match_eager_layers():
    from medrestore.models.layers.dynamic import dynamic_depthwise_conv2d
    from medrestore.models.layers.tlc import windowed_attend

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(2, 4, 50, 70, generator=gen) for _ in range(3))

    def attend(q, k, v):  # per-window channel attention, like MDTA: depends on the window
        a = torch.softmax(q.flatten(2) @ k.flatten(2).transpose(1, 2), dim=-1)
        return (a @ v.flatten(2)).view_as(v)

    ref = windowed_attend(attend, q, k, v, (24, 36))
    assert torch.allclose(ex.traceable_windowed_attend(attend, q, k, v, (24, 36)), ref, atol=1e-6)
    x, wt = torch.rand(3, 5, 17, 23, generator=gen), torch.randn(3, 5, 1, 3, 3, generator=gen)
    assert torch.allclose(ex.traceable_depthwise_conv2d(x, wt), dynamic_depthwise_conv2d(x, wt),
                          atol=1e-5)
    pool = torch.nn.AdaptiveAvgPool2d(8)
    for h, w in ((61, 75), (8, 8), (20, 9)):
        x = torch.rand(2, 3, h, w, generator=gen)
        assert torch.allclose(ex.TraceableAdaptiveAvgPool2d(8)(x), pool(x), atol=1e-6)


# ------------------------------------------------------------------ ONNX
@pytest.mark.parametrize("name", ["restormer", "tat", "datprl"])
def test_onnx_export_runs_in_onnxruntime_at_any_size(name, ckpts, tmp_path):
    import onnxruntime as ort

    out = tmp_path / f"{name}.onnx"
    lines: list[str] = []
    info = ex.export_checkpoint(ckpts[name], "onnx", out, echo=lines.append)
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar == json.loads(json.dumps(info))
    # TAT: one more size with more TLC windows than the traced 61×75 (2×2 at full resolution)
    sizes = [[64, 64], [75, 90]] + ([[99, 99]] if name == "tat" else [])
    assert [r["size"] for r in sidecar["parity"]] == sizes
    assert all(r["max_abs_diff"] <= 1e-4 and r["batch"] == 2 for r in sidecar["parity"])
    assert sum("max |Δ| = " in line for line in lines) == len(sizes)
    assert sidecar["arch"] == f"{name}_tiny" and sidecar["status"] == "ok"
    assert sidecar["dynamic_axes"] == {"batch": True, "height": True, "width": True}
    assert sidecar["opset"] == 17 and {"torch", "onnx", "onnxruntime"} <= set(sidecar["versions"])
    module = _module(ckpts[name])
    c = module.in_channels
    assert sidecar["in_channels"] == c and sidecar["out_channels"] == module.out_channels
    if name == "restormer":
        assert sidecar["normalisation"] == NORM and sidecar["ema"] is True and c == 1
    else:
        assert sidecar["normalisation"] is None and "normalisation_note" in sidecar
    if name == "tat":
        from medrestore.models.layers.tlc import window_grid

        assert sidecar["tlc"] == "auto"
        window = module.net.encoder_level1[0].attn.tlc.window
        assert len(window_grid(64, 64, window)[0]) > 1   # windows really overlap at 64²
    # independently of the export's own check: a third size and batch straight from the file
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [sidecar["input_name"]]
    x = torch.rand(3, c, 43, 101, generator=torch.Generator().manual_seed(5))
    got = sess.run([sidecar["output_name"]], {sidecar["input_name"]: x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4


# ------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", ["restormer", "tat"])
def test_torchscript_round_trip_at_a_third_size(name, ckpts, tmp_path):
    info = ex.export_checkpoint(ckpts[name], "torchscript", echo=None,
                                out=tmp_path / f"{name}.pt", sizes=[[64, 64], [57, 83]])
    assert info["format"] == "torchscript" and info["opset"] is None
    loaded = torch.jit.load(str(tmp_path / f"{name}.pt"))
    module = _module(ckpts[name])
    x = torch.rand(3, module.in_channels, 98, 41, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got, ref = loaded(x), module(x)
        assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4
        if name == "restormer":   # the EMA network was exported, not the raw one
            assert (got - module.net(x)).abs().max() > 1e-3


def test_a_trace_that_froze_the_tlc_window_grid_fails_parity(ckpts, tmp_path, monkeypatch):
    """Without the tensor-op TLC the trace keeps the traced size's window grid: right at sizes
    with as many windows (64², 75×90), wrong at the size the export adds for that reason."""
    from medrestore.models.layers.tlc import TLC

    monkeypatch.setattr(ex, "_traceable_tlc_class", lambda: TLC)
    with pytest.raises(ex.ExportError, match=r"^parity failed at 99x99: "):
        ex.export_checkpoint(ckpts["tat"], "torchscript", tmp_path / "tat.pt", echo=None)
    assert not (tmp_path / "tat.pt").exists() and (tmp_path / "tat.pt.failed").exists()
    failed = json.loads((tmp_path / "tat.pt.failed.json").read_text())
    assert [r["max_abs_diff"] <= 1e-4 for r in failed["parity"]] == [True, True, False]


def test_default_output_is_beside_the_checkpoint(ckpts, tmp_path):
    ckpt = tmp_path / "run" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(ckpts["restormer"].read_bytes())
    info = ex.export_checkpoint(ckpt, "torchscript", echo=None)
    assert (ckpt.parent / "last.pt").is_file() and (ckpt.parent / "last.pt.json").is_file()
    assert info["file"] == "last.pt" and info["checkpoint"] == "last.ckpt"


# ------------------------------------------------------------------ failures
def test_parity_failure_is_detected_and_not_left_as_good(ckpts, tmp_path, monkeypatch):
    real = ex.traceable_copy

    def perturbed(net):
        net = real(net)
        with torch.no_grad():
            net.output.weight.add_(1e-2)   # the exported graph no longer matches eager
        return net

    monkeypatch.setattr(ex, "traceable_copy", perturbed)
    out = tmp_path / "m.pt"
    out.write_bytes(b"an earlier good export")
    with pytest.raises(ex.ExportError, match=r"^parity failed at 64x64: max \|Δ\| = .* > "
                                              r"atol=0.0001; the export is kept as .*m\.pt\.failed"):
        ex.export_checkpoint(ckpts["restormer"], "torchscript", out, overwrite=True, echo=None)
    assert out.read_bytes() == b"an earlier good export"          # not replaced by the bad one
    assert not out.with_name("m.pt.json").exists() and not out.with_name("m.pt.partial").exists()
    failed = json.loads(out.with_name("m.pt.failed.json").read_text())
    assert failed["status"] == "parity_failed" and failed["parity"][0]["max_abs_diff"] > 1e-4
    assert out.with_name("m.pt.failed").is_file()


def test_existing_output_needs_overwrite(ckpts, tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(ex.ExportError, match=r"m\.pt: already exists; pass overwrite=true"):
        ex.export_checkpoint(ckpts["restormer"], "torchscript", out, echo=None)
    assert out.read_bytes() == b"keep me"
    ex.export_checkpoint(ckpts["restormer"], "torchscript", out, overwrite=True, echo=None)
    assert torch.jit.load(str(out)) is not None
    sidecar = out.with_name("m.pt.json")
    with pytest.raises(ex.ExportError, match=r"m\.pt\.json: already exists"):
        out.unlink()        # the sidecar alone is protected too
        ex.export_checkpoint(ckpts["restormer"], "torchscript", out, echo=None)
    assert sidecar.is_file()


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    from conftest import RunsCode

    marker = tmp_path / "ran"
    bad = tmp_path / "bad.ckpt"
    torch.save({"pytorch-lightning_version": "2.0", "state_dict": {}, "x": RunsCode(marker)}, bad)
    with pytest.raises(ConfigError, match=r"bad\.ckpt: refused: the file holds pickled Python"):
        ex.export_checkpoint(bad, "onnx", echo=None)
    assert not marker.exists() and not list(tmp_path.glob("bad.onnx*"))


@pytest.mark.parametrize("option, value, match", [
    ("format", "tflite", r"format='tflite'; expected one of onnx, torchscript"),
    ("opset", 13, r"opset=13; expected an integer in \[16, "),
    ("sizes", [[64]], r"sizes=\[\[64\]\]; expected a list of \[H, W\] pairs"),
    ("sizes", [[4, 64]], r"sizes=\[\[4, 64\]\]: below the model's size multiple 8"),
    ("atol", 0, r"atol=0.0; expected a positive number"),
])
def test_bad_options_are_one_line(option, value, match, ckpts, tmp_path):
    kwargs = {"format": "onnx", option: value}
    with pytest.raises(ConfigError, match=match):
        ex.export_checkpoint(ckpts["restormer"], out=tmp_path / "m.onnx", echo=None, **kwargs)
    assert not list(tmp_path.iterdir())


def test_a_network_without_padding_is_refused(tmp_path):
    from medrestore.modules.restoration import RestorationModule

    module = RestorationModule({"name": "restormer_tiny", "in_channels": 1, "out_channels": 1,
                                "pad_multiple": 0}, {"_target_": "torch.optim.Adam", "lr": 1e-3})
    with pytest.raises(ex.ExportError, match=r"net\.pad_multiple=0, so the network takes only "
                                             r"multiples of 8"):
        ex.export_module(module, tmp_path / "m.onnx", echo=None)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ CLI
def _cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def test_cli_missing_checkpoint_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medrestore.cli.export",
                           f"ckpt_path={tmp_path / 'nope.ckpt'}", f"paths.log_dir={tmp_path}/logs"],
                          capture_output=True, text=True, env=_cli_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err == [f"error: ckpt_path={tmp_path / 'nope.ckpt'}: no such checkpoint file"]


def test_cli_exports_and_refuses_foreign_files(ckpts, tmp_path, capsys):
    from medrestore.cli.export import export

    plain = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, plain)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    for path, expected in ((plain, "not a Lightning checkpoint"), (junk, "not a loadable weights file")):
        cfg = compose("export", [f"ckpt_path={path}"], tmp_path / "run")
        with pytest.raises(SystemExit) as exc:
            export(cfg)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and str(path) in err[0]
    out = tmp_path / "cli.pt"
    cfg = compose("export", [f"ckpt_path={ckpts['restormer']}", "format=torchscript",
                             f"out={out}", "sizes=[[64,64],[75,90]]"], tmp_path / "run")
    assert cfg.atol == 1e-4 and cfg.overwrite is False and cfg.device == "cpu"
    info = export(cfg)
    assert out.is_file() and info["status"] == "ok" and len(info["parity"]) == 2
    with pytest.raises(SystemExit):          # again without overwrite=true: refused
        export(cfg)
    assert "already exists; pass overwrite=true" in capsys.readouterr().err
