"""The plain per-task autograd loop (mamlkit/baselines.py) against mamlkit.meta_loss, in float64.

`autograd_meta_loss` shares no code with mamlkit (it calls torch.autograd.grad per task), so equal
meta-gradients check both. The baseline itself is checked against finite differences, and the
test makes sure that second and first order really differ (a silent first-order MAML would pass
a comparison of two first-order implementations).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mamlkit
from mamlkit.bench.baselines import autograd_meta_loss, higher_meta_backward, reptile_direction
from mamlkit.bench.problems import higher_available
from mamlkit.experiments.sinusoid import make_mlp, sample_tasks

torch.set_num_threads(1)


def sinusoid_setup(tasks=3, k=5, seed=0):
    torch.manual_seed(seed)
    model = make_mlp(hidden=8).double()
    b = sample_tasks(tasks, k, generator=torch.Generator().manual_seed(seed))
    return model, tuple(t.double() for t in b.tensors()), F.mse_loss, 0.05


def conv_setup(tasks=2, n_way=3, seed=0):
    """A small conv net with batch-statistics BatchNorm, written here (independent of mamlkit.models.conv4)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, n_way)).double()
    sx = torch.randn(tasks, n_way, 1, 8, 8, dtype=torch.double)  # (tasks, n_way*k_shot, 1, 8, 8)
    qx = torch.randn(tasks, 2 * n_way, 1, 8, 8, dtype=torch.double)  # (tasks, n_way*q_query, 1, 8, 8)
    sy = torch.arange(n_way).expand(tasks, -1)
    qy = torch.arange(n_way).repeat(2).expand(tasks, -1)
    return model, (sx, sy, qx, qy), F.cross_entropy, 0.4


def grads_of(loss, params):
    return torch.autograd.grad(loss, list(params.values()))


@pytest.mark.parametrize("setup", [sinusoid_setup, conv_setup])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_autograd_loop_matches_meta_loss(setup, steps, first_order):
    model, batch, loss_fn, alpha = setup()
    params = dict(model.named_parameters())
    kw = dict(loss_fn=loss_fn, inner_lr=alpha, steps=steps, first_order=first_order)
    plain = autograd_meta_loss(model, params, *batch, **kw)
    expected = grads_of(plain, params)
    # vmap too at second order through torch's BatchNorm: mamlkit vmaps only the forward pass and takes
    # the inner gradients with autograd.grad, so torch's wrong vmap-of-func.grad rule is never used
    for batching in ("vmap", "loop"):
        ours = mamlkit.meta_loss(model, params, *batch, batching=batching, **kw)
        torch.testing.assert_close(ours, plain)
        for g, e in zip(grads_of(ours, params), expected):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("setup", [sinusoid_setup, conv_setup])
def test_second_and_first_order_differ(setup):
    model, batch, loss_fn, alpha = setup()
    params = dict(model.named_parameters())
    maml = grads_of(autograd_meta_loss(model, params, *batch, loss_fn=loss_fn, inner_lr=alpha, steps=2), params)
    fomaml = grads_of(autograd_meta_loss(model, params, *batch, loss_fn=loss_fn, inner_lr=alpha, steps=2,
                                         first_order=True), params)
    difference = max(float((a - b).abs().max()) for a, b in zip(maml, fomaml))
    assert difference > 1e-4, "the first_order flag changes nothing: is the Hessian term really kept?"


def test_autograd_loop_matches_finite_differences():
    """Directional derivative of L_meta(θ) along a random v: (L(θ+εv) − L(θ−εv)) / 2ε = ∇L · v."""
    model, batch, loss_fn, alpha = sinusoid_setup()
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    kw = dict(loss_fn=loss_fn, inner_lr=alpha, steps=2)
    g = grads_of(autograd_meta_loss(model, params, *batch, **kw), params)
    v = {k: torch.randn_like(p) for k, p in params.items()}
    eps = 1e-6
    with torch.enable_grad():
        plus = autograd_meta_loss(model, {k: p + eps * v[k] for k, p in params.items()}, *batch, **kw)
        minus = autograd_meta_loss(model, {k: p - eps * v[k] for k, p in params.items()}, *batch, **kw)
    numeric = float((plus - minus).detach()) / (2 * eps)
    analytic = sum(float((gi * v[k]).sum()) for gi, k in zip(g, params))
    assert numeric == pytest.approx(analytic, rel=1e-6)


@pytest.mark.skipif(not higher_available(), reason="higher is not installed (pip install higher)")
@pytest.mark.parametrize("first_order", [False, True])
def test_higher_matches_meta_loss(first_order):
    model, batch, loss_fn, alpha = conv_setup()
    params = dict(model.named_parameters())
    kw = dict(loss_fn=loss_fn, inner_lr=alpha, steps=2, first_order=first_order)
    expected = grads_of(mamlkit.meta_loss(model, params, *batch, **kw), params)
    value = higher_meta_backward(model, *batch, **kw)
    assert value == pytest.approx(float(autograd_meta_loss(model, params, *batch, **kw).detach()), rel=1e-9)
    for p, e in zip(params.values(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-11)


def test_reptile_direction_by_hand():
    """steps=1: (θ − θ')/α is the support gradient. steps=2: the sum of the two support gradients."""
    model, (sx, sy, _, _), loss_fn, alpha = sinusoid_setup(tasks=2)
    params = dict(model.named_parameters())
    one = reptile_direction(model, params, sx, sy, loss_fn=loss_fn, inner_lr=alpha, steps=1)
    two = reptile_direction(model, params, sx, sy, loss_fn=loss_fn, inner_lr=alpha, steps=2)
    expected_one = {k: torch.zeros_like(p) for k, p in params.items()}
    expected_two = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(2):
        g1 = grads_of(loss_fn(model(sx[i]), sy[i]), params)  # ∇θ L(θ), by the module itself
        with torch.no_grad():
            stepped = nn.utils.parameters_to_vector(params.values()) - alpha * nn.utils.parameters_to_vector(g1)
        copy = make_mlp(hidden=8).double()
        nn.utils.vector_to_parameters(stepped, copy.parameters())
        g2 = torch.autograd.grad(loss_fn(copy(sx[i]), sy[i]), list(copy.parameters()))  # ∇ L(θ − α g1)
        for k, a, b in zip(params, g1, g2):
            expected_one[k] += a / 2
            expected_two[k] += (a + b) / 2
    for k in params:
        torch.testing.assert_close(one[k], expected_one[k])
        torch.testing.assert_close(two[k], expected_two[k])
    with pytest.raises(ValueError, match="steps"):
        reptile_direction(model, params, sx, sy, loss_fn=loss_fn, inner_lr=alpha, steps=0)
