"""Run-time helpers for entry points: rank-zero logging, the task wrapper, config printing."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from medrestore.errors import MedrestoreError

log = logging.getLogger("medrestore")


def rank_zero_info(msg: str) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        log.info(msg)


def _finish_wandb() -> None:
    # A run left open makes the next job of a multirun log into it.
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def user_error(exc: BaseException) -> MedrestoreError | None:
    """The MedrestoreError behind ``exc`` (Hydra wraps errors from ``__init__`` of targets)."""
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedrestoreError):
            return exc
        if isinstance(exc, (MissingMandatoryValue, InterpolationResolutionError)):
            # a config value the user left out (???) or an unresolvable ${...}: their input
            from medrestore.errors import ConfigError

            key = getattr(exc, "full_key", "") or "config"
            msg = (str(exc).splitlines() or [""])[0]
            return ConfigError(f"{key}: {msg}")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def task_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Always close W&B and say where the outputs are; turn user errors into one line + exit 2."""

    @functools.wraps(fn)
    def wrapped(cfg: Any) -> Any:
        try:
            return fn(cfg)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
            err = user_error(exc)
            if err is None:
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            _finish_wandb()
            out = _output_dir(cfg)
            if out:
                rank_zero_info(f"Output dir: {out}")

    return wrapped


def _output_dir(cfg: Any) -> str | None:
    try:
        return str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no hydra context (e.g. tests)
        return None


def print_config(cfg: Any, path: Path | None = None) -> None:
    """Print the resolved config as YAML (rank zero) and save it beside the run."""
    from lightning.pytorch.utilities import rank_zero_only
    from omegaconf import OmegaConf

    if rank_zero_only.rank != 0:
        return
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if cfg.get("extras", {}).get("print_config", False):
        print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
