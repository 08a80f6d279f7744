"""Where the Hydra configs live, and small helpers to build objects from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medrestore.errors import ConfigError


def config_dir() -> str:
    """Absolute path of the config tree.

    ``MEDRESTORE_CONFIG_DIR`` wins; otherwise ``medrestore/conf`` inside the package, which is a
    link to the repository's ``conf/`` in a checkout (editable install) and a copy in a wheel.
    Users keep their own configs elsewhere with ``--config-dir`` or ``hydra.searchpath``."""
    env = os.environ.get("MEDRESTORE_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "conf"
    if not (path / "train.yaml").is_file():
        raise ConfigError(f"config directory {path} has no train.yaml (set MEDRESTORE_CONFIG_DIR "
                          "to the repository's conf/ folder)")
    return str(path.resolve())


def instantiate_dict(node: Any, kind: str) -> list[Any]:
    """Build every ``_target_`` entry of a dict-of-named-nodes group (callbacks, loggers).

    A group set to ``none``/null, or an entry set to null (``~callbacks.x`` or
    ``callbacks.x=null``), is skipped."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig

    if not node:
        return []
    if not isinstance(node, (DictConfig, dict)):
        raise ConfigError(f"{kind} config must be a dict of named entries, got {type(node).__name__}")
    out = []
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, (DictConfig, dict)) or "_target_" not in sub:
            raise ConfigError(f"{kind}.{name} needs a _target_ (the class to build)")
        out.append(instantiate(sub))
    return out
