"""Reproduce the sinusoid results of the MAML paper (Finn et al. 2017, Section 5.1, Figures 2 and 3).

    python -m mamlkit.experiments.reproduce_sinusoid                      # K=5 and K=10, 70,000 meta-iterations each
    python -m mamlkit.experiments.reproduce_sinusoid --iterations 2000    # a quick look: 2,000 of the 70,000 meta-iterations
    python -m mamlkit.experiments.reproduce_sinusoid --ship               # the paper's scale, into the package

Configuration, as the paper: MLP 1-40-40-1 (ReLU), MSE, one inner step with α = 0.01, Adam with β = 1e-3,
meta-batch 25 tasks, K support and K query points per task, 70,000 meta-iterations. The "pretrained"
baseline trains the same MLP by plain regression on all tasks for the same number of iterations.
Evaluation: 600 fixed test tasks (seeded), fine-tuned with α = 0.01 on their K support points and
judged on 100 query points, MSE after 1, 5 and 10 steps, with 95% confidence intervals. A test task
whose fine-tuning diverges (loss non-finite or over 10x the mean loss without fine-tuning) is counted
and shown in the table, and left out of that column's mean.

Everything goes into `--run-dir` (default runs/sinusoid): resumable training checkpoints every 5,000
steps (an interrupted run resumes where it stopped), the trained weights per K (sinusoid_k{K}.pt) and
the results (sinusoid.json, and a markdown table on stdout). Only `--ship` writes them into the package
instead (mamlkit/weights/, mamlkit/results/sinusoid.json, which `pretrained.load_sinusoid` reads), and it
is refused, before any training, for fewer meta-iterations than a shipped row of the same K records.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed
from ..checkpoint import atomic_write_text, save_checkpoint, sha256
from ..cli import nonnegative_int, positive_int
from ..evaluation import adaptation_curve, mean_ci95
from ..paths import PACKAGE
from ..trainer import MetaConfig, MetaLearner, train
from .sinusoid import evaluation_tasks, make_mlp, sample_tasks, train_pretrained

# K=5, MSE after 1 / 5 / 10 gradient steps. The paper reports these results as curves (Finn et al. 2017, Figure 3,
# left), not as a table; these two-decimal values are approximate readings of that figure of unverified
# provenance (earlier cited to "App. C.1", which does not contain them).
PAPER = {
    5: {"maml": [0.67, 0.38, 0.35], "pretrained": [2.41, 2.23, 2.19]},
}
EVAL_STEPS = [1, 5, 10]
SHIPPED_WEIGHTS = PACKAGE / "weights"
SHIPPED_RESULTS = PACKAGE / "results" / "sinusoid.json"


def refuse_shorter_than_shipped(k_shots, iterations: int, results=SHIPPED_RESULTS) -> None:
    """ValueError (naming --iterations) if a shipped row of one of `k_shots` was trained for longer: --ship
    must never replace the paper-scale weights with a quick look."""
    if not Path(results).is_file():
        return
    shipped = {r["k_shot"]: r["iterations"] for r in json.loads(Path(results).read_text())["rows"]}
    shorter = [f"K={k} ships {shipped[k]:,}" for k in k_shots if k in shipped and iterations < shipped[k]]
    if shorter:
        raise ValueError(f"--iterations: refusing to ship {iterations:,} meta-iterations over longer runs "
                         f"({', '.join(shorter)}); rerun with at least as many, or leave out --ship")


def run_one(k_shot: int, iterations: int, seed: int, run_dir: Path, weights_dir: Path, progress: bool,
            meta_batch_size: int = 25) -> dict | None:
    torch.manual_seed(seed)  # the MLP's initialization
    maml_model = make_mlp()
    learner = MetaLearner(maml_model, F.mse_loss, MetaConfig(inner_lr=0.01, meta_lr=1e-3, inner_steps=1))
    tasks = distributed.local_batch_size(meta_batch_size)  # under torchrun: this rank's share of the meta-batch
    name = f"maml_k{k_shot}_{iterations}" + ("" if meta_batch_size == 25 else f"_mb{meta_batch_size}")
    t0 = time.perf_counter()
    train(learner, lambda g: sample_tasks(tasks, k_shot, generator=g).tensors(), iterations=iterations, seed=seed,
          checkpoint_path=run_dir / f"{name}.pt", checkpoint_every=5000, progress=progress, desc=f"MAML K={k_shot}")
    maml_seconds = time.perf_counter() - t0
    if distributed.rank() != 0:  # the ranks' θ are identical: rank 0 trains the baseline, evaluates, writes
        return None

    torch.manual_seed(seed)
    pretrained = make_mlp()
    t0 = time.perf_counter()
    train_pretrained(pretrained, iterations=iterations, batch_tasks=25, points=k_shot, seed=seed, progress=progress)
    pretrained_seconds = time.perf_counter() - t0

    test = evaluation_tasks(k_shot)
    row = {"k_shot": k_shot, "iterations": iterations, "maml_train_seconds": round(maml_seconds, 1),
           "pretrained_train_seconds": round(pretrained_seconds, 1)}
    for name, model in (("maml", maml_model), ("pretrained", pretrained)):
        curve = adaptation_curve(model, dict(model.named_parameters()), *test.tensors(),
                                 loss_fn=F.mse_loss, inner_lr=0.01, steps=max(EVAL_STEPS))["loss"]  # (600, 11)
        # A task "diverges" when fine-tuning makes its loss non-finite or 10x the mean loss of not adapting
        # at all (gradient descent with a fixed α on 5 clustered points can); it is counted and reported,
        # and the mean is over the other tasks, so one blow-up does not turn the table into inf.
        diverged = ~torch.isfinite(curve) | (curve > 10 * curve[:, 0].mean())  # (600, 11)
        row[name] = [mean_ci95(curve[~diverged[:, s], s]) for s in EVAL_STEPS]  # [(mean, ci95)] after 1, 5, 10 steps
        row[name + "_diverged"] = [int(diverged[:, s].sum()) for s in EVAL_STEPS]
        row[name + "_median"] = [float(curve[:, s].median()) for s in EVAL_STEPS]
        row[name + "_0_steps"] = mean_ci95(curve[:, 0])

    weights = weights_dir / f"sinusoid_k{k_shot}.pt"
    save_checkpoint({"maml": maml_model.state_dict(), "pretrained": pretrained.state_dict(),
                     "k_shot": k_shot, "iterations": iterations, "seed": seed}, weights)
    row["weights"] = weights.name
    row["sha256"] = sha256(weights)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| K | model | 1 step | 5 steps | 10 steps | paper ≈ Fig. 3, unverified (1 / 5 / 10) |", "|---|---|---|---|---|---|"]
    for r in rows:
        for name in ("maml", "pretrained"):
            cells = [f"{m:.2f} ± {c:.2f}" + (f" ({d} of 600 diverged)" if d else "")
                     for (m, c), d in zip(r[name], r[name + "_diverged"])]
            paper = PAPER.get(r["k_shot"], {}).get(name)
            paper = " / ".join(f"{p:.2f}" for p in paper) if paper else "–"
            label = "MAML" if name == "maml" else "pretrained"
            lines.append(f"| {r['k_shot']} | {label} | " + " | ".join(cells) + f" | {paper} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.experiments.reproduce_sinusoid`."""
    p = argparse.ArgumentParser(prog="python -m mamlkit.experiments.reproduce_sinusoid", allow_abbrev=False,
                                description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k-shot", type=positive_int, nargs="+", default=[5, 10], help="K values (default 5 10)")
    p.add_argument("--iterations", type=positive_int, default=70_000,
                   help="meta-iterations (default 70000, the paper's)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the initialization and the tasks (default 0)")
    p.add_argument("--meta-batch-size", type=positive_int, default=25,
                   help="tasks per meta-step (default 25, the paper's); under torchrun a multiple of the processes")
    p.add_argument("--run-dir", type=Path, default=Path("runs/sinusoid"),
                   help="resumable training checkpoints, and the weights and results unless --ship "
                        "(default runs/sinusoid)")
    p.add_argument("--ship", action="store_true",
                   help="write the weights and results into the package (mamlkit/weights/, mamlkit/results/"
                        "sinusoid.json) instead of --run-dir; refused for fewer --iterations than shipped (default: off)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: a 40-unit MLP is too small to gain from more, and extra "
                        "threads slow it down badly on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown)")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    distributed.init()  # a no-op unless launched by torchrun (distributed.py)
    try:
        distributed.local_batch_size(args.meta_batch_size)  # a meta-batch the ranks cannot share: refused up front
    except ValueError as e:
        raise SystemExit(f"python -m mamlkit.experiments.reproduce_sinusoid: error: {e}") from e
    weights_dir, results = (SHIPPED_WEIGHTS, SHIPPED_RESULTS) if args.ship else (args.run_dir, args.run_dir / "sinusoid.json")
    if args.ship:
        try:
            refuse_shorter_than_shipped(args.k_shot, args.iterations)
        except ValueError as e:
            raise SystemExit(f"python -m mamlkit.experiments.reproduce_sinusoid: error: {e}") from e
    t0 = time.perf_counter()
    rows = [run_one(k, args.iterations, args.seed, args.run_dir, weights_dir, not args.no_progress,
                    args.meta_batch_size) for k in args.k_shot]
    wall = time.perf_counter() - t0
    if distributed.rank() != 0:
        return
    report = {
        "command": "python -m mamlkit.experiments.reproduce_sinusoid" + ("" if args.iterations == 70_000 else f" --iterations {args.iterations}")
        + ("" if args.meta_batch_size == 25 else f" --meta-batch-size {args.meta_batch_size}")
        + (" --ship" if args.ship else ""),
        "processes": distributed.world_size(),
        "wall_seconds": round(wall, 1),
        "hardware": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.ship and SHIPPED_RESULTS.is_file():  # the shipped rows of the K values not rerun are kept
        kept = [r for r in json.loads(SHIPPED_RESULTS.read_text())["rows"] if r["k_shot"] not in args.k_shot]
        report["rows"] = sorted(kept + rows, key=lambda r: r["k_shot"])
    atomic_write_text(json.dumps(report, indent=1) + "\n", results)
    print(f"wrote {results} and the weights under {weights_dir}")
    print(markdown(rows))
    print(f"\nwall time {wall / 60:.1f} min on {report['hardware']}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
