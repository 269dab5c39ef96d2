"""Wall time of several callables, measured so that their ratios mean something on a shared machine.

Used by the benchmarks (`mamlkit.bench`, notebooks 04 and 06) and the comparison of algorithms
(`experiments/compare.py`, notebook 07).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch


def synchronize(device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a clock read before they
    finish measures the launch, not the work. A no-op on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], reps: int, device="cpu",
                     min_block_ms: float = 25.0, max_block: int = 50) -> dict[str, list[float]]:
    """Time each function in `reps` rounds; return, per round, its mean wall time per call in ms.

    Within a round each function runs a block of calls back to back, as a training loop runs its
    meta-step; a step of a few milliseconds is timed over enough calls to last `min_block_ms` (at most
    `max_block` calls), one of seconds over one call (the idea of torch.utils.benchmark's
    blocked_autorange). Rounds go round-robin over the functions, not one function after another: on
    a shared machine a burst of load from elsewhere then slows every method alike, and the ratios stay
    meaningful.
    """
    if reps < 1:
        raise ValueError(f"reps: expected at least 1 timed repetition, got {reps!r}")
    if not min_block_ms >= 0:
        raise ValueError(f"min_block_ms: expected a non-negative number of milliseconds, got {min_block_ms!r}")
    if isinstance(max_block, bool) or not isinstance(max_block, int) or max_block < 1:
        raise ValueError(f"max_block: expected a positive integer, got {max_block!r}")

    def timed(fn, calls: int) -> float:  # mean ms per call over `calls` back-to-back calls
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        return 1000 * (time.perf_counter() - start) / calls

    # the first call of each is also its warm-up (lazy initialisation, allocator caches)
    block = {name: min(max_block, max(1, math.ceil(min_block_ms / max(timed(fn, 1), 1e-6)))) for name, fn in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, fn in steps.items():
            times[name].append(timed(fn, block[name]))
    return times


__all__ = ["synchronize", "time_interleaved"]
