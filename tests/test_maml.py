"""The meta-gradient against independent computations: finite differences, a closed form, the loop.

Everything in float64 so that agreement to ~1e-7 means the computation is right, not lucky.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mamlkit
from mamlkit import adapt, meta_loss
from mamlkit.bench.baselines import finite_difference


def smooth_mlp(seed=0):
    # tanh, not ReLU: finite differences need a smooth loss (ReLU has kinks)
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def regression_batch(tasks=3, k=5, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, k + q, 1, generator=g, dtype=torch.float64) * 4 - 2
    a = torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) + 0.5
    y = a * torch.sin(x)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


def flat_grad(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_second_order_meta_gradient_matches_finite_differences(steps, batching):
    model = smooth_mlp()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    batch = regression_batch()

    def f(p):
        return meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=0.1, steps=steps, batching=batching)

    autograd = flat_grad(f(params), params)
    numeric = finite_difference(f, params)
    torch.testing.assert_close(autograd, numeric, rtol=1e-5, atol=1e-7)


def test_first_order_meta_gradient_differs_from_finite_differences():
    # FOMAML is an approximation: it must NOT match the exact derivative (else the flag does nothing)
    model = smooth_mlp()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    batch = regression_batch()
    f = lambda p, fo: meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=0.1, first_order=fo)
    exact = finite_difference(lambda p: f(p, False), params)
    first = flat_grad(f(params, True), params)
    assert (first - exact).abs().max() > 1e-4


class Linear(nn.Module):
    """f(x) = x·θ, so an MSE loss is a quadratic in θ with a known Hessian."""

    def __init__(self, d):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return x @ self.theta


def test_one_step_meta_gradient_equals_closed_form():
    # L(θ) = 1/n ‖Xθ − y‖²:  ∇L = 2/n Xᵀ(Xθ − y),  ∇²L = 2/n XᵀX (constant)
    rng = np.random.default_rng(0)
    d, n, alpha = 4, 6, 0.05
    Xs, ys, Xq, yq = rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=(n, d)), rng.normal(size=n)
    theta = rng.normal(size=d)
    grad = lambda X, y, t: 2 / n * X.T @ (X @ t - y)
    theta_prime = theta - alpha * grad(Xs, ys, theta)
    hessian_s = 2 / n * Xs.T @ Xs
    maml_closed = (np.eye(d) - alpha * hessian_s) @ grad(Xq, yq, theta_prime)
    fomaml_closed = grad(Xq, yq, theta_prime)

    model = Linear(d)
    with torch.no_grad():
        model.theta.copy_(torch.from_numpy(theta))
    params = dict(model.named_parameters())
    t = lambda a: torch.from_numpy(a)[None]  # add the task dimension: (1, n, ...)
    for first_order, closed in ((False, maml_closed), (True, fomaml_closed)):
        loss = meta_loss(model, params, t(Xs), t(ys), t(Xq), t(yq), loss_fn=F.mse_loss, inner_lr=alpha,
                         first_order=first_order)
        (g,) = torch.autograd.grad(loss, [model.theta])
        np.testing.assert_allclose(g.numpy(), closed, rtol=1e-10, atol=1e-12)
    # and adapt() gives θ' itself
    adapted = adapt(model, params, t(Xs)[0], t(ys)[0], loss_fn=F.mse_loss, inner_lr=alpha)
    np.testing.assert_allclose(adapted["theta"].detach().numpy(), theta_prime, rtol=1e-12)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_vmap_and_loop_agree(first_order, steps):
    model = smooth_mlp(1)
    params = dict(model.named_parameters())
    batch = regression_batch(tasks=5, seed=3)
    results = {}
    for batching in ("vmap", "loop"):
        loss = meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=0.05, steps=steps,
                         first_order=first_order, batching=batching)
        results[batching] = (loss.detach(), flat_grad(loss, params))
    torch.testing.assert_close(results["vmap"][0], results["loop"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results["vmap"][1], results["loop"][1], rtol=1e-6, atol=1e-12)


def test_meta_sgd_learning_rate_gradient_matches_finite_differences():
    model = smooth_mlp(2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    alphas = {k: torch.full_like(v, 0.1).requires_grad_() for k, v in params.items()}
    batch = regression_batch(seed=5)

    def f(lr):
        return meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=lr, steps=2)

    autograd = flat_grad(f(alphas), alphas)
    numeric = finite_difference(f, alphas)
    torch.testing.assert_close(autograd, numeric, rtol=1e-5, atol=1e-8)
    assert autograd.abs().max() > 1e-3  # the gradient really reaches α


def test_zero_steps_and_frozen_parameters():
    model = smooth_mlp()
    params = dict(model.named_parameters())
    x, y, _, _ = regression_batch()
    same = adapt(model, params, x[0], y[0], loss_fn=F.mse_loss, inner_lr=0.1, steps=0)
    assert all(torch.equal(same[k], params[k]) for k in params)
    # params that do not require grad (e.g. evaluation under no_grad) still adapt
    with torch.no_grad():
        frozen = {k: v.detach() for k, v in params.items()}
        adapted = adapt(model, frozen, x[0], y[0], loss_fn=F.mse_loss, inner_lr=0.1)
    assert not torch.equal(adapted["0.weight"], frozen["0.weight"])


def test_same_seed_same_trajectory():
    from mamlkit.experiments.sinusoid import make_mlp, sample_tasks

    def run():
        torch.manual_seed(0)
        model = make_mlp().double()
        learner = mamlkit.MetaLearner(model, F.mse_loss, mamlkit.MetaConfig())
        log = mamlkit.train(learner, lambda g: [t.double() for t in sample_tasks(4, 5, generator=g).tensors()],
                            iterations=30, log_every=10, progress=False, seed=7)
        return [m["meta_loss"] for m in log], torch.cat([p.detach().flatten() for p in model.parameters()])

    (log1, p1), (log2, p2) = run(), run()
    assert log1 == log2 and torch.equal(p1, p2)
    assert log1[0] != log1[-1]


# ------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument


def _args():
    model = smooth_mlp()
    return model, dict(model.named_parameters()), regression_batch()


def test_error_task_dimensions_disagree():
    model, params, (sx, sy, qx, qy) = _args()
    with pytest.raises(ValueError, match="task dimensions disagree"):
        meta_loss(model, params, sx, sy, qx[:2], qy[:2], loss_fn=F.mse_loss, inner_lr=0.1)
    with pytest.raises(ValueError, match="support_y"):
        meta_loss(model, params, sx, sy[:, :3], qx, qy, loss_fn=F.mse_loss, inner_lr=0.1)


def test_error_empty_support_set():
    model, params, (sx, sy, qx, qy) = _args()
    with pytest.raises(ValueError, match="support_x: the support set is empty"):
        meta_loss(model, params, sx[:, :0], sy[:, :0], qx, qy, loss_fn=F.mse_loss, inner_lr=0.1)
    with pytest.raises(ValueError, match="support_x: the support set is empty"):
        adapt(model, params, sx[0, :0], sy[0, :0], loss_fn=F.mse_loss, inner_lr=0.1)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_error_bad_steps(steps):
    model, params, (sx, sy, _, _) = _args()
    with pytest.raises(ValueError, match="steps: expected an integer >= 0"):
        adapt(model, params, sx[0], sy[0], loss_fn=F.mse_loss, inner_lr=0.1, steps=steps)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_error_non_positive_inner_lr(lr):
    model, params, (sx, sy, _, _) = _args()
    with pytest.raises(ValueError, match="inner_lr: expected a positive finite float"):
        adapt(model, params, sx[0], sy[0], loss_fn=F.mse_loss, inner_lr=lr)


def test_error_params_not_a_dict_of_floating_tensors():
    model, params, (sx, sy, _, _) = _args()
    with pytest.raises(TypeError, match="params: expected a non-empty dict"):
        adapt(model, list(params.values()), sx[0], sy[0], loss_fn=F.mse_loss, inner_lr=0.1)
    with pytest.raises(TypeError, match=r"params\['0.weight'\]: expected a floating-point tensor"):
        adapt(model, {**params, "0.weight": torch.ones(5, 1, dtype=torch.long)}, sx[0], sy[0],
              loss_fn=F.mse_loss, inner_lr=0.1)
    with pytest.raises(TypeError, match="params: expected a non-empty dict"):
        adapt(model, {}, sx[0], sy[0], loss_fn=F.mse_loss, inner_lr=0.1)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_error_loss_turns_non_finite_names_the_step(batching):
    model = Linear(2)
    params = dict(model.named_parameters())
    x = torch.ones(2, 3, 2, dtype=torch.float64)
    y = torch.ones(2, 3, dtype=torch.float64)
    # α = 1e200: step 1 is finite, the parameters explode, the loss before step 2 overflows to inf
    with pytest.raises(FloatingPointError, match="inner step 2 of 3"):
        meta_loss(model, params, x, y, x, y, loss_fn=F.mse_loss, inner_lr=1e200, steps=3, batching=batching)


def test_error_bad_batching_name():
    model, params, batch = _args()
    with pytest.raises(ValueError, match="batching: expected one of"):
        meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=0.1, batching="threads")


# ------------------------------------------------------------------------------------------------
# buffers policy


def test_batchnorm_running_stats_in_training_mode_is_rejected():
    model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    params = dict(model.named_parameters())
    sx, sy, _, _ = regression_batch()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        adapt(model, params, sx[0], sy[0], loss_fn=F.mse_loss, inner_lr=0.1)
    # eval mode: running statistics are constants, read but never written
    model.eval()
    before = {k: v.clone() for k, v in model.named_buffers()}
    loss = meta_loss(model, params, *regression_batch(), loss_fn=F.mse_loss, inner_lr=0.1)
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_batch_statistics_batchnorm_meta_gradient_matches_finite_differences(batching):
    # torch's BatchNorm under a vmapped torch.func.grad gets the gradient of a gradient wrong (torch 2.13);
    # mamlkit vmaps only the forward pass, so both batchings must be exact here
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Tanh(),
                          nn.Linear(4, 1)).double()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    batch = regression_batch()
    f = lambda p: meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=0.1, steps=2, batching=batching)
    torch.testing.assert_close(flat_grad(f(params), params), finite_difference(f, params), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# evaluation helpers against a hand-written loop


def test_adaptation_curve_matches_repeated_adapt():
    model = smooth_mlp()
    params = dict(model.named_parameters())
    sx, sy, qx, qy = regression_batch(tasks=4)
    curve = mamlkit.adaptation_curve(model, params, sx, sy, qx, qy, loss_fn=F.mse_loss, inner_lr=0.1, steps=3)["loss"]
    assert curve.shape == (4, 4)
    for i in range(4):
        for s in range(4):
            p = adapt(model, params, sx[i], sy[i], loss_fn=F.mse_loss, inner_lr=0.1, steps=s)
            expected = F.mse_loss(torch.func.functional_call(model, p, (qx[i],)), qy[i])
            torch.testing.assert_close(curve[i, s], expected.detach())


def test_mean_ci95_formula():
    values = torch.tensor([0.2, 0.4, 0.6, 0.8])
    mean, ci = mamlkit.mean_ci95(values)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * np.std([0.2, 0.4, 0.6, 0.8], ddof=1) / 2)


def test_mlp_fast_path_equals_vmap_of_functional_call():
    from mamlkit.batched import is_plain_mlp, mlp_forward, task_batched_forward, vmap_forward

    model = smooth_mlp()
    assert is_plain_mlp(model)
    assert not is_plain_mlp(nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)))
    assert not is_plain_mlp(nn.Sequential(nn.Linear(1, 4), nn.PReLU(), nn.Linear(4, 1)))  # an activation with θ
    assert task_batched_forward(model, {}).__qualname__.startswith("mlp_forward")
    theta = {k: v.detach() + 0.1 * torch.randn(3, *v.shape, dtype=v.dtype) for k, v in model.named_parameters()}
    x = torch.randn(3, 7, 1, dtype=torch.float64)  # (tasks, N, 1)
    torch.testing.assert_close(mlp_forward(model)(theta, x), vmap_forward(model, {})(theta, x), rtol=1e-12, atol=1e-12)
