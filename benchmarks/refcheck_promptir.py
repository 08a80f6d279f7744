"""PromptIR hooks for ``benchmarks/reference_check.py`` (``--promptir-repo DIR``).

``DIR`` is a checkout of the authors' public repository (nothing of theirs ships with
medrestore); their class ``PromptIR`` lives in ``net/model.py`` and needs ``einops`` (not a
medrestore dependency: ``pip install einops`` in the environment that runs the check).

The pair is built at the released sizes (the authors' ``PromptIR(decoder=True)``, as their
``train.py``): their network with random weights, and ours with ``impl="reference"`` and
``impl="fast"`` loaded strictly from the same state dict (the keys are identical, the six
unused 1x1 convs included). The prompt-mix Linear layers are scaled up first: at PyTorch's
default initialisation the softmax over the 5 prompts is nearly uniform, which would hide a
wrong per-sample mix. Nothing in PromptIR is random at run time (no dropout, no noise), so no
seeded RNG is needed to reproduce their training-mode outputs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

REPO_URL = "https://github.com/va1shn9v/PromptIR"
CHANNELS = 3
# Scale of the prompt-mix Linear weights (see the module docstring).
_MIX_SCALE = 20.0


def authors_class(repo: Path) -> Callable[[], nn.Module]:
    """The authors' ``PromptIR`` bound to ``decoder=True`` (their released configuration)."""
    path = Path(repo) / "net" / "model.py"
    if not path.is_file():
        raise SystemExit(f"--promptir-repo={repo}: expected net/model.py in it (a checkout of "
                         f"{REPO_URL})")
    if importlib.util.find_spec("einops") is None:
        raise SystemExit(f"--promptir-repo: the authors' {path.name} needs einops "
                         "(pip install einops; not a medrestore dependency)")
    spec = importlib.util.spec_from_file_location("_authors_promptir", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls = module.PromptIR

    def build() -> nn.Module:
        return cls(decoder=True)

    return build


def build_pair(theirs_cls: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """``(theirs, {"reference": ours, "fast": ours})`` with the same random weights."""
    import torch

    from medrestore.models.archs.promptir import promptir

    theirs = theirs_cls()
    with torch.no_grad():
        for k in (1, 2, 3):
            getattr(theirs, f"prompt{k}").linear_layer.weight.mul_(_MIX_SCALE)
    sd = theirs.state_dict()
    ours: dict[str, nn.Module] = {}
    for impl in ("reference", "fast"):
        net = promptir(in_channels=CHANNELS, out_channels=CHANNELS, impl=impl)
        net.load_state_dict(sd, strict=True)
        ours[impl] = net
    return theirs, ours


def pred(out: Any) -> Tensor:
    """PromptIR returns a tensor in training and eval (no auxiliary outputs)."""
    return out[0] if isinstance(out, tuple) else out
