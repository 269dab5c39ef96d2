"""Held-out accuracy against meta-steps: where a run plateaus.

`train_fewshot(..., snapshots=True)` (command line: `--snapshots`) keeps θ at every checkpoint in
`<checkpoint>.snapshots/step_NNNNNN.pt`. This module evaluates each snapshot on the same seeded test
tasks of held-out characters (`evaluate_fewshot`: accuracy after the test inner steps, 95% CI) and
plots accuracy against meta-steps, one line per run:

    python -m mamlkit.experiments.curves runs/omniglot/5w1s_maml_s0.pt [more runs] --tasks 200 --png curves.png

Evaluations already made are kept in `<checkpoint>.curve.json` and not repeated, so the command can run
while training goes on (or again after it) and only evaluates the new snapshots. `--keep curves.json`
adds the curves of an earlier `--json` (whose snapshots may be gone) to the plot and the new JSON. The curve uses the
test tasks: it shows how accuracy evolves, and is not used to pick a checkpoint (the shipped model is
the run's last one).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, load_checkpoint
from ..cli import positive_int
from .fewshot import FewShotClassifier, evaluate_fewshot, omniglot_split, saved_config, snapshot_dir


def learning_curve(checkpoint_path, *, tasks: int = 200, seed: int = 1, data_path=None, progress: bool = True) -> dict:
    """{"name", "config", "points": [{"step", "accuracy", "ci95"}...]} for every snapshot of a run (in %)."""
    checkpoint_path = Path(checkpoint_path)
    folder = snapshot_dir(checkpoint_path)
    snapshots = sorted(folder.glob("step_*.pt"))
    if not snapshots:
        raise FileNotFoundError(f"checkpoint_path: no snapshots in {folder}; train with --snapshots")
    cache_file = checkpoint_path.with_name(checkpoint_path.name + ".curve.json")
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if cache.get("tasks") != tasks or cache.get("seed") != seed:
        cache = {"tasks": tasks, "seed": seed, "points": {}}
    config = saved_config(load_checkpoint(snapshots[0])["learner"]["fewshot"])
    _, _, test_set = omniglot_split(data_path, split=config["split"], glyphs_fallback=False)
    for path in snapshots:
        step = int(path.stem.split("_")[1])
        if str(step) in cache["points"]:
            continue
        classifier = FewShotClassifier.from_checkpoint(path)
        accuracy, ci95 = evaluate_fewshot(classifier, test_set.images, n_way=config["n_way"], k_shot=config["k_shot"],
                                          tasks=tasks, seed=seed)
        cache["points"][str(step)] = {"step": step, "accuracy": round(100 * accuracy, 2), "ci95": round(100 * ci95, 2)}
        atomic_write_text(json.dumps(cache, indent=1), cache_file)  # after each point: nothing is lost
        if progress:
            print(f"{checkpoint_path.name} step {step}: {100 * accuracy:.1f} ± {100 * ci95:.1f} %", flush=True)
    points = sorted(cache["points"].values(), key=lambda p: p["step"])
    return {"name": checkpoint_path.stem, "config": config, "tasks": tasks, "seed": seed, "points": points}


def plot_curves(curves: list[dict], png_path, *, title: str | None = None) -> Path:
    """Accuracy (%) against meta-steps, one line per run with its 95% CI band, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for curve in curves:
        steps = [p["step"] for p in curve["points"]]
        acc = [p["accuracy"] for p in curve["points"]]
        ci = [p["ci95"] for p in curve["points"]]
        (line,) = ax.plot(steps, acc, marker="o", markersize=3, label=curve["name"])
        ax.fill_between(steps, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("meta-steps")
    ax.set_ylabel(f"test accuracy % ({curves[0]['tasks']} tasks, 95% CI)")
    ax.set_title(title or "Omniglot, held-out alphabets: accuracy against meta-steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def kept_curves(path, *, tasks: int, seed: int, parser: argparse.ArgumentParser) -> list[dict]:
    """The curves of an earlier --json, checked before any evaluation: one plot compares the same test tasks."""
    path = Path(path)
    if not path.is_file():
        parser.error(f"--keep: expected a JSON file written by --json, got {str(path)!r} (no such file)")
    try:
        curves = json.loads(path.read_text())
        measured_on = {(c["tasks"], c["seed"]) for c in curves if c["points"] and c["name"]}
    except (ValueError, TypeError, KeyError) as e:
        parser.error(f"--keep: expected a JSON file written by --json, got {str(path)!r} ({e})")
    if measured_on - {(tasks, seed)}:
        parser.error(f"--keep: its curves use (tasks, seed) {sorted(measured_on)}; this run uses {(tasks, seed)}: "
                     f"give the same --tasks and --seed")
    return curves


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.experiments.curves", allow_abbrev=False,
                                     description="Held-out accuracy of every snapshot of one or more runs; a plot.")
    parser.add_argument("checkpoints", nargs="+", help="checkpoints of runs trained with --snapshots")
    parser.add_argument("--tasks", type=int, default=200, help="test tasks per snapshot (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the test tasks (default 1)")
    parser.add_argument("--png", default=None, help="where to save the plot (default: no plot)")
    parser.add_argument("--json", default=None, help="where to write all curves as one JSON (default: none)")
    parser.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
    parser.add_argument("--keep", default=None, help="a --json file of earlier curves to plot and write with the "
                                                     "new ones (a run evaluated here replaces its namesake)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's; 1 beside training runs sharing the CPU)")
    args = parser.parse_args(argv)
    if args.tasks < 2:
        parser.error(f"--tasks: expected at least 2 test tasks, got {args.tasks}")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = kept_curves(args.keep, tasks=args.tasks, seed=args.seed, parser=parser) if args.keep else []
    try:
        curves = [learning_curve(c, tasks=args.tasks, seed=args.seed, data_path=args.data) for c in args.checkpoints]
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"python -m mamlkit.experiments.curves: error: {' '.join(str(e).split())}") from e
    new = {c["name"] for c in curves}
    curves = [c for c in kept if c["name"] not in new] + curves
    if args.png:
        print("plot:", plot_curves(curves, args.png))
    if args.json:
        atomic_write_text(json.dumps(curves, indent=1), args.json)


if __name__ == "__main__":
    main()
