"""DATPRL-IR checkpoints: the authors' layout, containers, strict loading.

Our :class:`~medrestore.models.archs.datprl.DATPRL` uses the same state-dict key names and
shapes as the authors' released classes (the dual-pool multi-domain model and the task-only
natural-image model), so :func:`convert_official_state_dict` only has to unwrap containers and
strip wrapper prefixes; the mapping of keys is the identity. :func:`kwargs_from_official_config`
translates the authors' ``network_g`` constructor arguments (their YAML) to ours.

Checkpoint containers understood by :func:`load_pretrained` / :func:`extract_state_dict`:

* a raw state dict;
* BasicSR: ``{"params": sd}`` and/or ``{"params_ema": sd}`` — ``params`` is preferred, as the
  authors' BasicSR test configs load it (pass ``param_key="params_ema"`` for the EMA copy);
* ``{"state_dict" | "model" | "net" | "model_state_dict": sd}`` (PyTorch / Lightning);
* a Lightning module's state dict: the network is the ``net.`` sub-tree (``net_ema.`` with
  ``param_key="net_ema"``); other sub-modules (EMA copy, loss heads) are ignored;
* ``module.`` (DataParallel / DDP) prefixes anywhere on top.

Any mismatch raises a one-line :class:`~medrestore.errors.ConfigError` naming the file and a few
missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

from medrestore.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "OFFICIAL_CLASSES",
    "convert_official_state_dict",
    "extract_state_dict",
    "kwargs_from_official_config",
    "load_pretrained",
]

#: The authors' class names -> our ``use_domain_pool``.
OFFICIAL_CLASSES = {"DualPromptRestormerv3": True, "DualPromptRestormerv3_only_task_prompt": False}

_CONTAINERS = ("params", "params_ema", "state_dict", "model", "net", "model_state_dict")
_MAX_NESTING = 4
_SHOW = 3  # keys named per category in an error message


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(sd: dict[str, Any], sub_tree: str) -> dict[str, Any]:
    """Remove DataParallel ``module.`` and keep the Lightning ``net.`` (or EMA) sub-tree."""
    for _ in range(_MAX_NESTING):
        if all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
            continue
        prefix = sub_tree + "."
        if any(k.startswith(prefix) for k in sd):
            # A LightningModule state dict: the network beside other sub-modules.
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            continue
        break
    return sd


def extract_state_dict(obj: Any, source: str = "weights",
                       param_key: str | None = None) -> dict[str, Tensor]:
    """The network's tensors inside a checkpoint object (see the module docstring).

    ``param_key`` picks a container entry (``params``, ``params_ema``, ``state_dict``, …) or,
    for Lightning state dicts, the sub-tree (``net`` — the default — or ``net_ema``).
    """
    sub_tree = param_key if param_key in ("net", "net_ema") else "net"
    for _ in range(_MAX_NESTING):
        if _is_tensor_mapping(obj):
            return _strip_prefixes(dict(obj), sub_tree)
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{source}: expected a state dict, got {type(obj).__name__}")
        order = ((param_key,) if param_key and param_key in obj else ()) + _CONTAINERS
        key = next((k for k in order if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ConfigError(f"{source}: no state dict found (top-level keys: "
                              f"{sorted(map(str, obj))[:8]}; expected one of {list(_CONTAINERS)})")
        obj = obj[key]
    raise ConfigError(f"{source}: containers nested deeper than {_MAX_NESTING} levels")


def convert_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' DATPRL-IR state dict (or a checkpoint holding one) in our key layout.

    The layouts coincide (same names, shapes and order of blocks), so after unwrapping
    containers and prefixes this is the identity; it exists so that loaders dispatching on
    ``format="official"`` have one place to call, and stays correct if the layouts diverge.
    """
    return dict(extract_state_dict(sd, "official state dict"))


def _mismatch_message(net: nn.Module, sd: Mapping[str, Any], source: str) -> str | None:
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd)
                    if tuple(own[k].shape) != tuple(getattr(sd[k], "shape", ())))
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:_SHOW])})")
    if shapes:
        shown = ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
                          for k in shapes[:_SHOW])
        parts.append(f"{len(shapes)} shape mismatch (e.g. {shown})")
    hint = ""
    if any(k.startswith("domain_prompt_pool.") for k in unexpected):
        hint = " — the weights have a domain pool: build with use_domain_pool=true"
    elif any(k.startswith("domain_prompt_pool.") for k in missing):
        hint = " — the weights are task-prompt-only: build with use_domain_pool=false"
    elif shapes:
        hint = " — check the architecture sizes (dim, pool sizes, prompt_dim, value_tokens)"
    return f"{source}: weights do not fit {type(net).__name__}: {'; '.join(parts)}{hint}"


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: Literal["official", "medrestore"] = "official",  # noqa: A002 - the option's name
    *,
    param_key: str | None = None,
) -> None:
    """Load a weights file into ``model`` strictly (all keys, all shapes).

    ``format="official"`` passes the tensors through :func:`convert_official_state_dict`;
    ``"medrestore"`` expects our own layout (a ``net.state_dict()`` or a Lightning checkpoint).
    The file is read with ``torch.load(weights_only=True)`` (no code execution).
    """
    from medrestore.models.pretrained import read_weights

    if format not in ("official", "medrestore"):
        raise ConfigError(f"pretrained format={format!r}; expected 'official' or 'medrestore'")
    p = Path(path)
    sd = extract_state_dict(read_weights(p), str(p), param_key)
    if format == "official":
        sd = convert_official_state_dict(sd)
    message = _mismatch_message(model, sd, str(p))
    if message:
        raise ConfigError(message)
    model.load_state_dict(sd, strict=True)


# --------------------------------------------------------------------------- constructor args
_OFFICIAL_DEFAULTS: dict[bool, dict[str, Any]] = {
    # The released classes' own defaults, used for keys a config leaves out.
    True: dict(img_channel=3, dim=None, width=None, enc_blk_nums=[4, 6, 6], middle_blk_num=8,
               dec_blk_nums=[6, 6, 4], refine_blk_num=4, heads=[1, 2, 4, 8],
               ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias", use_prompt=True,
               domain_pool_size=15, degradation_pool_size=15, domain_prompt_dim=1024,
               degradation_prompt_dim=1024, domain_top_k=5, degradation_top_k=3,
               value_num_tokens=2, prompt_fusion_method="cross_attention",
               fusion_method="cross_attention"),
    False: dict(img_channel=3, dim=None, width=None, enc_blk_nums=[4, 6, 6], middle_blk_num=8,
                dec_blk_nums=[6, 6, 4], refine_blk_num=4, heads=[1, 2, 4, 8],
                ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
                use_prompt=True, degradation_pool_size=15, degradation_prompt_dim=1024,
                degradation_top_k=3, value_num_tokens=2, fusion_method="cross_attention"),
}


def kwargs_from_official_config(network_g: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``DATPRL`` keyword arguments from the authors' ``network_g`` block.

    ``type`` selects the class (:data:`OFFICIAL_CLASSES`); missing keys take that class's
    defaults. Only what the released configs use is supported: ``use_prompt: true`` and
    cross-attention for both fusions, equal domain / task prompt widths.
    """
    cfg = dict(network_g)
    kind = cfg.pop("type", "DualPromptRestormerv3")
    if kind not in OFFICIAL_CLASSES:
        raise ConfigError(f"network_g.type={kind!r}; expected one of {sorted(OFFICIAL_CLASSES)}")
    dual = OFFICIAL_CLASSES[kind]
    defaults = _OFFICIAL_DEFAULTS[dual]
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"network_g has key(s) {unknown} unknown to {kind}; "
                          f"known: {sorted(defaults)}")
    c = {**defaults, **cfg}
    if not c["use_prompt"]:
        raise ConfigError("network_g.use_prompt=false (a prompt-free Restormer) is not "
                          "supported; use the 'restormer' architecture")
    for key in ("fusion_method", "prompt_fusion_method"):
        if key in c and c[key] != "cross_attention":
            raise ConfigError(f"network_g.{key}={c[key]!r}; only 'cross_attention' (the "
                              "released configs' choice) is implemented")
    if dual and c["domain_prompt_dim"] != c["degradation_prompt_dim"]:
        raise ConfigError("network_g.domain_prompt_dim and degradation_prompt_dim must be "
                          "equal (the fusion attention uses one width)")
    dim = c["dim"] if c["dim"] is not None else (c["width"] if c["width"] is not None else 48)
    enc, dec = list(c["enc_blk_nums"]), list(c["dec_blk_nums"])
    if len(enc) != 3 or len(dec) != 3:
        raise ConfigError("network_g.enc_blk_nums and dec_blk_nums need 3 entries each")
    out: dict[str, Any] = dict(
        in_channels=c["img_channel"],
        out_channels=c["img_channel"],
        dim=dim,
        num_blocks=(*enc, c["middle_blk_num"]),
        num_decoder_blocks=tuple(dec),
        num_refinement_blocks=c["refine_blk_num"],
        heads=tuple(c["heads"]),
        ffn_expansion_factor=c["ffn_expansion_factor"],
        bias=c["bias"],
        layernorm_type=c["LayerNorm_type"],
        task_pool_size=c["degradation_pool_size"],
        task_top_k=c["degradation_top_k"],
        prompt_dim=c["degradation_prompt_dim"],
        value_tokens=c["value_num_tokens"],
        use_domain_pool=dual,
        fusion=c["fusion_method"],
    )
    if dual:
        out.update(domain_pool_size=c["domain_pool_size"], domain_top_k=c["domain_top_k"])
    return out
