"""Speed and memory options for meta-training: bf16 autocast, torch.compile, inner-loop checkpointing.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks": the
second-order meta-gradient back-propagates through every inner step, so its memory grows with
inner_steps (each step keeps the graph of ∇θ L_Tᵢ(θ; support)), while FOMAML's stays flat.
Chen, Xu, Zhang, Guestrin (2016), "Training Deep Nets with Sublinear Memory Cost": gradient
checkpointing, here applied to the inner loop.

Three options, each usable on a CPU and meant for a GPU:

    autocast_context(enabled, device)   bf16 autocast for the meta-step: convolutions and matmuls run in
                                        bfloat16, losses and θ stay float32. Faster on recent GPUs and on
                                        CPUs with bf16 instructions; the meta-gradient changes slightly.
    maybe_compile(fn, enabled)          torch.compile(fn), falling back to fn with a warning when the
                                        compiled call fails (no C++ compiler, MAML's double backward).
    checkpointed_adapt(...)             the inner loop θ_{k+1} = θ_k − α ∇θ L_Tᵢ(θ_k; support) with each
                                        step wrapped in torch.utils.checkpoint: only θ_k is kept per
                                        step, the step's graph is recomputed during the backward pass.
                                        The same meta-gradient as `mamlkit.adapt`, with memory that grows
                                        by |θ| per step instead of by one step's whole graph.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Callable, Mapping

import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from .checks import check_finite, check_inner_loop, check_task, check_task_batch
from .maml import Params, inner_step, leaves, single_task_forward


def autocast_context(enabled: bool, device: torch.device | str):
    """`torch.autocast(device_type, dtype=torch.bfloat16)` when enabled, else a context that does nothing.

    Use it around the forward pass of a meta-step (adapt and query loss); call `.backward()` outside.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    if not enabled:  # any device, "mps" included: the trainer enters this context on every meta-step
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device: bf16 autocast is supported here on 'cpu' and 'cuda', got {device_type!r}")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def maybe_compile(fn: Callable, enabled: bool = True, **compile_kwargs) -> Callable:
    """torch.compile(fn, **compile_kwargs) when enabled, with a clear fallback when compilation fails.

    Compilation happens at the first call, so the returned function tries the compiled version then.
    If that raises and `fn` uncompiled does not (a missing C++ compiler, an operation the compiler
    cannot trace, or MAML's second order: in torch 2.13 a compiled graph cannot be differentiated with
    create_graph=True, which the inner loop needs), it warns once, naming the error, and from then on
    runs `fn` uncompiled. Errors of `fn` itself are not swallowed: they reappear from the uncompiled call.
    Where it works: FOMAML's meta-loss, the query pass, evaluation (first-order graphs only). MAML's
    meta-loss may compile, but its backward then raises torch's "does not currently support double
    backward" (aot_autograd): that failure comes after this function returns, so it cannot fall back.
    Note: a compiled function that fails half-way may have run part of its side effects; compile
    side-effect-free functions (a loss), not an optimizer step.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function to compile, got {type(fn).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    if not enabled:
        return fn
    name = getattr(fn, "__name__", repr(fn))
    try:
        compiled = torch.compile(fn, **compile_kwargs)
    except Exception as e:  # bad options, or a platform torch.compile does not support
        warnings.warn(f"maybe_compile: torch.compile({name}) failed ({type(e).__name__}: {e}); running it uncompiled",
                      RuntimeWarning, stacklevel=2)
        return fn
    failed = False

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal failed
        if failed:
            return fn(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # the compiler's error, or fn's own: the uncompiled call tells them apart
            result = fn(*args, **kwargs)  # fn's own error is raised here, as if nothing were compiled
            failed = True  # fn runs fine uncompiled: compilation was to blame
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warnings.warn(f"maybe_compile: compiling {name} failed ({type(e).__name__}: {first_line}); "
                          "running it uncompiled from now on", RuntimeWarning, stacklevel=2)
            return result

    run.compiled = compiled  # for inspection
    return run


def checkpointed_adapt(
    model: torch.nn.Module,
    params: Mapping[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    loss_fn: Callable,
    inner_lr,
    steps: int = 1,
    first_order: bool = False,
) -> Params:
    """`mamlkit.adapt` with each inner step checkpointed: θ'ᵢ for one task, lower memory for many steps.

    Same arguments and result as `mamlkit.adapt` (one task, support_x (K, ...)). Each step

        θ_{k+1} = θ_k − α ∇θ L_Tᵢ(θ_k; support)

    runs inside `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`: its graph (activations,
    and for MAML the graph of ∇θ L that carries the Hessian term) is dropped after the forward pass
    and recomputed when the meta-gradient reaches it. The price is one more forward pass of each
    inner step during the backward pass.
    """
    check_inner_loop(model, params, inner_lr, steps, first_order)
    check_task(support_x, support_y)
    names = list(params)

    forward = single_task_forward(model)

    def one_step(*theta):  # tensors in, tensors out: what checkpoint needs
        adapted, loss = inner_step(forward, dict(zip(names, theta)), support_x, support_y, loss_fn=loss_fn,
                                   inner_lr=inner_lr, first_order=first_order)
        return (*(adapted[n] for n in names), loss[None])

    theta = tuple(leaves(params)[n] for n in names)
    losses = []
    with torch.enable_grad():
        for _ in range(steps):
            *theta, loss = checkpoint(one_step, *theta, use_reentrant=False)
            losses.append(loss)
    if losses:
        check_finite(torch.cat(losses)[None])  # (1, steps)
    return dict(zip(names, theta))


def checkpointed_meta_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr,
                           steps: int = 1, first_order: bool = False) -> torch.Tensor:
    """L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query) with θ'ᵢ from `checkpointed_adapt`, tasks one after another.

    Tensors carry a leading task dimension, as for `mamlkit.meta_loss`; the value and the gradient are
    the same as `meta_loss(..., batching="loop")`.
    """
    check_task_batch(support_x, support_y, query_x, query_y)
    buffers = dict(model.named_buffers())
    losses = []
    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y):
        adapted = checkpointed_adapt(model, params, sx, sy, loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
                                     first_order=first_order)
        losses.append(loss_fn(functional_call(model, (adapted, buffers), (qx,)), qy))
    return torch.stack(losses).mean()
