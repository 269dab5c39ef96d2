"""InnerLoopExplorer: watch θ adapt to one sinusoid task, step by step, from MAML's θ and a pretrained θ.

Finn, Abbeel, Levine (2017), Section 5.1 and Figure 2: after one or a few inner steps

    θ' = θ − α ∇θ L_support(θ)          (inner_steps times, on the K = k_shot support points)

MAML's θ fits the task's curve A·sin(x − φ), the pretrained θ (plain regression on all tasks, which
learns the mean function of all tasks, −(2Ā/π) cos x ≈ −1.6 cos x, see notebook 02)
barely moves. The widget draws the true curve, the support points,
both models' predictions after each inner step, and the query loss (MSE on 200 points spanning
[−5, 5]) against the number of steps.

Testable by design: `compute_inner(...)` is a plain function of the widget's values returning arrays,
`new_inner_view()` builds the figure, `draw_inner(view, data)` moves its artists.
"""
from __future__ import annotations

import functools
import time

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..experiments.sinusoid import (
    AMPLITUDE,
    PHASE,
    X_RANGE,
    make_mlp,
    sample_tasks,
    sine,
    train_pretrained,
)
from ..maml import adapt
from ..trainer import MetaConfig, MetaLearner, train
from .canvas import FONT_SIZE, Canvas, new_figure

GRID_POINTS = 200  # the dense query set: where the curves are drawn and the query loss is measured
COLORS = {"MAML": "tab:red", "pretrained": "tab:blue"}
QUICK_META_STEPS = 300


# ----------------------------------------------------------------------------------------------
# the models: the course's checkpoint, or two small ones trained in seconds


@functools.lru_cache(maxsize=1)
def quick_models(meta_steps: int = QUICK_META_STEPS, seed: int = 0) -> dict[str, nn.Module]:
    """MAML and pretrained MLPs trained for a few hundred steps (seconds): a stand-in for the checkpoint.

    β = 5e-3 (the paper's 1e-3 needs ~70,000 steps); K = 10, meta_batch_size = 10, α = 0.01.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 40-unit MLP: syncing threads costs more than it saves, far more on a busy CPU
    try:
        return _train_quick_models(meta_steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_quick_models(meta_steps: int, seed: int) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    maml = make_mlp()
    learner = MetaLearner(maml, F.mse_loss, MetaConfig(inner_lr=0.01, meta_lr=5e-3))
    train(learner, lambda g: sample_tasks(10, 10, generator=g).tensors(), iterations=meta_steps, seed=seed,
          progress=False)
    torch.manual_seed(seed)
    pretrained = make_mlp()
    train_pretrained(pretrained, iterations=meta_steps, batch_tasks=10, points=10, lr=5e-3, seed=seed)
    return {"MAML": maml, "pretrained": pretrained}


def course_models(k_shot: int = 10) -> tuple[dict[str, nn.Module], str]:
    """({"MAML": ..., "pretrained": ...}, a label saying where they come from).

    The course's trained checkpoint (`mamlkit.experiments.pretrained.load_sinusoid`) when it is there, else
    `quick_models()`, labelled as such.
    """
    try:
        from ..experiments.pretrained import load_sinusoid

        maml, pretrained = load_sinusoid(k_shot=k_shot)
        return {"MAML": maml, "pretrained": pretrained}, f"course checkpoint (K={k_shot})"
    except (ImportError, FileNotFoundError):
        return quick_models(), f"no checkpoint: quick stand-ins ({QUICK_META_STEPS} meta-steps)"


# ----------------------------------------------------------------------------------------------
# the computation: a plain function of the widget's values


def compute_inner(models: dict[str, nn.Module], amplitude: float, phase: float, k_shot: int, inner_lr: float,
                  inner_steps: int, seed: int) -> dict:
    """Adapt each model to the task y = A·sin(x − φ) from k_shot support points, one inner step at a time.

    Returns numpy arrays: "x" (GRID_POINTS,), "true" A·sin(x − φ) on x, "support_x"/"support_y" (k_shot,),
    and per model name: "pred"[name] (inner_steps+1, GRID_POINTS) the prediction after 0, 1, ... steps,
    "query_loss"[name] (inner_steps+1,) the MSE against the true curve on x.
    """
    if not AMPLITUDE[0] <= amplitude <= AMPLITUDE[1]:
        raise ValueError(f"amplitude: expected A in {AMPLITUDE} (the paper's task range), got {amplitude}")
    if not PHASE[0] <= phase <= PHASE[1] + 1e-9:
        raise ValueError(f"phase: expected φ in [0, π], got {phase}")
    g = torch.Generator().manual_seed(seed)
    task = sample_tasks(1, k_shot, 1, generator=g, amplitude=amplitude, phase=phase)  # support: (1, K, 1)
    sx, sy = task.support_x[0], task.support_y[0]  # (K, 1)
    x = torch.linspace(*X_RANGE, GRID_POINTS).unsqueeze(1)  # (GRID_POINTS, 1)
    true = sine(x, torch.tensor(amplitude), torch.tensor(phase))
    out = {"x": x[:, 0].numpy(), "true": true[:, 0].numpy(), "support_x": sx[:, 0].numpy(),
           "support_y": sy[:, 0].numpy(), "pred": {}, "query_loss": {}}
    for name, model in models.items():
        params = {k: v.detach() for k, v in model.named_parameters()}  # θ
        preds, losses = [], []
        for step in range(inner_steps + 1):
            with torch.no_grad():
                y = functional_call(model, params, (x,))
            preds.append(y[:, 0])
            losses.append(F.mse_loss(y, true))
            if step < inner_steps:  # θ ← θ − α ∇θ L_support(θ); no meta-gradient needed, so first order
                params = {k: v.detach() for k, v in adapt(model, params, sx, sy, loss_fn=F.mse_loss,
                                                           inner_lr=inner_lr, first_order=True).items()}
        out["pred"][name] = torch.stack(preds).numpy()  # (inner_steps+1, GRID_POINTS)
        out["query_loss"][name] = torch.stack(losses).numpy()  # (inner_steps+1,)
    return out


# ----------------------------------------------------------------------------------------------
# the figure: built once, its artists moved on every change


def new_inner_view(names=("MAML", "pretrained")) -> dict:
    """The figure, its two Axes and its artists (moved later by `draw_inner`)."""
    fig, (ax, ax_loss) = new_figure(2, width=5.2, height=4.2)
    art = {"true": ax.plot([], [], color="black", lw=2, label="true A·sin(x − φ)")[0],
           "support": ax.scatter([], [], color="black", marker="^", s=40, zorder=5, label="support (K)")}
    for name in names:
        c = COLORS.get(name, None)
        art[f"{name}:before"] = ax.plot([], [], color=c, ls=":", lw=1.5, label=f"{name}, 0 steps")[0]
        art[f"{name}:steps"] = [ax.plot([], [], color=c, lw=0.8, alpha=0.35)[0] for _ in range(20)]
        art[f"{name}:after"] = ax.plot([], [], color=c, lw=2, label=f"{name}, after the inner steps")[0]
        art[f"{name}:loss"] = ax_loss.plot([], [], "o-", color=c)[0]
    # fixed limits (|A| <= 5, losses within [1e-3, 30]): the axes stay still and only the curves are redrawn
    ax.set(xlim=X_RANGE, ylim=(-6.5, 6.5), xlabel="x", ylabel="y", title="inner loop on one task\n")

    ax_loss.set(xlabel="inner steps", ylabel="query MSE", yscale="log", ylim=(1e-3, 30),
                title="query loss after each inner step")
    ax_loss.legend(*ax.get_legend_handles_labels(), loc="lower left", fontsize=FONT_SIZE)  # the curves' key, out of their way
    return {"figure": fig, "axes": (ax, ax_loss), "artists": art}


def draw_inner(view: dict, data: dict, title: str = "") -> bool:
    """Move the view's artists to show `data` from `compute_inner`.

    Returns True when the still parts changed too (the loss axis' range), so a blitting canvas must
    redraw its background.
    """
    art, (ax, ax_loss) = view["artists"], view["axes"]
    art["true"].set_data(data["x"], data["true"])
    art["support"].set_offsets(np.stack([data["support_x"], data["support_y"]], axis=1))  # (K, 2)
    for name, pred in data["pred"].items():
        steps = pred.shape[0] - 1
        art[f"{name}:before"].set_data(data["x"], pred[0])
        art[f"{name}:after"].set_data(data["x"], pred[-1])
        art[f"{name}:after"].set_visible(steps > 0)
        for i, line in enumerate(art[f"{name}:steps"]):  # the intermediate steps 1 .. steps-1, faint
            line.set_data(data["x"], pred[i + 1]) if i + 1 < steps else line.set_data([], [])
        loss = data["query_loss"][name]
        art[f"{name}:loss"].set_data(np.arange(len(loss)), loss)
    ax.set_title(title or "inner loop on one task\n", fontsize=FONT_SIZE + 1)
    xlim = (-0.3, max(max(len(l) for l in data["query_loss"].values()) - 0.7, 0.7))
    changed = tuple(ax_loss.get_xlim()) != xlim
    ax_loss.set_xlim(*xlim)
    return changed


def moving_artists(view: dict) -> list:
    """The artists that `draw_inner` moves (for `Canvas.animate`)."""
    art = view["artists"]
    out = [view["axes"][0].title]
    for v in art.values():
        out += v if isinstance(v, list) else [v]
    return out


# ----------------------------------------------------------------------------------------------
# the widget


class InnerLoopExplorer:
    """Sliders for A, φ, K (k_shot), α (inner_lr) and inner_steps, a "new task" button, and the figure.

    `InnerLoopExplorer()` uses the course's trained models (or quick stand-ins, see `course_models`);
    pass `maml_model` and `pretrained_model` (MLPs 1-40-40-1) to explore your own. Display it with
    `display(explorer)` or as a cell's last expression.

    Attributes for code and tests: the controls `amplitude`, `phase`, `k_shot`, `inner_lr`, `inner_steps`,
    `new_task` (a Button), `seed`; `data` (the last `compute_inner` result), `view` (figure, axes,
    artists), `canvas` (its Output and last PNG), `error` (the message shown if the inner loop diverged).
    """

    def __init__(self, maml_model: nn.Module | None = None, pretrained_model: nn.Module | None = None, *,
                 amplitude: float = 2.0, phase: float = 0.5, k_shot: int = 10, inner_lr: float = 0.01,
                 inner_steps: int = 10, seed: int = 0):
        if maml_model is None and pretrained_model is None:
            self.models, self.source = course_models()
        else:
            self.models = {n: m for n, m in (("MAML", maml_model), ("pretrained", pretrained_model)) if m is not None}
            for name, m in self.models.items():
                if not isinstance(m, nn.Module):
                    raise TypeError(f"{name.lower()}_model: expected a torch.nn.Module (an MLP 1-40-40-1), got {type(m).__name__}")
            self.source = "your models"
        self.seed = seed
        style = {"description_width": "110px"}
        self.amplitude = widgets.FloatSlider(amplitude, min=AMPLITUDE[0], max=AMPLITUDE[1], step=0.1,
                                             description="amplitude A", style=style)
        self.phase = widgets.FloatSlider(phase, min=PHASE[0], max=round(PHASE[1], 2), step=0.05,
                                         description="phase φ", style=style)
        self.k_shot = widgets.IntSlider(k_shot, min=1, max=40, description="K (k_shot)", style=style)
        self.inner_lr = widgets.FloatLogSlider(inner_lr, base=10, min=-3, max=-0.5, step=0.1,
                                               description="α (inner_lr)", style=style)
        self.inner_steps = widgets.IntSlider(inner_steps, min=0, max=20, description="inner_steps", style=style)
        self.new_task = widgets.Button(description="new task", icon="refresh")
        self.view = new_inner_view(tuple(self.models))
        self.canvas = Canvas(self.view["figure"])
        self.canvas.animate(*moving_artists(self.view))
        self.data: dict = {}
        self.error = ""
        self.last_ms = 0.0  # how long the last redraw took (compute + draw + PNG)
        self._hold = False
        for w in (self.amplitude, self.phase, self.k_shot, self.inner_lr, self.inner_steps):
            w.observe(self.update, names="value")
        self.new_task.on_click(self._on_new_task)
        controls = widgets.VBox([self.amplitude, self.phase, self.k_shot, self.inner_lr, self.inner_steps,
                                 self.new_task])
        self.box = widgets.HBox([controls, self.canvas.output])
        self.update()

    def _on_new_task(self, _=None) -> None:
        """A new task: a new seed (new support points) and a random A and φ from the paper's ranges."""
        self.seed += 1
        g = torch.Generator().manual_seed(10_000 + self.seed)
        a, p = torch.rand(2, generator=g).tolist()
        self._hold = True  # one redraw, not two: the observers skip while both sliders move
        try:
            self.amplitude.value = round(AMPLITUDE[0] + a * (AMPLITUDE[1] - AMPLITUDE[0]), 1)
            self.phase.value = round(p * self.phase.max, 2)
        finally:
            self._hold = False
        self.update()

    def update(self, _=None) -> None:
        """Recompute from the controls' values and redraw."""
        if self._hold:
            return
        t0 = time.perf_counter()
        try:
            self.data = compute_inner(self.models, self.amplitude.value, self.phase.value, self.k_shot.value,
                                      self.inner_lr.value, self.inner_steps.value, self.seed)
            self.error = ""
        except FloatingPointError as e:  # shown in the figure, where the learner looks, not in a log
            self.error = f"{e}"
        self.view["axes"][0].title.set_color("red" if self.error else "black")
        if not self.error:
            steps = self.inner_steps.value
            title = (f"A = {self.amplitude.value:.1f}, φ = {self.phase.value:.2f}, K = {self.k_shot.value}, "
                     f"α = {self.inner_lr.value:.3g}, {steps} steps\n{self.source}")
            full = draw_inner(self.view, self.data, title)
        else:
            self.view["axes"][0].set_title(f"α = {self.inner_lr.value:.3g}: the inner loop diverged (the loss overflowed);\n"
                                            f"MAML's θ was meta-trained for α = 0.01: lower α", fontsize=FONT_SIZE, color="red")
            full = False
        self.canvas.show(full=full)
        self.last_ms = 1000 * (time.perf_counter() - t0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)
