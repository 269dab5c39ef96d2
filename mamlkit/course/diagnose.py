"""The checks of the course's 21 exercises, and the diagnoses they share.

Each check cell of a notebook reads

    inner_step_by_hand = check_exercise("inner step by hand", inner_step_by_hand,
                                        reference=diagnose.reference_inner_step_by_hand,
                                        checks=diagnose.inner_step_by_hand_checks())

A check never hands your function the notebook's own tensors: `run` calls it on COPIES of its inputs
(and of any model), so a wrong answer cannot shift a later number of the notebook. Then, in this order:

1. your function raised: `explain` turns the error into the mistake that usually causes it — a `.grad`
   that is None or "not used in the graph": the graph back to θ was cut (or model(x) ignored θ); a
   shape error: the shape expected; a constructor fed parameter shapes: the copied blog's bug 1; ...
2. your function changed one of its inputs, or the model's own parameters, in place: named;
3. the value equals a known wrong answer that the check computes itself (θ instead of θ', support and
   query swapped, a sum instead of a mean, first order, the wrong dimension, ...): that mistake is named;
4. only then the generic "differs from ..." message, with both values.

Checks keep the global random state as it was (`torch.random.fork_rng`): running one changes no later
random number of the notebook. `tests/test_exercise_diagnoses.py` feeds every check a catalogue of
wrong answers (the copied blog's bugs among them) and the correct routes the text invites.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import math
import os
import statistics
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .exercises import ExerciseError, expect_close

# ----------------------------------------------------------------------------------------------
# the diagnoses shared by several exercises

GRAPH_CUT = (
    "the graph back to θ was cut: deepcopy / load_state_dict / .data / .detach() / torch.no_grad() / an optimizer "
    "step do that — they make tensors with θ's values but no history, so no meta-gradient can reach θ. Compute θ' "
    "from the params tensors you were given, with operations autograd records: θ' = θ − α·g, g from "
    "torch.autograd.grad(..., create_graph=True) or torch.func.grad"
)
MODEL_IGNORES_PARAMS = (
    "θ is ignored: model(x) runs the model with its OWN parameters, so the output does not depend on the params you "
    "were given (and no gradient reaches them). Run the model with the params: functional_call(model, params, (x,))"
)
MODEL_CHANGED = (
    "your function changed the model's own parameters in place (optimizer.step(), .data or an in-place update on "
    "model.parameters()): such an update is outside autograd, so the graph back to θ was cut, and it overwrites the "
    "model the caller still uses. Leave the model alone: θ' = θ − α·g as a new dict, used with "
    "functional_call(model, θ', (x,))"
)
MODEL_GOT_GRAD = (
    "the model's own parameters got a .grad: .backward() went through model(x), which uses the model's own "
    "parameters, not the params you were given. Take the gradient with respect to the params: "
    "torch.autograd.grad(loss_fn(functional_call(model, params, (x,)), y), list(params.values()), ...)"
)
REBUILT_FROM_SHAPES = (
    "you rebuilt the model from its parameter shapes (type(model)(*[p.shape for p in model.parameters()])): a "
    "constructor takes layer sizes, not parameter shapes (the copied blog's bug 1). A copy of the model is the wrong "
    "tool anyway: its weights would be new tensors with no graph back to θ. functional_call(model, params, (x,)) "
    "runs the model with any params, without copying it"
)
WRT_ADAPTED = (
    "you differentiated with respect to θ' (the adapted parameters) instead of θ: that gives the first-order "
    "∇L_q(θ'). The meta-gradient differentiates L_q(θ') with respect to θ, through θ' = θ − α g: "
    "torch.autograd.grad(L(t_prime, X_q, y_q), t)"
)
MISSING_CREATE_GRAPH = (
    "the meta-gradient lacks the Hessian term: the inner gradient was taken without create_graph=True (or was "
    "detached), so it is a constant and autograd silently gives the first-order ∇L_q(θ'). Keep its graph: "
    "torch.autograd.grad(support_loss, ..., create_graph=True)"
)
PARTIAL_CUT = (
    "only the Hessian term −α H_s ∇L_q(θ') is left: θ' was built from θ.data or θ.detach() (θ' = θ.detach() − α g), "
    "so θ' lost its direct path to θ. " + GRAPH_CUT
)
QUERY_AT_THETA = (
    "the meta-loss was evaluated at θ, before adaptation: use the query loss at the ADAPTED θ' = θ − α ∇L_support(θ)"
)
SWAPPED = (
    "support and query are swapped: adapt on the SUPPORT set (θ' = θ − α ∇L(θ; support)), then judge θ' on the "
    "QUERY set (L(θ'; query))"
)
UPHILL = "θ' went uphill: the inner step is θ' = θ − α ∇L, with a minus sign"
ONE_UPDATE_PER_TASK = (
    "one meta-update per task (the copied blog's bug 4): optimizer.step() ran once for every task of the batch. "
    "MAML averages the query losses of the whole meta-batch and takes ONE step: loss = meta-loss of the batch; "
    "optimizer.zero_grad(); loss.backward(); optimizer.step()"
)


def in_place_message(names) -> str:
    """The diagnosis for a function that wrote into its inputs."""
    return (
        f"your function changed {', '.join(names)} in place: `θ -= ...`, `+=`, `.sub_()` / `.add_()` / `.copy_()`, "
        "writing to `.data` or an optimizer step overwrite the caller's tensor, so every later number computed from "
        "it shifts. Return a new tensor instead (`theta - alpha * grad`)"
    )


_SHAPE_ERRORS = ("shapes cannot be multiplied", "must match the size of tensor", "size mismatch", "not broadcastable",
                 "is invalid for input of size", "Dimension out of range", "inconsistent tensor size",
                 "same size in the mapped dimension", "dimension specified as", "Expected size", "expected size",
                 "number of dimensions", "Sizes of tensors must match", "doesn't match the broadcast shape")


def explain(error: BaseException, *, own_forward: bool = False, shape: str | None = None) -> str | None:
    """The mistake behind an error raised by a learner's function, or None when there is no better guess.

    own_forward: the function ran a model with its own parameters (model(x)) rather than the params passed.
    shape: a sentence naming the shapes expected, for shape errors.
    """
    msg = str(error)
    unused = ("appears to not have been used in the graph" in msg
              or "does not require grad and does not have a grad_fn" in msg)
    if unused and own_forward:
        return MODEL_IGNORES_PARAMS
    if unused:
        return GRAPH_CUT
    if isinstance(error, AttributeError) and "'NoneType' object has no attribute" in msg:
        return GRAPH_CUT + " (here: a .grad that is None — no gradient reached that tensor)"
    if "leaf Variable that requires grad is being used in an in-place operation" in msg \
            or "modified by an inplace operation" in msg:
        return in_place_message(["θ"])
    if isinstance(error, TypeError) and ("torch.Size is not a Module subclass" in msg
                                         or ("__init__()" in msg and "positional argument" in msg)):
        return REBUILT_FROM_SHAPES
    if isinstance(error, (RuntimeError, ValueError, IndexError)) and any(s in msg for s in _SHAPE_ERRORS):
        return "a shape mismatch inside your function" + (f": {shape}" if shape else ": print the shapes of each tensor")
    return None


# ----------------------------------------------------------------------------------------------
# running the learner's function on copies


@dataclasses.dataclass
class Run:
    """What `run` saw: the output, the copies the function was given, and how it used them."""

    out: Any
    args: tuple
    kwargs: dict
    own_forward: bool = False  # some model argument ran with its own parameters: model(x), not functional_call
    grad_calls: list = dataclasses.field(default_factory=list)  # torch.autograd.grad calls, with spy_grad=True


def _pretty(name: str) -> str:
    return {"theta": "θ", "params": "θ"}.get(name, name)


def _copy(obj, label, snaps, modules):
    """A copy of obj whose tensors are new leaves (same values, same requires_grad); modules deep-copied."""
    if isinstance(obj, torch.Tensor):
        c = obj.detach().clone()
        if obj.requires_grad:
            c.requires_grad_()
        snaps.append((label, c, c.detach().clone(), c._version))
        return c
    if isinstance(obj, nn.Module):
        m = copy.deepcopy(obj)
        modules.append((label, m, {k: v.detach().clone() for k, v in m.state_dict().items()}))
        return m
    if isinstance(obj, dict):
        return type(obj)((k, _copy(v, f"{label}[{k!r}]", snaps, modules)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_copy(v, f"{label}.{f}", snaps, modules) for f, v in zip(obj._fields, obj)))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(v, f"{label}[{i}]", snaps, modules) for i, v in enumerate(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _copy(getattr(obj, f.name), f"{label}.{f.name}", snaps, modules)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _labels(fn, n_args, kwargs):
    try:
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        names = []
    names = [_pretty(n) for n in names[:n_args]]
    return names + [f"argument {i + 1}" for i in range(len(names), n_args)], {k: _pretty(k) for k in kwargs}


@contextlib.contextmanager
def _spy_autograd_grad(calls: list):
    """Record each torch.autograd.grad call: did it keep the graph, was it taken with respect to a non-leaf?"""
    real = torch.autograd.grad
    signature = inspect.signature(real)

    def spy(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
            inputs = bound.arguments["inputs"]
            if isinstance(inputs, torch.Tensor):
                inputs = (inputs,)
            elif not isinstance(inputs, (list, tuple)):  # an iterator: consume it once, pass a tuple on
                inputs = tuple(inputs)
                bound.arguments["inputs"] = inputs
            calls.append({"create_graph": bool(bound.arguments.get("create_graph", False)),
                          "wrt_non_leaf": any(isinstance(t, torch.Tensor) and t.grad_fn is not None for t in inputs)})
            return real(*bound.args, **bound.kwargs)
        except TypeError:
            return real(*args, **kwargs)

    with mock.patch.object(torch.autograd, "grad", spy):
        yield


def _own_forward_probe(module: nn.Module, seen: list):
    """A forward pre-hook noting whether the module runs with its own parameters (model(x))."""
    own = dict(module.named_parameters())

    def hook(mod, inputs):
        try:
            seen.append(bool(own) and all(functools.reduce(getattr, k.split("."), mod) is v for k, v in own.items()))
        except AttributeError:
            pass

    return module.register_forward_pre_hook(hook)


def run(fn: Callable, *args, shape: str | None = None, on_error: Callable | None = None, spy_grad: bool = False,
        returns: bool = True, **kwargs) -> Run:
    """Call `fn(*args, **kwargs)` on copies of its inputs and raise ExerciseError naming what went wrong.

    Tensors are passed as new leaves with the same values (and requires_grad), models as deep copies, so
    the caller's tensors are never touched; the copies come back in `Run.args` / `Run.kwargs` (differentiate
    with respect to those). Raises ExerciseError when fn raised an error that `on_error(e)` or `explain`
    recognizes, when it changed an input or a model's parameters in place, or returned None (`returns`).
    NotImplementedError (an exercise not done yet) passes through.
    """
    snaps, modules = [], []
    c_args = tuple(_copy(a, f"#{i}", snaps, modules) for i, a in enumerate(args))
    c_kwargs = {k: _copy(v, f"@{k}", snaps, modules) for k, v in kwargs.items()}
    seen, calls = [], []
    hooks = [_own_forward_probe(m, seen) for _, m, _ in modules]
    try:
        with _spy_autograd_grad(calls) if spy_grad else contextlib.nullcontext():
            out = fn(*c_args, **c_kwargs)
    except (NotImplementedError, ExerciseError):
        raise
    except Exception as e:
        why = (on_error(e) if on_error else None) or explain(e, own_forward=any(seen), shape=shape)
        if why is None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ExerciseError(f"{why}\n  (your function raised {type(e).__name__}: {first})") from e
    finally:
        for h in hooks:
            h.remove()
    arg_names, kw_names = _labels(fn, len(args), kwargs)

    def readable(label):
        head, _, rest = label.partition("[")
        base = arg_names[int(head[1:])] if head.startswith("#") else kw_names.get(head[1:], head[1:])
        return base + (f"[{rest}" if rest else "")

    changed = [readable(label) for label, c, before, version in snaps
               if c._version != version or c.shape != before.shape or not torch.equal(c.detach(), before)]
    if changed:
        raise ExerciseError(in_place_message(dict.fromkeys(changed)))
    for _, m, before in modules:
        state = m.state_dict()
        if any(k not in state or not torch.equal(state[k], v) for k, v in before.items()):
            raise ExerciseError(MODEL_CHANGED)
        if any(p.grad is not None for p in m.parameters()):
            raise ExerciseError(MODEL_GOT_GRAD)
    if returns and out is None:
        raise ExerciseError("your function returned None: did you forget the `return` line?")
    return Run(out, c_args, c_kwargs, any(seen), calls)


# ----------------------------------------------------------------------------------------------
# comparing values


def _as_double(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def close(a, b, rtol: float = 1e-5, atol: float = 1e-7) -> bool:
    """a ≈ b: same shape and torch.allclose, False for anything not convertible to a tensor."""
    a, b = _as_double(a), _as_double(b)
    return a is not None and b is not None and a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def diagnose(got, expected, variants, feedback: str, *, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """Raise ExerciseError naming the mistake when `got` equals one of the known wrong `variants`
    [(value or a function giving it, message), ...]; else `expect_close(got, expected, feedback)`."""
    for wrong, message in variants:
        try:
            value = wrong() if callable(wrong) else wrong
        except Exception:  # a variant that cannot be computed for this input is not the learner's mistake
            continue
        if close(got, value, rtol, atol) and not close(value, expected, rtol, atol):
            expect_close(got, expected, message, rtol=rtol, atol=atol)  # raises, with both values
    expect_close(got, expected, feedback, rtol=rtol, atol=atol)


def as_tensor(value, what: str) -> torch.Tensor:
    """The learner's output as a tensor, or an ExerciseError saying what was expected."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        raise ExerciseError(f"{what}: expected one tensor, got a {type(value).__name__} of {len(value)} tensors "
                            "(torch.autograd.grad, vjp and jvp return tuples: take the element you need, e.g. [0])")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ExerciseError(f"{what}: expected a tensor, got {type(value).__name__}") from None


def expect_dict(out, params, what: str = "θ'") -> None:
    """`out` must be a dict with params' keys."""
    if not isinstance(out, dict) or set(out) != set(params):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ExerciseError(f"{what}: return a dict with the same keys as params {sorted(params)} "
                            f"(e.g. {{name: p - alpha * g ...}}), got {got}")


def flat(d: dict, keys) -> torch.Tensor:
    return torch.cat([torch.as_tensor(d[k]).detach().double().flatten() for k in keys])


def depends_on(outputs, inputs) -> bool:
    """Whether any of the tensors `outputs` has a graph leading back to any of `inputs`."""
    outs = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
    ins = [i for i in inputs if isinstance(i, torch.Tensor) and i.requires_grad]
    if not outs or not ins:
        return False
    total = sum(o.sum() for o in outs)
    if total.grad_fn is None:
        return False
    grads = torch.autograd.grad(total, ins, allow_unused=True, retain_graph=True)
    return any(g is not None for g in grads)


def require_graph(outputs, inputs, *, own_forward: bool = False) -> None:
    """Raise the graph-cut diagnosis (or model(x)'s) unless `outputs` depend on `inputs` in autograd's graph."""
    if not depends_on(list(outputs), list(inputs)):
        raise ExerciseError(MODEL_IGNORES_PARAMS if own_forward else GRAPH_CUT)


def isolated(check: Callable) -> Callable:
    """The check with the global random state saved and restored: no later random number of the notebook shifts."""
    @functools.wraps(check)
    def wrapper(fn):
        with torch.random.fork_rng(devices=[]):
            return check(fn)

    return wrapper


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ==============================================================================================
# 01 · MAML from its equations: linear regression, L(θ) = mean((Xθ − y)²)

_F64 = torch.float64
ALPHA_01 = 0.1  # the notebook's α


def linear_task(seed: int, w_mean=None, w_spread: float = 1.0, d: int = 3, n_support: int = 5, n_query: int = 10):
    """One regression task y = X w_true, as notebook 01 draws it: (X_s, y_s, X_q, y_q), float64."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=g, dtype=_F64) * w_spread + (0 if w_mean is None else w_mean)
    X_s = torch.randn(n_support, d, generator=g, dtype=_F64)
    X_q = torch.randn(n_query, d, generator=g, dtype=_F64)
    return X_s, X_s @ w_true, X_q, X_q @ w_true


def _linear_fixture():
    """Notebook 01's task (seed 1) and θ (seed 2)."""
    X_s, y_s, X_q, y_q = linear_task(1)
    theta = torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=_F64)
    return theta, X_s, y_s, X_q, y_q


def _grad_ls(theta, X, y, reduction="mean"):
    """∇θ of mean((Xθ − y)²) (or of the sum)."""
    g = 2.0 * X.T @ (X @ theta - y)
    return g / X.shape[0] if reduction == "mean" else g


def _hess_ls(X, reduction="mean"):
    H = 2.0 * X.T @ X
    return H / X.shape[0] if reduction == "mean" else H


def _maml_ls(theta, X_s, y_s, X_q, y_q, alpha, reduction="mean"):
    """(I − α H_s) ∇L_q(θ'), θ' = θ − α ∇L_s(θ), in closed form."""
    adapted = theta - alpha * _grad_ls(theta, X_s, y_s, reduction)
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    return (eye - alpha * _hess_ls(X_s, reduction)) @ _grad_ls(adapted, X_q, y_q, reduction)


def reference_inner_step_by_hand(theta, X_s, y_s, alpha):
    """θ − α ∇L_s(θ) with autograd's gradient (an independent computation of the formula)."""
    t = theta.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(((X_s @ t - y_s) ** 2).mean(), t)
    return (t - alpha * g).detach()


def reference_meta_gradient(theta, X_s, y_s, X_q, y_q, alpha):
    """(I − α H_s) ∇L_q(θ'), θ' by autograd."""
    adapted = reference_inner_step_by_hand(theta, X_s, y_s, alpha)
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    return (eye - alpha * _hess_ls(X_s)) @ _grad_ls(adapted, X_q, y_q)


def _finite_differences_ls(theta, X_s, y_s, X_q, y_q, alpha, eps=1e-6):
    """Central differences of L_q(θ'(θ)), one coordinate at a time: no chain rule involved."""
    def objective(t):
        adapted = reference_inner_step_by_hand(t, X_s, y_s, alpha)
        return ((X_q @ adapted - y_q) ** 2).mean()

    e = torch.eye(theta.shape[0], dtype=theta.dtype)
    return torch.stack([(objective(theta + eps * e[j]) - objective(theta - eps * e[j])) / (2 * eps)
                        for j in range(theta.shape[0])])


GLOBAL_ALPHA = "you used the global alpha (0.1) instead of the function's argument alpha"
_SHAPE_01 = "θ is (d,), X is (n, d), y is (n,): the residual X θ − y is (n,), the gradient (2/n) Xᵀ(Xθ − y) is (d,)"


def _globals_variants(fn_value, task, alpha, theta, X_s, y_s, X_q=None, y_q=None):
    """Wrong answers that used notebook 01's global task or α instead of the arguments."""
    return [
        (lambda: fn_value(theta, X_s, y_s, *([X_q, y_q] if X_q is not None else []), alpha),
         "right on the first task, wrong on another: you used the global X_s / y_s (or X_q / y_q) instead of the "
         "function's arguments"),
        (lambda: fn_value(theta, *task, ALPHA_01), GLOBAL_ALPHA),
    ]


def inner_step_by_hand_checks() -> list[Callable]:
    """01, exercise 1: θ' = θ − α (2/n) X_sᵀ(X_s θ − y_s), without autograd."""
    theta, X_s, y_s, _, _ = _linear_fixture()

    @isolated
    def check_against_autograd(fn):
        got = as_tensor(run(fn, theta, X_s, y_s, ALPHA_01, shape=_SHAPE_01).out, "θ'")
        g, n, a = _grad_ls(theta, X_s, y_s), X_s.shape[0], ALPHA_01
        diagnose(got, reference_inner_step_by_hand(theta, X_s, y_s, a), [
            (theta + a * g, UPHILL),
            (theta - a * g / 2, "off by a factor 2: the gradient of the mean of squares is (2/n) Xᵀ(Xθ − y)"),
            (theta - a * g * n, "off by a factor n: that is the gradient of a sum-reduced loss Σ(Xθ − y)²; L is a "
                                "*mean* over the n support points, so ∇L carries 1/n"),
            (theta - a * g * n / 2, "off by a factor n/2: L is the *mean* of the squares, so ∇L = (2/n) Xᵀ(Xθ − y), "
                                    "not Xᵀ(Xθ − y) (the sum-reduced loss without its factor 2)"),
            (g, "that is the gradient ∇L_s(θ), not θ' = θ − α ∇L_s(θ)"),
            (-a * g, "that is the step −α ∇L_s(θ) alone: θ' = θ − α ∇L_s(θ), add θ"),
            (theta - g, "α is missing: θ' = θ − α ∇L_s(θ)"),
            (theta - a * 2.0 / n * X_s.T @ (X_s @ theta + y_s), "the residual is X θ − y (a minus sign, not +)"),
        ], "θ' differs from autograd's θ − α ∇L_s(θ)")

    @isolated
    def check_alpha_zero(fn):
        got = as_tensor(run(fn, theta, X_s, y_s, 0.0, shape=_SHAPE_01).out, "θ'")
        diagnose(got, theta, [(theta - ALPHA_01 * _grad_ls(theta, X_s, y_s), GLOBAL_ALPHA)],
                 "with α = 0 the inner step must return θ unchanged")

    @isolated
    def check_another_task(fn):
        Xs, ys, _, _ = linear_task(7)
        got = as_tensor(run(fn, theta, Xs, ys, 0.3, shape=_SHAPE_01).out, "θ'")
        diagnose(got, reference_inner_step_by_hand(theta, Xs, ys, 0.3),
                 _globals_variants(reference_inner_step_by_hand, (Xs, ys), 0.3, theta, X_s, y_s),
                 "right on the first task, wrong on another: did you use the global X_s/y_s/alpha instead of the "
                 "arguments?")

    return [check_against_autograd, check_alpha_zero, check_another_task]


def _meta_gradient_variants(theta, X_s, y_s, X_q, y_q, a):
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    H_s, H_q = _hess_ls(X_s), _hess_ls(X_q)
    adapted = theta - a * _grad_ls(theta, X_s, y_s)
    first_order = _grad_ls(adapted, X_q, y_q)
    return [
        (first_order, "that is the first-order gradient ∇L_q(θ'): the meta-gradient lacks the (I − α H_s) factor"),
        (_grad_ls(theta, X_q, y_q), "that is ∇L_q(θ), the query gradient at θ: " + QUERY_AT_THETA),
        ((eye - a * H_s) @ _grad_ls(theta, X_q, y_q), "∇L_q was taken at θ: " + QUERY_AT_THETA),
        ((eye + a * H_s) @ first_order, "sign error: ∂θ'/∂θ = I − α H_s, since θ' = θ − α ∇L_s(θ)"),
        (lambda: _maml_ls(theta, X_q, y_q, X_s, y_s, a), SWAPPED),
        ((eye - a * H_q) @ first_order, "the Hessian in ∂θ'/∂θ = I − α H_s is the SUPPORT loss's, (2/n_s) X_sᵀX_s, "
                                        "not the query loss's"),
        (lambda: _maml_ls(theta, X_s, y_s, X_q, y_q, a, reduction="sum"),
         "sum-reduced losses: L is a *mean*, so ∇L_s, H_s and ∇L_q each carry 1/n (n_s for the support set, n_q "
         "for the query set)"),
        (lambda: (eye - a * H_s) @ _grad_ls(theta + a * _grad_ls(theta, X_s, y_s), X_q, y_q), UPHILL),
    ]


def meta_gradient_by_hand_checks() -> list[Callable]:
    """01, exercise 2: (I − α H_s) ∇L_q(θ') without autograd."""
    theta, X_s, y_s, X_q, y_q = _linear_fixture()

    @isolated
    def check_meta_gradient(fn):
        task = (X_s, y_s, X_q, y_q, ALPHA_01)
        got = as_tensor(run(fn, theta, *task, shape=_SHAPE_01 + "; H_s = (2/n_s) X_sᵀX_s is (d, d)").out,
                        "the meta-gradient")
        diagnose(got, _finite_differences_ls(theta, *task), _meta_gradient_variants(theta, *task),
                 "the meta-gradient differs from finite differences of L_q(θ'(θ))", rtol=1e-5, atol=1e-7)

    @isolated
    def check_meta_gradient_other_task(fn):
        Xs, ys, Xq, yq = linear_task(11)
        got = as_tensor(run(fn, theta, Xs, ys, Xq, yq, 0.05, shape=_SHAPE_01).out, "the meta-gradient")
        diagnose(got, _finite_differences_ls(theta, Xs, ys, Xq, yq, 0.05),
                 _globals_variants(_maml_ls, (Xs, ys, Xq, yq), 0.05, theta, X_s, y_s, X_q, y_q),
                 "wrong on a second task: did you use the global X_s, X_q or alpha instead of the arguments?",
                 rtol=1e-5, atol=1e-7)

    return [check_meta_gradient, check_meta_gradient_other_task]


def maml_meta_gradient_checks() -> list[Callable]:
    """01, exercise 3: the meta-gradient with torch.autograd.grad and create_graph=True."""
    theta, X_s, y_s, X_q, y_q = _linear_fixture()

    @isolated
    def check_second_order(fn):
        a = ALPHA_01
        r = run(fn, theta, X_s, y_s, X_q, y_q, a, spy_grad=True, shape=_SHAPE_01)
        got = as_tensor(r.out, "the meta-gradient")
        adapted = theta - a * _grad_ls(theta, X_s, y_s)
        first_order = _grad_ls(adapted, X_q, y_q)
        if close(got, first_order):
            if any(c["wrt_non_leaf"] for c in r.grad_calls):
                raise ExerciseError(WRT_ADAPTED)
            if r.grad_calls and not r.grad_calls[0]["create_graph"]:
                raise ExerciseError(MISSING_CREATE_GRAPH)
            raise ExerciseError("that is the first-order ∇L_q(θ'): either the inner gradient lost its graph "
                                "(create_graph=True is needed) or you differentiated with respect to θ' instead of θ")
        eye = torch.eye(3, dtype=_F64)
        diagnose(got, reference_meta_gradient(theta, X_s, y_s, X_q, y_q, a), [
            (-a * _hess_ls(X_s) @ first_order, PARTIAL_CUT),
            (_grad_ls(theta, X_q, y_q), "that is ∇L_q(θ): " + QUERY_AT_THETA + " (L(t_prime, X_q, y_q), not L(t, ...))"),
            ((eye - a * _hess_ls(X_s)) @ _grad_ls(theta, X_q, y_q), QUERY_AT_THETA),
            (lambda: _maml_ls(theta, X_q, y_q, X_s, y_s, a), SWAPPED),
            (lambda: (eye + a * _hess_ls(X_s)) @ _grad_ls(theta + a * _grad_ls(theta, X_s, y_s), X_q, y_q), UPHILL),
        ], "differs from the closed form (I − α H_s) ∇L_q(θ')")

    @isolated
    def check_another_task(fn):
        Xs, ys, Xq, yq = linear_task(11)
        got = as_tensor(run(fn, theta, Xs, ys, Xq, yq, 0.05, shape=_SHAPE_01).out, "the meta-gradient")
        diagnose(got, reference_meta_gradient(theta, Xs, ys, Xq, yq, 0.05),
                 _globals_variants(_maml_ls, (Xs, ys, Xq, yq), 0.05, theta, X_s, y_s, X_q, y_q),
                 "wrong on a second task: did you use the global X_s, X_q or alpha instead of the arguments?")

    return [check_second_order, check_another_task]


def reference_functional_inner_step(model, params, x, y, alpha, loss_fn):
    """mamlkit.adapt, one step."""
    import mamlkit

    return mamlkit.adapt(model, params, x, y, loss_fn=loss_fn, inner_lr=alpha, steps=1)


def functional_inner_step_checks() -> list[Callable]:
    """01, exercise 4: θ' = θ − α ∇θ loss_fn(f_θ(x), y) with functional_call, keeping the graph."""
    theta, X_s, y_s, X_q, y_q = _linear_fixture()
    with _seeded(0):
        linear = nn.Linear(3, 1, bias=False).to(_F64)  # its own weight is not θ: model(x) shows in the values
    a = ALPHA_01
    adapted = theta - a * _grad_ls(theta, X_s, y_s)
    first_order, by_hand = _grad_ls(adapted, X_q, y_q), _maml_ls(theta, X_s, y_s, X_q, y_q, a)
    shape = "params['weight'] is (1, d) = (1, 3), x is (n, d): the model's output is (n, 1) like y"

    def adapted_weight(fn):
        p = {"weight": theta.reshape(1, 3).clone().requires_grad_()}
        r = run(fn, linear, p, X_s, y_s[:, None], a, F.mse_loss, shape=shape)
        expect_dict(r.out, p)
        require_graph(r.out.values(), r.args[1].values(), own_forward=r.own_forward)
        return r, r.out["weight"], r.args[1]["weight"]

    @isolated
    def check_linear_closed_form(fn):
        r, got, _ = adapted_weight(fn)
        if r.own_forward and not close(got.ravel(), adapted):
            raise ExerciseError(MODEL_IGNORES_PARAMS)
        g = _grad_ls(theta, X_s, y_s)
        diagnose(got.ravel(), adapted, [(theta + a * g, UPHILL), (theta - g, "α is missing: θ' = θ − α ∇L"),
                                        (g, "that is the gradient, not θ' = θ − α ∇L")],
                 "on nn.Linear, θ' differs from the closed form of section 2")

    @isolated
    def check_second_order_through(fn):
        r, got, weight = adapted_weight(fn)
        query = F.mse_loss(functional_call(linear, {"weight": got}, (X_q,)), y_q[:, None])
        (g,) = torch.autograd.grad(query, weight, allow_unused=True)
        if g is None:
            raise ExerciseError(GRAPH_CUT)
        g = g.ravel()
        if close(g, first_order):
            raise ExerciseError(MISSING_CREATE_GRAPH)
        diagnose(g, by_hand, [(-a * _hess_ls(X_s) @ first_order, PARTIAL_CUT)],
                 "the meta-gradient through your θ' differs from (I − α H_s) ∇L_q(θ')")

    @isolated
    def check_mlp_untouched_and_finite_differences(fn):
        torch.manual_seed(3)
        mlp = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).to(_F64)  # smooth: exact finite differences
        x, y = torch.randn(6, 2, dtype=_F64), torch.randn(6, 1, dtype=_F64)
        xq, yq = torch.randn(6, 2, dtype=_F64), torch.randn(6, 1, dtype=_F64)
        p = {k: v.detach().clone().requires_grad_() for k, v in mlp.named_parameters()}
        r = run(fn, mlp, p, x, y, 0.2, F.mse_loss, shape="an MLP 2-8-1: x is (6, 2), y is (6, 1)")
        out, p = r.out, r.args[1]
        expect_dict(out, p)
        require_graph(out.values(), p.values(), own_forward=r.own_forward)
        q = F.mse_loss(functional_call(mlp, out, (xq,)), yq)
        grads = torch.autograd.grad(q, list(p.values()), allow_unused=True)
        v = {k: torch.randn_like(t) for k, t in p.items()}  # a random direction in θ-space
        directional = sum((g * v[k]).sum() for g, k in zip(grads, p) if g is not None)
        plain = {k: t.detach() for k, t in p.items()}

        def objective(eps):  # L_q(θ'(θ + eps v)) with mamlkit's inner step: an independent implementation
            shifted = {k: plain[k] + eps * v[k] for k in p}
            return F.mse_loss(functional_call(mlp, reference_functional_inner_step(mlp, shifted, x, y, 0.2, F.mse_loss),
                                              (xq,)), yq)

        eps = 1e-5
        expect_close(directional, (objective(eps) - objective(-eps)) / (2 * eps),
                     "on a small MLP, the meta-gradient through your θ' disagrees with finite differences",
                     rtol=1e-4, atol=1e-7)

    return [check_linear_closed_form, check_second_order_through, check_mlp_untouched_and_finite_differences]


# ==============================================================================================
# 02 · sinusoid regression: the paper's MLP, θ a dict, torch.func


def _sinusoid_fixture(tasks: int = 3, k_shot: int = 10, seed: int = 42):
    """Notebook 02's model (make_mlp after torch.manual_seed(0)), its θ, and a batch of sinusoid tasks."""
    from ..experiments.sinusoid import make_mlp, sample_tasks

    with _seeded(0):
        model = make_mlp()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    return model, params, sample_tasks(tasks, k_shot, generator=torch.Generator().manual_seed(seed))


def plain_autograd_step(model, x, y, alpha):
    """An independent θ': a deep copy of the model, loss.backward(), p − α p.grad."""
    m = copy.deepcopy(model)
    m.zero_grad()
    F.mse_loss(m(x), y).backward()
    return {k: (p - alpha * p.grad).detach() for k, p in m.named_parameters()}


def reference_inner_update(model, params, x, y, alpha):
    """θ' = θ − α ∇θ MSE(f_θ(x), y) with torch.func.grad (works under vmap)."""
    def support_loss(p):
        return F.mse_loss(functional_call(model, p, (x,)), y)

    g = grad(support_loss)(params)
    return {k: params[k] - alpha * g[k] for k in params}


def _under_vmap(error: BaseException) -> str:
    """Any error under vmap, once the same function passed without vmap: a transform that vmap cannot batch."""
    return ("inner_update fails under vmap (it passed the checks without vmap): use torch.func.grad, not "
            "torch.autograd.grad, .backward() or .item(), which do not work on the batched tensors vmap passes "
            "(autograd.grad then sees tensors that do not require grad)")


def inner_update_checks() -> list[Callable]:
    """02, exercise 1: θ' with torch.func.grad, a dict, second order, and vmap-able."""
    model, params, batch = _sinusoid_fixture()
    shape = "x and y are (K, 1); the MLP maps (K, 1) -> (K, 1)"

    @isolated
    def check_matches_plain_autograd(fn):
        sx, sy = batch.support_x[0], batch.support_y[0]
        r = run(fn, model, params, sx, sy, 0.1, shape=shape)
        expect_dict(r.out, params)
        keys = list(params)
        got, want = flat(r.out, keys), flat(plain_autograd_step(model, sx, sy, 0.1), keys)
        theta = flat(params, keys)
        if not close(got, want, atol=1e-6) and r.own_forward:
            raise ExerciseError(MODEL_IGNORES_PARAMS + " (the loss of model(x) has zero gradient with respect to p)")
        g = (theta - want) / 0.1  # ∇L_support(θ)
        diagnose(got, want, [
            (theta + 0.1 * g, UPHILL),
            (theta, "θ' equals θ: the gradient was zero — does the loss depend on the params p? Use "
                    "functional_call(model, p, (x,)), not model(x)"),
            (theta - 0.1 * sx.shape[0] * g, "a sum-reduced support loss (reduction='sum'): the paper's loss is the MSE, "
                                            "the *mean* over the K points (F.mse_loss's default)"),
            (g, "that is the gradient ∇L_support(θ), not θ' = θ − α ∇L_support(θ)"),
        ], "θ' differs from θ − α ∇L computed with .backward()", atol=1e-6)

    @isolated
    def check_second_order(fn):
        """The gradient of L_query(θ') along a random direction v, against central finite differences (float64)."""
        m64 = copy.deepcopy(model).double()
        p64 = {k: v.detach().double().requires_grad_() for k, v in m64.named_parameters()}
        sx, sy, qx, qy = (t[1].double() for t in batch.tensors())
        alpha = 0.05  # large enough that the second-order term is clearly visible
        r = run(fn, m64, p64, sx, sy, alpha, shape=shape)
        adapted, p64 = r.out, r.args[1]
        expect_dict(adapted, p64)
        require_graph(adapted.values(), p64.values(), own_forward=r.own_forward)
        grads = torch.autograd.grad(F.mse_loss(functional_call(m64, adapted, (qx,)), qy), list(p64.values()),
                                    allow_unused=True)
        v = {k: torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(1)) for k, t in p64.items()}
        directional = sum((g * v[k]).sum() for g, k in zip(grads, p64) if g is not None)

        def objective(eps):  # L_query(θ'(θ + eps v)), θ' from plain autograd: independent of your code
            shifted = copy.deepcopy(m64)
            with torch.no_grad():
                for k, p in shifted.named_parameters():
                    p.copy_(p64[k] + eps * v[k])
            return F.mse_loss(functional_call(shifted, plain_autograd_step(shifted, sx, sy, alpha), (qx,)), qy)

        leaf = {k: a.detach().requires_grad_() for k, a in adapted.items()}  # θ' as a constant: first order
        fo = torch.autograd.grad(F.mse_loss(functional_call(m64, leaf, (qx,)), qy), list(leaf.values()))
        first_order = sum((g * v[k]).sum() for g, k in zip(fo, leaf))
        eps = 1e-6
        fd = (objective(eps) - objective(-eps)) / (2 * eps)
        if torch.isclose(directional, first_order, rtol=1e-6) and not torch.isclose(directional, fd, rtol=1e-4):
            raise ExerciseError("the meta-gradient through θ' lacks the Hessian term: the inner gradient was treated "
                                "as a constant (detached, or torch.autograd.grad without create_graph=True)")
        expect_close(directional, fd, "the meta-gradient through your θ' disagrees with finite differences: "
                     "did the inner gradient get detached (first order)?", rtol=1e-4, atol=1e-8)

    @isolated
    def check_works_under_vmap(fn):
        def batched(model, params, sxs, sys):
            return vmap(lambda sx, sy: fn(model, params, sx, sy, 0.1))(sxs, sys)

        r = run(batched, model, params, batch.support_x, batch.support_y, on_error=_under_vmap, shape=shape)
        expect_dict(r.out, params)
        for i in range(batch.support_x.shape[0]):
            want = plain_autograd_step(model, batch.support_x[i], batch.support_y[i], 0.1)
            for k in params:
                expect_close(r.out[k][i], want[k], f"under vmap, task {i}: θ'[{k!r}] is wrong", atol=1e-6)

    return [check_matches_plain_autograd, check_second_order, check_works_under_vmap]


def mamlkit_meta_loss(model, params, batch, alpha, first_order=False, batching="loop"):
    """mamlkit.meta_loss on a SinusoidBatch, MSE, one inner step."""
    import mamlkit

    return mamlkit.meta_loss(model, params, *batch.tensors(), loss_fn=F.mse_loss, inner_lr=alpha, steps=1,
                             first_order=first_order, batching=batching)


def reference_meta_loss_loop(model, params, batch, alpha):
    return mamlkit_meta_loss(model, params, batch, alpha, batching="loop")


def reference_meta_loss_vmap(model, params, batch, alpha):
    return mamlkit_meta_loss(model, params, batch, alpha, batching="vmap")


def _query_loss_at_theta(model, params, batch, reduction="mean"):
    return torch.stack([F.mse_loss(functional_call(model, params, (qx,)), qy, reduction=reduction)
                        for qx, qy in zip(batch.query_x, batch.query_y)]).mean()


def _check_meta_loss(fn, model, params, batch, alpha, generic):
    """The value and the meta-gradient of a meta-loss over a SinusoidBatch, against mamlkit.meta_loss."""
    r = run(fn, model, params, batch, alpha,
            shape="each task's support and query sets are (K, 1); the meta-loss is ONE number, the mean over tasks")
    got, p = r.out, r.args[1]
    if not isinstance(got, torch.Tensor):
        raise ExerciseError(f"return the meta-loss as a tensor (not a {type(got).__name__}, and not .item()): "
                            "its gradient is needed")
    if got.numel() != 1:
        raise ExerciseError(f"the meta-loss has shape {tuple(got.shape)}: return ONE number, the mean of the task "
                            "losses over the tasks (.mean())")
    want = mamlkit_meta_loss(model, p, batch, alpha)
    B, Q = batch.query_x.shape[0], batch.query_x.shape[1]
    support_as_query = dataclasses.replace(batch, query_x=batch.support_x, query_y=batch.support_y)
    swapped = dataclasses.replace(batch, support_x=batch.query_x, support_y=batch.query_y,
                                  query_x=batch.support_x, query_y=batch.support_y)
    before = MODEL_IGNORES_PARAMS + " — here model(qx) gave the query loss at θ, before adaptation" \
        if r.own_forward else "that is the query loss at θ: " + QUERY_AT_THETA + " (functional_call(model, adapted, (qx,)))"
    with torch.no_grad():
        diagnose(got.reshape(()), want, [
            (B * want, f"the meta-loss is B = {B} times too large: a sum over the tasks. Average the task losses "
                       "(.mean()), do not sum them"),
            (lambda: _query_loss_at_theta(model, p, batch), before),
            (lambda: mamlkit_meta_loss(model, p, support_as_query, alpha),
             "you judged θ' on the support set: the meta-loss uses each task's QUERY set"),
            (lambda: mamlkit_meta_loss(model, p, swapped, alpha), SWAPPED),
            (Q * want, f"the meta-loss is Q = {Q} times too large: a sum-reduced query loss; use the mean squared "
                       "error (F.mse_loss's default reduction='mean')"),
        ], generic, rtol=1e-5, atol=1e-7)
    if not got.requires_grad or not depends_on([got], p.values()):
        raise ExerciseError(MODEL_IGNORES_PARAMS if r.own_forward else GRAPH_CUT)
    keys = list(p)
    grads = torch.autograd.grad(got, [p[k] for k in keys], allow_unused=True)
    g = torch.cat([(gr if gr is not None else torch.zeros_like(p[k])).flatten() for gr, k in zip(grads, keys)])

    def gradient(loss):
        return torch.cat([t.flatten() for t in torch.autograd.grad(loss, [p[k] for k in keys])])

    if close(g, gradient(mamlkit_meta_loss(model, p, batch, alpha, first_order=True)), rtol=1e-4, atol=1e-7):
        raise ExerciseError("the meta-gradient is first order: something detached the inner gradient "
                            "(the graph from θ' back to θ must go through ∇L_support)")
    expect_close(g, gradient(mamlkit_meta_loss(model, p, batch, alpha)), "the meta-loss is right but its gradient is "
                 "not: is θ' computed from params (θ' = inner_update(model, params, ...))?", rtol=1e-4, atol=1e-6)


def meta_loss_loop_checks() -> list[Callable]:
    """02, exercise 2: 1/B Σᵢ MSE(f_θ'ᵢ(query_xᵢ), query_yᵢ), a Python loop over the tasks."""
    model, params, batch = _sinusoid_fixture()

    @isolated
    def check_value_and_gradient(fn):
        _check_meta_loss(fn, model, params, batch, 0.1, "the meta-loss differs from mamlkit.meta_loss")

    return [check_value_and_gradient]


def meta_loss_vmap_checks() -> list[Callable]:
    """02, exercise 3: the same meta-loss with torch.func.vmap over the tasks."""
    from ..experiments.sinusoid import sample_tasks

    model, params, _ = _sinusoid_fixture()

    @isolated
    def check_equals_loop(fn):
        b = sample_tasks(25, 5, generator=torch.Generator().manual_seed(7))
        _check_meta_loss(fn, model, params, b, 0.01, "the vmap meta-loss differs from the loop version")

    @isolated
    def check_uses_each_tasks_data(fn):
        one = sample_tasks(1, 5, generator=torch.Generator().manual_seed(8))
        _check_meta_loss(fn, model, params, one, 0.01, "wrong on a batch of one task: does task_loss use its own "
                         "arguments (sx, sy, qx, qy), not variables from outside?")

    return [check_equals_loop, check_uses_each_tasks_data]


class _RecordingSGD(torch.optim.SGD):
    """SGD that writes 'zero_grad' / 'step' / 'step without gradient' into `events`."""

    def __init__(self, params, lr, events):
        super().__init__(params, lr=lr)
        self.events = events

    def zero_grad(self, set_to_none: bool = True):
        self.events.append("zero_grad")
        return super().zero_grad(set_to_none)

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        self.events.append("step" if any(g is not None and bool(g.ne(0).any()) for g in grads)
                           else "step without gradient")
        return super().step(closure)


def reference_meta_step(model, params, optimizer, batch, alpha):
    import mamlkit

    optimizer.zero_grad()
    loss = mamlkit.meta_loss(model, params, *batch.tensors(), loss_fn=F.mse_loss, inner_lr=alpha, batching="vmap")
    loss.backward()
    optimizer.step()
    return loss.item()


def meta_step_checks() -> list[Callable]:
    """02, exercise 4: one outer update θ ← optimizer(θ, ∇θ L_meta), returning L_meta before it as a float."""
    from ..experiments.sinusoid import sample_tasks

    model, _, _ = _sinusoid_fixture()
    alpha, beta = 0.01, 0.05
    batches = [sample_tasks(5, 5, generator=torch.Generator().manual_seed(s)) for s in (10, 11)]

    def expected_after(steps, first_order=False):
        """θ after `steps` SGD meta-steps by hand, with mamlkit's gradient, and the losses before each."""
        theta = {k: v.detach().clone() for k, v in model.named_parameters()}
        losses = []
        for b in batches[:steps]:
            e = {k: v.clone().requires_grad_() for k, v in theta.items()}
            loss = mamlkit_meta_loss(model, e, b, alpha, first_order=first_order)
            g = dict(zip(e, torch.autograd.grad(loss, list(e.values()))))
            theta = {k: theta[k] - beta * g[k] for k in theta}
            losses.append(loss.item())
        return theta, losses

    def call(fn, m, p, optimizer, b, events):
        for v in p.values():
            v.register_hook(lambda g: events.append("gradient reached θ"))
        real_backward = torch.Tensor.backward

        def backward(self, *args, **kwargs):
            events.append("backward")
            return real_backward(self, *args, **kwargs)

        try:
            with mock.patch.object(torch.Tensor, "backward", backward):
                return fn(m, p, optimizer, b, alpha)
        except (NotImplementedError, ExerciseError):
            raise
        except Exception as e:
            why = explain(e)
            if why is None:
                raise
            raise ExerciseError(f"{why}\n  (your function raised {type(e).__name__}: {str(e).splitlines()[0][:200]})") from e

    @isolated
    def check_two_sgd_steps(fn):
        m = copy.deepcopy(model)
        p = dict(m.named_parameters())
        events = []
        optimizer = _RecordingSGD(p.values(), beta, events)
        before = {k: v.detach().clone() for k, v in p.items()}
        returned = call(fn, m, p, optimizer, batches[0], events)
        steps = [e for e in events if e.startswith("step")]
        if len(steps) > 1:
            raise ExerciseError(ONE_UPDATE_PER_TASK + f" (here: {len(steps)} optimizer steps for one meta_step call)")
        if not steps:
            raise ExerciseError("θ did not change: call optimizer.step() after loss.backward()")
        if steps == ["step without gradient"]:
            last_backward = max((i for i, e in enumerate(events) if e == "backward"), default=None)
            last_zero = max((i for i, e in enumerate(events) if e == "zero_grad"), default=None)
            if last_backward is None and "gradient reached θ" not in events:
                raise ExerciseError("no gradient reached θ: call loss.backward() on the meta-loss before "
                                    "optimizer.step()")
            if last_zero is not None and last_backward is not None and last_zero > last_backward:
                raise ExerciseError("optimizer.zero_grad() ran between loss.backward() and optimizer.step(): it erased "
                                    "the gradient. Call it BEFORE loss.backward()")
            if "gradient reached θ" not in events:
                raise ExerciseError("loss.backward() ran but no gradient reached θ: " + GRAPH_CUT)
        if all(torch.equal(before[k], v) for k, v in p.items()):
            raise ExerciseError("θ did not change: did you call optimizer.step() after loss.backward()?")
        if isinstance(returned, torch.Tensor):
            raise ExerciseError("return the meta-loss as a Python float (loss.item()), not a tensor")
        if not isinstance(returned, float):
            raise ExerciseError(f"return the meta-loss as a Python float (loss.item()), got {type(returned).__name__}")
        theta1, losses = expected_after(1)
        after = mamlkit_meta_loss(model, {k: v.clone() for k, v in theta1.items()}, batches[0], alpha).item()
        diagnose(returned, losses[0], [(after, "that is the meta-loss AFTER the update: return the value computed "
                                               "before optimizer.step()")],
                 "the returned value should be the meta-loss before the update", rtol=1e-5)
        call(fn, m, p, optimizer, batches[1], events)
        got = torch.cat([v.detach().flatten() for v in p.values()])
        theta2, _ = expected_after(2)
        want = torch.cat([v.flatten() for v in theta2.values()])
        if "zero_grad" not in events and not close(got, want, atol=1e-6):
            raise ExerciseError("after two meta-steps θ is off: optimizer.zero_grad() was never called, so the second "
                                "step also applied the first step's gradient. Call it before loss.backward()")
        fo, _ = expected_after(2, first_order=True)
        diagnose(got, want, [(torch.cat([v.flatten() for v in fo.values()]),
                              "θ moved along the FIRST-ORDER meta-gradient: something detached the inner gradient")],
                 "after two meta-steps θ is off: did you call optimizer.zero_grad() before backward()? Otherwise the "
                 "second step also applies the first step's gradient", atol=1e-6)

    return [check_two_sgd_steps]


# ==============================================================================================
# 03 · the loops made visible: θ a point of the plane (mamlkit.widgets.toy2d)

REPTILE_DIM = (
    "you averaged over the wrong dimension: adapted is (tasks, 2), one row θ'ᵢ per task. mean(dim=0) averages over "
    "the tasks; dim=1 (or -1) averaged the two coordinates of each θ'ᵢ instead"
)


def reference_reptile_update(theta, adapted, epsilon):
    return theta + epsilon * (adapted - theta).mean(dim=0)


def _reptile_dim_error(error: BaseException) -> str | None:
    return REPTILE_DIM if explain(error, shape="") else None


def reptile_update_checks() -> list[Callable]:
    """03, exercise 1: θ + ε·mean over tasks of (θ'ᵢ − θ)."""
    from ..widgets import toy2d

    @isolated
    def check_by_hand(fn):
        theta = torch.tensor([1.0, 2.0])
        adapted = torch.tensor([[2.0, 3.0], [1.0, 4.0]])  # θ'ᵢ − θ = (1, 1) and (0, 2): mean (0.5, 1.5)
        eps = 0.25
        got = as_tensor(run(fn, theta, adapted, eps, on_error=_reptile_dim_error).out, "the new θ")
        diff = adapted - theta
        diagnose(got, torch.tensor([1.125, 2.375]), [
            (theta + eps * diff.mean(dim=1), REPTILE_DIM),
            (theta + eps * diff.sum(dim=0), "a sum over the tasks: Reptile moves θ by ε times the MEAN of θ'ᵢ − θ"),
            (theta - eps * diff.mean(dim=0), "θ moved away from the adapted θ'ᵢ: the update is θ + ε·mean(θ'ᵢ − θ)"),
            (theta + diff.mean(dim=0), "ε is missing: θ + mean(θ'ᵢ − θ) is the mean of the θ'ᵢ; the step is "
                                       "θ + ε·mean(θ'ᵢ − θ)"),
            (theta + eps * adapted.mean(dim=0), "θ + ε·mean(θ'ᵢ): subtract θ first, θ + ε·mean(θ'ᵢ − θ)"),
            (eps * diff.mean(dim=0), "that is the step ε·mean(θ'ᵢ − θ) alone: add it to θ"),
        ], "θ + ε·mean(θ'ᵢ − θ): with θ = (1, 2), θ' = (2, 3) and (1, 4), ε = 0.25, the result is (1.125, 2.375)")

    @isolated
    def check_against_mamlkit(fn):
        tasks = toy2d.make_tasks("sine", n_tasks=3)
        model = toy2d.make_model("sine")
        theta = torch.tensor([0.5, 0.0])
        adapted = toy2d.inner_steps_of(model, theta, tasks, inner_lr=0.3, inner_steps=3)  # (tasks, 2)
        expected = toy2d.outer_step(model, theta, tasks, "Reptile", inner_lr=0.3, inner_steps=3, epsilon=0.7)
        got = as_tensor(run(fn, theta, adapted, 0.7, on_error=_reptile_dim_error).out, "the new θ")
        if got.shape != expected.shape:
            raise ExerciseError(f"the new θ has shape {tuple(got.shape)}, expected (2,): " + REPTILE_DIM)
        expect_close(got, expected, "one Reptile step on the three sinusoid tasks disagrees with "
                     "mamlkit.widgets.toy2d.outer_step: average over the task dimension (dim=0)", rtol=1e-5)

    return [check_by_hand, check_against_mamlkit]


def reference_hessian_term(support_loss, theta, v, inner_lr):
    from torch.func import vjp

    _, hvp_fn = vjp(grad(support_loss), theta)
    return -inner_lr * hvp_fn(v)[0]


def _hessian_term_error(error: BaseException) -> str | None:
    if isinstance(error, TypeError) and ("tuple" in str(error) or "sequence" in str(error)):
        return ("vjp's function (and jvp, torch.autograd.grad) return a TUPLE, one entry per input: take its element, "
                "e.g. (hvp,) = hvp_fn(v)")
    return None


def hessian_term_checks() -> list[Callable]:
    """03, exercise 2: −α ∇²L_support(θ) v with a Hessian-vector product (vjp, jvp or double autograd.grad)."""
    from ..widgets import toy2d

    @isolated
    def check_quadratic(fn):
        A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])  # L(θ) = ½ θᵀAθ has Hessian A
        theta, v, alpha = torch.tensor([0.3, 0.4]), torch.tensor([1.0, -2.0]), 0.1
        got = as_tensor(run(fn, lambda t: 0.5 * t @ A @ t, theta, v, alpha, on_error=_hessian_term_error,
                            shape="θ and v are (2,), the Hessian is (2, 2): the answer is (2,)").out,
                        "the Hessian term")
        ones = torch.ones(2)
        diagnose(got, -alpha * A @ v, [
            (alpha * A @ v, "the minus sign is missing: the Hessian term is −α ∇²L(θ) v"),
            (-A @ v, "α is missing: the Hessian term is −α ∇²L(θ) v"),
            (A @ v, "the factor −α is missing: the Hessian term is −α ∇²L(θ) v"),
            (-alpha * A @ theta, "that is −α ∇L(θ), the gradient: differentiate the gradient once more, along v "
                                 "(vjp(grad(support_loss), theta) and its function applied to v)"),
            (-alpha * A @ ones, "∇²L(θ) was multiplied with a vector of ones, not with v: pass v to the vjp's function "
                                "(or as jvp's tangent)"),
            (-alpha * v, "that is −α v: the Hessian is missing (∇²L(θ) v, by vjp or jvp of grad(support_loss))"),
        ], "for L(θ) = ½ θᵀAθ the Hessian is A, so the answer is −α A v = (−0.1, 0.3)")

    @isolated
    def check_meta_gradient(fn):
        # first-order term + your Hessian term must equal the autograd meta-gradient of mamlkit.meta_loss
        import mamlkit

        tasks = toy2d.make_tasks("sine", n_tasks=3)
        model, alpha = toy2d.make_model("sine"), 0.3
        sx, sy, qx, qy = (t[:1] for t in tasks.tensors())  # task 1, with its task dimension

        # toy2d.mse, not F.mse_loss: jvp of a gradient of F.mse_loss fails in torch ("ZeroTensors are immutable")
        def support_loss(t):
            return toy2d.mse(functional_call(model, toy2d.to_params(model, t), (sx[0],)), sy[0])

        def query_loss(t):
            return toy2d.mse(functional_call(model, toy2d.to_params(model, t), (qx[0],)), qy[0])

        theta = torch.tensor([2.0, 1.0])
        adapted = theta - alpha * grad(support_loss)(theta)
        first_order = grad(query_loss)(adapted)
        t = theta.clone().requires_grad_()
        loss = mamlkit.meta_loss(model, toy2d.to_params(model, t), sx, sy, qx, qy, loss_fn=F.mse_loss,
                                 inner_lr=alpha, steps=1)
        (meta_grad,) = torch.autograd.grad(loss, t)
        got = as_tensor(run(fn, support_loss, theta, first_order, alpha, on_error=_hessian_term_error).out,
                        "the Hessian term")
        expect_close(first_order + got, meta_grad,
                     "first-order term + your Hessian term ≠ MAML's meta-gradient from mamlkit.meta_loss: "
                     "the Hessian must be taken at θ (not θ') and multiplied with v = ∇L_query(θ')", rtol=1e-4, atol=1e-5)

    return [check_quadratic, check_meta_gradient]


# ==============================================================================================
# 04 · FOMAML and Reptile on the sinusoid MLP


def reference_fomaml_meta_gradient(model, params, support_x, support_y, query_x, query_y, inner_lr, inner_steps):
    import mamlkit

    loss = mamlkit.meta_loss(model, params, support_x, support_y, query_x, query_y, loss_fn=F.mse_loss,
                             inner_lr=inner_lr, steps=inner_steps, first_order=True)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def _grad_vector(grads, params, what="the meta-gradient"):
    if not isinstance(grads, dict) or set(grads) != set(params):
        got = sorted(grads) if isinstance(grads, dict) else type(grads).__name__
        raise ExerciseError(f"{what}: return a dict with the same keys as params ({list(params)[:2]}…), got {got}")
    return torch.cat([torch.as_tensor(grads[k]).detach().double().flatten() for k in params])


def _fomaml_variants(model, params, sx, sy, qx, qy, lr, steps):
    """Wrong FOMAML meta-gradients, each with the mistake that gives it."""
    import mamlkit

    def vec(d):
        return torch.cat([d[k].detach().double().flatten() for k in params])

    def at_theta():  # the query gradient at θ, averaged over tasks: no adaptation
        loss = torch.stack([F.mse_loss(functional_call(model, params, (qx[i],)), qy[i]) for i in range(qx.shape[0])])
        return vec(dict(zip(params, torch.autograd.grad(loss.mean(), list(params.values())))))

    def maml():
        loss = mamlkit.meta_loss(model, params, sx, sy, qx, qy, loss_fn=F.mse_loss, inner_lr=lr, steps=steps)
        return vec(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))

    tasks = sx.shape[0]
    right = vec(reference_fomaml_meta_gradient(model, params, sx, sy, qx, qy, lr, steps))
    return [
        (maml, "this is MAML's meta-gradient (with the Hessian term): FOMAML treats the inner gradients as constants "
               "(no create_graph=True, or .detach() them)"),
        (at_theta, "that is the query gradient at θ: " + QUERY_AT_THETA + " — FOMAML's meta-gradient is "
                   "∇θ' L(θ'; query) at the adapted θ'"),
        (lambda: vec(reference_fomaml_meta_gradient(model, params, qx, qy, sx, sy, lr, steps)), SWAPPED),
        (tasks * right, f"summed over the {tasks} tasks: average the task gradients (÷ number of tasks)"),
        (lambda: vec(reference_fomaml_meta_gradient(model, params, sx, sy, qx, qy, lr, 1)),
         f"only one inner step was taken: take inner_steps ({steps}) steps on the support set"),
    ]


def fomaml_meta_gradient_checks() -> list[Callable]:
    """04, exercise 1: the FOMAML meta-gradient, 1/B Σᵢ ∇θ' L(θ'ᵢ; query) with constant inner gradients."""
    from ..experiments.sinusoid import make_mlp, sample_tasks

    with _seeded(0):
        model64 = make_mlp().double()
    params64 = {k: v.detach().clone().requires_grad_() for k, v in model64.named_parameters()}
    batch64 = [t.double() for t in sample_tasks(10, 10, generator=torch.Generator().manual_seed(0)).tensors()]
    shape = "support_x etc. carry a leading task dimension (tasks, K, 1): task i is support_x[i], (K, 1)"

    @isolated
    def check_one_task_one_step_by_hand(fn):
        # a linear model f(x) = w x + b, one task, one step: every gradient written out by hand
        model = torch.nn.Linear(1, 1).double()
        w, b = torch.tensor([[0.5]], dtype=_F64), torch.tensor([0.2], dtype=_F64)
        params = {"weight": w.clone().requires_grad_(), "bias": b.clone().requires_grad_()}
        sx = torch.tensor([[[1.0], [2.0]]], dtype=_F64)
        sy = torch.tensor([[[1.0], [0.0]]], dtype=_F64)
        qx, qy = torch.tensor([[[3.0]]], dtype=_F64), torch.tensor([[[1.0]]], dtype=_F64)
        r = run(fn, model, params, sx, sy, qx, qy, 0.1, 1, shape=shape)
        got = _grad_vector(r.out, params)
        res = (w[0, 0] * sx[0, :, 0] + b[0]) - sy[0, :, 0]  # support residuals
        w1 = w[0, 0] - 0.1 * (2 * res * sx[0, :, 0]).mean()  # θ' = θ − α ∇θ L_support, MSE = mean(r²)
        b1 = b[0] - 0.1 * (2 * res).mean()
        rq = w1 * qx[0, 0, 0] + b1 - qy[0, 0, 0]
        expected = torch.stack([2 * rq * qx[0, 0, 0], 2 * rq])  # ∇θ' L(θ'; query): FOMAML's answer
        diagnose(got, expected, _fomaml_variants(model, params, sx, sy, qx, qy, 0.1, 1),
                 "for f(x) = w·x + b the FOMAML meta-gradient is ∇θ' L(θ'; query) = (2 r x, 2 r) at the adapted "
                 "(w', b')", rtol=1e-9, atol=1e-12)

    @isolated
    def check_against_mamlkit(fn):
        r = run(fn, model64, params64, *batch64, 0.02, 3, shape=shape)
        got = _grad_vector(r.out, params64)
        expected = _grad_vector(reference_fomaml_meta_gradient(model64, params64, *batch64, 0.02, 3), params64)
        if r.own_forward and not close(got, expected, rtol=1e-8, atol=1e-10):
            raise ExerciseError(MODEL_IGNORES_PARAMS)
        diagnose(got, expected, _fomaml_variants(model64, params64, *batch64, 0.02, 3),
                 "3 inner steps, 10 tasks: should equal mamlkit.meta_loss(..., first_order=True)'s gradient",
                 rtol=1e-8, atol=1e-10)

    return [check_one_task_one_step_by_hand, check_against_mamlkit]


REPTILE_DIRECTION_DIM = (
    "you averaged over the wrong dimension: adapted[k] is (tasks, *θ[k].shape); mean(dim=0) averages over the tasks, "
    "dim=1 averaged over the first axis of the parameter itself"
)


def reference_reptile_direction(params, adapted, inner_lr):
    return {k: ((p.detach() - adapted[k].detach()) / inner_lr).mean(dim=0) for k, p in params.items()}


def reptile_direction_checks() -> list[Callable]:
    """04, exercise 2: Reptile's direction 1/B Σᵢ (θ − θ'ᵢ)/α, detached."""
    from ..bench.baselines import reptile_direction as loop_reptile_direction
    from ..experiments.sinusoid import make_mlp, sample_tasks

    def on_error(error):
        return REPTILE_DIRECTION_DIM if explain(error, shape="") else None

    @isolated
    def check_by_hand_reptile(fn):
        params = {"w": torch.tensor([1.0, 2.0])}
        adapted = {"w": torch.tensor([[0.9, 1.9], [1.0, 1.6]])}  # (tasks=2, 2): (θ − θ'ᵢ)/α = (1, 1) and (0, 4)
        r = run(fn, params, adapted, 0.1, on_error=on_error)
        if not isinstance(r.out, dict) or "w" not in r.out:
            raise ExerciseError("return a dict with the same keys as params")
        d = (params["w"] - adapted["w"]) / 0.1
        diagnose(as_tensor(r.out["w"], "direction['w']"), torch.tensor([0.5, 2.5]), [
            (d.mean(dim=1), REPTILE_DIRECTION_DIM),
            (-d.mean(dim=0), "the sign is flipped: the direction is (θ − θ'ᵢ)/α, used like a gradient (θ ← θ − β·d)"),
            (d.sum(dim=0), "summed over the tasks: average them (mean over dim=0)"),
            (d.mean(dim=0) * 0.1, "the division by α is missing: (θ − θ'ᵢ)/α"),
            (d.mean(dim=0) * 0.01, "multiplied by α instead of dividing: (θ − θ'ᵢ)/α"),
            (adapted["w"].mean(dim=0), "that is the mean θ'ᵢ: the direction is the mean of (θ − θ'ᵢ)/α"),
        ], "mean over tasks of (θ − θ'ᵢ)/α = ((0.1, 0.1)/0.1 + (0, 0.4)/0.1)/2 = (0.5, 2.5)", atol=1e-6)

    @isolated
    def check_against_plain_loop(fn):
        # mamlkit.bench.baselines.reptile_direction adapts task by task with torch.autograd.grad
        import mamlkit

        torch.manual_seed(0)
        model = make_mlp(hidden=8).double()
        params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        sx, sy, _, _ = (t.double() for t in sample_tasks(10, 10, generator=torch.Generator().manual_seed(0)).tensors())
        adapted, _ = mamlkit.adapt_batch(model, params, sx, sy, loss_fn=F.mse_loss, inner_lr=0.05, steps=3,
                                         first_order=True)
        adapted = {k: v.detach() for k, v in adapted.items()}
        r = run(fn, params, adapted, 0.05, on_error=on_error)
        got = r.out
        if not isinstance(got, dict) or set(got) != set(params):
            raise ExerciseError("return a dict with the same keys as params")
        expected = loop_reptile_direction(model, params, sx, sy, loss_fn=F.mse_loss, inner_lr=0.05, steps=3)
        for k in params:
            if torch.as_tensor(got[k]).shape != expected[k].shape:
                raise ExerciseError(f"direction[{k!r}] has shape {tuple(got[k].shape)}, expected θ's "
                                    f"{tuple(expected[k].shape)}: " + REPTILE_DIRECTION_DIM)
            expect_close(got[k], expected[k], f"entry {k!r} differs from a plain per-task loop; average over the task "
                         "dimension (dim=0) of (θ − θ'ᵢ)/α", rtol=1e-8, atol=1e-10)
        if any(torch.as_tensor(v).requires_grad for v in got.values()):
            raise ExerciseError("detach the result: Reptile's direction is used as a gradient, not differentiated")

    return [check_by_hand_reptile, check_against_plain_loop]


ALPHA_NO_GRAD = (
    "α gets no gradient: α was detached (alpha[k].detach(), alpha[k].data, .item(), a float() or torch.no_grad()), "
    "so Meta-SGD cannot learn it. Use the α tensors you were given as they are: θ'[k] = params[k] − alpha[k] * g[k]"
)
SCALAR_ALPHA = (
    "a scalar α was used (e.g. alpha[k].mean()): Meta-SGD's α has θ's shape, one step size per parameter entry; "
    "multiply entry by entry: θ'[k] = params[k] − alpha[k] * g[k]"
)
META_SGD_FIRST_ORDER = (
    "first order: the inner gradient was taken without create_graph=True (or detached), so ∇θ L_q lacks the Hessian "
    "term (α still gets a gradient, which hides it). Meta-SGD here is second order: "
    "torch.autograd.grad(support_loss, list(params.values()), create_graph=True)"
)


def reference_meta_sgd_inner_step(model, params, alpha, x, y, loss_fn):
    """Meta-SGD's inner step θ' = θ − α ⊙ ∇θ L(θ; support): mamlkit.adapt with a dict α, one step."""
    import mamlkit

    return mamlkit.adapt(model, params, x, y, loss_fn=loss_fn, inner_lr=alpha, steps=1)


def meta_sgd_checks() -> list[Callable]:
    """04, exercise 3: Meta-SGD's inner step, per-parameter α, second order, gradients to θ and α."""
    from ..experiments.sinusoid import make_mlp, sample_tasks

    with _seeded(0):
        model = make_mlp().double()
        # α varies entry by entry (0.005 ... 0.035): a scalar α gives clearly different values
        alpha0 = {k: 0.005 + 0.03 * torch.rand(p.shape, dtype=_F64) for k, p in model.named_parameters()}
    params0 = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    alpha0 = {k: v.requires_grad_() for k, v in alpha0.items()}
    sx, sy, qx, qy = (t[0].double() for t in sample_tasks(2, 10, generator=torch.Generator().manual_seed(3)).tensors())
    keys = list(params0)
    shape = "x and y are (K, 1) = (10, 1); the MLP maps (K, 1) -> (K, 1); alpha[k] has params[k]'s shape"

    def answer(fn):
        r = run(fn, model, params0, alpha0, sx, sy, F.mse_loss, shape=shape)
        expect_dict(r.out, params0)
        return r, r.args[1], r.args[2]

    def support_grad():
        p = {k: v.detach().requires_grad_() for k, v in params0.items()}
        loss = F.mse_loss(functional_call(model, p, (sx,)), sy)
        return dict(zip(keys, torch.autograd.grad(loss, list(p.values()))))

    @isolated
    def check_values(fn):
        r, _, _ = answer(fn)
        got = flat(r.out, keys)
        expected = flat(reference_meta_sgd_inner_step(model, params0, alpha0, sx, sy, F.mse_loss), keys)
        if r.own_forward and not close(got, expected, rtol=1e-8, atol=1e-10):
            raise ExerciseError(MODEL_IGNORES_PARAMS)
        g = support_grad()
        theta, a = {k: v.detach() for k, v in params0.items()}, {k: v.detach() for k, v in alpha0.items()}
        mean_all = float(flat(a, keys).mean())
        diagnose(got, expected, [
            (flat({k: theta[k] + a[k] * g[k] for k in keys}, keys), UPHILL),
            (flat({k: theta[k] - a[k].mean() * g[k] for k in keys}, keys), SCALAR_ALPHA),
            (flat({k: theta[k] - mean_all * g[k] for k in keys}, keys), SCALAR_ALPHA),
            (flat({k: theta[k] - 0.01 * g[k] for k in keys}, keys),
             "a fixed α = 0.01 was used: Meta-SGD's α is the alpha dict you were given, θ' = θ − alpha[k] * g[k]"),
            (flat({k: theta[k] - g[k] for k in keys}, keys), "α is missing: θ' = θ − α ⊙ ∇L"),
            (flat(g, keys), "that is the gradient ∇L_support(θ), not θ' = θ − α ⊙ ∇L_support(θ)"),
            (flat(theta, keys), "θ' equals θ: the gradient was zero — does the loss depend on the params? Use "
                                "functional_call(model, params, (x,)), not model(x)"),
        ], "θ' differs from θ − α ⊙ ∇θ L(θ; support) (mamlkit.adapt with a dict inner_lr)", rtol=1e-8, atol=1e-10)

    @isolated
    def check_gradients_reach_theta_and_alpha(fn):
        r, p, a = answer(fn)
        require_graph(r.out.values(), p.values(), own_forward=r.own_forward)
        query = F.mse_loss(functional_call(model, r.out, (qx,)), qy)
        grads = torch.autograd.grad(query, list(p.values()) + list(a.values()), allow_unused=True)
        g_theta, g_alpha = grads[:len(keys)], grads[len(keys):]
        if all(g is None for g in g_alpha) or all(g is None or not bool(g.any()) for g in g_alpha):
            raise ExerciseError(ALPHA_NO_GRAD)
        if any(g is None for g in g_alpha):
            missing = [k for k, g in zip(keys, g_alpha) if g is None]
            raise ExerciseError(ALPHA_NO_GRAD + f" (no gradient reached alpha{missing})")
        # the library's answer, on fresh copies: θ' from mamlkit.adapt, second order and first order
        p2 = {k: v.detach().clone().requires_grad_() for k, v in params0.items()}
        a2 = {k: v.detach().clone().requires_grad_() for k, v in alpha0.items()}
        ref = reference_meta_sgd_inner_step(model, p2, a2, sx, sy, F.mse_loss)
        ref_grads = torch.autograd.grad(F.mse_loss(functional_call(model, ref, (qx,)), qy),
                                        list(p2.values()) + list(a2.values()))
        want_theta, want_alpha = ref_grads[:len(keys)], ref_grads[len(keys):]
        leaf = {k: v.detach().requires_grad_() for k, v in ref.items()}  # θ' as a constant: ∇θ' L_q
        fo = torch.autograd.grad(F.mse_loss(functional_call(model, leaf, (qx,)), qy), list(leaf.values()))

        def vec(gs):
            return torch.cat([(torch.zeros_like(params0[k]) if g is None else g).detach().double().flatten()
                              for k, g in zip(keys, gs)])

        got_theta, right_theta, first_order = vec(g_theta), vec(want_theta), vec(fo)
        if r.own_forward and not close(got_theta, right_theta, rtol=1e-7, atol=1e-10):
            raise ExerciseError(MODEL_IGNORES_PARAMS + " (the inner gradient came from model(x), so it does not "
                                "depend on the params: the Hessian term is missing)")
        diagnose(got_theta, right_theta, [
            (first_order, META_SGD_FIRST_ORDER),
            (right_theta - first_order, PARTIAL_CUT),
        ], "∂L_q/∂θ through your θ' differs from the library's (mamlkit.adapt with a dict inner_lr)",
            rtol=1e-7, atol=1e-10)
        expect_close(vec(g_alpha), vec(want_alpha), "∂L_q/∂α through your θ' differs from the library's "
                     "(mamlkit.adapt with a dict inner_lr): θ'[k] = params[k] − alpha[k] * g[k]", rtol=1e-7, atol=1e-10)

    return [check_values, check_gradients_reach_theta_and_alpha]


# ==============================================================================================
# 05 · few-shot Omniglot: episode labels and the 95% confidence interval

RANDOM_LABELS = (
    "your labels change from one call to the next on the same images: random labels, unrelated to the images (the "
    "copied blog's 'dummy tasks', its bug 4), leave nothing to learn. The label of an image of class chosen[j] is j"
)


def reference_labels(image_classes, chosen):
    position = {c: j for j, c in enumerate(chosen.tolist())}
    return torch.tensor([position[c] for c in image_classes.tolist()])


def episode_labels_checks() -> list[Callable]:
    """05, exercise 1: label j for every image of class chosen[j]."""
    from ..data.episodes import EpisodeSampler

    def on_error(error):
        if isinstance(error, IndexError) or "out of bounds" in str(error):
            return ("an index out of range: class ids are global (hundreds), labels are positions 0..n_way−1. Compare "
                    "each image's class with every entry of chosen (image_classes[:, None] == chosen[None, :]) and take "
                    "the position of the match")
        return None

    def labels(fn, ids, chosen):
        return as_tensor(run(fn, ids, chosen, on_error=on_error,
                             shape="image_classes is (n,), chosen is (n_way,): one label per image, (n,)").out,
                         "the labels")

    @isolated
    def check_small_example(fn):
        ids, chosen = torch.tensor([412, 7, 412, 93, 7]), torch.tensor([93, 412, 7])
        got = labels(fn, ids, chosen)
        if not torch.equal(got, labels(fn, ids, chosen)):
            raise ExerciseError(RANDOM_LABELS)
        expected = torch.tensor([1, 2, 1, 0, 2])
        if got.shape != expected.shape:
            raise ExerciseError(f"the labels have shape {tuple(got.shape)}: expected one label per image, (5,) here "
                                "(argmax over dim=1 of the (n, n_way) matches, not dim=0)")
        diagnose(got, expected, [
            (torch.tensor([2, 0, 2, 1, 0]), "those are the ranks of the class ids (sorted order): the label is the "
                                            "position of the class in `chosen`, which is in random order"),
            (torch.tensor([0, 1, 0, 2, 1]), "labels in order of first appearance among the images: the label is the "
                                            "position of the class in `chosen`"),
            (ids, "those are the global class ids: the label is the position j of the class in `chosen` (0..n_way−1)"),
            (expected + 1, "labels start at 0: the label of chosen[0]'s images is 0"),
        ], f"images of classes {ids.tolist()} with chosen = {chosen.tolist()} have labels {expected.tolist()} (the "
           "position of each class in `chosen`)")

    @isolated
    def check_order_of_chosen_matters(fn):
        ids, chosen = torch.tensor([5, 9, 2, 9, 5]), torch.tensor([2, 5, 9])
        a, b = labels(fn, ids, chosen), labels(fn, ids, chosen.flip(0))
        if not torch.equal(b, 2 - a):
            raise ExerciseError("reversing `chosen` must reverse the labels: the label is the position in `chosen`, "
                                "not the rank of the class id (sorting the ids would give label 0 the same meaning "
                                "in many tasks)")

    @isolated
    def check_against_the_sampler(fn):
        sampler = EpisodeSampler(torch.zeros(40, 20, 1, 1, dtype=torch.uint8), n_way=5, k_shot=1, q_query=15,
                                 meta_batch_size=1)
        index = sampler.sample_indices(torch.Generator().manual_seed(1))  # how EpisodeSampler builds a task
        chosen = index.classes[0]  # (n_way,)
        image_classes = chosen[index.query_y[0]]  # (n_way * q_query,) the global class of every query image
        got = labels(fn, image_classes, chosen)
        if got.shape != index.query_y[0].shape or not torch.equal(got, index.query_y[0]):
            wrong = int((got != index.query_y[0]).sum()) if got.shape == index.query_y[0].shape else "all"
            raise ExerciseError(f"on a task drawn by EpisodeSampler your labels differ from its labels at {wrong} of "
                                f"{index.query_y[0].numel()} images")

    return [check_small_example, check_order_of_chosen_matters, check_against_the_sampler]


def reference_ci(correct):
    import mamlkit

    return mamlkit.mean_ci95(correct.float().mean(dim=1))


def _two_floats(out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError(f"return two numbers (mean, half-width of the 95% interval), got {type(out).__name__}")
    try:
        return float(out[0]), float(out[1])
    except (TypeError, ValueError, RuntimeError):
        raise ExerciseError("return two numbers (mean, half-width), e.g. floats or 0-dimensional tensors") from None


def accuracy_ci95_checks() -> list[Callable]:
    """05, exercise 2: (mean, 1.96 σ/√tasks) of the PER-TASK accuracies."""

    def wrong_cis(correct):
        """The usual wrong half-widths for a (tasks, queries) bool tensor, with their mistakes (most specific first)."""
        c = correct.double()
        per_task, tasks = c.mean(dim=1), c.shape[0]
        sd = per_task.std(unbiased=True)
        return [
            (1.96 * c.flatten().std(unbiased=True) / math.sqrt(c.numel()),
             f"you treated the {c.numel()} query images as independent samples: compute one accuracy per task first, "
             f"then the σ of those {tasks} numbers, and divide by √{tasks}"),
            (1.96 * c.mean(dim=0).std(unbiased=True) / math.sqrt(c.shape[1]),
             "mean over dim=0 averages each query position across the tasks: the per-task accuracies are "
             "correct.float().mean(dim=1)"),
            (1.96 * per_task.std(unbiased=False) / math.sqrt(tasks),
             "use the sample standard deviation, dividing by n − 1 (std(unbiased=True), the default)"),
            (sd / math.sqrt(tasks), "that is the standard error σ/√n: the 95% half-width is 1.96 σ/√n"),
            (1.96 * sd, "that is 1.96 σ: divide by √(number of tasks), the half-width is 1.96 σ/√n"),
            (1.96 * sd / math.sqrt(c.numel()), "divided by √(tasks × queries): the samples are the tasks, divide by "
                                               "√(number of tasks)"),
            (1.96 * sd ** 2 / math.sqrt(tasks), "that uses the variance σ²: the half-width is 1.96 σ/√n"),
        ]

    def check(fn, correct, what):
        mean, ci = _two_floats(run(fn, correct).out)
        expected_mean, expected_ci = reference_ci(correct)
        if abs(mean - expected_mean) > 1e-6:
            raise ExerciseError(f"{what}: the mean accuracy should be {expected_mean:.4f} (the mean of the per-task "
                                f"accuracies), got {mean:.4f}")
        diagnose(ci, expected_ci, wrong_cis(correct),
                 f"{what}: the CI half-width is 1.96 σ / √tasks = {expected_ci:.4f}, σ the sample standard deviation "
                 "of the per-task accuracies", rtol=1e-6, atol=1e-9)

    @isolated
    def check_against_a_hand_computation(fn):
        correct = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)  # tasks at 75%, 25%, 100%
        check(fn, correct, "three tasks at 75%, 25% and 100%")

    @isolated
    def check_tasks_not_images(fn):
        g = torch.Generator().manual_seed(0)
        correct = torch.rand(600, 75, generator=g) < torch.rand(600, 1, generator=g)  # tasks of very different difficulty
        check(fn, correct, "600 random tasks")

    return [check_against_a_hand_computation, check_tasks_not_images]


# ==============================================================================================
# 06 · MAML at scale: timing, vmap in_dims, atomic checkpoints


class SimulatedGPU:
    """A clock and a work queue: step() only *launches* work (1 ms of CPU time), sync() waits until it has run.

    `events` lists every call ("step", "sync", "clock"), so a check can see *when* the clock was read.
    """

    def __init__(self, work):  # seconds of device work for each call of step(); the last value repeats
        self.now, self.pending, self.work, self.calls, self.events = 0.0, 0.0, list(work), 0, []

    def clock(self):
        self.events.append("clock")
        return self.now

    def step(self):
        self.events.append("step")
        self.now += 0.001
        self.pending += self.work[min(self.calls, len(self.work) - 1)]
        self.calls += 1

    def sync(self):
        self.events.append("sync")
        self.now += self.pending
        self.pending = 0.0


def reference_throughput(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(reps):
        sync()
        start = clock()
        step()
        sync()
        seconds.append(clock() - start)
    return meta_batch_size / statistics.median(seconds)


def _sync_diagnosis(events) -> str | None:
    """What is wrong with the order of step / sync / clock calls, or None."""
    if "sync" not in events:
        return ("sync() was never called: on a GPU, step() returns as soon as its work is QUEUED. Call the sync you "
                "were given (torch.cuda.synchronize on a GPU) before each clock() read")
    queued = False
    for i, e in enumerate(events):
        if e == "step":
            queued = True
        elif e == "sync":
            queued = False
        elif e == "clock" and queued:
            nxt = next((x for x in events[i + 1:] if x != "clock"), None)
            if nxt == "step":
                return ("the clock started while earlier work was still queued (the warm-up's or the previous "
                        "repetition's): call sync() BEFORE reading the start time, or that work is charged to this call")
            return ("the clock stopped before the queued work had run: call sync() after step() and BEFORE reading "
                    "the end time, or you time only the queueing")
    return None


def _throughput_hint(value, per_step, meta_batch_size):
    """Feedback for a wrong throughput, from the usual mistakes' values."""
    expected = meta_batch_size / per_step
    hints = {1 / per_step: "that is meta-steps per second: multiply by meta_batch_size to count tasks",
             per_step / meta_batch_size: "that is seconds per task: throughput is its inverse, tasks per second",
             per_step: "that is seconds per meta-step: throughput is meta_batch_size / seconds",
             expected / 1000: "off by 1000: the clock counts seconds, not milliseconds",
             expected * 1000: "off by 1000: the clock counts seconds, not milliseconds"}
    for wrong, hint in hints.items():
        if abs(value - wrong) <= 1e-6 * max(1.0, abs(wrong)):
            return hint
    if value > 10 * expected:
        return "far too fast: step() only queued its work. Call sync() after step() and before reading the clock"
    return "compare with meta_batch_size / median(seconds per timed step)"


def throughput_checks() -> list[Callable]:
    """06, exercise 1: tasks per second, with warm-up, device syncs and the median."""

    def measure(fn, gpu, **kwargs):
        def on_error(error):
            if "CUDA" in str(error) or "cuda" in str(error):
                return ("call the `sync` you were given, not torch.cuda.synchronize() directly: the check hands you "
                        "a simulated GPU, and on a CPU there is nothing to synchronize")
            return None

        value = run(fn, gpu.step, 8, clock=gpu.clock, sync=gpu.sync, on_error=on_error, **kwargs).out
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ExerciseError(f"return the throughput as a number (tasks per second), got {type(value).__name__}") from None

    @isolated
    def check_sync_before_each_clock_read(fn):
        gpu = SimulatedGPU([0.5])
        measure(fn, gpu, reps=5, warmup=1)
        why = _sync_diagnosis(gpu.events)
        if why:
            raise ExerciseError(why)

    @isolated
    def check_steady(fn):
        gpu = SimulatedGPU([0.5])
        value = measure(fn, gpu, reps=5, warmup=1)
        per_step = 0.501  # 1 ms to launch + 0.5 s of device work
        if abs(value - 8 / per_step) > 1e-6 * (8 / per_step):
            raise ExerciseError(f"8 tasks per step, 0.501 s per step: expected {8 / per_step:.3f} tasks/s, got {value!r}; "
                                + _throughput_hint(value, per_step, 8))

    @isolated
    def check_warmup(fn):
        gpu = SimulatedGPU([10.0, 0.5])  # the first call compiles: 10 s
        value = measure(fn, gpu, reps=5, warmup=2)
        if gpu.calls != 7:
            raise ExerciseError(f"step() ran {gpu.calls} times for warmup=2, reps=5: run it `warmup` times untimed, "
                                "then `reps` times timed")
        expect_close(value, 8 / 0.501, "the 10 s of the first (warm-up) call changed the result: do not time the "
                     "warm-up calls, and sync() before starting the clock so that their queued work is not charged to "
                     "a timed call")

    @isolated
    def check_median(fn):
        gpu = SimulatedGPU([0.5, 0.5, 0.5, 5.0, 0.5, 0.5])  # one timed call is slowed by another process
        value = measure(fn, gpu, reps=5, warmup=1)
        diagnose(value, 8 / 0.501, [(8 / ((4 * 0.501 + 5.001) / 5), "that is the MEAN of the timed calls: one slow "
                                     "repetition (another process took the machine) moved it; use the median "
                                     "(statistics.median)")],
                 "one slow repetition changed the result: use the median of the timed calls (statistics.median), not "
                 "the mean or the total")

    return [check_sync_before_each_clock_read, check_steady, check_warmup, check_median]


def reference_adapt_all(model, params, support_x, support_y, *, inner_lr, loss_fn=F.mse_loss):
    import mamlkit

    adapted, _ = mamlkit.adapt_batch(model, params, support_x, support_y, loss_fn=loss_fn, inner_lr=inner_lr,
                                     steps=1, batching="vmap")
    return adapted


IN_DIMS = ("in_dims has one entry per argument of one_task(p, sx, sy): None for θ (shared: not mapped; mapping it would "
           "slice every weight along its first axis as if it were the task axis), 0 for support_x and support_y "
           "(task i gets slice i)")


def adapt_all_checks() -> list[Callable]:
    """06, exercise 2: vmap(one_task, in_dims=(None, 0, 0)): θ shared, the support sets mapped."""
    import warnings

    from ..experiments.sinusoid import make_mlp, sample_tasks

    with _seeded(0):
        model = make_mlp()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}

    def one_task(p, sx, sy):
        g = grad(lambda p: F.mse_loss(functional_call(model, p, (sx,)), sy))(p)
        return {k: p[k] - 0.01 * g[k] for k in p}

    def with_in_dims(in_dims, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mse_loss warns about the broadcast of an unmapped target
            return vmap(one_task, in_dims=in_dims)(params, b.support_x, b.support_y)

    def on_error(error):
        msg = str(error)
        if "vmap" in msg or "mapped" in msg or "in_dims" in msg:
            return f"vmap refused the inputs ({msg.strip().splitlines()[0][:160]}...). " + IN_DIMS
        return None

    def adapted_of(fn, b, p=None):
        r = run(fn, model, params if p is None else p, b.support_x, b.support_y, inner_lr=0.01, on_error=on_error,
                shape="support_x and support_y are (tasks, K, 1); θ'ᵢ stacks to (tasks, *θ.shape)")
        out = r.out
        if not isinstance(out, dict) or set(out) != set(params):
            raise ExerciseError(f"expected a dict with θ's names {sorted(params)}, got {type(out).__name__}: return what "
                                "vmap(one_task, ...)(...) returns")
        return r

    @isolated
    def check_shapes(fn):
        b = sample_tasks(3, 5, generator=torch.Generator().manual_seed(1))
        out = adapted_of(fn, b).out
        for k, p in params.items():
            if tuple(out[k].shape) != (3, *p.shape):
                hint = (" — that is (K, ...): vmap mapped dimension 1, the K support points, instead of dimension 0, "
                        "the tasks" if out[k].shape[:1] == (5,) else "")
                raise ExerciseError(f"θ'[{k!r}] has shape {tuple(out[k].shape)}, expected (tasks, *θ.shape) = "
                                    f"{(3, *p.shape)}{hint}")

    @isolated
    def check_against_adapt(fn):
        import mamlkit

        b = sample_tasks(3, 5, generator=torch.Generator().manual_seed(2))
        out = adapted_of(fn, b).out
        got = flat(out, list(params))
        for in_dims, mistake in (((None, 0, None), "support_y is not mapped (in_dims None): every task was fitted to "
                                                   "all the tasks' targets at once. "),
                                 ((None, None, 0), "support_x is not mapped (in_dims None): every task saw all the "
                                                   "tasks' inputs. ")):
            try:
                variant = flat(with_in_dims(in_dims, b), list(params))
            except Exception:
                continue
            if close(got, variant, rtol=1e-5, atol=1e-6):
                raise ExerciseError(mistake + IN_DIMS)
        for i in range(3):  # independent reference: mamlkit.adapt on task i alone, a plain autograd loop
            alone = mamlkit.adapt(model, params, b.support_x[i], b.support_y[i], loss_fn=F.mse_loss, inner_lr=0.01)
            for k in params:
                expect_close(out[k][i], alone[k], f"task {i}: θ'[{k!r}] differs from adapting θ on task {i}'s support "
                             "set alone: map support_x AND support_y over their first dimension (in_dims 0), θ over "
                             "none (None)", rtol=1e-5, atol=1e-6)

    @isolated
    def check_gradient_reaches_theta(fn):
        import mamlkit

        b = sample_tasks(3, 5, generator=torch.Generator().manual_seed(3))
        r = adapted_of(fn, b)
        p = r.args[1]
        yours = r.out["2.bias"]
        if not depends_on([yours], [p["2.bias"]]):
            raise ExerciseError(GRAPH_CUT + " — pass params itself to vmap, with in_dims None (no per-task copies)")
        (g_yours,) = torch.autograd.grad(yours.sum(), [p["2.bias"]])
        loop, _ = mamlkit.adapt_batch(model, p, b.support_x, b.support_y, loss_fn=F.mse_loss, inner_lr=0.01,
                                      batching="loop")
        (g_loop,) = torch.autograd.grad(loop["2.bias"].sum(), [p["2.bias"]])
        expect_close(g_yours, g_loop, "the gradient from Σᵢ θ'ᵢ back to the shared θ is wrong: do not detach θ or copy "
                     "it per task; vmap with in_dims=None for θ keeps one θ in the graph", rtol=1e-5)

    return [check_shapes, check_against_adapt, check_gradient_reaches_theta]


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def save_atomically_checks() -> list[Callable]:
    """06, exercise 3: torch.save to a temporary file in the same folder, flush + fsync, then os.replace."""

    @isolated
    def check_round_trip(fn):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "run.pt"
            for value in (1.0, 2.0):  # the second save must replace the first
                run(fn, {"theta": torch.full((3,), value), "step": int(value)}, path, returns=False)
                if not path.is_file():
                    raise ExerciseError(f"after save_atomically(state, path) there is no file at path; the folder "
                                        f"holds {_files(tmp)}")
                state = torch.load(path, weights_only=True)
                if not torch.equal(state["theta"], torch.full((3,), value)) or state["step"] != int(value):
                    raise ExerciseError(f"save {int(value)}: torch.load(path) does not give back the state that was saved")
            if _files(tmp) != ["run.pt"]:
                raise ExerciseError(f"after saving, the folder holds {_files(tmp)}: rename the temporary file to path "
                                    "(os.replace), do not copy it or leave it behind")

    @isolated
    def check_failed_write_keeps_old_checkpoint(fn):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "run.pt"
            torch.save({"theta": torch.ones(3)}, path)  # the last good checkpoint
            torn = {"theta": torch.zeros(3), "sampler": lambda g: g}  # torch.save fails half-way: a lambda cannot be pickled
            try:
                fn(torn, path)
            except NotImplementedError:
                raise
            except Exception:
                pass
            else:
                raise ExerciseError("torch.save cannot write a lambda, yet save_atomically returned normally: let the "
                                    "error propagate (the training loop must know the checkpoint was not written)")
            try:
                old = torch.load(path, weights_only=True)
            except Exception as e:
                raise ExerciseError("the write failed half-way and the old checkpoint is now unreadable "
                                    f"({type(e).__name__}): you wrote into path itself. Write a temporary file in the "
                                    "same folder and os.replace it over path only once it is complete") from None
            if not torch.equal(old["theta"], torch.ones(3)):
                raise ExerciseError("a failed save changed the old checkpoint's contents: write to a temporary file first")
            if _files(tmp) != ["run.pt"]:
                raise ExerciseError(f"a failed save left {_files(tmp)} in the folder: delete the temporary file when "
                                    "the write fails (try/finally), so failed saves do not pile up")

    @isolated
    def check_fsync_then_replace_in_same_folder(fn):
        events, real_fsync, real_replace, real_rename = [], os.fsync, os.replace, os.rename

        def fsync(fd):
            events.append(("fsync",))
            return real_fsync(fd)

        def replace(src, dst):
            events.append(("replace", Path(src).parent, Path(dst)))
            return real_replace(src, dst)

        def rename(src, dst):
            events.append(("rename",))
            return real_rename(src, dst)

        with tempfile.TemporaryDirectory() as tmp, mock.patch("os.fsync", fsync), mock.patch("os.replace", replace), \
                mock.patch("os.rename", rename):
            path = Path(tmp) / "run.pt"
            run(fn, {"theta": torch.ones(3)}, path, returns=False)
        kinds = [e[0] for e in events]
        if "replace" not in kinds:
            raise ExerciseError("no os.replace: " + ("os.rename fails on Windows when path exists; os.replace "
                                "overwrites atomically everywhere" if "rename" in kinds else "the temporary file must "
                                "be moved over path with os.replace (or Path.replace), the one atomic step"))
        if "fsync" not in kinds or kinds.index("fsync") > kinds.index("replace"):
            raise ExerciseError("flush and os.fsync(f.fileno()) the temporary file BEFORE os.replace: otherwise after a "
                                "power loss the rename can be on disk while the data is not")
        _, src_folder, dst = events[kinds.index("replace")]
        if src_folder.resolve() != Path(tmp).resolve() or dst.resolve() != path.resolve():
            raise ExerciseError(f"os.replace moved a file from {src_folder} to {dst}: put the temporary file next to "
                                "path (path.with_name(...)); across file systems a rename is a copy, not atomic")

    return [check_round_trip, check_failed_write_keeps_old_checkpoint, check_fsync_then_replace_in_same_folder]


# ----------------------------------------------------------------------------------------------
# every exercise of the course: key -> (title, reference, checks factory)


# ==============================================================================================
# ----------------------------------------------------------------------------------------------
# 07 · Beyond MAML, exercise 1: ANIL's inner loop, θ'_head = θ_head − α ∇θ_head L(θ_body, θ_head; support), θ_body unchanged

HEAD = "head."  # the head's entries of θ: "head.weight", "head.bias"

BODY_ADAPTED = (
    "the body was adapted too: that is MAML's inner loop. ANIL adapts only the head (the entries of θ whose "
    "names start with 'head.'); every other entry of θ' is θ's own tensor"
)
ANIL_FIRST_ORDER = (
    "the inner gradient was treated as a constant (no create_graph=True): that is first-order ANIL. Here ANIL is "
    "second order: the body's meta-gradient also flows through the head's inner gradient, which depends on the "
    "support features"
)


def anil_fixture(seed: int = 0):
    """A small float64 body + head network (tanh: smooth) and one 3-way task."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(OrderedDict(layer=nn.Linear(2, 5), act=nn.Tanh(), head=nn.Linear(5, 3))).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    sx, qx = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
    sy, qy = torch.arange(3).repeat(2), torch.arange(3).repeat(3)
    return model, params, sx, sy, qx, qy


def reference_anil_adapt(model, params, support_x, support_y, alpha, steps):
    """`steps` inner steps on the head's entries only, differentiable (second order)."""
    theta = dict(params)
    for _ in range(steps):
        head = {k: v for k, v in theta.items() if k.startswith(HEAD)}
        loss = F.cross_entropy(functional_call(model, theta, (support_x,)), support_y)
        grads = torch.autograd.grad(loss, list(head.values()), create_graph=True)
        theta = {**theta, **{k: v - alpha * g for (k, v), g in zip(head.items(), grads)}}
    return theta


def _hand_variants(model, params, sx, sy, alpha, steps):
    """θ' of the likely wrong answers: MAML's (all entries), the sign flipped, one step, first order."""
    def loop(names, sign=1.0, n=steps, create_graph=True):
        theta = dict(params)
        for _ in range(n):
            fast = {k: v for k, v in theta.items() if names(k)}
            loss = F.cross_entropy(functional_call(model, theta, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            theta = {**theta, **{k: v - sign * alpha * g for (k, v), g in zip(fast.items(), grads)}}
        return theta

    is_head = lambda k: k.startswith(HEAD)  # noqa: E731
    return {"maml": loop(lambda k: True), "uphill": loop(is_head, -1.0), "one step": loop(is_head, n=1),
            "first order": loop(is_head, create_graph=False)}


def anil_adapt_checks() -> list[Callable]:
    """07, exercise 1: ANIL's inner loop (second order), head only."""
    alpha, steps = 0.3, 2

    @isolated
    def check_head_only_and_by_hand(fn):
        model, params, sx, sy, _, _ = anil_fixture()
        r = run(fn, model, params, sx, sy, alpha, steps)
        out, params = r.out, r.args[1]
        if not isinstance(out, dict) or set(out) != set(params):
            raise ExerciseError(f"return a dict with θ's keys {sorted(params)} (the body's entries unchanged)")
        expected = reference_anil_adapt(model, params, sx, sy, alpha, steps)
        wrong = _hand_variants(model, params, sx, sy, alpha, steps)
        for k in params:
            if not k.startswith(HEAD):
                diagnose(as_tensor(out[k], f"θ'[{k!r}]"), params[k], [(wrong["maml"][k], BODY_ADAPTED)],
                         f"θ'[{k!r}] is a body entry: ANIL leaves it as θ's", rtol=1e-10, atol=1e-12)
        for k in params:
            if k.startswith(HEAD):
                diagnose(as_tensor(out[k], f"θ'[{k!r}]"), expected[k], [
                    (wrong["maml"][k], BODY_ADAPTED + " (the body's change also moved the head's gradient)"),
                    (wrong["uphill"][k], "θ' went uphill: θ'_head = θ_head − α ∇θ_head L, with a minus sign"),
                    (wrong["one step"][k], f"one inner step only: take `steps` ({steps}) steps, each from the last θ'"),
                ], f"θ'[{k!r}] differs from {steps} steps of θ_head − α ∇θ_head L(support) computed by hand",
                    rtol=1e-8, atol=1e-10)

    @isolated
    def check_second_order(fn):
        model, params, sx, sy, qx, qy = anil_fixture(1)
        r = run(fn, model, params, sx, sy, alpha, steps)
        params = r.args[1]
        leaves = list(params.values())

        def meta_grad(theta):
            loss = F.cross_entropy(functional_call(model, theta, (qx,)), qy)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(leaves, grads)])

        try:
            got = meta_grad({k: as_tensor(v, f"θ'[{k!r}]") for k, v in r.out.items()})
        except RuntimeError as e:
            raise ExerciseError("the query loss at your θ' has no graph back to θ: keep the head's update "
                                f"differentiable (no .detach(), no torch.no_grad()) ({e})") from e
        expected = meta_grad(reference_anil_adapt(model, params, sx, sy, alpha, steps))
        first = meta_grad(_hand_variants(model, params, sx, sy, alpha, steps)["first order"])
        diagnose(got, expected, [(first, ANIL_FIRST_ORDER)],
                 "the meta-gradient ∇θ L(θ'; query) through your θ' differs from ANIL's (second order)",
                 rtol=1e-7, atol=1e-10)

    return [check_head_only_and_by_hand, check_second_order]


# ----------------------------------------------------------------------------------------------
# 07, exercise 2: prototype logits, −‖φ(x) − c_k‖², c_k = the mean support embedding of class k

def reference_prototype_logits(support_emb, support_y, query_emb, n_way):
    protos = torch.stack([support_emb[support_y == k].mean(0) for k in range(n_way)])  # (n_way, d)
    return -((query_emb[:, None, :] - protos[None]) ** 2).sum(-1)  # (Q, n_way)


def prototype_logits_checks() -> list[Callable]:
    """07, exercise 2: ProtoNets' logits."""

    @isolated
    def check_by_hand(fn):
        # class 0: (0, 0) and (2, 0) -> c₀ = (1, 0); class 1: (0, 4) twice -> c₁ = (0, 4); labels out of order
        s = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
        y = torch.tensor([1, 0, 0, 1])
        q = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
        r = run(fn, s, y, q, 2)
        expected = torch.tensor([[-1.0, -10.0], [-10.0, -1.0]])  # ‖(1,1)−(1,0)‖² = 1, ‖(1,1)−(0,4)‖² = 10, ...
        sums = torch.stack([s[y == k].sum(0) for k in range(2)])
        diagnose(as_tensor(r.out, "the logits"), expected, [
            (-expected, "the sign is flipped: a closer prototype must give a LARGER logit, −‖φ(x) − c_k‖²"),
            (-(-expected).sqrt(), "the distance is not squared: ProtoNets use the squared Euclidean distance −‖φ(x) − c_k‖²"),
            (-((q[:, None] - sums[None]) ** 2).sum(-1), "the prototypes are sums: c_k is the MEAN embedding of class k"),
            (expected.T, "rows and columns swapped: return (query images, n_way)"),
            (-((q[:, None] - s.reshape(2, 2, 2).mean(1)[None]) ** 2).sum(-1),
             "the prototypes follow the order of the support set, not its labels: c_k is the mean of the embeddings "
             "whose label is k, e.g. support_emb[support_y == k].mean(0)"),
        ], "−‖φ(x) − c_k‖² with c₀ = (1, 0), c₁ = (0, 4) is [[−1, −10], [−10, −1]]", atol=1e-6)

    @isolated
    def check_batch_and_gradient(fn):
        g = torch.Generator().manual_seed(0)
        s = torch.randn(15, 8, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.arange(5).repeat(3)[torch.randperm(15, generator=g)]
        q = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
        r = run(fn, s, y, q, 5)
        got = as_tensor(r.out, "the logits")
        if got.shape != (10, 5):
            raise ExerciseError(f"the logits have shape {tuple(got.shape)}, expected (query images, n_way) = (10, 5)")
        by_order = "the prototypes follow the order of the support set, not its labels (here shuffled): c_k is " \
                   "the mean of the embeddings whose label is k, e.g. support_emb[support_y == k].mean(0)"
        d = lambda protos: -((q[:, None] - protos[None]) ** 2).sum(-1)  # noqa: E731
        diagnose(got, reference_prototype_logits(s, y, q, 5), [
            (lambda: d(s.reshape(5, 3, 8).mean(1)), by_order), (lambda: d(s.reshape(3, 5, 8).mean(0)), by_order),
        ], "differs from −‖φ(x) − c_k‖² on a random 5-way 3-shot task with shuffled labels", rtol=1e-8, atol=1e-10)
        if not got.requires_grad:
            raise ExerciseError("the logits carry no graph: the body is trained through them (no .detach() or no_grad)")

    return [check_by_hand, check_batch_and_gradient]


# ----------------------------------------------------------------------------------------------
# 07, exercise 3: ProtoMAML's head, W_k = 2 c_k, b_k = −‖c_k‖²

def reference_protomaml_head(prototypes):
    return 2 * prototypes, -(prototypes ** 2).sum(-1)


def protomaml_head_checks() -> list[Callable]:
    """07, exercise 3: the linear head that is the prototype classifier."""

    @isolated
    def check_by_hand(fn):
        c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
        r = run(fn, c)
        if not isinstance(r.out, (tuple, list)) or len(r.out) != 2:
            raise ExerciseError("return a pair (weight (n_way, d), bias (n_way,))")
        w, b = (as_tensor(v, name) for v, name in zip(r.out, ("weight", "bias")))
        diagnose(w, 2 * c, [(c, "W_k = 2 c_k: c_k·x alone gives −½‖x − c_k‖² (half the logits: another softmax)")],
                 "W_k = 2 c_k gives [[2, 0], [0, 4], [6, 8]]", atol=1e-6)
        squared = torch.tensor([1.0, 4.0, 25.0])
        diagnose(b, -squared, [(squared, "the bias has the wrong sign: b_k = −‖c_k‖²"),
                               (-squared.sqrt(), "the bias is not squared: b_k = −‖c_k‖²"),
                               (torch.zeros(3), "the bias is missing: b_k = −‖c_k‖²"),
                               (-squared / 2, "b_k = −‖c_k‖², not −½‖c_k‖² (with W_k = 2 c_k)")],
                 "b_k = −‖c_k‖² gives [−1, −4, −25]", atol=1e-6)

    @isolated
    def check_same_softmax_as_protonet(fn):
        g = torch.Generator().manual_seed(1)
        c, x = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
        w, b = run(fn, c).out
        linear = x @ as_tensor(w, "weight").T + as_tensor(b, "bias")
        expect_close(torch.softmax(linear, -1), torch.softmax(-torch.cdist(x, c) ** 2, -1),
                     "the linear head's softmax differs from the prototype classifier's: W x + b = −‖x − c‖² + ‖x‖²",
                     rtol=1e-8, atol=1e-10)

    return [check_by_hand, check_same_softmax_as_protonet]


EXERCISES: dict[str, tuple[str, Callable, Callable[[], list]]] = {
    "01.1": ("inner step by hand", reference_inner_step_by_hand, inner_step_by_hand_checks),
    "01.2": ("closed-form meta-gradient", reference_meta_gradient, meta_gradient_by_hand_checks),
    "01.3": ("meta-gradient by autograd (create_graph)", reference_meta_gradient, maml_meta_gradient_checks),
    "01.4": ("functional inner step (functional_call)", reference_functional_inner_step, functional_inner_step_checks),
    "02.1": ("inner_update with torch.func", reference_inner_update, inner_update_checks),
    "02.2": ("meta_loss_loop", reference_meta_loss_loop, meta_loss_loop_checks),
    "02.3": ("meta_loss_vmap", reference_meta_loss_vmap, meta_loss_vmap_checks),
    "02.4": ("meta_step", reference_meta_step, meta_step_checks),
    "03.1": ("the Reptile update", reference_reptile_update, reptile_update_checks),
    "03.2": ("the Hessian term", reference_hessian_term, hessian_term_checks),
    "04.1": ("the FOMAML meta-gradient", reference_fomaml_meta_gradient, fomaml_meta_gradient_checks),
    "04.2": ("the Reptile direction", reference_reptile_direction, reptile_direction_checks),
    "04.3": ("the Meta-SGD inner step", reference_meta_sgd_inner_step, meta_sgd_checks),
    "05.1": ("episode labels", reference_labels, episode_labels_checks),
    "05.2": ("accuracy with a confidence interval", reference_ci, accuracy_ci95_checks),
    "06.1": ("throughput in tasks/s", reference_throughput, throughput_checks),
    "06.2": ("vmap in_dims for a shared θ", reference_adapt_all, adapt_all_checks),
    "06.3": ("an atomic checkpoint save", None, save_atomically_checks),  # reference: mamlkit.atomic_save
    "07.1": ("ANIL's inner loop", reference_anil_adapt, anil_adapt_checks),
    "07.2": ("prototype logits", reference_prototype_logits, prototype_logits_checks),
    "07.3": ("ProtoMAML's head", reference_protomaml_head, protomaml_head_checks),
}


def exercise(key: str) -> tuple[str, Callable, list]:
    """(title, reference, checks) of exercise `key` ("01.1" ... "07.3")."""
    title, reference, checks = EXERCISES[key]
    if reference is None:
        import mamlkit

        reference = mamlkit.atomic_save
    return title, reference, checks()
