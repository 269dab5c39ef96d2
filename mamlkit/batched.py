"""f_{θᵢ}(xᵢ) for every task i at once: the task-batched forward pass behind `batching="vmap"`.

Finn, Abbeel, Levine (2017): after the inner step each task has its own parameters θ'ᵢ, so a meta-batch
runs B different networks. `torch.func.vmap` of `functional_call` does that for any model. For the
plainest model, an `nn.Sequential` of `nn.Linear` layers and parameter-free activations (the paper's
sinusoid MLP), the same computation is one batched matrix product per layer:

    h ← h · Wᵢᵀ + bᵢ    for all tasks at once:  torch.baddbmm(b[:, None], h, Wᵀ)    # (tasks, N, out)

which skips vmap's and functional_call's per-call overhead (a large share of a sinusoid meta-step,
whose matrix products are tiny; `python -m mamlkit.bench` measures it). Both give the same numbers: tests/test_maml.py checks
the fast path against finite differences and against the loop, and `vmap_forward` is the reference.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

# activations that act elementwise and hold no parameters: safe to apply to (tasks, N, features) as is
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Identity)

Forward = Callable[[dict, torch.Tensor], torch.Tensor]


def vmap_forward(model: nn.Module, buffers: dict) -> Forward:
    """Any model: vmap `functional_call` over the task dimension of θ and x."""
    return vmap(lambda p, x: functional_call(model, (p, buffers), (x,)))  # (tasks, N, ...) -> (tasks, N, ...)


def is_plain_mlp(model: nn.Module) -> bool:
    """An nn.Sequential of nn.Linear layers and parameter-free elementwise activations, nothing else."""
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        return False
    return all(type(m) is nn.Linear or (type(m) in ELEMENTWISE and not list(m.parameters())) for m in model)


def mlp_forward(model: nn.Sequential) -> Forward:
    """The plain-MLP fast path: one torch.baddbmm per layer, θ[name] of shape (tasks, *shape)."""

    def forward(theta: dict, x: torch.Tensor) -> torch.Tensor:  # x: (tasks, N, in)
        h = x
        for name, layer in model.named_children():
            if isinstance(layer, nn.Linear):
                w_t = theta[f"{name}.weight"].transpose(1, 2)  # (tasks, in, out)
                b = theta.get(f"{name}.bias")
                h = torch.bmm(h, w_t) if b is None else torch.baddbmm(b[:, None, :], h, w_t)  # (tasks, N, out)
            else:
                h = layer(h)  # elementwise
        return h

    return forward


def task_batched_forward(model: nn.Module, buffers: dict) -> Forward:
    """The fastest exact task-batched forward for this model: the MLP fast path where it applies, else vmap."""
    if is_plain_mlp(model) and not buffers:
        return mlp_forward(model)
    return vmap_forward(model, buffers)
