"""Our TAT, DATPRL-IR, PromptIR, AMIR and MoCE-IR (both implementation paths) against the
authors' own classes.

    python benchmarks/reference_check.py --tat-repo DIR --datprl-repo DIR \
        --promptir-repo DIR --amir-repo DIR --moce-ir-repo DIR [--threads 2]

``DIR`` is a checkout of the authors' public repository (nothing of theirs ships with
medrestore): ``Yaziwel/TAT`` (the class ``TAT`` in ``model/TAT.py``),
``GuangluDong0728/DATPRL-IR`` (the class ``DualPromptRestormerv3`` in
``MD_ALL_IN_ONE/basicsr/archs/promptrestormerv3_arch.py``, imported without BasicSR's package
initialisation, which needs its CUDA extensions and data stack), ``va1shn9v/PromptIR``,
``Yaziwel/All-In-One-Medical-Image-Restoration-via-Task-Adaptive-Routing`` and
``eduardzamfir/MoCE-IR`` (the last three through ``benchmarks/refcheck_<family>.py``, which
say what each needs, e.g. ``einops``). Any option may be left out; with none the script says
where to get the repositories and exits with status 2.

For each family the authors' network is built at the released sizes with random weights (TAT's
λ made non-zero so the generated kernels count), the same state dict is loaded strictly into
ours with ``impl="reference"`` and ``impl="fast"``, and the script prints max |Δ| of the
outputs in eval mode at 128², 256² and 192×400 (TAT: TLC windows at the two larger sizes), and
in training mode at 128² (batch 2; the same seed before each network, so DATPRL's selection
noise and dropout draw the same numbers) for the output and for the gradient of an L1 loss
(max |Δg| over all parameters relative to the largest |g|).

Tolerances (exit status 1 past them): the reference path's outputs must match to
1e-6 × max(1, max |y|) (it is the authors' op sequence; 0 is expected) and its gradients to 1e-5
relative (the forward is identical, but autograd sums the gradients arriving at a tensor used
more than once — skips, residuals, TAT's kernels shared by a level's blocks — in the order the
graph was built, which differs between the two classes, so the float sums differ in the last
bits and the difference grows along the backward pass; measured: 3.5e-6 for TAT); the
fast path reorders float sums in the forward too, so outputs must match to
1e-5 × max(1, max |y|) and gradients to 1e-4 relative.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable

REPOS = {"tat": "https://github.com/Yaziwel/TAT", "datprl": "https://github.com/GuangluDong0728/DATPRL-IR",
         "promptir": "https://github.com/va1shn9v/PromptIR",
         "amir": "https://github.com/Yaziwel/All-In-One-Medical-Image-Restoration-via-Task-Adaptive-Routing",
         "moce_ir": "https://github.com/eduardzamfir/MoCE-IR"}
#: families checked through benchmarks/refcheck_<family>.py
HOOKED = ("promptir", "amir", "moce_ir")
EVAL_SIZES = ((128, 128), (256, 256), (192, 400))
TOL = {"reference": (1e-6, 1e-5), "fast": (1e-5, 1e-4)}  # (outputs × max(1, |y|), gradients)


def _option(family: str) -> str:
    return f"--{family.replace('_', '-')}-repo"


def _usage() -> str:
    opts = ", ".join(f"{_option(f)} DIR ({url})" for f, url in REPOS.items())
    return ("reference_check needs the authors' code: pass one or more of " + opts +
            " — each DIR a checkout of that repository "
            "(e.g. git clone https://github.com/Yaziwel/TAT tat-authors)")


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def authors_tat(repo: Path) -> Callable[[], Any]:
    path = repo / "model" / "TAT.py"
    if not path.is_file():
        raise SystemExit(f"--tat-repo={repo}: expected {path.relative_to(repo)} in it (a checkout "
                         f"of {REPOS['tat']})")
    return _load_file("_authors_tat", path).TAT


def authors_datprl(repo: Path) -> Callable[[], Any]:
    root = repo / "MD_ALL_IN_ONE" / "basicsr"
    arch = root / "archs" / "promptrestormerv3_arch.py"
    if not arch.is_file():
        raise SystemExit(f"--datprl-repo={repo}: expected {arch.relative_to(repo)} in it (a "
                         f"checkout of {REPOS['datprl']})")

    class _Registry:  # what the arch files need of BasicSR's registry
        def register(self, obj: Any = None) -> Any:
            return obj if obj is not None else (lambda o: o)

    # Empty packages stand in for basicsr / basicsr.archs so their __init__ (which imports
    # every arch, data pipelines and compiled ops) does not run; relative imports still resolve.
    for name, folder in (("basicsr", root), ("basicsr.archs", root / "archs"),
                         ("basicsr.utils", root / "utils")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(folder)]
        sys.modules[name] = pkg
    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = _Registry()  # type: ignore[attr-defined]
    sys.modules["basicsr.utils.registry"] = registry
    return importlib.import_module("basicsr.archs.promptrestormerv3_arch").DualPromptRestormerv3


def _pred(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _authors_pair(family: str, theirs_cls: Callable[[], Any], channels: int
                  ) -> tuple[Any, dict[str, Any]]:
    """TAT / DATPRL-IR: the authors' network with random weights and ours (both paths) loaded
    from its state dict."""
    import torch

    from medrestore.models.archs import datprl_official, tat_official
    from medrestore.registry import build_arch

    theirs = theirs_cls()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if name.endswith("lambda_dw"):
                p.normal_(0, 0.5)
    if family == "tat":
        sd, kwargs = tat_official.convert_official_state_dict(theirs.state_dict()), {}
    else:
        sd = datprl_official.convert_official_state_dict(theirs.state_dict())
        kwargs = datprl_official.kwargs_from_official_config({"type": "DualPromptRestormerv3"})
        kwargs.pop("in_channels", None), kwargs.pop("out_channels", None)
    ours = {}
    for impl in ("reference", "fast"):
        net = build_arch(family, in_channels=channels, out_channels=channels, impl=impl, **kwargs)
        net.load_state_dict(sd, strict=True)
        ours[impl] = net
    return theirs, ours


def check_family(family: str, theirs: Any, ours: dict[str, Any], channels: int,
                 train_batch: int, pred: Callable[[Any], Any] = _pred) -> bool:
    """Print max |Δ| of ``ours`` (one network per implementation path) against ``theirs``
    (same weights) in eval at :data:`EVAL_SIZES` and in training at 128²; whether all pass."""
    import torch

    ok = True

    def report(what: str, impl: str, delta: float, scale: float, grad: bool) -> None:
        nonlocal ok
        tol = TOL[impl][1] if grad else TOL[impl][0] * max(1.0, scale)
        passed = delta <= tol
        ok &= passed
        print(f"{family:8s} {impl:9s} {what:24s} max|Δ| {delta:.3e}  (tolerance {tol:.1e}) "
              f"{'ok' if passed else 'FAIL'}", flush=True)

    theirs.eval()
    for h, w in EVAL_SIZES:
        x = torch.rand(1, channels, h, w)
        with torch.no_grad():
            torch.manual_seed(2)
            y = pred(theirs(x))
            for impl, net in ours.items():
                torch.manual_seed(2)  # families with eval-time noise draw the same numbers
                d = (pred(net.eval()(x)) - y).abs().max().item()
                report(f"eval 1x{channels}x{h}x{w}", impl, d, y.abs().max().item(), False)

    x = torch.rand(train_batch, channels, 128, 128)
    target = torch.rand_like(x)

    def train_step(net: Any) -> tuple[Any, dict[str, Any]]:
        net.train()
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        y = pred(net(x))
        (y - target).abs().mean().backward()
        return y.detach(), {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    y_ref, g_ref = train_step(theirs)
    g_scale = max(g.abs().max().item() for g in g_ref.values())
    for impl, net in ours.items():
        y, g = train_step(net)
        report(f"train {train_batch}x{channels}x128² out", impl, (y - y_ref).abs().max().item(),
               y_ref.abs().max().item(), False)
        missing = set(g_ref) ^ set(g)
        if missing:
            print(f"{family} {impl}: gradients for different parameters: {sorted(missing)[:5]}")
            ok = False
            continue
        worst = max(g_ref, key=lambda n: (g[n] - g_ref[n]).abs().max().item())
        d = (g[worst] - g_ref[worst]).abs().max().item() / g_scale
        report(f"train {train_batch}x{channels}x128² grad", impl, d, 1.0, True)
        print(f"{'':19s}(largest in {worst})")
    return ok


def _hooks(family: str) -> types.ModuleType:
    """``benchmarks/refcheck_<family>.py``: ``REPO_URL``, ``CHANNELS``, ``authors_class(repo)``,
    ``build_pair(cls)`` and ``pred(out)`` of a family checked the same way."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(f"refcheck_{family}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for family, url in REPOS.items():
        p.add_argument(_option(family), dest=f"{family}_repo", type=Path, default=None,
                       help=f"checkout of {url}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--train-batch", type=int, default=2)
    a = p.parse_args(argv)
    repos = {f: getattr(a, f"{f}_repo") for f in REPOS if getattr(a, f"{f}_repo") is not None}
    if not repos:
        print(_usage(), file=sys.stderr)
        return 2
    for family, path in repos.items():
        if not path.is_dir():
            print(f"{_option(family)}={path}: not a folder; {_usage()}", file=sys.stderr)
            return 2
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()}; reference path: "
          f"outputs {TOL['reference'][0]:g} x max(1, |y|), gradients {TOL['reference'][1]:g} "
          f"relative; fast path: outputs {TOL['fast'][0]:g} x max(1, |y|), gradients "
          f"{TOL['fast'][1]:g} relative", flush=True)
    ok = True
    for family, path in repos.items():
        torch.manual_seed(0)
        if family in HOOKED:
            hooks = _hooks(family)
            theirs, ours = hooks.build_pair(hooks.authors_class(path))
            ok &= check_family(family, theirs, ours, hooks.CHANNELS, a.train_batch, hooks.pred)
        else:
            channels = 1 if family == "tat" else 3
            cls = authors_tat(path) if family == "tat" else authors_datprl(path)
            theirs, ours = _authors_pair(family, cls, channels)
            ok &= check_family(family, theirs, ours, channels, a.train_batch)
    print("all within tolerance" if ok else "FAILED: some differences exceed the tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
