"""Environment defaults: offline hub and W&B unless the user says otherwise.

A hub lookup with no network retries for minutes (and an offline hub tokenizer can silently
come back with a 2-word vocabulary), so every tool of ours defaults to offline. Users who
want the network set the variables themselves (e.g. ``WANDB_MODE=online``)."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
}


def apply_offline_defaults(environ: "os._Environ[str] | dict[str, str] | None" = None) -> dict[str, str]:
    """Set each default only where the variable is unset; return what was set."""
    env = os.environ if environ is None else environ
    applied = {}
    for name, value in OFFLINE_DEFAULTS.items():
        if name not in env:
            env[name] = value
            applied[name] = value
    return applied
