"""`python -m mamlkit.bench`: how fast and how large a MAML / FOMAML meta-step is, mamlkit against its peers.

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks".
The set-ups, methods and meters are described in `bench_setup.py`. One run measures, for the paper's
sinusoid set-up and for Conv4 5-way 1-shot (q_query 15), second order (MAML) and first order (FOMAML):

    ms per meta-step   median over `reps` rounds after a warm-up; each round times every method on a block of
                       back-to-back calls (>= 25 ms, as a training loop runs them), methods round-robin
    peak memory        of one meta-step (MiB above what was allocated before it)
    GFLOP/s            FLOPs of the meta-step / its median time, next to the machine's matmul GFLOP/s

and, separately, peak memory against inner_steps = 1..10 for MAML, FOMAML and MAML with checkpointed
inner steps: MAML's grows with every step (it keeps each step's graph for the Hessian term), FOMAML's
is flat.

    python -m mamlkit.bench --quick              # smaller meta-batches and fewer repetitions
    python -m mamlkit.bench                      # the paper's meta-batches (several times longer)
    python -m mamlkit.bench --device cuda        # adds vmap at every Conv4 size and bf16 rows

It writes bench_<device>[_quick].csv and .png to --out (default: mamlkit/results/) and prints the
ratios that the course's performance targets are stated in. On a CPU it uses one thread unless told
otherwise (--threads): the numbers are steadier on a shared machine.
"""
from __future__ import annotations

import argparse
import csv
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cli import device_among, positive_int
from ..maml import choose_batching
from ..paths import RESULTS
from ..timing import time_interleaved
from .problems import (
    Problem,
    conv4_problem,
    count_gflop,
    higher_available,
    make_meta_step,
    matmul_gflops,
    median,
    peak_memory_mb,
    sinusoid_problem,
    trainer_memory,
)

ORDERS = {"second": False, "first": True}  # order name -> first_order
COLUMNS = ["section", "problem", "method", "order", "meta_batch_size", "inner_steps", "width", "reps", "ms_median",
           "ms_min", "peak_mb", "gflop", "gflops_per_s", "device", "threads"]


@dataclass
class Config:
    """One timed set-up: a problem at one meta_batch_size and inner_steps, the methods to compare."""

    problem: str  # "sinusoid" or "conv4"
    meta_batch_size: int
    inner_steps: int
    reps: int  # timed repetitions after the warm-up
    methods: tuple
    orders: tuple = ("second", "first")


@dataclass
class Plan:
    configs: list
    width: int = 64  # Conv4 filters
    memory_meta_batch_size: int = 2
    memory_steps: tuple = tuple(range(1, 11))
    memory_methods: tuple = (("mamlkit-loop", "second"), ("mamlkit-loop", "first"), ("mamlkit-ckpt", "second"))
    memory_reps: int = 3  # timed rounds per inner_steps in the memory section
    matmul_n: int = 1024
    tag: str = ""  # file name suffix
    notes: list = field(default_factory=list)


def make_plan(quick: bool, device: str) -> Plan:
    """The paper's sizes (quick: smaller Conv4 meta-batches and fewer repetitions, the same shapes per task)."""
    peers = ("autograd-loop",) + (("higher",) if higher_available() else ())
    cuda = torch.device(device).type == "cuda"
    # vmap at Conv4 on a CPU runs one grouped convolution per layer, slower than the loop (see the
    # small meta-batch's rows), so on a CPU it is timed only there, where it costs least.
    conv_big = ("mamlkit-vmap", "mamlkit-loop") if cuda else ("mamlkit-loop",)
    conv_small = ("mamlkit-vmap", "mamlkit-loop", "mamlkit-loop-bf16")
    big, small = (4, 2) if quick else (32, 8)
    plan = Plan(configs=[
        Config("sinusoid", 25, 1, 10 if quick else 30, ("mamlkit-vmap", "mamlkit-loop") + peers),
        Config("conv4", big, 1, 2 if quick else 3, conv_big + peers),
        Config("conv4", big, 5, 2 if quick else 3, conv_big + peers),
        Config("conv4", small, 1, 2 if quick else 3, conv_small + peers),
    ], memory_meta_batch_size=1 if quick else 2, memory_steps=tuple(range(1, 6 if quick else 11)),
        memory_reps=1 if quick else 3, matmul_n=512 if quick else 1024, tag="_quick" if quick else "")
    if not higher_available():
        plan.notes.append("higher is not installed (pip install higher): its rows and ratios are skipped")
    return plan


def build_problem(config_or_name, meta_batch_size: int, width: int, device: str) -> Problem:
    name = getattr(config_or_name, "problem", config_or_name)
    if name == "sinusoid":
        return sinusoid_problem(meta_batch_size, device=device)
    return conv4_problem(meta_batch_size, width=width, device=device)


def bench_config(config: Config, width: int, device: str, threads: int) -> list[dict]:
    """Time every (method, order) of one set-up, interleaved; measure peak memory and FLOPs."""
    problem = build_problem(config, config.meta_batch_size, width, device)
    steps = {(m, o): make_meta_step(problem, m, inner_steps=config.inner_steps, first_order=ORDERS[o])
             for m in config.methods for o in config.orders}
    memory = {key: peak_memory_mb(fn, device) for key, fn in steps.items()}  # also the warm-up run
    times = time_interleaved(steps, config.reps, device)
    # FLOPs: tasks are independent, so count one task's meta-step (mamlkit loop) and scale by the batch
    one_task = Problem(problem.name, problem.model, tuple(t[:1] for t in problem.tensors), problem.loss_fn,
                       problem.inner_lr)
    gflop = {o: count_gflop(make_meta_step(one_task, "mamlkit-loop", inner_steps=config.inner_steps,
                                           first_order=ORDERS[o])) * config.meta_batch_size for o in config.orders}
    rows = []
    for (method, order), ts in times.items():
        ms = median(ts)
        rows.append(dict(section="time", problem=config.problem, method=method, order=order,
                         meta_batch_size=config.meta_batch_size, inner_steps=config.inner_steps,
                         width=width if config.problem == "conv4" else "", reps=config.reps,
                         ms_median=round(ms, 3), ms_min=round(min(ts), 3), peak_mb=round(memory[method, order], 3),
                         gflop=round(gflop[order], 4), gflops_per_s=round(gflop[order] / (ms / 1000), 2),
                         device=device, threads=threads))
    return rows


def bench_memory(plan: Plan, device: str, threads: int) -> list[dict]:
    """Peak memory and time of one Conv4 meta-step against inner_steps: MAML, FOMAML, checkpointed MAML.

    Memory against time: checkpointing keeps MAML's memory nearly flat and pays with one more forward
    pass of every inner step during the backward pass.
    """
    problem = build_problem("conv4", plan.memory_meta_batch_size, plan.width, device)
    rows = []
    for inner_steps in plan.memory_steps:
        steps = {(method, order): make_meta_step(problem, method, inner_steps=inner_steps, first_order=ORDERS[order])
                 for method, order in plan.memory_methods}
        memory = {key: peak_memory_mb(fn, device) for key, fn in steps.items()}  # also the warm-up run
        times = time_interleaved(steps, plan.memory_reps, device)
        for (method, order), ts in times.items():
            rows.append(dict(section="memory", problem="conv4", method=method, order=order,
                             meta_batch_size=plan.memory_meta_batch_size, inner_steps=inner_steps, width=plan.width,
                             reps=plan.memory_reps, ms_median=round(median(ts), 3), ms_min=round(min(ts), 3),
                             peak_mb=round(memory[method, order], 3), gflop="", gflops_per_s="", device=device,
                             threads=threads))
    return rows


def find(rows, **where) -> dict | None:
    """The first row whose fields equal `where`, or None."""
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def ratios(rows: list[dict], stat: str = "ms_median") -> list[tuple[str, float | None, float | None]]:
    """(what, measured ratio, target) for the course's performance targets; None where not measured.

    stat: "ms_median" (the headline) or "ms_min" (the least disturbed run: on a shared machine the
    better estimate of what the code itself costs)."""
    out = []

    def ms(**where):
        r = find(rows, section="time", **where)
        return r[stat] if r else None

    def ratio(slow, fast):
        return slow / fast if slow and fast else None

    cuda = any(str(r.get("device", "")).startswith("cuda") for r in rows)
    sin = dict(problem="sinusoid", inner_steps=1, order="second")
    out.append(("sinusoid MAML: mamlkit-vmap vs higher", ratio(ms(method="higher", **sin), ms(method="mamlkit-vmap", **sin)), 15.0))
    out.append(("sinusoid MAML: mamlkit-vmap vs autograd-loop",
                ratio(ms(method="autograd-loop", **sin), ms(method="mamlkit-vmap", **sin)), 7.0))
    conv_sizes = sorted({(r["meta_batch_size"], r["inner_steps"]) for r in rows if r["section"] == "time" and r["problem"] == "conv4"},
                        key=lambda s: (-s[0], s[1]))
    for mb, steps in conv_sizes:
        where = dict(problem="conv4", meta_batch_size=mb, inner_steps=steps)
        best = {o: min((r[stat] for r in rows if r["section"] == "time" and r["order"] == o
                        and r["method"] in ("mamlkit-vmap", "mamlkit-loop") and all(r[k] == v for k, v in where.items())),
                       default=None) for o in ORDERS}
        label = f"conv4 mb={mb} steps={steps}"
        out.append((f"{label} MAML: best mamlkit vs higher", ratio(ms(method="higher", order="second", **where), best["second"]), 1.5))
        out.append((f"{label} MAML: mamlkit-loop vs autograd-loop",
                    ratio(ms(method="autograd-loop", order="second", **where), ms(method="mamlkit-loop", order="second", **where)), None))
        out.append((f"{label}: FOMAML vs MAML (best mamlkit)", ratio(best["second"], best["first"]), 1.33 if steps == 5 else None))
        gpu_target = 3.0 if cuda and mb == 32 and steps == 1 else None  # vmap >= 3x the loop at meta-batch 32, on a GPU
        out.append((f"{label} MAML: mamlkit-vmap vs mamlkit-loop",
                    ratio(ms(method="mamlkit-loop", order="second", **where), ms(method="mamlkit-vmap", order="second", **where)),
                    gpu_target))
        out.append((f"{label} MAML: bf16 autocast vs float32 (loop)",
                    ratio(ms(method="mamlkit-loop", order="second", **where), ms(method="mamlkit-loop-bf16", order="second", **where)), None))
    return out


def batching_verdicts(rows: list[dict], device: str, tie: float = 0.05) -> list[str]:
    """Does `choose_batching` pick the faster of vmap and loop where both were timed?

    Within `tie` (5%) of each other they are a tie, which is below what a shared machine's noise lets
    a few repetitions tell apart: either pick is OK.
    """
    lines = []
    for r in rows:
        if r["section"] != "time" or r["method"] != "mamlkit-vmap":
            continue
        loop = find(rows, section="time", problem=r["problem"], method="mamlkit-loop", order=r["order"],
                    meta_batch_size=r["meta_batch_size"], inner_steps=r["inner_steps"])
        if loop is None:
            continue
        vmap_ms, loop_ms = r["ms_median"], loop["ms_median"]
        tied = abs(vmap_ms - loop_ms) <= tie * min(vmap_ms, loop_ms)
        faster = f"a tie (within {tie:.0%})" if tied else "vmap" if vmap_ms < loop_ms else "loop"
        model = sinusoid_problem(1).model if r["problem"] == "sinusoid" else conv4_problem(1, width=8).model
        pick = choose_batching(model, device)
        lines.append(f"  {r['problem']} mb={r['meta_batch_size']} steps={r['inner_steps']} {r['order']:>6} order: "
                     f"vmap {vmap_ms:.1f} ms, loop {loop_ms:.1f} ms -> faster: {faster}; "
                     f"choose_batching picks {pick}: {'OK' if tied or pick == faster else 'WRONG'}")
    return lines


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m, ax_c) = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw=dict(width_ratios=[1.6, 1, 1]))
    timed = [r for r in rows if r["section"] == "time"]
    configs = list(dict.fromkeys((r["problem"], r["meta_batch_size"], r["inner_steps"]) for r in timed))
    methods = list(dict.fromkeys((r["method"], r["order"]) for r in timed))
    width = 0.8 / len(methods)
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(dict.fromkeys(m for m, _ in methods))}
    for j, (method, order) in enumerate(methods):
        xs, ys = [], []
        for i, (p, mb, s) in enumerate(configs):
            r = find(timed, problem=p, meta_batch_size=mb, inner_steps=s, method=method, order=order)
            if r:
                xs.append(i + (j - len(methods) / 2 + 0.5) * width)
                ys.append(r["ms_median"])
        ax_t.bar(xs, ys, width, label=f"{method} ({order})", color=colors[method], edgecolor="white",
                 hatch="//" if order == "first" else None)  # first order (FOMAML): hatched
    ax_t.set_xticks(range(len(configs)), [f"{p}\nmb={mb}, steps={s}" for p, mb, s in configs])
    ax_t.set_yscale("log")
    ax_t.set_ylim(top=ax_t.get_ylim()[1] * 100)  # room for the legend above the bars
    ax_t.set_ylabel("ms per meta-step (median, log scale)")
    ax_t.set_title(f"Meta-step time, {device} (hatched: first order)")
    ax_t.legend(fontsize=7, ncol=3, loc="upper left")
    mem = [r for r in rows if r["section"] == "memory"]
    for method, order in dict.fromkeys((r["method"], r["order"]) for r in mem):
        pts = [(r["inner_steps"], r["peak_mb"]) for r in mem if r["method"] == method and r["order"] == order]
        label = {"mamlkit-loop": "MAML" if order == "second" else "FOMAML", "mamlkit-ckpt": "MAML, checkpointed"}[method]
        ax_m.plot(*zip(*pts), marker="o", label=label)
        times = [(r["inner_steps"], r["ms_median"]) for r in mem if r["method"] == method and r["order"] == order
                 and r["ms_median"] != ""]
        if times:
            ax_c.plot(*zip(*times), marker="o", label=label)
    if mem:
        ax_m.set_title(f"Peak memory, Conv4, meta_batch_size={mem[0]['meta_batch_size']}")
        ax_c.set_title(f"Time, Conv4, meta_batch_size={mem[0]['meta_batch_size']}")
    for ax, label in ((ax_m, "peak memory of a meta-step (MiB)"), (ax_c, "ms per meta-step (median)")):
        ax.set_xlabel("inner_steps")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def read_csv(path: Path) -> list[dict]:
    """Rows written by `write_csv`, numbers as numbers (to re-plot a run: --replot)."""
    def value(v):
        if not isinstance(v, str):  # a short row's missing cells (None), a long row's extra ones (a list)
            return v
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def check_rows(rows: list[dict], path) -> None:
    """Raise ValueError unless `rows` look like a CSV of `write_csv`: its columns, known sections, numbers."""
    if not rows:
        raise ValueError(f"{path} holds no rows; expected a CSV written by python -m mamlkit.bench")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"{path} is not a CSV written by python -m mamlkit.bench: it lacks the columns {missing}")
    numeric = {"time": ("meta_batch_size", "inner_steps", "ms_median", "peak_mb"),
               "memory": ("inner_steps", "peak_mb")}
    for i, r in enumerate(rows, start=2):  # line 1 is the header
        if r["section"] not in numeric:
            raise ValueError(f"{path}, line {i}: section {r['section']!r}, expected one of {list(numeric)}")
        bad = [c for c in numeric[r["section"]] if isinstance(r[c], str) or r[c] is None]
        if bad:
            raise ValueError(f"{path}, line {i}: expected numbers in the columns {bad}, got {[r[c] for c in bad]}")


def run(plan: Plan, device: str = "cpu", out: Path | None = RESULTS, threads: int | None = None,
        log=print) -> list[dict]:
    """Run the plan, print the report, write CSV and PNG to `out` (None: write nothing). Returns the rows."""
    threads = torch.get_num_threads() if threads is None else threads
    log(f"mamlkit.bench on {device} ({platform.processor() or platform.machine()}, {threads} thread(s)), torch {torch.__version__}")
    for note in plan.notes:
        log(f"note: {note}")
    peak = matmul_gflops(device, plan.matmul_n)  # measured before and after: the higher is the machine's
    rows = []
    for config in plan.configs:
        log(f"timing {config.problem} mb={config.meta_batch_size} steps={config.inner_steps} "
            f"({', '.join(config.methods)}; {config.reps} reps) ...")
        new = bench_config(config, plan.width, device, threads)
        log("  " + "; ".join(f"{r['method']} {r['order']} {r['ms_median']:.1f} ms" for r in new))  # kept if stopped later
        rows += new
    log(f"memory against inner_steps {plan.memory_steps[0]}..{plan.memory_steps[-1]} ...")
    rows += bench_memory(plan, device, threads)
    peak = max(peak, matmul_gflops(device, plan.matmul_n))

    log(f"\n{'problem':9} {'mb':>3} {'steps':>5} {'method':18} {'order':6} {'ms/step':>9} {'peak MiB':>9} {'GFLOP/s':>8}")
    for r in rows:
        if r["section"] == "time":
            log(f"{r['problem']:9} {r['meta_batch_size']:>3} {r['inner_steps']:>5} {r['method']:18} {r['order']:6} "
                f"{r['ms_median']:9.1f} {r['peak_mb']:9.1f} {r['gflops_per_s']:8.1f}")
    log(f"\nmachine: float32 matmul {plan.matmul_n}x{plan.matmul_n}: {peak:.1f} GFLOP/s")
    best = max((r for r in rows if r["section"] == "time" and r["method"].startswith("mamlkit")),
               key=lambda r: r["gflops_per_s"], default=None)
    if best:
        log(f"best mamlkit meta-step: {best['gflops_per_s']:.1f} GFLOP/s = {100 * best['gflops_per_s'] / peak:.0f}% of matmul "
            f"({best['problem']} mb={best['meta_batch_size']} steps={best['inner_steps']} {best['method']} {best['order']})")
    log("\nratios (slower / faster) of median times, (of the fastest runs), [target]:")
    for (what, value, target), (_, fastest, _) in zip(ratios(rows), ratios(rows, "ms_min")):
        if value is not None:
            verdict = "" if target is None else f"  [target >= {target:g}: {'met' if value >= target else 'NOT met'}]"
            log(f"  {what:58} {value:6.2f}x ({fastest:5.2f}x){verdict}")
    paper = [r for r in rows if r["section"] == "time" and r["problem"] == "conv4" and r["meta_batch_size"] == 32
             and r["inner_steps"] == 1 and r["order"] == "second" and r["method"] in ("mamlkit-vmap", "mamlkit-loop")]
    if paper:  # ms per meta-step x 60,000 steps / 60,000 ms per minute: the ms figure is the run's minutes
        best = min(paper, key=lambda r: r["ms_median"])
        target = "  [target <= 30 min on one H100]" if torch.device(device).type == "cuda" else ""
        log(f"  the paper's 5-way 1-shot run, 60,000 MAML meta-steps of 32 tasks, at this speed ({best['method']}): "
            f"{best['ms_median']:,.0f} min = {best['ms_median'] / 60:,.1f} h{target}")
    log("\nchoose_batching against the measurements:")
    for line in batching_verdicts(rows, device):
        log(line)
    mem = [r for r in rows if r["section"] == "memory"]
    for what, key, fmt in (("peak memory (MiB)", "peak_mb", "{:.0f}"), ("ms per meta-step", "ms_median", "{:.0f}")):
        log(f"\n{what} against inner_steps {plan.memory_steps[0]}..{plan.memory_steps[-1]}, Conv4, "
            f"meta-batch {plan.memory_meta_batch_size}:")
        for method, order in plan.memory_methods:
            values = [fmt.format(r[key]) for r in mem if r["method"] == method and r["order"] == order]
            log(f"  {method:13} {order:6}: {' '.join(values)}")
    last = {(r["method"], r["order"]): r for r in mem if r["inner_steps"] == plan.memory_steps[-1]}
    plain, ckpt = last.get(("mamlkit-loop", "second")), last.get(("mamlkit-ckpt", "second"))
    if plain and ckpt:
        log(f"  checkpointed MAML at {plan.memory_steps[-1]} inner steps: {ckpt['peak_mb'] / plain['peak_mb']:.2f}x "
            f"the memory, {ckpt['ms_median'] / plain['ms_median']:.2f}x the time of plain MAML")
    whole, by_task = trainer_memory(device, width=plan.width)
    log(f"\npeak memory (MiB) of a Conv4 MAML meta-step, loop, meta-batch 8: meta_loss(...).backward() over the "
        f"whole batch {whole:.0f}, MetaLearner.meta_step (task by task) {by_task:.0f}")
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"bench_{torch.device(device).type}{plan.tag}"
        write_csv(rows, out / f"{stem}.csv")
        plot(rows, out / f"{stem}.png", device)
        log(f"\nwrote {out / stem}.csv and .png")
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.bench`."""
    parser = argparse.ArgumentParser(prog="python -m mamlkit.bench", description=__doc__.split("\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--quick", action="store_true",
                        help="smaller meta-batches and fewer repetitions (default off: the paper's meta-batches)")
    parser.add_argument("--device", type=device_among("cpu", "cuda"), default="cpu",
                        help="cpu, cuda or cuda:N, one this machine has (default cpu)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the CSV and the plot (default mamlkit/results/)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads for torch (default 1: steadier timings on a shared machine)")
    parser.add_argument("--replot", type=Path, metavar="CSV", default=None,
                        help="only redraw the plot of a CSV written before (default: run the benchmark)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot is not None:
        if not args.replot.is_file():
            parser.error(f"argument --replot: no CSV at {args.replot}")
        try:  # everything about the file before the plot is drawn: one line, never a traceback
            rows = read_csv(args.replot)
            check_rows(rows, args.replot)
            plot(rows, args.replot.with_suffix(".png"), rows[0]["device"])
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
            parser.error(f"argument --replot: {' '.join(str(e).split())}")
        print(f"wrote {args.replot.with_suffix('.png')}")
        return 0
    torch.set_num_threads(args.threads)
    run(make_plan(args.quick, args.device), args.device, args.out, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
