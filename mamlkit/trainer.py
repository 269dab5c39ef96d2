"""The at-scale trainer: a meta-optimizer on θ (and on α for Meta-SGD), one `meta_step`, resumable runs.

Finn, Abbeel, Levine (2017), Algorithm 1 (MAML) with the first-order variant of Section 5.2, and
Li et al. (2017) for the learnable per-parameter α (Meta-SGD).

One meta-step on a batch of B tasks:

    θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)            (inner_steps times, `adapt_batch`)
    L_meta = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query)
    θ ← Adam(θ, ∇θ L_meta, β)                  (β = meta_lr)

The notebooks write this step by hand first; `MetaLearner.meta_step` is the same few lines, packaged
for long runs. `train` adds seeded task sampling, a progress bar, a metrics log and atomic checkpoints
(model, meta-optimizer, RNG state, step, log) from which an interrupted run resumes exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .checks import BATCHINGS, check_finite, check_model, check_task_batch
from .maml import adapt_batch, choose_batching, predict_batch, task_losses
from .progress import progress_bar
from .speed import autocast_context

META_LR_SCHEDULES = ("constant", "cosine")


def meta_lr_at(config: "MetaConfig", step: int, iterations: int) -> float:
    """β for meta-step `step` (0-based) of a run of `iterations` steps.

    cosine:  β_t = β_min + ½ (β − β_min) (1 + cos(π t / T))     (Loshchilov & Hutter 2017, as MAML++)
    """
    if config.meta_lr_schedule == "constant" or iterations <= 0:
        return config.meta_lr
    t = min(step, iterations) / iterations
    return config.meta_lr_min + 0.5 * (config.meta_lr - config.meta_lr_min) * (1 + math.cos(math.pi * t))


@dataclass
class MetaConfig:
    inner_lr: float = 0.01  # α: inner-loop step size (the paper: 0.01 sinusoid, 0.4 Omniglot)
    meta_lr: float = 1e-3  # β: Adam step size on θ (the paper: 1e-3)
    inner_steps: int = 1  # gradient steps on the support set per task during meta-training
    first_order: bool = False  # True: FOMAML, drop the Hessian term of the meta-gradient
    learn_inner_lr: bool = False  # True: Meta-SGD, one learned α per parameter entry
    batching: str = "auto"  # "vmap", "loop" or "auto" (the faster for the model and device)
    grad_clip: float | None = None  # clip ‖∇θ L_meta‖ to this norm; None: no clipping
    bf16: bool = False  # True: the meta-step's forward passes under bf16 autocast (speed.autocast_context)
    meta_lr_schedule: str = "constant"  # "constant" β, or "cosine": β annealed to meta_lr_min over the run
    meta_lr_min: float = 1e-5  # the cosine schedule's last β (Antoniou et al. 2019 anneal 1e-3 -> 1e-5)
    first_order_steps: int = 0  # derivative-order annealing: the first meta-steps are first order (FOMAML)

    def __post_init__(self):
        if not (isinstance(self.inner_lr, (int, float)) and self.inner_lr > 0 and math.isfinite(self.inner_lr)):
            raise ValueError(f"inner_lr: expected a positive finite float (α), got {self.inner_lr!r}")
        if not (isinstance(self.meta_lr, (int, float)) and self.meta_lr > 0):
            raise ValueError(f"meta_lr: expected a positive float (β), got {self.meta_lr!r}")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps: expected an integer >= 0, got {self.inner_steps!r}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"batching: expected one of {BATCHINGS}, got {self.batching!r}")
        if not isinstance(self.bf16, bool):
            raise TypeError(f"bf16: expected True or False, got {self.bf16!r}")
        if self.meta_lr_schedule not in META_LR_SCHEDULES:
            raise ValueError(f"meta_lr_schedule: expected one of {META_LR_SCHEDULES}, got {self.meta_lr_schedule!r}")
        if not (isinstance(self.meta_lr_min, (int, float)) and 0 <= self.meta_lr_min <= self.meta_lr):
            raise ValueError(f"meta_lr_min: expected a float in [0, meta_lr={self.meta_lr}], got {self.meta_lr_min!r}")
        if isinstance(self.first_order_steps, bool) or not isinstance(self.first_order_steps, int) or self.first_order_steps < 0:
            raise ValueError(f"first_order_steps: expected an integer >= 0, got {self.first_order_steps!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected a positive float or None, got {self.grad_clip!r}")


def make_meta_optimizer(tensors: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """Adam on θ (and α for Meta-SGD), step size β = lr: the meta-optimizer of the paper.

    torch's fused Adam (one kernel updates every tensor) where the device has it: the same update as the
    default per-tensor loop (~10 small ops per tensor), and it matters when the meta-step itself is as
    short as the sinusoid's couple of milliseconds (0.16 -> 0.05 ms per step on one CPU thread).
    """
    fused = all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)
    return torch.optim.Adam(tensors, lr=lr, fused=fused)


class MetaLearner:
    """θ (the model's parameters), α, a meta-optimizer, and the meta-step.

    Arguments:
        model: the network; its parameters are θ and are updated in place by the meta-optimizer only.
        loss_fn: L(prediction, target), mean-reduced (e.g. `F.mse_loss`, `F.cross_entropy`).
        config: a `MetaConfig`.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, config: MetaConfig | None = None):
        check_model(model)
        self.model, self.loss_fn = model, loss_fn
        self.config = config or MetaConfig()
        self.params = dict(model.named_parameters())  # θ
        if self.config.learn_inner_lr:  # Meta-SGD: α has θ's shapes and is learned by the same optimizer
            self.inner_lr = {k: torch.full_like(p, self.config.inner_lr, requires_grad=True) for k, p in self.params.items()}
        else:
            self.inner_lr = self.config.inner_lr
        lr_tensors = list(self.inner_lr.values()) if isinstance(self.inner_lr, dict) else []
        self.optimizer = make_meta_optimizer(list(self.params.values()) + lr_tensors, lr=self.config.meta_lr)
        self.step = 0  # meta-steps taken

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def adapt(self, support_x, support_y, steps: int | None = None, first_order: bool | None = None):
        """θ'ᵢ for each task of a batch (tasks, K, ...). Returns (θ' stacked, support losses (tasks, steps))."""
        c = self.config
        return adapt_batch(
            self.model, self.params, support_x.to(self.device), support_y.to(self.device),
            loss_fn=self.loss_fn, inner_lr=self.inner_lr,
            steps=c.inner_steps if steps is None else steps,
            first_order=self.first_order_now() if first_order is None else first_order,
            batching=c.batching,
        )

    def first_order_now(self) -> bool:
        """Whether the next meta-step is first order: FOMAML, or still inside the first-order warm-up."""
        return self.config.first_order or self.step < self.config.first_order_steps

    def predict(self, adapted, x):
        """f_{θ'ᵢ}(xᵢ) for a batch of tasks: x (tasks, N, ...) -> (tasks, N, ...)."""
        return predict_batch(self.model, adapted, x.to(self.device), batching=self.config.batching)

    def meta_step(self, support_x, support_y, query_x, query_y) -> dict:
        """One outer update θ ← Adam(θ, ∇θ L_meta), L_meta = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query). Returns metrics as floats.

        The loss is `maml.task_losses`, the terms `meta_loss` averages. With batching "vmap" all tasks
        share one graph; with "loop" each task's share of L_meta is back-propagated as soon as it is
        computed, so only one task's graph is alive at a time and memory does not grow with the
        meta-batch; the gradient is the same sum. The step synchronises with the device once, to read
        its metrics and check that they are finite (a GPU keeps queuing work until then).

        Raises FloatingPointError naming the meta-step (and, if an inner loop diverged, its inner step
        and task) when the meta-loss or the meta-gradient is not finite; θ, α and the optimizer are
        then left as they were before this step.
        """
        check_task_batch(support_x, support_y, query_x, query_y)
        support_x, support_y, query_x, query_y = (t.to(self.device) for t in (support_x, support_y, query_x, query_y))
        tasks, c = support_x.shape[0], self.config
        batching = choose_batching(self.model, self.device) if c.batching == "auto" else c.batching
        chunks = [slice(0, tasks)] if batching == "vmap" else [slice(i, i + 1) for i in range(tasks)]
        classification = not query_y.is_floating_point()
        self.optimizer.zero_grad(set_to_none=True)
        dtype = next(iter(self.params.values())).dtype  # θ's: float32, or float64 in the exactness tests
        totals, support_losses = torch.zeros(3, device=self.device, dtype=dtype), []  # Σ meta-loss, Σ support loss, Σ correct
        for chunk in chunks:
            # bf16: convolutions and matmuls in bfloat16; θ, the losses and the gradient's sum stay float32
            with autocast_context(c.bf16, self.device):
                query_losses, s_losses, out = task_losses(
                    self.model, self.params, support_x[chunk], support_y[chunk], query_x[chunk], query_y[chunk],
                    loss_fn=self.loss_fn, inner_lr=self.inner_lr, steps=c.inner_steps,
                    first_order=self.first_order_now(), batching=batching)
                loss = query_losses.to(dtype).sum() / tasks  # this chunk's share of L_meta
            loss.backward()
            correct = (out.argmax(-1) == query_y[chunk]).float().mean(-1).sum() if classification else loss.new_zeros(())
            first = s_losses[:, 0].sum() if s_losses.shape[1] else loss.new_zeros(())
            totals += torch.stack([loss.detach(), first.to(dtype), correct.to(dtype)])
            support_losses.append(s_losses)
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        meta, support, correct, norm = torch.cat([totals, grad_norm[None]]).tolist()  # the step's one device sync
        if not (math.isfinite(meta) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            where = f"at meta-step {self.step + 1}; θ was not updated"
            try:
                check_finite(torch.cat(support_losses))  # names the inner step and the task, if one diverged
            except FloatingPointError as e:
                raise FloatingPointError(f"meta_step: {e} ({where})") from None
            what = "meta-loss" if not math.isfinite(meta) else "meta-gradient"
            raise FloatingPointError(f"meta_step: the {what} is {meta if what == 'meta-loss' else norm} {where}")
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(grads, c.grad_clip)  # (the norm was already measured above)
        self.optimizer.step()
        self.step += 1
        metrics = {"step": self.step, "meta_loss": meta, "grad_norm": norm}
        if c.inner_steps:
            metrics["support_loss"] = support / tasks  # before adaptation
        if classification:
            metrics["accuracy"] = correct / tasks  # of θ'ᵢ on the query sets
        return metrics

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        lr = {k: v.detach().cpu() for k, v in self.inner_lr.items()} if isinstance(self.inner_lr, dict) else self.inner_lr
        return {
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "inner_lr": lr,
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])  # copies values into the existing θ tensors
        if isinstance(self.inner_lr, dict):
            with torch.no_grad():
                for k, v in state["inner_lr"].items():
                    self.inner_lr[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def train(
    learner: MetaLearner,
    sample_batch: Callable[[torch.Generator], tuple],
    *,
    iterations: int,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 100,
    progress: bool = True,
    desc: str = "meta-train",
    on_checkpoint: Callable[[MetaLearner], None] | None = None,
) -> list[dict]:
    """Meta-train until `learner.step == iterations`, resuming from `checkpoint_path` if it exists.

    sample_batch(generator) -> (support_x, support_y, query_x, query_y): draws one meta-batch using
    only that generator, so a run is reproducible from `seed`, and the generator's state (saved in the
    checkpoint) lets a resumed run draw exactly the tasks the uninterrupted run would have.

    Returns the metrics log (one dict every `log_every` steps). A non-finite meta-loss stops the run
    with FloatingPointError; the last good checkpoint is left untouched. `on_checkpoint(learner)` is
    called after every checkpoint is written (e.g. to keep a snapshot of θ for a learning curve).
    """
    for name, v in (("iterations", iterations), ("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "iterations" else 1):
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    generator = torch.Generator().manual_seed(seed)
    log: list[dict] = []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path)
        learner.load_state_dict(state["learner"])
        generator.set_state(state["generator"])
        log = list(state["log"])

    def save():
        if checkpoint_path is not None:
            save_checkpoint({"learner": learner.state_dict(), "generator": generator.get_state(), "log": log},
                            checkpoint_path)
            if on_checkpoint is not None:
                on_checkpoint(learner)

    bar = progress_bar(total=iterations, initial=learner.step, desc=desc, disable=not progress)
    running = None
    try:
        while learner.step < iterations:
            for group in learner.optimizer.param_groups:  # β of this step (a pure function of the step: resumable)
                group["lr"] = meta_lr_at(learner.config, learner.step, iterations)
            metrics = learner.meta_step(*sample_batch(generator))
            running = metrics["meta_loss"] if running is None else 0.98 * running + 0.02 * metrics["meta_loss"]
            if learner.step % log_every == 0 or learner.step == iterations:
                log.append(metrics)
            if learner.step % checkpoint_every == 0 or learner.step == iterations:
                save()
            bar.set_postfix(meta_loss=running)
            bar.update()
    finally:
        bar.close()
    return log
