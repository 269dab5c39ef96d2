"""What `python -m mamlkit.bench` measures: the problems, one meta-step per method, and the meters.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks":
the two set-ups of the paper, with random inputs of the right shapes (timing does not depend on the
pixel values, and the benchmark must run without the Omniglot download):

    sinusoid  MLP 1-40-40-1, meta_batch_size 25, K = k_shot = 10 support and 10 query points, α = 0.01
    conv4     Conv4 (width 64), n_way 5, k_shot 1, q_query 15, α = 0.4, 28x28 images

A meta-step is the whole outer update, the thing a training run repeats:

    θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)       (inner_steps times, for each of the meta_batch_size tasks)
    L_meta = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query);  L_meta.backward();  Adam step on θ (β = 1e-3)

Methods (each gets its own copy of the model, so they never share θ or optimizer state):

    mamlkit-vmap       mamlkit.meta_loss(batching="vmap"): the forward pass mapped over tasks, each
                       task's inner gradient from one autograd.grad of the summed task losses
    mamlkit-loop       mamlkit.meta_loss(batching="loop"): tasks one after another
    mamlkit-loop-bf16  the loop under bf16 autocast (speed.autocast_context)
    mamlkit-ckpt       the loop with checkpointed inner steps (speed.checkpointed_meta_loss)
    autograd-loop      baselines.autograd_meta_loss: the textbook per-task autograd.grad loop
    higher             baselines.higher_meta_backward: the `higher` library (if installed)

Meters: median wall time of a meta-step (timed over blocks of back-to-back calls), its peak memory
(CPU: torch.profiler's allocation events; CUDA: torch.cuda.max_memory_allocated), its FLOPs
(torch.utils.flop_counter), and the machine's float32 matmul speed as the yardstick for GFLOP/s.
"""
from __future__ import annotations

import copy
import importlib.util
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..experiments.sinusoid import make_mlp, sample_tasks
from ..maml import meta_loss
from ..memory import peak_memory_mb
from ..models.conv4 import make_conv4
from ..speed import autocast_context, checkpointed_meta_loss
from ..timing import synchronize
from ..trainer import MetaConfig, MetaLearner, make_meta_optimizer
from .baselines import autograd_meta_loss, higher_meta_backward

METHODS = ("mamlkit-vmap", "mamlkit-loop", "mamlkit-loop-bf16", "mamlkit-ckpt", "autograd-loop", "higher")


def higher_available() -> bool:
    return importlib.util.find_spec("higher") is not None


@dataclass
class Problem:
    """A model and one meta-batch, every tensor with a leading task dimension."""

    name: str  # "sinusoid" or "conv4"
    model: nn.Module
    tensors: tuple  # (support_x, support_y, query_x, query_y)
    loss_fn: Callable
    inner_lr: float  # α

    @property
    def meta_batch_size(self) -> int:
        return self.tensors[0].shape[0]


def sinusoid_problem(meta_batch_size: int = 25, k_shot: int = 10, *, device="cpu", seed: int = 0) -> Problem:
    """The paper's regression set-up: MLP 1-40-40-1, K support and K query points per task, α = 0.01."""
    torch.manual_seed(seed)
    batch = sample_tasks(meta_batch_size, k_shot, generator=torch.Generator().manual_seed(seed))
    return Problem("sinusoid", make_mlp().to(device), tuple(t.to(device) for t in batch.tensors()), F.mse_loss, 0.01)


def conv4_problem(meta_batch_size: int = 32, *, n_way: int = 5, k_shot: int = 1, q_query: int = 15,
                  width: int = 64, device="cpu", seed: int = 0) -> Problem:
    """Omniglot-shaped few-shot classification with random 28x28 images, Conv4, α = 0.4."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    support_x = torch.randn(meta_batch_size, n_way * k_shot, 1, 28, 28, generator=g)  # (tasks, n_way*k_shot, 1, 28, 28)
    query_x = torch.randn(meta_batch_size, n_way * q_query, 1, 28, 28, generator=g)  # (tasks, n_way*q_query, 1, 28, 28)
    support_y = torch.arange(n_way).repeat_interleave(k_shot).expand(meta_batch_size, -1)  # (tasks, n_way*k_shot)
    query_y = torch.arange(n_way).repeat_interleave(q_query).expand(meta_batch_size, -1)  # (tasks, n_way*q_query)
    tensors = tuple(t.contiguous().to(device) for t in (support_x, support_y, query_x, query_y))
    return Problem("conv4", make_conv4(n_way, width=width).to(device), tensors, F.cross_entropy, 0.4)


def make_meta_step(problem: Problem, method: str, *, inner_steps: int, first_order: bool) -> Callable[[], None]:
    """A function running one full meta-step (forward, backward, Adam) of `method` on `problem`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method == "higher" and not higher_available():
        raise ImportError("method: 'higher' needs the higher library (pip install higher)")
    model = copy.deepcopy(problem.model)  # its own θ and Adam state
    params = dict(model.named_parameters())
    optimizer = make_meta_optimizer(list(model.parameters()), lr=1e-3)  # the trainer's Adam, β = 1e-3
    kw = dict(loss_fn=problem.loss_fn, inner_lr=problem.inner_lr, steps=inner_steps, first_order=first_order)
    device = problem.tensors[0].device

    def step():
        optimizer.zero_grad(set_to_none=True)
        if method == "higher":
            higher_meta_backward(model, *problem.tensors, **kw)  # back-propagates task by task
        else:
            with autocast_context(method == "mamlkit-loop-bf16", device):
                if method == "autograd-loop":
                    loss = autograd_meta_loss(model, params, *problem.tensors, **kw)
                elif method == "mamlkit-ckpt":
                    loss = checkpointed_meta_loss(model, params, *problem.tensors, **kw)
                else:
                    batching = "vmap" if method == "mamlkit-vmap" else "loop"
                    loss = meta_loss(model, params, *problem.tensors, batching=batching, **kw)
            loss.backward()
        optimizer.step()

    return step


# ----------------------------------------------------------------------------------------------
# meters


def median(values: list[float]) -> float:
    return statistics.median(values)


def count_gflop(fn: Callable[[], None]) -> float:
    """GFLOP of one call of `fn` (matmuls and convolutions, forward and backward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops(device="cpu", n: int = 1024, reps: int = 10) -> float:
    """The machine's float32 matmul speed (GFLOP/s, best of `reps`): 2 n³ FLOPs per n x n product."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def trainer_memory(device="cpu", *, width: int = 64, meta_batch_size: int = 8) -> tuple[float, float]:
    """Peak MiB of one Conv4 MAML meta-step with the loop: `meta_loss(...).backward()` over the whole batch
    (every task's graph alive at once) against `MetaLearner.meta_step` (each task back-propagated at once)."""
    problem = conv4_problem(meta_batch_size, width=width, device=device)
    whole = peak_memory_mb(make_meta_step(problem, "mamlkit-loop", inner_steps=1, first_order=False), device)
    learner = MetaLearner(copy.deepcopy(problem.model), problem.loss_fn,
                          MetaConfig(inner_lr=problem.inner_lr, batching="loop"))
    by_task = peak_memory_mb(lambda: learner.meta_step(*problem.tensors), device)
    return whole, by_task
