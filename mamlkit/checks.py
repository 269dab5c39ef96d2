"""Input checks of the core: each fails loudly, naming the argument and what was expected.

maml.py and trainer.py call these before any work, so that a wrong shape or a wrong type is reported as
what it is instead of a broadcasting surprise or a torch traceback deep inside the inner loop.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn


def check_params(params) -> None:
    if not isinstance(params, Mapping) or len(params) == 0:
        raise TypeError(
            f"params: expected a non-empty dict of name -> floating tensor, like "
            f"dict(model.named_parameters()); got {type(params).__name__}"
        )
    for name, p in params.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            what = p.dtype if isinstance(p, torch.Tensor) else type(p).__name__
            raise TypeError(f"params[{name!r}]: expected a floating-point tensor, got {what}")


def check_inner_lr(inner_lr, params: Mapping) -> None:
    if isinstance(inner_lr, Mapping):
        missing = [k for k in params if k not in inner_lr]
        if missing:
            raise KeyError(f"inner_lr: a dict inner_lr (Meta-SGD) needs an entry for every parameter; missing {missing}")
        for k in params:
            if not isinstance(inner_lr[k], torch.Tensor) or not inner_lr[k].is_floating_point():
                raise TypeError(f"inner_lr[{k!r}]: expected a floating-point tensor")
        return
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)):
        raise TypeError(f"inner_lr: expected a positive float or a dict of tensors, got {type(inner_lr).__name__}")
    if not (inner_lr > 0 and math.isfinite(inner_lr)):
        raise ValueError(f"inner_lr: expected a positive finite float (α), got {inner_lr}")


def check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0 (number of inner steps), got {steps!r}")


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            raise ValueError(
                f"model: {name or 'the model'} is a BatchNorm with track_running_stats=True in training mode, "
                "so its forward pass would write running statistics into buffers. mamlkit never updates "
                "buffers: build it with track_running_stats=False (batch statistics, as in the MAML paper) "
                "or call model.eval() to use fixed running statistics."
            )


def check_inner_loop(model, params, inner_lr, steps) -> None:
    """The checks every inner-loop entry point makes: model, θ, α and the number of steps."""
    check_model(model)
    check_params(params)
    check_inner_lr(inner_lr, params)
    check_steps(steps)


def check_task(support_x, support_y, where: str = "") -> None:
    for name, t in (("support_x", support_x), ("support_y", support_y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if support_x.ndim == 0 or support_x.shape[0] == 0:
        raise ValueError(f"support_x: the support set is empty{where} (shape {tuple(support_x.shape)}); adaptation needs K >= 1 examples")
    if support_y.ndim == 0 or support_x.shape[0] != support_y.shape[0]:
        raise ValueError(
            f"support_y: expected {support_x.shape[0]} targets to match support_x{where}, "
            f"got shape {tuple(support_y.shape)} for support_x shape {tuple(support_x.shape)}"
        )


def check_task_batch(support_x, support_y, query_x, query_y) -> None:
    tensors = dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a tensor with a leading task dimension (tasks, examples, ...), got {shape}")
    tasks = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(tasks.values())) != 1:
        raise ValueError(f"task dimensions disagree: the leading (task) sizes are {tasks}; all four must be equal")
    if support_x.shape[1] == 0:
        raise ValueError(f"support_x: the support set is empty (shape {tuple(support_x.shape)}); adaptation needs K >= 1 examples")
    for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
        if tensors[x].shape[1] != tensors[y].shape[1]:
            raise ValueError(
                f"{y}: expected {tensors[x].shape[1]} examples per task to match {x}, "
                f"got shape {tuple(tensors[y].shape)} for {x} shape {tuple(tensors[x].shape)}"
            )
    if query_x.shape[1] == 0:
        raise ValueError(f"query_x: the query set is empty (shape {tuple(query_x.shape)})")


def check_finite(support_losses: torch.Tensor) -> None:
    """support_losses: (tasks, steps). Raise naming the first inner step whose loss is not finite."""
    if support_losses.numel() == 0:
        return
    bad = ~torch.isfinite(support_losses.detach())
    if bad.any():
        task, step = (int(i) for i in bad.nonzero()[0])
        value = float(support_losses[task, step])
        raise FloatingPointError(
            f"adapt: the support loss became {value} at inner step {step + 1} of {support_losses.shape[1]} "
            f"(task {task}); the inner loop diverged: lower inner_lr (α) or check the inputs"
        )


BATCHINGS = ("auto", "vmap", "loop")


def check_batching(batching) -> None:
    if batching not in BATCHINGS:
        raise ValueError(f"batching: expected one of {BATCHINGS}, got {batching!r}")
