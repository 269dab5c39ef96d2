"""Benchmarks: time and memory of a meta-step, measured so that notebooks and the README can show them.

Public, documented building blocks (notebooks 04 and 06 use them; `python -m mamlkit.bench` runs the full
comparison, bench/run.py):

    Problem, sinusoid_problem, conv4_problem   a model, θ, a meta-batch and a loss, on a device
    make_meta_step(problem, method, ...)       one meta-step (forward, backward, Adam) of a method, as a callable
    time_interleaved(steps, reps)              ms per call of several callables, interleaved round-robin (timing.py)
    peak_memory_mb(fn)                         the peak memory one call allocates (profiler on a CPU, CUDA stats on a GPU)
    baselines                                  slow, obviously correct references (per-task autograd.grad loop, higher)
"""
from ..timing import time_interleaved
from .problems import Problem, conv4_problem, make_meta_step, median, peak_memory_mb, sinusoid_problem

__all__ = ["Problem", "sinusoid_problem", "conv4_problem", "make_meta_step", "time_interleaved", "peak_memory_mb",
           "median"]
