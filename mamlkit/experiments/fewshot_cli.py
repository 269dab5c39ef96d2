"""The command line of `python -m mamlkit.fewshot`: train, evaluate, results, bf16 (see fewshot.py).

Finn, Abbeel, Levine (2017), Section 5.2: each subcommand is a thin layer over fewshot.py and
fewshot_results.py, and turns their ValueError / TypeError / FileNotFoundError / FloatingPointError into
a one-line message instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import torch

from ..models.conv4 import DOWNSAMPLES
from . import fewshot
from .fewshot import (
    PAPER,
    RESULTS_JSON,
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    train_fewshot,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.fewshot", description=fewshot.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="meta-train Conv4 (resumes from --out if it exists)",
                       description="Meta-train Conv4 on Omniglot tasks; run the same command again to resume. "
                                   "Options left unset take FewShotConfig's defaults (the paper's for this n_way).")
    t.add_argument("--n-way", type=int, default=5, help="classes per task N (default 5)")
    t.add_argument("--k-shot", type=int, default=1, help="support images per class K (default 1)")
    t.add_argument("--first-order", action="store_true", help="FOMAML instead of MAML")
    t.add_argument("--iterations", type=int, required=True, help="meta-steps to reach (the paper: 60000)")
    t.add_argument("--out", required=True, help="checkpoint path (resumed if it exists)")
    for flag, kind, text in (
            ("--q-query", int, "query images per class in training tasks (default 15)"),
            ("--meta-batch-size", int, "tasks per meta-step (default 32 for 5-way, 16 for 20-way)"),
            ("--inner-lr", float, "α, the inner step size (default 0.4 for 5-way, 0.1 for 20-way)"),
            ("--inner-steps", int, "inner steps in training (default 1 for 5-way, 5 for 20-way)"),
            ("--test-steps", int, "inner steps at test time (default 3 for 5-way, 5 for 20-way)"),
            ("--meta-lr", float, "β, Adam's step size on θ (default 0.001)"),
            ("--width", int, "Conv4 filters per layer (default 64)"),
            ("--seed", int, "seed of the initialization and the task stream (default 0)"),
            ("--first-order-steps", int, "the first meta-steps are first order, then MAML (default 0)")):
        t.add_argument(flag, type=kind, default=None, help=text)
    t.add_argument("--downsample", choices=DOWNSAMPLES, default=None, help="max-pool or stride-2 convolutions "
                   "(default maxpool; the paper's Omniglot net is stride)")
    t.add_argument("--split", choices=fewshot.SPLITS, default=None,
                   help="test characters: whole held-out alphabets or a random character split (default alphabets)")
    t.add_argument("--augment", action="store_true", default=None,
                   help="random affine distortions of the training images (default off)")
    t.add_argument("--meta-lr-schedule", choices=("constant", "cosine"), default=None,
                   help="β over the run (default constant)")
    t.add_argument("--device", default=None, help="cpu, cuda, mps (default cpu)")
    t.add_argument("--bf16", action="store_true", default=None, help="meta-train under bf16 autocast (default off)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--checkpoint-every", type=int, default=500, help="meta-steps between checkpoints (default 500)")
    t.add_argument("--snapshots", action="store_true",
                   help="keep θ at every checkpoint in OUT.snapshots/ for a learning curve (default off)")
    t.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
    e = sub.add_parser("evaluate", help="accuracy on 600 test tasks with a 95%% confidence interval")
    e.add_argument("path")
    e.add_argument("--tasks", type=int, default=600)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--data", default=None)
    r = sub.add_parser("results", help="train and evaluate the six settings on this CPU; write the JSON table")
    r.add_argument("--runs-dir", default="omniglot_runs", help="where the full checkpoints go (not shipped)")
    r.add_argument("--json", default=str(RESULTS_JSON))
    r.add_argument("--no-ship", action="store_true", help="do not copy MAML checkpoints into mamlkit/weights/")
    r.add_argument("--iterations", type=int, default=None)
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--meta-batch-size", type=int, default=None)
    r.add_argument("--tasks", type=int, default=600)
    r.add_argument("--data", default=None)
    b = sub.add_parser("bf16", help="5-way 1-shot MAML trained in float32 and in bf16 autocast: the accuracy cost")
    b.add_argument("--runs-dir", default="omniglot_runs")
    b.add_argument("--json", default=None, help="default: mamlkit/results/bf16_accuracy.json")
    b.add_argument("--iterations", type=int, default=None)
    b.add_argument("--tasks", type=int, default=600)
    b.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    try:
        _run_command(args, argv)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:  # a clear message, no traceback
        raise SystemExit(f"python -m mamlkit.fewshot {args.command}: error: {e}") from e


def _run_command(args, argv) -> None:
    if args.command == "train":
        names = {f.name for f in fields(FewShotConfig)}
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        config = FewShotConfig(**given)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        data = None
        if args.data is not None:
            from ..data.omniglot import rotate_classes

            data = rotate_classes(fewshot.omniglot_split(args.data, split=config.split)[1].images)
        learner, log = train_fewshot(config, checkpoint_path=args.out, data=data, snapshots=args.snapshots,
                                     checkpoint_every=args.checkpoint_every)
        print(f"{config.name}: {learner.step} meta-steps, last logged meta-loss {log[-1]['meta_loss']:.4f}, "
              f"accuracy {log[-1].get('accuracy', float('nan')):.3f} -> {args.out}")
    elif args.command == "evaluate":
        classifier = FewShotClassifier.from_checkpoint(args.path)
        c = classifier.config
        _, _, test_set = fewshot.omniglot_split(args.data, split=c.split)
        steps = c.test_steps if args.steps is None else args.steps
        accuracy, ci95 = evaluate_fewshot(classifier, test_set.images, n_way=c.n_way, k_shot=c.k_shot,
                                          tasks=args.tasks, steps=steps, seed=args.seed)
        paper = PAPER.get((c.n_way, c.k_shot, c.first_order))
        print(f"{c.name}: {100 * accuracy:.1f} ± {100 * ci95:.1f} % over {args.tasks} test tasks after {steps} "
              f"inner steps (chance {100 / c.n_way:.0f} %; paper " + (f"{paper[0]} ± {paper[1]} %)" if paper else "—)"))
    elif args.command == "bf16":
        from .fewshot_results import BF16_JSON, run_bf16_check

        table = run_bf16_check(args.runs_dir, json_path=args.json or BF16_JSON, tasks=args.tasks, data_path=args.data,
                               iterations=args.iterations,
                               command="python -m mamlkit.fewshot " + " ".join(argv if argv is not None else sys.argv[1:]))
        print(f"bf16 - float32: {table['bf16_minus_fp32_points']:+.2f} accuracy points")
    else:
        from .fewshot_results import (  # the results table lives in its own module
            markdown_table,
            run_results,
        )

        table = run_results(args.runs_dir, json_path=args.json, ship=not args.no_ship, tasks=args.tasks,
                            data_path=args.data, iterations=args.iterations, width=args.width,
                            command="python -m mamlkit.fewshot " + " ".join(argv if argv is not None else sys.argv[1:]),
                            meta_batch_size=args.meta_batch_size)
        print(markdown_table(table))


if __name__ == "__main__":
    main()
