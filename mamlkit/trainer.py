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
import numbers
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from . import algorithms, distributed
from .checkpoint import check_writable, load_checkpoint, save_checkpoint
from .checks import BATCHINGS, check_finite, check_model, check_support_batch, check_task_batch
from .maml import adapt_batch, choose_batching, predict_batch
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
    # learned α, meta-learned with θ: True is Meta-SGD (Li et al. 2017), one α per parameter entry; "layer" is
    # one α per parameter tensor (MAML++'s LSLR for a single inner step, Antoniou et al. 2019)
    learn_inner_lr: bool | str = False
    batching: str = "auto"  # "vmap", "loop" or "auto" (the faster for the model and device)
    grad_clip: float | None = None  # clip ‖∇θ L_meta‖ to this norm; None: no clipping
    bf16: bool = False  # True: the meta-step's forward passes under bf16 autocast (speed.autocast_context)
    meta_lr_schedule: str = "constant"  # "constant" β, or "cosine": β annealed to meta_lr_min over the run
    meta_lr_min: float = 1e-5  # the cosine schedule's last β (Antoniou et al. 2019 anneal 1e-3 -> 1e-5)
    first_order_steps: int = 0  # derivative-order annealing: the first meta-steps are first order (FOMAML)
    # algorithms/: "maml" (FOMAML: first_order, Meta-SGD: learn_inner_lr), "anil", "mamlpp", "reptile",
    # "protonet", "protomaml"; see algorithms.VARIANTS
    algorithm: str = "maml"
    head: str | None = None  # ANIL, ProtoNets, ProtoMAML: the name of the model's last layer (None: any)
    multi_step_loss_steps: int = 7500  # MAML++: meta-steps over which the multi-step loss anneals (paper: 15 x 500)
    # the zeroing trick (Kao et al. 2022): the head is 0 at the start of every task's inner loop and is not
    # meta-learned, so θ' starts from uniform predictions (what second-order MAML learns by itself)
    zero_head: bool = False

    def __post_init__(self):
        for name in ("first_order", "bf16", "zero_head"):  # "no" is truthy: never read a string as a switch
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        check_learn_inner_lr(self.learn_inner_lr)
        self.inner_lr = _number("inner_lr", self.inner_lr, "a positive finite float (α)", lambda v: v > 0)
        self.meta_lr = _number("meta_lr", self.meta_lr, "a positive finite float (β)", lambda v: v > 0)
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps: expected an integer >= 0, got {self.inner_steps!r}")
        if not isinstance(self.batching, str) or self.batching not in BATCHINGS:
            raise ValueError(f"batching: expected one of {BATCHINGS}, got {self.batching!r}")
        if not isinstance(self.meta_lr_schedule, str) or self.meta_lr_schedule not in META_LR_SCHEDULES:
            raise ValueError(f"meta_lr_schedule: expected one of {META_LR_SCHEDULES}, got {self.meta_lr_schedule!r}")
        self.meta_lr_min = _number("meta_lr_min", self.meta_lr_min, f"a float in [0, meta_lr={self.meta_lr}]",
                                   lambda v: 0 <= v <= self.meta_lr)
        if isinstance(self.first_order_steps, bool) or not isinstance(self.first_order_steps, int) or self.first_order_steps < 0:
            raise ValueError(f"first_order_steps: expected an integer >= 0, got {self.first_order_steps!r}")
        if self.grad_clip is not None:
            self.grad_clip = _number("grad_clip", self.grad_clip, "a positive finite float or None", lambda v: v > 0)
        algorithms.check_config(self)  # algorithm, head, multi_step_loss_steps and their combinations


def check_learn_inner_lr(value) -> None:
    """learn_inner_lr is False, True (Meta-SGD: α per entry) or "layer" (α per parameter tensor); TypeError else."""
    if not (isinstance(value, bool) or value == "layer"):
        raise TypeError(f"learn_inner_lr: expected False, True (Meta-SGD: one learned α per parameter entry) or "
                        f"'layer' (one learned α per parameter tensor), got {value!r}")


def _number(name: str, value, expected: str, ok: Callable[[float], bool]) -> float:
    """`value` as a float if it is a finite real number that passes `ok`: TypeError for True or a string,
    ValueError for inf, nan or a value out of range. A plain float, so that checkpoints hold no numpy scalar."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


# MetaConfig fields a resumed run may change: how the tasks are batched changes the speed, not the numbers.
# Every other field changes what is trained, so a checkpoint resumes only with the same values.
RESUMABLE_CONFIG_CHANGES = ("batching",)


def config_differences(saved: Mapping, config: MetaConfig) -> dict:
    """{field: (saved value, value now)} for every MetaConfig field that differs and may not change on resume.

    A field a checkpoint predates is compared with its default (what that checkpoint was trained with)."""
    defaults = {f.name: f.default for f in fields(MetaConfig)}
    now = asdict(config)
    return {k: (saved.get(k, defaults[k]), v) for k, v in now.items()
            if k not in RESUMABLE_CONFIG_CHANGES and saved.get(k, defaults[k]) != v}


def check_model_state(model: nn.Module, saved, where: str) -> None:
    """Raise ValueError (message starting with `where`) unless `saved` has exactly the names and shapes of
    `model.state_dict()`: checked before `load_state_dict`, which would copy part of it and then fail."""
    if not isinstance(saved, Mapping):
        raise ValueError(f"{where}: its model state is a {type(saved).__name__}, not a dict of tensors")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in saved.items()}
    if ours != theirs:
        missing = [k for k in ours if k not in theirs]
        extra = [k for k in theirs if k not in ours]
        shapes = {k: (theirs[k], ours[k]) for k in ours if k in theirs and theirs[k] != ours[k]}
        raise ValueError(
            f"{where}: holds the parameters of another model; "
            + "; ".join(([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
                        + ([f"shapes (checkpoint, model) {shapes}"] if shapes else []))
        )


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
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a function L(prediction, target), got {type(loss_fn).__name__}")
        if config is not None and not isinstance(config, MetaConfig):
            raise TypeError(f"config: expected a MetaConfig (or None for the defaults), got {type(config).__name__}")
        self.model, self.loss_fn = model, loss_fn
        self.config = config or MetaConfig()
        self.params = dict(model.named_parameters())  # θ
        if not self.params:
            raise ValueError("model: it has no parameters, so there is nothing to meta-learn")
        self.head_params = []  # zero_head: θ_head, kept at 0 (its meta-gradient is dropped in meta_step)
        if self.config.zero_head:
            _, head, _ = algorithms.common.split(model, self.config.head)
            self.head_params = list(head.parameters())
            with torch.no_grad():
                for p in self.head_params:
                    p.zero_()
        if self.config.learn_inner_lr == "layer":  # one α per tensor: a 0-d tensor, broadcast over its entries
            self.inner_lr = {k: torch.tensor(self.config.inner_lr, dtype=p.dtype, device=p.device, requires_grad=True)
                             for k, p in self.params.items()}
        elif self.config.learn_inner_lr:  # Meta-SGD: α has θ's shapes and is learned by the same optimizer
            self.inner_lr = {k: torch.full_like(p, self.config.inner_lr, requires_grad=True) for k, p in self.params.items()}
        else:
            self.inner_lr = self.config.inner_lr
        # MAML++: its learned per-step α and BatchNorm take α's place (and its checkpoint slot); else unchanged
        self.inner_lr = algorithms.inner_state(self.config, model, self.inner_lr)
        lr_tensors = list(self.inner_lr.values()) if isinstance(self.inner_lr, dict) else []
        self.optimizer = make_meta_optimizer(list(self.params.values()) + lr_tensors, lr=self.config.meta_lr)
        self.step = 0  # meta-steps taken

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def adapt(self, support_x, support_y, steps: int | None = None, first_order: bool | None = None):
        """θ'ᵢ for each task of a batch (tasks, K, ...). Returns (θ' stacked, support losses (tasks, steps)).

        MAML's inner loop (also FOMAML's, Meta-SGD's, Reptile's); the other algorithms adapt differently:
        `algorithms.adapted_predictions` runs each one's own test-time loop."""
        c = self.config
        if c.algorithm not in ("maml", "reptile"):
            raise ValueError(f"adapt: algorithm={c.algorithm!r} does not adapt θ with MAML's inner loop; use "
                             f"mamlkit.algorithms.adapted_predictions(learner.config, ...) for its predictions")
        check_support_batch(support_x, support_y)
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor (tasks, N, ...), got {type(x).__name__}")
        return predict_batch(self.model, adapted, x.to(self.device), batching=self.config.batching)

    def meta_step(self, support_x, support_y, query_x, query_y) -> dict:
        """One outer update θ ← Adam(θ, ∇θ L_meta), L_meta = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query). Returns metrics as floats.

        The loss is `maml.task_losses`, the terms `meta_loss` averages (for another `config.algorithm`, its own
        terms in the same shape: `algorithms.task_losses_for`; Reptile's leave θ − θ̃ in .grad, reptile.py).
        With batching "vmap" all tasks share one graph; with "loop" each task's share of L_meta is
        back-propagated as soon as it is computed, so only one task's graph is alive at a time and memory
        does not grow with the meta-batch; the gradient is the same sum. The step synchronises with the
        device once, to read its metrics and check that they are finite (a GPU keeps queuing work until then).

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
                query_losses, s_losses, out = algorithms.task_losses_for(c, self.step)(  # maml.task_losses for MAML
                    self.model, self.params, support_x[chunk], support_y[chunk], query_x[chunk], query_y[chunk],
                    loss_fn=self.loss_fn, inner_lr=self.inner_lr, steps=c.inner_steps,
                    first_order=self.first_order_now(), batching=batching)
                loss = query_losses.to(dtype).sum() / tasks  # this chunk's share of L_meta
            loss.backward()
            correct = (out.argmax(-1) == query_y[chunk]).float().mean(-1).sum() if classification else loss.new_zeros(())
            first = s_losses[:, 0].sum() if s_losses.shape[1] else loss.new_zeros(())
            totals += torch.stack([loss.detach(), first.to(dtype), correct.to(dtype)])
            support_losses.append(s_losses)
        for p in self.head_params:  # zero_head: the head stays 0 (Adam's update of a gradient that is always 0 is 0)
            p.grad = None if p.grad is None else torch.zeros_like(p.grad)
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if distributed.is_distributed():  # ONE all-reduce: the meta-gradient and metrics of all ranks' tasks
            scale = totals.new_tensor([1.0, tasks, tasks])  # per-rank means in, union means out (distributed.py)
            totals = scale * distributed.average_gradients(grads, totals / scale, tasks=tasks,
                                                           what=f"the all-reduce of meta-step {self.step + 1}")
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
        if c.inner_steps and support_losses[0].shape[1]:  # (ProtoNets have no inner loop)
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

    def check_state_dict(self, state, where: str = "state") -> None:
        """Raise ValueError (message starting with `where`) unless `state` is a `state_dict` of this learner:
        the same model (parameter and buffer names and shapes), the same α kind, the same configuration
        (up to `RESUMABLE_CONFIG_CHANGES`). Nothing is loaded: call it before changing anything."""
        keys = ("step", "model", "inner_lr", "optimizer")
        if not isinstance(state, Mapping) or any(k not in state for k in keys):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{where}: not a MetaLearner state; expected the keys {list(keys)}, got {got}")
        if isinstance(state.get("config"), Mapping):
            diff = config_differences(state["config"], self.config)
            if diff:
                raise ValueError(
                    f"{where}: was trained with another configuration; resuming it would mix two experiments. "
                    f"Differences (checkpoint, now): {diff}. Use the checkpoint's settings (only "
                    f"{list(RESUMABLE_CONFIG_CHANGES)} may change) or start a new run elsewhere."
                )
        check_model_state(self.model, state["model"], where)
        if isinstance(self.inner_lr, dict):
            lr = state["inner_lr"]
            if not isinstance(lr, Mapping) or {k: tuple(v.shape) for k, v in lr.items()} != \
                    {k: tuple(v.shape) for k, v in self.inner_lr.items()}:
                raise ValueError(f"{where}: its inner_lr is not a learned α of this model (Meta-SGD: one tensor "
                                 f"per parameter; per layer: one number per parameter; MAML++: per-step α and "
                                 f"BatchNorm)")

    def load_state_dict(self, state: dict, *, where: str = "state") -> None:
        """Restore a `state_dict` (checked first, see `check_state_dict`: a mismatch changes nothing)."""
        self.check_state_dict(state, where)
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

    Under torchrun (distributed.py) the same loop runs on every rank: sample_batch gets rank r's own
    generator, seeded `distributed.rank_seed(seed, r)`, and should draw meta_batch_size // world_size
    tasks; meta_step all-reduces the meta-gradient; rank 0 writes the checkpoints, holding every rank's
    generator state, and a checkpoint resumes only on as many processes as wrote it.
    """
    if not isinstance(learner, MetaLearner):
        raise TypeError(f"learner: expected a MetaLearner, got {type(learner).__name__}")
    if not callable(sample_batch):
        raise TypeError(f"sample_batch: expected a function generator -> (support_x, support_y, query_x, query_y), "
                        f"got {type(sample_batch).__name__}")
    if on_checkpoint is not None and not callable(on_checkpoint):
        raise TypeError(f"on_checkpoint: expected a function of the learner or None, got {type(on_checkpoint).__name__}")
    for name, v in (("iterations", iterations), ("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "iterations" else 1):
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    distributed.init()  # a no-op unless launched by torchrun (distributed.py)
    rank, world = distributed.rank(), distributed.world_size()
    generator = torch.Generator().manual_seed(distributed.rank_seed(seed, rank))  # rank 0: `seed` itself
    log: list[dict] = []
    # wall time spent training, summed over every resumed session (a checkpoint written before this was
    # recorded counts from the step it was resumed at: `seconds_from_step`)
    seconds, seconds_from_step = 0.0, 0
    if checkpoint_path is not None:
        check_writable(checkpoint_path, "checkpoint_path")  # before any meta-step: its work must be savable
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path)
        where = f"checkpoint_path: {checkpoint_path}"
        if any(k not in state for k in ("learner", "generator", "log")):
            raise ValueError(f"{where} holds no training run (learner, generator, log); it was not written by train()")
        saved_iterations = state.get("iterations")
        if learner.config.meta_lr_schedule != "constant" and saved_iterations not in (None, iterations):
            raise ValueError(f"{where} was trained for iterations={saved_iterations} with a {learner.config.meta_lr_schedule} "
                             f"β schedule, whose length is the run's: iterations={iterations} would be another run")
        learner.check_state_dict(state["learner"], where)
        if not isinstance(state["generator"], torch.Tensor) or state["generator"].dtype != torch.uint8:
            raise ValueError(f"{where}: its generator state is not a torch.Generator state (uint8 tensor)")
        generators = state.get("generators", [state["generator"]])  # one per rank (older checkpoints: one)
        if not isinstance(generators, list) or not all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8
                                                        for g in generators):
            raise ValueError(f"{where}: its per-rank generator states are not a list of torch.Generator states")
        if len(generators) != world:  # each rank's task stream is seeded by its rank: another world is another run
            raise ValueError(f"{where} was trained on {len(generators)} process(es), this run has {world}: each rank "
                             f"draws its tasks from its own seeded generator, so another world size would be another "
                             f"run; resume it with {len(generators)} process(es) or start a new run elsewhere")
        learner.load_state_dict(state["learner"], where=where)
        generator.set_state(generators[rank])
        log = list(state["log"])
        seconds, seconds_from_step = float(state.get("seconds", 0.0)), int(state.get("seconds_from_step", learner.step))
    distributed.broadcast_tensors(learner.optimizer.param_groups[0]["params"])  # every rank starts from rank 0's θ

    def save():
        if checkpoint_path is None:
            return
        generators = distributed.gather_to_rank0(generator.get_state())  # every rank's task stream, on rank 0
        if rank == 0:  # one writer; the ranks' θ are identical
            save_checkpoint({"learner": learner.state_dict(), "generator": generators[0], "generators": generators,
                             "log": log, "iterations": iterations, "seconds_from_step": seconds_from_step,
                             "seconds": seconds + time.perf_counter() - started}, checkpoint_path)
            if on_checkpoint is not None:
                on_checkpoint(learner)

    bar = progress_bar(total=iterations, initial=learner.step, desc=desc, disable=not progress or rank != 0)
    running, started = None, time.perf_counter()
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
