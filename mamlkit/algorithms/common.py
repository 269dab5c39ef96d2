"""What ANIL, ProtoNets, ProtoMAML and MAML++ share: the body / head split and an inner loop over per-task θᵢ.

The body / head split (ANIL, ProtoNets, ProtoMAML):

    f_θ(x) = h_{θ_head}(φ_{θ_body}(x))       φ: the embedding (every layer but the last), h: the linear head

mamlkit's models are `nn.Sequential`s whose last child is the head (Conv4's `head`, the sinusoid MLP's last
`Linear`). `model[:-1]` is then the body with the SAME parameter names (`block1.conv.weight`, ...), so θ_body
is θ restricted to it and `functional_call` runs it on θ without copying anything.

The inner loop over per-task θᵢ (`adapt_each`): `maml.adapt_tasks` starts every task from the same θ; ProtoMAML
starts task i from its own head (built from task i's prototypes), so θ already carries a task dimension.
It is the same loop of `maml.inner_step`, vmapped forward or one task after another.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.func import vmap

from .. import checks, maml
from ..batched import task_batched_forward

Params = dict[str, torch.Tensor]


def split(model: nn.Module, head: str | None = None) -> tuple[nn.Sequential, nn.Module, str]:
    """(body φ, head h, the head's name) of an `nn.Sequential` whose last child is the head.

    head: the name of that last child (Conv4: "head"), or None for whatever it is called. The body keeps
    the model's parameter names; the head's own names ("weight", "bias") are θ's "<head>.weight", ...
    """
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        raise ValueError(
            f"model: ANIL, ProtoNets and ProtoMAML split the network into a body and a linear head, so they need "
            f"an nn.Sequential whose last layer is the head (as make_conv4 and make_mlp build), got "
            f"{type(model).__name__}" + (f" with {len(model)} layer(s)" if isinstance(model, nn.Sequential) else "")
        )
    name, module = list(model.named_children())[-1]
    if head is not None and head != name:
        raise ValueError(f"head: {head!r} is not the model's last layer, which is {name!r}; the head must be the last "
                         f"layer of the nn.Sequential (or pass head=None)")
    if not list(module.parameters()):
        raise ValueError(f"model: its last layer {name!r} ({type(module).__name__}) has no parameters, so it is "
                         f"not a head that can be adapted")
    return model[:-1], module, name


def head_params(params: Mapping[str, torch.Tensor], prefix: str) -> Params:
    """θ_head under the head module's own names: {"weight": θ["head.weight"], "bias": θ["head.bias"]}."""
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def body_params(params: Mapping[str, torch.Tensor], prefix: str) -> Params:
    """θ_body: every entry of θ that is not the head's, under the model's names."""
    return {k: v for k, v in params.items() if not k.startswith(prefix + ".")}


def head_inner_lr(inner_lr, prefix: str):
    """α for the head: the float, or the head's share of a Meta-SGD dict under the head's own names."""
    return head_params(inner_lr, prefix) if isinstance(inner_lr, Mapping) else inner_lr


def embed(body: nn.Module, theta_body: Mapping[str, torch.Tensor], x: torch.Tensor, batching: str) -> torch.Tensor:
    """φ_{θ_body}(xᵢ) for every task i: x (tasks, N, ...) -> (tasks, N, features).

    One θ_body for all tasks (expanded, a view: the backward sums the tasks' gradients onto it). Each task
    is its own batch, so a batch-statistics BatchNorm normalises each task's examples together, as in MAML.
    """
    tasks = x.shape[0]
    theta = {k: p.expand(tasks, *p.shape) for k, p in theta_body.items()}
    return maml.predict_batch(body, theta, x, batching=batching)


def adapt_each(model: nn.Module, theta: Mapping[str, torch.Tensor], support_x, support_y, *, loss_fn, inner_lr,
               steps: int, first_order: bool, batching: str) -> tuple[Params, torch.Tensor]:
    """`steps` inner steps θ'ᵢ = θᵢ − α ∇θᵢ L_Tᵢ(θᵢ; support), each task from its own θᵢ (tasks, *shape).

    The loop of `maml.adapt_tasks` (batching "vmap" or "loop", not "auto"), for a θ that already has a task
    dimension. Returns (θ' (tasks, *shape), support losses (tasks, steps) before each step), unchecked.
    """
    tasks = support_x.shape[0]
    with torch.enable_grad():
        theta = maml.leaves(theta)
        if batching == "vmap":
            forward = checks.checked_forward(task_batched_forward(model, dict(model.named_buffers())), "support_x")
            loss, losses = checks.checked_loss(vmap(loss_fn), "support_y"), []
            for _ in range(steps):
                theta, l = maml.inner_step(forward, theta, support_x, support_y, loss_fn=loss, inner_lr=inner_lr,
                                           first_order=first_order)
                losses.append(l)
            return theta, torch.stack(losses, 1) if losses else support_x.new_zeros(tasks, 0)
        forward = checks.checked_forward(maml.single_task_forward(model), "support_x")
        loss, per_task = checks.checked_loss(loss_fn, "support_y"), []
        for i in range(tasks):
            theta_i, losses = {k: v[i] for k, v in theta.items()}, []
            for _ in range(steps):
                theta_i, l = maml.inner_step(forward, theta_i, support_x[i], support_y[i], loss_fn=loss,
                                             inner_lr=inner_lr, first_order=first_order)
                losses.append(l)
            per_task.append((theta_i, torch.stack(losses) if losses else support_x.new_zeros(0)))
    adapted = {k: torch.stack([a[k] for a, _ in per_task]) for k in theta}
    return adapted, torch.stack([l for _, l in per_task])


def resolve_batching(model: nn.Module, batching: str, device) -> str:
    """"vmap" or "loop": `batching` itself, or for "auto" the faster one (`maml.choose_batching`)."""
    checks.check_batching(batching)
    return maml.choose_batching(model, device) if batching == "auto" else batching


def check_call(model, params, support_x, support_y, query_x, query_y, first_order=False) -> None:
    """The checks of a public `*_meta_loss`: the model, θ (its parameters exactly), the flag, the task batch."""
    checks.check_model(model)
    checks.check_params(params)
    checks.check_params_match(model, params)
    checks.check_flag("first_order", first_order)
    checks.check_task_batch(support_x, support_y, query_x, query_y)
