"""Offline preparation: raw dataset files -> HDF5 pair shards, and caption caches.

One converter per dataset layout (``medrestore-prepare NAME --src DIR --out FILE.h5``), plus
the embedded ``demo``. Each is a :class:`~medrestore.prepare.base.Converter` subclass with a
typed options dataclass (:mod:`medrestore.prepare.options`), living in a domain module;
:data:`CONVERTERS` maps the sub-command name to ``"module:Class"`` and imports on first use, so
``import medrestore.prepare`` stays light (no numpy, h5py, pydicom, nibabel …). From Python::

    from medrestore.prepare import run
    summary = run("div2k", src="data/DIV2K", out="data/div2k.h5", overwrite=True)

The caption / text-embedding cache builder is :mod:`medrestore.prepare.captions`. Nothing
below this package (io, datasets, …) imports it. See ``docs/datasets.md`` for every dataset's
expected layout, split rule and normalisation.
"""

from __future__ import annotations

from typing import Any

from medrestore.registry import Registry

_PKG = "medrestore.prepare"

#: sub-command name -> "module:Class" of its :class:`~medrestore.prepare.base.Converter`
CONVERTERS = Registry("converter")
CONVERTERS.add("demo", f"{_PKG}.demo:Demo")
CONVERTERS.add("aapm_mayo", f"{_PKG}.medical:AapmMayo")
CONVERTERS.add("ixi", f"{_PKG}.medical:Ixi")
CONVERTERS.add("pet", f"{_PKG}.medical:PairedPet")
CONVERTERS.add("div2k", f"{_PKG}.natural:Div2k")
CONVERTERS.add("df2k", f"{_PKG}.natural:Df2k")
CONVERTERS.add("rain100l", f"{_PKG}.natural:Rain100L")
CONVERTERS.add("gopro", f"{_PKG}.natural:GoPro")
CONVERTERS.add("ucmerced", f"{_PKG}.remote_sensing:UcMerced")
CONVERTERS.add("cuhk_cr1", f"{_PKG}.remote_sensing:CuhkCr1")
CONVERTERS.add("rice1", f"{_PKG}.remote_sensing:Rice1")
CONVERTERS.add("paired_folder", f"{_PKG}.generic:PairedFolder")
CONVERTERS.add("clean_folder", f"{_PKG}.generic:CleanFolder")
CONVERTERS.add("brats", f"{_PKG}.brats:Brats")
CONVERTERS.add("brats_demo", f"{_PKG}.brats_demo:BratsDemo")
CONVERTERS.add("volume_slices", f"{_PKG}.volume_slices:VolumeSlices")
CONVERTERS.add("tpseg_demo", f"{_PKG}.lesions_demo:TpsegDemo")
CONVERTERS.add("seg_folder", f"{_PKG}.lesions:SegFolder")
CONVERTERS.add("tpseg_folder", f"{_PKG}.lesions:TpsegFolder")
CONVERTERS.add("isic2018", f"{_PKG}.lesions:Isic2018")
CONVERTERS.add("busi", f"{_PKG}.lesions:Busi")
CONVERTERS.add("kvasir_seg", f"{_PKG}.lesions:KvasirSeg")
CONVERTERS.add("polyp", f"{_PKG}.lesions:PolypCollection")
CONVERTERS.add("tn3k", f"{_PKG}.lesions:Tn3k")
CONVERTERS.add("ebhi_seg", f"{_PKG}.lesions:EbhiSeg")
CONVERTERS.add("figshare_brain_tumour", f"{_PKG}.lesions:FigshareBrainTumour")
CONVERTERS.add("covid_ct", f"{_PKG}.lesions:CovidCtInfection")


def run(converter: str, /, **options: Any) -> dict[str, Any]:
    """Run the converter named ``converter`` with keyword options (its CLI flags with ``_`` for
    ``-``: ``src``, ``out``, ``overwrite``, ``split_fractions`` …); returns the summary
    (``path``, ``counts`` per task and split, ``units``, ``samples``, ``seconds``, ``notes``).
    Errors in the options or the data are one-line
    :class:`~medrestore.errors.MedrestoreError` s."""
    from medrestore.prepare.base import run_converter

    conv = CONVERTERS.build(converter)
    return run_converter(conv, conv.options(**options))


__all__ = ["CONVERTERS", "run"]
