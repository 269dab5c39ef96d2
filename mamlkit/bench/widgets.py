"""Benchmark: milliseconds per slider-change redraw of each widget (compute + draw + PNG), median and p90.

    python -m mamlkit.bench.widgets            # 30 changes per slider
    python -m mamlkit.bench.widgets --n 10

The target is < 300 ms for a slider change (a widget that lags breaks the feel of "drag and watch").
This is a measurement, not a test: it prints its numbers and the ratio to the target.
The widgets run with small untrained models here, so no checkpoint or training is involved.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ..cli import positive_int

TARGET_MS = 300.0


def measure(widget, slider, values) -> list[float]:
    """Set each value on the slider and time the redraw that the change triggers."""
    times = []
    for v in values:
        t0 = time.perf_counter()
        slider.value = v
        times.append(1000 * (time.perf_counter() - t0))
    return times


def report(name: str, times: list[float]) -> None:
    med, p90 = statistics.median(times), float(np.percentile(times, 90))
    print(f"{name:<42} median {med:7.1f} ms   p90 {p90:7.1f} ms   p90/target {p90 / TARGET_MS:5.2f}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.bench.widgets`."""
    parser = argparse.ArgumentParser(prog="python -m mamlkit.bench.widgets", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--n", type=positive_int, default=30, help="slider changes per measurement (default 30)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1; the notebooks use at most 2)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..experiments.sinusoid import make_mlp
    from ..widgets import InnerLoopExplorer, MetaGradientAnatomy, OuterLoopExplorer

    n = args.n
    torch.manual_seed(0)
    inner = InnerLoopExplorer(make_mlp(), make_mlp(), inner_steps=10)
    amplitudes = np.round(np.linspace(0.5, 4.5, n), 1)
    report("InnerLoopExplorer: amplitude (10 steps)", measure(inner, inner.amplitude, amplitudes))
    report("InnerLoopExplorer: phase", measure(inner, inner.phase, np.round(np.linspace(0.1, 3.0, n), 2)))
    outer = OuterLoopExplorer(max_iterations=max(n, 2))
    report("OuterLoopExplorer: iteration (play)", measure(outer, outer.iteration, range(1, n + 1)))
    report("OuterLoopExplorer: α (paths + contours)", measure(outer, outer.inner_lr, [0.25, 0.3] * 3))
    anatomy = MetaGradientAnatomy()
    report("MetaGradientAnatomy: θ₁", measure(anatomy, anatomy.theta1, np.round(np.linspace(0.0, 4.0, n), 2)))
    print(f"target: < {TARGET_MS:.0f} ms per redraw; torch threads = {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
