"""Few-shot image classification with MAML on Omniglot: train, evaluate, classify, reproduce the table.

Finn, Abbeel, Levine (2017), Section 5.2 and Appendix A.1. A task Tᵢ is an n_way-way k_shot-shot
problem (episodes.py); the model is Conv4 (conv4.py); the loss is cross-entropy. Per meta-step:

    θ'ᵢ = θ − α ∇θ L_Tᵢ(θ; support)            inner_steps times, for each of meta_batch_size tasks
    θ ← Adam(θ, ∇θ 1/B Σᵢ L_Tᵢ(θ'ᵢ; query), β)

The paper's settings (the defaults of `FewShotConfig`):

    5-way:   α = 0.4, 1 inner step in training, 3 at test time, meta_batch_size 32
    20-way:  α = 0.1, 5 inner steps in training and at test time, meta_batch_size 16
    β = 1e-3 (Adam), 60,000 meta-steps, 1,200 training characters x 4 rotations

and its results (Table 1, 95% confidence intervals over 600 test tasks): 5-way 1-shot 98.7 ± 0.4,
5-way 5-shot 99.9 ± 0.1, 20-way 1-shot 95.8 ± 0.3, 20-way 5-shot 98.9 ± 0.2 (MAML); first-order
MAML 98.3 ± 0.5 (5-way 1-shot), 99.2 ± 0.2 (5-way 5-shot), 89.4 ± 0.5 (20-way 1-shot).

What this module adds to the core (`mamlkit.MetaLearner`, `mamlkit.train`, `mamlkit.adaptation_curve`):

    FewShotConfig        the experiment, one dataclass, stored inside every checkpoint
    train_fewshot        a resumable run on the training characters (atomic checkpoints, NaN stops it)
    evaluate_fewshot     accuracy on 600 test tasks after `steps` inner steps, with its 95% CI
    FewShotClassifier    a checkpoint as a tool: classify query images from a labelled support set
    load_pretrained      the checkpoints shipped in mamlkit/weights/, checked against their sha256

Command line (each run is resumable: run the same command again after an interruption):

    python -m mamlkit.fewshot train --n-way 5 --k-shot 1 [--first-order] --iterations N --out PATH
    python -m mamlkit.fewshot evaluate PATH
    python -m mamlkit.fewshot results          # the results table, in runs/omniglot/ (fewshot_results.py)
    python -m mamlkit.fewshot bf16             # the accuracy cost of bf16 training, in runs/omniglot/
    python -m mamlkit.fewshot results --ship   # also replace the shipped checkpoints and table (mamlkit/weights/)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import algorithms, distributed
from ..checkpoint import check_writable, load_checkpoint, save_checkpoint, sha256
from ..checks import check_device, check_inner_lr, check_model, check_steps
from ..data.augment import augment_tasks
from ..evaluation import adaptation_curve, mean_ci95
from ..maml import adapt
from ..models.conv4 import DOWNSAMPLES, make_conv4
from ..paths import WEIGHTS  # shipped checkpoints and their results table
from ..trainer import MetaConfig, MetaLearner, check_model_state, train

RESULTS_JSON = WEIGHTS / "omniglot_results.json"
SIZE = 28  # Omniglot images are downsampled to 28x28 (the paper, after Santoro et al. 2016)

# Table 1 of the paper: (n_way, k_shot, first_order) -> (accuracy %, 95% CI half-width %)
PAPER = {
    (5, 1, False): (98.7, 0.4), (5, 5, False): (99.9, 0.1), (20, 1, False): (95.8, 0.3), (20, 5, False): (98.9, 0.2),
    (5, 1, True): (98.3, 0.5), (5, 5, True): (99.2, 0.2), (20, 1, True): (89.4, 0.5),
}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


@dataclass
class FewShotConfig:
    """One few-shot experiment. `None` fields take the paper's value for this n_way (5-way or 20-way)."""

    n_way: int = 5  # classes per task (N)
    k_shot: int = 1  # support images per class (K)
    q_query: int = 15  # query images per class in each training task
    meta_batch_size: int | None = None  # tasks per meta-step; paper: 32 (5-way), 16 (20-way)
    inner_lr: float | None = None  # α; paper: 0.4 (5-way), 0.1 (20-way)
    inner_steps: int | None = None  # inner steps during meta-training; paper: 1 (5-way), 5 (20-way)
    test_steps: int | None = None  # inner steps at test time; paper: 3 (5-way), 5 (20-way)
    meta_lr: float = 1e-3  # β, Adam's step size on θ
    first_order: bool = False  # True: FOMAML (no Hessian term in the meta-gradient)
    width: int = 64  # Conv4 filters per layer (paper: 64)
    downsample: str = "maxpool"  # "maxpool" or "stride" (the paper's Omniglot net), see conv4.py
    iterations: int = 60_000  # meta-steps (paper: 60,000)
    seed: int = 0  # model initialization and task sampling
    device: str = "cpu"
    bf16: bool = False  # True: meta-train under bf16 autocast (faster on GPUs; evaluation stays float32)
    split: str = "alphabets"  # test characters: "alphabets" (omniglot.TEST_ALPHABETS held out) or "characters" (random)
    augment: bool = False  # random affine distortions of the training images (augment.py)
    meta_lr_schedule: str = "constant"  # β over the run: "constant" or "cosine" (annealed to 1e-5)
    first_order_steps: int = 0  # derivative-order annealing: the first meta-steps are first order
    # beyond MAML (algorithms/): "maml", "anil", "mamlpp", "reptile", "protonet" or "protomaml"
    algorithm: str = "maml"
    learn_inner_lr: bool | str = False  # True: Meta-SGD, a learned α per parameter entry; "layer": per tensor
    multi_step_loss_steps: int = 7500  # MAML++ only: meta-steps over which the multi-step loss anneals
    zero_head: bool = False  # the zeroing trick (Kao et al. 2022): the head is 0 and not meta-learned

    def __post_init__(self):
        _positive_int("n_way", self.n_way)
        _positive_int("k_shot", self.k_shot)
        _positive_int("q_query", self.q_query)
        if self.n_way < 2:
            raise ValueError(f"n_way: expected at least 2 classes per task, got {self.n_way}")
        twenty = self.n_way >= 20  # which of the paper's two settings applies
        if self.meta_batch_size is None:
            self.meta_batch_size = 16 if twenty else 32
        if self.inner_lr is None:
            self.inner_lr = 0.1 if twenty else 0.4
        if self.inner_steps is None:
            self.inner_steps = 5 if twenty else 1
        if self.test_steps is None:  # MAML++ has learned α and BatchNorm for its training steps only
            self.test_steps = self.inner_steps if self.algorithm == "mamlpp" else (5 if twenty else 3)
        _positive_int("meta_batch_size", self.meta_batch_size)
        _positive_int("width", self.width)
        _positive_int("iterations", self.iterations)
        _positive_int("test_steps", self.test_steps)
        if self.split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {self.split!r}")
        for name in ("first_order", "bf16", "augment", "zero_head"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample: expected one of {DOWNSAMPLES}, got {self.downsample!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        check_device(self.device, "device")  # a device this machine has, before a model is built on it
        meta = self.meta_config()  # checks inner_lr, meta_lr, inner_steps, the schedule, the algorithm
        if self.algorithm == "mamlpp" and self.test_steps > self.inner_steps:
            raise ValueError(f"test_steps: MAML++ learns α and BatchNorm for each of its inner_steps="
                             f"{self.inner_steps} steps, so it cannot take test_steps={self.test_steps}")
        self.inner_lr, self.meta_lr = meta.inner_lr, meta.meta_lr  # plain floats (a checkpoint holds no numpy scalar)

    def meta_config(self) -> MetaConfig:
        return MetaConfig(inner_lr=self.inner_lr, meta_lr=self.meta_lr, inner_steps=self.inner_steps,
                          first_order=self.first_order, bf16=self.bf16, meta_lr_schedule=self.meta_lr_schedule,
                          first_order_steps=self.first_order_steps, algorithm=self.algorithm,
                          learn_inner_lr=self.learn_inner_lr, multi_step_loss_steps=self.multi_step_loss_steps,
                          zero_head=self.zero_head)

    @property
    def variant(self) -> str:
        """The method's name: "maml", "fomaml", "metasgd", "anil", ... (algorithms.VARIANTS)."""
        name = self.algorithm
        if self.first_order:
            name = "fomaml" if name == "maml" else name + "_first_order"
        if self.learn_inner_lr == "layer":
            name += "_layerlr"
        elif self.learn_inner_lr:
            name = "metasgd" if name == "maml" else name + "_metasgd"
        return name + ("_zerohead" if self.zero_head else "")

    @property
    def name(self) -> str:
        return f"omniglot_{self.n_way}way_{self.k_shot}shot_{self.variant}" + ("_bf16" if self.bf16 else "")


# fields that may change when a run is resumed: the rest must match the checkpoint's. Not `iterations`
# when β follows a schedule: the cosine's length is the run's length, so a longer run is another run.
RESUMABLE_CHANGES = ("iterations", "device")
SPLITS = ("alphabets", "characters")
# what a checkpoint written before a field existed was trained with
LEGACY_DEFAULTS = {"split": "characters", "augment": False, "meta_lr_schedule": "constant", "first_order_steps": 0,
                   "algorithm": "maml", "learn_inner_lr": False, "multi_step_loss_steps": 7500, "zero_head": False}


def saved_config(saved: dict) -> dict:
    """A checkpoint's FewShotConfig fields, with the values older checkpoints were trained with filled in."""
    return {**LEGACY_DEFAULTS, **saved}


class FewShotLearner(MetaLearner):
    """A `MetaLearner` whose checkpoints also hold its `FewShotConfig`, so a checkpoint rebuilds its model."""

    def __init__(self, model: nn.Module, config: FewShotConfig):
        super().__init__(model, F.cross_entropy, config.meta_config())
        self.fewshot = config
        self.data_sha256: str | None = None  # `data_fingerprint` of the training images (set by train_fewshot)

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "fewshot": asdict(self.fewshot)}
        if self.data_sha256 is not None:
            state["data_sha256"] = self.data_sha256
        return state


def data_fingerprint(images: torch.Tensor) -> str:
    """sha256 of the training images' dtype, shape and bytes (~30 ms for 3,856 x 20 x 28 x 28 uint8)."""
    x = images.detach().cpu().contiguous()
    h = hashlib.sha256(f"{x.dtype} {tuple(x.shape)}\n".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().data)  # the raw bytes, without a copy
    return h.hexdigest()


def _check_same_data(checkpoint_path: Path, fingerprint: str) -> None:
    saved = load_checkpoint(checkpoint_path)["learner"].get("data_sha256")
    if saved is not None and saved != fingerprint:  # checkpoints written before the fingerprint: accepted
        raise ValueError(
            f"data: {checkpoint_path} was trained on other images (sha256 {saved[:12]}..., these {fingerprint[:12]}...); "
            f"resuming it would mix two experiments. Pass the same data (or --data) or use another checkpoint_path."
        )


def make_learner(config: FewShotConfig) -> FewShotLearner:
    """Conv4 initialized from `config.seed` (without touching the global RNG), wrapped in a learner."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = make_conv4(config.n_way, width=config.width, downsample=config.downsample)
    return FewShotLearner(model.to(config.device), config)


def _check_resumable(config: FewShotConfig, checkpoint_path: Path) -> None:
    state = load_checkpoint(checkpoint_path)
    if not isinstance(state.get("learner"), dict):
        raise ValueError(f"checkpoint_path: {checkpoint_path} holds no training run; it was not written by train_fewshot")
    saved = state["learner"].get("fewshot")
    if saved is None:
        raise ValueError(f"checkpoint_path: {checkpoint_path} holds no FewShotConfig; it was not written by train_fewshot")
    saved, now = saved_config(saved), asdict(config)
    may_change = RESUMABLE_CHANGES if config.meta_lr_schedule == "constant" else ("device",)
    diff = {k: (saved.get(k), now[k]) for k in now if k not in may_change and saved.get(k) != now[k]}
    if diff:
        raise ValueError(
            f"checkpoint_path: {checkpoint_path} was trained with another configuration; resuming it would mix "
            f"two experiments. Differences (checkpoint, now): {diff}. Use another path or the same settings."
        )


def omniglot_split(path=None, *, glyphs_fallback: bool = True, split: str = "alphabets"):
    """(all, train, test) characters of Omniglot (or the procedural glyphs).

    split "alphabets": the characters of omniglot.TEST_ALPHABETS are the test set (on the glyphs, which
    have no alphabets, the random character split is used instead); "characters": a random split with
    the fixed seed 0 (the paper's proportion of test characters; the split of the first shipped models).
    """
    from ..data.omniglot import (
        TEST_ALPHABETS,
        load_omniglot,
        load_omniglot_or_glyphs,
        split_alphabets,
        split_characters,
    )

    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    data = load_omniglot_or_glyphs(path) if glyphs_fallback else load_omniglot(path)
    if split == "alphabets" and set(TEST_ALPHABETS) <= set(data.alphabets):
        train_set, test_set = split_alphabets(data)
    else:
        train_set, test_set = split_characters(data, seed=0)
    return data, train_set, test_set


def snapshot_dir(checkpoint_path) -> Path:
    """Where `train_fewshot(..., snapshots=True)` keeps θ at every checkpoint of a run."""
    checkpoint_path = Path(checkpoint_path)
    return checkpoint_path.with_name(checkpoint_path.name + ".snapshots")


def train_fewshot(config: FewShotConfig, *, checkpoint_path, data: torch.Tensor | None = None, progress: bool = True,
                  checkpoint_every: int = 500, log_every: int = 50,
                  snapshots: bool = False) -> tuple[FewShotLearner, list[dict]]:
    """Meta-train Conv4 on few-shot tasks until `config.iterations` meta-steps, resuming from `checkpoint_path`.

    data: uint8 (classes, examples, 28, 28), the training classes (strokes 255 on background 0).
    None: Omniglot's training characters (fixed split, seed 0), each rotated by 0/90/180/270 degrees
    into 4 classes, as the paper.

    snapshots: also keep θ at every checkpoint in `<checkpoint>.snapshots/step_NNNNNN.pt` (weights only,
    ~0.5 MB at width 64), from which `learning_curve` measures held-out accuracy against meta-steps.

    Returns (learner, metrics log). A non-finite meta-loss raises FloatingPointError naming the
    meta-step; the last checkpoint is left as it was.
    """
    from ..data.episodes import EpisodeSampler
    from ..data.omniglot import rotate_classes

    if not isinstance(config, FewShotConfig):
        raise TypeError(f"config: expected a FewShotConfig, got {type(config).__name__}")
    if checkpoint_path is None:
        raise ValueError("checkpoint_path: expected a file path (the run is checkpointed and resumable)")
    checkpoint_path = check_writable(checkpoint_path, "checkpoint_path")  # before hours of training, not after
    if data is not None and (not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.ndim != 4):
        what = f"{data.dtype} {tuple(data.shape)}" if isinstance(data, torch.Tensor) else type(data).__name__
        raise ValueError(f"data: expected uint8 images (classes, examples, 28, 28), strokes 255, or None; got {what}")
    distributed.init()  # a no-op unless launched by torchrun (distributed.py)
    local_batch = distributed.local_batch_size(config.meta_batch_size)  # this rank's tasks per meta-step
    resuming = checkpoint_path.exists()
    if resuming:
        _check_resumable(config, checkpoint_path)  # the cheap check first: before the data is read
    if data is None:
        _, train_set, _ = omniglot_split(split=config.split)
        data = rotate_classes(train_set.images)  # (4 * characters, 20, 28, 28)
    fingerprint = data_fingerprint(data)
    if resuming:
        _check_same_data(checkpoint_path, fingerprint)
    if distributed.is_distributed():  # "cuda" -> this rank's GPU, cuda:LOCAL_RANK
        config = replace(config, device=str(distributed.local_device(config.device)))
    learner = make_learner(config)
    learner.data_sha256 = fingerprint
    sampler = EpisodeSampler(data.to(config.device), n_way=config.n_way, k_shot=config.k_shot,
                             q_query=config.q_query, meta_batch_size=local_batch)
    sample = sampler.sample
    if config.augment:  # new drawings of the training characters in every task (augment.py)
        def sample(generator):
            return augment_tasks(sampler.sample(generator), generator)
    def snapshot(learner):
        save_checkpoint({"learner": {k: v for k, v in learner.state_dict().items() if k != "optimizer"}},
                        snapshot_dir(checkpoint_path) / f"step_{learner.step:06d}.pt")

    # the log line names the run: config.name alone does not tell apart runs that differ in the inner loop,
    # width or seed (two study runs in one log), the checkpoint's name does
    desc = config.name if checkpoint_path.stem == config.name else f"{checkpoint_path.stem} ({config.name})"
    log = train(learner, sample, iterations=config.iterations, seed=config.seed,
                checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every, log_every=log_every,
                progress=progress, desc=desc, on_checkpoint=snapshot if snapshots else None)
    return learner, log


# ----------------------------------------------------------------------------------------------
# evaluation: 600 test tasks, accuracy after `steps` inner steps, 95% confidence interval


def evaluate_fewshot(learner_or_model, test_images: torch.Tensor, *, n_way: int, k_shot: int, tasks: int = 600,
                     steps: int | None = None, seed: int = 0, inner_lr: float | None = None, q_query: int = 15,
                     chunk: int = 50) -> tuple[float, float]:
    """(mean accuracy, 95% CI half-width) over `tasks` seeded test tasks, after `steps` inner steps.

    learner_or_model: a `MetaLearner` / `FewShotClassifier` (θ, α and the test steps come from it),
    or an `nn.Module` (then `inner_lr` and `steps` are required). test_images: uint8 (classes,
    examples, 28, 28), classes never seen in training. Accuracies are fractions in [0, 1]; the CI is
    1.96 σ / √tasks (`mean_ci95`), as in the paper's Table 1. Every query batch (n_way * q_query
    images) is normalized with its own batch statistics, as the paper (see conv4.py).

    In a distributed run (distributed.py) every rank must call it: each draws the same seeded tasks,
    adapts only its block of them (`distributed.shard`), and the accuracies are gathered in task order
    before the CI, so the result is the one-process result.
    """
    from ..data.episodes import EpisodeSampler

    meta = None  # the MetaConfig whose algorithm adapts at test time (None: MAML's inner loop)
    if isinstance(learner_or_model, (MetaLearner, FewShotClassifier)):
        model, params = learner_or_model.model, learner_or_model.params
        meta = learner_or_model.config if isinstance(learner_or_model, MetaLearner) else (
            learner_or_model.config.meta_config() if learner_or_model.config is not None else None)
        inner_lr = learner_or_model.inner_lr if inner_lr is None else inner_lr
        if steps is None and isinstance(learner_or_model, FewShotClassifier):
            steps = learner_or_model.steps
        elif steps is None and isinstance(learner_or_model, FewShotLearner):
            steps = learner_or_model.fewshot.test_steps
    elif isinstance(learner_or_model, nn.Module):
        model, params = learner_or_model, dict(learner_or_model.named_parameters())
    else:
        raise TypeError(f"learner_or_model: expected a MetaLearner, FewShotClassifier or nn.Module, "
                        f"got {type(learner_or_model).__name__}")
    if inner_lr is None or steps is None:
        raise ValueError("inner_lr, steps: required when evaluating a bare nn.Module (α and the number of inner steps)")
    if not isinstance(test_images, torch.Tensor) or test_images.dtype != torch.uint8 or test_images.ndim != 4:
        what = f"{test_images.dtype} {tuple(test_images.shape)}" if isinstance(test_images, torch.Tensor) \
            else type(test_images).__name__
        raise ValueError(f"test_images: expected uint8 images (classes, examples, 28, 28), strokes 255; got {what}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    _positive_int("tasks", tasks)
    _positive_int("chunk", chunk)
    if tasks < 2:
        raise ValueError(f"tasks: need at least 2 tasks for a confidence interval, got {tasks}")
    device = next(iter(params.values())).device
    sampler = EpisodeSampler(test_images.to(device), n_way=n_way, k_shot=k_shot, q_query=q_query,
                             meta_batch_size=min(chunk, tasks))
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    done, mine = 0, distributed.shard(tasks)  # this rank's block of the tasks (all of them in one process)
    while done < tasks:
        support_x, support_y, query_x, query_y = (t[: tasks - done] for t in sampler.sample(generator))
        if done == 0:
            with torch.no_grad():
                classes = functional_call(model, params, (support_x[0],)).shape[-1]
            if classes != n_way:
                raise ValueError(f"n_way: the model has {classes} outputs but the tasks are {n_way}-way")
        n, lo, hi = support_x.shape[0], max(mine.start - done, 0), min(mine.stop - done, support_x.shape[0])
        if lo < hi and meta is not None and meta.algorithm != "maml":  # ANIL, MAML++, ProtoNets, ...: their own loop
            _, out = algorithms.adapted_predictions(meta, model, params, inner_lr, support_x[lo:hi], support_y[lo:hi],
                                                    query_x[lo:hi], query_y[lo:hi], loss_fn=F.cross_entropy,
                                                    steps=steps)
            accuracies.append((out.argmax(-1) == query_y[lo:hi]).float().mean(-1))  # (chunk,)
        elif lo < hi:  # every rank draws every task (the same stream), adapts only its own
            curve = adaptation_curve(model, params, support_x[lo:hi], support_y[lo:hi], query_x[lo:hi],
                                     query_y[lo:hi], loss_fn=F.cross_entropy, inner_lr=inner_lr, steps=steps,
                                     accuracy=True)
            accuracies.append(curve["accuracy"][:, steps])  # (chunk,) accuracy of θ' after `steps` steps
        done += n
    local = torch.cat(accuracies) if accuracies else torch.zeros(0, device=device)
    return mean_ci95(distributed.gather_tasks(local, tasks))  # every rank's block, in task order


# ----------------------------------------------------------------------------------------------
# a checkpoint as a classifier


class FewShotClassifier:
    """Adapt a meta-learned θ to a labelled support set and label query images.

    `FewShotClassifier.from_checkpoint(path)` reads a checkpoint of `train_fewshot` (or a shipped one);
    `.classify(support_images, support_labels, query_images)` returns the predicted labels.

    Images: a float tensor (n, 1, 28, 28) or (n, 28, 28) in [0, 1] with strokes 1 on background 0 (what
    `EpisodeSampler` gives), a uint8 tensor (n, 28, 28) with strokes 255 (the Omniglot format), or raw
    images of any size (a list of PIL images or arrays, or a numpy array (n, H, W)), which go through
    `mamlkit.data.preprocess.preprocess` (dark strokes on light paper, like Omniglot's PNGs).
    """

    def __init__(self, model: nn.Module, *, n_way: int, inner_lr, steps: int, config: FewShotConfig | None = None):
        check_model(model)
        self.model, self.params = model, dict(model.named_parameters())
        if config is not None and not isinstance(config, FewShotConfig):
            raise TypeError(f"config: expected a FewShotConfig or None, got {type(config).__name__}")
        if config is None or config.algorithm == "maml":  # (MAML++ keeps its learned state in α's place)
            check_inner_lr(inner_lr, self.params)
        check_steps(steps)
        self.n_way, self.inner_lr, self.steps = _positive_int("n_way", n_way), inner_lr, steps
        self.config = config

    @classmethod
    def from_checkpoint(cls, path, *, device: str = "cpu") -> "FewShotClassifier":
        check_device(device, "device")
        state = load_checkpoint(path, map_location=device)
        learner = state.get("learner")
        if not isinstance(learner, dict) or "model" not in learner:
            raise ValueError(f"path: {path} holds no learner; expected a checkpoint of train_fewshot")
        saved = learner.get("fewshot")
        if saved is None:
            raise ValueError(f"path: {path} holds no FewShotConfig; expected a checkpoint of train_fewshot")
        try:
            config = FewShotConfig(**{**saved_config(saved), "device": device})
        except (TypeError, ValueError) as e:
            raise ValueError(f"path: {path} holds an invalid FewShotConfig ({e})") from e
        model = make_conv4(config.n_way, width=config.width, downsample=config.downsample).to(device)
        check_model_state(model, learner["model"], f"path: {path}")
        model.load_state_dict(learner["model"])
        for p in model.parameters():
            p.requires_grad_(False)  # θ is fixed here: only θ' (a new tensor per call) is computed
        # α: the float, or what was learned (Meta-SGD: one α per entry; MAML++: per-step α and BatchNorm)
        inner_lr = learner.get("inner_lr", config.inner_lr)
        if isinstance(inner_lr, dict):
            inner_lr = {k: v.to(device) for k, v in inner_lr.items()}
        return cls(model, n_way=config.n_way, inner_lr=inner_lr, steps=config.test_steps, config=config)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def images(self, images, name: str = "images") -> torch.Tensor:
        """Any accepted image input -> float32 (n, 1, 28, 28) in [0, 1] on the model's device."""
        if isinstance(images, torch.Tensor):
            x = images
            if x.dtype == torch.uint8:
                x = x.float() / 255.0  # the Omniglot format: strokes 255 -> 1
            elif not x.is_floating_point():
                raise TypeError(f"{name}: expected a float (0..1) or uint8 (0..255) tensor, got {x.dtype}")
            if x.ndim == 3:
                x = x.unsqueeze(1)  # (n, 28, 28) -> (n, 1, 28, 28)
            if x.ndim != 4 or tuple(x.shape[1:]) != (1, SIZE, SIZE) or x.shape[0] == 0:
                raise ValueError(
                    f"{name}: expected a tensor of shape (n, 1, {SIZE}, {SIZE}) or (n, {SIZE}, {SIZE}), got "
                    f"{tuple(images.shape)}; pass images of another size as a list (or numpy array) to have "
                    f"them preprocessed (mamlkit.data.preprocess.preprocess)"
                )
            if images.is_floating_point():  # NaN would become a silent wrong label; 0..255 floats a saturated one
                if not bool(torch.isfinite(x).all()):
                    raise ValueError(f"{name}: holds NaN or inf pixels; expected floats in [0, 1]")
                lo, hi = float(x.min()), float(x.max())
                if lo < 0.0 or hi > 1.0:
                    raise ValueError(f"{name}: float pixels must lie in [0, 1] (strokes 1 on background 0), got "
                                     f"{lo:.4g}..{hi:.4g}" + (" (divide 0..255 images by 255)" if hi > 1 else ""))
        else:
            from ..data.preprocess import preprocess

            try:
                x = preprocess(images).unsqueeze(1).float() / 255.0  # (n, 1, 28, 28), strokes 1
            except (TypeError, ValueError) as e:  # preprocess names its argument "images": name ours
                message = str(e)
                message = name + message[len("images"):] if message.startswith("images:") else f"{name}: {message}"
                raise type(e)(message) from e
        return x.to(self.device, torch.float32)

    def labels(self, labels, n: int) -> torch.Tensor:
        y = torch.as_tensor(labels)
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"support_labels: expected {n} integer labels (one per support image), "
                             f"got {y.dtype} of shape {tuple(y.shape)}")
        present = sorted(set(y.tolist()))
        if present != list(range(self.n_way)):
            raise ValueError(
                f"support_labels: this model was meta-trained for {self.n_way}-way tasks, so the support set "
                f"needs every label 0..{self.n_way - 1} at least once; got labels {present}"
            )
        return y.to(self.device, torch.int64)

    def adapt(self, support_images, support_labels, steps: int | None = None) -> dict:
        """θ' = θ − α ∇θ L(θ; support), `steps` times (default: the test steps the model was trained for).

        MAML's inner loop: for a checkpoint of ANIL, MAML++, ProtoNets or ProtoMAML, `classify` runs the
        algorithm's own loop, and this raises."""
        if self.config is not None and self.config.algorithm not in ("maml", "reptile"):
            raise ValueError(f"adapt: this checkpoint's algorithm={self.config.algorithm!r} does not adapt θ with "
                             f"MAML's inner loop; classify(...) runs its own")
        x = self.images(support_images, "support_images")
        y = self.labels(support_labels, x.shape[0])
        steps = self.steps if steps is None else steps
        adapted = adapt(self.model, self.params, x, y, loss_fn=F.cross_entropy, inner_lr=self.inner_lr,
                        steps=steps, first_order=True)  # no meta-gradient at test time: first order is exact here
        return {k: v.detach() for k, v in adapted.items()}

    def classify(self, support_images, support_labels, query_images, steps: int | None = None, *,
                 transductive: bool = True) -> torch.Tensor:
        """Predicted labels (n_query,) int64 for the query images, after adapting θ on the support set.

        transductive=True (the paper): all query images form one batch and share its BatchNorm
        statistics. False: each query image is normalized together with the support set, so its label
        does not depend on the other query images (works for a single query image; see conv4.py).
        """
        if self.config is not None and self.config.algorithm not in ("maml", "reptile"):  # its own loop (algorithms/)
            if not transductive:
                raise ValueError(f"transductive: False is implemented for MAML's inner loop only, not for "
                                 f"algorithm={self.config.algorithm!r}; use transductive=True")
            x = self.images(support_images, "support_images")
            y = self.labels(support_labels, x.shape[0])
            query = self.images(query_images, "query_images")
            labels = torch.zeros(query.shape[0], dtype=torch.int64, device=self.device)  # enter only the loss
            _, out = algorithms.adapted_predictions(self.config.meta_config(), self.model, self.params, self.inner_lr,
                                                    x[None], y[None], query[None], labels[None],
                                                    loss_fn=F.cross_entropy, steps=self.steps if steps is None else steps)
            return out[0].argmax(-1)
        adapted = self.adapt(support_images, support_labels, steps)
        query = self.images(query_images, "query_images")
        with torch.no_grad():
            if transductive:
                return functional_call(self.model, adapted, (query,)).argmax(-1)
            support = self.images(support_images, "support_images")
            n = support.shape[0]
            # one batch per query image: [support; that image], keep its row  # (n + 1, 1, 28, 28) each
            return torch.stack([functional_call(self.model, adapted, (torch.cat([support, q[None]]),))[n].argmax(-1)
                                for q in query])


def load_pretrained(n_way: int = 5, k_shot: int = 1, first_order: bool = False,
                    algorithm: str = "maml") -> FewShotClassifier:
    """The shipped Omniglot checkpoint for this setting, after checking its sha256 (mamlkit/weights/).

    `algorithm="protonet"` gives the shipped prototypical network where there is one (20-way 1-shot)."""
    if not RESULTS_JSON.is_file():
        raise FileNotFoundError(f"no results table at {RESULTS_JSON}: run `python -m mamlkit.fewshot results`")
    runs = json.loads(RESULTS_JSON.read_text())["runs"]
    name = FewShotConfig(n_way=n_way, k_shot=k_shot, first_order=first_order, algorithm=algorithm).name
    shipped = {r["name"]: r for r in runs if r.get("weights")}
    if name not in shipped:
        raise FileNotFoundError(f"n_way, k_shot, first_order, algorithm: no shipped checkpoint {name!r}; "
                                f"shipped: {sorted(shipped)}")
    run = shipped[name]
    path = WEIGHTS / run["weights"]
    actual = sha256(path) if path.is_file() else "(missing file)"
    if actual != run["sha256"]:
        raise ValueError(f"{path}: sha256 mismatch, expected {run['sha256']} (omniglot_results.json), got {actual}; "
                         f"the file is damaged or was replaced: restore it from the repository")
    return FewShotClassifier.from_checkpoint(path)


def export_weights(checkpoint_path, out_path) -> Path:
    """A checkpoint without the meta-optimizer's state and the RNG: θ, α, the config and the log (~1/3 the size)."""
    state = load_checkpoint(checkpoint_path)
    learner = {k: state["learner"][k] for k in ("step", "model", "inner_lr", "config", "fewshot", "data_sha256")
               if k in state["learner"]}
    return save_checkpoint({"learner": learner, "log": state["log"]}, out_path)


__all__ = ["FewShotConfig", "FewShotLearner", "FewShotClassifier", "make_learner", "omniglot_split", "snapshot_dir",
           "train_fewshot", "evaluate_fewshot", "load_pretrained", "export_weights", "saved_config", "data_fingerprint",
           "PAPER", "RESULTS_JSON", "WEIGHTS", "SIZE", "SPLITS", "RESUMABLE_CHANGES"]
