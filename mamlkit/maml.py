"""MAML and FOMAML as pure functions of an explicit parameter dict θ.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.

    inner step (task Tᵢ):   θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)                  `inner_step`, `adapt`
    meta-objective:         L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query)               `meta_loss`
    outer step:             θ ← θ − β ∇θ L_meta(θ)                             trainer.py (Adam)

MAML differentiates through the inner step: ∇θ L_Tᵢ(θ'ᵢ) = (I − α ∇²θ L_Tᵢ(θ; support)) ∇θ' L_Tᵢ(θ'ᵢ; query).
FOMAML treats the inner gradient as a constant, so dθ'ᵢ/dθ = I and its meta-gradient is ∇θ' L_Tᵢ(θ'ᵢ; query).
In code the two differ in one argument of one line: `create_graph=not first_order` in `inner_step`.

Symbols, the same in every notebook: θ `params`, α `inner_lr` (a float, or a dict of tensors for Meta-SGD),
β `meta_lr`, support set `support_x/_y` (the K examples a task gives for adaptation), query set
`query_x/_y` (the examples θ'ᵢ is judged on). Input checks live in checks.py; the model is never mutated,
deep-copied or reloaded (`load_state_dict` would cut the graph from θ' back to θ).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, vmap

from . import checks  # input checks, kept out of the algorithm's way
from .batched import task_batched_forward
from .checks import BATCHINGS  # noqa: F401  (part of this module's API)

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]  # forward(θ, x) -> f_θ(x)


def inner_step(forward: Forward, theta: Params, support_x, support_y, *, loss_fn, inner_lr,
               first_order: bool = False) -> tuple[Params, torch.Tensor]:
    """One step of the inner loop, θ' = θ − α ∇θ L(θ; support). Returns (θ', L(θ; support) detached).

    One task: θ holds the model's tensors, forward is `single_task_forward(model)`, the loss is a scalar.
    A batch of tasks: θ holds one copy per task (tasks, *shape), forward is `task_batched_forward`, and
    loss_fn gives one loss per task (tasks,). Task i's loss depends only on its own copy θᵢ, so one
    gradient of the summed losses is every task's own ∇θᵢ L_Tᵢ.
    """
    checks.check_inner_step(theta, inner_lr, first_order)
    loss = loss_fn(forward(theta, support_x), support_y)  # L(θ; support): a scalar, or (tasks,)
    # MAML keeps the graph of ∇θ L (the Hessian term of the meta-gradient); FOMAML treats it as a constant
    grads = torch.autograd.grad(loss.sum(), list(theta.values()), create_graph=not first_order)
    theta = {k: p - lr_of(inner_lr, k) * g for (k, p), g in zip(theta.items(), grads)}  # θ' = θ − α ∇θ L
    return theta, loss.detach()


def adapt(model: nn.Module, params: Mapping[str, torch.Tensor], support_x, support_y, *, loss_fn, inner_lr,
          steps: int = 1, first_order: bool = False) -> Params:
    """Adapt θ to one task: `steps` inner steps on its support set (K, ...). Returns θ', a new dict.

    Use θ' as `torch.func.functional_call(model, θ', x)`; gradients flow from θ' back to θ (and to α
    when it is a dict of tensors, Meta-SGD). `steps=0` returns θ. Raises FloatingPointError naming the
    inner step where the support loss stops being finite.
    """
    checks.check_inner_loop(model, params, inner_lr, steps, first_order)
    checks.check_task(support_x, support_y)
    theta, losses = leaves(params), []
    # the first forward pass also checks that the model takes support_x and that support_y fits its output
    forward, loss_fn = checks.checked_forward(single_task_forward(model), "support_x"), checks.checked_loss(loss_fn, "support_y")
    with torch.enable_grad():  # the inner loop needs gradients even under torch.no_grad()
        for _ in range(steps):
            theta, loss = inner_step(forward, theta, support_x, support_y, loss_fn=loss_fn,
                                     inner_lr=inner_lr, first_order=first_order)
            losses.append(loss)
    checks.check_finite(torch.stack(losses)[None] if losses else support_x.new_zeros(1, 0))
    return theta


def meta_loss(model: nn.Module, params: Mapping[str, torch.Tensor], support_x, support_y, query_x, query_y, *,
              loss_fn, inner_lr, steps: int = 1, first_order: bool = False, batching: str = "auto") -> torch.Tensor:
    """The meta-objective L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query), each θ'ᵢ adapted on task i's support set.

    All four tensors carry a leading task dimension: support_x (tasks, K, ...), query_x (tasks, Q, ...).
    `.backward()` on the result gives the meta-gradient ∇θ L_meta (second order unless first_order).
    """
    checks.check_flag("first_order", first_order)
    checks.check_task_batch(support_x, support_y, query_x, query_y)
    query_losses, support_losses, _ = task_losses(model, params, support_x, support_y, query_x, query_y,
                                                  loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
                                                  first_order=first_order, batching=batching)
    checks.check_finite(support_losses)
    return query_losses.mean()


# ----------------------------------------------------------------------------------------------
# a batch of tasks: all at once (vmap of the forward pass) or one after another, the same numbers


def task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                first_order: bool = False, batching: str = "auto"):
    """The terms of L_meta, unchecked: (L_Tᵢ(θ'ᵢ; query) (tasks,), support losses (tasks, steps), f_θ'ᵢ(query_x)).

    `meta_loss` is their mean after checking that no inner loop diverged; the trainer back-propagates
    them itself (task by task with batching "loop", to keep one task's graph alive at a time) and
    checks everything with one host-device synchronisation per meta-step.
    """
    adapted, support_losses = adapt_tasks(model, params, support_x, support_y, loss_fn=loss_fn, inner_lr=inner_lr,
                                          steps=steps, first_order=first_order, batching=batching)
    out = _predict(model, adapted, query_x, batching, "query_x")  # (tasks, Q, ...)
    return checks.checked_loss(vmap(loss_fn), "query_y")(out, query_y), support_losses, out


def adapt_batch(model, params, support_x, support_y, *, loss_fn, inner_lr, steps: int = 1, first_order: bool = False,
                batching: str = "auto") -> tuple[Params, torch.Tensor]:
    """Adapt θ to each task of a batch, support_x (tasks, K, ...). Returns (θ' stacked, support losses).

    θ'[name] has shape (tasks, *θ[name].shape); the support losses (tasks, steps) are L_support before
    each inner step. Raises FloatingPointError naming the step and task where one diverged, and
    ValueError naming the argument for a support set that is not (tasks, K, ...) or does not fit the model.
    """
    adapted, losses = adapt_tasks(model, params, support_x, support_y, loss_fn=loss_fn, inner_lr=inner_lr,
                                  steps=steps, first_order=first_order, batching=batching)
    checks.check_finite(losses)
    return adapted, losses


def adapt_tasks(model, params, support_x, support_y, *, loss_fn, inner_lr, steps: int = 1, first_order: bool = False,
                batching: str = "auto") -> tuple[Params, torch.Tensor]:
    """`adapt_batch` without the divergence check (which needs the losses on the host: a device sync).

    batching "vmap": θ is repeated per task (a view) and the forward pass is vmapped over the task
    dimension, so one `inner_step` adapts every task. Only the forward pass is vmapped, not
    `torch.func.grad` (notebook 02 vmaps `grad`): one `autograd.grad` is cheaper, and a second-order
    `grad` vmapped through torch's BatchNorm gives a wrong meta-gradient in torch 2.13 (notebook 06).
    batching "loop": one task after another, the same numbers.
    """
    checks.check_inner_loop(model, params, inner_lr, steps, first_order)
    checks.check_batching(batching)
    checks.check_support_batch(support_x, support_y)  # also: as many target sets as support sets (zip would truncate)
    batching = choose_batching(model, support_x.device) if batching == "auto" else batching
    with torch.enable_grad():
        if batching == "vmap":
            tasks = support_x.shape[0]
            # (tasks, *shape) views of θ; the backward of expand sums the tasks' gradients onto θ
            theta = {k: p.expand(tasks, *p.shape) for k, p in leaves(params).items()}
            forward = checks.checked_forward(task_batched_forward(model, dict(model.named_buffers())), "support_x")
            loss, losses = checks.checked_loss(vmap(loss_fn), "support_y"), []
            for _ in range(steps):
                theta, l = inner_step(forward, theta, support_x, support_y, loss_fn=loss, inner_lr=inner_lr,
                                      first_order=first_order)
                losses.append(l)
            return theta, torch.stack(losses, 1) if losses else support_x.new_zeros(tasks, 0)  # (tasks, steps)
        per_task = []
        forward, loss = checks.checked_forward(single_task_forward(model), "support_x"), checks.checked_loss(loss_fn, "support_y")
        for sx, sy in zip(support_x, support_y):
            theta, losses = leaves(params), []
            for _ in range(steps):
                theta, l = inner_step(forward, theta, sx, sy, loss_fn=loss, inner_lr=inner_lr,
                                      first_order=first_order)
                losses.append(l)
            per_task.append((theta, torch.stack(losses) if losses else sx.new_zeros(0)))
    adapted = {k: torch.stack([a[k] for a, _ in per_task]) for k in params}  # (tasks, *shape)
    return adapted, torch.stack([l for _, l in per_task])  # (tasks, steps)


def predict_batch(model: nn.Module, adapted: Params, x: torch.Tensor, *, batching: str = "auto") -> torch.Tensor:
    """f_{θ'ᵢ}(xᵢ) for each task i. adapted[name]: (tasks, ...), x: (tasks, N, ...) -> (tasks, N, ...)."""
    checks.check_batching(batching)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a tensor with a leading task dimension (tasks, examples, ...), got {shape}")
    checks.check_params_match(model, adapted, "adapted", tasks=x.shape[0])  # one θ'ᵢ per task of x
    return _predict(model, adapted, x, batching, "x")


def _predict(model, adapted, x, batching: str, x_name: str) -> torch.Tensor:
    """`predict_batch` without its checks; a first forward pass the model rejects names `x_name`."""
    batching = choose_batching(model, x.device) if batching == "auto" else batching
    if batching == "vmap":
        return checks.checked_forward(task_batched_forward(model, dict(model.named_buffers())), x_name)(adapted, x)
    forward = checks.checked_forward(single_task_forward(model), x_name)
    return torch.stack([forward({k: v[i] for k, v in adapted.items()}, x[i]) for i in range(x.shape[0])])


def choose_batching(model: nn.Module, device: torch.device | str | None = None) -> str:
    """The faster batching for this model and device, as `python -m mamlkit.bench` measures it.

    On a CPU, vmap turns a per-task convolution into a grouped convolution, no faster than a loop; for
    fully connected models it turns many small matmuls into one batched matmul. On a GPU vmap wins for
    both (one kernel launch instead of one per task).
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    if torch.device(device).type != "cpu":
        return "vmap"
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return "loop" if has_conv else "vmap"


# ----------------------------------------------------------------------------------------------
# small helpers


def single_task_forward(model: nn.Module) -> Forward:
    """forward(θ, x) = f_θ(x) for one task: the model run with θ (and its buffers, as constants)."""
    buffers = dict(model.named_buffers())
    return lambda theta, x: functional_call(model, (theta, buffers), (x,))


def leaves(params: Mapping[str, torch.Tensor]) -> Params:
    """θ as a dict the inner loop can differentiate: a frozen tensor becomes a leaf that requires grad
    (it still gets no update from outside), every other tensor is used as it is, graph and all."""
    return {k: p if p.requires_grad else p.detach().requires_grad_() for k, p in params.items()}


def lr_of(inner_lr, name: str):
    """α for parameter `name`: the float, or its tensor in a Meta-SGD dict (same shape as θ[name])."""
    return inner_lr[name] if isinstance(inner_lr, Mapping) else inner_lr


__all__ = ["inner_step", "adapt", "meta_loss", "task_losses", "adapt_batch", "adapt_tasks", "predict_batch",
           "choose_batching", "single_task_forward", "leaves", "lr_of", "Params", "Forward", "BATCHINGS"]
