"""``medrestore-prepare volume_slices``: a 3-D volume store's MRI as 2-D restoration pairs."""

from __future__ import annotations

import numpy as np
import pytest

from medrestore.errors import MedrestoreError
from medrestore.prepare import run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("vs") / "d.h5"
    run("brats_demo", out=out, cases=[3, 1, 1], size=[32, 32, 32], spacing=6.0, quiet=True)
    return out


def test_slices_keep_the_store_splits_and_window_from_training_cases(store, tmp_path):
    import h5py

    from medrestore.io.hdf5 import read_manifest, read_pair
    from medrestore.io.volumes import VolumeStore

    vs = VolumeStore(store)
    res = run("volume_slices", store=store, out=tmp_path / "p.h5", param=["scale=4"],
              modalities=["t2", "flair"], every=2, quiet=True)
    split_of = {r["key"]: r["split"] for r in vs.manifest}
    rows = read_manifest(res["path"])
    assert rows and {r["task"] for r in rows} == {"mri_sr"}
    for r in rows:
        case, modality, index = r["key"].rsplit("/", 2)
        assert r["split"] == split_of[case] and modality in ("t2", "flair")
        assert int(index) % 2 == 0
    # the window is the median over training cases of their 99.9th percentile, never test
    expect = np.median([np.percentile(im[im > 0], 99.9) for im in
                        (vs.read(k)[0][[2, 3]] for k in vs.keys("train"))])
    assert res["notes"] == [f"window 0..{expect:g} a.u."]
    with h5py.File(res["path"], "r") as f:
        lq, gt = read_pair(f, rows[0]["id"])[:2]
    assert lq.shape == gt.shape and not np.allclose(lq, gt)   # k-space x4 changed it


def test_bad_options_are_one_line(store, tmp_path):
    with pytest.raises(MedrestoreError, match="--modalities 'dwi' is not in"):
        run("volume_slices", store=store, out=tmp_path / "x.h5", modalities=["dwi"], quiet=True)
    with pytest.raises(MedrestoreError, match="no such volume store"):
        run("volume_slices", store=tmp_path / "none.h5", out=tmp_path / "y.h5", quiet=True)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
