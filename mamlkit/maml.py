"""MAML and FOMAML as pure functions of an explicit parameter dict θ.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.
Li, Zhou, Chen, Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning" (learnable α).

Symbols, the same in every notebook:

    θ              params          the meta-parameters (the initialization that MAML learns)
    α              inner_lr        inner-loop step size (a float, or a dict of tensors for Meta-SGD)
    β              meta_lr         outer-loop step size (the meta-optimizer's, see trainer.py)
    support set    support_x/_y    the K examples a task gives for adaptation
    query set      query_x/_y      the examples the adapted θ'ᵢ is judged on

Inner loop (one task Tᵢ, repeated `steps` times):

    θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)

Outer loop (the meta-objective, its gradient taken by the caller):

    L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query)          θ ← θ − β ∇θ L_meta(θ)

Second order (MAML): ∇θ L_Tᵢ(θ'ᵢ) = (I − α ∇²θ L_Tᵢ(θ; support)) ∇θ' L_Tᵢ(θ'ᵢ; query), one step.
First order (FOMAML): the inner gradient is a constant, so dθ'ᵢ/dθ = I and the meta-gradient is
∇θ' L_Tᵢ(θ'ᵢ; query). The one line that differs is marked `first_order` in `_inner_step`.

Everything here is built on `torch.func` (`functional_call`, `grad`, `vmap`): the model is never
mutated, never deep-copied, never reloaded with `load_state_dict` (which would cut the graph).

Buffers policy: buffers (e.g. BatchNorm running statistics) are passed to the model as constants,
never adapted and never updated. A model that would *write* to a buffer during the forward pass
(BatchNorm with `track_running_stats=True` in training mode) is rejected with a clear error: use
`track_running_stats=False` (batch statistics at train and test time, as the paper's code does), or
put the model in eval mode to use fixed running statistics.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .batched import task_batched_forward

Params = dict[str, torch.Tensor]
BATCHINGS = ("auto", "vmap", "loop")


# ----------------------------------------------------------------------------------------------
# input checks: fail loudly, naming the argument and what was expected


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


# ----------------------------------------------------------------------------------------------
# the inner loop


def _lr_for(inner_lr, name: str):
    return inner_lr[name] if isinstance(inner_lr, Mapping) else inner_lr


def _adapt(model, params, buffers, support_x, support_y, loss_fn, inner_lr, steps, first_order, under_vmap):
    """The inner loop without input checks. Returns (θ', support losses (steps,)).

    Two ways to take the inner gradient, the same numbers: inside a function that is vmapped,
    `torch.func.grad` (vmap cannot map `torch.autograd.grad`); in a plain loop, `torch.autograd.grad`,
    which has less overhead. `adapt_batch` vmaps the forward pass only (`_adapt_tasks`): don't put a
    second-order `torch.func.grad` under vmap through torch's BatchNorm, whose batching rule gives a
    wrong gradient of a gradient in torch 2.13 (notebook 06 shows it).
    """

    def support_loss(p: Params) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (support_x,)), support_y)

    if not under_vmap:
        # autograd.grad needs θ in the graph: a frozen tensor becomes a leaf of its own (it still gets no update from outside).
        params = {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}
    losses = []
    for _ in range(steps):
        if under_vmap:
            grads, loss = grad_and_value(support_loss)(params)  # ∇θ L_support(θ), L_support(θ)
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}  # FOMAML: the inner gradient is a constant
        else:
            loss = support_loss(params)
            # MAML keeps the graph of ∇θ L (the Hessian term); FOMAML (first_order=True) does not.
            grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)))
        params = {k: p - _lr_for(inner_lr, k) * grads[k] for k, p in params.items()}  # θ' = θ − α ∇θ L
        losses.append(loss.detach())
    losses = torch.stack(losses) if losses else support_x.new_zeros(0)
    return params, losses


def _adapt_tasks(model, params, buffers, support_x, support_y, loss_fn, inner_lr, steps, first_order):
    """The inner loop for all tasks at once. Returns (θ' stacked (tasks, ...), support losses (tasks, steps)).

    vmap maps only the *forward pass* over the task dimension (`batched.py`, which also has a faster
    exact path for plain MLPs); the inner gradient is one
    `torch.autograd.grad` of the summed task losses, which gives every task its own gradient because
    task i's loss depends only on its own copy θᵢ. Cheaper than vmapping `torch.func.grad`, and
    double-differentiable through every layer (torch's BatchNorm included).
    """
    tasks = support_x.shape[0]
    # θ repeated per task: (tasks, *shape), a view; the backward of expand sums the tasks' gradients onto θ
    theta = {k: (p if p.requires_grad else p.detach().requires_grad_()).expand(tasks, *p.shape)
             for k, p in params.items()}
    forward = task_batched_forward(model, buffers)  # (tasks, K, ...) -> (tasks, K, ...)
    task_losses = vmap(loss_fn)  # one loss per task: (tasks,)
    losses = []
    for _ in range(steps):
        loss = task_losses(forward(theta, support_x), support_y)  # (tasks,)
        # MAML keeps the graph of ∇θ L (the Hessian term); FOMAML (first_order=True) does not.
        grads = torch.autograd.grad(loss.sum(), list(theta.values()), create_graph=not first_order)
        theta = {k: p - _lr_for(inner_lr, k) * g for (k, p), g in zip(theta.items(), grads)}  # θ'ᵢ = θᵢ − α ∇L
        losses.append(loss.detach())
    losses = torch.stack(losses, dim=1) if losses else support_x.new_zeros(tasks, 0)  # (tasks, steps)
    return theta, losses


def adapt(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inner_lr,
    steps: int = 1,
    first_order: bool = False,
) -> Params:
    """Adapt θ to one task: θ' = θ − α ∇θ L_support(θ), `steps` times.

    Arguments:
        model: the network; only its structure is used (`functional_call`), it is never changed.
        params: θ, a dict like `dict(model.named_parameters())`.
        support_x, support_y: one task's support set, (K, ...) and (K, ...).
        loss_fn: L(prediction, target) -> scalar, e.g. `F.mse_loss` or `F.cross_entropy`.
        inner_lr: α, a positive float, or a dict name -> tensor (Meta-SGD; gradients reach it).
        steps: number of inner gradient steps (0 returns θ unchanged).
        first_order: False (MAML) keeps the graph through the inner gradients, so the meta-gradient
            has the Hessian term; True (FOMAML) treats them as constants.

    Returns: θ', a new dict with the same keys; use it as
    `torch.func.functional_call(model, θ', x)`. Gradients flow from θ' back to θ (and to α).

    Raises FloatingPointError naming the inner step where the support loss stops being finite.
    """
    check_inner_loop(model, params, inner_lr, steps)
    check_task(support_x, support_y)
    buffers = dict(model.named_buffers())
    with torch.enable_grad():
        adapted, losses = _adapt(model, dict(params), buffers, support_x, support_y, loss_fn, inner_lr, steps, first_order, False)
    check_finite(losses[None])
    return adapted


# ----------------------------------------------------------------------------------------------
# a batch of tasks: vmap or a loop, the same numbers


def choose_batching(model: nn.Module, device: torch.device | str | None = None) -> str:
    """The faster batching for this model and device, as measured by `python -m mamlkit.bench`.

    On a CPU, vmap turns a per-task convolution into a grouped convolution, which is slower than a
    plain loop; for fully connected models vmap turns many small matmuls into one batched matmul, far
    faster. On a GPU, vmap wins for both (one kernel launch instead of one per task).
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    if torch.device(device).type != "cpu":
        return "vmap"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if has_conv else "vmap"


def adapt_batch(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    loss_fn,
    inner_lr,
    steps: int = 1,
    first_order: bool = False,
    batching: str = "auto",
) -> tuple[Params, torch.Tensor]:
    """Adapt θ to each task of a batch. support_x: (tasks, K, ...), support_y: (tasks, K, ...).

    Returns (θ' stacked, support losses): θ'[name] has shape (tasks, *θ[name].shape), and the support
    losses are (tasks, steps), the loss L_support(θ) *before* each inner step.
    """
    check_inner_loop(model, params, inner_lr, steps)
    if batching not in BATCHINGS:
        raise ValueError(f"batching: expected one of {BATCHINGS}, got {batching!r}")
    if batching == "auto":
        batching = choose_batching(model, support_x.device)
    buffers = dict(model.named_buffers())
    params = dict(params)

    with torch.enable_grad():  # the inner loop needs gradients even when called under torch.no_grad()
        if batching == "vmap":
            adapted, losses = _adapt_tasks(model, params, buffers, support_x, support_y, loss_fn, inner_lr, steps,
                                           first_order)
        else:
            per_task = [_adapt(model, params, buffers, sx, sy, loss_fn, inner_lr, steps, first_order, False)
                        for sx, sy in zip(support_x, support_y)]
            adapted = {k: torch.stack([a[k] for a, _ in per_task]) for k in params}  # (tasks, *shape)
            losses = torch.stack([l for _, l in per_task])  # (tasks, steps)
    check_finite(losses)
    return adapted, losses


def predict_batch(model: nn.Module, adapted: Params, x: torch.Tensor, *, batching: str = "auto") -> torch.Tensor:
    """f_{θ'ᵢ}(xᵢ) for each task i. adapted[name]: (tasks, ...), x: (tasks, N, ...) -> (tasks, N, ...)."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching: expected one of {BATCHINGS}, got {batching!r}")
    if batching == "auto":
        batching = choose_batching(model, x.device)
    buffers = dict(model.named_buffers())
    if batching == "vmap":
        return task_batched_forward(model, buffers)(adapted, x)
    return torch.stack([functional_call(model, ({k: v[i] for k, v in adapted.items()}, buffers), (x[i],))
                        for i in range(x.shape[0])])


def meta_loss(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    loss_fn,
    inner_lr,
    steps: int = 1,
    first_order: bool = False,
    batching: str = "auto",
) -> torch.Tensor:
    """The meta-objective L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query), θ'ᵢ adapted on task i's support set.

    All four tensors carry a leading task dimension: support_x (tasks, K, ...), query_x (tasks, Q, ...).
    Call `.backward()` on the result for the meta-gradient ∇θ L_meta (second order unless
    `first_order=True`). `batching="vmap"` maps one task's computation over the task dimension;
    `"loop"` runs tasks one after another; both give the same value and gradient. `"auto"` picks the
    faster for the model and device (`choose_batching`).
    """
    check_task_batch(support_x, support_y, query_x, query_y)
    if batching == "auto":
        batching = choose_batching(model, support_x.device)
    adapted, _ = adapt_batch(
        model, params, support_x, support_y,
        loss_fn=loss_fn, inner_lr=inner_lr, steps=steps, first_order=first_order, batching=batching,
    )
    buffers = dict(model.named_buffers())

    def query_loss(p, qx, qy):
        return loss_fn(functional_call(model, (p, buffers), (qx,)), qy)

    if batching == "vmap":
        losses = vmap(loss_fn)(task_batched_forward(model, buffers)(adapted, query_x), query_y)  # (tasks,)
    else:
        losses = torch.stack([
            query_loss({k: v[i] for k, v in adapted.items()}, query_x[i], query_y[i])
            for i in range(query_x.shape[0])
        ])
    return losses.mean()
