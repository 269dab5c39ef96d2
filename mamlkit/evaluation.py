"""Evaluation of a meta-learned initialization θ: query loss (and accuracy) after each inner step.

At test time MAML adapts θ to a new task with a few gradient steps on its support set and is judged on
its query set (Finn et al. 2017, Sections 5.1-5.2). No meta-gradient is needed, so the inner steps
here are first order and θ is detached: the numbers are the same, at a fraction of the memory.

Accuracy is reported over 600 test tasks with a 95% confidence interval, mean ± 1.96 σ / √n, as in
the paper's Table 1.
"""
from __future__ import annotations

import math

import torch
from torch.func import vmap

from .batched import task_batched_forward
from .checks import check_batching, check_inner_loop, check_task_batch, checked_forward, checked_loss
from .maml import choose_batching, inner_step, single_task_forward


def adaptation_curve(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int,
                     batching: str = "auto", chunk: int = 100, accuracy: bool = False) -> dict:
    """Query loss of θ, θ' after 1 step, ..., after `steps` steps, for every task.

    support_x: (tasks, K, ...), query_x: (tasks, Q, ...). Tasks are processed `chunk` at a time to
    bound memory. Returns {"loss": (tasks, steps+1)} and, with accuracy=True (classification, logits
    over the last dimension), {"accuracy": (tasks, steps+1)} too. The inner steps are the library's
    `inner_step`, first order (no meta-gradient is taken here, so it gives the same θ').

    A task whose fine-tuning diverges keeps its inf/nan loss in the result: at evaluation a blow-up is
    a measurement to report, not an error (training, by contrast, stops on one).
    """
    check_inner_loop(model, params, inner_lr, steps)
    check_task_batch(support_x, support_y, query_x, query_y)
    check_batching(batching)
    batching = choose_batching(model, support_x.device) if batching == "auto" else batching
    theta = {k: v.detach().requires_grad_() for k, v in params.items()}
    lr = {k: v.detach() for k, v in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr

    def curve(forward, loss, theta, sx, sy, qx, qy):  # one task, or a chunk of tasks with θ per task
        # the first forward pass on each set checks that the model takes it and that its targets fit
        query_forward, support_forward = checked_forward(forward, "query_x"), checked_forward(forward, "support_x")
        query_loss, support_loss = checked_loss(loss, "query_y"), checked_loss(loss, "support_y")
        losses, accs = [], []
        for s in range(steps + 1):
            with torch.no_grad():
                out = query_forward(theta, qx)
                losses.append(query_loss(out, qy))
                if accuracy:
                    accs.append((out.argmax(-1) == qy).float().mean(-1))
            if s < steps:
                theta, _ = inner_step(support_forward, theta, sx, sy, loss_fn=support_loss, inner_lr=lr,
                                      first_order=True)
                theta = {k: v.detach().requires_grad_() for k, v in theta.items()}
        return torch.stack(losses, -1), (torch.stack(accs, -1) if accuracy else None)  # (..., steps + 1)

    results_loss, results_acc = [], []
    with torch.enable_grad():
        for start in range(0, support_x.shape[0], chunk):
            part = [t[start:start + chunk] for t in (support_x, support_y, query_x, query_y)]
            if batching == "vmap":
                tasks = part[0].shape[0]
                stacked = {k: v.detach().expand(tasks, *v.shape).requires_grad_() for k, v in theta.items()}
                l, a = curve(task_batched_forward(model, dict(model.named_buffers())), vmap(loss_fn), stacked, *part)
            else:
                pairs = [curve(single_task_forward(model), loss_fn, theta, *task) for task in zip(*part)]
                l = torch.stack([p[0] for p in pairs])
                a = torch.stack([p[1] for p in pairs]) if accuracy else None
            results_loss.append(l)
            results_acc.append(a)
    out = {"loss": torch.cat(results_loss)}
    if accuracy:
        out["accuracy"] = torch.cat(results_acc)
    return out


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """(mean, half-width of the 95% confidence interval) = (x̄, 1.96 σ / √n) over the first dimension."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"values: need at least 2 values for a confidence interval, got {n}")
    return float(values.mean()), float(1.96 * values.std(unbiased=True) / math.sqrt(n))
