"""Sinusoid regression tasks, the MLP and the "pretrained" baseline, as in the MAML paper.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
Section 5.1 and Appendix C.1:

    task Tᵢ:   amplitude A ~ U[0.1, 5.0],  phase φ ~ U[0, π]
    inputs:    x ~ U[−5, 5]
    targets:   y = A · sin(x − φ)
    model:     MLP 1-40-40-1 with ReLU, loss MSE
    K support points and K query points per task (K = 5 or 10).

The "pretrained" baseline trains one network on all tasks at once (it regresses to the mean
function, which is ~0), then fine-tunes it with the same inner steps as MAML.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def make_mlp(hidden: int = 40, layers: int = 2) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU."""
    if hidden < 1 or layers < 1:
        raise ValueError(f"hidden, layers: expected positive integers, got hidden={hidden}, layers={layers}")
    sizes = [1] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(sizes[-1], 1))
    return nn.Sequential(*mods)


def sine(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """y = A · sin(x − φ); amplitude and phase broadcast against x."""
    return amplitude * torch.sin(x - phase)


@dataclass
class SinusoidBatch:
    """A meta-batch of sinusoid tasks, every tensor with a leading task dimension."""

    support_x: torch.Tensor  # (tasks, K, 1)
    support_y: torch.Tensor  # (tasks, K, 1)
    query_x: torch.Tensor  # (tasks, Q, 1)
    query_y: torch.Tensor  # (tasks, Q, 1)
    amplitude: torch.Tensor  # (tasks, 1, 1)
    phase: torch.Tensor  # (tasks, 1, 1)

    def tensors(self):
        """(support_x, support_y, query_x, query_y), the order `meta_loss` takes."""
        return self.support_x, self.support_y, self.query_x, self.query_y

    def to(self, device) -> "SinusoidBatch":
        return SinusoidBatch(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x,
                                                      self.query_y, self.amplitude, self.phase)))


def sample_tasks(
    tasks: int,
    k_shot: int,
    q_query: int | None = None,
    *,
    generator: torch.Generator | None = None,
    amplitude: torch.Tensor | float | None = None,
    phase: torch.Tensor | float | None = None,
) -> SinusoidBatch:
    """Sample `tasks` sinusoids with K = `k_shot` support and `q_query` (default K) query points each.

    Amplitude and phase can be fixed (a float, or a tensor of shape (tasks,)) to build a chosen task.
    Seed with `generator=torch.Generator().manual_seed(s)`: the same seed gives the same tasks.
    """
    q_query = k_shot if q_query is None else q_query
    for name, v in (("tasks", tasks), ("k_shot", k_shot), ("q_query", q_query)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    g = generator

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    if amplitude is None:
        amplitude = uniform((tasks, 1, 1), *AMPLITUDE)
    else:
        amplitude = torch.as_tensor(amplitude, dtype=torch.float32).reshape(-1, 1, 1).expand(tasks, 1, 1)
    if phase is None:
        phase = uniform((tasks, 1, 1), *PHASE)
    else:
        phase = torch.as_tensor(phase, dtype=torch.float32).reshape(-1, 1, 1).expand(tasks, 1, 1)
    x = uniform((tasks, k_shot + q_query, 1), *X_RANGE)  # (tasks, K+Q, 1)
    y = sine(x, amplitude, phase)
    return SinusoidBatch(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:], amplitude, phase)


def evaluation_tasks(k_shot: int, *, tasks: int = 600, q_query: int = 100, seed: int = 1234) -> SinusoidBatch:
    """The fixed evaluation set: 600 tasks, K support points and 100 query points each, seeded."""
    return sample_tasks(tasks, k_shot, q_query, generator=torch.Generator().manual_seed(seed))


def train_pretrained(
    model: nn.Module,
    *,
    iterations: int = 10_000,
    batch_tasks: int = 25,
    points: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """The paper's baseline: plain regression on points pooled from many tasks (no inner loop).

    Each iteration samples `batch_tasks` tasks with `points` points each and takes one Adam step on
    the MSE over all of them. Returns the loss curve. The model is trained in place.
    """
    from ..progress import progress_bar

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in progress_bar(range(iterations), desc="pretrained", disable=not progress):
        b = sample_tasks(batch_tasks, points, 1, generator=g)
        loss = F.mse_loss(model(b.support_x), b.support_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
