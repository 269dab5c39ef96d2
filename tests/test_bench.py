"""A smoke run of `python -m mamlkit.bench` at toy sizes: every code path, the CSV's shape, the plot.

No timing is asserted (timings belong in the benchmark's printed ratios); the memory figures are
checked where they are determined by the computation: MAML's peak grows with inner_steps, FOMAML's
does not, and checkpointing the inner steps lowers MAML's.
"""
import csv

import pytest
import torch
from torch import nn

from mamlkit import bench
from mamlkit.bench_setup import (conv4_problem, count_gflop, higher_available, make_meta_step, peak_memory_mb,
                                 refusal, sinusoid_problem, time_interleaved)

torch.set_num_threads(1)


def tiny_plan():
    peers = ("autograd-loop",) + (("higher",) if higher_available() else ())
    return bench.Plan(
        configs=[
            bench.Config("sinusoid", 3, 1, 2, ("mamlkit-vmap", "mamlkit-loop") + peers),
            bench.Config("conv4", 1, 2, 1, ("mamlkit-vmap", "mamlkit-loop", "mamlkit-loop-bf16", "mamlkit-ckpt") + peers),
        ],
        width=8, memory_meta_batch_size=1, memory_steps=(1, 3), matmul_n=64, tag="_test",
    )


def test_smoke_run_writes_csv_and_plot(tmp_path):
    plan = tiny_plan()
    lines = []
    rows = bench.run(plan, "cpu", tmp_path, threads=1, log=lines.append)
    csv_path, png_path = tmp_path / "bench_cpu_test.csv", tmp_path / "bench_cpu_test.png"
    assert csv_path.is_file() and png_path.stat().st_size > 1000
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == bench.COLUMNS
    timed = [r for r in table if r["section"] == "time"]
    memory = [r for r in table if r["section"] == "memory"]
    # one row per (method, order) of every config that mamlkit runs, one per (memory method, inner_steps)
    refused = [(c.problem, m, o) for c in plan.configs for m in c.methods for o in c.orders
               if refusal(bench.build_problem(c, 1, plan.width, "cpu"), m, o == "first")]
    assert len(timed) == sum(len(c.methods) * len(c.orders) for c in plan.configs) - len(refused)
    assert {(r["problem"], r["method"], r["order"]) for r in timed}.isdisjoint(refused)
    assert len(memory) == len(plan.memory_methods) * len(plan.memory_steps)
    assert len(table) == len(rows)
    for r in timed:
        assert float(r["ms_median"]) > 0 and float(r["peak_mb"]) > 0 and float(r["gflop"]) > 0
    report = "\n".join(lines)
    assert all(f"skipped {m} {o} order" in report for _, m, o in refused)
    assert "sinusoid MAML: mamlkit-vmap vs autograd-loop" in report and "choose_batching picks vmap" in report

    def peak(method, order, steps):
        return float(next(r["peak_mb"] for r in memory if (r["method"], r["order"], r["inner_steps"]) == (method, order, str(steps))))

    assert peak("mamlkit-loop", "second", 3) > peak("mamlkit-loop", "second", 1)  # the Hessian term's graph grows
    assert peak("mamlkit-loop", "first", 3) == pytest.approx(peak("mamlkit-loop", "first", 1), rel=0.05)
    assert peak("mamlkit-ckpt", "second", 3) < peak("mamlkit-loop", "second", 3)


def test_peak_memory_sees_a_known_allocation():
    n = 1 << 20  # 4 MiB of float32, freed before the function returns

    def allocate():
        x = torch.ones(n)
        y = x * 2  # both alive at once: 8 MiB
        del x, y

    assert peak_memory_mb(allocate) == pytest.approx(8.0, rel=0.01)


def test_count_gflop_of_a_matmul():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert count_gflop(lambda: a @ b) == pytest.approx(2 * 64 * 32 * 16 / 1e9)


def test_meta_step_updates_theta_and_methods_agree():
    """One meta-step of each method moves θ the same way (they compute the same meta-gradient)."""
    problem = sinusoid_problem(4, device="cpu")
    problem.model.double()
    problem.tensors = tuple(t.double() for t in problem.tensors)
    methods = ["mamlkit-vmap", "mamlkit-loop", "mamlkit-ckpt", "autograd-loop"] + (["higher"] if higher_available() else [])
    moved = {}
    for method in methods:
        step = make_meta_step(problem, method, inner_steps=2, first_order=False)
        step()
        model = step.__closure__  # the step's own model copy
        theta = [c.cell_contents for c in model if isinstance(c.cell_contents, torch.nn.Module)][0]
        moved[method] = torch.cat([p.detach().flatten() for p in theta.parameters()])
    start = torch.cat([p.detach().flatten() for p in problem.model.parameters()])
    for method in methods:
        assert not torch.equal(moved[method], start), method
        torch.testing.assert_close(moved[method], moved["mamlkit-loop"], msg=method)


def test_time_interleaved_and_errors():
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=2)
    assert calls == ["a", "b", "a", "b"] and all(len(v) == 2 for v in times.values())
    with pytest.raises(ValueError, match="reps"):
        time_interleaved({"a": lambda: None}, reps=0)
    with pytest.raises(ValueError, match="method"):
        make_meta_step(conv4_problem(1, width=4), "jax", inner_steps=1, first_order=False)


def test_refusal_names_vmap_with_torch_batchnorm_at_second_order():
    problem = conv4_problem(1, width=4)
    problem.model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert "BatchNorm" in refusal(problem, "mamlkit-vmap", False)
    assert refusal(problem, "mamlkit-vmap", True) is None and refusal(problem, "mamlkit-loop", False) is None
