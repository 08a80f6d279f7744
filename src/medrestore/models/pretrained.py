"""Loading pretrained weights into a plain architecture (ours or the authors' layout).

``load_pretrained(net, path, fmt, arch)`` reads a weights file (``torch.load`` with
``weights_only=True``), unwraps the usual containers (Lightning ``state_dict`` with a ``net.``
prefix, BasicSR ``params_ema``/``params``, ``model``/``net`` entries, DataParallel ``module.``),
converts the authors' key layout when ``fmt == "official"`` and the architecture's module
provides ``convert_official_state_dict``, and loads strictly. A mismatch is one line that
names the file and a few missing / unexpected keys.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Mapping

from medrestore.errors import ConfigError

FORMATS = ("official", "medrestore")
_WRAPPERS = ("params", "params_ema", "state_dict", "model", "net", "model_state_dict")  # BasicSR tests read "params"
_PREFIXES = ("module.", "net.", "model.")


def unwrap_state_dict(obj: Any, source: str = "weights") -> dict[str, Any]:
    """The tensor mapping inside common checkpoint containers, with wrapper prefixes removed."""
    import torch

    seen = 0
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        key = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None or seen > 3:
            raise ConfigError(f"{source}: no state dict found (top-level keys: "
                              f"{sorted(map(str, obj))[:8]})")
        obj, seen = obj[key], seen + 1
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{source}: expected a state dict, got {type(obj).__name__}")
    sd = dict(obj)
    # a Lightning checkpoint of our module holds net.* (and net_ema.*, sigma_net.*, ...): keep net
    if any(k.startswith("net.") for k in sd) and any(not k.startswith("net.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("net.")}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_strict(net: Any, sd: Mapping[str, Any], source: str) -> None:
    """``net.load_state_dict(sd)`` with a one-line error listing what does not match."""
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:3])})")
        raise ConfigError(f"{source}: weights do not fit {type(net).__name__}: " + "; ".join(parts)
                          + " — check model.net.pretrained_format and the architecture sizes")
    net.load_state_dict(sd, strict=True)


def official_converter(arch: str):
    """``convert_official_state_dict`` of a registered architecture, looked up in its module
    and in the sibling ``<module>_official`` module; ``None`` when the layouts are identical."""
    from medrestore.registry import ARCHS

    name = ARCHS.get(arch).__module__
    for module in (name, name + "_official"):
        try:
            fn = getattr(importlib.import_module(module), "convert_official_state_dict", None)
        except ModuleNotFoundError:
            continue
        if fn is not None:
            return fn
    return None


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


def load_pretrained(net: Any, path: str | os.PathLike, fmt: str = "medrestore",
                    arch: str | None = None) -> None:
    import torch

    if fmt not in FORMATS:
        raise ConfigError(f"model.net.pretrained_format={fmt!r}; expected one of {FORMATS}")
    p = Path(path)
    sd = unwrap_state_dict(read_weights(p), str(p))
    if fmt == "official" and arch is not None:
        convert = official_converter(arch)
        if convert is not None:
            sd = convert(sd)
    load_state_dict_strict(net, sd, str(p))
