"""Random affine distortions of training characters: more drawers for free.

Koch, Zemel, Salakhutdinov (2015), Section 4.2, and Lake et al. (2015) enlarge Omniglot's 20 drawings
per character with small random affine maps: a rotation, a shear, a scale and a shift per image. A
distorted "3" is still a "3", so every task the meta-learner sees shows new drawings of its classes,
which matters most on the small background sets (180 training characters here against the full set's
964): without it, a long run memorises the training drawings and the held-out accuracy stops improving.

    x' = grid_sample(x, A·p + t),   A = R(ρ) · Shear(s) · Scale(σx, σy),  each drawn uniformly per image

The draws use only the generator they are given, so a seeded run (and a resumed one) sees the same
distortions. Applied to the training tasks only (support and query alike); test tasks are never distorted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ROTATION_DEGREES = 10.0  # ρ ~ U(−10°, 10°)       Koch et al.: ±10°
SHEAR = 0.2  # s ~ U(−0.2, 0.2)                   Koch et al.: ±0.3
SCALE = 0.15  # σ ~ U(0.85, 1.15) per axis        Koch et al.: 0.8 .. 1.2
SHIFT_PIXELS = 1.5  # t ~ U(−1.5, 1.5) pixels      Koch et al.: ±2 pixels of 105


def random_affine(x: torch.Tensor, generator: torch.Generator, *, rotation: float = ROTATION_DEGREES,
                  shear: float = SHEAR, scale: float = SCALE, shift: float = SHIFT_PIXELS) -> torch.Tensor:
    """Each image of x (..., 1, H, W), float, under its own random affine map; same shape and device.

    Background 0 comes in at the borders (zero padding), strokes stay in [0, 1] (bilinear sampling).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 3 or x.shape[-3] != 1:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected float images (..., 1, H, W), got {what}")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        what = f"one on {generator.device}" if isinstance(generator, torch.Generator) else type(generator).__name__
        raise TypeError(f"generator: expected a CPU torch.Generator (e.g. torch.Generator().manual_seed(0)), got {what}")
    for name, v in (("rotation", rotation), ("shear", shear), ("scale", scale), ("shift", shift)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0 (the half-width of a uniform draw), got {v!r}")
    if scale >= 1:
        raise ValueError(f"scale: expected a number in [0, 1): factors 1 ± scale must stay positive, got {scale!r}")
    lead, (h, w) = x.shape[:-3], x.shape[-2:]
    images = x.reshape(-1, 1, h, w)  # (n, 1, H, W)
    n = images.shape[0]

    def uniform(half_width):  # n draws from U(−half_width, half_width), on the CPU generator
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_width

    rho = uniform(math.radians(rotation))
    s = uniform(shear)
    sx, sy = 1 + uniform(scale), 1 + uniform(scale)
    tx, ty = uniform(2 * shift / w), uniform(2 * shift / h)  # affine_grid's coordinates span [−1, 1]
    cos, sin = torch.cos(rho), torch.sin(rho)
    # A = R(ρ) @ [[1, s], [0, 1]] @ diag(σx, σy): the map from output to input coordinates
    a = torch.stack([torch.stack([cos * sx, (cos * s - sin) * sy, tx], -1),
                     torch.stack([sin * sx, (sin * s + cos) * sy, ty], -1)], -2)  # (n, 2, 3)
    grid = F.affine_grid(a.to(x.device, x.dtype), list(images.shape), align_corners=False)  # (n, H, W, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*lead, 1, h, w)


def augment_tasks(batch: tuple, generator: torch.Generator) -> tuple:
    """(support_x, support_y, query_x, query_y) with every image distorted (`random_affine`), labels kept."""
    support_x, support_y, query_x, query_y = batch
    return random_affine(support_x, generator), support_y, random_affine(query_x, generator), query_y
