"""MAML++: MAML with learned per-step inner learning rates, a multi-step loss and per-step BatchNorm.

Antoniou, Edwards, Storkey (2019), "How to train your MAML", ICLR. Five changes that stabilise and speed up
MAML; this module holds the three that change the meta-objective, the trainer already has the other two:

1. LSLR, learned per-layer per-step learning rates. One α per parameter tensor and inner step, meta-learned
   with θ (initialised to the config's α):
       θ^(s+1) = θ^(s) − α[name][s] ∇θ L_Tᵢ(θ^(s); support)          s = 0 … S−1, θ^(0) = θ
2. MSL, the multi-step loss. The query loss after EVERY inner step, weighted:
       L_Tᵢ = Σ_s v_s L_Tᵢ(θ^(s+1); query),    Σ_s v_s = 1
   v starts uniform and is annealed toward the last step (`per_step_loss_weights`, the paper code's
   get_per_step_loss_importance_vector); after the annealing only the last step counts (v = (0, …, 0, 1)).
3. BNWB, per-step BatchNorm weights and biases: the inner step s runs every BatchNorm with its own
   γ[s], β_bn[s] (meta-learned, not adapted in the inner loop, as the paper's default), and the query pass
   after step s+1 uses the same γ[s], β_bn[s]. The model's own γ, β_bn are replaced by these (they get no
   gradient; the per-step copies start from their values). Per-step running STATISTICS (BNRS) have no
   counterpart here: mamlkit's BatchNorm uses the statistics of the batch it is given at every step (models/conv4.py),
   so each step already normalises with its own statistics and there is nothing to store.
4. Derivative-order annealing (first order for the first meta-steps): `MetaConfig.first_order_steps`.
5. Cosine annealing of β: `MetaConfig.meta_lr_schedule="cosine"` (and `meta_lr_min`).

The learned inner-loop state is one flat dict of tensors (`init_inner_state`), passed where MAML takes α:

    {"lslr/<θ name>": α per step (S,),  "bn/<γ or β_bn name>": one row per step (S, channels)}

so the trainer keeps it in `MetaLearner.inner_lr`, gives it to the same Adam and saves it in checkpoints
exactly as it does Meta-SGD's α.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import vmap

from .. import checks, maml
from ..batched import task_batched_forward
from . import common

LSLR, BN = "lslr/", "bn/"


def batchnorm_parameters(model: nn.Module) -> list[str]:
    """Names in θ of the BatchNorm layers' γ and β_bn (torch's BatchNorm*d, and mamlkit's conv4.BatchNorm)."""
    names = []
    for module_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__.endswith("BatchNorm"):
            names += [f"{module_name}.{p}" if module_name else p for p, _ in m.named_parameters(recurse=False)]
    return names


def init_inner_state(model: nn.Module, steps: int, inner_lr: float) -> dict[str, torch.Tensor]:
    """MAML++'s learned inner-loop state for `steps` inner steps: every α[name][s] = inner_lr, and every
    BatchNorm's γ[s], β_bn[s] a copy of the model's current γ, β_bn. Leaf tensors that require grad."""
    checks.check_model(model)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: MAML++ learns one α per inner step, so it needs inner_steps >= 1, got {steps!r}")
    bn = set(batchnorm_parameters(model))
    state = {}
    for k, p in model.named_parameters():
        if k in bn:
            state[BN + k] = p.detach().expand(steps, *p.shape).clone().requires_grad_()
        else:
            state[LSLR + k] = torch.full((steps,), float(inner_lr), dtype=p.dtype, device=p.device, requires_grad=True)
    return state


def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """({θ name: α per step (S,)}, {γ / β_bn name: per-step rows (S, ...)}) from `init_inner_state`'s dict."""
    if not isinstance(state, Mapping) or any(not (k.startswith(LSLR) or k.startswith(BN)) for k in state):
        raise TypeError("inner_lr: MAML++ takes its learned inner-loop state, a dict from mamlpp.init_inner_state "
                        "(keys 'lslr/<name>' and 'bn/<name>'), not a float or a Meta-SGD dict")
    lslr = {k[len(LSLR):]: v for k, v in state.items() if k.startswith(LSLR)}
    bn = {k[len(BN):]: v for k, v in state.items() if k.startswith(BN)}
    return lslr, bn


def per_step_loss_weights(steps: int, progress: float) -> list[float]:
    """v_s, the multi-step loss's weight of the query loss after inner step s+1; Σ_s v_s = 1.

    progress = how far the annealing is, 0 … 1 (the paper: current_epoch / multi_step_loss_num_epochs):

        v_s     = max((1 − progress) / S, 0.03 / S)                        s < S − 1
        v_{S−1} = min((1 + (S − 1) progress) / S, 1 − (S − 1) 0.03 / S)

    uniform at 0, the last step's weight growing as the others shrink to 0.03/S; from progress 1 on, the
    paper stops using the multi-step loss: v = (0, …, 0, 1). Python floats (the trainer reads no tensor).
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    if progress >= 1:
        return [0.0] * (steps - 1) + [1.0]
    low = 0.03 / steps
    weights = [max((1 - progress) / steps, low)] * (steps - 1)
    return weights + [min((1 + (steps - 1) * progress) / steps, 1 - (steps - 1) * low)]


def mamlpp_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                       first_order: bool = False, batching: str = "auto", loss_weights: Sequence[float] | None = None):
    """MAML++'s per-task terms, unchecked, as `maml.task_losses` returns them for MAML:
    (Σ_s v_s L_Tᵢ(θ^(s+1)ᵢ; query) (tasks,), support losses (tasks, steps), f_θ^(S)ᵢ(query_x)).

    inner_lr: the learned state of `init_inner_state` (LSLR α and per-step BatchNorm); steps: at most the
    number of steps it was made for; loss_weights: v (`per_step_loss_weights`), default the last step only.
    """
    lslr, bn = split_state(inner_lr)
    weights = [0.0] * (steps - 1) + [1.0] if loss_weights is None else [float(v) for v in loss_weights]
    learned = min((v.shape[0] for v in (*lslr.values(), *bn.values())), default=0)
    if steps < 1 or steps > learned:
        raise ValueError(f"steps: MAML++ has learned α and BatchNorm for {learned} inner step(s), got steps={steps}")
    if len(weights) != steps:
        raise ValueError(f"loss_weights: expected one weight per inner step ({steps}), got {len(weights)}")
    fast = {k: v for k, v in params.items() if k not in bn}  # adapted in the inner loop; γ, β_bn come per step
    missing = [k for k in fast if k not in lslr]
    if missing:
        raise KeyError(f"inner_lr: the MAML++ state has no learned α for {missing}; build it with init_inner_state(model, ...)")
    batching = common.resolve_batching(model, batching, support_x.device)
    tasks = support_x.shape[0]

    def run(net_support, net_query, theta, sx, sy, qx, qy, support_loss, query_loss, bn_at):
        support, total, out = [], 0.0, None
        for s in range(steps):
            forward = lambda th, x, net=net_support, s=s: net({**th, **bn_at(s)}, x)  # θ^(s) with γ[s], β_bn[s]
            theta, loss = maml.inner_step(forward, theta, sx, sy, loss_fn=support_loss,
                                          inner_lr={k: lslr[k][s] for k in theta}, first_order=first_order)
            support.append(loss)
            if weights[s] or s == steps - 1:  # the query loss after step s+1 (skipped where its weight is 0)
                out = net_query({**theta, **bn_at(s)}, qx)
                total = total + weights[s] * query_loss(out, qy)
        return total, support, out

    with torch.enable_grad():
        if batching == "vmap":
            net = task_batched_forward(model, dict(model.named_buffers()))
            theta = {k: p.expand(tasks, *p.shape) for k, p in maml.leaves(fast).items()}
            total, support, out = run(
                checks.checked_forward(net, "support_x"), checks.checked_forward(net, "query_x"), theta,
                support_x, support_y, query_x, query_y, checks.checked_loss(vmap(loss_fn), "support_y"),
                checks.checked_loss(vmap(loss_fn), "query_y"),
                lambda s: {k: v[s].expand(tasks, *v.shape[1:]) for k, v in bn.items()})
            return total, torch.stack(support, 1), out
        net = maml.single_task_forward(model)
        net_support, net_query = checks.checked_forward(net, "support_x"), checks.checked_forward(net, "query_x")
        support_loss, query_loss = checks.checked_loss(loss_fn, "support_y"), checks.checked_loss(loss_fn, "query_y")
        per_task = [run(net_support, net_query, maml.leaves(fast), support_x[i], support_y[i], query_x[i], query_y[i],
                        support_loss, query_loss, lambda s: {k: v[s] for k, v in bn.items()}) for i in range(tasks)]
    return (torch.stack([t for t, _, _ in per_task]), torch.stack([torch.stack(s) for _, s, _ in per_task]),
            torch.stack([o for _, _, o in per_task]))


def mamlpp_meta_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                     first_order: bool = False, batching: str = "auto",
                     loss_weights: Sequence[float] | None = None) -> torch.Tensor:
    """MAML++'s meta-objective 1/B Σᵢ Σ_s v_s L_Tᵢ(θ^(s+1)ᵢ; query). `.backward()` reaches θ, the LSLR α and
    the per-step γ, β_bn in `inner_lr`. Raises FloatingPointError if an inner loop diverged."""
    common.check_call(model, params, support_x, support_y, query_x, query_y, first_order)
    checks.check_steps(steps)
    query_losses, support_losses, _ = mamlpp_task_losses(
        model, params, support_x, support_y, query_x, query_y, loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
        first_order=first_order, batching=batching, loss_weights=loss_weights)
    checks.check_finite(support_losses)
    return query_losses.mean()


__all__ = ["batchnorm_parameters", "init_inner_state", "split_state", "per_step_loss_weights",
           "mamlpp_task_losses", "mamlpp_meta_loss", "LSLR", "BN"]
