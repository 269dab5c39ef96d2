"""A character data set in memory: the one format every data source of the course produces.

Omniglot (omniglot.py) and the procedural glyphs (glyphs.py) both return an `OmniglotData`: images of
shape (characters, drawers, 28, 28), uint8, strokes 255 on background 0, and one "Alphabet/characterNN"
name per character. Keeping it in its own module lets both sources use it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

RAW_SIZE = 105  # side of the official Omniglot images


@dataclass
class OmniglotData:
    """A character data set: images (characters, drawers, 28, 28) uint8, strokes 255 on background 0."""

    images: torch.Tensor  # (characters, drawers, 28, 28) uint8
    names: list[str]  # "Alphabet/characterNN", one per character
    source: str  # where the images came from, in words
    from_cache: bool = False  # True when load_omniglot read the processed tensor file, not the images

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or len(self.names) != len(self.images):
            raise ValueError(
                f"images, names: expected uint8 (characters, drawers, H, W) and one name per character, got "
                f"{self.images.dtype} {tuple(self.images.shape)} and {len(self.names)} names"
            )

    @property
    def alphabets(self) -> list[str]:
        return sorted({n.split("/")[0] for n in self.names})

    def __repr__(self) -> str:
        c, d = self.images.shape[:2]
        return f"OmniglotData({c} characters x {d} drawers, {len(self.alphabets)} alphabets, source={self.source!r})"
