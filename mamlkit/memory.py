"""Peak memory of one call: what a meta-step of each algorithm costs, measured the same way on a CPU or a GPU.

Used by the benchmarks (`mamlkit.bench`) and the comparison of algorithms (`experiments/compare.py`), as is
`timing.time_interleaved`.
"""
from __future__ import annotations

from typing import Callable

import torch


def peak_memory_mb(fn: Callable[[], None], device="cpu") -> float:
    """Peak memory (MiB) that one call of `fn` allocates above what was allocated before it.

    CUDA: torch.cuda.max_memory_allocated. CPU: torch has no allocator statistics there (and
    tracemalloc does not see torch's allocations), so the call runs under torch.profiler with
    profile_memory=True, which records every allocation and free with a timestamp; the running sum
    in time order peaks at the answer.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for size in allocation_sizes(prof):  # + bytes allocated, − bytes freed, in time order
        current += size
        peak = max(peak, current)
    return peak / 2**20


def allocation_sizes(prof) -> list[int]:
    """The CPU allocations (+bytes) and frees (−bytes) a torch.profiler run recorded, in time order."""
    try:  # fast: the raw event tree (torch's private API, as used by torch.profiler._memory_profiler)
        from torch._C._profiler import _EventType

        events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
                events.append((event.start_time_ns, event.extra_fields.alloc_size))
        return [size for _, size in sorted(events)]
    except (ImportError, AttributeError):  # slow but public: each op's own allocations minus frees
        events = sorted(prof.events(), key=lambda e: e.time_range.start)
        return [e.self_cpu_memory_usage for e in events]


__all__ = ["peak_memory_mb", "allocation_sizes"]
