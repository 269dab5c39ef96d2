"""Notebook 07's exercise checks (mamlkit/course/diagnose_beyond.py): correct routes pass, each likely mistake is named."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit import algorithms
from mamlkit.course import diagnose_beyond as d
from mamlkit.course.exercises import ExerciseError


def passes(checks, fn):
    for check in checks:
        check(fn)


def fails(checks, fn, match):
    with pytest.raises(ExerciseError, match=match):
        passes(checks, fn)


# -- exercise 1: ANIL's inner loop

def anil_features_once(model, params, x, y, alpha, steps):
    # the efficient route: body features once, then SGD on the head module alone
    body = {k: v for k, v in params.items() if not k.startswith("head.")}
    head = {k[5:]: v for k, v in params.items() if k.startswith("head.")}
    feats = functional_call(model[:-1], body, (x,))
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model[-1], head, (feats,)), y)
        g = torch.autograd.grad(loss, list(head.values()), create_graph=True)
        head = {k: v - alpha * gi for (k, v), gi in zip(head.items(), g)}
    return {**params, **{"head." + k: v for k, v in head.items()}}


def anil_variant(*, all_entries=False, sign=1.0, steps=None, create_graph=True, detach=False):
    def fn(model, params, x, y, alpha, n):
        theta = dict(params)
        for _ in range(n if steps is None else steps):
            fast = {k: v for k, v in theta.items() if all_entries or k.startswith("head.")}
            loss = F.cross_entropy(functional_call(model, theta, (x,)), y)
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
            theta = {**theta, **{k: v - sign * alpha * gi for (k, v), gi in zip(fast.items(), g)}}
        return {k: v.detach() for k, v in theta.items()} if detach else theta
    return fn


def test_anil_correct_routes_pass():
    passes(d.anil_adapt_checks(), d.reference_anil_adapt)
    passes(d.anil_adapt_checks(), anil_features_once)


def test_anil_reference_is_the_librarys_anil():
    model, params, sx, sy, qx, qy = d.anil_fixture()
    theta = d.reference_anil_adapt(model, params, sx, sy, 0.3, 2)
    by_hand = F.cross_entropy(functional_call(model, theta, (qx,)), qy)
    library, _, _ = algorithms.anil_task_losses(model, params, sx[None], sy[None], qx[None], qy[None],
                                                loss_fn=F.cross_entropy, inner_lr=0.3, steps=2, head="head")
    torch.testing.assert_close(library[0], by_hand)


@pytest.mark.parametrize("fn, match", [
    (anil_variant(all_entries=True), "MAML's inner loop"),
    (anil_variant(sign=-1.0), "uphill"),
    (anil_variant(steps=1), "one inner step only"),
    (anil_variant(create_graph=False), "first-order ANIL"),
    (anil_variant(detach=True), "no graph back to θ|body's meta-gradient|first-order"),
])
def test_anil_mistakes_are_named(fn, match):
    fails(d.anil_adapt_checks(), fn, match)


# -- exercise 2: prototype logits

def protos_by_onehot(s, y, q, n_way):
    onehot = F.one_hot(y, n_way).to(s.dtype)
    c = onehot.T @ s / onehot.sum(0)[:, None]
    return -torch.cdist(q, c) ** 2


@pytest.mark.parametrize("fn", [d.reference_prototype_logits, protos_by_onehot])
def test_prototype_logits_correct_routes_pass(fn):
    passes(d.prototype_logits_checks(), fn)


def test_prototype_reference_is_the_librarys():
    g = torch.Generator().manual_seed(0)
    s, q, y = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g), torch.tensor([2, 0, 1, 1, 0, 2])
    library = algorithms.protonet_logits(q, algorithms.prototypes(s, y, 3))
    torch.testing.assert_close(d.reference_prototype_logits(s, y, q, 3), library)


def by_position(s, y, q, n_way):
    c = s.reshape(n_way, -1, s.shape[-1]).mean(1)
    return -((q[:, None] - c[None]) ** 2).sum(-1)


@pytest.mark.parametrize("fn, match", [
    (lambda s, y, q, n: -d.reference_prototype_logits(s, y, q, n), "sign is flipped"),
    (lambda s, y, q, n: -torch.cdist(q, torch.stack([s[y == k].mean(0) for k in range(n)])), "not squared"),
    (lambda s, y, q, n: -torch.cdist(q, torch.stack([s[y == k].sum(0) for k in range(n)])) ** 2, "sums"),
    (lambda s, y, q, n: d.reference_prototype_logits(s, y, q, n).T, "swapped|shape"),
    (lambda s, y, q, n: d.reference_prototype_logits(s.detach(), y, q.detach(), n), "no graph"),
])
def test_prototype_mistakes_are_named(fn, match):
    fails(d.prototype_logits_checks(), fn, match)


def test_prototypes_by_position_are_named():
    with pytest.raises(ExerciseError, match="order of the support set"):
        d.prototype_logits_checks()[1](by_position)


# -- exercise 3: ProtoMAML's head

def test_protomaml_head_correct_and_library():
    passes(d.protomaml_head_checks(), d.reference_protomaml_head)
    passes(d.protomaml_head_checks(), lambda c: (c + c, -(c * c).sum(1)))
    c = torch.randn(4, 3)
    w, b = algorithms.protomaml_head(c[None].expand(1, 4, 3).reshape(4, 3), torch.arange(4), 4)
    torch.testing.assert_close((w, b), d.reference_protomaml_head(c))


@pytest.mark.parametrize("fn, match", [
    (lambda c: (c, -(c ** 2).sum(-1)), "W_k = 2 c_k"),
    (lambda c: (2 * c, (c ** 2).sum(-1)), "wrong sign"),
    (lambda c: (2 * c, -c.norm(dim=-1)), "not squared"),
    (lambda c: (2 * c, torch.zeros(c.shape[0])), "missing"),
    (lambda c: 2 * c, "pair"),
])
def test_protomaml_head_mistakes_are_named(fn, match):
    fails(d.protomaml_head_checks(), fn, match)
