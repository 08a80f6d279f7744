"""The sample contract and the task/domain registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from medrestore.registry import (ARCHS, DOMAINS, TASKS, RegistryError, get_domain, get_task,
                                 task_index)
from medrestore.sample import (Normalisation, SampleError, adapt_channels, collate_samples,
                               make_meta, make_sample, to_native_channels, validate_sample)

ALL_TASKS = ["ct_denoise", "mri_sr", "pet_synthesis", "natural_sr", "derain", "natural_denoise",
             "deblur", "rs_sr", "cloud_removal", "dehaze"]


def test_registry_lists_the_ten_tasks_in_three_domains():
    assert list(TASKS) == ALL_TASKS
    assert list(DOMAINS) == ["medical", "natural", "remote_sensing"]
    for t in TASKS.values():
        assert t.domain in DOMAINS and t.channels in (1, 3)
        assert t.intensity_range[1] > t.intensity_range[0]
    assert get_task("ct_denoise").intensity_range == (-1024.0, 3072.0)
    assert get_task("ct_denoise").unit == "HU"


def test_unknown_ids_fail_with_the_known_list():
    with pytest.raises(RegistryError) as e:
        get_task("ct_denoising")
    msg = str(e.value)
    assert "unknown task 'ct_denoising'" in msg and "ct_denoise" in msg and "dehaze" in msg
    with pytest.raises(RegistryError, match="known domains: medical, natural, remote_sensing"):
        get_domain("satellite")
    with pytest.raises(RegistryError, match="known architectures: .*restormer"):
        ARCHS.get("swinir")


def test_normalisation_round_trip_in_hu():
    n = Normalisation.for_task("ct_denoise")
    hu = np.array([-1024.0, 0.0, 40.0, 3072.0])
    assert np.allclose(n.denormalise(n.normalise(hu)), hu)
    assert n.normalise(np.array([-3000.0, 5000.0])).tolist() == [0.0, 1.0]  # clipped to window
    with pytest.raises(SampleError, match="high > low"):
        Normalisation(1.0, 1.0)


def _sample(task="ct_denoise", c=1, h=8, w=8, key="k"):
    gt = torch.rand(c, h, w)
    return make_sample(gt * 0.5, gt, task, key)


def test_make_sample_fills_the_contract():
    s = _sample()
    assert set(s) == {"lq", "gt", "task", "domain", "key", "meta"}
    assert s["domain"] == "medical" and s["lq"].dtype == torch.float32
    assert s["meta"]["modality"] == "CT" and s["meta"]["channels"] == 1
    assert s["meta"]["normalisation"]["unit"] == "HU"
    # numpy H×W input becomes 1×H×W float32
    s2 = make_sample(np.zeros((5, 6)), np.ones((5, 6)), "mri_sr", "m")
    assert s2["gt"].shape == (1, 5, 6) and s2["gt"].dtype == torch.float32


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.pop("key"), "missing key"),
    (lambda s: s.update(domain="natural"), "does not match task"),
    (lambda s: s.update(lq=s["lq"].double()), "'lq' must be a float32"),
    (lambda s: s.update(lq=s["lq"][:, :4]), "lq shape"),
    (lambda s: s["meta"].pop("spacing"), "meta is missing"),
    (lambda s: s["meta"].update(channels=3), "meta.channels=3"),
    (lambda s: s.update(task="denoise"), "unknown task 'denoise'"),
])
def test_validate_sample_names_what_is_wrong(mutate, message):
    s = _sample()
    mutate(s)
    with pytest.raises((SampleError, RegistryError), match=message):
        validate_sample(s)


def test_collate_mixes_gray_and_rgb_and_maps_back():
    gray, rgb = _sample("ct_denoise", 1, key="a"), _sample("natural_denoise", 3, key="b")
    b = collate_samples([gray, rgb])
    assert b["lq"].shape == (2, 3, 8, 8)
    assert b["channels"].tolist() == [1, 3]
    assert b["task_id"].tolist() == [task_index("ct_denoise"), task_index("natural_denoise")]
    assert b["key"] == ["a", "b"] and b["domain"] == ["medical", "natural"]
    assert torch.equal(b["gt"][0, 1], gray["gt"][0])  # replicated, not padded
    assert torch.allclose(to_native_channels(b["gt"][0], 1), gray["gt"])
    assert torch.equal(to_native_channels(b["gt"][1], 3), rgb["gt"])


def test_collate_rejects_mixed_sizes_with_advice():
    with pytest.raises(SampleError, match="share H×W"):
        collate_samples([_sample(h=8), _sample(h=9)])


def test_channel_adapter():
    x = torch.rand(2, 1, 4, 4)
    assert adapt_channels(x, 3).shape == (2, 3, 4, 4)
    with pytest.raises(SampleError, match="in_channels=3"):
        adapt_channels(torch.rand(2, 3, 4, 4), 1)


def test_make_meta_defaults_per_task():
    m = make_meta("pet_synthesis", spacing=(2, 2), source="x")
    assert m["normalisation"] == {"low": 0.0, "high": 20.0, "unit": "SUV", "kind": "minmax"}
    assert m["spacing"] == [2.0, 2.0] and m["source"] == "x"


def test_import_medrestore_is_light_and_sets_offline_defaults():
    code = ("import os, sys\nfor k in ('HF_HUB_OFFLINE','WANDB_MODE'): os.environ.pop(k, None)\n"
            "import medrestore, medrestore.registry\n"
            "heavy = [m for m in ('torch','lightning','h5py','transformers','hydra') if m in sys.modules]\n"
            "print(heavy, os.environ['HF_HUB_OFFLINE'], os.environ['WANDB_MODE'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 1 offline"


def test_user_settings_win_over_offline_defaults():
    from medrestore.utils.env import apply_offline_defaults

    env = {"WANDB_MODE": "online"}
    applied = apply_offline_defaults(env)
    assert env["WANDB_MODE"] == "online" and "WANDB_MODE" not in applied
    assert env["HF_HUB_OFFLINE"] == "1"
