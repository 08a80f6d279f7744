"""MoCE-IR pieces of ``benchmarks/reference_check.py`` (``--moce-ir-repo DIR``).

``DIR`` is a checkout of the authors' public repository (nothing of theirs ships with
medrestore); their class ``MoCEIR`` lives in ``src/net/moce_ir.py`` and is imported from that
file alone. Its module imports ``fvcore`` for a FLOP count in its ``__main__`` block only; when
fvcore is not installed an empty stand-in is registered so the import succeeds (einops, which
their code needs, must be installed).

:func:`build_pair` builds their ``MoCE_IR`` (dim 48, the arguments their ``train.py`` passes)
with random weights and loads the same state dict strictly into ours with ``impl="reference"``
and ``impl="fast"``.

Routing noise: the authors draw the router noise from torch's global RNG in training **and in
eval** (``eval_routing_noise=True`` reproduces that; our default is noise-free eval). Ours draws
the same numbers in the same order, so equal seeds give equal routes. The caller seeds before
each training-mode forward; for eval, :func:`build_pair` builds ours with
``eval_routing_noise=True`` and registers a forward pre-hook on all three networks that seeds
the global RNG (:data:`EVAL_SEED`) before every eval-mode forward, so the eval comparison covers
their stochastic routing too. At batch 1 (the eval sizes) their batch-union eval dispatch is
the per-sample one.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable

REPO_URL = "https://github.com/eduardzamfir/MoCE-IR"
CLASS_FILE = "src/net/moce_ir.py"
CHANNELS = 3
EVAL_SEED = 0

#: The constructor arguments of the authors' ``train.py`` for ``--model MoCE_IR``
#: (``src/options.py``).
AUTHORS_KWARGS: dict[str, Any] = dict(
    dim=48, num_blocks=[4, 6, 6, 8], num_dec_blocks=[2, 4, 4], levels=4, heads=[1, 2, 4, 8],
    num_refinement_blocks=4, topk=1, num_experts=4, rank=2, with_complexity=False,
    depth_type="constant", stage_depth=[1, 1, 1], rank_type="spread", complexity_scale="max",
)


def authors_class(repo: Path) -> Callable[[], Any]:
    """A factory of the authors' ``MoCE_IR`` from a checkout of :data:`REPO_URL`."""
    path = Path(repo) / CLASS_FILE
    if not path.is_file():
        raise SystemExit(f"--moce-ir-repo {repo}: {CLASS_FILE} not found "
                         f"(a checkout of {REPO_URL}?)")
    if importlib.util.find_spec("fvcore") is None and "fvcore" not in sys.modules:
        stub, stub_nn = types.ModuleType("fvcore"), types.ModuleType("fvcore.nn")
        stub_nn.FlopCountAnalysis = stub_nn.flop_count_table = None  # type: ignore[attr-defined]
        stub.nn = stub_nn  # type: ignore[attr-defined]
        sys.modules.update({"fvcore": stub, "fvcore.nn": stub_nn})
    spec = importlib.util.spec_from_file_location("moce_ir_authors", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["moce_ir_authors"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise SystemExit(f"importing {path} failed: {exc} (their code needs einops)") from None
    return lambda: module.MoCEIR(**AUTHORS_KWARGS)


def _seed_in_eval(net: Any) -> None:
    import torch

    def hook(module: Any, args: Any) -> None:
        if not module.training:
            torch.manual_seed(EVAL_SEED)

    net.register_forward_pre_hook(hook)


def build_pair(theirs_cls: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """(theirs at the released size with random weights, {"reference": ours, "fast": ours}),
    all holding the same weights; eval-mode forwards are seeded (see the module docstring)."""
    import torch

    from medrestore.models.archs.moce_ir import moce_ir

    torch.manual_seed(0)
    theirs = theirs_cls()
    sd = theirs.state_dict()
    ours = {}
    for impl in ("reference", "fast"):
        net = moce_ir(in_channels=CHANNELS, out_channels=CHANNELS, impl=impl,
                      eval_routing_noise=True)
        net.load_state_dict(sd, strict=True)
        ours[impl] = net
    for net in (theirs, *ours.values()):
        _seed_in_eval(net)
    return theirs, ours


def pred(out: Any) -> Any:
    """The restored image from either return type (ours returns ``(pred, aux)`` in training)."""
    return out[0] if isinstance(out, tuple) else out
