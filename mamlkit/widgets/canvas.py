"""A matplotlib figure shown as a PNG inside an `ipywidgets.Output`: the drawing surface of the widgets.

Why not ipympl or `%matplotlib widget`: a PNG in an Output works unchanged in JupyterLab, the classic
Notebook, VS Code and Colab, needs no extra front-end extension, and in tests the figure is an ordinary
`matplotlib.figure.Figure` whose artists can be inspected.

Why fast (the target is < 300 ms a redraw; `python -m mamlkit.bench.widgets` measures it): each widget builds
its figure once; afterwards only the artists that move are redrawn. The still parts (axes, ticks, legends,
contours) are rendered once into a background image; a redraw pastes that background back and draws the
moving artists over it (matplotlib's "blitting"), then encodes the PNG with light compression. The new
image replaces the old one in a single update of `Output.outputs`: no clear-then-draw, so no flicker.
"""
from __future__ import annotations

import base64
import io

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100  # with FONT_SIZE: text as large as a notebook's body text (about 13 px)
FONT_SIZE = 10  # points: titles, labels, ticks and legends (never smaller)


def new_figure(ncols: int, *, width: float = 4.6, height: float = 3.8) -> tuple[Figure, list]:
    """A pyplot-free Figure with `ncols` Axes side by side (pyplot would also display it on its own).

    Legible by default: DPI 100 and FONT_SIZE-point text for ticks, labels and titles; the widgets' figures
    are at least 9 inches (900 px) wide.
    """
    fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig as fig.canvas
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.tick_params(labelsize=FONT_SIZE)
        ax.xaxis.label.set_fontsize(FONT_SIZE)
        ax.yaxis.label.set_fontsize(FONT_SIZE)
        ax.title.set_fontsize(FONT_SIZE + 1)
    return fig, axes


def figure_png(fig: Figure) -> bytes:
    """The figure rendered to PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return buf.getvalue()


class Canvas:
    """An `ipywidgets.Output` that shows one figure; `show()` re-renders it in place.

    `animate(*artists)` marks the artists that move: they are left out of the background and drawn
    over it on every `show()`. Call `show(full=True)` after changing anything else (limits, contours).

    Attributes: `figure`, `output` (the ipywidgets.Output), `png` (the bytes shown last), `redraws`.
    """

    def __init__(self, figure: Figure):
        self.figure = figure
        self.output = widgets.Output()
        self.png: bytes = b""
        self.redraws = 0
        self.moving: list = []
        self._background = None

    def animate(self, *artists) -> None:
        for a in artists:
            a.set_animated(True)  # skipped by a full draw, drawn by `show`
            self.moving.append(a)

    def show(self, full: bool = False) -> bytes:
        canvas = self.figure.canvas
        if full or self._background is None:
            canvas.draw()  # everything that does not move (and the layout, computed once)
            self.figure.set_layout_engine("none")  # keep the positions: a layout pass costs more than the plot
            self._background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self._background)
        for a in self.moving:
            self.figure.draw_artist(a)
        rgba = canvas.buffer_rgba()  # (height, width, 4)
        buf = io.BytesIO()
        Image.frombuffer("RGBA", (rgba.shape[1], rgba.shape[0]), rgba, "raw", "RGBA", 0, 1).save(
            buf, format="png", compress_level=1)  # light compression: encoding time matters more than bytes
        self.png = buf.getvalue()
        data = {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": "<figure>"}
        # one assignment replaces the old image: the front end swaps it without an empty frame
        self.output.outputs = ({"output_type": "display_data", "data": data, "metadata": {}},)
        self.redraws += 1
        return self.png
