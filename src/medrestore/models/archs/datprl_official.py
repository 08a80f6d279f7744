"""DATPRL-IR in the authors' layout: the ``official`` hooks of the ``datprl`` family for
:func:`medrestore.models.pretrained.load_pretrained`, and their constructor arguments.

Our :class:`~medrestore.models.archs.datprl.DATPRL` uses the same state-dict key names and
shapes as the authors' released classes (the dual-pool multi-domain model and the task-only
natural-image model), so :func:`convert_official_state_dict` only has to unwrap containers and
strip wrapper prefixes; the mapping of keys is the identity. :func:`mismatch_hint` tells a
multi-domain checkpoint from a task-only one when weights do not fit.
:func:`kwargs_from_official_config` translates the authors' ``network_g`` constructor arguments
(their YAML) to ours.

The loader (``load_pretrained(net, path, format, param_key=...)``) reads BasicSR's
``{"params": sd, "params_ema": sd}`` (``params`` first, as the authors' test configs; pass
``param_key="params_ema"`` for the EMA copy), PyTorch / Lightning containers (the ``net.``
sub-tree of our module, ``net_ema.`` with ``param_key="net_ema"``) and ``module.`` prefixes.
"""

from __future__ import annotations

from typing import Any, Mapping

from medrestore.errors import ConfigError

__all__ = [
    "OFFICIAL_CLASSES",
    "convert_official_state_dict",
    "kwargs_from_official_config",
    "mismatch_hint",
]

#: The authors' class names -> our ``use_domain_pool``.
OFFICIAL_CLASSES = {"DualPromptRestormerv3": True, "DualPromptRestormerv3_only_task_prompt": False}


def convert_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The authors' DATPRL-IR state dict (or a checkpoint holding one) in our key layout.

    The layouts coincide (same names, shapes and order of blocks), so after unwrapping
    containers and prefixes this is the identity; it exists so that loaders dispatching on
    ``format="official"`` have one place to call, and stays correct if the layouts diverge.
    """
    from medrestore.models.pretrained import unwrap_state_dict

    return unwrap_state_dict(sd, "official state dict")


def mismatch_hint(missing: list[str], unexpected: list[str], shapes: list[str]) -> str | None:
    """What to change when weights do not fit a DATPRL (the loader's one-line message)."""
    if any(k.startswith("domain_prompt_pool.") for k in unexpected):
        return "the weights have a domain pool: build with model.net.use_domain_pool=true"
    if any(k.startswith("domain_prompt_pool.") for k in missing):
        return "the weights are task-prompt-only: build with model.net.use_domain_pool=false"
    if shapes:
        return ("check the architecture sizes (model.net.dim, task_pool_size, "
                "domain_pool_size, prompt_dim, value_tokens)")
    return None


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
