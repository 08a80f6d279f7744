"""The one loader of pretrained weights into a plain architecture (ours or the authors' layout).

:func:`load_pretrained` reads a weights file with :func:`read_weights` (``torch.load`` with
``weights_only=True``) or takes an in-memory state dict, unwraps the usual containers
(:func:`unwrap_state_dict`: Lightning ``state_dict`` with a ``net.`` prefix, BasicSR
``params``/``params_ema``, ``model``/``net`` entries, DataParallel ``module.``), converts the
authors' key layout when ``format == "official"`` and loads strictly. A mismatch is one line
naming the file and a few missing / unexpected / mis-shaped keys.

What is specific to a model family lives in its ``official`` module, declared with the family
in :data:`medrestore.registry.FAMILIES` (e.g. ``models/archs/tat_official.py``):
``convert_official_state_dict(sd)`` (the authors' keys -> ours; absent = same keys) and,
optionally, ``mismatch_hint(missing, unexpected, shapes)`` (what to change when the weights do
not fit, or ``None``).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from medrestore.errors import ConfigError

FORMATS = ("official", "medrestore")
# the order of preference; BasicSR's test configs read "params" (not the EMA copy)
_WRAPPERS = ("params", "params_ema", "state_dict", "model", "net", "model_state_dict")
_SUB_TREES = ("net", "net_ema")  # the network inside a Lightning state dict of our modules
_MAX_NESTING = 4
_SHOW = 3  # keys named per category in a mismatch message


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str = "weights",
                      param_key: str | None = None) -> dict[str, Any]:
    """The network's tensors inside common checkpoint containers, wrapper prefixes removed.

    ``param_key`` picks a container entry (``params``, ``params_ema``, ``state_dict``, ...) or,
    for a Lightning state dict of our modules, the sub-tree (``net``, the default, or
    ``net_ema``); other sub-modules (EMA copy, loss heads, projections) are dropped."""
    for _ in range(_MAX_NESTING):
        if _is_tensor_mapping(obj):
            break
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{source}: expected a state dict, got {type(obj).__name__}")
        order = ((param_key,) if param_key in obj else ()) + _WRAPPERS
        key = next((k for k in order if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ConfigError(f"{source}: no state dict found (top-level keys: "
                              f"{sorted(map(str, obj))[:8]}; expected one of {list(_WRAPPERS)})")
        obj = obj[key]
    else:
        raise ConfigError(f"{source}: containers nested deeper than {_MAX_NESTING} levels")
    sd = dict(obj)
    sub_tree = (param_key if param_key in _SUB_TREES else "net") + "."
    for _ in range(_MAX_NESTING):
        if sd and all(k.startswith("module.") for k in sd):        # DataParallel / DDP
            sd = {k[len("module."):]: v for k, v in sd.items()}
        elif any(k.startswith(sub_tree) for k in sd):               # our Lightning module
            sd = {k[len(sub_tree):]: v for k, v in sd.items() if k.startswith(sub_tree)}
        elif sd and all(k.startswith("model.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items()}
        else:
            break
    return sd


def load_state_dict_strict(net: Any, sd: Mapping[str, Any], source: str,
                           hint: Callable[..., str | None] | None = None) -> None:
    """``net.load_state_dict(sd, strict=True)`` after a check that reports every kind of
    mismatch in one line; ``hint(missing, unexpected, shapes)`` may say what to change."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd)
                    if tuple(own[k].shape) != tuple(getattr(sd[k], "shape", ())))
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {name} (e.g. {', '.join(keys[:_SHOW])})"
                 for name, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        if shapes:
            shown = ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                              for k in shapes[:_SHOW])
            parts.append(f"{len(shapes)} shape mismatch (e.g. {shown})")
        advice = (hint(missing, unexpected, shapes) if hint else None) or \
            "check model.net.pretrained_format and the architecture sizes"
        raise ConfigError(f"{source}: weights do not fit {type(net).__name__}: "
                          f"{'; '.join(parts)} — {advice}")
    net.load_state_dict(sd, strict=True)


def official_module(net: Any, arch: str | None = None) -> ModuleType | None:
    """The ``official`` module of the family of ``arch`` (or, without it, of the family whose
    architectures are built by ``net``'s module); ``None`` when the family has none."""
    from medrestore.registry import ARCHS, FAMILIES, family_of

    if arch is None:
        built_by = type(net).__module__
        arch = next((a for a in ARCHS.names() if isinstance(ARCHS.target(a), str)
                     and ARCHS.target(a).partition(":")[0] == built_by), None)
    family = family_of(arch) if arch in ARCHS else None
    if family is None:
        return None
    name = FAMILIES.meta(family)["official"]
    return importlib.import_module(name) if name else None


def read_weights(path: str | os.PathLike, option: str = "model.net.pretrained") -> Any:
    """The one loader of user-supplied weights and checkpoints: ``torch.load`` with
    ``weights_only=True`` (tensors and plain containers only; a pickle that would import or call
    anything is refused before it runs), memory-mapped when the file allows. Errors are one
    line naming ``option`` / the file."""
    import pickle

    import torch

    from medrestore.io.base import one_line

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{option}={p}: no such weights file")
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            raise
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped: read them
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler stops at the first global it does not allow-list (before
        # anything is imported or called); other unpickling errors are just foreign bytes
        lines = [ln.strip() for ln in str(exc).splitlines()]
        detail = next((ln for ln in lines if "GLOBAL" in ln), "")
        if not detail:
            why = next((ln for ln in lines if ln.startswith("Unsupported")), "unpickling failed")
            raise ConfigError(f"{option}={p}: not a loadable weights file (not written by "
                              f"torch.save: {why})") from None
        raise ConfigError(
            f"{option}={p}: refused: the file holds pickled Python objects beyond tensors and "
            f"plain containers, which could run code on load ({detail[:120]}); "
            "re-save the weights with torch.save(model.state_dict()) from code you trust"
        ) from None
    except Exception as exc:  # truncated, foreign or corrupt files
        raise ConfigError(f"{option}={p}: not a loadable weights file, truncated or corrupt "
                          f"({type(exc).__name__}: {one_line(exc, 120)})") from None


def load_pretrained(net: Any, weights: str | os.PathLike | Mapping[str, Any],
                    format: str = "medrestore", arch: str | None = None, *,  # noqa: A002
                    param_key: str | None = None, option: str = "model.net.pretrained") -> None:
    """Load weights into ``net`` strictly (all keys, all shapes).

    ``weights``: a file (read with :func:`read_weights`; errors name ``option``) or an
    in-memory state dict / checkpoint. ``format``: ``"official"`` (the authors' layout, converted
    by the family's ``convert_official_state_dict``) or ``"medrestore"`` (ours: a
    ``net.state_dict()`` or a Lightning checkpoint). ``arch`` names the registered architecture
    (``model.net.name``); without it the family is found from ``net``'s class. ``param_key``
    picks a container entry or Lightning sub-tree (:func:`unwrap_state_dict`).
    """
    if format not in FORMATS:
        raise ConfigError(f"model.net.pretrained_format={format!r}; expected one of "
                          f"{list(FORMATS)}")
    if isinstance(weights, Mapping):
        source, obj = "state dict", weights
    else:
        source, obj = str(Path(weights)), read_weights(weights, option)
    sd = unwrap_state_dict(obj, source, param_key)
    family = official_module(net, arch)
    convert = getattr(family, "convert_official_state_dict", None)
    if format == "official" and convert is not None:
        sd = convert(sd)
    load_state_dict_strict(net, sd, source, getattr(family, "mismatch_hint", None))
