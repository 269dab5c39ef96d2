"""Procedural glyphs: an offline stand-in for Omniglot, with the same `OmniglotData` interface.

NOT Omniglot, and its numbers are not the paper's. It exists so that every notebook and test still
runs, and still shows few-shot learning, on a machine that has no Omniglot files and no internet
(`mamlkit.data.omniglot.load_omniglot_or_glyphs` falls back to it with a warning).

It imitates the structure that makes Omniglot a few-shot problem (Lake et al. 2015): a *character*
is a fixed set of strokes; each of its *drawers* reproduces those strokes with small differences.

    character   1 to 4 strokes, each a straight line, a curve (quadratic Bézier) or a circular arc,
                with control points in the middle of a 105x105 canvas
    drawer      control points jittered (σ = 2.5 px), arcs' centre / radius / angles jittered,
                a random stroke width (5 to 8 px), then one small affine map of the whole glyph
                (rotation ±10°, scale 0.9 to 1.1, shear ±0.1, shift ±4 px)

Rendered black on white at 105x105 with PIL, then through `preprocess.preprocess` exactly like real
Omniglot images: uint8 (characters, drawers, 28, 28), strokes 255 on background 0.
Deterministic: character c of seed s is the same whatever `characters` is (each character draws from
its own generator, seeded by (seed, c)).
"""
from __future__ import annotations

import numpy as np

from .characters import RAW_SIZE, OmniglotData
from .preprocess import preprocess

SOURCE = "procedural glyphs (NOT Omniglot)"


def _strokes(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """One character: 1 to 4 strokes as (kind, parameters)."""
    strokes = []
    for _ in range(rng.integers(1, 5)):
        kind = rng.choice(["line", "curve", "arc"])
        if kind == "arc":  # centre x, centre y, radius, start angle, angle span (radians)
            params = np.array([*rng.uniform(35, 70, 2), rng.uniform(10, 28), rng.uniform(0, 2 * np.pi),
                               rng.uniform(0.6, 1.8) * np.pi])
        else:
            params = rng.uniform(20, 85, size=(2 if kind == "line" else 3, 2))  # control points (x, y)
        strokes.append((str(kind), params))
    return strokes


def _points(kind: str, params: np.ndarray, drawers: int, rng: np.random.Generator) -> np.ndarray:
    """Every drawer's version of one stroke, as polylines (drawers, P, 2): the stroke's parameters jittered."""
    t = np.linspace(0.0, 1.0, 12)[None, :, None]  # (1, P, 1) positions along the stroke
    if kind == "arc":
        jittered = params + rng.normal(0, [2.0, 2.0, 1.5, 0.15, 0.15], size=(drawers, 5))  # (drawers, 5)
        cx, cy, r, start, span = (jittered[:, i, None] for i in range(5))  # each (drawers, 1)
        angle = start + span * t[..., 0]  # (drawers, P)
        return np.stack([cx + r * np.cos(angle), cy + r * np.sin(angle)], axis=2)  # (drawers, P, 2)
    p = params + rng.normal(0, 2.5, size=(drawers, *params.shape))  # (drawers, 2 or 3, 2) control points
    p0, p1 = p[:, None, 0], p[:, None, 1]  # (drawers, 1, 2)
    if kind == "line":
        return p0 + t * (p1 - p0)  # (drawers, P, 2)
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p[:, None, 2]  # quadratic Bézier, (drawers, P, 2)


def _affine(drawers: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One small random affine map x -> A x + b per drawer, about the canvas centre: A (drawers, 2, 2), b (drawers, 2)."""
    angle = np.deg2rad(rng.uniform(-10, 10, drawers))
    scale = rng.uniform(0.9, 1.1, drawers)
    shear = rng.uniform(-0.1, 0.1, drawers)
    cos, sin = np.cos(angle), np.sin(angle)
    # A = scale · rotation(angle) · [[1, shear], [0, 1]]
    A = scale[:, None, None] * np.stack([np.stack([cos, cos * shear - sin], 1),
                                         np.stack([sin, sin * shear + cos], 1)], 1)  # (drawers, 2, 2)
    centre = np.full(2, RAW_SIZE / 2)
    b = centre - A @ centre + rng.uniform(-4, 4, (drawers, 2))  # (drawers, 2): centre stays put, then a shift
    return A, b


def _render(polylines: list[np.ndarray], width: int) -> np.ndarray:
    """Black strokes on a white 105x105 canvas: uint8 (105, 105), 255 = paper."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (RAW_SIZE, RAW_SIZE), 255)
    draw = ImageDraw.Draw(im)
    for line in polylines:  # line: (P, 2)
        draw.line(line.ravel().tolist(), fill=0, width=width)
    return np.asarray(im)


def make_glyphs(characters: int = 242, drawers: int = 20, seed: int = 0) -> OmniglotData:
    """`characters` procedural characters x `drawers` drawings each, as `OmniglotData`.

    The default 242 characters match the offline Omniglot subset in ../shared/omniglot, so a notebook
    runs the same either way. The time grows with characters x drawers (every drawing is rendered);
    to measure it: python -m timeit -s "from mamlkit.data.glyphs import make_glyphs" "make_glyphs(250)".
    """
    for name, value in (("characters", characters), ("drawers", drawers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    raw = np.empty((characters * drawers, RAW_SIZE, RAW_SIZE), dtype=np.uint8)  # (characters*drawers, 105, 105)
    for c in range(characters):
        rng = np.random.default_rng([seed, c])
        strokes = _strokes(rng)
        A, b = _affine(drawers, rng)
        widths = rng.integers(5, 9, drawers)  # stroke width in px at 105x105, one per drawer
        # every stroke of every drawer, jittered then mapped by that drawer's affine: (drawers, P, 2) each
        lines = [np.einsum("dij,dpj->dpi", A, _points(kind, params, drawers, rng)) + b[:, None]
                 for kind, params in strokes]
        for d in range(drawers):
            raw[c * drawers + d] = _render([line[d] for line in lines], width=int(widths[d]))
    images = preprocess(raw).view(characters, drawers, 28, 28)  # (characters, drawers, 28, 28)
    names = [f"Glyphs/character{c + 1:04d}" for c in range(characters)]
    return OmniglotData(images, names, f"{SOURCE}, seed {seed}")
