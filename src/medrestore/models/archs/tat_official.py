"""State dicts of the authors' TAT implementation ↔ ours, and a loader for either layout.

Our :class:`~medrestore.models.archs.tat.TAT` keeps the reference's module names and parameter
shapes (``encoder_level1.0.attn.qkv_dwconv.weight``, ``latent.0.attn.dw_kernel``,
``latent.0.ffn.lambda_dw``, ``reduce_final.0.weight``, ``tren.E.0.weight``,
``tren.kernel_level1_attn.0.weight``, …), so the conversion is the identity on keys: what is
left to do is removing checkpoint containers (``params_ema`` / ``params`` / ``state_dict`` /
``model`` / ``net`` entries, ``module.`` / ``net.`` / ``model.`` prefixes). The functions still
exist so callers need not know that, and so a future layout change has one place to go.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping

from medrestore.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["FORMATS", "convert_official_state_dict", "to_official_state_dict", "load_pretrained"]

FORMATS = ("official", "medrestore")


def _tensor_mapping(sd: Any, source: str) -> dict[str, Any]:
    from medrestore.models.pretrained import unwrap_state_dict

    sd = unwrap_state_dict(sd, source)
    # A Lightning checkpoint of the TAT module also holds the loss's σ estimator (and the EMA
    # copy); the network is the ``net.`` part.
    if any(k.startswith("net.") for k in sd) and not all(k.startswith("net.") for k in sd):
        sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    return sd


def convert_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Reference TAT state dict (optionally wrapped) -> ours. Keys are identical; tensors are
    shared, not copied."""
    return _tensor_mapping(sd, "official state dict")


def to_official_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Our TAT state dict (optionally wrapped) -> the reference layout (identical keys)."""
    return _tensor_mapping(sd, "medrestore state dict")


def load_pretrained(model: "nn.Module", weights: str | os.PathLike | Mapping[str, Any],
                    format: str = "official") -> None:  # noqa: A002 - the config's word
    """Load a weights file (or an in-memory state dict) into ``model`` strictly.

    ``format``: ``"official"`` (the authors' layout) or ``"medrestore"`` (ours, e.g. a
    ``torch.save(net.state_dict())`` or a Lightning checkpoint). Both accept raw state dicts and
    the usual containers. A mismatch raises :class:`ConfigError` with one line naming a few
    missing / unexpected / mis-shaped keys.
    """
    from medrestore.models.pretrained import load_state_dict_strict

    if format not in FORMATS:
        raise ConfigError(f"TAT weights format={format!r}; expected one of {FORMATS}")
    if isinstance(weights, Mapping):
        source, obj = "state dict", weights
    else:
        from medrestore.models.pretrained import read_weights

        source = str(weights)
        obj = read_weights(source, "weights")  # weights_only=True: refuses code-running pickles
    sd = (convert_official_state_dict(obj) if format == "official"
          else _tensor_mapping(obj, source))
    load_state_dict_strict(model, sd, source)
