"""Fit a paper recipe to the hardware at hand: :func:`fit_recipe`.

A recipe (``recipe:`` in an experiment config) states what the paper trained with — the
effective global batch per optimiser step and the number of optimiser steps — and how its
learning rate scales with the batch::

    recipe:
      global_batch: 12        # samples per optimiser step, over all devices
      total_steps: 400000     # optimiser steps (trainer.max_steps)
      lr_rule: linear         # linear | sqrt | none: LR scaling when global_batch is changed
      base_lr_batch: 12       # the global batch model.optimizer.lr was set for
      max_per_device: null    # largest batch one device holds (null: global_batch / world)

Given the world (``trainer.devices × trainer.num_nodes``) and the per-device batch that fits,
the run keeps the recipe's global batch with gradient accumulation::

    per_device  = the largest d <= max_per_device with global_batch % (world × d) == 0
    accumulate  = global_batch / (world × per_device)     -> trainer.accumulate_grad_batches
    data.batch_size = world × per_device                  (the DataModule's batch is global per
                                                           forward pass, split over ranks)
    trainer.max_steps = total_steps                       (optimiser steps, not micro-batches)

The learning rate is left alone while the effective batch equals ``base_lr_batch`` (the
optimiser sees the same batch as in the paper); a different ``recipe.global_batch`` scales
``model.optimizer.lr`` by ``lr_rule`` (``linear``: × G/B, ``sqrt``: × √(G/B), ``none``).
``data.samples_per_epoch`` stays in samples, so validation happens every as many optimiser
steps as in the recipe. ``recipe=null`` turns all of this off.
"""

from __future__ import annotations

import math
from typing import Any

from medrestore.errors import ConfigError

LR_RULES = ("linear", "sqrt", "none")
_KEYS = {"global_batch", "total_steps", "lr_rule", "base_lr_batch", "max_per_device"}


def _positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r}; expected an integer >= 1")
    return int(value)


def world_size(trainer: Any) -> tuple[int, int, int]:
    """``(world, devices per node, nodes)`` from a trainer config; ``devices`` must be concrete
    (an integer, a list of ids or a ``"0,1"`` string), not ``auto`` / ``-1``."""
    devices = trainer.get("devices", 1)
    nodes = trainer.get("num_nodes", 1) or 1
    n = 0
    if isinstance(devices, str) and "," in devices:        # "0,1": device ids
        n = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit():
        n = int(devices)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        n = devices
    elif devices is not None and not isinstance(devices, str):  # a list of ids
        n = len(list(devices))
    if n < 1:
        raise ConfigError(f"trainer.devices={devices!r}: a recipe needs the number of devices "
                          "(e.g. trainer.devices=4) to split its global batch")
    n_nodes = _positive_int(nodes, "trainer.num_nodes")
    return n * n_nodes, n, n_nodes


def lr_scale(rule: str, global_batch: int, base_batch: int) -> float:
    if rule == "linear":
        return global_batch / base_batch
    if rule == "sqrt":
        return math.sqrt(global_batch / base_batch)
    return 1.0


def _fmt_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3g} M"
    if n >= 1e3:
        return f"{n / 1e3:.3g} k"
    return f"{n:g}"


def fit_recipe(cfg: Any, log: bool = True) -> list[str]:
    """Derive ``trainer.accumulate_grad_batches``, ``data.batch_size``, ``trainer.max_steps``
    (and, for a changed global batch, ``model.optimizer.lr``) from ``cfg.recipe`` and the
    world size; mutates ``cfg`` and returns the summary lines (also logged on rank zero unless
    ``log=False``). Without a recipe returns ``[]`` and changes nothing."""
    from omegaconf import open_dict

    recipe = cfg.get("recipe")
    if not recipe:
        return []
    unknown = sorted(set(recipe) - _KEYS)
    if unknown:
        raise ConfigError(f"recipe has unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    g = _positive_int(recipe.get("global_batch"), "recipe.global_batch")
    steps = _positive_int(recipe.get("total_steps"), "recipe.total_steps")
    base = _positive_int(recipe.get("base_lr_batch", g), "recipe.base_lr_batch")
    cap = _positive_int(recipe.get("max_per_device"), "recipe.max_per_device", allow_none=True)
    rule = recipe.get("lr_rule", "none") or "none"
    if rule not in LR_RULES:
        raise ConfigError(f"recipe.lr_rule={rule!r}; expected one of {list(LR_RULES)}")

    world, per_node, nodes = world_size(cfg.trainer)
    where = f"{world} device(s)" if nodes == 1 else f"{world} devices ({nodes} nodes × {per_node})"
    if g % world:
        raise ConfigError(f"recipe.global_batch={g} cannot be split evenly over {where}: "
                          f"{g} % {world} = {g % world}; use a device count that divides {g}")
    full = g // world  # per device without accumulation
    if cap is None or cap >= full:
        per_device = full
    else:
        per_device = max(d for d in range(1, cap + 1) if full % d == 0)
    accumulate = g // (world * per_device)
    step_batch = world * per_device

    spe = cfg.data.get("samples_per_epoch") if "data" in cfg else None
    if spe is not None and int(spe) % g:
        raise ConfigError(f"data.samples_per_epoch={spe} is not a multiple of the recipe's global "
                          f"batch {g}: an epoch would end inside an accumulation window")

    opt = cfg.model.get("optimizer") if "model" in cfg else None
    lr = opt.get("lr") if opt is not None else None
    scale = lr_scale(rule, g, base)
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = accumulate
        cfg.trainer.max_steps = steps
        cfg.trainer.max_epochs = -1
        cfg.data.batch_size = step_batch
        if lr is not None and scale != 1.0:
            cfg.model.optimizer.lr = float(lr) * scale

    split = f"{world} device{'s' if world > 1 else ''}" if nodes == 1 else \
        f"{nodes} nodes × {per_node} devices"
    lines = [f"recipe: global batch {g} = {split} × {per_device} per device × accumulate "
             f"{accumulate}",
             f"recipe: {steps:,} optimiser steps = {_fmt_count(steps * g)} samples"]
    if lr is None:
        lines.append("recipe: model.optimizer.lr not set; learning rate left to the optimiser")
    elif scale == 1.0:
        why = "effective batch unchanged" if g == base else f"lr_rule={rule}"
        lines.append(f"recipe: lr {float(lr):g} unchanged ({why})")
    else:
        lines.append(f"recipe: lr {float(lr):g} -> {float(lr) * scale:g} ({rule} rule: global "
                     f"batch {g} vs {base} the lr was set for)")
    if spe is None and accumulate > 1:
        lines.append("recipe: data.samples_per_epoch is null: the last accumulation window of "
                     "an epoch may be partial (set it to a multiple of the global batch)")
    if log:
        from medrestore.utils.runtime import rank_zero_info

        for line in lines:
            rank_zero_info(line)
    return lines
