"""mamlkit/speed.py against plain computations: autocast's dtypes, compile's fallback, checkpointed adapt.

checkpointed_adapt must give the meta-gradient of plain `mamlkit.adapt` (float64, allclose) with a
lower peak memory, measured by the benchmark's own meter.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import mamlkit
from mamlkit.bench.problems import peak_memory_mb
from mamlkit.maml import meta_loss
from mamlkit.speed import autocast_context, checkpointed_adapt, checkpointed_meta_loss, maybe_compile

torch.set_num_threads(1)


def small_conv(width=4, n_way=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 8 * 8, n_way))


def task(n_way=3, queries=2, dtype=torch.double):
    g = torch.Generator().manual_seed(1)
    sx = torch.randn(n_way, 1, 16, 16, generator=g, dtype=dtype)  # (n_way*k_shot, 1, 16, 16)
    qx = torch.randn(n_way * queries, 1, 16, 16, generator=g, dtype=dtype)  # (n_way*q_query, 1, 16, 16)
    return sx, torch.arange(n_way), qx, torch.arange(n_way).repeat(queries)


def test_autocast_context_dtypes_and_errors():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with autocast_context(False, "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast_context(True, "cpu"):
        out = a @ b
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a @ b, rtol=2e-2, atol=5e-2)  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="device"):
        autocast_context(True, "meta")
    with autocast_context(False, "mps"):  # off: a no-op on any device (the trainer enters it every meta-step)
        assert (a @ b).dtype == torch.float32
    with pytest.raises(TypeError, match="enabled"):
        autocast_context("yes", "cpu")


def test_autocast_meta_gradient_close_to_float32():
    model = small_conv().float()
    params = dict(model.named_parameters())
    sx, sy, qx, qy = (t.float() if t.is_floating_point() else t for t in task(dtype=torch.float32))
    batch = (sx[None], sy[None], qx[None], qy[None])  # one task: (1, ...)

    def grads(bf16):
        with autocast_context(bf16, "cpu"):
            loss = mamlkit.meta_loss(model, params, *batch, loss_fn=F.cross_entropy, inner_lr=0.1, batching="loop")
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))])

    full, half = grads(False), grads(True)
    cosine = float(full @ half / (full.norm() * half.norm()))
    assert full.dtype == half.dtype == torch.float32 and cosine > 0.99


def test_maybe_compile_disabled_returns_the_function():
    def f(x):
        return x * 2

    assert maybe_compile(f, False) is f
    with pytest.raises(TypeError, match="fn"):
        maybe_compile(3)


def test_maybe_compile_falls_back_with_a_warning():
    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    def f(x):
        return torch.sin(x) + 1

    g = maybe_compile(f, True, backend=failing_backend)
    x = torch.randn(5)
    with pytest.warns(RuntimeWarning, match="maybe_compile: compiling f failed"):
        torch.testing.assert_close(g(x), f(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: later calls run uncompiled, silently
        torch.testing.assert_close(g(x), f(x))


@pytest.mark.parametrize("first_order", [True, False])
def test_maybe_compile_a_meta_loss_compiles_fomaml_and_never_gives_maml_a_wrong_gradient(first_order):
    # aot_eager: torch.compile's graph capture and autograd handling without a C++ compiler
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    params = dict(model.named_parameters())
    batch = (torch.randn(2, 3, 1), torch.randn(2, 3, 1), torch.randn(2, 4, 1), torch.randn(2, 4, 1))

    def loss(*b):
        return meta_loss(model, params, *b, loss_fn=F.mse_loss, inner_lr=0.1, first_order=first_order, batching="loop")

    eager = torch.autograd.grad(loss(*batch), list(params.values()))
    compiled = maybe_compile(loss, True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = compiled(*batch)
    fell_back = [w for w in caught if "maybe_compile: compiling loss failed" in str(w.message)]
    # FOMAML's graph is first-order: it compiles, and its meta-gradient is the eager one. MAML's meta-gradient
    # differentiates the backward of the compiled support-loss graph, which torch 2.13's aot_autograd refuses:
    # either the compiled call fails (a warning, then the uncompiled meta-loss) or the backward raises torch's
    # own clear error; never a wrong gradient.
    if not first_order and not fell_back:
        with pytest.raises(RuntimeError, match="does not currently support double backward"):
            torch.autograd.grad(value, list(params.values()))
        return
    assert not fell_back or not first_order
    for g, e in zip(torch.autograd.grad(value, list(params.values())), eager):
        torch.testing.assert_close(g, e)


def test_maybe_compile_does_not_hide_errors_of_the_function():
    def f(x):
        if x.sum() > 0:
            raise ValueError("x: expected a non-positive sum")
        return x

    g = maybe_compile(f, True, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compiling failed" warning: the error is f's own
        with pytest.raises(ValueError, match="non-positive"):
            g(torch.ones(3))
        torch.testing.assert_close(g(-torch.ones(3)), -torch.ones(3))


def test_maybe_compile_eager_backend_gives_the_same_numbers():
    def f(x):
        return torch.sin(x) * x

    g = maybe_compile(f, True, backend="eager")
    x = torch.randn(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(g(x), f(x))


@pytest.mark.parametrize("first_order", [False, True])
def test_checkpointed_adapt_same_meta_gradient(first_order):
    model = small_conv().double()
    params = dict(model.named_parameters())
    sx, sy, qx, qy = task()
    kw = dict(loss_fn=F.cross_entropy, inner_lr=0.3, steps=3, first_order=first_order)

    def meta_gradient(adapt):
        adapted = adapt(model, params, sx, sy, **kw)
        loss = F.cross_entropy(functional_call(model, adapted, (qx,)), qy)
        return adapted, torch.autograd.grad(loss, list(params.values()))

    (a_plain, g_plain), (a_ckpt, g_ckpt) = meta_gradient(mamlkit.adapt), meta_gradient(checkpointed_adapt)
    for k in params:
        torch.testing.assert_close(a_ckpt[k], a_plain[k], rtol=1e-12, atol=1e-12)
    for a, b in zip(g_ckpt, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checkpointed_adapt_meta_sgd_and_errors():
    model = small_conv().double()
    params = dict(model.named_parameters())
    alpha = {k: torch.full_like(p, 0.2, requires_grad=True) for k, p in params.items()}  # Meta-SGD: learned α
    sx, sy, qx, qy = task()
    grads = []
    for adapt in (mamlkit.adapt, checkpointed_adapt):
        adapted = adapt(model, params, sx, sy, loss_fn=F.cross_entropy, inner_lr=alpha, steps=2)
        loss = F.cross_entropy(functional_call(model, adapted, (qx,)), qy)
        grads.append(torch.autograd.grad(loss, list(alpha.values())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="steps"):
        checkpointed_adapt(model, params, sx, sy, loss_fn=F.cross_entropy, inner_lr=0.1, steps=-1)
    with pytest.raises(FloatingPointError, match="inner step"):
        checkpointed_adapt(model, params, sx * float("nan"), sy, loss_fn=F.cross_entropy, inner_lr=0.1, steps=2)


def test_checkpointing_lowers_peak_memory_at_many_steps():
    model = small_conv(width=16)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = (t[None].float() if t.is_floating_point() else t[None] for t in task(queries=1))
    kw = dict(loss_fn=F.cross_entropy, inner_lr=0.1, steps=8)

    def plain():
        mamlkit.meta_loss(model, params, sx, sy, qx, qy, batching="loop", **kw).backward()

    def ckpt():
        checkpointed_meta_loss(model, params, sx, sy, qx, qy, **kw).backward()

    for p in params.values():
        p.grad = None
    plain_mb = peak_memory_mb(plain)
    plain_grads = [p.grad.clone() for p in params.values()]
    for p in params.values():
        p.grad = None
    ckpt_mb = peak_memory_mb(ckpt)
    for p, g in zip(params.values(), plain_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert ckpt_mb < 0.6 * plain_mb, (ckpt_mb, plain_mb)
