"""Meta-training on torch.distributed (gloo, 2 processes on this machine): exact, resumable, sharded evaluation.

Each job starts 2 Python processes with torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT on a free localhost port) running `_worker` below; the single-process
references are computed here, in the test process. Two jobs in all (each process start costs seconds):
"first" (a, b, f, the reference run of d, then the run in which rank 1 dies: c, e) and "resume" (d).
"""
import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamlkit import distributed
from mamlkit.checkpoint import load_checkpoint
from mamlkit.experiments.fewshot import FewShotConfig, evaluate_fewshot, train_fewshot
from mamlkit.experiments.sinusoid import make_mlp, sample_tasks
from mamlkit.models.conv4 import make_conv4
from mamlkit.trainer import MetaConfig, MetaLearner, train

pytestmark = pytest.mark.slow

WORLD = 2
TESTS = Path(__file__).resolve().parent
# (a) combinations: (name, model, first_order, batching, learn_inner_lr)
COMBOS = [("maml-vmap", "mlp", False, "vmap", False), ("maml-loop", "mlp", False, "loop", False),
          ("fomaml-vmap", "mlp", True, "vmap", False), ("fomaml-loop", "mlp", True, "loop", False),
          ("metasgd-loop", "mlp", False, "loop", True), ("maml-conv4-loop", "conv4", False, "loop", False)]
SIN_SEED, SIN_TASKS, SIN_STEPS = 7, 3, 20  # (b): 3 tasks per rank, 6 per meta-step
DIE_AT, ITERATIONS, EVERY = 5, 6, 2  # (c, d): rank 1 dies drawing the tasks of meta-step 5; checkpoints at 2, 4, 6


# ----------------------------------------------------------------------------------------------
# what every process builds the same way


def fixed_batch(model: str):
    """A fixed meta-batch of 2 * WORLD tasks in float64: rank r meta-learns on tasks [2r, 2r + 2)."""
    g = torch.Generator().manual_seed(11)
    if model == "mlp":
        return tuple(t.double() for t in sample_tasks(2 * WORLD, 5, 4, generator=g).tensors())
    sx, qx = torch.rand(2 * WORLD, 3, 1, 28, 28, generator=g).double(), torch.rand(2 * WORLD, 6, 1, 28, 28, generator=g).double()
    return sx, torch.arange(3).repeat(2 * WORLD, 1), qx, torch.arange(3).repeat(2 * WORLD, 2)


def combo_learner(model: str, first_order: bool, batching: str, learn_inner_lr: bool) -> MetaLearner:
    torch.manual_seed(0)
    net = (make_mlp(hidden=16) if model == "mlp" else make_conv4(3, width=4)).double()
    loss = F.mse_loss if model == "mlp" else F.cross_entropy
    return MetaLearner(net, loss, MetaConfig(inner_lr=0.1, meta_lr=1e-3, first_order=first_order, batching=batching,
                                             learn_inner_lr=learn_inner_lr))


def meta_gradient(learner: MetaLearner) -> torch.Tensor:
    """θ's gradients (and α's, for Meta-SGD) as left by the last meta_step, flattened."""
    return torch.cat([p.grad.flatten() for g in learner.optimizer.param_groups for p in g["params"]])


def sinusoid_learner() -> MetaLearner:
    torch.manual_seed(0)
    return MetaLearner(make_mlp(hidden=16), F.mse_loss, MetaConfig(inner_lr=0.01, meta_lr=1e-2))


def fewshot_data() -> torch.Tensor:
    return torch.randint(0, 256, (12, 4, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


def fewshot_config() -> FewShotConfig:
    return FewShotConfig(n_way=3, k_shot=1, q_query=2, meta_batch_size=2 * WORLD, width=4, iterations=ITERATIONS,
                         seed=3)


def eval_model():
    torch.manual_seed(1)
    return make_conv4(3, width=4)


def evaluate(model):
    return evaluate_fewshot(model, fewshot_data(), n_way=3, k_shot=1, q_query=2, tasks=13, chunk=5, steps=2,
                            inner_lr=0.4, seed=2)


# ----------------------------------------------------------------------------------------------
# the worker (one per rank) and its launcher


def _worker(scenario: str, out: str) -> None:
    torch.set_num_threads(1)
    out = Path(out)
    distributed.init(timeout=timedelta(seconds=10))  # from the environment, as under torchrun
    rank = distributed.rank()
    if scenario == "first":
        grads = {}
        for name, model, first_order, batching, learn_lr in COMBOS:  # (a) one meta-step on this rank's half
            learner = combo_learner(model, first_order, batching, learn_lr)
            mine = tuple(t[2 * rank:2 * rank + 2] for t in fixed_batch(model))
            metrics = learner.meta_step(*mine)
            grads[name] = (meta_gradient(learner), metrics)
        torch.save(grads, out / f"grads{rank}.pt")
        train(sinusoid_learner(), lambda g: sample_tasks(SIN_TASKS, 5, generator=g).tensors(),  # (b)
              iterations=SIN_STEPS, seed=SIN_SEED, checkpoint_path=out / "sinusoid.pt", checkpoint_every=10,
              progress=False)
        torch.save(evaluate(eval_model()), out / f"eval{rank}.pt")  # (f)
        train_fewshot(fewshot_config(), checkpoint_path=out / "reference.pt", data=fewshot_data(), progress=False,
                      checkpoint_every=EVERY)  # (d): the uninterrupted run
    if scenario in ("first", "resume"):
        from mamlkit.data.episodes import EpisodeSampler

        if scenario == "first" and rank == 1:  # (c) this rank dies without a word while drawing meta-step DIE_AT's tasks
            sample, calls = EpisodeSampler.sample, [0]

            def dying_sample(self, generator):
                calls[0] += 1
                if calls[0] == DIE_AT:
                    os._exit(17)
                return sample(self, generator)

            EpisodeSampler.sample = dying_sample
        try:
            train_fewshot(fewshot_config(), checkpoint_path=out / "killed.pt", data=fewshot_data(), progress=False,
                          checkpoint_every=EVERY)
        except distributed.DistributedError as e:
            (out / f"error{rank}.txt").write_text(str(e))
            os._exit(3)  # the process group is broken: leave without waiting on it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(scenario: str, out: Path, timeout: float = 120) -> list[tuple[int, str]]:
    """Run `_worker(scenario, out)` on WORLD processes with torchrun's variables. Returns [(exit code, output)]."""
    port, procs = _free_port(), []
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_distributed as t; t._worker({scenario!r}, {str(out)!r})"
    for r in range(WORLD):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    results = []
    try:
        for p in procs:
            results.append((p.wait(timeout=timeout), p.stdout.read()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


@pytest.fixture(scope="module")
def first_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    return out, launch("first", out)


@pytest.fixture
def exact_job(first_job):
    out, results = first_job
    assert (out / "reference.pt").is_file(), results  # each rank got past the exact part
    return out


@pytest.fixture
def killed_job(first_job):
    return first_job


# ----------------------------------------------------------------------------------------------
# the tests


def test_rank_seeds_and_shards():
    assert distributed.rank_seed(5, 0) == 5  # one process: the run of before
    seeds = {distributed.rank_seed(s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2 ** 63 for s in seeds)
    blocks = [distributed.shard(13, r, 4) for r in range(4)]
    assert [(b.start, b.stop) for b in blocks] == [(0, 4), (4, 7), (7, 10), (10, 13)]
    x = torch.arange(13)
    assert torch.equal(torch.cat([distributed.shard(x, r, 4) for r in range(4)]), x)
    assert distributed.local_batch_size(32, 4) == 8
    with pytest.raises(ValueError, match="meta_batch_size: 25 .* 2 processes.*24 or 26"):
        distributed.local_batch_size(25, 2)
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.rank() == 0


@pytest.mark.parametrize("combo", COMBOS, ids=[c[0] for c in COMBOS])
def test_averaged_meta_gradient_is_the_meta_gradient_of_the_union(exact_job, combo):  # (a)
    name, model, first_order, batching, learn_lr = combo
    learner = combo_learner(model, first_order, batching, learn_lr)
    metrics = learner.meta_step(*fixed_batch(model))  # one process, all 2 * WORLD tasks
    expected = meta_gradient(learner)
    for r in range(WORLD):
        got, got_metrics = torch.load(exact_job / f"grads{r}.pt")[name]
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-6
        for k in metrics:
            assert got_metrics[k] == pytest.approx(metrics[k], rel=1e-6), k


def test_two_ranks_train_the_theta_of_one_process_on_their_union(exact_job):  # (b)
    gens = [torch.Generator().manual_seed(distributed.rank_seed(SIN_SEED, r)) for r in range(WORLD)]

    def union(_generator):  # rank 0's tasks, then rank 1's: every task both ranks drew, at each step
        parts = [sample_tasks(SIN_TASKS, 5, generator=g).tensors() for g in gens]
        return tuple(torch.cat(ts) for ts in zip(*parts))

    learner = sinusoid_learner()
    log = train(learner, union, iterations=SIN_STEPS, seed=SIN_SEED, progress=False)
    state = load_checkpoint(exact_job / "sinusoid.pt")
    assert state["learner"]["step"] == SIN_STEPS and len(state["generators"]) == WORLD
    for k, v in learner.model.state_dict().items():
        torch.testing.assert_close(state["learner"]["model"][k], v, rtol=0, atol=1e-5)
    assert state["log"][-1]["meta_loss"] == pytest.approx(log[-1]["meta_loss"], rel=1e-5)
    # rank 1's generator went on from its own seed: its saved state is that of `gens[1]` now
    assert torch.equal(state["generators"][1], gens[1].get_state())


def test_sharded_evaluation_equals_one_process(exact_job):  # (f)
    expected = evaluate(eval_model())
    for r in range(WORLD):
        assert torch.load(exact_job / f"eval{r}.pt") == expected


def test_a_rank_that_dies_stops_the_job_with_a_clear_message_and_a_loadable_checkpoint(killed_job):  # (c)
    out, results = killed_job
    assert results[1][0] == 17, results[1][1]  # rank 1 died
    assert results[0][0] == 3, results[0][1]  # rank 0 stopped on DistributedError
    message = (out / "error0.txt").read_text()
    assert f"meta-step {DIE_AT}" in message and "another rank stopped" in message and "resume" in message
    state = load_checkpoint(out / "killed.pt")
    assert state["learner"]["step"] == (DIE_AT - 1) // EVERY * EVERY and len(state["generators"]) == WORLD


def test_resuming_with_another_world_size_is_refused(killed_job, tmp_path):  # (e)
    out, _ = killed_job
    path = shutil.copy(out / "killed.pt", tmp_path / "killed.pt")
    before = (tmp_path / "killed.pt").read_bytes()
    with pytest.raises(ValueError, match=r"trained on 2 process\(es\), this run has 1"):
        train_fewshot(fewshot_config(), checkpoint_path=path, data=fewshot_data(), progress=False)
    assert (tmp_path / "killed.pt").read_bytes() == before


def test_resume_after_a_kill_is_exact(exact_job, killed_job):  # (d)
    out, _ = killed_job
    results = launch("resume", out)
    assert all(rc == 0 for rc, _ in results), results
    resumed, reference = load_checkpoint(out / "killed.pt"), load_checkpoint(exact_job / "reference.pt")
    assert resumed["learner"]["step"] == reference["learner"]["step"] == ITERATIONS
    for k, v in reference["learner"]["model"].items():
        assert torch.equal(resumed["learner"]["model"][k], v), k
    assert all(torch.equal(a, b) for a, b in zip(resumed["generators"], reference["generators"]))
    assert resumed["log"] == reference["log"]


def test_the_process_group_is_destroyed_at_exit(tmp_path):
    # torch asks for destroy_process_group() before exit; without it gloo's threads can abort a finished rank.
    # atexit runs handlers last-registered first, so a handler registered before init() sees the state after ours.
    flag = tmp_path / "destroyed.txt"
    code = ("import atexit, torch.distributed as dist; from mamlkit import distributed; "
            f"atexit.register(lambda: open({str(flag)!r}, 'w').write(str(not dist.is_initialized()))); "
            "assert distributed.init() and dist.is_initialized()")
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert flag.read_text() == "True"
