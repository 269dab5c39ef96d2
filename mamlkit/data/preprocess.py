"""preprocess: any character image -> the 28x28 Omniglot format the course's Conv4 reads.

Finn, Abbeel, Levine (2017), Section 5.2, following Santoro et al. (2016): Omniglot's 105x105 images are
downsampled to 28x28. This module does that for Omniglot and for anything a learner draws or scans
(PIL images, numpy arrays, tensors; gray, RGB, with alpha), so the shipped few-shot classifiers see
their own characters in exactly the format they were meta-trained on:

    uint8 (N, 28, 28), strokes 255 on background 0

Used by omniglot.py (reading the official zips), glyphs.py (the procedural fallback) and
fewshot.FewShotClassifier (a learner's own images).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 28  # side of a preprocessed image, the paper's 28x28


PIL_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")


def _batches(images) -> list[np.ndarray]:
    """Any accepted input -> arrays (n, H, W) or (n, H, W, C), one per image size (PIL images one each)."""
    from PIL import Image

    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images: got an empty list")
        return [b for image in images for b in _batches(image)]
    if isinstance(images, Image.Image):
        if images.mode not in PIL_MODES:
            raise ValueError(f"images: PIL mode {images.mode!r} is not supported; expected one of {PIL_MODES}")
        if images.mode == "P":
            images = images.convert("RGBA")  # a palette may hold transparency
        return [np.asarray(images)[None]]  # (1, H, W) or (1, H, W, C)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(
            f"images: expected a PIL image, a list of them, a numpy array or a tensor, got {type(images).__name__}"
        )
    a = images
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 2, 3, 4) and a.shape[0] > 4):
        return [a[None]]  # one image, (H, W) or (H, W, channels)
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"images: shape {a.shape} looks channels-first (N, C, H, W); pass channels last (N, H, W, C), "
            f"e.g. x.permute(0, 2, 3, 1), or (N, H, W) for grayscale"
        )
    if a.ndim in (3, 4) and len(a) > 0:
        return [a]  # a batch (N, H, W) or (N, H, W, channels)
    raise ValueError(f"images: expected (H, W), (H, W, C), (N, H, W) or (N, H, W, C), got shape {a.shape}")


def _to_gray(a: np.ndarray) -> torch.Tensor:
    """(n, H, W) or (n, H, W, C) of bool / 0..255 integers / [0, 1] floats -> float32 (n, H, W), 1 = white."""
    if not a.flags.writeable:
        a = a.copy()  # e.g. np.asarray(PIL image): torch refuses to share read-only memory
    if a.dtype == bool:
        x = torch.from_numpy(np.ascontiguousarray(a)).float()
    elif np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"images: integer pixels must lie in 0..255, got {a.min()}..{a.max()}")
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)).float().div_(255.0)
    elif np.issubdtype(a.dtype, np.floating):
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(
                f"images: float pixels must lie in [0, 1], got {np.nanmin(a):.4g}..{np.nanmax(a):.4g} "
                f"(divide 0..255 images by 255)"
            )
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    else:
        raise TypeError(f"images: pixels of dtype {a.dtype} are not supported; expected bool, integer or float")
    if x.ndim == 4:
        channels = x.shape[3]
        if channels not in (1, 2, 3, 4):
            raise ValueError(f"images: expected 1, 2, 3 or 4 channels last, got {channels} channels")
        if channels in (2, 4):  # gray/RGB + alpha: transparent pixels are white paper
            alpha = x[..., -1:]
            x = x[..., :-1] * alpha + (1.0 - alpha)
        # luma (ITU-R 601, as PIL's convert("L")) for RGB
        x = x[..., 0] if x.shape[3] == 1 else x @ torch.tensor([0.299, 0.587, 0.114])
    return x  # (n, H, W)


def preprocess(images, *, invert: bool = True) -> torch.Tensor:
    """Any character images -> uint8 (N, 28, 28), strokes 255 on background 0 (the Omniglot format).

    Accepts a PIL image (modes 1, L, LA, P, RGB, RGBA), a list of them, or a numpy array / tensor shaped
    (H, W), (N, H, W), (H, W, C) or (N, H, W, C) with C = 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA),
    of bool, integers 0..255 or floats in [0, 1] (a list may mix sizes and kinds). Steps:

        gray      RGB -> luma; transparent pixels count as white paper
        invert    dark strokes on light paper (Omniglot, a scan) -> strokes 1 on background 0
                  (pass invert=False for images that already have light strokes on a dark background)
        square    a non-square image is padded with background, centred (never stretched)
        resize    to 28x28 with antialiasing (bilinear, antialias=True: each output pixel averages
                  the ~3.75x3.75 input pixels under it, so thin strokes stay visible)
        store     round(255 * value) as uint8

    Raises TypeError / ValueError naming what it cannot handle (a mode, a dtype, a range, a shape,
    an image smaller than 8x8).
    """
    out = []
    for batch in _batches(images):
        h, w = batch.shape[1:3]
        if min(h, w) < 8:
            raise ValueError(f"images: an image is {h}x{w}; expected at least 8x8 pixels")
        for start in range(0, len(batch), 1024):  # chunks bound the float32 copy (~45 MB at 105x105)
            x = _to_gray(batch[start:start + 1024])[:, None]  # (n, 1, H, W) in [0, 1]
            if not invert:  # light strokes on dark: flip to paper = 1 so that padding below is background
                x = 1.0 - x
            side = max(h, w)
            if h != w:  # pad to (n, 1, side, side) with paper (1), centred
                top, left = (side - h) // 2, (side - w) // 2
                x = F.pad(x, (left, side - w - left, top, side - h - top), value=1.0)
            if side != SIZE:
                x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
            # invert after resizing (resizing is linear, so the order does not matter; 28x28 is cheaper)
            ink = 1.0 - x[:, 0].clamp(0, 1)  # (n, 28, 28) strokes 1, background 0
            out.append((ink * 255).round().to(torch.uint8))
    return torch.cat(out)  # (N, 28, 28)
