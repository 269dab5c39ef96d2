"""The Omniglot study: MAML and FOMAML meta-trained to a plateau on a CPU, over seeds, with an ablation.

Finn et al. (2017) meta-train on 1,200 characters for 60,000 meta-steps. This machine has the two minimal
background sets (242 characters) and a CPU, so the study uses what the literature does to learn more from
less, each switchable in `FewShotConfig`:

    RECIPE   width 64, the paper's strided Conv4, random affine augmentation of the training characters
             (Koch et al. 2015; augment.py), a cosine schedule for β (Antoniou et al. 2019), and the test
             split of whole held-out alphabets (Korean and Early Aramaic: omniglot.TEST_ALPHABETS)

and the settings below. Every run is its own resumable checkpoint `<runs-dir>/<setting>_<algorithm>_s<seed>.pt`
(θ snapshots beside it for the learning curve, curves.py), evaluated once on the same 600 seeded test tasks
(and, for 20-way models, on Lake et al.'s within-alphabet test, lake.py); each result is written beside its
checkpoint (`.result.json`), so several processes may train different runs at once. `table` gathers them:
mean ± sd over seeds per setting and algorithm, and the MAML − FOMAML gap paired by seed.

    python -m mamlkit.experiments.omniglot_study run --settings 5w1s --algorithms maml fomaml --seeds 0 1 2
    python -m mamlkit.experiments.omniglot_study run --settings 20w1s --seeds 1 --device cuda  # gpu_session.py: many
    python -m mamlkit.experiments.omniglot_study run --settings 5w1s --split characters  # tested on the paper's split
    python -m mamlkit.experiments.omniglot_study ablation --seeds 0 1 2       # every row; --rows plain: one
    python -m mamlkit.experiments.omniglot_study table
    python -m mamlkit.experiments.omniglot_study retest --settings 5w5s --seeds 0 1 2 --steps 10  # the same tasks
    python -m mamlkit.experiments.omniglot_study record                       # results -> mamlkit/results/
    python -m mamlkit.experiments.omniglot_study table --records              # the table from those records
    python -m mamlkit.experiments.omniglot_study ship --settings 5w1s 20w1s   # seed 0's MAML -> load_pretrained

`record` copies every finished run's result (not its checkpoint) into mamlkit/results/omniglot_study/, so
the README's tables can be re-made from a fresh clone with `table --records`; it refuses to replace a
record by a different result of the same name (a result that only gained fields updates its record).

`retest --steps 10` tests finished runs again on the same tasks after 10 inner steps, as the paper's reference
code tests (the rows test after 3, as its text says); `table` shows them as rows ending ", 10 test steps".

`ship` replaces the shipped checkpoint of each setting (mamlkit/weights/, what `load_pretrained` returns) by
the study's MAML run of `--seed` on unseen alphabets (and the prototypical network's, `load_pretrained(..., algorithm="protonet")`),
and that setting's rows of the shipped table by the study's results; it refuses a run shorter than the row it would replace, and settings not named keep theirs.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, load_checkpoint, sha256
from ..cli import device, nonnegative_int, positive_int
from . import fewshot  # fewshot.WEIGHTS and fewshot.RESULTS_JSON are read at call time (tests point them elsewhere)
from .fewshot import (
    PAPER,
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    export_weights,
    omniglot_split,
    saved_config,
    train_fewshot,
)

RUNS_DIR = Path("runs/omniglot")
RECORDS = Path(__file__).resolve().parents[1] / "results" / "omniglot_study"  # shipped copies of the results
RECIPE = dict(width=64, downsample="stride", augment=True, meta_lr_schedule="cosine", split="alphabets")
# Per setting: the paper's α and test steps for 5-way; 20-way trained with one inner step of α = 0.4 (a
# second-order step keeps every inner step's graph, so 5 steps cost several times more per meta-step)
# and tested with 3. Fewer query images per class (5; 20-way: 2) and a meta-batch of 16 buy more
# meta-steps for the same CPU time.
SETTINGS = {
    "5w1s": dict(n_way=5, k_shot=1, q_query=5, meta_batch_size=16, iterations=8000),
    "5w5s": dict(n_way=5, k_shot=5, q_query=5, meta_batch_size=16, iterations=8000),
    "20w1s": dict(n_way=20, k_shot=1, q_query=2, meta_batch_size=16, inner_steps=1, inner_lr=0.4, test_steps=3,
                  iterations=4000),
}
# name -> FewShotConfig switches. The "_zerohead" variants use the zeroing trick (Kao et al. 2022): the head
# starts every task at 0 and is not meta-learned. Second-order MAML learns a θ whose predictions before
# adaptation are uniform (its support loss stays at ln N); FOMAML's meta-gradient lacks the term that
# teaches this, and zeroing the head gives it for free. They are tested with the one inner step they were
# trained with: meta-training calibrates that step from a head of 0, and further steps overshoot (compare.py).
# The "_5steps" variants take the inner loop of the paper's 20-way runs (5 steps of α = 0.1, tested with 5):
# the Hessian term FOMAML drops is proportional to α, so small steps make first order a closer approximation.
# "protonet" is the study's recipe and budget for prototypical networks, the comparison's (compare.py)
# strongest method on Lake et al.'s new-alphabet test.
ALGORITHMS = {"maml": {}, "fomaml": {"first_order": True}, "maml_zerohead": {"zero_head": True, "test_steps": 1},
              "fomaml_zerohead": {"first_order": True, "zero_head": True, "test_steps": 1},
              "maml_5steps": {"inner_steps": 5, "inner_lr": 0.1, "test_steps": 5},
              "fomaml_5steps": {"first_order": True, "inner_steps": 5, "inner_lr": 0.1, "test_steps": 5},
              # the metric-based baseline (Snell et al. 2017; notebook 07): no inner loop, nearest class prototype
              "protonet": {"algorithm": "protonet", "inner_steps": 0, "test_steps": 1}}
INNER_LOOP = ("inner_steps", "inner_lr", "test_steps")
PAIRS = (("maml", "fomaml"), ("maml", "fomaml_zerohead"), ("maml_zerohead", "fomaml_zerohead"),
         ("maml", "fomaml_5steps"), ("maml_5steps", "fomaml_5steps"))  # paired gaps
# The ablation: 5-way 1-shot MAML, one change to the recipe per row (same seeds, same test tasks but the last's).
ABLATION = {
    "plain (constant β, no augmentation)": dict(augment=False, meta_lr_schedule="constant"),
    "+ augmentation": dict(meta_lr_schedule="constant"),
    "+ cosine β": dict(augment=False),
    "recipe (both)": {},
    "recipe, width 32": dict(width=32),
    "recipe + first-order warm-up (first quarter)": dict(first_order_steps=None),  # set from iterations
    # learned α, meta-learned with θ from α = 0.4 (and tested, like every row, with 3 steps of it). The multi-step
    # loss, the other MAML++ choice, is no row: with one inner step it is the ordinary query loss
    "recipe + learned α per layer": dict(learn_inner_lr="layer"),
    "recipe + learned α per entry (Meta-SGD)": dict(learn_inner_lr=True),
    # the paper's 20-way inner loop (5 steps of α = 0.1, tested with 5), which compare.py's short runs found the
    # larger lever for MAML as for FOMAML (README); second order through 5 steps costs more a meta-step
    "recipe + five inner steps of α = 0.1": dict(ALGORITHMS["maml_5steps"]),
    # not a choice of the recipe but of the test: Finn et al. split Omniglot by character, so test characters
    # come from alphabets seen in training; every other row tests on whole unseen alphabets. Both splits hold
    # out about a quarter of the characters (63 random ones against Korean and Early Aramaic's 62); this row's
    # test tasks are therefore other tasks, drawn the same way (600, the same seed)
    "recipe, tested on held-out characters of the training alphabets (the paper's split)": dict(split="characters"),
}
ROWS = dict(zip(("plain", "augment", "cosine", "recipe", "width32", "warmup", "layer_alpha", "metasgd", "steps5",
                 "characters"),
                ABLATION))  # --rows: one command a row
TEST_TASKS, TEST_SEED = 600, 1
# The study's two tests (`run --split`). "alphabets" (RECIPE's): whole alphabets never seen in meta-training,
# also Lake et al.'s new-alphabet test. "characters": Finn et al.'s split, random held-out characters of alphabets
# seen in meta-training (omniglot.py). A run on the paper's split is its own row, named with this suffix.
SPLITS = {"alphabets": "", "characters": " (paper's split)"}


def config_for(setting: str, algorithm: str, seed: int, **changes) -> FewShotConfig:
    """The study's configuration of one run: RECIPE, then the setting's values, then `changes`."""
    if setting not in SETTINGS:
        raise ValueError(f"setting: expected one of {sorted(SETTINGS)}, got {setting!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {sorted(ALGORITHMS)}, got {algorithm!r}")
    values = {**RECIPE, **SETTINGS[setting], **ALGORITHMS[algorithm], **changes}
    if "first_order_steps" in values and values["first_order_steps"] is None:
        values["first_order_steps"] = values["iterations"] // 4
    return FewShotConfig(seed=seed, **values)


def run_path(runs_dir, setting: str, algorithm: str, seed: int, row: str | None = None,
             split: str = "alphabets") -> Path:
    """Where a run's checkpoint lives: study runs by name (the paper's split in a folder of its own), ablation
    rows under ablation/ by their row's name."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    if row is None:
        folder = Path(runs_dir) if split == "alphabets" else Path(runs_dir) / split
        return folder / f"{setting}_{algorithm}_s{seed}.pt"
    slug = "".join(c if c.isalnum() else "_" for c in row).strip("_")
    return Path(runs_dir) / "ablation" / f"{slug}_s{seed}.pt"


def train_and_evaluate(config: FewShotConfig, checkpoint: Path, *, tasks: int = TEST_TASKS, lake_runs: int = 40,
                       data_path=None, progress: bool = True, row: str | None = None) -> dict:
    """Train (resuming) to config.iterations, evaluate once, write `<checkpoint>.result.json`, return it."""
    result_file = checkpoint.with_name(checkpoint.name + ".result.json")
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if saved_config(result["config"]) == asdict(config) and result["test_tasks"] == tasks:
            if config.learn_inner_lr and "learned_inner_lr" not in result:  # a result written before these fields
                _, _, test_set = omniglot_split(data_path, split=config.split, glyphs_fallback=False)
                result.update(learned_inner_lr_fields(config, checkpoint, test_set, tasks))
                atomic_write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", result_file)
            return result  # done before: the same run, evaluated the same way
    from ..data.omniglot import rotate_classes

    _, train_set, test_set = omniglot_split(data_path, split=config.split, glyphs_fallback=False)
    start_step = load_checkpoint(checkpoint)["learner"]["step"] if checkpoint.exists() else 0
    start = time.perf_counter()
    learner, _ = train_fewshot(config, checkpoint_path=checkpoint, data=rotate_classes(train_set.images),
                               progress=progress, checkpoint_every=250, snapshots=True)
    seconds = time.perf_counter() - start
    state = load_checkpoint(checkpoint)
    accuracy, ci95 = evaluate_fewshot(learner, test_set.images, n_way=config.n_way, k_shot=config.k_shot,
                                      tasks=tasks, seed=TEST_SEED)
    result = {"checkpoint": checkpoint.name, "config": asdict(config), "test_tasks": tasks,
              "test_characters": len(test_set.names), "test_alphabets": test_set.alphabets,
              "accuracy": round(100 * accuracy, 2), "ci95": round(100 * ci95, 2),
              "train_seconds_this_call": round(seconds, 1), "resumed_from_step": start_step,
              # the training wall time summed over every session, counted from seconds_from_step (0: all of it)
              "train_seconds": round(state.get("seconds", 0.0), 1) if "seconds" in state else None,
              "train_seconds_from_step": state.get("seconds_from_step"),
              "threads": torch.get_num_threads(), "hardware": hardware(config.device), "row": row}
    if config.learn_inner_lr:
        result.update(learned_inner_lr_fields(config, checkpoint, test_set, tasks))
    if config.n_way == 20 and config.split == "alphabets":
        from .lake import evaluate_within_alphabet

        lake = evaluate_within_alphabet(FewShotClassifier.from_checkpoint(checkpoint), data_path, runs=lake_runs)
        result["lake_error"], result["lake_ci95"], result["lake_runs"] = lake["error"], lake["ci95"], lake["runs"]
    atomic_write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", result_file)
    if progress:
        print(f"{checkpoint.name}: {result['accuracy']:.2f} ± {result['ci95']:.2f} % on {tasks} test tasks"
              + (f"; Lake 20-way within-alphabet error {result['lake_error']:.1f} %" if "lake_error" in result else ""),
              flush=True)
    return result


def learned_inner_lr_fields(config: FewShotConfig, checkpoint: Path, test_set, tasks: int) -> dict:
    """For a run that learned α: the mean learned α of each parameter tensor (per layer: its one α), and the
    accuracy after the `inner_steps` it was trained with, beside the accuracy after `test_steps` (every row's)."""
    classifier = FewShotClassifier.from_checkpoint(checkpoint)
    alpha = {k: round(v.detach().double().mean().item(), 4) for k, v in classifier.inner_lr.items()}
    accuracy, ci95 = evaluate_fewshot(classifier, test_set.images, n_way=config.n_way, k_shot=config.k_shot,
                                      tasks=tasks, steps=config.inner_steps, seed=TEST_SEED)
    return {"learned_inner_lr": alpha, "accuracy_train_steps": round(100 * accuracy, 2),
            "ci95_train_steps": round(100 * ci95, 2), "train_steps": config.inner_steps}


def retest(paths, steps: int, *, data_path=None, progress: bool = True) -> list[dict]:
    """Test finished runs again after `steps` inner steps, on the same seeded test tasks as their result.

    The paper's text tests its 5-way models after 3 inner steps (the study's test_steps), its reference code
    after 10: this measures what that choice of the test is worth, with θ and α unchanged. Each result file
    gains accuracy_<steps>_steps and ci95_<steps>_steps (`record` keeps them, `table` shows them as rows of
    their own); a run already retested with `steps` is not tested again. Refused (ValueError, before any test)
    where a run has no result yet or no inner loop (the prototypical network)."""
    files = [Path(p).with_name(Path(p).name + ".result.json") for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"runs: no finished result {', '.join(missing)}; train them first (`run`)")
    results = [json.loads(f.read_text()) for f in files]
    configs = [FewShotConfig(**saved_config(r["config"])) for r in results]  # (older results lack newer fields)
    for f, config in zip(files, configs):
        if config.algorithm == "protonet":
            raise ValueError(f"algorithms: {f.name} is a prototypical network, which has no inner steps to retest")
    test_sets = {}  # split -> its test characters, read once
    for path, f, result, config in zip(paths, files, results, configs):
        key = f"accuracy_{steps}_steps"
        if key not in result:
            if config.split not in test_sets:
                test_sets[config.split] = omniglot_split(data_path, split=config.split, glyphs_fallback=False)[2]
            accuracy, ci95 = evaluate_fewshot(FewShotClassifier.from_checkpoint(path), test_sets[config.split].images,
                                              n_way=config.n_way, k_shot=config.k_shot, tasks=result["test_tasks"],
                                              steps=steps, seed=TEST_SEED)
            result[key], result[f"ci95_{steps}_steps"] = round(100 * accuracy, 2), round(100 * ci95, 2)
            atomic_write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", f)
        if progress:
            print(f"{Path(path).name}: {result[key]:.2f} ± {result[f'ci95_{steps}_steps']:.2f} % after {steps} "
                  f"inner steps ({result['accuracy']:.2f} after {config.test_steps}) on "
                  f"{result['test_tasks']} test tasks", flush=True)
    return results


def hardware(device: str) -> str:
    """What trained a run: the GPU's name, or "CPU" (its threads are the result's "threads")."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type.upper()


def collect(runs_dir=RUNS_DIR, pattern: str = "*.pt.result.json") -> list[dict]:
    """Every finished run's result under runs_dir (study runs and ablation rows; records: pattern "*.json")."""
    return [json.loads(f.read_text()) for f in sorted(Path(runs_dir).rglob(pattern))]


def record(runs_dir=RUNS_DIR, records=RECORDS) -> list[Path]:
    """Copy every finished result under runs_dir into `records` (one JSON per run); return the files written.

    Refused (ValueError, before anything is written) where a record of the same name holds another result.
    A record of the same run is rewritten only where the result has gained fields and changed none."""
    todo = []
    row_key = {row: key for key, row in ROWS.items()}
    for f in sorted(Path(runs_dir).rglob("*.pt.result.json")):
        result = json.loads(f.read_text())
        if result.get("row"):  # ablation_<--rows name>_s<seed>.json: plain ASCII names in the repository
            name = f"ablation_{row_key[result['row']]}_s{result['config']['seed']}.json"
        else:
            name = f.relative_to(runs_dir).as_posix().removesuffix(".pt.result.json").replace("/", "_") + ".json"
        out = Path(records) / name
        if out.is_file():
            old = json.loads(out.read_text())
            if (saved_config(old["config"]), old["accuracy"]) != (saved_config(result["config"]), result["accuracy"]):
                raise ValueError(f"runs_dir: {f} differs from the record {out} (another configuration or result); "
                                 f"remove the record first if the new run is meant to replace it")
            # the same run: rewritten only where its result gained fields (learned α filled in later), every
            # field the record holds unchanged; a record richer than the result is kept
            if old == result or any(result.get(k, object()) != v for k, v in old.items()):
                continue
        todo.append((result, out))
    for result, out in todo:
        atomic_write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", out)
    return [out for _, out in todo]


def summarize(results: list[dict]) -> dict:
    """Mean ± sd over seeds per (setting, algorithm, split), and the MAML − FOMAML gap paired by seed.

    Runs on the paper's split (characters) are rows of their own, named with SPLITS' suffix; gaps pair runs of
    one split. Each row also carries the meta-steps, the mean training minutes of the runs that recorded them
    and, for 20-way runs, the mean ± sd of Lake et al.'s within-alphabet error. Runs retested after another
    number of inner steps (`retest`) add rows (and gaps) named ", <steps> test steps"."""
    groups: dict[tuple, dict[int, float]] = {}
    extra: dict[tuple, dict[str, list]] = {}
    for r in results:
        if r.get("row"):
            continue  # an ablation row, whatever its configuration (ablation_table)
        c = saved_config(r["config"])
        if any(c.get(k) != v for k, v in RECIPE.items() if k != "split") or c["first_order_steps"] \
                or c["algorithm"] not in ("maml", "protonet") or c["learn_inner_lr"]:
            continue  # an ablation row (or a run of another algorithm), not a study run
        setting = next((s for s, v in SETTINGS.items()  # (the inner loop may be the algorithm's: *_5steps)
                        if all(c.get(k) == x for k, x in v.items() if k not in INNER_LOOP)), None)
        if setting is None:
            continue
        five = all(c[k] == v for k, v in ALGORITHMS["maml_5steps"].items())  # the paper's 20-way inner loop
        name = ("fomaml" if c["first_order"] else "maml") + ("_zerohead" if c["zero_head"] else "") \
            + ("_5steps" if five else "")
        if c["algorithm"] == "protonet":
            name = "protonet"
        if name in ALGORITHMS and c["split"] in SPLITS:
            key = (setting, c["split"], name)
            groups.setdefault(key, {})[c["seed"]] = r["accuracy"]
            more = extra.setdefault(key, {"iterations": set(), "minutes": {}, "lake": [], "retests": {}})
            more["iterations"].add(c["iterations"])
            for field, value in r.items():  # retest(): accuracy after another number of inner steps
                steps = re.fullmatch(r"accuracy_(\d+)_steps", field)
                if steps and int(steps[1]) != c["test_steps"]:  # (a retest after its own steps is its accuracy)
                    more["retests"].setdefault(int(steps[1]), {})[c["seed"]] = value
            if r.get("train_seconds") is not None and not r.get("train_seconds_from_step"):
                on = r.get("hardware", "CPU")  # runs recorded before "hardware" ran on the CPU
                more["minutes"][c["seed"]] = (on, r["train_seconds"] / 60)
            if r.get("lake_error") is not None:
                more["lake"].append(r["lake_error"])

    def mean_sd(values):
        values = list(values)
        return {"mean": round(statistics.fmean(values), 2), "sd": round(statistics.stdev(values), 2) if len(values) > 1
                else None, "seeds": len(values)}

    summary = {}
    def order(item):  # setting, then split (unseen alphabets first), then algorithm
        (setting, split, name), _ = item
        return list(SETTINGS).index(setting), list(SPLITS).index(split), name

    for (s, split, a), v in sorted(groups.items(), key=order):
        more = extra[(s, split, a)]
        def runs(seeds):  # meta-steps, and mean training minutes per hardware of those seeds' runs
            on: dict[str, list[float]] = {}
            for hw, m in (more["minutes"][seed] for seed in sorted(seeds) if seed in more["minutes"]):
                on.setdefault(hw, []).append(m)
            minutes = {hw: round(statistics.fmean(m), 1) for hw, m in sorted(on.items())}
            return {"iterations": sorted(more["iterations"]), "minutes": minutes.pop("CPU", None),
                    "gpu_minutes": minutes}  # GPU name -> minutes

        summary[f"{s} {a}{SPLITS[split]}"] = {**mean_sd(v.values()), "by_seed": v, **runs(v),
                                              "lake": mean_sd(more["lake"]) if more["lake"] else None}
        for steps, by_seed in sorted(more["retests"].items()):  # the same runs, tested after other inner steps
            summary[f"{s} {a}{SPLITS[split]}, {steps} test steps"] = {**mean_sd(by_seed.values()),
                                                                       "by_seed": by_seed, **runs(by_seed), "lake": None}
    for setting in SETTINGS:
        for split, suffix in SPLITS.items():
            for a, b in PAIRS:
                first, second = (extra.get((setting, split, x), {"retests": {}})["retests"] for x in (a, b))
                tests = [("", groups.get((setting, split, a), {}), groups.get((setting, split, b), {}))]
                tests += [(f", {n} test steps", first[n], second[n]) for n in sorted(set(first) & set(second))]
                for steps, first_acc, second_acc in tests:
                    paired = sorted(set(first_acc) & set(second_acc))
                    if paired:
                        gaps = [first_acc[s] - second_acc[s] for s in paired]
                        summary[f"{setting} gap {a} − {b}{suffix}{steps}"] = {**mean_sd(gaps), "paired_seeds": paired}
    return summary


def ablation_table(results: list[dict]) -> str:
    """One line per ablation row: mean ± sd over seeds, meta-steps, seeds, and what trained each seed."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        if r.get("row"):
            rows.setdefault(r["row"], []).append(r)
    lines = ["| 5-way 1-shot MAML | accuracy % (mean ± sd; 600 test tasks) | by seed | meta-steps | seeds | trained on |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in ABLATION:
        if row in rows:
            runs = sorted(rows[row], key=lambda r: r["config"]["seed"])
            acc = [r["accuracy"] for r in runs]
            sd = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else " (one seed)"
            by_seed = ", ".join(f"{a:.2f}" for a in acc)
            on: dict[str, list[str]] = {}
            for r in runs:
                on.setdefault(r.get("hardware", "CPU"), []).append(str(r["config"]["seed"]))
            trained_on = "; ".join(f"{hw} (seed {', '.join(seeds)})" for hw, seeds in on.items())
            lines.append(f"| {row} | {statistics.fmean(acc):.2f}{sd} | {by_seed} | {runs[0]['config']['iterations']:,} "
                         f"| {len(acc)} | {trained_on} |")
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    """The summary as a table: accuracy, Lake's error (20-way), meta-steps, minutes per run, seeds."""
    def cell(s, digits, note=True):
        sd = "" if s["sd"] is None else f" ± {s['sd']:.{digits}f}"
        one = note and s["seeds"] < 2
        return f"{s['mean']:.{digits}f}{sd}" + (" (one seed: no spread, no conclusion)" if one else "")

    lines = ["| setting | accuracy % (mean ± sd over seeds; 600 test tasks each) | Lake 20-way within-alphabet "
             "error % | meta-steps | minutes / run (1 CPU thread, or the GPU named) | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summary.items():
        if "iterations" not in s:  # a gap: no run of its own
            lines.append(f"| {name} | {cell(s, 2)} | | | | {s['seeds']} |")
            continue
        lake = cell(s["lake"], 1, note=False) if s["lake"] else ""
        minutes = [] if s["minutes"] is None else [f"{s['minutes']:.0f}" + (" (CPU)" if s["gpu_minutes"] else "")]
        minutes += [f"{m:.1f} ({gpu})" for gpu, m in s["gpu_minutes"].items()]
        minutes = "; ".join(minutes) or "not recorded"
        steps = ", ".join(f"{i:,}" for i in s["iterations"])
        lines.append(f"| {name} | {cell(s, 2)} | {lake} | {steps} | {minutes} | {s['seeds']} |")
    return "\n".join(lines)


def ship(settings, runs_dir=RUNS_DIR, seed: int = 0, algorithms=None) -> dict:
    """Ship the study's MAML run of `seed` for each setting (checkpoint + table row; the other algorithms' rows
    too, where done, and the prototypical network's checkpoint: load_pretrained(..., algorithm="protonet")).

    `algorithms` names the runs to ship (each must be finished); by default every finished one, MAML's required.
    Refused (ValueError, before anything is written) when a required result is missing or a run is shorter
    than the shipped row it would replace. Returns the new shipped table."""
    shipped_json, weights = fewshot.RESULTS_JSON, fewshot.WEIGHTS
    table = json.loads(shipped_json.read_text()) if shipped_json.is_file() else {"runs": []}
    rows = {r["name"]: {"budget": True, **r} for r in table["runs"]}  # rows before the study: `results`' budget runs
    new = []
    for setting in settings:
        for algorithm in algorithms or ALGORITHMS:
            if algorithm not in ALGORITHMS:
                raise ValueError(f"algorithms: expected names from {sorted(ALGORITHMS)}, got {algorithm!r}")
            path = run_path(runs_dir, setting, algorithm, seed)
            result_file = path.with_name(path.name + ".result.json")
            if not result_file.is_file():
                if algorithms or algorithm == "maml":
                    raise ValueError(f"settings: no finished {algorithm} run of {setting} for seed {seed} "
                                     f"({result_file})")
                continue
            result = json.loads(result_file.read_text())
            config = FewShotConfig(**saved_config(result["config"]))
            old = rows.get(config.name)
            if old is not None and old["config"]["iterations"] > config.iterations:
                raise ValueError(f"settings: {config.name} ran {config.iterations} meta-steps, the shipped one "
                                 f"{old['config']['iterations']}: refusing to ship a shorter run")
            new.append((path, config, result, setting, algorithm))
    made = {}  # row name -> algorithm: "fomaml" and "fomaml_5steps" both make the row omniglot_..._fomaml
    for _, config, _, setting, algorithm in new:
        if config.name in made:
            raise ValueError(f"algorithms: {made[config.name]} and {algorithm} of {setting} would both ship the row "
                             f"{config.name!r}; name one of them with --algorithms")
        made[config.name] = algorithm
    for path, config, result, setting, algorithm in new:
        row = {"name": config.name, "n_way": config.n_way, "k_shot": config.k_shot,
               "algorithm": "ProtoNet" if config.algorithm == "protonet" else
                            ("FOMAML" if config.first_order else "MAML") + (", zeroed head" if config.zero_head else "")
                            + (f", {config.inner_steps} steps of α = {config.inner_lr}" if "5steps" in algorithm else ""),
               "accuracy": result["accuracy"],
               "ci95": result["ci95"], "paper": PAPER.get((config.n_way, config.k_shot, config.first_order))
               if config.algorithm == "maml" else None,  # Finn et al.'s numbers are MAML's and FOMAML's
               "chance": round(100 / config.n_way, 2), "test_tasks": result["test_tasks"],
               "test_steps": config.test_steps, "config": asdict(config), "train_seconds": result.get("train_seconds"),
               "budget": False, "source": f"omniglot_study run, seed {seed}",
               "command": f"python -m mamlkit.experiments.omniglot_study run --settings {setting} "
                          f"--algorithms {algorithm} --seeds {seed}",
               "trained_on": f"the minimal background sets without {', '.join(result['test_alphabets'])} "
                             f"(x 4 rotations)", "test_alphabets": result["test_alphabets"],
               "test_characters": result["test_characters"], "weights": None, "sha256": None}
        for key in ("lake_error", "lake_ci95", "lake_runs"):
            if key in result:
                row[key] = result[key]
        if algorithm in ("maml", "protonet"):  # the checkpoints load_pretrained returns
            out = export_weights(path, weights / f"{config.name}.pt")
            row["weights"], row["sha256"] = out.name, sha256(out)
        rows[config.name] = row
    table["runs"] = list(rows.values())
    atomic_write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", shipped_json)
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.experiments.omniglot_study", allow_abbrev=False,
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "train and evaluate study runs (resumable)"),
                       ("ablation", "train and evaluate the ablation rows (5-way 1-shot MAML)"),
                       ("table", "print the table of every finished run"),
                       ("record", "copy every finished run's result into mamlkit/results/omniglot_study/"),
                       ("retest", "test finished runs again after another number of inner steps (the same tasks)"),
                       ("ship", "replace the shipped checkpoints (load_pretrained) by the study's MAML and ProtoNet runs")):
        p = sub.add_parser(name, help=text, allow_abbrev=False)
        p.add_argument("--runs-dir", default=str(RUNS_DIR), help=f"checkpoints and results (default {RUNS_DIR})")
        if name == "table":
            p.add_argument("--records", action="store_true",
                           help=f"read the shipped records ({RECORDS.parent.name}/{RECORDS.name}/) instead of --runs-dir (default off)")
            continue
        if name == "record":
            continue
        if name == "retest":
            p.add_argument("--steps", type=positive_int, required=True,
                           help="inner steps at test time (required; the paper's reference code: 10)")
            p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), required=True, help="which settings (required)")
            p.add_argument("--algorithms", nargs="+", choices=sorted(set(ALGORITHMS) - {"protonet"}),
                           default=["maml", "fomaml"], help="which algorithms (default maml fomaml)")
            p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0], help="seeds (default 0)")
            p.add_argument("--split", choices=list(SPLITS), default="alphabets",
                           help="which test's runs: unseen alphabets (default) or the paper's split")
            p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
            p.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
            continue
        if name == "ship":
            p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), required=True, help="which settings (required)")
            p.add_argument("--seed", type=nonnegative_int, default=0, help="which seed's runs (default 0)")
            p.add_argument("--algorithms", nargs="+", choices=sorted(ALGORITHMS), default=None,
                           help="ship only these runs (default: every finished one; MAML's required)")
            continue
        p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0], help="seeds (default 0)")
        p.add_argument("--tasks", type=positive_int, default=TEST_TASKS, help=f"test tasks (default {TEST_TASKS})")
        p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
        p.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
        p.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda, cuda:N or mps")
        if name == "run":
            p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=sorted(SETTINGS),
                           help="which settings (default all)")
            p.add_argument("--algorithms", nargs="+", choices=sorted(ALGORITHMS), default=["maml", "fomaml"],
                           help="which algorithms (default maml fomaml; *_zerohead: the zeroing trick)")
            p.add_argument("--split", choices=list(SPLITS), default="alphabets",
                           help="the test: whole unseen alphabets (default) or held-out characters of the "
                                "training alphabets, the paper's split (its runs go to <runs-dir>/characters/)")
        else:
            p.add_argument("--iterations", type=positive_int, default=4000,
                           help="meta-steps of every ablation row (default 4000)")
            p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS),
                           help="which rows (default all: " + "; ".join(f"{k} = {v}" for k, v in ROWS.items()) + ")")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ship":
            ship(args.settings, args.runs_dir, args.seed, args.algorithms)
            print(f"shipped {', '.join(args.settings)} (seed {args.seed}) -> {fewshot.RESULTS_JSON}")
        elif args.command == "record":
            written = record(args.runs_dir)
            print(f"recorded {len(written)} new result(s) in {RECORDS}")
        elif args.command == "retest":
            if args.threads:
                torch.set_num_threads(args.threads)
            retest([run_path(args.runs_dir, s, a, seed, split=args.split)
                    for seed in args.seeds for s in args.settings for a in args.algorithms], args.steps, data_path=args.data)
        elif args.command != "table":
            if args.threads:
                torch.set_num_threads(args.threads)
            if args.command == "run":
                jobs = [(config_for(s, a, seed, device=args.device, split=args.split),
                         run_path(args.runs_dir, s, a, seed, split=args.split))
                        for seed in args.seeds for s in args.settings for a in args.algorithms]
                jobs = [(None, *job) for job in jobs]
            else:
                rows = [ROWS[key] for key in args.rows]
                jobs = [(row, config_for("5w1s", "maml", seed, iterations=args.iterations, device=args.device,
                                         **ABLATION[row]),
                         run_path(args.runs_dir, "5w1s", "maml", seed, row))
                        for seed in args.seeds for row in ABLATION if row in rows]
            for row, config, path in jobs:
                train_and_evaluate(config, path, tasks=args.tasks, data_path=args.data, row=row)
        records = getattr(args, "records", False)
        results = collect(RECORDS, "*.json") if records else collect(args.runs_dir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"python -m mamlkit.experiments.omniglot_study: error: {' '.join(str(e).split())}") from e
    print(markdown(summarize(results)))
    if any(r.get("row") for r in results):
        print()
        print(ablation_table(results))


if __name__ == "__main__":
    main()
