"""Settings checked before any work: mandatory options, checkpoint paths, output folders.

:func:`validate_run_config` runs first in ``train`` / ``evaluate``; :class:`OutputDirCheck` is a
Hydra callback (``conf/hydra/default.yaml``) that checks the run directory *before* Hydra
creates it, so an unwritable or non-directory ``paths.log_dir`` is one line and exit 2 instead
of Hydra's chained tracebacks. Nothing here imports torch."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from medrestore.errors import ConfigError

_EXAMPLES = {"ckpt_path": "ckpt_path=logs/<task>/runs/<run>/checkpoints/last.ckpt"}


def check_writable_dir(path: str | os.PathLike, option: str) -> Path:
    """Create ``path`` if needed and prove a file can be written in it (as root, permission
    bits say nothing: a read-only file system or a file in the way only shows on write)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"{option}={p}: cannot write there ({why}); choose a writable "
                          "folder") from None
    return p


def check_ints(options: Iterable[tuple[str, Any, int]], prefix: str = "data.",
               allow_none: bool = True) -> None:
    """One line for the first ``(name, value, lowest)`` whose value is not an integer (an
    integral float passes) of at least ``lowest``; ``None`` passes (an option left unset)
    unless ``allow_none`` is false."""
    for name, value, low in options:
        try:
            ok = (value is None and allow_none) or (int(value) == value and value >= low)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{prefix}{name}={value}; expected an integer >= {low}")


def validate_run_config(cfg: Any, required: Sequence[str] = ()) -> None:
    """One-line errors for missing options (``???``), a ``ckpt_path`` that is not a file, and
    an output folder that cannot be written."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    for key in list(required) + missing:
        if key in missing or OmegaConf.select(cfg, key, default=None) in (None, ""):
            hint = _EXAMPLES.get(key, f"{key}=<value>")
            raise ConfigError(f"{key} is required (give it on the command line: {hint})")
    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "") and not Path(str(ckpt)).is_file():
        raise ConfigError(f"ckpt_path={ckpt}: no such checkpoint file")
    out = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if out:
        check_writable_dir(out, "paths.output_dir")


try:  # Hydra is a hard dependency; the guard keeps this module importable without it
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class OutputDirCheck(_HydraCallback):  # type: ignore[misc]
    """Hydra callback: refuse an unwritable run / sweep directory before Hydra makes it."""

    def _check(self, config: Any, key: str) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        HydraConfig.instance().set_config(config)  # the run dir interpolates ${hydra:...}, ${now:...}
        path = OmegaConf.select(config, key, default=None)
        if not path:
            return
        try:
            check_writable_dir(path, f"{key} (from paths.log_dir)")
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
