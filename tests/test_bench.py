"""A smoke run of `python -m mamlkit.bench` at toy sizes: every code path, the CSV's shape, the plot.

No timing is asserted (timings belong in the benchmark's printed ratios); the memory figures are
checked where they are determined by the computation: MAML's peak grows with inner_steps, FOMAML's
does not, and checkpointing the inner steps lowers MAML's.
"""
import csv

import pytest
import torch
from torch import nn

from mamlkit import timing
from mamlkit.bench import run as bench
from mamlkit.bench.problems import (
    conv4_problem,
    count_gflop,
    higher_available,
    make_meta_step,
    peak_memory_mb,
    sinusoid_problem,
)
from mamlkit.timing import time_interleaved

torch.set_num_threads(1)


def tiny_plan():
    peers = ("autograd-loop",) + (("higher",) if higher_available() else ())
    return bench.Plan(
        configs=[
            bench.Config("sinusoid", 3, 1, 2, ("mamlkit-vmap", "mamlkit-loop") + peers),
            bench.Config("conv4", 1, 2, 1, ("mamlkit-vmap", "mamlkit-loop", "mamlkit-loop-bf16", "mamlkit-ckpt") + peers),
        ],
        width=8, memory_meta_batch_size=1, memory_steps=(1, 3), memory_reps=1, matmul_n=64, tag="_test",
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
    # one row per (method, order) of every config (vmap included, at second order through Conv4's
    # BatchNorm too), one per (memory method, inner_steps)
    expected = {(c.problem, m, o) for c in plan.configs for m in c.methods for o in c.orders}
    assert len(timed) == len(expected)
    assert {(r["problem"], r["method"], r["order"]) for r in timed} == expected
    assert len(memory) == len(plan.memory_methods) * len(plan.memory_steps)
    assert len(table) == len(rows)
    for r in timed:
        assert float(r["ms_median"]) > 0 and float(r["peak_mb"]) > 0 and float(r["gflop"]) > 0
    report = "\n".join(lines)
    assert "skipped" not in report
    assert "sinusoid MAML: mamlkit-vmap vs autograd-loop" in report and "choose_batching picks vmap" in report

    def peak(method, order, steps):
        return float(next(r["peak_mb"] for r in memory if (r["method"], r["order"], r["inner_steps"]) == (method, order, str(steps))))

    assert peak("mamlkit-loop", "second", 3) > peak("mamlkit-loop", "second", 1)  # the Hessian term's graph grows
    assert peak("mamlkit-loop", "first", 3) == pytest.approx(peak("mamlkit-loop", "first", 1), rel=0.05)
    assert peak("mamlkit-ckpt", "second", 3) < peak("mamlkit-loop", "second", 3)
    assert all(float(r["ms_median"]) > 0 for r in memory)  # memory against time: each memory row is timed too
    assert "ms per meta-step against inner_steps" in report and "checkpointed MAML at 3 inner steps" in report


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


def theta_after_one_meta_step(problem, method, first_order=False):
    """θ (flattened) of the step's own model copy after one meta-step of `method`."""
    step = make_meta_step(problem, method, inner_steps=2, first_order=first_order)
    step()
    model = next(c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, nn.Module))
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def flat(theta):
    return torch.cat([p.flatten() for p in theta.values()])


def test_meta_step_updates_theta_and_methods_agree():
    """One meta-step of each method moves θ the same way (they compute the same meta-gradient)."""
    problem = sinusoid_problem(4, device="cpu")
    problem.model.double()
    problem.tensors = tuple(t.double() for t in problem.tensors)
    methods = ["mamlkit-vmap", "mamlkit-loop", "mamlkit-ckpt", "autograd-loop"] + (["higher"] if higher_available() else [])
    moved = {method: flat(theta_after_one_meta_step(problem, method)) for method in methods}
    start = flat(dict(problem.model.named_parameters())).detach()
    for method in methods:
        assert not torch.equal(moved[method], start), method
        torch.testing.assert_close(moved[method], moved["mamlkit-loop"], msg=method)


def test_vmap_meta_step_through_torch_batchnorm_is_exact():
    """mamlkit-vmap at second order through torch's nn.BatchNorm2d (no longer refused): a bias right
    before BatchNorm cannot change the output (BatchNorm subtracts its channel mean), so its exact
    meta-gradient is 0 and Adam leaves it where it was; vmap and the loop move θ the same way."""
    problem = conv4_problem(2, n_way=3, k_shot=1, q_query=2, width=4)
    torch.manual_seed(0)
    problem.model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    problem.tensors = tuple(t.double() if t.is_floating_point() else t for t in problem.tensors)
    start = {k: p.detach().clone() for k, p in problem.model.named_parameters()}
    moved = {m: theta_after_one_meta_step(problem, m) for m in ("mamlkit-vmap", "mamlkit-loop", "autograd-loop")}
    for method, theta in moved.items():
        torch.testing.assert_close(theta["0.bias"], start["0.bias"], rtol=0, atol=1e-6, msg=method)
        assert not torch.equal(theta["0.weight"], start["0.weight"]), method  # the rest does move
        torch.testing.assert_close(flat(theta), flat(moved["autograd-loop"]), msg=method)


def test_time_interleaved_and_errors(monkeypatch):
    calls = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=2,
                             min_block_ms=0)  # blocks of one call: one calibration call each, then round-robin
    assert calls == ["a", "b", "a", "b", "a", "b"] and all(len(v) == 2 for v in times.values())
    # a 2 ms step is timed in blocks lasting >= 10 ms (5 back-to-back calls), a 12 ms one call at a time.
    # A fake clock that only the steps advance makes this exact on a busy machine too.
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds
        return run

    calls.clear()
    times = time_interleaved({"fast": step("fast", 0.002), "slow": step("slow", 0.012)}, reps=3, min_block_ms=10)
    assert calls == ["fast", "slow"] + (["fast"] * 5 + ["slow"]) * 3  # calibration, then 3 rounds of blocks
    assert times["fast"] == pytest.approx([2.0] * 3) and times["slow"] == pytest.approx([12.0] * 3)  # ms per call
    for name, bad in (("reps", dict(reps=0)), ("min_block_ms", dict(reps=1, min_block_ms=-1)),
                      ("max_block", dict(reps=1, max_block=0))):
        with pytest.raises(ValueError, match=name):
            time_interleaved({"a": lambda: None}, **bad)
    with pytest.raises(ValueError, match="reps"):
        time_interleaved({"a": lambda: None}, reps=0)
    with pytest.raises(ValueError, match="method"):
        make_meta_step(conv4_problem(1, width=4), "jax", inner_steps=1, first_order=False)


def test_trainer_backpropagates_task_by_task_with_less_memory():
    from mamlkit.bench.problems import trainer_memory

    whole, by_task = trainer_memory(width=8, meta_batch_size=4)
    assert by_task < 0.6 * whole  # only one task's graph alive at a time


def test_batching_verdicts_call_near_equal_times_a_tie():
    def row(problem, method, ms):
        return dict(section="time", problem=problem, method=method, order="second", meta_batch_size=4,
                    inner_steps=1, ms_median=ms)

    verdicts = bench.batching_verdicts([row("sinusoid", "mamlkit-vmap", 2.0), row("sinusoid", "mamlkit-loop", 20.0),
                                        row("conv4", "mamlkit-vmap", 100.0), row("conv4", "mamlkit-loop", 103.0)], "cpu")
    assert "faster: vmap; choose_batching picks vmap: OK" in verdicts[0]
    assert "faster: a tie (within 5%)" in verdicts[1] and verdicts[1].endswith("OK")
    # a made-up measurement where the loop wins clearly for the sinusoid MLP: choose_batching is then wrong
    wrong = bench.batching_verdicts([row("sinusoid", "mamlkit-vmap", 30.0), row("sinusoid", "mamlkit-loop", 20.0)], "cpu")
    assert wrong[0].endswith("choose_batching picks vmap: WRONG")


def test_gpu_target_vmap_vs_loop_applies_on_cuda_at_meta_batch_32():
    def row(method, ms, device):
        return dict(section="time", problem="conv4", method=method, order="second", meta_batch_size=32,
                    inner_steps=1, ms_median=ms, device=device)

    for device, target in (("cuda", 3.0), ("cpu", None)):
        rows = [row("mamlkit-vmap", 20.0, device), row("mamlkit-loop", 90.0, device)]
        (value, wanted), = [(v, t) for what, v, t in bench.ratios(rows) if "mamlkit-vmap vs mamlkit-loop" in what]
        assert value == pytest.approx(4.5) and wanted == target
