"""Task, domain and component registries.

Task and domain ids are part of the sample contract (see :mod:`medrestore.sample`): every
sample names one task, and every task belongs to exactly one domain. The order of
``TASKS``/``DOMAINS`` is stable and gives the integer ids used in batches and in metric
state tensors, so it must only ever be appended to.

Everything else chosen by name (architectures and model families here; image formats,
simulators, metric protocols, pixel losses, converters, captioners and encoders in their
packages) is a :class:`Registry`: a name maps to an object or a ``"module:attr"`` string
imported on first use, so ``import medrestore`` stays light and one broken optional dependency
cannot break unrelated imports. A model family (architectures, LightningModule, weight-format
hooks) is declared once, with :func:`register_family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
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


def register_task(spec: TaskSpec) -> None:
    """Add a task. It is appended, so the ids (positions) of existing tasks never move;
    registering an identical spec again is a no-op, a different spec under a taken name an
    error. The domain must exist; the protocol is checked when a sample is scored."""
    if spec.name in TASKS:
        if TASKS[spec.name] != spec:
            raise ValueError(f"task {spec.name!r} is already registered with other settings")
        return
    get_domain(spec.domain)
    if spec.channels < 1 or not spec.intensity_range[0] < spec.intensity_range[1]:
        raise ValueError(f"task {spec.name!r}: channels must be >= 1 and the intensity range "
                         f"low < high, got {spec.channels} and {spec.intensity_range}")
    TASKS[spec.name] = spec


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
    """A small lazy name -> object registry (timm-style, without import side effects).

    An entry is an object or a ``"module:attr"`` string imported on first :meth:`get`, so
    registering costs no import. Keyword metadata given to :meth:`add` (a format's suffixes, an
    architecture's family) is readable with :meth:`meta` without importing the entry. The
    registry reads like a mapping of names (sorted) to resolved entries: ``name in reg``,
    ``reg[name]``, ``iter(reg)``, ``len(reg)``, ``reg.items()``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, Any] = {}      # as registered (a "module:attr" string or object)
        self._meta: dict[str, dict[str, Any]] = {}
        self._resolved: dict[str, Any] = {}

    def add(self, name: str, target: Any, *, replace: bool = False, **meta: Any) -> None:
        """Register ``target`` as ``name``. Registering the same entry again is a no-op; a
        different one under a taken name is an error unless ``replace``."""
        if name in self._targets and not replace and (
                self._targets[name] != target or self._meta[name] != meta):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._targets[name] = target
        self._meta[name] = dict(meta)
        self._resolved.pop(name, None)

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`: ``@REG.register("name")`` above a function or class."""
        def deco(obj: Any) -> Any:
            self.add(name, obj, **meta)
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._targets
        except TypeError:           # unhashable: never a name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)

    def _check(self, name: Any) -> None:
        if name not in self:
            raise _unknown(self.kind, name, self.names())

    def get(self, name: str) -> Any:
        """The entry registered as ``name`` (imported on first use); :class:`RegistryError`
        naming the known entries otherwise."""
        self._check(name)
        if name not in self._resolved:
            target = self._targets[name]
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                target = getattr(importlib.import_module(module), attr)
            self._resolved[name] = target
        return self._resolved[name]

    __getitem__ = get

    def items(self) -> list[tuple[str, Any]]:
        """``(name, entry)`` pairs, sorted by name (imports every lazy entry)."""
        return [(name, self.get(name)) for name in self.names()]

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata ``name`` was registered with (read-only; imports nothing)."""
        self._check(name)
        return MappingProxyType(self._meta[name])

    def target(self, name: str) -> Any:
        """What ``name`` was registered with: its ``"module:attr"`` string or the object."""
        self._check(name)
        return self._targets[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def remove(self, name: str) -> None:
        """Forget ``name`` (a plugin unloading, a test cleaning up after itself)."""
        self._check(name)
        for d in (self._targets, self._meta, self._resolved):
            d.pop(name, None)


#: Architectures: plain ``nn.Module`` factories, registered by :func:`register_family`
#: (metadata ``family``).
ARCHS = Registry("architecture")

#: Model families: name -> the LightningModule class (``"module:Class"``) that trains its
#: architectures; metadata ``archs`` (architecture names) and ``official`` (the module holding
#: the authors'-layout hooks of :func:`medrestore.models.pretrained.load_pretrained`:
#: ``convert_official_state_dict(sd)`` and optionally ``mismatch_hint(missing, unexpected,
#: shapes)``; ``None`` when the authors' keys are ours). Each architecture's default config is
#: ``conf/model/<arch>.yaml``, whose ``_target_`` is the family's module (checked by a test).
FAMILIES = Registry("model family")


def register_family(name: str, *, module: str, archs: Mapping[str, str],
                    official: str | None = None) -> None:
    """Declare a model family once: its LightningModule (``"module:Class"``), its
    architectures (name -> ``"module:factory"``, added to :data:`ARCHS`) and the module of its
    authors'-layout weight hooks."""
    taken = [a for a in archs if a in ARCHS and ARCHS.meta(a).get("family") != name]
    if taken:  # checked first, so a refused declaration leaves both registries as they were
        raise ValueError(f"architecture {taken[0]!r} is already registered")
    FAMILIES.add(name, module, archs=tuple(archs), official=official)
    for arch, factory in archs.items():
        ARCHS.add(arch, factory, family=name)


register_family("restormer", module="medrestore.modules.restoration:RestorationModule",
                archs={"restormer": "medrestore.models.archs.restormer:restormer",
                       "restormer_tiny": "medrestore.models.archs.restormer:restormer_tiny"})
register_family("tat", module="medrestore.modules.tat:TATModule",
                archs={"tat": "medrestore.models.archs.tat:tat",
                       "tat_tiny": "medrestore.models.archs.tat:tat_tiny"},
                official="medrestore.models.archs.tat_official")
register_family("datprl", module="medrestore.modules.datprl:DATPRLModule",
                archs={"datprl": "medrestore.models.archs.datprl:datprl",
                       "datprl_tiny": "medrestore.models.archs.datprl:datprl_tiny"},
                official="medrestore.models.archs.datprl_official")
register_family("promptir", module="medrestore.modules.restoration:RestorationModule",
                archs={"promptir": "medrestore.models.archs.promptir:promptir",
                       "promptir_tiny": "medrestore.models.archs.promptir:promptir_tiny"})
register_family("amir", module="medrestore.modules.routed:RoutedModule",
                archs={"amir": "medrestore.models.archs.amir:amir",
                       "amir_tiny": "medrestore.models.archs.amir:amir_tiny"})
register_family("moce_ir", module="medrestore.modules.routed:RoutedModule",
                archs={"moce_ir": "medrestore.models.archs.moce_ir:moce_ir",
                       "moce_ir_s": "medrestore.models.archs.moce_ir:moce_ir_s",
                       "moce_ir_tiny": "medrestore.models.archs.moce_ir:moce_ir_tiny"})
register_family("tpseg", module="medrestore.modules.tpseg:TPSegModule",
                archs={"tpseg": "medrestore.models.archs.tpseg:tpseg",
                       "tpseg_hiera_tiny": "medrestore.models.archs.tpseg:tpseg_hiera_tiny",
                       "tpseg_tiny": "medrestore.models.archs.tpseg:tpseg_tiny"})
register_family("mtmed3d", module="medrestore.modules.mtmed3d:MTMed3DModule",
                archs={"mtmed3d": "medrestore.models.archs.mtmed3d:mtmed3d",
                       "mtmed3d_tiny": "medrestore.models.archs.mtmed3d:mtmed3d_tiny"})


def family_of(arch: str) -> str | None:
    """The family that declares architecture ``arch``; ``None`` for an architecture added to
    :data:`ARCHS` directly, :class:`RegistryError` for an unknown one."""
    return ARCHS.meta(arch).get("family")


def build_arch(name: str, **kwargs: Any):
    """Build a registered architecture by name (``model.net.name`` in configs)."""
    return ARCHS.build(name, **kwargs)
