"""The one registry idiom (``medrestore.registry.Registry``) and the model-family declaration
that ties architecture names, LightningModule classes and ``conf/model/*.yaml`` together."""

from __future__ import annotations

import ast
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF, REPO
from medrestore.registry import (ARCHS, FAMILIES, Registry, RegistryError, family_of,
                                 register_family)


# ------------------------------------------------------------------ Registry
def test_entries_are_imported_on_first_use_only():
    reg = Registry("widget")
    reg.add("json", "json:dumps", flavour="text")
    reg.add("gone", "medrestore_no_such_module:thing")
    assert reg.meta("gone") == {} and dict(reg.meta("json")) == {"flavour": "text"}
    assert "gone" in reg and reg.names() == ["gone", "json"] and len(reg) == 2
    import json

    assert reg.get("json") is json.dumps and reg["json"] is json.dumps
    with pytest.raises(ModuleNotFoundError):
        reg.get("gone")                         # broken only for the one that is asked for
    with pytest.raises(TypeError):
        reg.meta("json")["flavour"] = "binary"  # metadata is read-only


def test_add_register_and_unknown_names():
    reg = Registry("widget")

    @reg.register("double", cost=2)
    def double(x):
        return 2 * x

    assert reg.build("double", x=3) == 6 and reg.target("double") is double
    reg.add("double", double, cost=2)                   # the same entry again: a no-op
    with pytest.raises(ValueError, match="widget 'double' is already registered"):
        reg.add("double", "builtins:abs")
    reg.add("double", "builtins:abs", replace=True)
    assert reg.get("double") is abs and reg.meta("double") == {}
    assert list(reg) == ["double"] and reg.items() == [("double", abs)]
    with pytest.raises(RegistryError, match="unknown widget 'triple'; known widgets: double"):
        reg.get("triple")
    with pytest.raises(KeyError):                        # mapping-style access
        reg["triple"]
    assert ["double"] not in reg                         # unhashable: not a name, no TypeError


def test_every_named_component_is_a_registry():
    from medrestore.degradations.simulators import SIMULATORS, Simulator
    from medrestore.io.base import IMAGE_FORMATS
    from medrestore.losses.pixel import PIXEL_LOSSES
    from medrestore.metrics.protocols import PROTOCOLS

    for reg in (ARCHS, FAMILIES, IMAGE_FORMATS, SIMULATORS, PIXEL_LOSSES, PROTOCOLS):
        assert isinstance(reg, Registry)
    assert all(isinstance(s, Simulator) and s.name == n for n, s in SIMULATORS.items())
    assert IMAGE_FORMATS.meta("nifti")["suffixes"] == (".nii.gz", ".nii")


def test_image_formats_resolve_lazily():
    import subprocess

    code = ("import sys\nfrom medrestore.io.base import IMAGE_FORMATS, suffixes_of\n"
            "assert suffixes_of('dicom')[0] == '.dcm'\n"
            "assert IMAGE_FORMATS.meta('dicom')['directory']\n"
            "assert not any(m.startswith(('medrestore.io.dicom', 'medrestore.io.nifti', "
            "'medrestore.io.image2d', 'medrestore.io.h5array')) for m in sys.modules)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_io_base_imports_no_reader_module():
    # readers import io.base; io.base reaches them only through the registry's strings
    tree = ast.parse((REPO / "src" / "medrestore" / "io" / "base.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("medrestore.io")}


# ------------------------------------------------------------------ model families
def _model_config(name: str) -> tuple[str | None, str | None]:
    """``(_target_, net.name)`` of ``conf/model/<name>.yaml``, following its defaults list."""
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    target = cfg.get("_target_")
    arch = OmegaConf.select(cfg, "net.name")
    for parent in cfg.get("defaults", []):
        if parent != "_self_" and (target is None or arch is None):
            p_target, p_arch = _model_config(str(parent))
            target, arch = target or p_target, arch or p_arch
    return target, arch


def test_model_configs_agree_with_the_family_declaration():
    configs = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    assert configs == ARCHS.names()          # one default config per architecture, same name
    for name in configs:
        target, arch = _model_config(name)
        assert arch == name, f"conf/model/{name}.yaml: net.name={arch!r}"
        family = family_of(arch)
        assert family is not None, f"{arch} is not declared with register_family"
        assert arch in FAMILIES.meta(family)["archs"]
        declared = FAMILIES.target(family).replace(":", ".")
        assert target == declared, f"conf/model/{name}.yaml: _target_={target} but the " \
                                   f"{family} family declares {declared}"


def test_family_modules_and_hooks_exist():
    from medrestore.modules.restoration import RestorationModule

    for family in FAMILIES:
        cls = FAMILIES.get(family)
        # restoration families share the base module; analysis families (MTMed3D, TP-Seg)
        # are LightningModules with their own results table
        assert isinstance(cls, type) and (issubclass(cls, RestorationModule)
                                          or callable(getattr(cls, "results_rows", None)))
        for arch in FAMILIES.meta(family)["archs"]:
            assert ARCHS.meta(arch)["family"] == family and callable(ARCHS.get(arch))
        official = FAMILIES.meta(family)["official"]
        if official is not None:
            import importlib

            assert callable(importlib.import_module(official).convert_official_state_dict)


def test_register_family_refuses_a_taken_architecture():
    with pytest.raises(ValueError, match="architecture 'tat' is already registered"):
        register_family("tat2", module="medrestore.modules.tat:TATModule",
                        archs={"tat": "medrestore.models.archs.tat:tat_tiny"})
    assert "tat2" not in FAMILIES and family_of("tat") == "tat"
