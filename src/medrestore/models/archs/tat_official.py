"""State dicts of the authors' TAT implementation <-> ours (the ``official`` hooks of the
``tat`` family for :func:`medrestore.models.pretrained.load_pretrained`).

Our :class:`~medrestore.models.archs.tat.TAT` keeps the reference's module names and parameter
shapes (``encoder_level1.0.attn.qkv_dwconv.weight``, ``latent.0.attn.dw_kernel``,
``latent.0.ffn.lambda_dw``, ``reduce_final.0.weight``, ``tren.E.0.weight``,
``tren.kernel_level1_attn.0.weight``, ...), so the conversion is the identity on keys once
checkpoint containers are removed (``params_ema`` / ``params`` / ``state_dict`` / ``model`` /
``net`` entries, ``module.`` / ``net.`` / ``model.`` prefixes). The functions still exist so
callers need not know that, and so a future layout change has one place to go.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["convert_official_state_dict", "to_official_state_dict"]


def convert_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Reference TAT state dict (optionally wrapped) -> ours. Keys are identical; tensors are
    shared, not copied."""
    from medrestore.models.pretrained import unwrap_state_dict

    return unwrap_state_dict(sd, "official state dict")


def to_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Our TAT state dict (optionally wrapped) -> the reference layout (identical keys)."""
    from medrestore.models.pretrained import unwrap_state_dict

    return unwrap_state_dict(sd, "medrestore state dict")
