"""OuterLoopExplorer and MetaGradientAnatomy: the outer loop and the meta-gradient on a plane of θ.

Finn, Abbeel, Levine (2017) (MAML; FOMAML, Section 5.2); Nichol, Achiam, Schulman (2018) (Reptile).
The model has two parameters (`mamlkit.widgets.toy2d`), so θ is a point and every quantity can be drawn:

    OuterLoopExplorer     each task's loss L_Tᵢ(θ; support) (contours), the objective before adaptation
                          1/B Σᵢ L_Tᵢ(θ; query) and the meta-objective after the inner steps
                          L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query) (contours), the path of θ over outer
                          iterations, and each task's inner step as an arrow θ -> θ'ᵢ. MAML, FOMAML and
                          Reptile side by side: play / step / reset.
    MetaGradientAnatomy   at one θ, the one-step meta-gradient (I − α∇²L_support)∇L_query(θ') as its
                          first-order term ∇L_query(θ') plus its Hessian term −α∇²L_support ∇L_query(θ').

Arrows show descent directions: the update a term asks for is −β × that term.
Testable by design: `compute_grids`, `compute_outer`, `compute_anatomy` are plain functions of the
widgets' values; the widget classes expose their controls, `data`, `view` and `canvas`.
"""
from __future__ import annotations

import time

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch

from . import toy2d
from .canvas import FONT_SIZE, Canvas, new_figure

TASK_COLORS = ["tab:orange", "tab:green", "tab:purple", "tab:brown"]
ALGORITHM_COLORS = {"MAML": "tab:red", "FOMAML": "tab:blue", "Reptile": "tab:gray"}
THETA0 = {"linear": (-2.5, -2.5), "sine": (0.5, 0.0)}


# ----------------------------------------------------------------------------------------------
# plain computations


def compute_grids(tasks: toy2d.TaskSet, inner_lr: float, inner_steps: int, n: int = 41) -> dict:
    """Contour data on an n×n grid over the family's plane (numpy):
    "t1", "t2" (n,); "task" (tasks, n, n) = L_Tᵢ(θ; support); "before" (n, n) = 1/B Σᵢ L_Tᵢ(θ; query);
    "after" (n, n) = L_meta(θ) = 1/B Σᵢ L_Tᵢ(θ'ᵢ; query) after inner_steps steps of size α = inner_lr.
    """
    model = toy2d.make_model(tasks.family)
    t1, t2, points = toy2d.grid(tasks.family, n)  # points: (n*n, 2)
    before = toy2d.meta_objective(model, points, tasks, inner_lr=inner_lr, inner_steps=0)
    after = toy2d.meta_objective(model, points, tasks, inner_lr=inner_lr, inner_steps=inner_steps)
    return {"t1": t1.numpy(), "t2": t2.numpy(), "inner_lr": inner_lr, "inner_steps": inner_steps,
            "task": toy2d.task_losses(model, points, tasks).reshape(-1, n, n).numpy(),  # (tasks, n, n)
            "before": before.reshape(n, n).numpy(), "after": after.reshape(n, n).numpy()}


def compute_outer(tasks: toy2d.TaskSet, algorithm: str, *, inner_lr: float, inner_steps: int, meta_lr: float,
                  epsilon: float, iteration: int, theta0, cache: dict | None = None) -> dict:
    """The paths of θ under MAML, FOMAML and Reptile for `iteration` outer iterations from θ₀ (numpy).

    Returns "path"[alg] (iteration+1, 2), "meta_loss"[alg] (iteration+1,) = L_meta along it, and for
    `algorithm`: "theta" (2,) its current θ and "adapted" (tasks, 2) the θ'ᵢ reached from there.
    `cache` (any dict, kept by the caller) holds computed iterates, so stepping forward costs one
    outer step per algorithm instead of a whole path.
    """
    if algorithm not in toy2d.ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {toy2d.ALGORITHMS}, got {algorithm!r}")
    model = toy2d.make_model(tasks.family)
    cache = {} if cache is None else cache
    out = {"path": {}, "meta_loss": {}}
    for alg in toy2d.ALGORITHMS:
        key = (alg, inner_lr, inner_steps, meta_lr if alg != "Reptile" else epsilon, tuple(theta0))
        path = cache.setdefault(key, [torch.tensor(theta0, dtype=torch.float32)])
        while len(path) <= iteration:
            path.append(toy2d.outer_step(model, path[-1], tasks, alg, inner_lr=inner_lr, inner_steps=inner_steps,
                                         meta_lr=meta_lr, epsilon=epsilon))
        thetas = torch.stack(path[:iteration + 1])  # (iteration+1, 2)
        out["path"][alg] = thetas.numpy()
        out["meta_loss"][alg] = toy2d.meta_objective(model, thetas, tasks, inner_lr=inner_lr,
                                                     inner_steps=inner_steps).numpy()
    theta = torch.as_tensor(out["path"][algorithm][-1])
    out["theta"] = theta.numpy()
    out["adapted"] = toy2d.inner_steps_of(model, theta, tasks, inner_lr, inner_steps).numpy()  # (tasks, 2)
    return out


def compute_anatomy(tasks: toy2d.TaskSet, theta, inner_lr: float, task: int) -> dict:
    """The one-step meta-gradient at θ split into "first_order", "hessian", "total" (numpy (2,)), and
    "adapted" θ'. task = i for task i, or -1 for the mean over tasks (the meta-objective's gradient)."""
    if not -1 <= task < tasks.n_tasks:
        raise ValueError(f"task: expected -1 (mean over tasks) or a task index below {tasks.n_tasks}, got {task}")
    model = toy2d.make_model(tasks.family)
    which = range(tasks.n_tasks) if task == -1 else [task]
    terms = [toy2d.meta_gradient_terms(model, theta, *(t[i] for t in tasks.tensors()), inner_lr=inner_lr)
             for i in which]
    return {k: torch.stack([t[k] for t in terms]).mean(0).numpy() for k in terms[0]}


# ----------------------------------------------------------------------------------------------
# shared drawing helpers


def arrow(ax, color, lw=1.5) -> FancyArrowPatch:
    a = FancyArrowPatch((0, 0), (0, 0), arrowstyle="-|>", mutation_scale=12, color=color, lw=lw, zorder=6)
    ax.add_patch(a)
    return a


def plane_axes(ax, family: str, title: str) -> None:
    (a0, a1), (b0, b1) = toy2d.EXTENT[family]
    n1, n2 = toy2d.PARAM_NAMES[family]
    ax.set(xlim=(a0, a1), ylim=(b0, b1), xlabel=f"θ₁ = {n1}", ylabel=f"θ₂ = {n2}", title=title)


def replace_contours(view: dict, key: str, ax, *args, colorbar: str = "", colorbar_location: str = "right",
                     **kw) -> None:
    """Replace the contour set `key` of `ax`; with `colorbar` (its label), keep a colorbar of it beside `ax`.

    The colorbar is made once (when the layout is computed) and then re-pointed at each new contour set.
    """
    old = view["contours"].pop(key, None)
    if old is not None:
        old.remove()
    cs = view["contours"][key] = ax.contour(*args, **kw)
    if colorbar:
        bars = view.setdefault("colorbars", {})
        if key in bars:
            bars[key].update_normal(cs)
        else:
            bars[key] = ax.figure.colorbar(cs, ax=ax, shrink=0.9, pad=0.02, location=colorbar_location)
            bars[key].set_label(colorbar, fontsize=FONT_SIZE)
            bars[key].ax.tick_params(labelsize=FONT_SIZE)


# ----------------------------------------------------------------------------------------------
# OuterLoopExplorer


def new_outer_view(tasks: toy2d.TaskSet, max_iterations: int) -> dict:
    fig, (ax_tasks, ax_meta, ax_loss) = new_figure(3, width=4.4, height=4.2)
    fam = tasks.family
    plane_axes(ax_tasks, fam, "task losses L_Tᵢ(θ; support)\n")
    plane_axes(ax_meta, fam, "before (dashed) / after inner steps\n")
    art = {"paths": {}, "theta": {}, "arrows": []}
    for i, opt in enumerate(tasks.optima.tolist()):
        ax_tasks.plot(*opt, "*", color=TASK_COLORS[i], ms=12, mec="k", label=f"θ*{i + 1} (task {i + 1})")
    for ax in (ax_tasks, ax_meta):
        for alg, c in ALGORITHM_COLORS.items():
            art["paths"][(alg, ax)] = ax.plot([], [], ".-", color=c, ms=3)[0]
        art["theta"][ax] = ax.plot([], [], "o", color="k", ms=6, zorder=7)[0]
    art["arrows"] = [arrow(ax_tasks, TASK_COLORS[i]) for i in range(tasks.n_tasks)]
    art["title"] = fig.suptitle(" ", fontsize=FONT_SIZE + 1)
    art["curves"] = {alg: ax_loss.plot([], [], color=c, label=alg)[0] for alg, c in ALGORITHM_COLORS.items()}
    ax_loss.set(xlim=(0, max_iterations), xlabel="outer iteration", ylabel="L_meta(θ)",
                title="meta-objective along each path\n")
    ax_loss.legend(fontsize=FONT_SIZE, loc="upper right")
    ax_tasks.legend(fontsize=FONT_SIZE, loc="lower right")
    return {"figure": fig, "axes": (ax_tasks, ax_meta, ax_loss), "artists": art, "contours": {}, "tasks": tasks}


def draw_outer_background(view: dict, grids: dict, theta0) -> None:
    """The still parts that depend on α and inner_steps: contours and the loss axis' range."""
    ax_tasks, ax_meta, ax_loss = view["axes"]
    t1, t2 = grids["t1"], grids["t2"]
    for i, z in enumerate(grids["task"]):
        levels = np.quantile(z, [0.02, 0.08, 0.2, 0.4])  # a few rings around each task's optimum
        replace_contours(view, f"task{i}", ax_tasks, t1, t2, z, levels=np.unique(levels), colors=TASK_COLORS[i],
                          linewidths=0.8, alpha=0.8)
    levels = np.unique(np.quantile(grids["after"], np.linspace(0.01, 0.9, 12)))
    replace_contours(view, "before", ax_meta, t1, t2, grids["before"], levels=8, colors="0.6",
                      linestyles="dashed", linewidths=0.7)
    replace_contours(view, "after", ax_meta, t1, t2, grids["after"], levels=levels, cmap="viridis", linewidths=1,
                      colorbar="L_meta(θ), after inner steps")
    # the loss axis: from 0 to a little above L_meta(θ₀), where every path starts
    tasks = view["tasks"]
    start = toy2d.meta_objective(toy2d.make_model(tasks.family), torch.tensor([theta0], dtype=torch.float32), tasks,
                                 inner_lr=grids["inner_lr"], inner_steps=grids["inner_steps"])
    ax_loss.set_ylim(0, 1.3 * float(start[0]) + 1e-6)


def draw_outer(view: dict, data: dict, algorithm: str, compare: bool, title: str = "") -> None:
    """Move the paths, the current θ, the arrows θ -> θ'ᵢ and the loss curves to `data` (compute_outer)."""
    art = view["artists"]
    for (alg, ax), line in art["paths"].items():
        line.set_data(*data["path"][alg].T)
        line.set_visible(compare or alg == algorithm)
        line.set_linewidth(2.0 if alg == algorithm else 0.8)
        line.set_alpha(1.0 if alg == algorithm else 0.5)
    for marker in art["theta"].values():
        marker.set_data([data["theta"][0]], [data["theta"][1]])
    for arrow, target in zip(art["arrows"], data["adapted"]):
        arrow.set_positions(tuple(data["theta"]), tuple(target))  # θ -> θ'ᵢ
    for alg, line in art["curves"].items():
        line.set_data(np.arange(len(data["meta_loss"][alg])), data["meta_loss"][alg])
        line.set_visible(compare or alg == algorithm)
    art["title"].set_text(title)


def _outer_moving(view: dict) -> list:
    art = view["artists"]
    return [*art["paths"].values(), *art["arrows"], *art["theta"].values(), *art["curves"].values(), art["title"]]


class OuterLoopExplorer:
    """The outer loop on a plane of θ: MAML, FOMAML and Reptile iterate from the same θ₀.

    Arguments: family "sine" (f = A·sin(x − φ), non-quadratic losses) or "linear" (f = w·x + b),
    n_tasks (≤ 4), theta0, inner_lr (α), inner_steps, meta_lr (β, MAML/FOMAML), epsilon (ε, Reptile),
    max_iterations, algorithm.

    Controls: `algorithm` (Dropdown), `inner_lr`, `inner_steps`, `meta_lr`, `epsilon`, `iteration`
    (IntSlider, driven by `play`), `step` and `reset` (Buttons), `compare` (Checkbox: all three paths).
    State: `tasks`, `grids`, `data` (the last `compute_outer` result), `view`, `canvas`.
    """

    def __init__(self, family: str = "sine", *, n_tasks: int = 3, theta0=None, inner_lr: float = 0.3,
                 inner_steps: int = 1, meta_lr: float = 0.25, epsilon: float = 1.0, max_iterations: int = 40,
                 algorithm: str = "MAML", seed: int = 0):
        if algorithm not in toy2d.ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {toy2d.ALGORITHMS}, got {algorithm!r}")
        self.tasks = toy2d.make_tasks(family, n_tasks, seed=seed)
        self.theta0 = tuple(float(v) for v in (THETA0[family] if theta0 is None else theta0))
        if len(self.theta0) != 2:
            raise ValueError(f"theta0: expected two numbers (θ₁, θ₂), got {theta0!r}")
        self.cache: dict = {}
        s = {"description_width": "90px"}
        self.algorithm = widgets.Dropdown(options=list(toy2d.ALGORITHMS), value=algorithm, description="algorithm", style=s)
        self.inner_lr = widgets.FloatSlider(inner_lr, min=0.05, max=0.6, step=0.05, description="α (inner_lr)", style=s, continuous_update=False)
        self.inner_steps = widgets.IntSlider(inner_steps, min=1, max=5, description="inner_steps", style=s, continuous_update=False)
        self.meta_lr = widgets.FloatSlider(meta_lr, min=0.05, max=1.5, step=0.05, description="β (meta_lr)", style=s, continuous_update=False)
        self.epsilon = widgets.FloatSlider(epsilon, min=0.1, max=2.0, step=0.1, description="ε (Reptile)", style=s, continuous_update=False)
        self.iteration = widgets.IntSlider(0, min=0, max=max_iterations, description="iteration", style=s)
        self.play = widgets.Play(0, min=0, max=max_iterations, interval=250, description="play")
        widgets.jslink((self.play, "value"), (self.iteration, "value"))  # the browser moves the slider
        self.step = widgets.Button(description="step", icon="step-forward")
        self.reset = widgets.Button(description="reset", icon="undo")
        self.compare = widgets.Checkbox(True, description="show all three paths")
        # α, β, ε, inner_steps recompute whole paths (`python -m mamlkit.bench.widgets` times it): redraw when
        # the slider is released
        self.view = new_outer_view(self.tasks, max_iterations)
        self.canvas = Canvas(self.view["figure"])
        self.canvas.animate(*_outer_moving(self.view))
        self.grids: dict = {}
        self.data: dict = {}
        self.last_ms = 0.0
        self._grid_key = None
        for w in (self.algorithm, self.inner_lr, self.inner_steps, self.meta_lr, self.epsilon, self.iteration,
                  self.compare):
            w.observe(self.update, names="value")
        self.step.on_click(lambda _: setattr(self.iteration, "value", min(self.iteration.value + 1, self.iteration.max)))
        self.reset.on_click(lambda _: setattr(self.iteration, "value", 0))
        controls = widgets.VBox([self.algorithm, self.inner_lr, self.inner_steps, self.meta_lr, self.epsilon,
                                 self.iteration, widgets.HBox([self.play, self.step, self.reset]), self.compare])
        self.box = widgets.VBox([controls, self.canvas.output])
        self.update()

    def update(self, _=None) -> None:
        t0 = time.perf_counter()
        alpha, steps, alg = self.inner_lr.value, self.inner_steps.value, self.algorithm.value
        full = self._grid_key != (alpha, steps)
        if full:  # the contours depend on α and inner_steps only
            self.grids = compute_grids(self.tasks, alpha, steps)
            draw_outer_background(self.view, self.grids, self.theta0)
            self._grid_key = (alpha, steps)
        try:
            self.data = compute_outer(self.tasks, alg, inner_lr=alpha, inner_steps=steps, meta_lr=self.meta_lr.value,
                                      epsilon=self.epsilon.value, iteration=self.iteration.value, theta0=self.theta0,
                                      cache=self.cache)
            step = f"β = {self.meta_lr.value:g}" if alg != "Reptile" else f"ε = {self.epsilon.value:g}"
            loss = self.data["meta_loss"][alg][-1]
            title = (f"{alg}, iteration {self.iteration.value}: θ = ({self.data['theta'][0]:.2f}, "
                     f"{self.data['theta'][1]:.2f}), L_meta = {loss:.3f}   (α = {alpha:g}, {steps} inner step(s), {step})")
            draw_outer(self.view, self.data, alg, self.compare.value, title)
        except FloatingPointError as e:  # shown where the learner looks
            self.view["artists"]["title"].set_text(f"diverged: {str(e)[:110]}")
        self.canvas.show(full=full)
        self.last_ms = 1000 * (time.perf_counter() - t0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)
