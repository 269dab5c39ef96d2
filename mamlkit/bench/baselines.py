"""Reference implementations that mamlkit is compared against: the usual ways to write MAML, and Reptile.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML
(Algorithm 2, and the first-order approximation of Section 5.2).
Grefenstette et al. (2019), "Generalized Inner Loop Meta-Learning" (the `higher` library).
Nichol, Achiam, Schulman (2018), "On First-Order Meta-Learning Algorithms" (Reptile).

These are deliberately plain: one task after another, one inner step after another, the way most
MAML code is written. They are slow on purpose and serve two roles:

1. tests: `autograd_meta_loss` is written without any of mamlkit's code, so its meta-gradient is an
   independent check of `mamlkit.meta_loss` (tests/test_baselines.py); `finite_difference` checks any
   gradient without autograd at all (tests/test_maml.py, test_algorithms.py, test_gpu.py);
2. benchmarks: `python -m mamlkit.bench` times them against mamlkit's vmap and loop paths.

The equations, in the notebooks' symbols (θ params, α inner_lr, B tasks in the meta-batch):

    θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)                 (inner_steps times)
    L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query)

    MAML:    ∇θ L_meta, through the inner steps (`create_graph=True`: the Hessian term is kept)
    FOMAML:  1/B Σᵢ ∇θ' L_Tᵢ(θ'ᵢ; query)            (`create_graph=False`: dθ'ᵢ/dθ taken as I)
    Reptile: 1/B Σᵢ (θ − θ'ᵢ) / α                    (no query loss at all; the "gradient" is the
                                                      displacement of the adapted parameters)
"""
from __future__ import annotations

import torch
from torch.func import functional_call


def autograd_meta_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr: float,
                       steps: int = 1, first_order: bool = False) -> torch.Tensor:
    """L_meta(θ) with a per-task `torch.autograd.grad` loop: the textbook way.

    Tensors carry a leading task dimension: support_x (tasks, K, ...), query_x (tasks, Q, ...).
    Call `.backward()` on the result: θ's `.grad` gets the MAML meta-gradient, or the FOMAML one with
    `first_order=True` (the one line marked below).
    """
    if support_x.shape[0] == 0:
        raise ValueError(f"support_x: expected at least one task, got shape {tuple(support_x.shape)}")
    names = list(params)
    total = 0.0
    for i in range(support_x.shape[0]):  # one task Tᵢ at a time
        fast = dict(params)  # θ'ᵢ starts at θ (same tensors: gradients flow back to θ)
        for _ in range(steps):
            support_loss = loss_fn(functional_call(model, fast, (support_x[i],)), support_y[i])
            # MAML: keep the graph of the gradient (the Hessian term). FOMAML: the gradient is a constant.
            grads = torch.autograd.grad(support_loss, [fast[n] for n in names], create_graph=not first_order)
            fast = {n: fast[n] - inner_lr * g for n, g in zip(names, grads)}  # θ' = θ − α ∇θ L
        total = total + loss_fn(functional_call(model, fast, (query_x[i],)), query_y[i])
    return total / support_x.shape[0]


def higher_meta_backward(model, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr: float,
                         steps: int = 1, first_order: bool = False) -> float:
    """Accumulate ∇θ L_meta into the `.grad` of `model`'s parameters, the way the `higher` library does it.

    `higher` (pip install higher) patches the module into a functional one and unrolls a differentiable
    SGD. As in its MAML example, each task's query loss is back-propagated inside its own context
    (memory for one task at a time). First order, as its authors recommend (facebookresearch/higher
    issue 63): `track_higher_grads=False`, then the gradient with respect to the final fast weights θ'ᵢ
    is added to θ's `.grad` by hand. Returns the meta-loss as a float.
    """
    import higher  # optional: only the benchmark needs it

    tasks = support_x.shape[0]
    params = list(model.parameters())
    inner_opt = torch.optim.SGD(params, lr=inner_lr)
    total = 0.0
    for i in range(tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(loss_fn(fmodel(support_x[i]), support_y[i]))  # θ' = θ − α ∇θ L
            query_loss = loss_fn(fmodel(query_x[i]), query_y[i]) / tasks
            if first_order:
                grads = torch.autograd.grad(query_loss, list(fmodel.parameters()))  # ∇θ' L(θ'; query)
                for p, g in zip(params, grads):
                    p.grad = g.detach() if p.grad is None else p.grad + g
            else:
                query_loss.backward()
        total += float(query_loss.detach())
    return total


def reptile_direction(model, params, support_x, support_y, *, loss_fn, inner_lr: float, steps: int) -> dict:
    """Reptile's meta-gradient surrogate: 1/B Σᵢ (θ − θ'ᵢ) / α, θ'ᵢ after `steps` plain SGD steps.

    Nichol et al. (2018): the outer update θ ← θ − β · direction moves θ towards the adapted
    parameters. Dividing by α makes it comparable with a gradient (for steps=1 it *is* the average
    support gradient ∇θ L_Tᵢ(θ; support)). Returns a dict name -> tensor, detached.
    """
    if steps < 1:
        raise ValueError(f"steps: Reptile needs at least one inner step, got {steps!r}")
    theta = {n: p.detach() for n, p in params.items()}
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    for i in range(support_x.shape[0]):
        fast = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(steps):
            loss = loss_fn(functional_call(model, fast, (support_x[i],)), support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - inner_lr * g).detach().requires_grad_() for (n, p), g in zip(fast.items(), grads)}
        for n in theta:
            total[n] += (theta[n] - fast[n].detach()) / inner_lr
    return {n: t / support_x.shape[0] for n, t in total.items()}


def finite_difference(f, params: dict, eps: float = 1e-6) -> torch.Tensor:
    """Central differences (f(θ + ε eⱼ) − f(θ − ε eⱼ)) / 2ε of the scalar f(params), for every entry j of
    every tensor, flattened in the dict's order: the gradient without autograd (use float64, smooth f)."""
    out = []
    for name, p in params.items():
        for i in range(p.numel()):
            def shifted(delta):
                q = {k: v.detach().clone() for k, v in params.items()}
                q[name].view(-1)[i] += delta
                return f(q).item()
            out.append((shifted(eps) - shifted(-eps)) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)
