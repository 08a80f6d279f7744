"""AMIR for ``benchmarks/reference_check.py`` (``--amir-repo DIR``): our AMIR against the
authors' class ``AMIR`` in ``model/Model_AMIR.py`` of a checkout of :data:`REPO_URL`.

The authors' file imports ``einops`` (not a medrestore dependency: ``pip install einops`` in the
environment that runs the check). Their class is built at its released sizes (dim 42, blocks
5/7/7/9 + 4, instruction 256, 32 atoms, 4 experts, top-2) with random weights; the channel
routers' γ, β (zero at init, which would make them the identity) and the gating-noise weights
``w_noise`` (zero at init, so the noise std would be the 0.01 floor everywhere) are drawn
non-zero so every routing path counts. The same state dict is loaded strictly into ours with
``impl="reference"`` and ``impl="fast"``.

Training mode: the gating noise is ``torch.randn_like`` of each router's ``N x 4`` logits with
tokens in ``(b, h, w)`` order, drawn in the same order as the authors', so seeding the global
torch RNG with the same value before each network's forward (as ``check_family`` does)
reproduces their noise exactly; no separate generator is needed.

Measured on 2 CPU threads (torch 2.14): eval at 128², 256² and 192×400, reference path max |Δ| 0
(bit-identical), fast path ≤ 7.2e-7; training (batch 2, 128², L1 + 0.001·aux) outputs Δ 0 and
aux equal on the reference path, 6.0e-7 on the fast path; gradients 3.4e-8 (reference) and
1.4e-7 (fast) relative to the largest gradient.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # torch is imported where it is used, so importing this module stays light
    import torch
    from torch import nn

REPO_URL = "https://github.com/Yaziwel/All-In-One-Medical-Image-Restoration-via-Task-Adaptive-Routing"
CHANNELS = 1


def authors_class(repo: Path) -> Callable[[], nn.Module]:
    """The authors' ``AMIR`` class, imported from the checkout ``repo``."""
    path = Path(repo) / "model" / "Model_AMIR.py"
    if not path.is_file():
        raise SystemExit(f"--amir-repo={repo}: expected model/Model_AMIR.py in it (a checkout of "
                         f"{REPO_URL})")
    spec = importlib.util.spec_from_file_location("_authors_amir", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_authors_amir"] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        raise SystemExit(f"--amir-repo: importing {path.name} needs {err.name!r} (pip install "
                         f"{err.name}); it is the authors' dependency, not ours") from None
    return module.AMIR


def build_pair(theirs_cls: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """(the authors' network with random weights, {"reference": ours, "fast": ours}) with the
    same weights."""
    import torch

    from medrestore.registry import build_arch

    torch.manual_seed(0)
    theirs = theirs_cls()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith(("gamma", "beta")):
                p.normal_(0, 0.5)
            elif name.endswith("w_noise"):
                p.normal_(0, 0.1)
    sd = theirs.state_dict()
    ours = {}
    for impl in ("reference", "fast"):
        net = build_arch("amir", in_channels=CHANNELS, out_channels=CHANNELS, impl=impl)
        net.load_state_dict(sd, strict=True)  # the authors' keys are ours: no conversion
        ours[impl] = net
    return theirs, ours


def pred(out: Any) -> torch.Tensor:
    """The restored image from either return type (tensor in eval, a tuple in training)."""
    return out[0] if isinstance(out, tuple) else out
