"""`python -m mamlkit.bench.distributed`: meta-training throughput on 1, 2, ... processes (torch.distributed).

Each setting spawns its processes on this machine (gloo on the CPU, one process per GPU with nccl on
CUDA), meta-trains Conv4 on 5-way 1-shot tasks (q_query 15) with the ordinary `MetaLearner.meta_step`,
whose one all-reduce averages the meta-gradient (mamlkit/distributed.py), and times `--steps` meta-steps
after `--warmup` untimed ones. The meta-batch (default 8) is the same in every setting and shared out
among the processes, so the numbers answer "how much faster is the same training":

    tasks/s               meta_batch_size x steps / seconds
    parallel efficiency   tasks/s on N processes / (N x tasks/s on 1)

    python -m mamlkit.bench.distributed                        # CPU: 1 and 2 processes, 1 thread each
    python -m mamlkit.bench.distributed --device cuda          # every GPU count up to the GPUs present
    python -m mamlkit.bench.distributed --steps 3 --width 32   # a quick check

On a CPU the processes share the machine's cores: efficiency near 1 needs a free core per process
(and --threads 1); a loaded machine shows less.
"""
from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from ..cli import positive_int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: dict, out: str) -> None:
    """One process of a setting: meta-train, time, and (rank 0) write the seconds to `out`."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from .. import distributed
    from ..data.episodes import EpisodeSampler
    from ..models.conv4 import make_conv4
    from ..trainer import MetaConfig, MetaLearner

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args["threads"])
    distributed.init(backend="nccl" if args["device"] == "cuda" else "gloo")
    device = f"cuda:{rank}" if args["device"] == "cuda" else "cpu"
    torch.manual_seed(0)
    model = make_conv4(5, width=args["width"]).to(device)
    learner = MetaLearner(model, F.cross_entropy, MetaConfig(inner_lr=0.4, first_order=args["first_order"]))
    images = torch.randint(0, 256, (200, 20, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sampler = EpisodeSampler(images.to(device), n_way=5, k_shot=1, q_query=15,
                             meta_batch_size=distributed.local_batch_size(args["meta_batch_size"]))
    generator = torch.Generator().manual_seed(distributed.rank_seed(0, rank))
    batches = [sampler.sample(generator) for _ in range(args["warmup"] + args["steps"])]  # sampling is not timed
    for batch in batches[: args["warmup"]]:
        learner.meta_step(*batch)
    dist.barrier()
    t0 = time.perf_counter()
    for batch in batches[args["warmup"]:]:
        learner.meta_step(*batch)  # ends with .tolist(): the device is done with the step
    dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(repr(seconds))
    dist.destroy_process_group()


def run_setting(processes: int, args: dict) -> float:
    """Seconds for args["steps"] meta-steps on `processes` spawned processes."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds")
        mp.spawn(_worker, args=(processes, _free_port(), args, out), nprocs=processes, join=True)
        return float(Path(out).read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mamlkit.bench.distributed", description=__doc__.split("\n")[0],
                                allow_abbrev=False)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (gloo) or cuda (nccl) (default cpu)")
    p.add_argument("--processes", type=positive_int, nargs="+", default=None,
                   help="process counts to time (default: 1 2 on a CPU, 1 2 4 ... up to the GPUs on cuda)")
    p.add_argument("--meta-batch-size", type=positive_int, default=8, help="tasks per meta-step, all processes (default 8)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed meta-steps (default 10)")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed meta-steps first (default 2)")
    p.add_argument("--width", type=positive_int, default=64, help="Conv4 filters per layer (default 64, the paper's)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads per process (default 1)")
    p.add_argument("--first-order", action="store_true", help="FOMAML instead of MAML (default MAML)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device on this machine")
    if args.processes is None:
        if args.device == "cuda":
            n = torch.cuda.device_count()
            args.processes = sorted({1, *[2 ** i for i in range(1, n.bit_length()) if 2 ** i <= n], n})
        else:
            args.processes = [1, 2]
    if args.device == "cuda" and max(args.processes) > torch.cuda.device_count():
        p.error(f"--processes: one process per GPU, and this machine has {torch.cuda.device_count()}")
    args.processes = sorted({1, *args.processes})  # the efficiency is against one process
    bad = [n for n in args.processes if args.meta_batch_size % n]
    if bad:
        p.error(f"--meta-batch-size: {args.meta_batch_size} tasks cannot be shared evenly by {bad} processes")
    settings = vars(args).copy()
    what = "FOMAML" if args.first_order else "MAML"
    print(f"Conv4 (width {args.width}) 5-way 1-shot {what}, meta-batch {args.meta_batch_size}, {args.steps} timed "
          f"meta-steps, {args.device} ({'nccl' if args.device == 'cuda' else 'gloo'}), {args.threads} thread(s) per "
          f"process, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"{'processes':>9} {'tasks/rank':>10} {'ms/step':>9} {'tasks/s':>9} {'speed-up':>8} {'efficiency':>10}")
    base = None
    for n in args.processes:
        seconds = run_setting(n, settings)
        tasks_per_s = args.meta_batch_size * args.steps / seconds
        base = tasks_per_s if base is None else base  # one process's rate (timed first)
        speedup = tasks_per_s / base
        print(f"{n:>9} {args.meta_batch_size // n:>10} {1000 * seconds / args.steps:>9.1f} {tasks_per_s:>9.1f} "
              f"{speedup:>8.2f} {speedup / n:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
