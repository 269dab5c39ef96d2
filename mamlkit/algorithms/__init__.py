"""Beyond MAML: ANIL, MAML++, Reptile, ProtoNets and ProtoMAML, each on the same functional core.

One idea per module, each built on `maml.inner_step` (θ' = θ − α ∇θ L(θ; support)) and the task-batched
forward pass, and each with the shape of `maml.task_losses`, so the trainer runs all of them through one
code path (`task_losses_for`):

    algorithm    module        what changes from MAML (Finn et al. 2017)
    "maml"       maml.py       —   (first_order=True: FOMAML; learn_inner_lr=True: Meta-SGD, Li et al. 2017)
    "anil"       anil.py       only the head is adapted (Raghu et al. 2020)
    "mamlpp"     mamlpp.py     learned per-step α, multi-step loss, per-step BatchNorm (Antoniou et al. 2019)
    "reptile"    reptile.py    θ ← θ + ε (θ̃ − θ), no second derivative, no query loss (Nichol et al. 2018)
    "protonet"   protonets.py  no inner loop: the nearest class prototype (Snell et al. 2017)
    "protomaml"  protonets.py  MAML from the prototypes' linear head (Triantafillou et al. 2020)

Every `*_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps,
first_order, batching)` returns (per-task loss (tasks,), support losses (tasks, steps), query predictions),
unchecked; every `*_meta_loss` is their checked mean. `VARIANTS` names the settings of each variant
(`MetaConfig(**VARIANTS["fomaml"], ...)`). The algorithms are part of the core: they use only the core
(maml, checks, batched), and the trainer imports them.
"""
from __future__ import annotations

from functools import partial

import torch

from .. import maml
from . import anil, common, mamlpp, protonets, reptile
from .anil import anil_meta_loss, anil_task_losses
from .mamlpp import init_inner_state, mamlpp_meta_loss, mamlpp_task_losses, per_step_loss_weights
from .protonets import (
    protomaml_head,
    protomaml_meta_loss,
    protomaml_task_losses,
    protonet_logits,
    protonet_loss,
    protonet_task_losses,
    prototypes,
)
from .reptile import reptile_direction, reptile_targets, reptile_task_losses, reptile_update

ALGORITHMS = ("maml", "anil", "mamlpp", "reptile", "protonet", "protomaml")

# the MetaConfig switches of each variant; hyperparameters (α, β, steps, schedules) are the caller's
VARIANTS = {
    "maml": {"algorithm": "maml"},
    "fomaml": {"algorithm": "maml", "first_order": True},
    "metasgd": {"algorithm": "maml", "learn_inner_lr": True},
    "anil": {"algorithm": "anil"},
    "mamlpp": {"algorithm": "mamlpp", "meta_lr_schedule": "cosine"},
    "reptile": {"algorithm": "reptile"},
    "protonet": {"algorithm": "protonet"},
    "protomaml": {"algorithm": "protomaml"},
}

# algorithms whose inner loop a learned per-parameter α (Meta-SGD) can take part in
META_SGD_ALGORITHMS = ("maml", "anil", "protomaml")


def check_config(config) -> None:
    """The algorithm fields of a MetaConfig (`algorithm`, `head`, `multi_step_loss_steps`) and their combinations
    with the others; ValueError naming the field."""
    algorithm = config.algorithm
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r} (FOMAML is algorithm='maml' "
                         f"with first_order=True, Meta-SGD is algorithm='maml' with learn_inner_lr=True)")
    if config.head is not None and (not isinstance(config.head, str) or not config.head):
        raise ValueError(f"head: expected the name of the model's last layer (e.g. 'head') or None, got {config.head!r}")
    steps = config.multi_step_loss_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"multi_step_loss_steps: expected an integer >= 0 (0: no multi-step loss), got {steps!r}")
    if config.learn_inner_lr and algorithm not in META_SGD_ALGORITHMS:
        why = {"mamlpp": "MAML++ learns its own per-layer, per-step α (LSLR)",
               "reptile": "Reptile does not differentiate through its inner loop, so α would get no gradient",
               "protonet": "ProtoNets have no inner loop"}[algorithm]
        raise ValueError(f"learn_inner_lr: Meta-SGD's learned α works with {META_SGD_ALGORITHMS}, not with "
                         f"algorithm={algorithm!r}: {why}")
    if config.zero_head and algorithm not in ("maml", "anil", "mamlpp", "reptile"):
        raise ValueError(f"zero_head: ProtoNets and ProtoMAML build the head from the prototypes, so zero_head=True "
                         f"does not apply to algorithm={algorithm!r}")
    if algorithm in ("mamlpp", "reptile") and config.inner_steps < 1:
        raise ValueError(f"inner_steps: algorithm={algorithm!r} needs at least one inner step, got {config.inner_steps}")


def inner_state(config, model, inner_lr):
    """What `MetaLearner.inner_lr` holds for this algorithm: MAML++'s learned state (`mamlpp.init_inner_state`),
    else `inner_lr` itself (α, or Meta-SGD's dict). Checks first that the model suits the algorithm."""
    if config.algorithm in ("anil", "protonet", "protomaml"):
        _, head, _ = common.split(model, config.head)
        if config.algorithm != "anil":
            protonets.n_way_of(head)
    if config.algorithm == "mamlpp":
        return mamlpp.init_inner_state(model, config.inner_steps, config.inner_lr)
    return inner_lr


def task_losses_for(config, step: int = 0):
    """The per-task losses of `config.algorithm` at meta-step `step`, a function with the signature of
    `maml.task_losses` (the trainer's one code path). `step` sets MAML++'s multi-step loss weights."""
    name = config.algorithm
    if name == "maml":
        return maml.task_losses
    if name == "anil":
        return partial(anil_task_losses, head=config.head)
    if name == "mamlpp":
        n = config.multi_step_loss_steps
        return partial(mamlpp_task_losses, loss_weights=per_step_loss_weights(config.inner_steps, step / n if n else 1))
    if name == "reptile":
        return reptile_task_losses
    if name == "protonet":
        return partial(protonet_task_losses, head=config.head)
    if name == "protomaml":
        return partial(protomaml_task_losses, head=config.head)
    raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {name!r}")


def adapted_predictions(config, model, params, inner_lr, support_x, support_y, query_x, query_y, *, loss_fn, steps: int,
                     batching: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Test time for any algorithm: adapt to each task's support set, predict its query set.

    (query losses (tasks,), f_θ'ᵢ(query_xᵢ) (tasks, Q, ...)), detached: `config.algorithm`'s own inner loop
    (ANIL: the head only, MAML++: its learned α and BatchNorm per step, ProtoNets: the prototypes), `steps`
    inner steps, first order (no meta-gradient is taken, so θ' is the same). θ and α are detached, so nothing
    reaches their .grad. A classifier without query labels may pass any valid labels: they enter only the loss.
    """
    theta = {k: p.detach() for k, p in params.items()}
    lr = {k: v.detach() for k, v in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr
    # (MAML++: the query loss after the last step, whatever the multi-step loss weights were in training)
    task_losses = mamlpp_task_losses if config.algorithm == "mamlpp" else task_losses_for(config)
    with torch.enable_grad():  # the inner loop takes gradients even when the caller is under no_grad
        losses, _, out = task_losses(model, theta, support_x, support_y, query_x, query_y, loss_fn=loss_fn,
                                                 inner_lr=lr, steps=steps, first_order=True, batching=batching)
    return losses.detach(), out.detach()


__all__ = ["ALGORITHMS", "VARIANTS", "META_SGD_ALGORITHMS", "check_config", "inner_state", "task_losses_for",
           "adapted_predictions",
           "anil", "mamlpp", "reptile", "protonets", "common",
           "anil_task_losses", "anil_meta_loss", "init_inner_state", "per_step_loss_weights", "mamlpp_task_losses",
           "mamlpp_meta_loss", "reptile_targets", "reptile_direction", "reptile_update", "reptile_task_losses",
           "prototypes", "protonet_logits", "protonet_loss", "protonet_task_losses", "protomaml_head",
           "protomaml_task_losses", "protomaml_meta_loss"]
