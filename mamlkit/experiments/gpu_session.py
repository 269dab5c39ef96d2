"""One GPU session: the GPU benchmark, the CUDA checks and the Omniglot study's missing runs, in a fixed time.

Written for a GPU lent for minutes (the course's GPU numbers came from one such lease), and usable on any
CUDA machine. Three phases, each bounded, so a session ends with whatever finished written to --out:

    1. `python -m mamlkit.bench --device cuda`, alone on the GPU (its timings need the GPU to themselves),
       stopped after --bench-minutes
    2. tests/test_gpu.py: the meta-gradient on the GPU against a CPU float64 reference and finite
       differences, a few-shot run scored on both devices (beside phase 3: it times nothing)
    3. the study's runs (omniglot_study.py) that the 2-core CPU had not finished, most wanted first,
       `--workers` at a time on the one GPU, until --minutes have passed since the start; an unfinished
       run keeps its checkpoint, and `--resume` continues it in the next session

    python -m mamlkit.experiments.gpu_session --out runs/gpu --data ../shared/omniglot --minutes 9

--out receives env.txt, bench/ (the benchmark's CSV, PNG and log), test_gpu.log and study.tar.gz: every
finished run's .result.json (`omniglot_study record --runs-dir` reads them once unpacked), every run's log,
and the checkpoint of every run the deadline stopped, which `--resume study.tar.gz` continues in the next
session (a lent GPU machine keeps nothing). Runs already in the shipped records are not run again.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from ..cli import device, positive_float, positive_int
from .omniglot_study import RECORDS, ROWS, ablation_table, collect, hardware, markdown, summarize


def _runs(setting: str, algorithms, seeds=(0, 1, 2), split: str = "alphabets") -> list[list[str]]:
    more = [] if split == "alphabets" else ["--split", split]
    return [["run", "--settings", setting, "--algorithms", a, "--seeds", str(s), *more]
            for a in algorithms for s in seeds]


# The study's runs in the order they are wanted: the 20-way MAML − FOMAML comparison over three seeds, the
# ablation table's rows for seeds 0 and 1, the paper's 20-way inner loop (five steps of α = 0.1: FOMAML's
# dropped term is proportional to α, notebook 04), the 5-way 5-shot comparison, the ablation's seed 2, the
# five small steps at 5-way, MAML with the zeroed head (FOMAML's fair pair), the last prototypical network,
# then the 5-way settings tested on the paper's split (held-out characters of the training alphabets), the
# 20-way ones, and five small steps of FOMAML at 5-way 1-shot on that split.
STUDY = (
    _runs("20w1s", ("maml", "fomaml"), (1, 2))
    + [["ablation", "--rows", row, "--seeds", str(s)] for s in (0, 1) for row in ROWS]
    + _runs("20w1s", ("fomaml_5steps", "maml_5steps"))
    + _runs("5w5s", ("maml",), (1, 2)) + _runs("5w5s", ("fomaml",))
    + [["ablation", "--rows", row, "--seeds", "2"] for row in ROWS]
    + _runs("5w1s", ("fomaml_5steps", "maml_5steps"))
    + _runs("5w1s", ("maml_zerohead",))
    + _runs("20w1s", ("protonet",), (2,))
    + _runs("5w1s", ("maml", "fomaml"), split="characters") + _runs("5w5s", ("maml", "fomaml"), split="characters")
    + _runs("20w1s", ("maml", "fomaml_5steps", "protonet"), split="characters")  # the 90 % target's own test
    + _runs("5w1s", ("fomaml_5steps",), split="characters")  # FOMAML's best inner loop against the 2-point target
)


def recorded(job: list[str], records=RECORDS) -> bool:
    """Whether the run a STUDY job makes is already in the shipped records (omniglot_study record)."""
    options = dict(zip(job[1::2], job[2::2]))
    if job[0] == "ablation":
        name = f"ablation_{options['--rows']}_s{options['--seeds']}.json"
    else:
        name = f"{options['--settings']}_{options['--algorithms']}_s{options['--seeds']}.json"
        if options.get("--split", "alphabets") != "alphabets":  # record() names it by its folder
            name = f"{options['--split']}_{name}"
    return (Path(records) / name).is_file()


def run_parallel(jobs: list[list[str]], workers: int, logs: Path, *, env=None, deadline: float | None = None,
                 program: tuple[str, ...] | None = None) -> list[int | None]:
    """Run each job (the arguments of one `omniglot_study` command) in its own process, `workers` at a time.

    Jobs start in the order given (the most wanted first); each writes its output to `logs/<n>.log`.
    At `deadline` (a time.monotonic() value) the running jobs are stopped and no more start: their
    checkpoints keep their progress. Returns the exit statuses in the jobs' order (None: not finished).
    Processes are started, not forked: each has its own CUDA context, so several runs share one GPU.
    `program`: the command the jobs' arguments follow (default: omniglot_study's command line)."""
    program = program or (sys.executable, "-m", "mamlkit.experiments.omniglot_study")
    logs.mkdir(parents=True, exist_ok=True)
    waiting, running, status = list(enumerate(jobs)), {}, [None] * len(jobs)
    try:
        while (waiting or running) and (deadline is None or time.monotonic() < deadline):
            while waiting and len(running) < workers:
                n, args = waiting.pop(0)
                with open(logs / f"{n:02d}.log", "w") as log:
                    log.write(" ".join([*program, *args]) + "\n")
                    log.flush()
                    running[n] = subprocess.Popen([*program, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
            for n, proc in list(running.items()):
                if proc.poll() is not None:
                    status[n] = proc.returncode
                    del running[n]
            time.sleep(1)
    finally:  # interrupted (a deadline's SIGTERM, Ctrl-C): stop the runs, whose checkpoints keep their progress
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
    return status


def pack(runs: Path, tar_path: Path) -> list[str]:
    """Write every finished run's result, every log, and the checkpoint of every unfinished run to tar_path.

    The checkpoints (θ, Adam's state and the task stream, ~1.4 MB at width 64; not the θ snapshots) let
    the next session go on where this one stopped: `--resume tar_path`. Returns the names written."""
    def unfinished(f: Path) -> bool:
        return ".snapshots" not in f.parent.name and not f.with_name(f.name + ".result.json").exists()

    files = (sorted(runs.rglob("*.result.json")) + sorted((runs / "logs").glob("*.log"))
             + sorted(f for f in runs.rglob("*.pt") if unfinished(f)))
    with tarfile.open(tar_path, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f.relative_to(runs).as_posix())
    return [f.relative_to(runs).as_posix() for f in files]


def unpack(tar_path: Path, runs: Path) -> list[str]:
    """The unfinished runs' checkpoints of an earlier session's tar_path, into runs (the rest is not needed)."""
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pt")]
        tar.extractall(runs, members=members, filter="data")  # "data": no absolute paths, no escaping runs
    return [m.name for m in members]


def shell(command: list[str], log: Path, timeout: float) -> int | None:
    """Run `command` with its output in `log`; None if it ran past `timeout` seconds (then it is killed)."""
    with open(log, "w") as out:
        try:
            return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=max(timeout, 1)).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[gpu_session] stopped after {timeout:.0f} s\n")
            return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.experiments.gpu_session", allow_abbrev=False,
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the logs, results and benchmark (required)")
    parser.add_argument("--data", required=True, help="the Omniglot folder: the two minimal background zips (required)")
    parser.add_argument("--runs-dir", default="runs/omniglot_gpu", help="the study's checkpoints (default runs/omniglot_gpu)")
    parser.add_argument("--workers", type=positive_int, default=8, help="study runs at once on the GPU (default 8)")
    parser.add_argument("--minutes", type=positive_float, default=9.0, help="the whole session's time (default 9)")
    parser.add_argument("--bench-minutes", type=positive_float, default=3.5, help="phase 1's time at most (default 3.5)")
    parser.add_argument("--quick-bench", action="store_true", help="python -m mamlkit.bench --quick (default: the full one)")
    parser.add_argument("--device", type=device, default="cuda",
                        help="cuda (default); cpu: a dry run of the plumbing")
    parser.add_argument("--resume", type=Path, default=None, metavar="TAR",
                        help="an earlier session's study.tar.gz: its unfinished runs go on (default: none)")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..data.omniglot import find_omniglot, load_omniglot

    if args.resume is not None and not (args.resume.is_file() and tarfile.is_tarfile(args.resume)):
        parser.error(f"argument --resume: expected an earlier session's study.tar.gz, got {args.resume}")
    try:  # before anything is written
        find_omniglot(args.data)
    except (FileNotFoundError, ValueError) as e:
        parser.error(f"argument --data: {' '.join(str(e).split())}")
    if Path(args.out).is_file():
        parser.error(f"argument --out: {args.out} is a file; expected a folder (made if absent)")
    out, runs = Path(args.out), Path(args.runs_dir)
    (out / "bench").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    (out / "env.txt").write_text(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {hardware(args.device)}, "
                                 f"{os.cpu_count()} CPUs\n")
    if args.resume is not None:
        print(f"resuming {len(unpack(args.resume, runs))} unfinished run(s) of {args.resume}", flush=True)
    start = time.monotonic()
    load_omniglot(args.data)  # build the preprocessed cache once, before the workers all want it

    bench = [sys.executable, "-m", "mamlkit.bench", "--device", args.device, "--out", str(out / "bench")]
    shell(bench + (["--quick"] if args.quick_bench else []), out / "bench" / "bench.log", 60 * args.bench_minutes)

    tests = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                              "tests/test_gpu.py"], stdout=open(out / "test_gpu.log", "w"), stderr=subprocess.STDOUT)
    jobs = [[*job, "--device", args.device, "--threads", "1", "--data", args.data, "--runs-dir", str(runs)]
            for job in STUDY if not recorded(job)]  # a later session goes on where the records stop
    study_start = time.monotonic()
    status = run_parallel(jobs, args.workers, runs / "logs", env=env, deadline=start + 60 * args.minutes - 20)
    try:
        tests.wait(timeout=10)
    except subprocess.TimeoutExpired:
        tests.kill()
    print(f"study: {sum(s == 0 for s in status)} of {len(jobs)} runs finished in "
          f"{(time.monotonic() - study_start) / 60:.1f} min", flush=True)

    pack(runs, out / "study.tar.gz")
    results = collect(runs)
    print(markdown(summarize(results)), ablation_table(results), sep="\n\n")
    bench_log = [line for line in (out / "bench" / "bench.log").read_text().splitlines() if not line.startswith("USDT")]
    print("bench:", *bench_log[-45:], sep="\n")  # (USDT: the profiler's own lines, from its FLOP counts)
    print("tests/test_gpu.py:", (out / "test_gpu.log").read_text().strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
