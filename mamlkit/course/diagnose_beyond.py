"""The checks of notebook 07's exercises (Beyond MAML): ANIL's inner loop, prototype logits, ProtoMAML's head.

They work like those of `diagnose.py` (whose `run`, `diagnose` and `isolated` they use): the learner's
function runs on copies of its inputs, a known wrong answer is named, and every expected value comes from
a computation written here independently of `mamlkit.algorithms` (explicit loops, hand-computed numbers).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .diagnose import as_tensor, diagnose, isolated, run
from .exercises import ExerciseError, expect_close

# ----------------------------------------------------------------------------------------------
# exercise 1: ANIL's inner loop, θ'_head = θ_head − α ∇θ_head L(θ_body, θ_head; support), θ_body unchanged

HEAD = "head."  # the head's entries of θ: "head.weight", "head.bias"

BODY_ADAPTED = (
    "the body was adapted too: that is MAML's inner loop. ANIL adapts only the head (the entries of θ whose "
    "names start with 'head.'); every other entry of θ' is θ's own tensor"
)
ANIL_FIRST_ORDER = (
    "the inner gradient was treated as a constant (no create_graph=True): that is first-order ANIL. Here ANIL is "
    "second order: the body's meta-gradient also flows through the head's inner gradient, which depends on the "
    "support features"
)


def anil_fixture(seed: int = 0):
    """A small float64 body + head network (tanh: smooth) and one 3-way task."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(OrderedDict(layer=nn.Linear(2, 5), act=nn.Tanh(), head=nn.Linear(5, 3))).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    sx, qx = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
    sy, qy = torch.arange(3).repeat(2), torch.arange(3).repeat(3)
    return model, params, sx, sy, qx, qy


def reference_anil_adapt(model, params, support_x, support_y, alpha, steps):
    """`steps` inner steps on the head's entries only, differentiable (second order)."""
    theta = dict(params)
    for _ in range(steps):
        head = {k: v for k, v in theta.items() if k.startswith(HEAD)}
        loss = F.cross_entropy(functional_call(model, theta, (support_x,)), support_y)
        grads = torch.autograd.grad(loss, list(head.values()), create_graph=True)
        theta = {**theta, **{k: v - alpha * g for (k, v), g in zip(head.items(), grads)}}
    return theta


def _hand_variants(model, params, sx, sy, alpha, steps):
    """θ' of the likely wrong answers: MAML's (all entries), the sign flipped, one step, first order."""
    def loop(names, sign=1.0, n=steps, create_graph=True):
        theta = dict(params)
        for _ in range(n):
            fast = {k: v for k, v in theta.items() if names(k)}
            loss = F.cross_entropy(functional_call(model, theta, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            theta = {**theta, **{k: v - sign * alpha * g for (k, v), g in zip(fast.items(), grads)}}
        return theta

    is_head = lambda k: k.startswith(HEAD)  # noqa: E731
    return {"maml": loop(lambda k: True), "uphill": loop(is_head, -1.0), "one step": loop(is_head, n=1),
            "first order": loop(is_head, create_graph=False)}


def anil_adapt_checks() -> list[Callable]:
    """07, exercise 1: ANIL's inner loop (second order), head only."""
    alpha, steps = 0.3, 2

    @isolated
    def check_head_only_and_by_hand(fn):
        model, params, sx, sy, _, _ = anil_fixture()
        r = run(fn, model, params, sx, sy, alpha, steps)
        out, params = r.out, r.args[1]
        if not isinstance(out, dict) or set(out) != set(params):
            raise ExerciseError(f"return a dict with θ's keys {sorted(params)} (the body's entries unchanged)")
        expected = reference_anil_adapt(model, params, sx, sy, alpha, steps)
        wrong = _hand_variants(model, params, sx, sy, alpha, steps)
        for k in params:
            if not k.startswith(HEAD):
                diagnose(as_tensor(out[k], f"θ'[{k!r}]"), params[k], [(wrong["maml"][k], BODY_ADAPTED)],
                         f"θ'[{k!r}] is a body entry: ANIL leaves it as θ's", rtol=1e-10, atol=1e-12)
        for k in params:
            if k.startswith(HEAD):
                diagnose(as_tensor(out[k], f"θ'[{k!r}]"), expected[k], [
                    (wrong["maml"][k], BODY_ADAPTED + " (the body's change also moved the head's gradient)"),
                    (wrong["uphill"][k], "θ' went uphill: θ'_head = θ_head − α ∇θ_head L, with a minus sign"),
                    (wrong["one step"][k], f"one inner step only: take `steps` ({steps}) steps, each from the last θ'"),
                ], f"θ'[{k!r}] differs from {steps} steps of θ_head − α ∇θ_head L(support) computed by hand",
                    rtol=1e-8, atol=1e-10)

    @isolated
    def check_second_order(fn):
        model, params, sx, sy, qx, qy = anil_fixture(1)
        r = run(fn, model, params, sx, sy, alpha, steps)
        params = r.args[1]
        leaves = list(params.values())

        def meta_grad(theta):
            loss = F.cross_entropy(functional_call(model, theta, (qx,)), qy)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(leaves, grads)])

        try:
            got = meta_grad({k: as_tensor(v, f"θ'[{k!r}]") for k, v in r.out.items()})
        except RuntimeError as e:
            raise ExerciseError("the query loss at your θ' has no graph back to θ: keep the head's update "
                                f"differentiable (no .detach(), no torch.no_grad()) ({e})") from e
        expected = meta_grad(reference_anil_adapt(model, params, sx, sy, alpha, steps))
        first = meta_grad(_hand_variants(model, params, sx, sy, alpha, steps)["first order"])
        diagnose(got, expected, [(first, ANIL_FIRST_ORDER)],
                 "the meta-gradient ∇θ L(θ'; query) through your θ' differs from ANIL's (second order)",
                 rtol=1e-7, atol=1e-10)

    return [check_head_only_and_by_hand, check_second_order]


# ----------------------------------------------------------------------------------------------
# exercise 2: prototype logits, −‖φ(x) − c_k‖², c_k = the mean support embedding of class k

def reference_prototype_logits(support_emb, support_y, query_emb, n_way):
    protos = torch.stack([support_emb[support_y == k].mean(0) for k in range(n_way)])  # (n_way, d)
    return -((query_emb[:, None, :] - protos[None]) ** 2).sum(-1)  # (Q, n_way)


def prototype_logits_checks() -> list[Callable]:
    """07, exercise 2: ProtoNets' logits."""

    @isolated
    def check_by_hand(fn):
        # class 0: (0, 0) and (2, 0) -> c₀ = (1, 0); class 1: (0, 4) -> c₁ = (0, 4); labels out of order
        s = torch.tensor([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0]])
        y = torch.tensor([1, 0, 0])
        q = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
        r = run(fn, s, y, q, 2)
        expected = torch.tensor([[-1.0, -10.0], [-10.0, -1.0]])  # ‖(1,1)−(1,0)‖² = 1, ‖(1,1)−(0,4)‖² = 10, ...
        sums = torch.stack([s[y == k].sum(0) for k in range(2)])
        diagnose(as_tensor(r.out, "the logits"), expected, [
            (-expected, "the sign is flipped: a closer prototype must give a LARGER logit, −‖φ(x) − c_k‖²"),
            (-(-expected).sqrt(), "the distance is not squared: ProtoNets use the squared Euclidean distance −‖φ(x) − c_k‖²"),
            (-((q[:, None] - sums[None]) ** 2).sum(-1), "the prototypes are sums: c_k is the MEAN embedding of class k"),
            (expected.T, "rows and columns swapped: return (query images, n_way)"),
        ], "−‖φ(x) − c_k‖² with c₀ = (1, 0), c₁ = (0, 4) is [[−1, −10], [−10, −1]]", atol=1e-6)

    @isolated
    def check_batch_and_gradient(fn):
        g = torch.Generator().manual_seed(0)
        s = torch.randn(15, 8, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.arange(5).repeat(3)[torch.randperm(15, generator=g)]
        q = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
        r = run(fn, s, y, q, 5)
        got = as_tensor(r.out, "the logits")
        if got.shape != (10, 5):
            raise ExerciseError(f"the logits have shape {tuple(got.shape)}, expected (query images, n_way) = (10, 5)")
        by_order = "the prototypes follow the order of the support set, not its labels (here shuffled): c_k is " \
                   "the mean of the embeddings whose label is k, e.g. support_emb[support_y == k].mean(0)"
        d = lambda protos: -((q[:, None] - protos[None]) ** 2).sum(-1)  # noqa: E731
        diagnose(got, reference_prototype_logits(s, y, q, 5), [
            (lambda: d(s.reshape(5, 3, 8).mean(1)), by_order), (lambda: d(s.reshape(3, 5, 8).mean(0)), by_order),
        ], "differs from −‖φ(x) − c_k‖² on a random 5-way 3-shot task with shuffled labels", rtol=1e-8, atol=1e-10)
        if not got.requires_grad:
            raise ExerciseError("the logits carry no graph: the body is trained through them (no .detach() or no_grad)")

    return [check_by_hand, check_batch_and_gradient]


# ----------------------------------------------------------------------------------------------
# exercise 3: ProtoMAML's head, W_k = 2 c_k, b_k = −‖c_k‖²

def reference_protomaml_head(prototypes):
    return 2 * prototypes, -(prototypes ** 2).sum(-1)


def protomaml_head_checks() -> list[Callable]:
    """07, exercise 3: the linear head that is the prototype classifier."""

    @isolated
    def check_by_hand(fn):
        c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
        r = run(fn, c)
        if not isinstance(r.out, (tuple, list)) or len(r.out) != 2:
            raise ExerciseError("return a pair (weight (n_way, d), bias (n_way,))")
        w, b = (as_tensor(v, name) for v, name in zip(r.out, ("weight", "bias")))
        diagnose(w, 2 * c, [(c, "W_k = 2 c_k: c_k·x alone gives −½‖x − c_k‖² (half the logits: another softmax)")],
                 "W_k = 2 c_k gives [[2, 0], [0, 4], [6, 8]]", atol=1e-6)
        squared = torch.tensor([1.0, 4.0, 25.0])
        diagnose(b, -squared, [(squared, "the bias has the wrong sign: b_k = −‖c_k‖²"),
                               (-squared.sqrt(), "the bias is not squared: b_k = −‖c_k‖²"),
                               (torch.zeros(3), "the bias is missing: b_k = −‖c_k‖²"),
                               (-squared / 2, "b_k = −‖c_k‖², not −½‖c_k‖² (with W_k = 2 c_k)")],
                 "b_k = −‖c_k‖² gives [−1, −4, −25]", atol=1e-6)

    @isolated
    def check_same_softmax_as_protonet(fn):
        g = torch.Generator().manual_seed(1)
        c, x = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
        w, b = run(fn, c).out
        linear = x @ as_tensor(w, "weight").T + as_tensor(b, "bias")
        expect_close(torch.softmax(linear, -1), torch.softmax(-torch.cdist(x, c) ** 2, -1),
                     "the linear head's softmax differs from the prototype classifier's: W x + b = −‖x − c‖² + ‖x‖²",
                     rtol=1e-8, atol=1e-10)

    return [check_by_hand, check_same_softmax_as_protonet]


__all__ = ["anil_fixture", "reference_anil_adapt", "anil_adapt_checks", "reference_prototype_logits",
           "prototype_logits_checks", "reference_protomaml_head", "protomaml_head_checks"]
