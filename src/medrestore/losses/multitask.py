"""Weighting several task losses into the one loss a multi-task network back-propagates.

``build_balancer(mode, tasks, weights, alpha, lr)`` returns a :class:`LossBalancer`;
``balancer(losses)`` is the weighted total ``Σ_t w_t · L_t`` over the tasks present in
``losses`` (single-task builds pass one loss), ``balancer.weights`` the current weights.

``fixed``
    The given weights (default 1 per task), constant.
``uncertainty``
    Learned homoscedastic uncertainty ("Multi-task learning using uncertainty to weigh
    losses", CVPR 2018) in the form ``Σ_t exp(−s_t) · L_t + s_t`` with one learned
    ``s_t = log σ_t²`` per task (the paper's ½ factors dropped: they scale the total, not the
    minimiser ``s_t = log L_t``). The reported weight is ``exp(−s_t)``. The ``s_t`` are trained
    with the network: add :meth:`LossBalancer.network_parameters` to the network's optimiser.
``gradnorm``
    GradNorm ("GradNorm: gradient normalization for adaptive loss balancing in deep multitask
    networks", ICML 2018). The network's loss uses the current weights as constants; the
    weights are moved only by :meth:`LossBalancer.gradnorm_step`, called once per training step
    with the losses of that step and a *shared* parameter ``W`` (the last shared encoder
    layer's weight, chosen by the caller):

    - ``G_t = ‖∇_W (w_t L_t)‖₂ = w_t ‖∇_W L_t‖₂``; ``Ḡ`` their mean;
    - inverse training rates ``r_t = L̃_t / mean(L̃)`` with ``L̃_t = L_t / L_t(0)``;
    - target ``Ḡ · r_t^α``, held constant; GradNorm loss ``Σ_t |G_t − Ḡ r_t^α|`` (L1);
    - its gradient with respect to the weights **only** (``torch.autograd.grad(..., inputs=
      weights)``), one step of the balancer's own Adam (``lr``), then the weights are clamped
      positive and renormalised to sum to ``T`` (the number of tasks).

    ``‖∇_W L_t‖`` is computed with ``torch.autograd.grad`` (no ``.grad`` written anywhere) and
    enters the GradNorm loss as a constant: ``G_t`` is linear in ``w_t``, so this is the exact
    gradient of the GradNorm loss with respect to the weights, without a second-order pass through
    the network and without any gradient reaching the network's parameters. A task whose loss does
    not reach ``W`` has ``G_t = 0``: pick a parameter every task's head depends on.
    ``L_t(0)`` is taken at the first step (``reanchor="first"``) or again at the first step of
    every epoch (``reanchor="epoch"``: call :meth:`LossBalancer.new_epoch`, as the authors
    re-anchor each epoch; they also reset the weights to 1 each epoch, which we do not).

    How the MTMed3D authors' variant differs (read from their public code): their norms are
    taken at the segmentation decoder's output bias, not at a shared layer, so the detection
    loss has a zero norm there; and their GradNorm loss is back-propagated into the network's
    gradients before the network's optimiser step.

Modules that use ``gradnorm`` train with manual optimisation: ``total = balancer(losses)`` (this
step's weights, as constants), ``balancer.gradnorm_step(losses, W)`` (it needs the losses'
graphs: call it before ``backward``, or back-propagate with ``retain_graph=True``; it touches
only the weights), ``backward`` the total, step the network's optimiser.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from medrestore.errors import ConfigError, MedrestoreError

BALANCER_MODES = ("fixed", "uncertainty", "gradnorm")
REANCHOR_MODES = ("first", "epoch")


class LossBalancer(nn.Module):
    """See the module docstring. Construct through :func:`build_balancer`."""

    def __init__(self, mode: str, tasks: Sequence[str], weights: Mapping[str, float] | None = None,
                 alpha: float = 0.12, lr: float = 1e-3, reanchor: str = "first") -> None:
        super().__init__()
        self.mode = mode
        self.tasks = list(tasks)
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.reanchor = reanchor
        init = torch.tensor([float((weights or {}).get(t, 1.0)) for t in self.tasks])
        if mode == "fixed":
            self.register_buffer("_w", init)
        elif mode == "uncertainty":
            self.log_vars = nn.Parameter(-init.log())  # exp(−s) = the given weight at the start
        else:
            # Renormalised to sum T from the start, as after every GradNorm step.
            self.gn_weights = nn.Parameter(init * len(self.tasks) / init.sum())
            self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))
            self._optimizer = torch.optim.Adam([self.gn_weights], lr=self.lr)
            self.last_gradnorm_loss = float("nan")

    # -- weights ------------------------------------------------------------------------------
    def _weight_vector(self) -> torch.Tensor:
        if self.mode == "fixed":
            return self._w
        if self.mode == "uncertainty":
            return torch.exp(-self.log_vars)
        return self.gn_weights

    @property
    def weights(self) -> dict[str, float]:
        w = self._weight_vector().detach().cpu().tolist()
        return dict(zip(self.tasks, (float(x) for x in w)))

    def network_parameters(self) -> list[nn.Parameter]:
        """Parameters to train with the network's optimiser (the uncertainty mode's ``s_t``);
        GradNorm's weights are excluded: they have their own optimiser."""
        return [self.log_vars] if self.mode == "uncertainty" else []

    def _index(self, losses: Mapping[str, torch.Tensor]) -> list[int]:
        unknown = [k for k in losses if k not in self.tasks]
        if unknown:
            raise MedrestoreError(f"LossBalancer: loss for unknown task {unknown[0]!r}; tasks are {self.tasks}")
        return [self.tasks.index(k) for k in losses]

    # -- total --------------------------------------------------------------------------------
    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not losses:
            raise MedrestoreError("LossBalancer: no task loss given")
        idx = self._index(losses)
        vals = list(losses.values())
        if self.mode == "uncertainty":
            s = self.log_vars
            return sum(torch.exp(-s[i]) * v + s[i] for i, v in zip(idx, vals))
        # Constants for the network (GradNorm's weights move only in gradnorm_step); cloned so an
        # in-place GradNorm update between this call and backward() cannot alter the graph.
        w = self._weight_vector().detach().clone()
        return sum(w[i].to(v.dtype) * v for i, v in zip(idx, vals))

    # -- GradNorm -----------------------------------------------------------------------------
    def new_epoch(self) -> None:
        """Forget ``L(0)`` so the next :meth:`gradnorm_step` re-anchors it (``reanchor="epoch"``)."""
        if self.mode == "gradnorm" and self.reanchor == "epoch":
            self.initial_losses.fill_(float("nan"))

    def gradnorm_step(self, losses: Mapping[str, torch.Tensor], shared_param: torch.Tensor) -> float:
        """One GradNorm update of the task weights; returns the GradNorm loss. ``losses`` must
        still have their graphs (call before the network's ``backward`` frees them, or
        backward with ``retain_graph=True``). Writes no ``.grad`` on any network parameter."""
        if self.mode != "gradnorm":
            raise MedrestoreError(f"LossBalancer.gradnorm_step: mode is {self.mode!r}, not 'gradnorm'")
        if not isinstance(shared_param, torch.Tensor) or not shared_param.requires_grad:
            raise MedrestoreError("LossBalancer.gradnorm_step: shared_param must be a parameter that requires grad")
        idx = self._index(losses)
        if len(idx) < 2:
            return float("nan")  # one task: nothing to balance
        vals = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        norms = []
        for v in losses.values():
            if not v.requires_grad:
                norms.append(torch.zeros((), device=vals.device))
                continue
            (g,) = torch.autograd.grad(v, shared_param, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros((), device=vals.device) if g is None else g.detach().float().norm())
        grad_norms = torch.stack(norms).to(self.gn_weights.device)
        vals = vals.to(self.gn_weights.device)
        sel = torch.tensor(idx, device=self.gn_weights.device)
        with torch.no_grad():
            l0 = self.initial_losses[sel]
            fresh = torch.isnan(l0)
            if bool(fresh.any()):
                self.initial_losses[sel[fresh]] = vals[fresh].clamp_min(1e-12)
                l0 = self.initial_losses[sel]
        w = self.gn_weights[sel]
        g_w = w * grad_norms                                  # G_t, linear in w_t
        ratio = vals / l0
        rate = ratio / ratio.mean()                           # inverse training rate r_t
        target = (g_w.mean() * rate.pow(self.alpha)).detach()  # held constant
        gn_loss = (g_w - target).abs().sum()
        (grad_w,) = torch.autograd.grad(gn_loss, inputs=[self.gn_weights])
        self._optimizer.zero_grad(set_to_none=True)
        self.gn_weights.grad = grad_w
        self._optimizer.step()
        self.gn_weights.grad = None
        with torch.no_grad():
            self.gn_weights.clamp_(min=1e-6)
            self.gn_weights.mul_(len(self.tasks) / self.gn_weights.sum())
        self.last_gradnorm_loss = float(gn_loss.detach())
        return self.last_gradnorm_loss

    # The balancer's own Adam state travels in the module's state dict (checkpoint resume).
    def get_extra_state(self) -> Any:
        if self.mode != "gradnorm":
            return {}
        return {"optimizer": self._optimizer.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        if self.mode == "gradnorm" and state and "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        return f"mode={self.mode}, tasks={self.tasks}, alpha={self.alpha}, lr={self.lr}"


def build_balancer(mode: str, tasks: Sequence[str], weights: Mapping[str, float] | None = None,
                   alpha: float = 0.12, lr: float = 1e-3, reanchor: str = "first",
                   key: str = "loss.balance") -> LossBalancer:
    """Check the options (one-line :class:`ConfigError` naming ``key``) and build the balancer."""
    if mode not in BALANCER_MODES:
        raise ConfigError(f"{key}.mode={mode!r}: expected one of {', '.join(BALANCER_MODES)}")
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"{key}: tasks must be distinct and non-empty, got {tasks}")
    weights = dict(weights or {})
    for t, w in weights.items():
        if t not in tasks:
            raise ConfigError(f"{key}.weights.{t}: unknown task; tasks are {', '.join(tasks)}")
        try:
            ok = math.isfinite(float(w)) and float(w) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{key}.weights.{t}={w!r}: expected a positive number")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"{key}.alpha={alpha!r}: expected a number >= 0")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{key}.lr={lr!r}: expected a number > 0")
    if reanchor not in REANCHOR_MODES:
        raise ConfigError(f"{key}.reanchor={reanchor!r}: expected one of {', '.join(REANCHOR_MODES)}")
    return LossBalancer(mode, tasks, weights, alpha=float(alpha), lr=float(lr), reanchor=reanchor)
