"""Every exercise's check names the mistake of each wrong answer in a catalogue, and passes every correct route.

The checks live in mamlkit/course/diagnose.py; the notebooks' check cells call them. For each of the 21 exercises:
at least three wrong answers (the copied blog's bugs where they apply: 1 a model rebuilt from parameter shapes,
2 a copy filled with load_state_dict, 3 an inner loop of SGD.step(), 4 one meta-update per task and random
labels), each fed to the exercise's check, whose message must name the mistake; then the correct routes the
notebook's text invites (vjp, jvp and a double autograd.grad for the Hessian term, ...) must pass.
"""
import copy
import math
import os
import re
import statistics
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp, vmap

import mamlkit
from mamlkit.course import diagnose as dg
from mamlkit.course.exercises import ExerciseError, check_exercise, count_exercises
from mamlkit.widgets import toy2d

ROOT = Path(__file__).resolve().parents[1]

GRAPH_CUT = r"graph back to θ was cut: deepcopy / load_state_dict / \.data"
IN_PLACE = r"your function changed θ.* in place"
MODEL_X = r"θ is ignored: model\(x\) runs the model with its OWN parameters"
MODEL_CHANGED = r"changed the model's own parameters in place .*graph back to θ was cut"
SWAPPED = r"support and query are swapped"
AT_THETA = r"evaluated at θ, before adaptation"


def L(theta, X, y):
    return ((X @ theta - y) ** 2).mean()


# ==============================================================================================
# 01 · MAML from its equations

def step_right(theta, X_s, y_s, alpha):
    n = X_s.shape[0]
    return theta - alpha * 2.0 / n * X_s.T @ (X_s @ theta - y_s)


def step_autograd(theta, X_s, y_s, alpha):  # not the exercise's route, but a correct answer
    t = theta.detach().requires_grad_()
    (g,) = torch.autograd.grad(L(t, X_s, y_s), t)
    return theta - alpha * g


def step_in_place(theta, X_s, y_s, alpha):
    theta -= alpha * 2.0 / X_s.shape[0] * X_s.T @ (X_s @ theta - y_s)
    return theta


def step_uphill(theta, X_s, y_s, alpha):
    return theta + alpha * 2.0 / X_s.shape[0] * X_s.T @ (X_s @ theta - y_s)


def step_sum_reduced(theta, X_s, y_s, alpha):
    return theta - alpha * 2.0 * X_s.T @ (X_s @ theta - y_s)


def step_no_factor_2(theta, X_s, y_s, alpha):
    return theta - alpha / X_s.shape[0] * X_s.T @ (X_s @ theta - y_s)


def step_no_transpose(theta, X_s, y_s, alpha):
    return theta - alpha * 2.0 / X_s.shape[0] * X_s @ (X_s @ theta - y_s)


X_S_GLOBAL, Y_S_GLOBAL, _, _ = dg.linear_task(1)  # the notebook's global task


def step_global_task(theta, X_s, y_s, alpha):
    return step_right(theta, X_S_GLOBAL, Y_S_GLOBAL, alpha)


def step_no_return(theta, X_s, y_s, alpha):
    theta - alpha * 2.0 / X_s.shape[0] * X_s.T @ (X_s @ theta - y_s)


def _grad_q(point, X_q, y_q):
    return 2.0 / X_q.shape[0] * X_q.T @ (X_q @ point - y_q)


def mg_right(theta, X_s, y_s, X_q, y_q, alpha):
    n_s = X_s.shape[0]
    H_s = 2.0 / n_s * X_s.T @ X_s
    adapted = theta - alpha * 2.0 / n_s * X_s.T @ (X_s @ theta - y_s)
    return (torch.eye(theta.shape[0], dtype=theta.dtype) - alpha * H_s) @ _grad_q(adapted, X_q, y_q)


def mg_first_order(theta, X_s, y_s, X_q, y_q, alpha):
    return _grad_q(step_right(theta, X_s, y_s, alpha), X_q, y_q)


def mg_at_theta(theta, X_s, y_s, X_q, y_q, alpha):
    return _grad_q(theta, X_q, y_q)


def mg_swapped(theta, X_s, y_s, X_q, y_q, alpha):
    return mg_right(theta, X_q, y_q, X_s, y_s, alpha)


def mg_query_hessian(theta, X_s, y_s, X_q, y_q, alpha):
    H_q = 2.0 / X_q.shape[0] * X_q.T @ X_q
    return (torch.eye(3, dtype=theta.dtype) - alpha * H_q) @ mg_first_order(theta, X_s, y_s, X_q, y_q, alpha)


def mg_sum_reduced(theta, X_s, y_s, X_q, y_q, alpha):
    adapted = theta - alpha * 2.0 * X_s.T @ (X_s @ theta - y_s)
    return (torch.eye(3, dtype=theta.dtype) - alpha * 2.0 * X_s.T @ X_s) @ (2.0 * X_q.T @ (X_q @ adapted - y_q))


def mg_sign(theta, X_s, y_s, X_q, y_q, alpha):
    H_s = 2.0 / X_s.shape[0] * X_s.T @ X_s
    return (torch.eye(3, dtype=theta.dtype) + alpha * H_s) @ mg_first_order(theta, X_s, y_s, X_q, y_q, alpha)


def _maml_autograd(create_graph=True, wrt="theta", cut=None, query_at=None):
    def maml_meta_gradient(theta, X_s, y_s, X_q, y_q, alpha):
        t = theta.detach().clone().requires_grad_()
        (g_s,) = torch.autograd.grad(L(t, X_s, y_s), t, create_graph=create_graph)
        base = {"data": t.data, "detach": t.detach()}.get(cut, t)
        t_prime = base - alpha * g_s
        if cut == "detach_prime":
            t_prime = t_prime.detach().requires_grad_()
        point = t if query_at == "theta" else t_prime
        (meta_grad,) = torch.autograd.grad(L(point, X_q, y_q), t_prime if wrt == "theta_prime" else t)
        return meta_grad
    return maml_meta_gradient


def maml_by_func(theta, X_s, y_s, X_q, y_q, alpha):  # torch.func: another correct route
    def meta_objective(t):
        return L(t - alpha * grad(L)(t, X_s, y_s), X_q, y_q)
    return grad(meta_objective)(theta)


def fis_right(model, params, x, y, alpha, loss_fn):
    loss = loss_fn(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {name: p - alpha * g for (name, p), g in zip(params.items(), grads)}


def fis_func_grad(model, params, x, y, alpha, loss_fn):
    g = grad(lambda p: loss_fn(functional_call(model, p, (x,)), y))(params)
    return {k: params[k] - alpha * g[k] for k in params}


def fis_blog_clone(model, params, x, y, alpha, loss_fn):
    """Blog bugs 2 and 3: a deepcopy filled with load_state_dict, one SGD.step()."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(params)
    optimizer = torch.optim.SGD(clone.parameters(), lr=alpha)
    optimizer.zero_grad()
    loss_fn(clone(x), y).backward()
    optimizer.step()
    return dict(clone.named_parameters())


def fis_blog_sgd_on_model(model, params, x, y, alpha, loss_fn):
    """Blog bug 3 without the clone: SGD.step() on the model itself."""
    optimizer = torch.optim.SGD(model.parameters(), lr=alpha)
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
    return dict(model.named_parameters())


def fis_blog_shapes(model, params, x, y, alpha, loss_fn):
    """Blog bug 1: a clone built from the parameters' shapes."""
    clone = type(model)(*[p.shape for p in model.parameters()])
    return dict(clone.named_parameters())


def fis_model_x(model, params, x, y, alpha, loss_fn):
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return {name: p - alpha * g for (name, p), g in zip(params.items(), grads)}


def fis_no_create_graph(model, params, x, y, alpha, loss_fn):
    grads = torch.autograd.grad(loss_fn(functional_call(model, params, (x,)), y), list(params.values()))
    return {name: p - alpha * g for (name, p), g in zip(params.items(), grads)}


def fis_detached(model, params, x, y, alpha, loss_fn):
    return {k: v.detach() for k, v in fis_right(model, params, x, y, alpha, loss_fn).items()}


# ==============================================================================================
# 02 · sinusoid regression

def iu_right(model, params, x, y, alpha):
    g = grad(lambda p: F.mse_loss(functional_call(model, p, (x,)), y))(params)
    return {k: params[k] - alpha * g[k] for k in params}


def iu_model_x(model, params, x, y, alpha):
    g = grad(lambda p: F.mse_loss(model(x), y))(params)
    return {k: params[k] - alpha * g[k] for k in params}


def iu_blog_clone(model, params, x, y, alpha):
    clone = copy.deepcopy(model)
    clone.load_state_dict(params)
    optimizer = torch.optim.SGD(clone.parameters(), lr=alpha)
    optimizer.zero_grad()
    F.mse_loss(clone(x), y).backward()
    optimizer.step()
    return dict(clone.named_parameters())


def iu_autograd(model, params, x, y, alpha):  # right values and second order, but not vmap-able
    grads = torch.autograd.grad(F.mse_loss(functional_call(model, params, (x,)), y), list(params.values()),
                                create_graph=True)
    return {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}


def iu_no_create_graph(model, params, x, y, alpha):
    grads = torch.autograd.grad(F.mse_loss(functional_call(model, params, (x,)), y), list(params.values()))
    return {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}


def iu_sum_reduced(model, params, x, y, alpha):
    g = grad(lambda p: F.mse_loss(functional_call(model, p, (x,)), y, reduction="sum"))(params)
    return {k: params[k] - alpha * g[k] for k in params}


def iu_uphill(model, params, x, y, alpha):
    g = grad(lambda p: F.mse_loss(functional_call(model, p, (x,)), y))(params)
    return {k: params[k] + alpha * g[k] for k in params}


inner_update = dg.reference_inner_update  # what the notebook's later exercises call


def _tasks(batch):
    return zip(*batch.tensors())


def ml_right(model, params, batch, alpha):
    losses = [F.mse_loss(functional_call(model, inner_update(model, params, sx, sy, alpha), (qx,)), qy)
              for sx, sy, qx, qy in _tasks(batch)]
    return torch.stack(losses).mean()


def ml_vmap(model, params, batch, alpha):
    def task_loss(sx, sy, qx, qy):
        return F.mse_loss(functional_call(model, inner_update(model, params, sx, sy, alpha), (qx,)), qy)
    return vmap(task_loss)(*batch.tensors()).mean()


def ml_sum(model, params, batch, alpha):
    return sum(F.mse_loss(functional_call(model, inner_update(model, params, sx, sy, alpha), (qx,)), qy)
               for sx, sy, qx, qy in _tasks(batch))


def ml_at_theta(model, params, batch, alpha):
    return torch.stack([F.mse_loss(functional_call(model, params, (qx,)), qy) for _, _, qx, qy in _tasks(batch)]).mean()


def ml_model_x(model, params, batch, alpha):
    return torch.stack([F.mse_loss(model(qx), qy) for _, _, qx, qy in _tasks(batch)]).mean()


def ml_swapped(model, params, batch, alpha):
    return torch.stack([F.mse_loss(functional_call(model, inner_update(model, params, qx, qy, alpha), (sx,)), sy)
                        for sx, sy, qx, qy in _tasks(batch)]).mean()


def ml_judged_on_support(model, params, batch, alpha):
    return torch.stack([F.mse_loss(functional_call(model, inner_update(model, params, sx, sy, alpha), (sx,)), sy)
                        for sx, sy, qx, qy in _tasks(batch)]).mean()


def ml_blog_clone(model, params, batch, alpha):
    losses = []
    for sx, sy, qx, qy in _tasks(batch):
        clone = copy.deepcopy(model)
        clone.load_state_dict({k: v.detach() for k, v in params.items()})
        optimizer = torch.optim.SGD(clone.parameters(), lr=alpha)
        optimizer.zero_grad()
        F.mse_loss(clone(sx), sy).backward()
        optimizer.step()
        losses.append(F.mse_loss(clone(qx), qy))
    return torch.stack(losses).mean()


def ml_first_order(model, params, batch, alpha):
    losses = []
    for sx, sy, qx, qy in _tasks(batch):
        adapted = {k: v.detach().requires_grad_() for k, v in inner_update(model, params, sx, sy, alpha).items()}
        adapted = {k: params[k] + (v - params[k]).detach() for k, v in adapted.items()}  # dθ'/dθ = I
        losses.append(F.mse_loss(functional_call(model, adapted, (qx,)), qy))
    return torch.stack(losses).mean()


def ml_vmap_no_mean(model, params, batch, alpha):
    def task_loss(sx, sy, qx, qy):
        return F.mse_loss(functional_call(model, inner_update(model, params, sx, sy, alpha), (qx,)), qy)
    return vmap(task_loss)(*batch.tensors())


meta_loss_vmap = dg.reference_meta_loss_vmap


def ms_right(model, params, optimizer, batch, alpha):
    optimizer.zero_grad()
    loss = meta_loss_vmap(model, params, batch, alpha)
    loss.backward()
    optimizer.step()
    return loss.item()


def ms_no_zero_grad(model, params, optimizer, batch, alpha):
    loss = meta_loss_vmap(model, params, batch, alpha)
    loss.backward()
    optimizer.step()
    return loss.item()


def ms_no_step(model, params, optimizer, batch, alpha):
    optimizer.zero_grad()
    loss = meta_loss_vmap(model, params, batch, alpha)
    loss.backward()
    return loss.item()


def ms_zero_grad_after_backward(model, params, optimizer, batch, alpha):
    loss = meta_loss_vmap(model, params, batch, alpha)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


def ms_one_update_per_task(model, params, optimizer, batch, alpha):
    """Blog bug 4: a meta-update for every task."""
    losses = []
    for i in range(batch.support_x.shape[0]):
        one = type(batch)(*(t[i:i + 1] for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                                                   batch.amplitude, batch.phase)))
        optimizer.zero_grad()
        loss = meta_loss_vmap(model, params, one, alpha)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def ms_blog_clone(model, params, optimizer, batch, alpha):
    """Blog bug 2: the meta-loss of a copy filled with load_state_dict."""
    clone = copy.deepcopy(model)
    clone.load_state_dict(model.state_dict())
    loss = meta_loss_vmap(clone, dict(clone.named_parameters()), batch, alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def ms_returns_tensor(model, params, optimizer, batch, alpha):
    optimizer.zero_grad()
    loss = meta_loss_vmap(model, params, batch, alpha)
    loss.backward()
    optimizer.step()
    return loss


def ms_loss_after(model, params, optimizer, batch, alpha):
    ms_right(model, params, optimizer, batch, alpha)
    return meta_loss_vmap(model, params, batch, alpha).item()


# ==============================================================================================
# 03 · the loops made visible

def hv_vjp(support_loss, theta, v, inner_lr):
    _, hvp_fn = vjp(grad(support_loss), theta)
    (hvp,) = hvp_fn(v)
    return -inner_lr * hvp


def hv_jvp(support_loss, theta, v, inner_lr):
    _, hvp = jvp(grad(support_loss), (theta,), (v,))
    return -inner_lr * hvp


def hv_double_autograd(support_loss, theta, v, inner_lr):
    t = theta.detach().requires_grad_()
    (g,) = torch.autograd.grad(support_loss(t), t, create_graph=True)
    (hvp,) = torch.autograd.grad(g, t, grad_outputs=v)
    return -inner_lr * hvp


def hv_double_autograd_dot(support_loss, theta, v, inner_lr):
    t = theta.detach().requires_grad_()
    (g,) = torch.autograd.grad(support_loss(t), t, create_graph=True)
    (hvp,) = torch.autograd.grad(g @ v, t)
    return -inner_lr * hvp


def hv_autograd_functional(support_loss, theta, v, inner_lr):
    return -inner_lr * torch.autograd.functional.hvp(support_loss, theta, v)[1]


def hv_jacfwd(support_loss, theta, v, inner_lr):
    return -inner_lr * torch.func.jacfwd(grad(support_loss))(theta) @ v


def hv_no_minus(support_loss, theta, v, inner_lr):
    return -hv_vjp(support_loss, theta, v, inner_lr)


def hv_no_alpha(support_loss, theta, v, inner_lr):
    return hv_vjp(support_loss, theta, v, 1.0)


def hv_tuple(support_loss, theta, v, inner_lr):
    _, hvp_fn = vjp(grad(support_loss), theta)
    return -inner_lr * hvp_fn(v)


def hv_gradient(support_loss, theta, v, inner_lr):
    return -inner_lr * grad(support_loss)(theta)


def hv_ones(support_loss, theta, v, inner_lr):
    return hv_vjp(support_loss, theta, torch.ones_like(v), inner_lr)


def hv_in_place(support_loss, theta, v, inner_lr):
    _, hvp_fn = vjp(grad(support_loss), theta)
    return hvp_fn(v.mul_(-inner_lr))[0]


# ==============================================================================================
# 04 · FOMAML

def fo_right(model, params, support_x, support_y, query_x, query_y, inner_lr, inner_steps):
    tasks = support_x.shape[0]
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(tasks):
        fast = {k: p.detach().requires_grad_() for k, p in params.items()}
        for _ in range(inner_steps):
            loss = F.mse_loss(functional_call(model, fast, (support_x[i],)), support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: (p - inner_lr * g).detach().requires_grad_() for (k, p), g in zip(fast.items(), grads)}
        query_loss = F.mse_loss(functional_call(model, fast, (query_x[i],)), query_y[i])
        for k, g in zip(fast, torch.autograd.grad(query_loss, list(fast.values()))):
            total[k] += g / tasks
    return total


def fo_sgd_on_copies(model, params, support_x, support_y, query_x, query_y, inner_lr, inner_steps):
    """A deepcopy per task and SGD.step(): first order by construction, a correct FOMAML."""
    tasks = support_x.shape[0]
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(tasks):
        clone = copy.deepcopy(model)
        clone.load_state_dict({k: v.detach() for k, v in params.items()})
        optimizer = torch.optim.SGD(clone.parameters(), lr=inner_lr)
        for _ in range(inner_steps):
            optimizer.zero_grad()
            F.mse_loss(clone(support_x[i]), support_y[i]).backward()
            optimizer.step()
        optimizer.zero_grad()
        F.mse_loss(clone(query_x[i]), query_y[i]).backward()
        for k, p in clone.named_parameters():
            total[k] += p.grad / tasks
    return total


def fo_maml(model, params, support_x, support_y, query_x, query_y, inner_lr, inner_steps):
    loss = mamlkit.meta_loss(model, params, support_x, support_y, query_x, query_y, loss_fn=F.mse_loss,
                             inner_lr=inner_lr, steps=inner_steps)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def fo_summed(*args):
    return {k: v * args[2].shape[0] for k, v in fo_right(*args).items()}


def fo_one_step(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    return fo_right(model, params, sx, sy, qx, qy, inner_lr, 1)


def fo_swapped(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    return fo_right(model, params, qx, qy, sx, sy, inner_lr, inner_steps)


def fo_at_theta(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    return fo_right(model, params, sx, sy, qx, qy, inner_lr, 0)


def fo_blog_sgd_on_model(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    """Blog bug 3: the inner loop as SGD.step() on the model itself (θ is overwritten)."""
    tasks = sx.shape[0]
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for i in range(tasks):
        for _ in range(inner_steps):
            optimizer.zero_grad()
            F.mse_loss(model(sx[i]), sy[i]).backward()
            optimizer.step()
        optimizer.zero_grad()
        F.mse_loss(model(qx[i]), qy[i]).backward()
        for k, p in model.named_parameters():
            total[k] += p.grad / tasks
    return total


def fo_data_in_place(model, params, sx, sy, qx, qy, inner_lr, inner_steps):
    """The inner step written into params.data: θ is overwritten."""
    out = fo_right(model, params, sx, sy, qx, qy, inner_lr, inner_steps)
    for k, p in params.items():
        p.data -= inner_lr * out[k]
    return out


def rd_right(params, adapted, inner_lr):
    return {k: ((p.detach() - adapted[k].detach()) / inner_lr).mean(dim=0) for k, p in params.items()}


def rd_dim1(params, adapted, inner_lr):
    return {k: ((p.detach() - adapted[k].detach()) / inner_lr).mean(dim=1) for k, p in params.items()}


def rd_sign(params, adapted, inner_lr):
    return {k: ((adapted[k].detach() - p.detach()) / inner_lr).mean(dim=0) for k, p in params.items()}


def rd_sum(params, adapted, inner_lr):
    return {k: ((p.detach() - adapted[k].detach()) / inner_lr).sum(dim=0) for k, p in params.items()}


def rd_no_alpha(params, adapted, inner_lr):
    return {k: (p.detach() - adapted[k].detach()).mean(dim=0) for k, p in params.items()}


def rd_attached(params, adapted, inner_lr):
    return {k: ((p - adapted[k]) / inner_lr).mean(dim=0) for k, p in params.items()}


def _msgd_grads(model, params, x, y, loss_fn, create_graph=True):
    loss = loss_fn(functional_call(model, params, (x,)), y)
    return torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)


def msgd_right(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    return {k: p - alpha[k] * g for (k, p), g in zip(params.items(), grads)}


def msgd_func_grad(model, params, alpha, x, y, loss_fn):
    g = grad(lambda p: loss_fn(functional_call(model, p, (x,)), y))(params)
    return {k: params[k] - alpha[k] * g[k] for k in params}


def msgd_mamlkit(model, params, alpha, x, y, loss_fn):
    return mamlkit.adapt(model, params, x, y, loss_fn=loss_fn, inner_lr=alpha, steps=1)


def msgd_uphill(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    return {k: p + alpha[k] * g for (k, p), g in zip(params.items(), grads)}


def msgd_scalar_alpha(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    return {k: p - alpha[k].mean() * g for (k, p), g in zip(params.items(), grads)}


def msgd_first_order(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn, create_graph=False)
    return {k: p - alpha[k] * g for (k, p), g in zip(params.items(), grads)}


def msgd_detached_alpha(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    return {k: p - alpha[k].detach() * g for (k, p), g in zip(params.items(), grads)}


def msgd_alpha_data(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    return {k: p - alpha[k].data * g for (k, p), g in zip(params.items(), grads)}


def msgd_theta_in_place(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn, create_graph=False)
    with torch.no_grad():
        for (k, p), g in zip(params.items(), grads):
            p.sub_(alpha[k] * g)
    return params


def msgd_alpha_in_place(model, params, alpha, x, y, loss_fn):
    grads = _msgd_grads(model, params, x, y, loss_fn)
    with torch.no_grad():
        for a in alpha.values():
            a.clamp_(min=0.0, max=0.02)  # "keep α small": overwrites the caller's α
    return {k: p - alpha[k] * g for (k, p), g in zip(params.items(), grads)}


def msgd_model_x(model, params, alpha, x, y, loss_fn):
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return {k: p - alpha[k] * g for (k, p), g in zip(params.items(), grads)}


# ==============================================================================================
# 05 · few-shot Omniglot

def el_right(image_classes, chosen):
    return (image_classes[:, None] == chosen[None, :]).long().argmax(dim=1)


def el_loop(image_classes, chosen):
    return torch.tensor([chosen.tolist().index(c) for c in image_classes.tolist()])


def el_rank(image_classes, chosen):
    return torch.searchsorted(chosen.sort().values, image_classes)


def el_random(image_classes, chosen):
    """Blog bug 4: random labels unrelated to the images."""
    return torch.randint(0, len(chosen), image_classes.shape)


def el_wrong_dim(image_classes, chosen):
    return (image_classes[:, None] == chosen[None, :]).long().argmax(dim=0)


def el_index_chosen(image_classes, chosen):
    return chosen[image_classes]


def el_class_ids(image_classes, chosen):
    return image_classes.clone()


def el_first_appearance(image_classes, chosen):
    return torch.tensor([list(dict.fromkeys(image_classes.tolist())).index(c) for c in image_classes.tolist()])


def ci_right(correct):
    per_task = correct.float().mean(dim=1)
    return per_task.mean().item(), 1.96 * per_task.std(unbiased=True).item() / math.sqrt(per_task.numel())


def ci_mamlkit(correct):
    return mamlkit.mean_ci95(correct.float().mean(dim=1))


def ci_tensors(correct):
    per_task = correct.double().mean(dim=1)
    return per_task.mean(), 1.96 * per_task.std() / per_task.numel() ** 0.5


def ci_pooled(correct):
    c = correct.float()
    return c.mean().item(), 1.96 * c.std().item() / math.sqrt(c.numel())


def ci_population(correct):
    per_task = correct.float().mean(dim=1)
    return per_task.mean().item(), 1.96 * per_task.std(unbiased=False).item() / math.sqrt(per_task.numel())


def ci_standard_error(correct):
    per_task = correct.float().mean(dim=1)
    return per_task.mean().item(), per_task.std().item() / math.sqrt(per_task.numel())


def ci_dim0(correct):
    per = correct.float().mean(dim=0)
    return per.mean().item(), 1.96 * per.std().item() / math.sqrt(per.numel())


# ==============================================================================================
# 06 · MAML at scale

def _timed(step, reps, warmup, clock, before=True, after=True, summary=statistics.median, use_cuda=False, sync=None):
    for _ in range(warmup):
        step()
    do_sync = torch.cuda.synchronize if use_cuda else sync
    seconds = []
    for _ in range(reps):
        if before:
            do_sync()
        start = clock()
        step()
        if after:
            do_sync()
        seconds.append(clock() - start)
    return summary(seconds)


def tp_right(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, warmup, clock, sync=sync)


def tp_no_sync_before_start(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, warmup, clock, before=False, sync=sync)


def tp_no_sync_before_stop(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, warmup, clock, after=False, sync=sync)


def tp_cuda_synchronize(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, warmup, clock, use_cuda=True)


def tp_mean(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, warmup, clock, summary=statistics.mean, sync=sync)


def tp_steps_per_second(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return 1 / _timed(step, reps, warmup, clock, sync=sync)


def tp_no_warmup(step, meta_batch_size, *, reps=3, warmup=1, clock=time.perf_counter, sync=lambda: None):
    return meta_batch_size / _timed(step, reps, 0, clock, sync=sync)


def _adapt_all(in_dims, detach=False):
    def adapt_all(model, params, support_x, support_y, *, inner_lr, loss_fn=F.mse_loss):
        def one_task(p, sx, sy):
            g = grad(lambda p: loss_fn(functional_call(model, p, (sx,)), sy))(p)
            return {k: p[k] - inner_lr * g[k] for k in p}

        theta = {k: v.detach() for k, v in params.items()} if detach else params
        return vmap(one_task, in_dims=in_dims)(theta, support_x, support_y)
    return adapt_all


def aa_loop(model, params, support_x, support_y, *, inner_lr, loss_fn=F.mse_loss):
    adapted = [mamlkit.adapt(model, params, support_x[i], support_y[i], loss_fn=loss_fn, inner_lr=inner_lr)
               for i in range(support_x.shape[0])]
    return {k: torch.stack([a[k] for a in adapted]) for k in params}


def aa_per_task_copies(model, params, support_x, support_y, *, inner_lr, loss_fn=F.mse_loss):
    """A copy of the model per task (deepcopy): the graph back to θ is cut."""
    adapted = []
    for i in range(support_x.shape[0]):
        clone = copy.deepcopy(model)
        p = {k: v.detach().requires_grad_() for k, v in clone.named_parameters()}
        adapted.append(mamlkit.adapt(clone, p, support_x[i], support_y[i], loss_fn=loss_fn, inner_lr=inner_lr))
    return {k: torch.stack([a[k] for a in adapted]) for k in params}


def sa_right(state, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sa_direct(state, path):
    torch.save(state, path)


def sa_no_fsync(state, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sa_rename(state, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sa_swallows_errors(state, path):
    try:
        sa_right(state, path)
    except Exception:
        pass


def sa_leaves_debris(state, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ==============================================================================================
# the catalogue: exercise -> ([(wrong answer, regex naming its mistake)], [correct routes])

# -- 07 · Beyond MAML: ANIL's inner loop, prototype logits, ProtoMAML's head

def anil_features_once(model, params, x, y, alpha, steps):
    # the efficient route: the body's features once, then SGD on the head module alone
    body = {k: v for k, v in params.items() if not k.startswith("head.")}
    head = {k[5:]: v for k, v in params.items() if k.startswith("head.")}
    feats = functional_call(model[:-1], body, (x,))
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model[-1], head, (feats,)), y)
        g = torch.autograd.grad(loss, list(head.values()), create_graph=True)
        head = {k: v - alpha * gi for (k, v), gi in zip(head.items(), g)}
    return {**params, **{"head." + k: v for k, v in head.items()}}


def anil_variant(*, all_entries=False, sign=1.0, steps=None, create_graph=True, detach=False):
    def fn(model, params, x, y, alpha, n):
        theta = dict(params)
        for _ in range(n if steps is None else steps):
            fast = {k: v for k, v in theta.items() if all_entries or k.startswith("head.")}
            loss = F.cross_entropy(functional_call(model, theta, (x,)), y)
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            theta = {**theta, **{k: v - sign * alpha * gi for (k, v), gi in zip(fast.items(), g)}}
        return {k: v.detach() for k, v in theta.items()} if detach else theta
    return fn


def protos_by_onehot(s, y, q, n_way):
    onehot = F.one_hot(y, n_way).to(s.dtype)
    return -torch.cdist(q, onehot.T @ s / onehot.sum(0)[:, None]) ** 2


def protos_by_position(s, y, q, n_way):  # assumes the support set sorted by class
    c = s.reshape(n_way, -1, s.shape[-1]).mean(1)
    return -((q[:, None] - c[None]) ** 2).sum(-1)


def protos_class_sums(s, y, q, n_way):
    return -torch.cdist(q, torch.stack([s[y == k].sum(0) for k in range(n_way)])) ** 2


def protos_unsquared(s, y, q, n_way):
    return -torch.cdist(q, torch.stack([s[y == k].mean(0) for k in range(n_way)]))


def protos_positive(s, y, q, n_way):
    return torch.cdist(q, torch.stack([s[y == k].mean(0) for k in range(n_way)])) ** 2


def protos_detached(s, y, q, n_way):
    return dg.reference_prototype_logits(s.detach(), y, q.detach(), n_way)



CATALOGUE = {
    "01.1": ([
        (step_in_place, r"your function changed θ in place"),
        (step_uphill, r"went uphill.*minus sign"),
        (step_sum_reduced, r"factor n: .*sum-reduced loss"),
        (step_no_factor_2, r"factor 2"),
        (step_no_transpose, r"shape mismatch.*\(2/n\) Xᵀ\(Xθ − y\) is \(d,\)"),
        (step_global_task, r"used the global X_s / y_s"),
        (step_no_return, r"returned None"),
    ], [step_right, step_autograd]),
    "01.2": ([
        (mg_first_order, r"first-order gradient ∇L_q\(θ'\).*lacks the \(I − α H_s\)"),
        (mg_at_theta, r"∇L_q\(θ\).*" + AT_THETA),
        (mg_swapped, SWAPPED),
        (mg_query_hessian, r"Hessian .* is the SUPPORT loss's"),
        (mg_sum_reduced, r"sum-reduced losses"),
        (mg_sign, r"sign error"),
    ], [mg_right]),
    "01.3": ([
        (_maml_autograd(create_graph=False), r"lacks the Hessian term.*create_graph=True"),
        (_maml_autograd(wrt="theta_prime"), r"differentiated with respect to θ' \(the adapted parameters\) instead of θ"),
        (_maml_autograd(cut="data"), r"only the Hessian term .*θ\.data.*" + GRAPH_CUT),
        (_maml_autograd(cut="detach_prime"), GRAPH_CUT),
        (_maml_autograd(query_at="theta"), AT_THETA),
    ], [_maml_autograd(), maml_by_func]),
    "01.4": ([
        (fis_blog_clone, GRAPH_CUT),
        (fis_blog_sgd_on_model, MODEL_CHANGED),
        (fis_blog_shapes, r"rebuilt the model from its parameter shapes.*bug 1"),
        (fis_model_x, MODEL_X),
        (fis_no_create_graph, r"lacks the Hessian term.*create_graph=True"),
        (fis_detached, GRAPH_CUT),
    ], [fis_right, fis_func_grad]),
    "02.1": ([
        (iu_model_x, MODEL_X),
        (iu_blog_clone, GRAPH_CUT),
        (iu_autograd, r"fails under vmap.*torch\.func\.grad"),
        (iu_no_create_graph, r"lacks the Hessian term"),
        (iu_sum_reduced, r"sum-reduced support loss"),
        (iu_uphill, r"went uphill"),
    ], [iu_right]),
    "02.2": ([
        (ml_sum, r"B = 3 times too large: a sum over the tasks"),
        (ml_at_theta, r"query loss at θ: the meta-loss was " + AT_THETA),
        (ml_model_x, MODEL_X + r".*before adaptation"),
        (ml_swapped, SWAPPED),
        (ml_judged_on_support, r"judged θ' on the support set"),
        (ml_blog_clone, GRAPH_CUT),
        (ml_first_order, r"first order"),
    ], [ml_right, ml_vmap]),
    "02.3": ([
        (ml_vmap_no_mean, r"shape \(25,\): return ONE number.*\.mean\(\)"),
        (ml_sum, r"B = 25 times too large"),
        (ml_at_theta, AT_THETA),
        (ml_swapped, SWAPPED),
    ], [ml_vmap, ml_right]),
    "02.4": ([
        (ms_no_zero_grad, r"zero_grad\(\) was never called"),
        (ms_no_step, r"θ did not change: call optimizer\.step\(\)"),
        (ms_zero_grad_after_backward, r"zero_grad\(\) ran between loss\.backward\(\) and optimizer\.step\(\)"),
        (ms_one_update_per_task, r"one meta-update per task \(the copied blog's bug 4\)"),
        (ms_blog_clone, r"no gradient reached θ: the " + GRAPH_CUT),
        (ms_returns_tensor, r"Python float"),
        (ms_loss_after, r"meta-loss AFTER the update"),
    ], [ms_right]),
    "03.1": ([
        (lambda theta, adapted, epsilon: theta + epsilon * (adapted - theta).mean(dim=1), r"wrong dimension.*dim=0"),
        (lambda theta, adapted, epsilon: theta + epsilon * (adapted - theta).sum(dim=0), r"a sum over the tasks"),
        (lambda theta, adapted, epsilon: theta - epsilon * (adapted - theta).mean(dim=0), r"moved away"),
        (lambda theta, adapted, epsilon: theta + (adapted - theta).mean(dim=0), r"ε is missing"),
        (lambda theta, adapted, epsilon: theta.add_(epsilon * (adapted - theta).mean(dim=0)), IN_PLACE),
    ], [lambda theta, adapted, epsilon: theta + epsilon * (adapted - theta).mean(dim=0),
        lambda theta, adapted, epsilon: (1 - epsilon) * theta + epsilon * adapted.mean(dim=0)]),
    "03.2": ([
        (hv_no_minus, r"minus sign is missing"),
        (hv_no_alpha, r"α is missing"),
        (hv_tuple, r"return a TUPLE.*\(hvp,\) = hvp_fn\(v\)"),
        (hv_gradient, r"that is −α ∇L\(θ\), the gradient"),
        (hv_ones, r"vector of ones, not with v"),
        (hv_in_place, r"changed v in place"),
    ], [hv_vjp, hv_jvp, hv_double_autograd, hv_double_autograd_dot, hv_autograd_functional, hv_jacfwd]),
    "04.1": ([
        (fo_maml, r"MAML's meta-gradient \(with the Hessian term\)"),
        (fo_summed, r"summed over the 10 tasks"),
        (fo_one_step, r"only one inner step"),
        (fo_swapped, SWAPPED),
        (fo_at_theta, r"query gradient at θ"),
        (fo_blog_sgd_on_model, MODEL_CHANGED),
        (fo_data_in_place, r"your function changed θ\['weight'\], θ\['bias'\] in place"),
    ], [fo_right, fo_sgd_on_copies]),
    "04.2": ([
        (rd_dim1, r"wrong dimension.*dim=0"),
        (rd_sign, r"sign is flipped"),
        (rd_sum, r"summed over the tasks"),
        (rd_no_alpha, r"division by α is missing"),
        (rd_attached, r"detach the result"),
    ], [rd_right]),
    "04.3": ([
        (msgd_uphill, r"went uphill.*minus sign"),
        (msgd_scalar_alpha, r"a scalar α was used"),
        (msgd_first_order, r"first order: the inner gradient was taken without create_graph=True"),
        (msgd_detached_alpha, r"α gets no gradient: "),
        (msgd_alpha_data, r"α gets no gradient: "),
        (msgd_theta_in_place, r"your function changed θ\['0\.weight'\].* in place"),
        (msgd_alpha_in_place, r"your function changed alpha\['0\.weight'\].* in place"),
        (msgd_model_x, MODEL_X),
    ], [msgd_right, msgd_func_grad, msgd_mamlkit]),
    "05.1": ([
        (el_rank, r"ranks of the class ids"),
        (el_random, r"random labels.*'dummy tasks', its bug 4"),
        (el_wrong_dim, r"one label per image.*not dim=0"),
        (el_index_chosen, r"index out of range: class ids are global"),
        (el_class_ids, r"global class ids"),
        (el_first_appearance, r"order of first appearance"),
    ], [el_right, el_loop]),
    "05.2": ([
        (ci_pooled, r"12 query images as independent samples"),
        (ci_population, r"sample standard deviation, dividing by n − 1"),
        (ci_standard_error, r"standard error σ/√n"),
        (ci_dim0, r"mean over dim=0 averages each query position"),
    ], [ci_right, ci_mamlkit, ci_tensors]),
    "06.1": ([
        (tp_no_sync_before_start, r"clock started while earlier work was still queued.*sync\(\) BEFORE reading the start"),
        (tp_no_sync_before_stop, r"clock stopped before the queued work had run"),
        (tp_cuda_synchronize, r"sync. you were given, not torch\.cuda\.synchronize|sync\(\) was never called"),
        (tp_mean, r"MEAN of the timed calls.*median"),
        (tp_steps_per_second, r"meta-steps per second"),
        (tp_no_warmup, r"step\(\) ran 5 times for warmup=2, reps=5: run it `warmup` times untimed"),
    ], [tp_right]),
    "06.2": ([
        (_adapt_all(0), r"vmap refused the inputs.*None for θ"),
        (_adapt_all((None, 0, None)), r"support_y is not mapped"),
        (_adapt_all((None, None, 0)), r"support_x is not mapped"),
        (_adapt_all((None, 1, 1)), r"mapped dimension 1, the K support points"),
        (_adapt_all((None, 0, 0), detach=True), GRAPH_CUT),
        (aa_per_task_copies, GRAPH_CUT),
    ], [_adapt_all((None, 0, 0)), aa_loop]),
    "06.3": ([
        (sa_direct, r"old checkpoint is now unreadable.*you wrote into path itself"),
        (sa_no_fsync, r"os\.fsync\(f\.fileno\(\)\) the temporary file BEFORE os\.replace"),
        (sa_rename, r"no os\.replace: os\.rename fails on Windows"),
        (sa_swallows_errors, r"let the error propagate"),
        (sa_leaves_debris, r"failed save left .* delete the temporary file"),
    ], [sa_right, mamlkit.atomic_save]),
    "07.1": ([
        (anil_variant(all_entries=True), r"MAML's inner loop"),
        (anil_variant(sign=-1.0), r"uphill"),
        (anil_variant(steps=1), r"one inner step only"),
        (anil_variant(create_graph=False), r"first-order ANIL"),
        (anil_variant(detach=True), r"no graph back to θ|first-order ANIL"),
    ], [dg.reference_anil_adapt, anil_features_once]),
    "07.2": ([
        (protos_positive, r"sign is flipped"),
        (protos_unsquared, r"not squared"),
        (protos_class_sums, r"prototypes are sums"),
        (protos_by_position, r"order of the support set"),
        (protos_detached, r"no graph"),
        (lambda s, y, q, n: dg.reference_prototype_logits(s, y, q, n).T, r"swapped|shape"),
    ], [dg.reference_prototype_logits, protos_by_onehot]),
    "07.3": ([
        (lambda c: (c, -(c ** 2).sum(-1)), r"W_k = 2 c_k"),
        (lambda c: (2 * c, (c ** 2).sum(-1)), r"wrong sign"),
        (lambda c: (2 * c, -c.norm(dim=-1)), r"not squared"),
        (lambda c: (2 * c, torch.zeros(c.shape[0])), r"missing"),
        (lambda c: 2 * c, r"pair"),
    ], [dg.reference_protomaml_head, lambda c: (c + c, -(c * c).sum(1))]),
}

WRONG = [(key, i) for key, (wrong, _) in CATALOGUE.items() for i in range(len(wrong))]
RIGHT = [(key, i) for key, (_, right) in CATALOGUE.items() for i in range(len(right))]


def _check(key, fn):
    title, reference, checks = dg.exercise(key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. mse_loss's broadcast warning for a wrong in_dims
        return check_exercise(title, fn, reference=reference, checks=checks)


@pytest.fixture(autouse=True)
def _not_grading(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)


@pytest.mark.parametrize("key, i", WRONG, ids=[f"{k}-wrong{i}" for k, i in WRONG])
def test_wrong_answer_gets_named_diagnosis(key, i):
    fn, pattern = CATALOGUE[key][0][i]
    with pytest.raises(ExerciseError) as caught:
        _check(key, fn)
    message = str(caught.value)
    assert re.search(pattern, message, flags=re.S), f"{key}, {getattr(fn, '__name__', fn)}: {message}"
    assert "could not run your function" not in message, message  # a named diagnosis, not the generic crash report


@pytest.mark.parametrize("key, i", RIGHT, ids=[f"{k}-right{i}" for k, i in RIGHT])
def test_correct_route_passes(key, i, capsys):
    fn = CATALOGUE[key][1][i]
    assert _check(key, fn) is fn
    assert "checks passed" in capsys.readouterr().out


def test_catalogue_covers_every_exercise_with_three_wrong_answers():
    assert set(CATALOGUE) == set(dg.EXERCISES)
    assert len(dg.EXERCISES) == count_exercises(ROOT / "solutions") == 21
    assert all(len(wrong) >= 3 and right for wrong, right in CATALOGUE.values())


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_check_cell_uses_the_diagnose_checks(path):
    nb = nbformat.read(path, as_version=4)
    calls = [c.source for c in nb.cells if c.cell_type == "code" and "check_exercise(" in c.source]
    assert calls
    for source in calls:
        names = re.findall(r"diagnose\.(\w+_checks)\(\)", source)
        assert len(names) == 1, source
        assert callable(getattr(dg, names[0])), names[0]


def test_stub_falls_back_to_the_reference(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    for key in dg.EXERCISES:
        title, reference, checks = dg.exercise(key)
        assert check_exercise(title, stub, reference=reference, checks=checks) is reference
    assert capsys.readouterr().out.count("not done yet") == len(dg.EXERCISES)


def test_answers_run_on_copies_and_in_place_changes_are_named():
    theta = torch.tensor([1.0, 2.0, 3.0])
    before = theta.clone()

    def shifts(theta):
        theta -= 1.0
        return theta

    with pytest.raises(ExerciseError, match="your function changed θ in place"):
        dg.run(shifts, theta)
    assert torch.equal(theta, before)  # the caller's θ is untouched: no later number shifts
    # the same function, then the right one, on a check's fixtures: the fixtures survive the in-place answer
    with pytest.raises(ExerciseError, match="changed θ in place"):
        _check("01.1", step_in_place)
    assert _check("01.1", step_right) is step_right


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for key in ("01.4", "02.1", "04.2", "06.2"):
        _check(key, CATALOGUE[key][1][0])
    assert torch.equal(torch.rand(3), expected)


def test_explain_translates_the_blogs_errors():
    assert dg.explain(AttributeError("'NoneType' object has no attribute 'ravel'")).startswith(
        "the graph back to θ was cut")
    unused = RuntimeError("One of the differentiated Tensors appears to not have been used in the graph. "
                          "Set allow_unused=True if this is the desired behavior.")
    assert dg.explain(unused).startswith("the graph back to θ was cut")
    assert dg.explain(unused, own_forward=True).startswith("θ is ignored: model(x)")
    assert "bug 1" in dg.explain(TypeError("TwoLayerNet.__init__() takes 4 positional arguments but 5 were given"))
    assert dg.explain(ValueError("something else")) is None


def test_toy2d_mse_is_mse_and_supports_forward_mode():
    """The jvp route of notebook 03's exercise 2: jvp of a gradient of F.mse_loss fails inside torch
    ("ZeroTensors are immutable": the forward derivative of mse_loss_backward divides the target's zero
    tangent in place); toy2d.mse has the same value and works with jvp, vjp and double autograd.grad."""
    model = toy2d.make_model("sine")
    tasks = toy2d.make_tasks("sine", n_tasks=1)
    x, y = tasks.support_x[0], tasks.support_y[0]
    theta, v = torch.tensor([2.0, 1.0]), torch.tensor([0.3, -0.5])

    def loss(mse):
        return lambda t: mse(functional_call(model, toy2d.to_params(model, t), (x,)), y)

    assert torch.allclose(loss(toy2d.mse)(theta), loss(F.mse_loss)(theta))
    _, by_jvp = jvp(grad(loss(toy2d.mse)), (theta,), (v,))
    _, hvp_fn = vjp(grad(loss(F.mse_loss)), theta)
    assert torch.allclose(by_jvp, hvp_fn(v)[0], atol=1e-5)
    assert torch.allclose(-0.3 * by_jvp, dg.reference_hessian_term(loss(toy2d.mse), theta, v, 0.3), atol=1e-5)
