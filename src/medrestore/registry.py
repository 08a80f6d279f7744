"""Task, domain and component registries.

Task and domain ids are part of the sample contract (see :mod:`medrestore.sample`): every
sample names one task, and every task belongs to exactly one domain. The order of
``TASKS``/``DOMAINS`` is stable and gives the integer ids used in batches and in metric
state tensors, so it must only ever be appended to.

Component registries (architectures, metric protocols) map a name to a ``"module:attr"``
string and import it on first use, so ``import medrestore`` stays light and one broken
optional dependency cannot break unrelated imports.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from medrestore.errors import MedrestoreError


class RegistryError(MedrestoreError, KeyError):
    """An unknown name was asked of a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it verbatim
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class DomainSpec:
    name: str
    description: str


@dataclass(frozen=True)
class TaskSpec:
    """Defaults for one restoration task.

    ``intensity_range`` is the physical window (in ``unit``) that maps to [0, 1] by default;
    ``protocol`` names the metric protocol (``medrestore.metrics.protocols``) used when a
    config does not choose one.
    """

    name: str
    domain: str
    description: str
    channels: int
    modality: str
    intensity_range: tuple[float, float]
    unit: str
    protocol: str = "normalised"
    defaults: dict[str, Any] = field(default_factory=dict)


DOMAINS: dict[str, DomainSpec] = {
    d.name: d
    for d in (
        DomainSpec("medical", "CT, MRI and PET slices, single channel, physical units"),
        DomainSpec("natural", "RGB photographs, 8-bit"),
        DomainSpec("remote_sensing", "multispectral satellite scenes (RGB bands by default)"),
    )
}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("ct_denoise", "medical", "low-dose CT denoising", 1, "CT",
                 (-1024.0, 3072.0), "HU", defaults={"dose_factor": 0.25}),
        TaskSpec("mri_sr", "medical", "MRI super-resolution (k-space truncation)", 1, "MR",
                 (0.0, 4095.0), "a.u.", defaults={"scale": 4}),
        TaskSpec("pet_synthesis", "medical", "full-dose PET synthesis from low-count PET", 1, "PT",
                 (0.0, 20.0), "SUV", defaults={"dose_reduction": 12}),
        TaskSpec("natural_sr", "natural", "natural-image super-resolution (scale-1 network)", 3,
                 "RGB", (0.0, 255.0), "8-bit", defaults={"scale": 4}),
        TaskSpec("derain", "natural", "rain-streak removal", 3, "RGB", (0.0, 255.0), "8-bit"),
        TaskSpec("natural_denoise", "natural", "Gaussian denoising", 3, "RGB", (0.0, 255.0),
                 "8-bit", defaults={"sigma": 25}),
        TaskSpec("deblur", "natural", "motion deblurring", 3, "RGB", (0.0, 255.0), "8-bit"),
        TaskSpec("rs_sr", "remote_sensing", "remote-sensing super-resolution", 3, "MSI",
                 (0.0, 10000.0), "DN", defaults={"scale": 4}),
        TaskSpec("cloud_removal", "remote_sensing", "thin-cloud removal", 3, "MSI",
                 (0.0, 10000.0), "DN"),
        TaskSpec("dehaze", "remote_sensing", "haze removal", 3, "MSI", (0.0, 10000.0), "DN"),
    )
}


def _unknown(kind: str, name: object, known: list[str]) -> RegistryError:
    return RegistryError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise _unknown("task", name, list(TASKS)) from None


def get_domain(name: str) -> DomainSpec:
    try:
        return DOMAINS[name]
    except (KeyError, TypeError):
        raise _unknown("domain", name, list(DOMAINS)) from None


def task_names() -> list[str]:
    return list(TASKS)


def domain_names() -> list[str]:
    return list(DOMAINS)


def task_index(name: str) -> int:
    get_task(name)
    return list(TASKS).index(name)


def domain_index(name: str) -> int:
    get_domain(name)
    return list(DOMAINS).index(name)


class Registry:
    """A small lazy name -> object registry (timm-style, without import side effects)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, str | Callable[..., Any]] = {}

    def add(self, name: str, target: str | Callable[..., Any]) -> None:
        if name in self._entries and self._entries[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = target

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, fn)
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise _unknown(self.kind, name, self.names())
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


#: Architectures: plain ``nn.Module`` factories. A new family adds one line here.
ARCHS = Registry("architecture")
ARCHS.add("restormer", "medrestore.models.archs.restormer:restormer")
ARCHS.add("restormer_tiny", "medrestore.models.archs.restormer:restormer_tiny")
ARCHS.add("tat", "medrestore.models.archs.tat:tat")
ARCHS.add("tat_tiny", "medrestore.models.archs.tat:tat_tiny")
ARCHS.add("datprl", "medrestore.models.archs.datprl:datprl")
ARCHS.add("datprl_tiny", "medrestore.models.archs.datprl:datprl_tiny")


def build_arch(name: str, **kwargs: Any):
    """Build a registered architecture by name (``model.net.name`` in configs)."""
    return ARCHS.build(name, **kwargs)
