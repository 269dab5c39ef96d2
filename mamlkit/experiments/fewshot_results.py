"""The few-shot results table: six settings trained and evaluated on a CPU, written as JSON.

`python -m mamlkit.fewshot results` runs `run_results`: 5-way 1-shot, 5-way 5-shot and 20-way 1-shot, MAML
and FOMAML (Finn et al. 2017, Table 1), one after another, each resumable, at CPU-sized settings on the
Omniglot subset this project's machines have; it ships the MAML checkpoints with their sha256 and records
hardware and wall times beside each accuracy (95% CI over 600 test tasks).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, load_checkpoint, sha256
from ..paths import RESULTS
from .fewshot import (
    PAPER,
    RESULTS_JSON,
    FewShotConfig,
    evaluate_fewshot,
    export_weights,
    omniglot_split,
    train_fewshot,
)

SETTINGS = [(5, 1, False), (5, 1, True), (5, 5, False), (5, 5, True), (20, 1, False), (20, 1, True)]  # (n_way, k_shot, first_order)
SHIP = {(5, 1, False), (5, 5, False), (20, 1, False)}  # the MAML checkpoints shipped in mamlkit/weights/
# A CPU-sized version of the paper's experiment (its settings: width 64, meta_batch_size 32/16, 15 query
# images per class, 60,000 steps): the paper's strided Omniglot net at half width, 5 query images per class
# in training (15 at test time), smaller meta-batches, a few hundred meta-steps, and 20-way trained with
# 1 inner step instead of 5 (a 20-way second-order step with 5 inner steps costs ~3 s on this CPU).
CPU_PRESET = dict(width=32, downsample="stride", q_query=5, meta_batch_size=8)
CPU_SETTING = {(5, 1): dict(iterations=600), (5, 5): dict(iterations=400),
               (20, 1): dict(iterations=400, meta_batch_size=4, inner_steps=1)}


def cpu_config(n_way: int, k_shot: int, first_order: bool, **overrides) -> FewShotConfig:
    """The configuration `results` trains for one setting; `overrides` (not None) replace preset values."""
    preset = {**CPU_PRESET, **CPU_SETTING.get((n_way, k_shot), {}), **{k: v for k, v in overrides.items() if v is not None}}
    return FewShotConfig(n_way=n_way, k_shot=k_shot, first_order=first_order, **preset)


def hardware() -> dict:
    return {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def run_results(runs_dir, *, json_path=RESULTS_JSON, ship: bool = True, tasks: int = 600, data_path=None,
                progress: bool = True, command: str = "run_results()", **overrides) -> dict:
    """Train and evaluate the six settings one after another (resumable), write the JSON, return it."""
    from ..data.omniglot import rotate_classes

    runs_dir = Path(runs_dir)
    data, train_set, test_set = omniglot_split(data_path, glyphs_fallback=False)  # real Omniglot only
    train_images = rotate_classes(train_set.images)  # (4 * train characters, 20, 28, 28)
    json_path = Path(json_path)
    previous = {r["name"]: r for r in json.loads(json_path.read_text())["runs"]} if json_path.is_file() else {}
    results = []
    for n_way, k_shot, first_order in SETTINGS:
        config = cpu_config(n_way, k_shot, first_order, **overrides)
        checkpoint = runs_dir / f"{config.name}.pt"
        start_step = load_checkpoint(checkpoint)["learner"]["step"] if checkpoint.exists() else 0
        start = time.perf_counter()
        learner, _ = train_fewshot(config, checkpoint_path=checkpoint, data=train_images, progress=progress)
        train_seconds = time.perf_counter() - start
        if start_step > 0 and config.name in previous:  # resumed: add the time of the earlier calls
            train_seconds = previous[config.name]["train_seconds"] * start_step / config.iterations + train_seconds
        start = time.perf_counter()
        accuracy, ci95 = evaluate_fewshot(learner, test_set.images, n_way=n_way, k_shot=k_shot, tasks=tasks, seed=1)
        eval_seconds = time.perf_counter() - start
        run = {"name": config.name, "n_way": n_way, "k_shot": k_shot, "algorithm": "FOMAML" if first_order else "MAML",
               "accuracy": round(100 * accuracy, 2), "ci95": round(100 * ci95, 2),
               "paper": PAPER.get((n_way, k_shot, first_order)), "chance": round(100 / n_way, 2),
               "test_tasks": tasks, "test_steps": config.test_steps, "config": asdict(config),
               "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
               "weights": None, "sha256": None}
        if ship and (n_way, k_shot, first_order) in SHIP:
            out = export_weights(checkpoint, json_path.parent / f"{config.name}.pt")
            run["weights"], run["sha256"] = out.name, sha256(out)
        results.append(run)
        print(markdown_row(run), flush=True)
        table = _write_table(json_path, command, data, train_set, test_set, results)  # after each run: nothing is lost
    return table


def _write_table(json_path: Path, command: str, data, train_set, test_set, results: list[dict]) -> dict:
    table = {"command": command, "hardware": hardware(),
             "data": {"source": data.source.split(" (")[0],  # the folder is left out: it is this machine's
                      "train_characters": len(train_set.names),
                                              "test_characters": len(test_set.names), "split_seed": 0,
                                              "train_classes": f"{len(train_set.names)} x 4 rotations"},
             "runs": results}
    atomic_write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", json_path)
    return table


def markdown_row(run: dict) -> str:
    paper = f"{run['paper'][0]} ± {run['paper'][1]}" if run.get("paper") else "—"
    return (f"| {run['n_way']}-way {run['k_shot']}-shot | {run['algorithm']} | {run['accuracy']:.1f} ± {run['ci95']:.1f} "
            f"| {paper} | {run['chance']:.0f} | {run['config']['iterations']} | {run['train_seconds'] / 60:.1f} min |")


def markdown_table(table: dict) -> str:
    h = table["hardware"]
    lines = ["| task | algorithm | accuracy % (95% CI, 600 tasks) | paper % | chance % | meta-steps | train time |",
             "| --- | --- | --- | --- | --- | --- | --- |"] + [markdown_row(r) for r in table["runs"]]
    lines.append(f"\n`{table['command']}` on {h['processor']}, {h['cpu_count']} CPUs, torch {h['torch']}; "
                 f"data: {table['data']['source']}")
    return "\n".join(lines)


BF16_JSON = RESULTS / "bf16_accuracy.json"


def run_bf16_check(runs_dir, *, json_path=BF16_JSON, tasks: int = 600, data_path=None, progress: bool = True,
                   command: str = "run_bf16_check()", **overrides) -> dict:
    """5-way 1-shot MAML meta-trained twice from the same seed on the same tasks, float32 and bf16 autocast.

    Both are evaluated the same way (float32, the same 600 test tasks), so the difference in accuracy is
    the cost of training in bfloat16. Resumable (one checkpoint per run in runs_dir); the JSON is
    written after each run.
    """
    from ..data.omniglot import rotate_classes

    runs_dir = Path(runs_dir)
    data, train_set, test_set = omniglot_split(data_path, glyphs_fallback=False)  # real Omniglot only
    train_images = rotate_classes(train_set.images)  # (4 * train characters, 20, 28, 28)
    results = []
    for bf16 in (False, True):
        config = cpu_config(5, 1, False, bf16=bf16, **overrides)
        start = time.perf_counter()
        learner, _ = train_fewshot(config, checkpoint_path=runs_dir / f"{config.name}.pt", data=train_images,
                                   progress=progress)
        train_seconds = time.perf_counter() - start
        accuracy, ci95 = evaluate_fewshot(learner, test_set.images, n_way=5, k_shot=1, tasks=tasks, seed=1)
        results.append({"name": config.name, "precision": "bf16 autocast" if bf16 else "float32",
                        "accuracy": round(100 * accuracy, 2), "ci95": round(100 * ci95, 2), "test_tasks": tasks,
                        "config": asdict(config), "train_seconds": round(train_seconds, 1)})
        print(f"{config.name}: {100 * accuracy:.2f} ± {100 * ci95:.2f} % ({train_seconds / 60:.1f} min of training"
              " in this call)", flush=True)
        table = {"command": command, "hardware": hardware(), "runs": results}
        if len(results) == 2:
            table["bf16_minus_fp32_points"] = round(results[1]["accuracy"] - results[0]["accuracy"], 2)
        atomic_write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", Path(json_path))
    return table
