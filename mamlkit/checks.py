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


def check_params_match(model: nn.Module, params: Mapping, name: str = "params", tasks: int | None = None) -> None:
    """θ must hold exactly the model's parameters, each of its shape (with a leading task dimension when
    `tasks` is given): a missing name would silently keep the module's own tensor un-adapted, an extra
    one would be ignored, and a wrong shape fails deep inside the forward pass."""
    expected = {k: tuple(p.shape) for k, p in model.named_parameters()}
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise KeyError(
            f"{name}: expected exactly the model's parameters (dict(model.named_parameters())); "
            + (f"missing {missing}" if missing else "") + ("; " if missing and extra else "")
            + (f"unexpected {extra}" if extra else "") + f"; the model's are {list(expected)}"
        )
    for k, shape in expected.items():
        got = tuple(params[k].shape)
        want = shape if tasks is None else (tasks, *shape)
        if got != want:
            what = "the model's shape" if tasks is None else f"(tasks={tasks}, *the model's shape)"
            raise ValueError(f"{name}[{k!r}]: expected shape {want} ({what}), got {got}")


def check_inner_lr(inner_lr, params: Mapping) -> None:
    if isinstance(inner_lr, Mapping):
        missing = [k for k in params if k not in inner_lr]
        extra = [k for k in inner_lr if k not in params]
        if missing or extra:
            raise KeyError(
                "inner_lr: a dict inner_lr (Meta-SGD) needs one entry per parameter and no other; "
                + "; ".join(([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []))
            )
        for k, p in params.items():
            lr = inner_lr[k]
            if not isinstance(lr, torch.Tensor) or not lr.is_floating_point():
                raise TypeError(f"inner_lr[{k!r}]: expected a floating-point tensor")
            if lr.numel() != 1 and tuple(lr.shape) != tuple(p.shape):
                raise ValueError(f"inner_lr[{k!r}]: expected the shape of params[{k!r}], {tuple(p.shape)} "
                                 f"(one α per entry, Meta-SGD) or a single number, got {tuple(lr.shape)}")
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


def check_flag(name: str, value) -> None:
    """A switch must be True or False: a string such as "no" is truthy and would silently turn it on."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def check_inner_loop(model, params, inner_lr, steps, first_order: bool = False) -> None:
    """The checks every inner-loop entry point makes: model, θ, α, the number of steps, the order."""
    check_model(model)
    check_params(params)
    check_params_match(model, params)
    check_inner_lr(inner_lr, params)
    check_steps(steps)
    check_flag("first_order", first_order)


def check_device(device, name: str = "device", kinds: tuple = ("cpu", "cuda", "mps")) -> torch.device:
    """A torch device of one of `kinds` that this machine has, as a torch.device; else ValueError naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected a device such as {', '.join(kinds)} or cuda:N, got {device!r}") from None
    if dev.type not in kinds:
        raise ValueError(f"{name}: expected one of {', '.join(kinds)} (or cuda:N), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {device!r} asked for, but no CUDA device is available on this machine "
                             f"(torch.cuda.is_available() is False); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device!r} asked for, but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), numbered from 0")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps is not None and mps.is_available()):
            raise ValueError(f"{name}: {device!r} asked for, but no MPS device is available on this machine; use 'cpu'")
    return dev


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


def _check_inputs_have_tasks(name: str, x: torch.Tensor) -> None:
    # one task's (K, 1) inputs would be read as K tasks of ONE unbatched example each, and a model such
    # as nn.Linear(1, h) runs on that without complaint. Float inputs need (tasks, K, features...).
    if x.is_floating_point() and x.ndim < 3:
        raise ValueError(
            f"{name}: expected float inputs of shape (tasks, examples, features...), got {tuple(x.shape)}: its "
            f"first dimension would be read as {x.shape[0]} tasks of one unbatched example each. One task's "
            f"examples (K, features): add the task dimension with {name}[None], or use adapt() for one task"
        )


def check_support_batch(support_x, support_y) -> None:
    """A batch of support sets: support_x (tasks, K, ...), support_y (tasks, K, ...), tasks >= 1, K >= 1."""
    for name, t in (("support_x", support_x), ("support_y", support_y)):
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a tensor with a leading task dimension (tasks, examples, ...), got {shape}")
    if support_x.shape[0] == 0:
        raise ValueError(f"support_x: no tasks (shape {tuple(support_x.shape)}); expected at least one")
    if support_x.shape[1] == 0:
        raise ValueError(f"support_x: the support set is empty (shape {tuple(support_x.shape)}); adaptation needs K >= 1 examples")
    if tuple(support_x.shape[:2]) != tuple(support_y.shape[:2]):
        raise ValueError(
            f"support_y: expected (tasks, K) = {tuple(support_x.shape[:2])} to match support_x, got shape "
            f"{tuple(support_y.shape)} for support_x shape {tuple(support_x.shape)}"
        )
    _check_inputs_have_tasks("support_x", support_x)


def check_task_batch(support_x, support_y, query_x, query_y) -> None:
    tensors = dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.ndim < 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a tensor with a leading task dimension (tasks, examples, ...), got {shape}")
    if support_x.shape[0] == 0:
        raise ValueError(f"support_x: no tasks (shape {tuple(support_x.shape)}); expected at least one")
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
    _check_inputs_have_tasks("support_x", support_x)
    _check_inputs_have_tasks("query_x", query_x)


# ----------------------------------------------------------------------------------------------
# the first forward pass: inputs the model rejects, targets that do not fit its predictions


def checked_forward(forward, x_name: str):
    """forward(θ, x), with the first call's failure (an input the model cannot take: a wrong feature
    count, channel count or image size) re-raised as a ValueError naming `x_name` and its shape."""
    first = True

    def run(theta, x):
        nonlocal first
        if not first:
            return forward(theta, x)
        try:
            out = forward(theta, x)
        except torch.cuda.OutOfMemoryError:  # a RuntimeError too, but not the input's fault
            raise
        except RuntimeError as e:
            raise ValueError(f"{x_name}: the model rejected inputs of shape {tuple(x.shape)} "
                             f"(is it the shape the model was built for?): {e}") from e
        first = False
        return out

    return run


def check_prediction(out: torch.Tensor, y: torch.Tensor, y_name: str) -> None:
    """Float targets (regression) must have the prediction's shape: MSE between (tasks, 10) targets and
    (tasks, 10, 1) predictions broadcasts to (tasks, 10, 10) and gives a wrong number without an error."""
    if y.is_floating_point() and tuple(out.shape) != tuple(y.shape):
        raise ValueError(
            f"{y_name}: float targets must have the shape of the model's predictions, {tuple(out.shape)}, got "
            f"{tuple(y.shape)}: the loss would broadcast them against each other (e.g. add or drop a trailing "
            f"dimension of size 1 with .unsqueeze(-1) / .squeeze(-1))"
        )


def checked_loss(loss_fn, y_name: str):
    """loss_fn(prediction, target), its targets checked against the first prediction (`check_prediction`)
    and a loss that rejects the targets (a class label outside 0..C-1) re-raised as a ValueError naming
    `y_name`. No value is read from the device: the label check is the loss's own."""
    first = True

    def loss(out, y):
        nonlocal first
        if first:
            check_prediction(out, y, y_name)
            first = False
        try:
            return loss_fn(out, y)
        except torch.cuda.OutOfMemoryError:
            raise
        except (IndexError, RuntimeError) as e:
            if y.is_floating_point():
                raise ValueError(f"{y_name}: loss_fn rejected targets of shape {tuple(y.shape)} for predictions "
                                 f"of shape {tuple(out.shape)}: {e}") from e
            classes = out.shape[-1] if out.ndim else 1
            raise ValueError(f"{y_name}: loss_fn rejected these class labels ({e}); expected labels in "
                             f"0..{classes - 1} (the model has {classes} outputs; targets of shape {tuple(y.shape)}, "
                             f"predictions of shape {tuple(out.shape)})") from e

    return loss


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


def check_inner_step(theta, inner_lr, first_order) -> None:
    """What `maml.inner_step` needs: θ a non-empty dict, α a positive float or a dict covering θ, a bool flag."""
    if not isinstance(theta, Mapping) or not theta:
        raise TypeError(f"theta: expected a non-empty dict of name -> tensor (θ), got {type(theta).__name__}")
    check_flag("first_order", first_order)
    if isinstance(inner_lr, Mapping):
        missing = [k for k in theta if k not in inner_lr]
        if missing:
            raise KeyError(f"inner_lr: a dict inner_lr (Meta-SGD) needs an entry for every parameter; missing {missing}")
    else:
        check_inner_lr(inner_lr, theta)
