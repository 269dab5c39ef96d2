"""The command line of `python -m mamlkit.fewshot`: train, evaluate, results, bf16 (see fewshot.py).

Finn, Abbeel, Levine (2017), Section 5.2: each subcommand is a thin layer over fewshot.py and
fewshot_results.py. Bad option values are argparse errors (mamlkit.cli's checked types, exit status 2);
the ValueError / TypeError / FileNotFoundError / FloatingPointError of the code below become a one-line
message instead of a traceback. `results` and `bf16` write into the runs folder; only `--ship` replaces
the shipped files in mamlkit/weights/ and mamlkit/results/ (fewshot_results.py).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import torch

from .. import distributed
from ..checkpoint import check_writable
from ..cli import device, int_at_least, nonnegative_int, positive_float, positive_int
from ..models.conv4 import DOWNSAMPLES
from . import fewshot
from .fewshot import (
    PAPER,
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    train_fewshot,
)

PROG = "python -m mamlkit.fewshot"
RUNS_DIR = "runs/omniglot"  # fewshot_results.RUNS_DIR, without importing that module at start-up


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.fewshot` and its four subcommands."""
    parser = argparse.ArgumentParser(prog=PROG, description=fewshot.__doc__.split("\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,results,bf16}")
    t = sub.add_parser("train", help="meta-train Conv4 (resumes from --out if it exists)", allow_abbrev=False,
                       description="Meta-train Conv4 on Omniglot tasks; run the same command again to resume. "
                                   "Options left unset take FewShotConfig's defaults (the paper's for this n_way).")
    t.add_argument("--n-way", type=int_at_least(2), default=5, help="classes per task N, at least 2 (default 5)")
    t.add_argument("--k-shot", type=positive_int, default=1, help="support images per class K (default 1)")
    t.add_argument("--first-order", action="store_true", help="FOMAML instead of MAML (default off: MAML)")
    t.add_argument("--iterations", type=positive_int, required=True,
                   help="meta-steps to reach (required; the paper: 60000)")
    t.add_argument("--out", required=True, help="checkpoint path, resumed if it exists (required)")
    for flag, kind, text in (
            ("--q-query", positive_int, "query images per class in training tasks (default 15)"),
            ("--meta-batch-size", positive_int, "tasks per meta-step (default 32 for 5-way, 16 for 20-way)"),
            ("--inner-lr", positive_float, "α, the inner step size (default 0.4 for 5-way, 0.1 for 20-way)"),
            ("--inner-steps", nonnegative_int, "inner steps in training (default 1 for 5-way, 5 for 20-way)"),
            ("--test-steps", positive_int, "inner steps at test time (default 3 for 5-way, 5 for 20-way)"),
            ("--meta-lr", positive_float, "β, Adam's step size on θ (default 0.001)"),
            ("--width", positive_int, "Conv4 filters per layer (default 64)"),
            ("--seed", nonnegative_int, "seed of the initialization and the task stream (default 0)"),
            ("--first-order-steps", nonnegative_int, "the first meta-steps are first order, then MAML (default 0)")):
        t.add_argument(flag, type=kind, default=None, help=text)
    t.add_argument("--downsample", choices=DOWNSAMPLES, default=None, help="max-pool or stride-2 convolutions "
                   "(default maxpool; the paper's Omniglot net is stride)")
    t.add_argument("--split", choices=fewshot.SPLITS, default=None,
                   help="test characters: whole held-out alphabets or a random character split (default alphabets)")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random affine distortions of the training images (default off)")
    t.add_argument("--meta-lr-schedule", choices=("constant", "cosine"), default=None,
                   help="β over the run (default constant)")
    t.add_argument("--device", type=device, default=None,
                   help="cpu, cuda, cuda:N or mps, one this machine has (default cpu)")
    t.add_argument("--bf16", action="store_true", default=None, help="meta-train under bf16 autocast (default off)")
    t.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="meta-steps between checkpoints (default 500)")
    t.add_argument("--snapshots", action="store_true",
                   help="keep θ at every checkpoint in OUT.snapshots/ for a learning curve (default off)")
    t.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")

    e = sub.add_parser("evaluate", help="accuracy on 600 test tasks with a 95%% confidence interval",
                       allow_abbrev=False, description="Accuracy of a checkpoint on held-out test tasks, with its "
                                                       "95% confidence interval.")
    e.add_argument("path", help="a checkpoint of `train` (or one of mamlkit/weights/)")
    e.add_argument("--tasks", type=int_at_least(2), default=600,
                   help="test tasks, at least 2 for a confidence interval (default 600)")
    e.add_argument("--steps", type=nonnegative_int, default=None,
                   help="inner steps at test time (default: the checkpoint's test steps)")
    e.add_argument("--seed", type=nonnegative_int, default=1, help="seed of the test tasks (default 1)")
    e.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")

    r = sub.add_parser("results", help="train and evaluate the six settings on this CPU; write the JSON table",
                       allow_abbrev=False,
                       description="Train and evaluate the six settings one after another (resumable). Everything "
                                   "goes into --runs-dir; only --ship replaces the shipped checkpoints and "
                                   "mamlkit/weights/omniglot_results.json.")
    r.add_argument("--runs-dir", default=RUNS_DIR, help=f"where the checkpoints and the JSON go (default {RUNS_DIR})")
    r.add_argument("--json", default=None,
                   help="the run's JSON table (default RUNS_DIR/omniglot_results.json)")
    r.add_argument("--ship", action="store_true",
                   help="when every setting is done, copy the MAML checkpoints into mamlkit/weights/ and rewrite "
                        "mamlkit/weights/omniglot_results.json; refused if a setting is shorter (fewer "
                        "--iterations or --tasks) than the shipped one (default off)")
    r.add_argument("--iterations", type=positive_int, default=None,
                   help="meta-steps of every setting (default: the CPU preset's, 600 or 400)")
    r.add_argument("--width", type=positive_int, default=None, help="Conv4 filters per layer (default 32)")
    r.add_argument("--meta-batch-size", type=positive_int, default=None,
                   help="tasks per meta-step (default 8, 4 for 20-way)")
    r.add_argument("--tasks", type=int_at_least(2), default=600, help="test tasks per setting (default 600)")
    r.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")

    b = sub.add_parser("bf16", help="5-way 1-shot MAML trained in float32 and in bf16 autocast: the accuracy cost",
                       allow_abbrev=False,
                       description="5-way 1-shot MAML trained twice, in float32 and under bf16 autocast, evaluated "
                                   "alike. Everything goes into --runs-dir; only --ship replaces "
                                   "mamlkit/results/bf16_accuracy.json.")
    b.add_argument("--runs-dir", default=RUNS_DIR, help=f"where the checkpoints and the JSON go (default {RUNS_DIR})")
    b.add_argument("--json", default=None, help="the run's JSON (default RUNS_DIR/bf16_accuracy.json)")
    b.add_argument("--ship", action="store_true",
                   help="also rewrite mamlkit/results/bf16_accuracy.json at the end; refused if a run is shorter "
                        "(fewer --iterations or --tasks) than the shipped one (default off)")
    b.add_argument("--iterations", type=positive_int, default=None, help="meta-steps of each run (default 600)")
    b.add_argument("--tasks", type=int_at_least(2), default=600, help="test tasks per run (default 600)")
    b.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _run_command(args, argv)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:  # a clear message, no traceback
        raise SystemExit(f"{PROG} {args.command}: error: {' '.join(str(e).split())}") from e


def _run_command(args, argv) -> None:
    command = f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.command == "train":
        names = {f.name for f in fields(FewShotConfig)}
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        config = FewShotConfig(**given)
        distributed.init()  # under torchrun: one rank per process, each on meta_batch_size / world_size tasks
        distributed.local_batch_size(config.meta_batch_size)
        # before any data is read or any step is taken: a path that cannot be saved, a run that cannot resume
        out = check_writable(args.out, "--out")
        if out.exists():
            fewshot._check_resumable(config, out)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        data = None
        if args.data is not None:
            from ..data.omniglot import rotate_classes

            data = rotate_classes(fewshot.omniglot_split(args.data, split=config.split)[1].images)
        learner, log = train_fewshot(config, checkpoint_path=args.out, data=data, snapshots=args.snapshots,
                                     checkpoint_every=args.checkpoint_every)
        if distributed.rank() == 0:
            print(f"{config.name}: {learner.step} meta-steps, last logged meta-loss {log[-1]['meta_loss']:.4f}, "
                  f"accuracy {log[-1].get('accuracy', float('nan')):.3f} -> {args.out}")
    elif args.command == "evaluate":
        distributed.init()  # under torchrun: the test tasks are shared out among the ranks
        classifier = FewShotClassifier.from_checkpoint(args.path)
        c = classifier.config
        data, _, test_set = fewshot.omniglot_split(args.data, split=c.split)
        steps = c.test_steps if args.steps is None else args.steps
        accuracy, ci95 = evaluate_fewshot(classifier, test_set.images, n_way=c.n_way, k_shot=c.k_shot,
                                          tasks=args.tasks, steps=steps, seed=args.seed)
        # the paper's number only beside the paper's method on the paper's data: never beside the procedural
        # glyphs, nor beside another algorithm's checkpoint
        real = data.source.startswith("Omniglot")
        paper = PAPER.get((c.n_way, c.k_shot, c.first_order)) if real and c.variant in ("maml", "fomaml") else None
        if distributed.rank() == 0:
            print(f"{c.name}: {100 * accuracy:.1f} ± {100 * ci95:.1f} % over {args.tasks} test tasks of {data.source} "
                  f"after {steps} inner steps (chance {100 / c.n_way:.0f} %"
                  + (f"; Finn et al. 2017, full background set: {paper[0]} ± {paper[1]} %)" if paper else ")"))
    elif args.command == "bf16":
        from . import fewshot_results

        table = fewshot_results.run_bf16_check(args.runs_dir, json_path=args.json, ship=args.ship, tasks=args.tasks,
                                               data_path=args.data, iterations=args.iterations, command=command)
        print(f"bf16 - float32: {table['bf16_minus_fp32_points']:+.2f} accuracy points")
        if args.ship:
            print(f"shipped: {fewshot_results.BF16_JSON}")
    else:
        from . import fewshot_results  # the results table lives in its own module

        table = fewshot_results.run_results(args.runs_dir, json_path=args.json, ship=args.ship, tasks=args.tasks,
                                            data_path=args.data, iterations=args.iterations, width=args.width,
                                            command=command, meta_batch_size=args.meta_batch_size)
        print(fewshot_results.markdown_table(table))
        if args.ship:
            print(f"shipped: {fewshot.RESULTS_JSON} and the MAML checkpoints beside it")


if __name__ == "__main__":
    main()
