"""MetaGradientAnatomy: MAML's one-step meta-gradient at a point θ, split into its two terms, as arrows.

Finn, Abbeel, Levine (2017), Section 2.2 and 5.2. With θ' = θ − α ∇L_support(θ), the chain rule gives

    ∇θ L_query(θ') = (I − α ∇²L_support(θ)) ∇L_query(θ')
                   = ∇L_query(θ')              the first-order term (all that FOMAML keeps)
                     − α ∇²L_support(θ) ∇L_query(θ')   the Hessian term (a Hessian-vector product)

On the plane of a two-parameter model (`mamlkit.widgets.toy2d`) the three vectors are drawn from θ as descent
directions (−term), tip to tail: first-order term, then the Hessian term, adding up to the meta-gradient.
Where the support loss is strongly curved the Hessian term is large and FOMAML's direction is off.
`compute_anatomy` (in widgets_outer) is the plain function behind it.
"""
from __future__ import annotations

import time

import ipywidgets as widgets
import numpy as np
import torch

from . import toy2d
from .canvas import FONT_SIZE, Canvas, new_figure
from .outer import (
    TASK_COLORS,
    THETA0,
    arrow,
    compute_anatomy,
    plane_axes,
    replace_contours,
)

ARROW_COLORS = {"first_order": "tab:blue", "hessian": "tab:orange", "total": "black"}
ARROW_LENGTH = 0.3  # the longest arrow spans this fraction of the plot's width (the scale is printed)


def task_objective_grid(tasks: toy2d.TaskSet, inner_lr: float, task: int, n: int = 41) -> dict:
    """L_Tᵢ(θ'ᵢ; query) after one inner step on an n×n grid (task = -1: the mean over tasks)."""
    model = toy2d.make_model(tasks.family)
    t1, t2, points = toy2d.grid(tasks.family, n)
    if task >= 0:  # one task: the same function on a one-task TaskSet
        tasks = toy2d.TaskSet(tasks.family, *(t[task:task + 1] for t in tasks.tensors()), tasks.optima[task:task + 1])
    z = toy2d.meta_objective(model, points, tasks, inner_lr=inner_lr, inner_steps=1).reshape(n, n)
    return {"t1": t1.numpy(), "t2": t2.numpy(), "z": z.numpy()}


def new_anatomy_view(tasks: toy2d.TaskSet) -> dict:
    fig, (ax,) = new_figure(1, width=10.0, height=5.0)
    plane_axes(ax, tasks.family, "")
    for i, opt in enumerate(tasks.optima.tolist()):
        ax.plot(*opt, "*", color=TASK_COLORS[i], ms=12, mec="k", label=f"θ*{i + 1}")
    art = {"theta": ax.plot([], [], "o", color="k", ms=6, zorder=7, label="θ")[0],
           "adapted": ax.plot([], [], "s", color="0.4", ms=5, zorder=7, label="θ' = θ − α∇L_support(θ)")[0],
           "arrows": {k: arrow(ax, c, lw=2) for k, c in ARROW_COLORS.items()},
           "title": ax.set_title(" \n ", fontsize=FONT_SIZE + 1)}
    for k, c in ARROW_COLORS.items():  # legend entries for the arrows
        ax.plot([], [], color=c, lw=2, label={"first_order": "−∇L_query(θ')  (first-order term)",
                                               "hessian": "+α∇²L_support ∇L_query(θ')  (−Hessian term)",
                                               "total": "−meta-gradient (MAML)"}[k])
    ax.legend(fontsize=FONT_SIZE, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the plane, not over it
    return {"figure": fig, "axes": (ax,), "artists": art, "contours": {}}


def draw_anatomy_background(view: dict, grid: dict) -> None:
    ax = view["axes"][0]
    levels = np.unique(np.quantile(grid["z"], np.linspace(0.01, 0.9, 12)))
    replace_contours(view, "objective", ax, grid["t1"], grid["t2"], grid["z"], levels=levels, cmap="viridis",
                      linewidths=0.8, colorbar="L(θ') after one inner step", colorbar_location="bottom")


def draw_anatomy(view: dict, data: dict, title: str = "") -> float:
    """Move θ, θ' and the three arrows (−first_order, −hessian tip to tail, −total). Returns the scale."""
    art, ax = view["artists"], view["axes"][0]
    theta = data["theta"]
    longest = max(np.linalg.norm(data[k]) for k in ARROW_COLORS) + 1e-12
    scale = ARROW_LENGTH * (ax.get_xlim()[1] - ax.get_xlim()[0]) / longest
    fo_tip = theta - scale * data["first_order"]
    art["arrows"]["first_order"].set_positions(tuple(theta), tuple(fo_tip))
    art["arrows"]["hessian"].set_positions(tuple(fo_tip), tuple(fo_tip - scale * data["hessian"]))
    art["arrows"]["total"].set_positions(tuple(theta), tuple(theta - scale * data["total"]))
    art["theta"].set_data([theta[0]], [theta[1]])
    art["adapted"].set_data([data["adapted"][0]], [data["adapted"][1]])
    art["title"].set_text(title)
    return scale


class MetaGradientAnatomy:
    """Sliders for θ = (θ₁, θ₂) and α (inner_lr), a task chooser; the meta-gradient's terms as arrows.

    Controls: `theta1`, `theta2`, `inner_lr`, `task` (Dropdown: a task index, or -1 for the mean).
    State: `tasks`, `data` (the last `compute_anatomy` result), `grid`, `scale`, `view`, `canvas`.
    """

    def __init__(self, family: str = "sine", *, n_tasks: int = 3, theta=None, inner_lr: float = 0.3,
                 task: int = 0, seed: int = 0):
        self.tasks = toy2d.make_tasks(family, n_tasks, seed=seed)
        theta = THETA0[family] if theta is None else theta
        (a0, a1), (b0, b1) = toy2d.EXTENT[family]
        n1, n2 = toy2d.PARAM_NAMES[family]
        s = {"description_width": "90px"}
        self.theta1 = widgets.FloatSlider(theta[0], min=a0, max=a1, step=0.05, description=f"θ₁ = {n1}", style=s)
        self.theta2 = widgets.FloatSlider(theta[1], min=b0, max=b1, step=0.05, description=f"θ₂ = {n2}", style=s)
        self.inner_lr = widgets.FloatSlider(inner_lr, min=0.02, max=0.6, step=0.02, description="α (inner_lr)", style=s)
        options = [(f"task {i + 1}", i) for i in range(self.tasks.n_tasks)] + [("mean over tasks", -1)]
        self.task = widgets.Dropdown(options=options, value=task, description="task", style=s)
        self.view = new_anatomy_view(self.tasks)
        self.canvas = Canvas(self.view["figure"])
        art = self.view["artists"]
        self.canvas.animate(art["theta"], art["adapted"], *art["arrows"].values(), art["title"])
        self.data: dict = {}
        self.grid: dict = {}
        self.scale = 1.0
        self.last_ms = 0.0
        self._grid_key = None
        for w in (self.theta1, self.theta2, self.inner_lr, self.task):
            w.observe(self.update, names="value")
        self.box = widgets.HBox([widgets.VBox([self.theta1, self.theta2, self.inner_lr, self.task]), self.canvas.output])
        self.update()

    def update(self, _=None) -> None:
        t0 = time.perf_counter()
        alpha, task = self.inner_lr.value, self.task.value
        full = self._grid_key != (alpha, task)
        if full:  # the contours depend on α and the task only
            self.grid = task_objective_grid(self.tasks, alpha, task)
            draw_anatomy_background(self.view, self.grid)
            self._grid_key = (alpha, task)
        theta = torch.tensor([self.theta1.value, self.theta2.value])
        self.data = compute_anatomy(self.tasks, theta, alpha, task)
        fo, h = (np.linalg.norm(self.data[k]) for k in ("first_order", "hessian"))
        who = "mean over tasks" if task == -1 else f"task {task + 1}"
        title = (f"{who}, α = {alpha:g}: |first-order| = {fo:.3f}, |Hessian term| = {h:.3f}\n"
                 f"contours: L(θ') after one inner step")
        self.scale = draw_anatomy(self.view, self.data, title)
        self.view["artists"]["title"].set_text(f"{title}; arrows = −gradient × {self.scale:.2g}")
        self.canvas.show(full=full)
        self.last_ms = 1000 * (time.perf_counter() - t0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)
