"""Loading our Lightning checkpoints safely: every user-supplied file goes through
:func:`medrestore.models.pretrained.read_weights` (``weights_only=True``), and what the file
says about itself is checked before it is used to build anything:

* ``medrestore_module`` (the family that wrote it) must name a class inside
  ``medrestore.modules`` that is a :class:`RestorationModule` or a registered family's module
  (:data:`medrestore.registry.FAMILIES`: the analysis families) — a checkpoint must not choose
  which module gets imported;
* ``hyper_parameters`` must be a plain dict; ``_target_`` entries (optimiser, scheduler) must
  point into ``torch.optim`` or ``medrestore``, and Lightning's ``_instantiator`` is refused,
  since both name callables that would be called when the module is built or trained.

Checkpoints describe themselves: ``medrestore_config`` (the resolved run config, a plain dict)
and ``medrestore_normalisation`` (``{task: {low, high, unit, kind}}`` of the training data),
read back with :func:`checkpoint_config` / :func:`checkpoint_normalisation`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Mapping

from medrestore.errors import ConfigError

#: where a checkpoint's ``_target_`` entries may point (the configs only ever use these)
ALLOWED_TARGET_PREFIXES = ("torch.optim.", "medrestore.")


def is_lightning_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "pytorch-lightning_version" in obj


def _check_targets(node: Any, source: str, where: str) -> None:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if k == "_instantiator":
                raise ConfigError(f"{source}: refused: {where}._instantiator names a callable "
                                  "to run on load")
            if k == "_target_" and not (isinstance(v, str) and v.startswith(ALLOWED_TARGET_PREFIXES)):
                raise ConfigError(f"{source}: refused: {where}._target_={v!r} is outside "
                                  f"{' / '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)}")
            _check_targets(v, source, f"{where}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_targets(v, source, f"{where}[{i}]")


def _check_module_name(target: Any, source: str) -> tuple[str, str]:
    """``"medrestore.modules.<module>:<Class>"`` split in two; anything else is refused
    before it could be imported."""
    if target is None:
        return "", ""
    module, _, name = str(target).partition(":")
    if not (isinstance(target, str) and module.startswith("medrestore.modules.")
            and name.isidentifier()):
        raise ConfigError(f"{source}: refused: medrestore_module={target!r} is not a "
                          "medrestore.modules class")
    return module, name


def module_class_of(ckpt: Mapping[str, Any], source: str) -> Any:
    """The LightningModule class that wrote ``ckpt`` (its ``medrestore_module`` entry; older
    files: the family that declares the architecture, :data:`medrestore.registry.FAMILIES`;
    else :class:`RestorationModule`)."""
    from medrestore.modules.restoration import RestorationModule
    from medrestore.registry import ARCHS, FAMILIES, family_of

    target = ckpt.get("medrestore_module")
    if not target:
        net = (ckpt.get("hyper_parameters") or {}).get("net") or {}
        arch = str(net.get("name", "")) if isinstance(net, Mapping) else ""
        family = family_of(arch) if arch in ARCHS else None
        if family is None:
            return RestorationModule
        target = FAMILIES.target(family)
    module, name = _check_module_name(target, source)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{source}: medrestore_module={target!r} is not an importable class") from None
    declared = {str(FAMILIES.target(f)) for f in FAMILIES.names()}
    if not (isinstance(cls, type) and (issubclass(cls, RestorationModule) or target in declared)):
        raise ConfigError(f"{source}: medrestore_module={target!r} is neither a RestorationModule "
                          "nor a registered model family's module")
    return cls


def read_module_checkpoint(path: str | os.PathLike, option: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint of ours, read safely and checked (see the module docstring)."""
    from medrestore.models.pretrained import read_weights

    return check_module_checkpoint(read_weights(path, option), f"{option}={Path(path)}")


def check_module_checkpoint(ckpt: Any, source: str) -> dict[str, Any]:
    """Refuse a read checkpoint that is not ours or names callables (module docstring)."""
    if not is_lightning_checkpoint(ckpt):
        raise ConfigError(f"{source}: not a Lightning checkpoint (no 'pytorch-lightning_version'; "
                          "plain weights go to model.net.pretrained)")
    _check_module_name(ckpt.get("medrestore_module"), source)
    hp = ckpt.get("hyper_parameters")
    if hp is not None and not isinstance(hp, Mapping):
        raise ConfigError(f"{source}: hyper_parameters must be a dict, got {type(hp).__name__}")
    _check_targets(hp or {}, source, "hyper_parameters")
    return ckpt


def load_module(path: str | os.PathLike, option: str = "ckpt_path", module_class: Any = None,
                map_location: Any = "cpu", ckpt: Mapping[str, Any] | None = None) -> Any:
    """Rebuild the LightningModule stored in a checkpoint from its own hyper-parameters and
    load its weights strictly (``weights_only=True`` throughout). ``ckpt`` is the already-read
    dict when the caller has it (saves a second read)."""
    ckpt = read_module_checkpoint(path, option) if ckpt is None else ckpt
    cls = module_class or module_class_of(ckpt, f"{option}={path}")
    try:
        return cls.load_from_checkpoint(str(path), map_location=map_location, weights_only=True)
    except ConfigError as exc:
        raise ConfigError(f"{option}={path}: {exc}") from None
    except (KeyError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise ConfigError(f"{option}={path}: not a loadable {cls.__name__} checkpoint "
                          f"({type(exc).__name__}: {first})") from None


# ------------------------------------------------------------ self-describing checkpoints
def _read_plain(path: str | os.PathLike, key: str, option: str) -> Any:
    ckpt = read_module_checkpoint(path, option)
    if key not in ckpt:
        raise ConfigError(f"{option}={Path(path)}: no {key!r} in this checkpoint (written by "
                          "medrestore before self-describing checkpoints)")
    return ckpt[key]


def checkpoint_config(path: str | os.PathLike, option: str = "ckpt_path") -> dict[str, Any]:
    """The resolved training config stored in a checkpoint (a plain dict; ``weights_only``
    read). ``OmegaConf.create`` of it composes again."""
    from medrestore.modules.restoration import CONFIG_KEY

    return _read_plain(path, CONFIG_KEY, option)


def checkpoint_normalisation(path: str | os.PathLike,
                             option: str = "ckpt_path") -> dict[str, dict[str, Any]]:
    """``{task: {low, high, unit, kind}}``: the normalisation windows of the training data
    (``medrestore.sample.Normalisation.from_dict`` takes each)."""
    from medrestore.modules.restoration import NORMALISATION_KEY

    return _read_plain(path, NORMALISATION_KEY, option)
