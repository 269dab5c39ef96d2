"""Prototypical Networks, and ProtoMAML: MAML started from the prototypes' linear head.

Snell, Swersky, Zemel (2017), "Prototypical Networks for Few-shot Learning", NeurIPS. No inner loop at all:
a task's classifier is read off its support set in the embedding φ_θ (the body, common.py):

    prototype of class k:  c_k = 1/|S_k| Σ_{(x, y) ∈ support, y = k} φ_θ(x)
    logits:                 logit_k(x) = −‖φ_θ(x) − c_k‖²            (squared Euclidean distance)
    meta-objective:        L_meta(θ) = 1/B Σᵢ CE(logits(query), query_y)          `protonet_loss`

Triantafillou et al. (2020), "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR, Section 3.2 (Proto-MAML). Expanding the distance, −‖φ − c_k‖² = 2 c_k·φ − ‖c_k‖² − ‖φ‖², and the
last term is the same for every class (softmax ignores it): the prototype classifier IS a linear head

    W_k = 2 c_k,   b_k = −‖c_k‖²                                                  `protomaml_head`

ProtoMAML uses it as the head's initialisation for task i, then takes MAML's inner steps from
(θ_body, W_i, b_i): on the whole network (`adapt_body=True`, as Triantafillou et al.) or on the head only.
The prototypes depend on θ_body, so the meta-gradient flows through the initialisation into the body
(first order too: θ'_head = W − α g with g constant still depends on W). The model's own head parameters
are replaced by (W_i, b_i) and get no gradient; the head's `out_features` says how many classes a task has.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import vmap

from .. import checks, maml
from . import common


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """c_k, the mean embedding of each class: embeddings (..., K, d), labels (..., K) in 0..n_way-1 -> (..., n_way, d).

    A class without support examples gets c_k = 0. Reads nothing from the device (no label check: the
    query loss checks its own labels).
    """
    onehot = (labels[..., None] == torch.arange(n_way, device=labels.device)).to(embeddings.dtype)  # (..., K, N)
    counts = onehot.sum(-2).clamp(min=1)  # (..., N)
    return onehot.transpose(-1, -2) @ embeddings / counts[..., None]


def protonet_logits(query_embeddings: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """logit_k(x) = −‖φ(x) − c_k‖²: query_embeddings (..., Q, d), protos (..., N, d) -> (..., Q, N)."""
    diff = query_embeddings[..., :, None, :] - protos[..., None, :, :]  # (..., Q, N, d)
    return -(diff * diff).sum(-1)


def protomaml_head(support_embeddings: torch.Tensor, support_y: torch.Tensor, n_way: int):
    """The linear head equal to the prototype classifier (up to a per-example constant): (W, b) with
    W_k = 2 c_k (..., n_way, d) and b_k = −‖c_k‖² (..., n_way)."""
    c = prototypes(support_embeddings, support_y, n_way)
    return 2 * c, -(c * c).sum(-1)


def n_way_of(head_module: nn.Module) -> int:
    if not isinstance(head_module, nn.Linear):
        raise ValueError(f"model: ProtoNets and ProtoMAML need a linear head (nn.Linear, one output per class) as "
                         f"the last layer, got {type(head_module).__name__}")
    return head_module.out_features


def _check_labels(support_y) -> None:
    if support_y.is_floating_point():
        raise ValueError(f"support_y: prototypes need class labels (integers 0..n_way-1), got {support_y.dtype} targets")


def protonet_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr=None,
                         steps: int = 0, first_order: bool = False, batching: str = "auto", head: str | None = None):
    """ProtoNet's per-task terms, unchecked, in the shape of `maml.task_losses`:
    (L_Tᵢ (tasks,), support losses (tasks, 0): there is no inner loop, logits (tasks, Q, n_way)).

    inner_lr, steps and first_order are accepted for the common signature and ignored.
    """
    _check_labels(support_y)
    body, head_module, prefix = common.split(model, head)
    n_way = n_way_of(head_module)
    batching = common.resolve_batching(model, batching, support_x.device)
    theta_body = common.body_params(params, prefix)
    c = prototypes(common.embed(body, theta_body, support_x, batching), support_y, n_way)  # (tasks, N, d)
    logits = protonet_logits(common.embed(body, theta_body, query_x, batching), c)  # (tasks, Q, N)
    losses = checks.checked_loss(vmap(loss_fn), "query_y")(logits, query_y)
    return losses, support_x.new_zeros(support_x.shape[0], 0), logits


def protonet_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn=nn.functional.cross_entropy,
                  batching: str = "auto", head: str | None = None) -> torch.Tensor:
    """ProtoNet's meta-objective 1/B Σᵢ L(−‖φ_θ(query) − c‖², query_y); `.backward()` gives ∇θ_body."""
    common.check_call(model, params, support_x, support_y, query_x, query_y)
    losses, _, _ = protonet_task_losses(model, params, support_x, support_y, query_x, query_y, loss_fn=loss_fn,
                                        batching=batching, head=head)
    return losses.mean()


def protomaml_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr,
                          steps: int = 1, first_order: bool = False, batching: str = "auto", head: str | None = None,
                          adapt_body: bool = True):
    """ProtoMAML's per-task terms, unchecked, as `maml.task_losses` returns them:
    (L_Tᵢ(θ'ᵢ; query) (tasks,), support losses (tasks, steps), f_θ'ᵢ(query_x) (tasks, Q, n_way)).

    Task i starts from (θ_body, W_i, b_i) with the head from its prototypes (`protomaml_head`); adapt_body
    False adapts the head only (on features computed once, as ANIL). inner_lr: a float or a Meta-SGD dict
    over θ (the head's α has W's shape).
    """
    _check_labels(support_y)
    body, head_module, prefix = common.split(model, head)
    if head_module.bias is None:
        raise ValueError("model: ProtoMAML initialises the head's bias with −‖c_k‖²: its last Linear needs bias=True")
    batching = common.resolve_batching(model, batching, support_x.device)
    theta_body = common.body_params(params, prefix)
    support_features = common.embed(body, theta_body, support_x, batching)  # (tasks, K, d)
    weight, bias = protomaml_head(support_features, support_y, n_way_of(head_module))  # (tasks, N, d), (tasks, N)
    kw = dict(loss_fn=loss_fn, steps=steps, first_order=first_order, batching=batching)
    if adapt_body:
        tasks = support_x.shape[0]
        theta = {**{k: p.expand(tasks, *p.shape) for k, p in theta_body.items()},
                 f"{prefix}.weight": weight, f"{prefix}.bias": bias}
        adapted, support_losses = common.adapt_each(model, theta, support_x, support_y, inner_lr=inner_lr, **kw)
        out = maml.predict_batch(model, adapted, query_x, batching=batching)
    else:
        adapted, support_losses = common.adapt_each(head_module, {"weight": weight, "bias": bias}, support_features,
                                                    support_y, inner_lr=common.head_inner_lr(inner_lr, prefix), **kw)
        out = maml.predict_batch(head_module, adapted, common.embed(body, theta_body, query_x, batching),
                                 batching=batching)
    return checks.checked_loss(vmap(loss_fn), "query_y")(out, query_y), support_losses, out


def protomaml_meta_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr,
                        steps: int = 1, first_order: bool = False, batching: str = "auto", head: str | None = None,
                        adapt_body: bool = True) -> torch.Tensor:
    """ProtoMAML's meta-objective 1/B Σᵢ L_Tᵢ(θ'ᵢ; query); `.backward()` reaches θ_body through the prototypes."""
    common.check_call(model, params, support_x, support_y, query_x, query_y, first_order)
    checks.check_inner_lr(inner_lr, params)
    checks.check_steps(steps)
    checks.check_flag("adapt_body", adapt_body)
    query_losses, support_losses, _ = protomaml_task_losses(
        model, params, support_x, support_y, query_x, query_y, loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
        first_order=first_order, batching=batching, head=head, adapt_body=adapt_body)
    checks.check_finite(support_losses)
    return query_losses.mean()


__all__ = ["prototypes", "protonet_logits", "protonet_loss", "protonet_task_losses", "protomaml_head",
           "protomaml_task_losses", "protomaml_meta_loss", "n_way_of"]
