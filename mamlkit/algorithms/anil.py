"""ANIL: Almost No Inner Loop. Only the head is adapted; the body is meta-learned but never adapted.

Raghu, Raghu, Bengio, Vinyals (2020), "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR. They found that MAML's inner loop barely changes the body: the features are
reused, only the head really adapts. ANIL keeps exactly that and drops the rest.

With f_θ(x) = h_{θ_head}(φ_{θ_body}(x)) (common.py):

    inner step (task Tᵢ):  θ'_head,i = θ_head − α ∇θ_head L_Tᵢ(θ_head; φ_{θ_body}(support))    θ_body unchanged
    meta-objective:        L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'_head,i; φ_{θ_body}(query))
    outer step:            θ = (θ_body, θ_head) ← θ − β ∇θ L_meta       (trainer: Adam)

The body gets its meta-gradient along two paths: through the query features φ_{θ_body}(query), and, second
order, through the head's inner gradient ∇θ_head L(θ_head; φ_{θ_body}(support)), which depends on the support
features. First-order ANIL treats that inner gradient as a constant (as FOMAML does), so only the first path
remains. The support and query features are computed ONCE per task (the body does not change in the inner
loop): the inner loop is a few steps of a linear model, the reason ANIL is fast.

In code: the body's features, then `maml.task_losses` on the head module alone (the same functional core).
"""
from __future__ import annotations

import torch

from .. import checks, maml
from . import common


def anil_task_losses(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                     first_order: bool = False, batching: str = "auto", head: str | None = None):
    """The terms of ANIL's L_meta, unchecked, as `maml.task_losses` returns them for MAML:
    (L_Tᵢ(θ'ᵢ; query) (tasks,), support losses (tasks, steps), f_θ'ᵢ(query_x) (tasks, Q, ...)).

    params: θ of the whole model; inner_lr: α (a float, or a Meta-SGD dict over θ of which the head's share
    is used); head: the name of the model's last layer (None: whatever it is called).
    """
    body, head_module, prefix = common.split(model, head)
    batching = common.resolve_batching(model, batching, support_x.device)
    theta_body, theta_head = common.body_params(params, prefix), common.head_params(params, prefix)
    support_features = common.embed(body, theta_body, support_x, batching)  # φ(support): (tasks, K, d)
    query_features = common.embed(body, theta_body, query_x, batching)  # φ(query): (tasks, Q, d)
    return maml.task_losses(head_module, theta_head, support_features, support_y, query_features, query_y,
                            loss_fn=loss_fn, inner_lr=common.head_inner_lr(inner_lr, prefix), steps=steps,
                            first_order=first_order, batching=batching)


def anil_meta_loss(model, params, support_x, support_y, query_x, query_y, *, loss_fn, inner_lr, steps: int = 1,
                   first_order: bool = False, batching: str = "auto", head: str | None = None) -> torch.Tensor:
    """ANIL's meta-objective 1/B Σᵢ L_Tᵢ(θ'_head,i; φ(query)); `.backward()` gives ∇ w.r.t. body and head.

    The same arguments as `maml.meta_loss`, plus `head`. Raises FloatingPointError if an inner loop diverged.
    """
    common.check_call(model, params, support_x, support_y, query_x, query_y, first_order)
    query_losses, support_losses, _ = anil_task_losses(
        model, params, support_x, support_y, query_x, query_y, loss_fn=loss_fn, inner_lr=inner_lr, steps=steps,
        first_order=first_order, batching=batching, head=head)
    checks.check_finite(support_losses)
    return query_losses.mean()


__all__ = ["anil_task_losses", "anil_meta_loss"]
