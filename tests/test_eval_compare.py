"""``medrestore-eval`` with several checkpoints: per-image scores, comparison, paired statistics,
example grids; the paired statistics module; the single-checkpoint path; bad input."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import compose, write_toy_shard

SCORE_HEADER = ["model", "protocol", "task", "domain", "key", "psnr_input", "psnr", "ssim_input",
                "ssim", "rmse_input", "rmse"]
PAIRED_HEADER = ["task", "metric", "reference", "model", "n", "mean_reference", "mean_model",
                 "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "method"]
N_TEST = 7  # test images per task: enough non-zero differences for a Wilcoxon p


# ---------------------------------------------------------------- metrics.paired (pure)
def test_constant_shift_collapses_the_interval_on_it():
    from medrestore.metrics.paired import paired_stats

    ref = np.linspace(20, 30, 9)
    s = paired_stats(ref, ref + 0.5)
    assert s["n"] == 9 and s["mean_diff"] == pytest.approx(0.5)
    assert s["ci_low"] == pytest.approx(0.5) and s["ci_high"] == pytest.approx(0.5)
    # 9 equal positive differences: ties, so the normal approximation is used
    assert 0 < s["p_wilcoxon"] < 0.01 and "approx" in s["method"]
    assert s["mean_reference"] == pytest.approx(25.0) and s["mean_model"] == pytest.approx(25.5)


def test_swapped_order_flips_the_sign_and_keeps_p():
    from medrestore.metrics.paired import paired_stats

    rng = np.random.default_rng(3)
    a = rng.normal(30, 1, 12)
    b = a + rng.normal(0.3, 0.4, 12)
    ab, ba = paired_stats(a, b), paired_stats(b, a)
    assert ab["mean_diff"] == pytest.approx(-ba["mean_diff"])
    assert ab["ci_low"] == pytest.approx(-ba["ci_high"]) and ab["ci_high"] == pytest.approx(-ba["ci_low"])
    assert ab["p_wilcoxon"] == pytest.approx(ba["p_wilcoxon"])
    assert ab["ci_low"] < ab["mean_diff"] < ab["ci_high"]


def test_seeded_bootstrap_is_deterministic_and_matches_a_direct_computation():
    from scipy.stats import wilcoxon

    from medrestore.metrics.paired import bootstrap_ci, paired_stats

    d = np.random.default_rng(0).normal(0.2, 1.0, 15)
    assert bootstrap_ci(d, seed=1) == bootstrap_ci(d, seed=1)
    assert bootstrap_ci(d, seed=1) != bootstrap_ci(d, seed=2)
    # the interval is the 2.5/97.5 % quantiles of the resampled means
    rng = np.random.default_rng(5)
    means = d[rng.integers(0, d.size, size=(2000, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert bootstrap_ci(d, n_resamples=2000, seed=5) == pytest.approx((lo, hi))
    s = paired_stats(np.zeros(15), d)
    assert s["p_wilcoxon"] == pytest.approx(wilcoxon(d, method="exact").pvalue)
    assert "exact" in s["method"] and "seed 0" in s["method"] and "10000 resamples" in s["method"]


def test_too_few_or_zero_differences_give_nan_with_a_reason():
    from medrestore.metrics.paired import paired_stats

    few = paired_stats([1.0, 2.0, 3.0], [1.5, 2.5, 3.1])
    assert math.isnan(few["p_wilcoxon"]) and "non-zero difference(s) < 6" in few["method"]
    same = paired_stats(np.arange(8.0), np.arange(8.0))
    assert math.isnan(same["p_wilcoxon"]) and "all differences are 0" in same["method"]
    assert same["mean_diff"] == 0 and same["ci_low"] == same["ci_high"] == 0
    # an infinite PSNR (perfect output) cannot enter a mean: the pair is left out, and said so
    inf = paired_stats([20.0, 21.0, 22.0], [21.0, math.inf, 23.0])
    assert inf["n"] == 2 and inf["mean_diff"] == pytest.approx(1.0)
    assert "1 non-finite pair(s) left out" in inf["method"]
    with pytest.raises(ValueError, match="equal lengths"):
        paired_stats([1.0], [1.0, 2.0])


def test_labels_are_short_and_unique():
    from medrestore.cli.eval import derive_labels

    def info(model, run=None, folder="r1", stem="last"):
        return {"model": model, "run_name": run, "folder": folder, "stem": stem}

    assert derive_labels([info("tat_tiny"), info("restormer_tiny")]) == ["tat_tiny", "restormer_tiny"]
    assert derive_labels([info("tat", "jobA"), info("tat", "jobB")]) == ["tat-jobA", "tat-jobB"]
    assert derive_labels([info("tat", "j", "f", "last"), info("tat", "j", "f", "epoch_3")]) == [
        "tat-last", "tat-epoch_3"]
    assert derive_labels([info("tat"), info("tat")]) == ["tat-1", "tat-2"]


# ---------------------------------------------------------------- the entry point
@pytest.fixture(scope="module")
def compare_setup(tmp_path_factory):
    """A shard with 7 test images per task and two tiny checkpoints built without training: an
    identity restormer_tiny and one with a perturbed output layer."""
    import lightning as L
    import torch

    from medrestore.modules.restoration import RestorationModule

    root = tmp_path_factory.mktemp("compare")
    shard = write_toy_shard(root / "toy7.h5", seed=1, per_split=(1, 1, N_TEST))
    ckpts = {}
    for name, scale in (("identity", 0.0), ("perturbed", 0.02)):
        torch.manual_seed(0)
        model = RestorationModule({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3})
        torch.nn.init.zeros_(model.net.output.weight)   # global residual: identity network
        if scale:
            with torch.no_grad():
                model.net.output.weight.normal_(0.0, scale)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        trainer.strategy.connect(model)
        ckpts[name] = root / "ckpts" / f"{name}.ckpt"
        trainer.save_checkpoint(ckpts[name])
    return root, shard, ckpts


def _overrides(shard, *extra):
    return [f"data.sets=[{shard}]", "trainer.enable_progress_bar=false", "extras.print_config=false",
            *extra]


@pytest.fixture(scope="module")
def compared(compare_setup):
    from medrestore.cli.eval import evaluate

    root, shard, ckpts = compare_setup
    run = root / "run2"
    cfg = compose("eval", _overrides(shard, f"ckpt_path=[{ckpts['identity']},{ckpts['perturbed']}]",
                                     "labels=[ref,pert]", "grid_examples=2"), run)
    metrics, objs = evaluate(cfg)
    return run, metrics, objs


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_two_checkpoints_write_every_output_with_its_columns(compared):
    from medrestore.cli.report import run_report
    from medrestore.utils.report import COLUMNS

    run, metrics, objs = compared
    assert objs["labels"] == ["ref", "pert"]
    assert not (run / "results_test.csv").exists()           # several models: per label only
    header, scores = _csv(run / "scores_test.csv")
    assert header == SCORE_HEADER
    assert len(scores) == 2 * 3 * N_TEST
    assert {r["protocol"] for r in scores} == {"normalised"}
    ref = {(r["task"], r["key"]): r for r in scores if r["model"] == "ref"}
    # identity network: restored == degraded input, per image
    assert all(float(r["psnr"]) == pytest.approx(float(r["psnr_input"]), abs=1e-4) for r in ref.values())

    header, comp = _csv(run / "comparison_test.csv")
    assert header == ["model", "protocol", *COLUMNS]
    for label in ("ref", "pert"):
        own = json.loads((run / label / "results_test.json").read_text())
        mine = [r for r in comp if r["model"] == label]
        assert [r["task"] for r in mine] == [r["task"] for r in own] == [
            "ct_denoise", "natural_denoise", "rs_sr", "[medical]", "[natural]", "[remote_sensing]", "[mean]"]
        assert float(mine[0]["psnr_restored"]) == pytest.approx(own[0]["psnr_restored"])
        # the table is the per-image mean of scores_test.csv
        ct = [float(r["psnr"]) for r in scores if r["model"] == label and r["task"] == "ct_denoise"]
        assert own[0]["psnr_restored"] == pytest.approx(sum(ct) / len(ct), abs=1e-4)
        assert own[0]["n"] == N_TEST
    assert metrics["pert/test/psnr"] < metrics["ref/test/psnr"]

    md = (run / "comparison_test.md").read_text()
    assert md.startswith("Protocol: each task's registry default (protocol=null). `normalised` for "
                         "ct_denoise, natural_denoise, rs_sr:")
    assert "data range 1" in md and "no border crop" in md and "| pert | normalised | ct_denoise |" in md

    # each label folder is a run for medrestore-report
    text = run_report([run / "ref", run / "pert"])
    assert "ct_denoise" in text and "restormer_tiny label=ref" in text


def test_paired_table_matches_a_direct_computation_from_the_scores(compared):
    from scipy.stats import wilcoxon

    from medrestore.metrics.paired import bootstrap_ci

    run, _, _ = compared
    _, scores = _csv(run / "scores_test.csv")
    header, paired = _csv(run / "paired_test.csv")
    assert header == PAIRED_HEADER
    assert len(paired) == 3 * 3                                # tasks × metrics × one model
    assert {(r["reference"], r["model"]) for r in paired} == {("ref", "pert")}
    for row in paired:
        by = {m: {r["key"]: float(r[row["metric"]]) for r in scores
                  if r["model"] == m and r["task"] == row["task"]} for m in ("ref", "pert")}
        keys = sorted(by["ref"])
        d = np.array([by["pert"][k] - by["ref"][k] for k in keys])
        assert int(row["n"]) == N_TEST
        assert float(row["mean_diff"]) == pytest.approx(d.mean(), rel=1e-9, abs=1e-12)
        assert float(row["mean_model"]) - float(row["mean_reference"]) == pytest.approx(d.mean())
        lo, hi = bootstrap_ci(d, n_resamples=10_000, seed=0)
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((lo, hi))
        assert float(row["p_wilcoxon"]) == pytest.approx(wilcoxon(d, method="exact").pvalue)
    psnr_ct = next(r for r in paired if r["task"] == "ct_denoise" and r["metric"] == "psnr")
    assert float(psnr_ct["ci_high"]) < 0                      # the perturbed model is worse
    md = (run / "paired_test.md").read_text()
    assert md.startswith("Protocol: each task's registry default")
    assert "Paired comparison against `ref`" in md
    assert "10000 resamples" in md and "seed 0" in md and "Wilcoxon" in md


def test_grids_are_pngs_with_the_expected_layout(compared):
    from PIL import Image

    run, _, _ = compared
    pngs = sorted(p.name for p in (run / "grids").glob("*.png"))
    assert pngs == ["ct_denoise.png", "natural_denoise.png", "rs_sr.png"]
    for name in pngs:
        img = Image.open(run / "grids" / name)
        assert img.format == "PNG"
        layout = json.loads(img.text["Description"])
        assert layout["columns"] == ["input (degraded)", "output: ref", "output: pert",
                                     "ground truth", "|error|: ref", "|error|: pert"]
        assert len(layout["rows"]) == 2                         # grid_examples=2
        w, h = img.size
        assert w > 2 * h                                        # 6 columns, 2 rows
    ct = json.loads(Image.open(run / "grids" / "ct_denoise.png").text["Description"])
    assert "soft tissue W400/L40 HU" in ct["window"] and ct["error_unit"] == "HU"
    assert ct["rows"] == ["toy.ct_denoise.test0", "toy.ct_denoise.test6"]   # spread, sorted
    rgb = json.loads(Image.open(run / "grids" / "natural_denoise.png").text["Description"])
    assert "normalisation window [0, 255] 8-bit" in rgb["window"]


def test_single_checkpoint_keeps_the_top_level_table(compare_setup, capsys):
    from medrestore.cli.eval import evaluate
    from medrestore.utils.report import COLUMNS

    root, shard, ckpts = compare_setup
    run = root / "single"
    cfg = compose("eval", _overrides(shard, f"ckpt_path={ckpts['perturbed']}", "grid_examples=1"), run)
    metrics, objs = evaluate(cfg)
    assert "test/psnr" in metrics and objs["model"].hparams.net["name"] == "restormer_tiny"
    header, rows = _csv(run / "results_test.csv")
    assert header == list(COLUMNS)
    top = json.loads((run / "results_test.json").read_text())
    label = objs["labels"][0]
    assert label == "restormer_tiny"
    assert json.loads((run / label / "results_test.json").read_text()) == top
    assert top[-1]["task"] == "[mean]" and top[-1]["psnr_restored"] == pytest.approx(metrics["test/psnr"])
    assert (run / "scores_test.csv").is_file() and (run / "comparison_test.md").is_file()
    assert not (run / "paired_test.csv").exists()
    assert "Test set, perturbed.ckpt" in capsys.readouterr().out

    # the same run directory again: refused, nothing replaced, unless overwrite=true
    before = (run / "results_test.csv").read_bytes()
    with pytest.raises(SystemExit) as exc:
        evaluate(compose("eval", _overrides(shard, f"ckpt_path={ckpts['identity']}"), run))
    assert exc.value.code == 2
    assert "already holds" in capsys.readouterr().err
    assert (run / "results_test.csv").read_bytes() == before
    evaluate(compose("eval", _overrides(shard, f"ckpt_path={ckpts['identity']}", "overwrite=true",
                                        "grid_examples=0"), run))
    assert (run / "results_test.csv").read_bytes() != before


def test_tat_protocol_is_named_and_refuses_non_medical_tasks(compare_setup, capsys):
    from medrestore.cli.eval import evaluate

    root, shard, ckpts = compare_setup
    pair = f"ckpt_path=[{ckpts['identity']},{ckpts['perturbed']}]"
    with pytest.raises(SystemExit) as exc:
        evaluate(compose("eval", _overrides(shard, pair, "protocol=tat"), root / "tat_bad"))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(err) == 1
    assert "protocol=tat scores CT, MR and PT tasks only" in err[0] and "natural_denoise" in err[0]
    assert not (root / "tat_bad" / "config_resolved.yaml").exists()    # before any work

    run = root / "tat"
    evaluate(compose("eval", _overrides(shard, pair, "protocol=tat", "data.tasks=[ct_denoise]",
                                        "grid_examples=0"), run))
    _, scores = _csv(run / "scores_test.csv")
    assert {r["protocol"] for r in scores} == {"tat"} and {r["task"] for r in scores} == {"ct_denoise"}
    assert float(scores[0]["rmse"]) > 1.0                       # physical units (HU), not [0, 1]
    assert (run / "comparison_test.md").read_text().startswith(
        "Protocol `tat`: TAT protocol: per slice in physical units clipped to CT [-160, 240] HU")
    assert (run / "paired_test.md").read_text().startswith("Protocol `tat`")
    assert not (run / "grids").exists()


@pytest.mark.parametrize("extra, message", [
    (["ckpt_path=[{a},{missing}]"], "ckpt_path[1]={missing}: no such checkpoint file"),
    (["ckpt_path=[{a},{b}]", "labels=[x,x]"], "labels: 'x' is given more than once"),
    (["ckpt_path=[{a},{b}]", "labels=[x]"], "labels has 1 entry for 2 checkpoint(s)"),
    (["ckpt_path=[{a},{b}]", "labels=[x,../y]"], "labels: '../y' is not usable as a folder name"),
    (["ckpt_path=[{a},{b}]", "labels=[x,grids]"], "labels: 'grids' is not usable as a folder name"),
    (["ckpt_path=[{a},{b}]", "protocol=psnr"], "protocol='psnr': expected auto"),
    (["ckpt_path=[{a},{a}]"], "more than once"),
    (["ckpt_path={a}", "grid_ct_window=[240,-160]"], "grid_ct_window=[240, -160]: expected low < high"),
])
def test_bad_input_is_one_line_before_any_work(compare_setup, capsys, tmp_path, extra, message):
    from medrestore.cli.eval import evaluate

    root, shard, ckpts = compare_setup
    names = {"a": ckpts["identity"], "b": ckpts["perturbed"], "missing": root / "nope.ckpt"}
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        evaluate(compose("eval", _overrides(shard, *[e.format(**names) for e in extra]), run))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(err) == 1, err
    assert message.format(**names) in err[0]
    assert not run.exists() or not any(run.iterdir())         # nothing written


def test_wandb_gets_the_tables_and_grids(compare_setup):
    import wandb

    from medrestore.cli.eval import evaluate

    if os.environ.get("WANDB_MODE") != "offline":
        pytest.skip("needs WANDB_MODE=offline to read the run's files")
    root, shard, ckpts = compare_setup
    run = root / "wb"
    evaluate(compose("eval", _overrides(shard, f"ckpt_path=[{ckpts['identity']},{ckpts['perturbed']}]",
                                        "logger=wandb", "grid_examples=1"), run))
    assert wandb.run is None                                  # finished by the task wrapper
    (wb,) = sorted((run / "wandb").glob("offline-run-*"))
    media = wb / "files" / "media"
    tables = {p.name.split("_")[0] for p in (media / "table" / "test").glob("*.table.json")}
    assert {"comparison", "paired"} <= tables
    paired = json.loads(next((media / "table" / "test").glob("paired_*.table.json")).read_text())
    assert paired["columns"] == PAIRED_HEADER
    assert list((media / "images" / "test" / "grids").glob("ct_denoise_*.png"))


@pytest.mark.slow
def test_ddp_two_ranks_gather_every_image_once(compare_setup, compared, tmp_path):
    """trainer=ddp_sim (2 gloo processes): each rank scores every other image; the per-image
    table still holds every image exactly once per model, with the scores of the 1-process
    evaluation of the same checkpoints (``compared``), and the run ends (no hang)."""
    import subprocess
    import sys

    from conftest import REPO

    root, shard, ckpts = compare_setup
    args = [sys.executable, "-m", "medrestore.cli.eval", *_overrides(shard),
            f"ckpt_path=[{ckpts['identity']},{ckpts['perturbed']}]", "trainer=ddp_sim",
            "grid_examples=1", f"paths.log_dir={tmp_path}/logs", "task_name=ddp_eval"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=400,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    run = next((tmp_path / "logs" / "ddp_eval" / "runs").iterdir())
    _, scores = _csv(run / "scores_test.csv")
    _, single = _csv(compared[0] / "scores_test.csv")
    for model, label in (("restormer_tiny-identity", "ref"), ("restormer_tiny-perturbed", "pert")):
        keys = [(r["task"], r["key"]) for r in scores if r["model"] == model]
        assert len(keys) == len(set(keys)) == 3 * N_TEST
        one = {(r["task"], r["key"]): r for r in single if r["model"] == label}
        for r in (r for r in scores if r["model"] == model):
            for metric in ("psnr", "ssim", "psnr_input"):
                assert float(r[metric]) == pytest.approx(float(one[r["task"], r["key"]][metric]),
                                                         rel=1e-6, abs=1e-6), (model, r["key"], metric)
    assert (run / "paired_test.csv").is_file() and len(list((run / "grids").glob("*.png"))) == 3


def test_too_few_images_say_why_there_is_no_p_value(compare_setup, toy_shard):
    """The session toy shard has one test image per task: no Wilcoxon p, and the md says why."""
    from medrestore.cli.eval import evaluate

    root, _, ckpts = compare_setup
    run = root / "one_image"
    evaluate(compose("eval", _overrides(toy_shard, f"ckpt_path=[{ckpts['identity']},{ckpts['perturbed']}]",
                                        "grid_examples=0"), run))
    _, paired = _csv(run / "paired_test.csv")
    assert all(r["n"] == "1" and r["p_wilcoxon"] == "nan" for r in paired)
    assert all("1 non-zero difference(s) < 6" in r["method"] for r in paired)
    assert all(r["ci_low"] == r["ci_high"] == r["mean_diff"] for r in paired)   # one image
    assert "n/a (1 non-zero difference(s) < 6" in (run / "paired_test.md").read_text()


def test_protocol_auto_follows_the_checkpoints_when_they_agree(compare_setup, tmp_path, caplog):
    """The default ``protocol=auto``: a checkpoint trained to report ``tat`` is scored with it;
    checkpoints recording different protocols fall back to each task's default, said once."""
    import logging

    import lightning as L
    import torch

    from medrestore.cli.eval import evaluate
    from medrestore.modules.restoration import RestorationModule

    root, shard, ckpts = compare_setup
    torch.manual_seed(0)
    model = RestorationModule({"name": "restormer_tiny", "in_channels": 3, "out_channels": 3},
                              metrics={"protocol": "tat"})
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "tat.ckpt")
    evaluate(compose("eval", _overrides(shard, f"ckpt_path={tmp_path / 'tat.ckpt'}",
                                        "data.tasks=[ct_denoise]", "grid_examples=0"), tmp_path / "a"))
    _, scores = _csv(tmp_path / "a" / "scores_test.csv")
    assert {r["protocol"] for r in scores} == {"tat"}
    with caplog.at_level(logging.INFO, logger="medrestore"):
        evaluate(compose("eval", _overrides(
            shard, f"ckpt_path=[{tmp_path / 'tat.ckpt'},{ckpts['identity']}]",
            "data.tasks=[ct_denoise]", "grid_examples=0"), tmp_path / "b"))
    _, scores = _csv(tmp_path / "b" / "scores_test.csv")
    assert {r["protocol"] for r in scores} == {"normalised"}
    assert "record different protocols" in caplog.text


def test_report_reads_the_label_folders_of_a_comparison_run(compared, capsys):
    from medrestore.cli.report import find_runs, main

    run, _, _ = compared
    assert [p.name for p in find_runs([run])] == ["pert", "ref"] or \
        [p.name for p in find_runs([run])] == ["ref", "pert"]
    main([str(run)])
    out = capsys.readouterr().out
    assert "label=ref" in out and "label=pert" in out and "ct_denoise" in out
