"""A two-parameter world in which MAML's loops can be drawn: θ = (θ₁, θ₂) is a point on a plane.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks" (MAML,
and FOMAML in Section 5.2); Nichol, Achiam, Schulman (2018), "On First-Order Meta-Learning Algorithms"
(Reptile).

Two model families, each an `nn.Module` with exactly two numbers as parameters:

    "linear"   f_θ(x) = w·x + b            θ = (w, b), `nn.Linear(1, 1)`; every task loss is quadratic
    "sine"     f_θ(x) = A·sin(x − φ)       θ = (A, φ), `SineModel`; task losses are not quadratic

Task Tᵢ has its own θ*ᵢ (targets y = f_θ*ᵢ(x), no noise), a support set and a query set. One outer
iteration of each algorithm, with θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support) repeated `inner_steps` times:

    MAML      θ ← θ − β ∇θ 1/B Σᵢ L_Tᵢ(θ'ᵢ; query)           (through θ'ᵢ: the Hessian term is kept)
    FOMAML    θ ← θ − β 1/B Σᵢ ∇θ' L_Tᵢ(θ'ᵢ; query)          (dθ'ᵢ/dθ taken as I)
    Reptile   θ ← θ + ε 1/B Σᵢ (θ'ᵢ − θ)                     (no query set, no second derivative)

The one-step meta-gradient of task i splits in two (`meta_gradient_terms`):

    ∇θ L_Tᵢ(θ'ᵢ; query) = ∇L_query(θ'ᵢ)  −  α ∇²L_support(θ) ∇L_query(θ'ᵢ)
                          first-order term   Hessian term (a Hessian-vector product, never the Hessian)

The outer steps call `mamlkit.meta_loss` / `mamlkit.adapt_batch`, like real training. Contour grids
evaluate the same inner step (`maml.inner_step`) on thousands of θ at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from ..batched import task_batched_forward
from ..checks import check_inner_lr, check_steps
from ..maml import adapt_batch, inner_step, meta_loss

FAMILIES = ("linear", "sine")
ALGORITHMS = ("MAML", "FOMAML", "Reptile")
PARAM_NAMES = {"linear": ("w", "b"), "sine": ("A", "φ")}
# the region of the plane that the figures show, (θ₁ range, θ₂ range)
EXTENT = {"linear": ((-3.0, 3.0), (-3.0, 3.0)), "sine": ((-0.5, 4.5), (-1.0, 4.0))}
# each task's θ*ᵢ (chosen so that the tasks pull θ in clearly different directions)
OPTIMA = {
    "linear": [(2.0, 1.5), (-1.5, 2.0), (0.5, -2.0), (-2.0, -1.0)],
    "sine": [(1.0, 0.3), (3.5, 1.2), (2.0, 2.8), (0.8, 3.2)],
}
X_RANGE = {"linear": (-1.0, 2.0), "sine": (-3.0, 3.0)}  # inputs x ~ U[X_RANGE]


class SineModel(nn.Module):
    """f_θ(x) = A·sin(x − φ), with θ = (amplitude A, phase φ) as its two parameters."""

    def __init__(self, amplitude: float = 1.0, phase: float = 0.0):
        super().__init__()
        self.amplitude = nn.Parameter(torch.tensor(float(amplitude)))
        self.phase = nn.Parameter(torch.tensor(float(phase)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.amplitude * torch.sin(x - self.phase)


def make_model(family: str = "linear") -> nn.Module:
    """A fresh two-parameter model of the family ("linear": nn.Linear(1, 1); "sine": SineModel)."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    return nn.Linear(1, 1) if family == "linear" else SineModel()


def to_params(model: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The point θ = (θ₁, θ₂) of the plane as the model's params dict (gradients flow back to θ)."""
    shapes = [(k, p.shape) for k, p in model.named_parameters()]
    if sum(math.prod(s) for _, s in shapes) != 2:
        raise ValueError(f"model: expected exactly two numbers as parameters, got shapes {dict(shapes)}")
    if theta.shape[-1:] != (2,):
        raise ValueError(f"theta: expected a tensor whose last dimension is 2 (θ₁, θ₂), got {tuple(theta.shape)}")
    params, i = {}, 0
    for k, s in shapes:
        n = math.prod(s)
        params[k] = theta[..., i:i + n].reshape(tuple(theta.shape[:-1]) + tuple(s))  # e.g. weight: (..., 1, 1)
        i += n
    return params


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the value of `F.mse_loss(prediction, target)`, spelled ((prediction − target)²).mean().

    Every route to a Hessian-vector product works with it: `vjp(grad(L), θ)`, `jvp(grad(L), (θ,), (v,))`,
    `jacfwd`, double `torch.autograd.grad`. With `F.mse_loss` the forward-mode ones (jvp, jacfwd) fail in
    torch 2.x with "RuntimeError: ZeroTensors are immutable": the forward derivative of `mse_loss_backward`
    (torch's derivatives.yaml) passes the target's tangent, a ZeroTensor since the target is a constant, to
    `mse_loss_double_backward`, which for reduction="mean" divides it in place. A torch limitation, not
    a property of the loss: this spelling gives the same numbers by every route.
    """
    return ((prediction - target) ** 2).mean()


def to_theta(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The inverse of `to_params`: params with a leading dimension (tasks, ...) -> (tasks, 2)."""
    first = next(iter(params.values()))
    lead = first.shape[0]
    return torch.cat([p.reshape(lead, -1) for p in params.values()], dim=1)  # (tasks, 2)


@dataclass
class TaskSet:
    """B tasks on the plane, every tensor with a leading task dimension."""

    family: str
    support_x: torch.Tensor  # (tasks, K, 1)
    support_y: torch.Tensor  # (tasks, K, 1)
    query_x: torch.Tensor  # (tasks, Q, 1)
    query_y: torch.Tensor  # (tasks, Q, 1)
    optima: torch.Tensor  # (tasks, 2): θ*ᵢ, where L_Tᵢ = 0

    def tensors(self):
        """(support_x, support_y, query_x, query_y), the order `meta_loss` takes."""
        return self.support_x, self.support_y, self.query_x, self.query_y

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]


def make_tasks(family: str = "linear", n_tasks: int = 3, k_shot: int = 5, q_query: int = 10, seed: int = 0) -> TaskSet:
    """`n_tasks` tasks of the family with θ*ᵢ from `OPTIMA`, K = k_shot support and q_query query points each."""
    model = make_model(family)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or not 1 <= n_tasks <= len(OPTIMA[family]):
        raise ValueError(f"n_tasks: expected an integer from 1 to {len(OPTIMA[family])}, got {n_tasks!r}")
    for name, v in (("k_shot", k_shot), ("q_query", q_query)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    lo, hi = X_RANGE[family]
    optima = torch.tensor(OPTIMA[family][:n_tasks])  # (tasks, 2)
    x = torch.rand(n_tasks, k_shot + q_query, 1, generator=g) * (hi - lo) + lo  # (tasks, K+Q, 1)
    with torch.no_grad():
        y = vmap(lambda th, xi: functional_call(model, to_params(model, th), (xi,)))(optima, x)  # (tasks, K+Q, 1)
    return TaskSet(family, x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:], optima)


# ----------------------------------------------------------------------------------------------
# the outer loop, one iteration at a time


def inner_steps_of(model, theta, tasks: TaskSet, inner_lr: float, inner_steps: int) -> torch.Tensor:
    """θ'ᵢ for every task, as points of the plane: (tasks, 2). For drawing the arrows θ -> θ'ᵢ."""
    params = to_params(model, theta.detach())
    adapted, _ = adapt_batch(model, params, tasks.support_x, tasks.support_y, loss_fn=F.mse_loss,
                             inner_lr=inner_lr, steps=inner_steps, first_order=True, batching="loop")
    return to_theta({k: v.detach() for k, v in adapted.items()})  # (tasks, 2)


def outer_step(model, theta, tasks: TaskSet, algorithm: str, *, inner_lr: float, inner_steps: int = 1,
               meta_lr: float = 0.1, epsilon: float = 0.5) -> torch.Tensor:
    """One outer iteration of MAML, FOMAML (step size β = meta_lr) or Reptile (ε = epsilon). Returns θ (2,)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    theta = theta.detach().clone().requires_grad_()
    if algorithm == "Reptile":
        adapted = inner_steps_of(model, theta, tasks, inner_lr, inner_steps)  # (tasks, 2)
        return (theta + epsilon * (adapted - theta).mean(0)).detach()  # θ ← θ + ε·mean(θ'ᵢ − θ)
    loss = meta_loss(model, to_params(model, theta), *tasks.tensors(), loss_fn=F.mse_loss, inner_lr=inner_lr,
                     steps=inner_steps, first_order=algorithm == "FOMAML", batching="loop")
    (g,) = torch.autograd.grad(loss, theta)  # ∇θ L_meta, with or without the Hessian term
    return (theta - meta_lr * g).detach()  # θ ← θ − β ∇θ L_meta


def outer_path(model, theta0, tasks: TaskSet, algorithm: str, *, iterations: int, inner_lr: float,
               inner_steps: int = 1, meta_lr: float = 0.1, epsilon: float = 0.5) -> dict[str, torch.Tensor]:
    """θ over `iterations` outer iterations from θ₀.

    Returns {"theta": (iterations+1, 2), "adapted": (iterations+1, tasks, 2) the θ'ᵢ of each iterate,
    "meta_loss": (iterations+1,) the MAML objective 1/B Σᵢ L_Tᵢ(θ'ᵢ; query) at each iterate}.
    """
    check_steps(iterations)
    check_inner_lr(inner_lr, {"θ": torch.zeros(2)})
    theta = torch.as_tensor(theta0, dtype=torch.float32).detach().clone()
    thetas = [theta]
    for _ in range(iterations):
        theta = outer_step(model, theta, tasks, algorithm, inner_lr=inner_lr, inner_steps=inner_steps,
                           meta_lr=meta_lr, epsilon=epsilon)
        if not torch.isfinite(theta).all():
            raise FloatingPointError(f"outer_path: θ became {theta.tolist()} at iteration {len(thetas)} of "
                                     f"{algorithm}; lower meta_lr (β), epsilon (ε) or inner_lr (α)")
        thetas.append(theta)
    thetas = torch.stack(thetas)  # (iterations+1, 2)
    adapted = torch.stack([inner_steps_of(model, t, tasks, inner_lr, inner_steps) for t in thetas])
    losses = meta_objective(model, thetas, tasks, inner_lr=inner_lr, inner_steps=inner_steps)
    return {"theta": thetas, "adapted": adapted, "meta_loss": losses}


# ----------------------------------------------------------------------------------------------
# losses on a whole grid of θ (for contours): the library's inner loop, vmapped over θ


def meta_objective(model, thetas: torch.Tensor, tasks: TaskSet, *, inner_lr: float, inner_steps: int) -> torch.Tensor:
    """1/B Σᵢ L_Tᵢ(θ'ᵢ; query) at every θ of thetas (N, 2) -> (N,). inner_steps=0: before adaptation.

    The library's inner step on N·B copies of the model at once (every θ with every task), the same
    task-batched forward pass `adapt_batch` uses; without `meta_loss`'s divergence check, since a
    contour plot shows a diverging θ as a large value rather than stopping.
    """
    sx, sy, qx, qy = tasks.tensors()  # (B, K, 1) each
    n, b = thetas.shape[0], sx.shape[0]
    # θ of point j for task i at row j·B + i: (N·B, *shape); the tasks repeated for every point
    theta = {k: v.repeat_interleave(b, 0) for k, v in to_params(model, thetas.detach()).items()}
    theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
    sx, sy, qx, qy = (t.repeat(n, *([1] * (t.ndim - 1))) for t in (sx, sy, qx, qy))  # (N·B, K, 1)
    forward, loss = task_batched_forward(model, dict(model.named_buffers())), vmap(F.mse_loss)
    with torch.enable_grad():
        for _ in range(inner_steps):
            theta, _ = inner_step(forward, theta, sx, sy, loss_fn=loss, inner_lr=inner_lr, first_order=True)
    with torch.no_grad():
        return loss(forward(theta, qx), qy).reshape(n, b).mean(1)


def task_losses(model, thetas: torch.Tensor, tasks: TaskSet) -> torch.Tensor:
    """L_Tᵢ(θ; support) for every θ of thetas (N, 2) and every task -> (tasks, N)."""

    def one(theta, sx, sy):
        return F.mse_loss(functional_call(model, to_params(model, theta), (sx,)), sy)

    per_task = vmap(one, in_dims=(None, 0, 0))
    with torch.no_grad():
        return vmap(per_task, in_dims=(0, None, None))(thetas, tasks.support_x, tasks.support_y).T  # (tasks, N)


def grid(family: str, n: int = 41) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A grid over the family's extent: (θ₁ values (n,), θ₂ values (n,), points (n*n, 2), row-major)."""
    (a0, a1), (b0, b1) = EXTENT[family]
    t1, t2 = torch.linspace(a0, a1, n), torch.linspace(b0, b1, n)
    points = torch.stack(torch.meshgrid(t1, t2, indexing="xy"), dim=-1).reshape(-1, 2)  # (n*n, 2), θ₁ varies fastest
    return t1, t2, points


# ----------------------------------------------------------------------------------------------
# the anatomy of one meta-gradient


def meta_gradient_terms(model, theta, support_x, support_y, query_x, query_y, *, inner_lr: float) -> dict:
    """The one-step MAML meta-gradient of one task, split into its two terms (all (2,) tensors).

        θ' = θ − α ∇L_support(θ)
        first_order = ∇L_query(θ')                         (what FOMAML uses)
        hessian     = −α ∇²L_support(θ) ∇L_query(θ')       (a Hessian-vector product: vjp of the gradient)
        total       = first_order + hessian                 = ∇θ L_query(θ'(θ)), MAML's meta-gradient
    """
    check_inner_lr(inner_lr, {"θ": torch.zeros(2)})
    theta = torch.as_tensor(theta, dtype=torch.float32).detach()

    def support_loss(t):  # `mse`, not F.mse_loss: forward-mode routes (jvp) work too, see `mse`
        return mse(functional_call(model, to_params(model, t), (support_x,)), support_y)

    def query_loss(t):
        return mse(functional_call(model, to_params(model, t), (query_x,)), query_y)

    adapted = theta - inner_lr * grad(support_loss)(theta)  # θ' = θ − α ∇L_support(θ)
    first_order = grad(query_loss)(adapted)  # ∇L_query(θ')
    # the vjp of θ ↦ ∇L_support(θ) with v is vᵀ∇²L_support(θ) = ∇²L_support(θ) v (the Hessian is symmetric):
    # one Hessian-vector product, the Hessian matrix itself is never built
    _, hvp_fn = vjp(grad(support_loss), theta)
    (hvp,) = hvp_fn(first_order)
    hessian = -inner_lr * hvp
    return {"theta": theta, "adapted": adapted.detach(), "first_order": first_order.detach(),
            "hessian": hessian.detach(), "total": (first_order + hessian).detach()}
