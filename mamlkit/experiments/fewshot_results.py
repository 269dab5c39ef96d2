"""The few-shot results table: six settings trained and evaluated on a CPU, written as JSON.

`python -m mamlkit.fewshot results` runs `run_results`: 5-way 1-shot, 5-way 5-shot and 20-way 1-shot, MAML
and FOMAML (Finn et al. 2017, Table 1), one after another, each resumable, at CPU-sized settings on the
Omniglot subset this project's machines have; it records hardware and wall times beside each accuracy
(95% CI over 600 test tasks).

Where the files go: the checkpoints and the JSON table stay in the runs folder (default runs/omniglot,
`<runs-dir>/omniglot_results.json`). Only `ship=True` (`--ship`) also copies the MAML checkpoints into
mamlkit/weights/ and replaces their rows of the shipped table mamlkit/weights/omniglot_results.json (with
their sha256; rows of other runs, such as the study's prototypical network, stay), once every setting is
done; it is refused, before anything is trained or written, when a setting would run fewer meta-steps or
fewer test tasks than the shipped table records for it. `run_bf16_check` (`bf16`)
works the same way with `<runs-dir>/bf16_accuracy.json` and the shipped mamlkit/results/bf16_accuracy.json.
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
from . import fewshot  # fewshot.WEIGHTS and fewshot.RESULTS_JSON are read at call time (tests point them elsewhere)
from .fewshot import (
    PAPER,
    FewShotConfig,
    evaluate_fewshot,
    export_weights,
    omniglot_split,
    train_fewshot,
)

SETTINGS = [(5, 1, False), (5, 1, True), (5, 5, False), (5, 5, True), (20, 1, False), (20, 1, True)]  # (n_way, k_shot, first_order)
SHIP = {(5, 1, False), (5, 5, False), (20, 1, False)}  # the MAML checkpoints shipped in mamlkit/weights/
RUNS_DIR = Path("runs/omniglot")  # default folder of the checkpoints and the JSON of `results` and `bf16`
RESULTS_NAME = "omniglot_results.json"  # the table's file name, in the runs folder and in mamlkit/weights/
BF16_NAME = "bf16_accuracy.json"  # the bf16 check's file name, in the runs folder and in mamlkit/results/
BF16_JSON = RESULTS / BF16_NAME  # the shipped bf16 check (written only with ship=True)
# A CPU-sized version of the paper's experiment (its settings: width 64, meta_batch_size 32/16, 15 query
# images per class, 60,000 steps): the paper's strided Omniglot net at half width, 5 query images per class
# in training (15 at test time), smaller meta-batches, a few hundred meta-steps, and 20-way trained with
# 1 inner step instead of 5 (a second-order step keeps every inner step's graph for the Hessian term, so
# its cost grows with the inner steps; `python -m mamlkit.bench` times Conv4 meta-steps at 1 and 5).
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


def _same_file(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def check_shippable(shipped_json, planned: list[tuple[FewShotConfig, int]]) -> None:
    """Raise ValueError (naming --ship) if a planned run is shorter than the shipped one of its setting.

    planned: (config, test tasks) per run. Shorter: fewer meta-steps (`iterations`) or fewer test tasks
    than `shipped_json` records for a run of the same name. No shipped JSON: anything may be shipped.
    """
    shipped_json = Path(shipped_json)
    if not shipped_json.is_file():
        return
    recorded = {r.get("name"): r for r in json.loads(shipped_json.read_text()).get("runs", [])}
    short = []
    for config, tasks in planned:
        run = recorded.get(config.name)
        if run is None:
            continue
        iterations = (run.get("config") or {}).get("iterations", 0)
        if config.iterations < iterations:
            short.append(f"{config.name} would run {config.iterations} meta-steps, the shipped one ran {iterations}")
        if tasks < run.get("test_tasks", 0):
            short.append(f"{config.name} would be tested on {tasks} tasks, the shipped one on {run['test_tasks']}")
    if short:
        raise ValueError(
            f"ship (--ship): refusing to replace the shipped results {shipped_json} with shorter runs: "
            f"{'; '.join(short)}. Run at least as long as the shipped table's command ({recorded_command(shipped_json)}), "
            f"or leave out --ship: the results then stay in the runs folder."
        )


def recorded_command(path) -> str:
    """The command recorded in a results JSON, or '?'."""
    try:
        return json.loads(Path(path).read_text()).get("command", "?")
    except (OSError, ValueError):
        return "?"


def _refuse_shipped_path(json_path: Path, shipped_json: Path) -> None:
    if _same_file(json_path, shipped_json):
        raise ValueError(f"json_path (--json): {json_path} is the shipped table; a run writes its own table in the "
                         f"runs folder, and ship=True (--ship) replaces the shipped one once every run is done")


def run_results(runs_dir=RUNS_DIR, *, json_path=None, ship: bool = False, tasks: int = 600, data_path=None,
                progress: bool = True, command: str = "run_results()", **overrides) -> dict:
    """Train and evaluate the six settings one after another (resumable), write the JSON, return it.

    json_path: the run's table, rewritten after each setting (default `<runs_dir>/omniglot_results.json`).
    ship: also copy the MAML checkpoints into mamlkit/weights/ and write the shipped table there with their
    sha256, at the end; refused before anything runs if a setting is shorter than the shipped one.
    """
    from ..data.omniglot import rotate_classes

    runs_dir = Path(runs_dir)
    json_path = runs_dir / RESULTS_NAME if json_path is None else Path(json_path)
    shipped_json, weights = fewshot.RESULTS_JSON, fewshot.WEIGHTS
    configs = [(cpu_config(n_way, k_shot, first_order, **overrides), (n_way, k_shot, first_order))
               for n_way, k_shot, first_order in SETTINGS]  # bad overrides fail here, before anything runs
    _refuse_shipped_path(json_path, shipped_json)
    if ship:
        check_shippable(shipped_json, [(config, tasks) for config, _ in configs])
    data, train_set, test_set = omniglot_split(data_path, glyphs_fallback=False)  # real Omniglot only
    train_images = rotate_classes(train_set.images)  # (4 * train characters, 20, 28, 28)
    previous = {r["name"]: r for r in json.loads(json_path.read_text())["runs"]} if json_path.is_file() else {}
    results = []
    for config, (n_way, k_shot, first_order) in configs:
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
        results.append(run)
        print(markdown_row(run), flush=True)
        table = _write_table(json_path, command, data, train_set, test_set, results)  # after each run: nothing is lost
    if ship:  # every setting is done: copy the MAML checkpoints, then the table that records their sha256
        for (config, setting), run in zip(configs, results):
            if setting in SHIP:
                out = export_weights(runs_dir / f"{config.name}.pt", weights / f"{config.name}.pt")
                run["weights"], run["sha256"] = out.name, sha256(out)
        table = _write_table(json_path, command, data, train_set, test_set, results)
        _write_table(shipped_json, command, data, train_set, test_set, merged_rows(shipped_json, results))
    return table


def merged_rows(shipped_json: Path, results: list[dict]) -> list[dict]:
    """The shipped table's rows with those of `results` replaced by name, in place; rows of runs that `results`
    does not make (the study's prototypical network, say) are kept, so their checkpoints stay loadable."""
    rows = {r["name"]: r for r in json.loads(shipped_json.read_text())["runs"]} if shipped_json.is_file() else {}
    rows.update({r["name"]: r for r in results})
    return list(rows.values())


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
    kind = "" if run.get("budget", True) else f" ({run.get('source', 'study run')})"  # budget runs: `results`' own
    return (f"| {run['n_way']}-way {run['k_shot']}-shot | {run['algorithm']}{kind} | {run['accuracy']:.1f} ± {run['ci95']:.1f} "
            f"| {paper} | {run['chance']:.0f} | {run['config']['iterations']} | "
            + (f"{run['train_seconds'] / 60:.1f} min |" if run.get("train_seconds") else "not recorded |"))


def markdown_table(table: dict) -> str:
    h = table["hardware"]
    lines = ["| task | algorithm | accuracy % (95% CI, 600 tasks) | paper % | chance % | meta-steps | train time |",
             "| --- | --- | --- | --- | --- | --- | --- |"] + [markdown_row(r) for r in table["runs"]]
    studied = [r for r in table["runs"] if not r.get("budget", True)]
    lines.append(f"\n{'budget rows: ' if studied else ''}`{table['command']}` on {h['processor']}, {h['cpu_count']} CPUs, "
                 f"torch {h['torch']}; data: {table['data']['source']}"
                 + ("; other rows: the command in their `command` field" if studied else ""))
    return "\n".join(lines)


def run_bf16_check(runs_dir=RUNS_DIR, *, json_path=None, ship: bool = False, tasks: int = 600, data_path=None,
                   progress: bool = True, command: str = "run_bf16_check()", **overrides) -> dict:
    """5-way 1-shot MAML meta-trained twice from the same seed on the same tasks, float32 and bf16 autocast.

    Both are evaluated the same way (float32, the same 600 test tasks), so the difference in accuracy is
    the cost of training in bfloat16. Resumable (one checkpoint per run in runs_dir); the JSON
    (default `<runs_dir>/bf16_accuracy.json`) is written after each run. ship: also write the shipped
    mamlkit/results/bf16_accuracy.json at the end; refused before anything runs if a run is shorter
    (fewer meta-steps or test tasks) than the shipped one.
    """
    from ..data.omniglot import rotate_classes

    runs_dir = Path(runs_dir)
    json_path = runs_dir / BF16_NAME if json_path is None else Path(json_path)
    shipped_json = BF16_JSON
    configs = [cpu_config(5, 1, False, bf16=bf16, **overrides) for bf16 in (False, True)]
    _refuse_shipped_path(json_path, shipped_json)
    if ship:
        check_shippable(shipped_json, [(config, tasks) for config in configs])
    data, train_set, test_set = omniglot_split(data_path, glyphs_fallback=False)  # real Omniglot only
    train_images = rotate_classes(train_set.images)  # (4 * train characters, 20, 28, 28)
    results = []
    for config in configs:
        start = time.perf_counter()
        learner, _ = train_fewshot(config, checkpoint_path=runs_dir / f"{config.name}.pt", data=train_images,
                                   progress=progress)
        train_seconds = time.perf_counter() - start
        accuracy, ci95 = evaluate_fewshot(learner, test_set.images, n_way=5, k_shot=1, tasks=tasks, seed=1)
        results.append({"name": config.name, "precision": "bf16 autocast" if config.bf16 else "float32",
                        "accuracy": round(100 * accuracy, 2), "ci95": round(100 * ci95, 2), "test_tasks": tasks,
                        "config": asdict(config), "train_seconds": round(train_seconds, 1)})
        print(f"{config.name}: {100 * accuracy:.2f} ± {100 * ci95:.2f} % ({train_seconds / 60:.1f} min of training"
              " in this call)", flush=True)
        table = {"command": command, "hardware": hardware(), "runs": results}
        if len(results) == 2:
            table["bf16_minus_fp32_points"] = round(results[1]["accuracy"] - results[0]["accuracy"], 2)
        atomic_write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", json_path)
    if ship:
        atomic_write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", shipped_json)
    return table
