"""Beyond MAML on Omniglot: every algorithm with the same Conv4, data, augmentation and meta-step budget.

A fair comparison changes one thing, the algorithm. Everything else is COMMON: the strided Conv4 (width
32, so that 12 methods x 3 seeds fit a 2-core CPU), the same training characters and random affine
augmentation, the held-out alphabets as test set (omniglot.TEST_ALPHABETS), Adam with a cosine β, the same
meta-batch, query size and number of meta-steps per setting, and the same 600 seeded test tasks. Each
method keeps the inner-loop settings its paper uses for Omniglot (scaled to the budget, and not tuned here:
the same zero tuning budget for every method):

    method     algorithm (algorithms/)     what it changes                              α     steps train/test
    maml       maml                        —                                            0.4   1 / 3
    fomaml     maml, first_order           no Hessian term in the meta-gradient         0.4   1 / 3
    metasgd    maml, learn_inner_lr        a learned α per parameter entry              0.4   1 / 1
    anil       anil                        only the head is adapted                     0.4   1 / 3
    mamlpp     mamlpp                      learned α per layer and step, multi-step     0.1   3 / 3
                                           loss, per-step BatchNorm, first-order start
    reptile    reptile                     θ ← θ + ε(θ̃ − θ): no query loss, no Hessian   0.1   5 / 10
    protonet   protonet                    no inner loop: nearest class prototype       —     —
    protomaml  protomaml                   MAML from a head built from the prototypes   0.1   1 / 3
    maml_zerohead, fomaml_zerohead         the head is 0 and not meta-learned           0.4   1 / 1
                                           (the zeroing trick, Kao et al. 2022)
    maml_5steps, fomaml_5steps             five small inner steps (the paper's 20-way)  0.1   5 / 5

Each run is a resumable checkpoint `<runs-dir>/<setting>_<method>_s<seed>.pt`, evaluated once (20-way
models also on Lake et al.'s within-alphabet test) by `omniglot_study.train_and_evaluate`. `cost` times
the methods' meta-steps interleaved in one process (ratios from one run, on one thread) and measures each
one's peak memory; `table` gathers mean ± sd over seeds beside the published numbers.

    python -m mamlkit.experiments.compare run --settings 5w1s --seeds 0 1 2
    python -m mamlkit.experiments.compare cost --settings 5w1s 20w1s
    python -m mamlkit.experiments.compare table [--detail]             # + each seed's results, the cost table
    python -m mamlkit.experiments.compare ship --settings 5w1s     # seed 0's checkpoints + the table, into the package

`ship` is the only command that writes inside the package (mamlkit/weights/beyond_maml/ and
mamlkit/results/beyond_maml.json, which notebook 07 reads), and it refuses a setting whose runs are not all
finished for at least 3 seeds at the setting's full budget.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, sha256
from ..cli import nonnegative_int, positive_int
from ..memory import peak_memory_mb
from ..paths import RESULTS, WEIGHTS
from ..timing import time_interleaved
from .fewshot import FewShotClassifier, FewShotConfig, export_weights, make_learner, saved_config
from .omniglot_study import TEST_TASKS, run_path, train_and_evaluate

RUNS_DIR = Path("runs/compare")
SHIPPED_JSON = RESULTS / "beyond_maml.json"  # the table notebook 07 shows (written only by `ship`)
SHIPPED_WEIGHTS = WEIGHTS / "beyond_maml"  # seed 0's checkpoint of every method and shipped setting
MIN_SEEDS = 3
COMMON = dict(width=32, downsample="stride", augment=True, meta_lr_schedule="cosine", split="alphabets")
SETTINGS = {
    "5w1s": dict(n_way=5, k_shot=1, q_query=5, meta_batch_size=8, iterations=1000),
    "20w1s": dict(n_way=20, k_shot=1, q_query=2, meta_batch_size=8, iterations=1000),
}
METHODS = {
    "maml": dict(inner_lr=0.4, inner_steps=1, test_steps=3),
    "fomaml": dict(inner_lr=0.4, inner_steps=1, test_steps=3, first_order=True),
    # Li et al. 2017 adapt with one step of the learned α at training and test time: α is calibrated for it
    "metasgd": dict(inner_lr=0.4, inner_steps=1, test_steps=1, learn_inner_lr=True),
    "anil": dict(inner_lr=0.4, inner_steps=1, test_steps=3, algorithm="anil"),
    "mamlpp": dict(inner_lr=0.1, inner_steps=3, test_steps=3, algorithm="mamlpp"),
    "reptile": dict(inner_lr=0.1, inner_steps=5, test_steps=10, algorithm="reptile"),
    "protonet": dict(inner_steps=0, test_steps=1, algorithm="protonet"),
    "protomaml": dict(inner_lr=0.1, inner_steps=1, test_steps=3, algorithm="protomaml"),
    # the zeroing trick (Kao et al. 2022): the head is 0 at the start of every task and not meta-learned. Tested
    # with the one step it was trained with: meta-training calibrates that step from a head of 0, and MAML's
    # 3 test steps overshoot (`python -m mamlkit.fewshot evaluate <checkpoint> --steps 3` shows it)
    "maml_zerohead": dict(inner_lr=0.4, inner_steps=1, test_steps=1, zero_head=True),
    "fomaml_zerohead": dict(inner_lr=0.4, inner_steps=1, test_steps=1, first_order=True, zero_head=True),
    # the inner loop of the paper's 20-way runs, five small steps: FOMAML's error is O(α) per step (notebook 04)
    "maml_5steps": dict(inner_lr=0.1, inner_steps=5, test_steps=5),
    "fomaml_5steps": dict(inner_lr=0.1, inner_steps=5, test_steps=5, first_order=True),
}
# Published Omniglot accuracies (%, 5-way 1-shot, 20-way 1-shot), all on the full background set (1,200
# characters, random character split) with each paper's own network size and budget, so they bound what
# the method reaches, not what it reaches here.
PUBLISHED = {
    "maml": (98.7, 95.8, "Finn et al. 2017, Table 1"),
    "fomaml": (98.3, 89.4, "Finn et al. 2017, Table 1"),
    "metasgd": (99.53, 95.93, "Li et al. 2017, Table 1"),
    "anil": (None, 96.2, "Raghu et al. 2020, Table 2 (20-way 1-shot only)"),
    "mamlpp": (99.47, 97.65, "Antoniou et al. 2019, Table 1"),
    "reptile": (95.39, 88.14, "Nichol et al. 2018, Table 1 (not transductive; transductive 97.68 / 89.43)"),
    "protonet": (98.8, 96.0, "Snell et al. 2017, Table 1 (trained with 60-way episodes)"),
    "protomaml": (None, None, "Triantafillou et al. 2020 (Meta-Dataset only)"),
    "maml_zerohead": (None, None, "Kao et al. 2022 (mini-ImageNet only)"),
    "fomaml_zerohead": (None, None, "Kao et al. 2022 (mini-ImageNet only)"),
    "maml_5steps": (None, 95.8, "Finn et al. 2017: their 20-way runs use 5 steps of α = 0.1"),
    "fomaml_5steps": (None, 89.4, "Finn et al. 2017: their 20-way runs use 5 steps of α = 0.1"),
}


def config_for(setting: str, method: str, seed: int, **changes) -> FewShotConfig:
    """One run of the comparison: COMMON, the setting, the method's own inner loop, then `changes`."""
    if setting not in SETTINGS:
        raise ValueError(f"setting: expected one of {sorted(SETTINGS)}, got {setting!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    values = {**COMMON, **SETTINGS[setting], **METHODS[method], **changes}
    if values.get("algorithm") == "mamlpp":  # anneal the multi-step loss over the first 10% (MAML++: 15 of 150
        values.setdefault("multi_step_loss_steps", values["iterations"] // 10)  # epochs), first order for the
        values.setdefault("first_order_steps", values["iterations"] // 3)  # first third (50 of 150 epochs)
    return FewShotConfig(seed=seed, **values)


def method_of(config: dict) -> str | None:
    """Which METHODS entry a saved FewShotConfig is (None: not one of the comparison's)."""
    c = saved_config(config)
    for name, changes in METHODS.items():
        if all(c.get(k) == v for k, v in changes.items()) and c["algorithm"] == changes.get("algorithm", "maml") \
                and c["first_order"] == changes.get("first_order", False) \
                and c["learn_inner_lr"] == changes.get("learn_inner_lr", False) \
                and c["zero_head"] == changes.get("zero_head", False):
            return name
    return None


def setting_of(config: dict) -> str | None:
    c = saved_config(config)
    if any(c.get(k) != v for k, v in COMMON.items()):
        return None
    return next((s for s, v in SETTINGS.items() if all(c.get(k) == x for k, x in v.items())), None)


# ----------------------------------------------------------------------------------------------
# cost: time per meta-step and peak memory, every method in one process


def measure_cost(setting: str, methods=tuple(METHODS), *, rounds: int = 10, seed: int = 0) -> dict:
    """{method: {"ms_per_step": median, "peak_mib": one meta-step's peak}} on random images of the setting's
    shape (the cost does not depend on the pixels). The methods' steps are interleaved round by round, so
    a slower or busier moment of the machine falls on all of them alike."""
    from ..data.episodes import EpisodeSampler

    generator = torch.Generator().manual_seed(seed)
    images = ((torch.rand(64, 20, 28, 28, generator=generator) > 0.85) * 255).to(torch.uint8)
    learners, batches = {}, {}
    for method in methods:
        config = config_for(setting, method, seed)
        learners[method] = make_learner(config)
        sampler = EpisodeSampler(images, n_way=config.n_way, k_shot=config.k_shot, q_query=config.q_query,
                                 meta_batch_size=config.meta_batch_size)
        batches[method] = sampler.sample(generator)
    peak = {m: peak_memory_mb(lambda m=m: learners[m].meta_step(*batches[m])) for m in methods}  # also a warm-up
    times = time_interleaved({m: lambda m=m: learners[m].meta_step(*batches[m]) for m in methods}, reps=rounds)
    return {m: {"ms_per_step": round(statistics.median(times[m]), 1), "peak_mib": round(peak[m], 1)}
            for m in methods}


# ----------------------------------------------------------------------------------------------
# the table


def collect(runs_dir=RUNS_DIR) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(Path(runs_dir).glob("*.pt.result.json"))]


def summarize(results: list[dict]) -> dict:
    """{setting: {method: {"mean", "sd", "seeds", "lake_error" (20-way), "train_minutes" (mean wall time of
    one run, where every run recorded it), ...}}} over the finished runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        setting, method = setting_of(r["config"]), method_of(r["config"])
        if setting and method:
            groups.setdefault((setting, method), []).append(r)
    summary: dict = {}
    for (setting, method), runs in sorted(groups.items()):
        acc = [r["accuracy"] for r in runs]
        entry = {"mean": round(statistics.fmean(acc), 2), "sd": round(statistics.stdev(acc), 2) if len(acc) > 1 else None,
                 "seeds": sorted(r["config"]["seed"] for r in runs), "iterations": runs[0]["config"]["iterations"],
                 "by_seed": {str(r["config"]["seed"]): r["accuracy"] for r in runs}}
        seconds = [r.get("train_seconds") for r in runs]
        if None not in seconds:  # runs that predate the recorded wall time leave the cell empty
            entry["train_minutes"] = round(statistics.fmean(seconds) / 60, 1)
        lake = [r["lake_error"] for r in runs if "lake_error" in r]
        if lake:
            entry["lake_error"] = round(statistics.fmean(lake), 1)
            entry["lake_sd"] = round(statistics.stdev(lake), 1) if len(lake) > 1 else None
        summary.setdefault(setting, {})[method] = entry
    return summary


def _cell(entry: dict | None, key: str = "mean", sd: str = "sd", digits: int = 2) -> str:
    if entry is None or key not in entry:
        return "—"
    spread = f" ± {entry[sd]:.{digits}f}" if entry.get(sd) is not None else " (1 seed)"
    return f"{entry[key]:.{digits}f}{spread}"


def markdown(summary: dict, cost: dict | None = None) -> str:
    """One row per method: accuracy per setting (mean ± sd over seeds), Lake error, cost, published numbers."""
    cost = cost or {}
    lines = ["| method | 5-way 1-shot % | 20-way 1-shot % | Lake 20-way within-alphabet error % | ms / meta-step "
             "(5-way; 20-way) | peak MiB (5-way; 20-way) | minutes / run (5-way; 20-way) | seeds "
             "| published 5w1s / 20w1s % (source) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in METHODS:
        five, twenty = summary.get("5w1s", {}).get(method), summary.get("20w1s", {}).get(method)
        if five is None and twenty is None:
            continue
        ms = "; ".join(str(cost.get(s, {}).get(method, {}).get("ms_per_step", "—")) for s in SETTINGS)
        mib = "; ".join(str(cost.get(s, {}).get(method, {}).get("peak_mib", "—")) for s in SETTINGS)
        minutes = "; ".join(str(e.get("train_minutes", "—")) if e else "—" for e in (five, twenty))
        seeds = "; ".join(str(len(e["seeds"])) if e else "0" for e in (five, twenty))
        a, b, source = PUBLISHED[method]
        published = f"{a if a is not None else '—'} / {b if b is not None else '—'} ({source})"
        lines.append(f"| {method} | {_cell(five)} | {_cell(twenty)} | {_cell(twenty, 'lake_error', 'lake_sd', 1)} "
                     f"| {ms} | {mib} | {minutes} | {seeds} | {published} |")
    return "\n".join(lines)


def detail_markdown(summary: dict, cost: dict | None = None) -> str:
    """Per setting: each seed's accuracy (and Lake error); then the cost table (RESULTS.md shows both)."""
    cost, blocks = cost or {}, []
    for setting, rows in summary.items():
        seeds = sorted({int(s) for e in rows.values() for s in e["by_seed"]})
        lake = any("lake_error" in e for e in rows.values())
        lines = [f"{setting}, accuracy % per seed" + (" (Lake error %: mean ± sd)" if lake else "") + ":", "",
                 "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |" + (" Lake error % |" if lake else ""),
                 "| --- " * (len(seeds) + 2 + lake) + "|"]
        for method in (m for m in METHODS if m in rows):
            e = rows[method]
            cells = " | ".join(f"{e['by_seed'][str(s)]:.2f}" if str(s) in e["by_seed"] else "—" for s in seeds)
            lines.append(f"| {method} | {cells} | {_cell(e)} |" + (f" {_cell(e, 'lake_error', 'lake_sd', 1)} |" if lake else ""))
        blocks.append("\n".join(lines))
    measured = [s for s in SETTINGS if s in cost]
    if measured:
        lines = ["| method | " + " | ".join(f"{s} ms / meta-step | {s} peak MiB" for s in measured) + " |",
                 "| --- " * (1 + 2 * len(measured)) + "|"]
        for method in METHODS:
            cells = [f"{cost[s].get(method, {}).get('ms_per_step', '—')} | {cost[s].get(method, {}).get('peak_mib', '—')}"
                     for s in measured]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------
# shipping: the finished comparison into the package, and reading it back


def ship(settings, runs_dir=RUNS_DIR, *, json_path=SHIPPED_JSON, weights_dir=SHIPPED_WEIGHTS) -> dict:
    """Export seed 0's checkpoint of every method of `settings` and write the table with their sha256.

    Refused (ValueError, before anything is written) unless every method of every setting has finished
    runs for at least MIN_SEEDS seeds at the setting's full budget. Settings shipped before and not named
    here are kept."""
    runs_dir = Path(runs_dir)
    summary = summarize(collect(runs_dir))
    missing = [f"{s} {m} ({len(summary.get(s, {}).get(m, {}).get('seeds', []))} seeds)" for s in settings
               for m in METHODS if len(summary.get(s, {}).get(m, {}).get("seeds", [])) < MIN_SEEDS]
    missing += [f"{s} {m} (no seed 0 checkpoint)" for s in settings for m in METHODS
                if not run_path(runs_dir, s, m, 0).is_file()]
    if missing:
        raise ValueError(f"settings: refusing to ship an unfinished comparison; each method needs finished runs "
                         f"for {MIN_SEEDS} seeds at the full budget: {', '.join(missing)}")
    cost_file = runs_dir / "cost.json"
    record = json.loads(Path(json_path).read_text()) if Path(json_path).is_file() else {}
    record.update({"command": "python -m mamlkit.experiments.compare run --settings "
                              f"{' '.join(settings)} --seeds 0 1 2; then cost and ship",
                   "common": COMMON, "settings": SETTINGS, "methods": METHODS, "published": PUBLISHED,
                   "cost": json.loads(cost_file.read_text()) if cost_file.is_file() else record.get("cost", {}),
                   "hardware": f"CPU ({platform.machine()}, {os.cpu_count()} cores); every run on one thread, "
                               f"two runs at a time"})
    record.setdefault("summary", {}).update({s: summary[s] for s in settings})
    weights = record.setdefault("weights", {})
    Path(weights_dir).mkdir(parents=True, exist_ok=True)
    for s in settings:
        for m in METHODS:
            out = export_weights(run_path(runs_dir, s, m, 0), Path(weights_dir) / f"{s}_{m}.pt")
            weights[f"{s} {m}"] = {"file": out.name, "sha256": sha256(out), "seed": 0}
    atomic_write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", Path(json_path))
    return record


def load_shipped(json_path=SHIPPED_JSON) -> dict:
    """The shipped comparison (the table notebook 07 shows); FileNotFoundError if it was never shipped."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"no shipped comparison at {json_path}: `python -m mamlkit.experiments.compare ship` "
                                f"writes it once the runs are finished")
    return json.loads(json_path.read_text())


def shipped_classifier(setting: str, method: str, json_path=SHIPPED_JSON, weights_dir=SHIPPED_WEIGHTS):
    """Seed 0's shipped checkpoint of `method` as a FewShotClassifier, after checking its sha256."""
    entry = load_shipped(json_path).get("weights", {}).get(f"{setting} {method}")
    if entry is None:
        raise FileNotFoundError(f"setting, method: no shipped checkpoint for {setting!r} {method!r}")
    path = Path(weights_dir) / entry["file"]
    actual = sha256(path) if path.is_file() else "(missing file)"
    if actual != entry["sha256"]:
        raise ValueError(f"{path}: sha256 mismatch, expected {entry['sha256']} ({Path(json_path).name}), got {actual}; "
                         f"restore the file from the repository")
    return FewShotClassifier.from_checkpoint(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.experiments.compare", allow_abbrev=False,
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "train and evaluate the comparison's runs (resumable)"),
                       ("cost", "time per meta-step and peak memory of every method, in one process"),
                       ("table", "print the table of every finished run"),
                       ("ship", "copy seed 0's checkpoints and the table into the package (finished settings only)")):
        p = sub.add_parser(name, help=text, allow_abbrev=False)
        p.add_argument("--runs-dir", default=str(RUNS_DIR), help=f"checkpoints and results (default {RUNS_DIR})")
        if name == "table":
            p.add_argument("--json", default=None, help="also write the summary and cost as JSON to this file")
            p.add_argument("--detail", action="store_true",
                           help="also print each seed's results and the cost per setting (default: off)")
            continue
        if name == "ship":
            p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), required=True, help="which settings")
            continue
        p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["5w1s"],
                       help="which settings (default 5w1s)")
        p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                       help="which methods (default all)")
        p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
        if name == "run":
            p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
            p.add_argument("--tasks", type=positive_int, default=TEST_TASKS, help=f"test tasks (default {TEST_TASKS})")
            p.add_argument("--data", default=None, help="Omniglot folder (default: found automatically)")
        else:
            p.add_argument("--rounds", type=positive_int, default=10, help="timed meta-steps per method (default 10)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    runs_dir = Path(args.runs_dir)
    cost_file = runs_dir / "cost.json"
    try:
        if args.command in ("run", "cost"):
            torch.set_num_threads(args.threads)
        if args.command == "run":
            for seed in args.seeds:  # seed-major: a stopped queue leaves whole seeds, the fairest partial table
                for setting in args.settings:
                    for method in args.methods:
                        train_and_evaluate(config_for(setting, method, seed), run_path(runs_dir, setting, method, seed),
                                           tasks=args.tasks, data_path=args.data)
        elif args.command == "ship":
            ship(args.settings, runs_dir)
            print(f"shipped {', '.join(args.settings)} -> {SHIPPED_JSON} and {SHIPPED_WEIGHTS}/")
        elif args.command == "cost":
            cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
            for setting in args.settings:
                cost[setting] = {**measure_cost(setting, args.methods, rounds=args.rounds),
                                 "threads": torch.get_num_threads(), "rounds": args.rounds}
            runs_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json.dumps(cost, indent=1) + "\n", cost_file)
        summary = summarize(collect(runs_dir))
        cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"python -m mamlkit.experiments.compare: error: {' '.join(str(e).split())}") from e
    print(markdown(summary, cost))
    if args.command == "table" and args.detail:
        print("\n" + detail_markdown(summary, cost))
    if args.command == "table" and args.json:
        atomic_write_text(json.dumps({"summary": summary, "cost": cost, "common": COMMON, "settings": SETTINGS,
                                      "methods": METHODS, "published": PUBLISHED}, indent=1, ensure_ascii=False) + "\n",
                          Path(args.json))


if __name__ == "__main__":
    main()
