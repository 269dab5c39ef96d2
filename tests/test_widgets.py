"""Headless tests of mamlkit.widgets: widget values in, computed numbers and figure artists out.

Every number is compared against an independent computation: the true curve A·sin(x − φ) in numpy,
the linear family's gradients and Hessian written out by hand, `mamlkit.meta_loss` + autograd, the
full Hessian from `torch.autograd.functional.hessian`, `mamlkit.adaptation_curve`.
"""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyArrowPatch
from PIL import Image

import mamlkit
from mamlkit.experiments.sinusoid import make_mlp
from mamlkit.widgets import (
    InnerLoopExplorer,
    MetaGradientAnatomy,
    OuterLoopExplorer,
    compute_anatomy,
    compute_inner,
    compute_outer,
    toy2d,
)

torch.set_num_threads(1)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def mlps():
    torch.manual_seed(0)
    return make_mlp(), make_mlp()


@pytest.fixture(scope="module")
def inner(mlps):
    return InnerLoopExplorer(*mlps, amplitude=2.0, phase=0.5, k_shot=5, inner_lr=0.01, inner_steps=3, seed=0)


# ----------------------------------------------------------------------------------------------
# InnerLoopExplorer


def test_compute_inner_matches_independent_computations(mlps):
    maml, pretrained = mlps
    d = compute_inner({"MAML": maml, "pretrained": pretrained}, 3.0, 1.2, 7, 0.02, 4, seed=3)
    np.testing.assert_allclose(d["true"], 3.0 * np.sin(d["x"] - 1.2), atol=1e-5)  # y = A sin(x − φ)
    np.testing.assert_allclose(d["support_y"], 3.0 * np.sin(d["support_x"] - 1.2), atol=1e-5)
    assert d["support_x"].shape == (7,) and np.all(np.abs(d["support_x"]) <= 5)
    # the query loss after each step, recomputed by the library's evaluation code with the same task
    x = torch.tensor(d["x"]).reshape(1, -1, 1)
    sx, sy = (torch.tensor(d[k]).reshape(1, -1, 1) for k in ("support_x", "support_y"))
    curve = mamlkit.adaptation_curve(maml, dict(maml.named_parameters()), sx, sy, x, torch.tensor(d["true"]).reshape(1, -1, 1),
                                     loss_fn=F.mse_loss, inner_lr=0.02, steps=4)["loss"][0]
    np.testing.assert_allclose(d["query_loss"]["MAML"], curve.numpy(), rtol=1e-4)
    # the prediction after 0 steps is the model itself
    np.testing.assert_allclose(d["pred"]["pretrained"][0], pretrained(x[0])[:, 0].detach().numpy(), atol=1e-6)
    assert d["pred"]["MAML"].shape == (5, len(d["x"]))


def test_compute_inner_rejects_bad_values(mlps):
    with pytest.raises(ValueError, match="amplitude"):
        compute_inner({"MAML": mlps[0]}, 7.0, 0.5, 5, 0.01, 1, seed=0)
    with pytest.raises(ValueError, match="k_shot"):
        compute_inner({"MAML": mlps[0]}, 2.0, 0.5, 0, 0.01, 1, seed=0)


def test_inner_explorer_amplitude_slider_changes_data_and_figure(inner):
    line = inner.view["artists"]["true"]
    png, redraws = inner.canvas.png, inner.canvas.redraws
    inner.amplitude.value = 3.0
    x = np.asarray(line.get_xdata())
    np.testing.assert_allclose(line.get_ydata(), 3.0 * np.sin(x - inner.phase.value), atol=1e-5)
    np.testing.assert_allclose(inner.data["true"], line.get_ydata())
    assert inner.canvas.redraws == redraws + 1 and inner.canvas.png != png
    assert "A = 3.0" in inner.view["axes"][0].get_title()
    assert inner.canvas.output.outputs[0]["data"]["image/png"]  # the Output shows the new PNG


def test_inner_explorer_k_and_steps_change_support_and_loss_curve(inner):
    inner.k_shot.value = 8
    assert inner.view["artists"]["support"].get_offsets().shape == (8, 2)
    inner.inner_steps.value = 6
    loss_line = inner.view["artists"]["MAML:loss"]
    np.testing.assert_allclose(loss_line.get_ydata(), inner.data["query_loss"]["MAML"])
    assert len(loss_line.get_xdata()) == 7
    # the faint lines are the intermediate steps 1..5
    assert sum(len(l.get_xdata()) > 0 for l in inner.view["artists"]["MAML:steps"]) == 5
    assert inner.view["axes"][1].get_xlabel() == "inner steps"


def test_inner_explorer_new_task_button(inner):
    before = (inner.amplitude.value, inner.phase.value, inner.seed, inner.data["support_x"].copy())
    redraws = inner.canvas.redraws
    inner.new_task.click()
    assert inner.seed == before[2] + 1
    assert (inner.amplitude.value, inner.phase.value) != before[:2]
    assert not np.allclose(inner.data["support_x"][:len(before[3])], before[3])
    assert inner.canvas.redraws == redraws + 1  # one redraw although two sliders moved
    np.testing.assert_allclose(inner.data["true"], inner.amplitude.value * np.sin(inner.data["x"] - inner.phase.value),
                               atol=1e-5)


def test_blitted_png_equals_a_full_redraw(inner):
    inner.phase.value = 1.0
    fast = pixels(inner.canvas.png)
    full = pixels(inner.canvas.show(full=True))
    assert fast.shape == full.shape
    assert (np.abs(fast - full) > 8).mean() < 0.002  # the same picture (anti-aliasing aside)


# ----------------------------------------------------------------------------------------------
# toy2d: the outer steps against hand-written 2-D gradients


def linear_by_hand(theta, x, y):
    """Loss, gradient and Hessian of L(w, b) = mean((w x + b − y)²), written out."""
    w, b = theta
    r = w * x + b - y
    grad = np.array([2 * np.mean(r * x), 2 * np.mean(r)])
    hess = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])
    return np.mean(r ** 2), grad, hess


@pytest.fixture(scope="module")
def linear_tasks():
    return toy2d.make_tasks("linear", 3, k_shot=4, q_query=6, seed=1)


def hand_meta_gradients(tasks, theta, alpha):
    """Per task (first-order term, MAML meta-gradient) for one inner step, by hand."""
    out = []
    for i in range(tasks.n_tasks):
        sx, sy, qx, qy = (t[i, :, 0].double().numpy() for t in tasks.tensors())
        _, gs, hs = linear_by_hand(theta, sx, sy)
        adapted = theta - alpha * gs  # θ' = θ − α ∇L_support(θ)
        _, gq, _ = linear_by_hand(adapted, qx, qy)
        out.append((gq, (np.eye(2) - alpha * hs) @ gq))
    return out


@pytest.mark.parametrize("algorithm", ["MAML", "FOMAML"])
def test_outer_step_matches_hand_written_gradient(linear_tasks, algorithm):
    theta, alpha, beta = np.array([0.3, -0.7]), 0.2, 0.1
    g = hand_meta_gradients(linear_tasks, theta, alpha)
    mean = np.mean([fo if algorithm == "FOMAML" else maml for fo, maml in g], axis=0)
    step = toy2d.outer_step(nn_linear(), torch.tensor(theta, dtype=torch.float32), linear_tasks, algorithm,
                            inner_lr=alpha, meta_lr=beta)
    np.testing.assert_allclose(step.numpy(), theta - beta * mean, rtol=1e-4, atol=1e-5)


def nn_linear():
    return toy2d.make_model("linear")


def test_reptile_step_by_hand(linear_tasks):
    theta, alpha, eps, steps = np.array([0.3, -0.7]), 0.2, 0.7, 3
    adapted = []
    for i in range(linear_tasks.n_tasks):
        sx, sy = (t[i, :, 0].double().numpy() for t in linear_tasks.tensors()[:2])
        t = theta.copy()
        for _ in range(steps):
            t = t - alpha * linear_by_hand(t, sx, sy)[1]
        adapted.append(t)
    expected = theta + eps * np.mean(np.array(adapted) - theta, axis=0)  # θ ← θ + ε·mean(θ'ᵢ − θ)
    step = toy2d.outer_step(nn_linear(), torch.tensor(theta, dtype=torch.float32), linear_tasks, "Reptile",
                            inner_lr=alpha, inner_steps=steps, epsilon=eps)
    np.testing.assert_allclose(step.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_meta_objective_grid_equals_meta_loss():
    tasks = toy2d.make_tasks("sine", 3, seed=2)
    model = toy2d.make_model("sine")
    thetas = torch.tensor([[0.5, 0.0], [2.0, 1.3], [3.1, -0.4]])
    grid = toy2d.meta_objective(model, thetas, tasks, inner_lr=0.3, inner_steps=2)
    for theta, value in zip(thetas, grid):
        ref = mamlkit.meta_loss(model, toy2d.to_params(model, theta), *tasks.tensors(), loss_fn=F.mse_loss,
                                inner_lr=0.3, steps=2)
        assert value.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["sine", "linear"])
def test_first_order_plus_hessian_term_is_the_autograd_meta_gradient(family):
    tasks = toy2d.make_tasks(family, 2, seed=3)
    model = toy2d.make_model(family)
    theta, alpha = torch.tensor([1.7, 0.9]), 0.25
    sx, sy, qx, qy = (t[:1] for t in tasks.tensors())  # task 1, with its task dimension
    terms = toy2d.meta_gradient_terms(model, theta, sx[0], sy[0], qx[0], qy[0], inner_lr=alpha)
    for first_order, expected in ((False, terms["first_order"] + terms["hessian"]), (True, terms["first_order"])):
        t = theta.clone().requires_grad_()
        loss = mamlkit.meta_loss(model, toy2d.to_params(model, t), sx, sy, qx, qy, loss_fn=F.mse_loss,
                                 inner_lr=alpha, steps=1, first_order=first_order)
        (g,) = torch.autograd.grad(loss, t)
        torch.testing.assert_close(expected, g, rtol=1e-4, atol=1e-5)
    # the Hessian-vector product against the full 2×2 Hessian
    H = torch.autograd.functional.hessian(
        lambda t: F.mse_loss(torch.func.functional_call(model, toy2d.to_params(model, t), (sx[0],)), sy[0]), theta)
    torch.testing.assert_close(terms["hessian"], -alpha * H @ terms["first_order"], rtol=1e-4, atol=1e-5)
    assert terms["hessian"].norm() > 1e-3  # the test would be empty with a vanishing Hessian term


# ----------------------------------------------------------------------------------------------
# OuterLoopExplorer and MetaGradientAnatomy


def visible_arrows(ax):
    return [p for p in ax.patches if isinstance(p, FancyArrowPatch) and p.get_visible()]


def test_outer_explorer_step_reset_and_algorithms():
    w = OuterLoopExplorer("linear", n_tasks=3, theta0=(-2.0, -1.0), inner_lr=0.2, meta_lr=0.1, epsilon=0.7,
                          max_iterations=5)
    ax_tasks, ax_meta, ax_loss = w.view["axes"]
    assert len(visible_arrows(ax_tasks)) == 3  # one inner step θ -> θ'ᵢ per task
    assert ax_tasks.get_title().startswith("task losses") and ax_loss.get_xlabel() == "outer iteration"
    png = w.canvas.png
    w.step.click()
    assert w.iteration.value == 1 and w.canvas.png != png
    # MAML's first step, by hand
    theta0 = np.array([-2.0, -1.0])
    g = np.mean([maml for _, maml in hand_meta_gradients(w.tasks, theta0, 0.2)], axis=0)
    np.testing.assert_allclose(w.data["theta"], theta0 - 0.1 * g, rtol=1e-4, atol=1e-5)
    line = w.view["artists"]["paths"][("MAML", ax_tasks)]
    np.testing.assert_allclose(np.asarray(line.get_xydata()), w.data["path"]["MAML"])
    # each arrow goes from the current θ to that task's θ'ᵢ
    for arrow, target in zip(w.view["artists"]["arrows"], w.data["adapted"]):
        (x0, y0), (x1, y1) = arrow._posA_posB
        np.testing.assert_allclose([x0, y0, x1, y1], [*w.data["theta"], *target], atol=1e-6)
    w.algorithm.value = "Reptile"  # the θ marker jumps to Reptile's path
    np.testing.assert_allclose(w.view["artists"]["theta"][ax_meta].get_xydata()[0], w.data["path"]["Reptile"][-1])
    assert not np.allclose(w.data["path"]["Reptile"][-1], w.data["path"]["MAML"][-1])
    w.compare.value = False
    assert not w.view["artists"]["paths"][("MAML", ax_tasks)].get_visible()
    w.reset.click()
    assert w.iteration.value == 0 and len(w.data["path"]["Reptile"]) == 1


def test_compute_outer_cache_gives_the_same_path():
    tasks = toy2d.make_tasks("sine", 3)
    kw = dict(inner_lr=0.3, inner_steps=1, meta_lr=0.25, epsilon=1.0, theta0=(0.5, 0.0))
    cache = {}
    compute_outer(tasks, "FOMAML", iteration=2, cache=cache, **kw)
    stepped = compute_outer(tasks, "FOMAML", iteration=4, cache=cache, **kw)
    fresh = toy2d.outer_path(toy2d.make_model("sine"), (0.5, 0.0), tasks, "FOMAML", iterations=4, inner_lr=0.3,
                             meta_lr=0.25)
    np.testing.assert_allclose(stepped["path"]["FOMAML"], fresh["theta"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(stepped["meta_loss"]["FOMAML"], fresh["meta_loss"].numpy(), rtol=1e-5)


def test_anatomy_arrows_add_up():
    w = MetaGradientAnatomy("sine", theta=(2.0, 1.0), inner_lr=0.3, task=0)
    ax = w.view["axes"][0]
    assert len(visible_arrows(ax)) == 3
    png = w.canvas.png
    w.theta1.value = 2.5
    assert w.canvas.png != png
    np.testing.assert_allclose(w.data["theta"], [2.5, 1.0], atol=1e-6)
    arrows, s = w.view["artists"]["arrows"], w.scale
    fo_a, fo_b = (np.array(p) for p in arrows["first_order"]._posA_posB)
    h_a, h_b = (np.array(p) for p in arrows["hessian"]._posA_posB)
    t_a, t_b = (np.array(p) for p in arrows["total"]._posA_posB)
    np.testing.assert_allclose(fo_a, [2.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(h_a, fo_b, atol=1e-6)  # tip to tail
    np.testing.assert_allclose(h_b, t_b, atol=1e-5)  # the two terms add up to the meta-gradient
    np.testing.assert_allclose(t_b - t_a, -s * w.data["total"], rtol=1e-5)
    w.task.value = -1  # the mean over tasks is the mean of the per-task terms
    per_task = [compute_anatomy(w.tasks, torch.tensor([2.5, 1.0]), 0.3, i)["total"] for i in range(3)]
    np.testing.assert_allclose(w.data["total"], np.mean(per_task, axis=0), rtol=1e-5)
    assert "mean over tasks" in w.view["artists"]["title"].get_text()
