"""Trained weights shipped with the course, so notebooks show full-quality results on a CPU in seconds.

`load_sinusoid(k_shot)` returns the MAML-trained and the "pretrained"-baseline MLPs made by
`python -m mamlkit.experiments.reproduce_sinusoid` (Finn et al. 2017, Section 5.1: 70,000 meta-iterations,
α = 0.01, β = 1e-3, meta-batch 25). Each file's SHA-256 is recorded in results/sinusoid.json and
checked on load: a file that does not match is refused, never silently used.
"""
from __future__ import annotations

import json

from torch import nn

from ..checkpoint import load_checkpoint, sha256
from ..paths import PACKAGE
from .sinusoid import make_mlp

WEIGHTS = PACKAGE / "weights"
RESULTS = PACKAGE / "results"


def _expected_sha256(name: str, results_file: str) -> str:
    report = json.loads((RESULTS / results_file).read_text())
    for row in report["rows"]:
        if row.get("weights") == name:
            return row["sha256"]
    raise FileNotFoundError(f"{results_file} records no checksum for {name}; run python -m mamlkit.experiments.reproduce_sinusoid")


def load_sinusoid(k_shot: int = 10) -> tuple[nn.Module, nn.Module]:
    """(maml_model, pretrained_model) trained with K = k_shot (5 or 10), verified by checksum."""
    path = WEIGHTS / f"sinusoid_k{k_shot}.pt"
    if not path.is_file():
        available = sorted(p.name for p in WEIGHTS.glob("sinusoid_k*.pt"))
        raise FileNotFoundError(f"k_shot: no shipped sinusoid weights for K={k_shot} ({path.name}); available: {available}")
    expected = _expected_sha256(path.name, "sinusoid.json")
    if sha256(path) != expected:
        raise ValueError(f"{path.name}: SHA-256 does not match results/sinusoid.json; the file is corrupt or was replaced")
    state = load_checkpoint(path)
    maml_model, pretrained_model = make_mlp(), make_mlp()
    maml_model.load_state_dict(state["maml"])
    pretrained_model.load_state_dict(state["pretrained"])
    return maml_model, pretrained_model
