"""Reptile: move θ toward the weights that a few SGD steps on a task reach. No second derivative, no query set.

Nichol, Achiam, Schulman (2018), "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.

    inner loop (task Tᵢ):  θ̃ᵢ = θ after k steps of SGD on L_Tᵢ:  θ ← θ − α ∇θ L_Tᵢ(θ; support)   (k = inner steps)
    outer step (batched):  θ ← θ + ε 1/B Σᵢ (θ̃ᵢ − θ)                                              `reptile_update`

The inner loop is `maml.adapt_tasks` with first_order=True on a detached θ: θ̃ᵢ is a number, not a graph.
For small α the direction θ − θ̃ᵢ ≈ k α ∇L + O(α²) terms whose expectation contains MAML's second-order
term (the paper's Section 5): Reptile optimises for fast adaptation without differentiating through it.

In the trainer: the Reptile "gradient" g = 1/B Σᵢ (θ − θ̃ᵢ) is put in θ's `.grad`, and the meta-optimizer
applies it, so Reptile takes the trainer's single code path (`reptile_task_losses` returns a per-task term
whose backward leaves exactly θ − θ̃ᵢ, see there). With `torch.optim.SGD(lr=ε)` that is the update above
exactly; the trainer's default Adam (step β) gives the adaptive variant the paper also describes (Section 3:
"we can treat (θ − W) as a gradient and plug it into an adaptive algorithm such as Adam"). The inner steps
use the support set; the query set only measures θ̃ᵢ (the meta-loss the trainer logs is L_Tᵢ(θ̃ᵢ; query)).
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch.func import vmap

from .. import checks, maml
from . import common


def reptile_targets(model, params, support_x, support_y, *, loss_fn, inner_lr, steps: int = 1,
                    batching: str = "auto") -> tuple[dict, torch.Tensor]:
    """θ̃ᵢ for each task: `steps` SGD steps of size α on task i's support set from θ, detached.

    Returns (θ̃ (tasks, *shape) per name, support losses (tasks, steps)), unchecked.
    """
    theta = {k: p.detach() for k, p in params.items()}
    adapted, support_losses = maml.adapt_tasks(model, theta, support_x, support_y, loss_fn=loss_fn, inner_lr=inner_lr,
                                               steps=steps, first_order=True, batching=batching)
    return {k: v.detach() for k, v in adapted.items()}, support_losses


def reptile_direction(params: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict:
    """1/B Σᵢ (θ̃ᵢ − θ), the direction the outer step moves θ in (the negative of the trainer's .grad)."""
    return {k: (targets[k] - p.detach()).mean(0) for k, p in params.items()}


@torch.no_grad()
def reptile_update(params: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], epsilon: float) -> None:
    """The plain outer step θ ← θ + ε 1/B Σᵢ (θ̃ᵢ − θ), in place on θ's tensors."""
    for k, d in reptile_direction(params, targets).items():
        params[k].add_(d, alpha=epsilon)


def reptile_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                        first_order: bool = True, batching: str = "auto"):
    """Reptile in the shape of `maml.task_losses`: (per-task term (tasks,), support losses, f_θ̃ᵢ(query_x)).

    The per-task term is  sg(L_Tᵢ(θ̃ᵢ; query)) + ½‖θ − θ̃ᵢ‖² − sg(½‖θ − θ̃ᵢ‖²)  (sg: detached): its VALUE is
    the query loss of θ̃ᵢ (what the trainer logs), its GRADIENT w.r.t. θ is θ − θ̃ᵢ (θ̃ᵢ is a constant). The
    trainer's mean over tasks thus leaves the Reptile gradient 1/B Σᵢ (θ − θ̃ᵢ) in θ's .grad.
    first_order is accepted for the common signature: Reptile is first order by construction.
    """
    batching = common.resolve_batching(model, batching, support_x.device)
    targets, support_losses = reptile_targets(model, params, support_x, support_y, loss_fn=loss_fn,
                                              inner_lr=inner_lr, steps=steps, batching=batching)
    with torch.no_grad():
        out = maml.predict_batch(model, targets, query_x, batching=batching)
        query_losses = checks.checked_loss(vmap(loss_fn), "query_y")(out, query_y)  # L_Tᵢ(θ̃ᵢ; query)
    tasks = support_x.shape[0]
    half_sq = sum(0.5 * (p - targets[k]).pow(2).reshape(tasks, -1).sum(1) for k, p in params.items())  # (tasks,)
    return query_losses + (half_sq - half_sq.detach()), support_losses, out


__all__ = ["reptile_targets", "reptile_direction", "reptile_update", "reptile_task_losses"]
