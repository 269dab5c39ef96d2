"""Widgets that make MAML's inner and outer loops visible (ipywidgets + matplotlib, no ipympl).

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks";
Nichol, Achiam, Schulman (2018), "On First-Order Meta-Learning Algorithms" (Reptile).

    InnerLoopExplorer      one sinusoid task: θ' = θ − α ∇θ L_support(θ), step by step, from MAML's θ
                           and from a pretrained θ; the query loss after each inner step
    OuterLoopExplorer      a two-parameter model, so θ is a point on a plane: task losses, the
                           meta-objective before/after the inner step, the path of θ under MAML, FOMAML
                           and Reptile, each task's inner step as an arrow θ -> θ'ᵢ
    MetaGradientAnatomy    the one-step meta-gradient (I − α∇²L_support)∇L_query(θ') as its first-order
                           term plus its Hessian term, drawn as arrows on the same plane

Each figure is a PNG in an `ipywidgets.Output`, so the widgets work in JupyterLab, the classic
Notebook, VS Code and Colab. Each widget is a thin shell around plain functions of its values
(`compute_inner`, `compute_outer`, `compute_grids`, `compute_anatomy`) and drawing functions that move
the artists of a figure built once (`new_*_view`, `draw_*`); the notebooks call the same functions to
show static figures, and the tests call them to check the numbers.

Display a widget as a cell's last expression, or with `display(widget)`.
"""
from .anatomy import (
                              MetaGradientAnatomy,
                              draw_anatomy,
                              draw_anatomy_background,
                              new_anatomy_view,
                              task_objective_grid,
)
from .canvas import Canvas, figure_png, new_figure
from .inner import (
                              InnerLoopExplorer,
                              compute_inner,
                              course_models,
                              draw_inner,
                              new_inner_view,
                              quick_models,
)
from .outer import (
                              OuterLoopExplorer,
                              compute_anatomy,
                              compute_grids,
                              compute_outer,
                              draw_outer,
                              draw_outer_background,
                              new_outer_view,
)

__all__ = [
    "InnerLoopExplorer", "OuterLoopExplorer", "MetaGradientAnatomy",
    "compute_inner", "compute_outer", "compute_grids", "compute_anatomy", "task_objective_grid",
    "new_inner_view", "draw_inner", "new_outer_view", "draw_outer", "draw_outer_background",
    "new_anatomy_view", "draw_anatomy", "draw_anatomy_background", "course_models", "quick_models", "Canvas", "new_figure", "figure_png",
]
