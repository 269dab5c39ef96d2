"""N-way K-shot episodes: a meta-batch of few-shot classification tasks drawn from a tensor of images.

Finn, Abbeel, Levine (2017), Section 5.2 (Omniglot, after Vinyals et al. 2016 and Santoro et al. 2016):
a task Tᵢ picks `n_way` classes at random and gives

    support set:  k_shot  images of each class   (the K examples α adapts θ on)
    query set:    q_query other images of each   (the examples θ'ᵢ is judged on)

with labels 0 .. n_way−1 assigned to the chosen classes in a random order, so that a label carries
no information across tasks: the network must learn it from the support set, every time.

`EpisodeSampler(images, n_way=5, k_shot=1, q_query=15, meta_batch_size=32).sample(generator)` draws
B = meta_batch_size such tasks at once. All the randomness comes from `generator`, so the same
generator state gives the same batch: a resumed training run sees the tasks it would have seen.

Sampling is vectorized: a random permutation is the sort order of uniform random numbers, so one
`topk` picks the classes of all B tasks and one more picks the examples of all B·n_way classes;
advanced indexing then gathers every image in one call. There is no Python loop over tasks or images
(`python -m mamlkit.data.episodes` prints the measured tasks/s).
"""
from __future__ import annotations

import time
from typing import NamedTuple

import torch


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _random_permutations(rows: tuple[int, ...], n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """The first `k` entries of an independent random permutation of 0..n−1 for each row: (*rows, k).

    Sorting i.i.d. uniform numbers gives a uniformly random permutation (ties have probability ~0);
    its first k entries are k of n drawn without replacement, in random order. `topk` finds those k
    without sorting all n (a partial selection instead of a full sort, which matters for 5 of 3,856
    classes; to measure it: python -m timeit -s "import torch; r = torch.rand(32, 3856)" "r.topk(5)"
    against the same with "r.argsort()[:, :5]").
    """
    return torch.rand(*rows, n, generator=generator).topk(k, dim=-1, sorted=True).indices


class EpisodeIndices(NamedTuple):
    """Which images a meta-batch holds (all int64, on the CPU)."""

    classes: torch.Tensor  # (B, n_way): classes[i, j] is the class that gets label j in task i
    support_example: torch.Tensor  # (B, n_way*k_shot): example index within its class
    support_y: torch.Tensor  # (B, n_way*k_shot): label 0..n_way-1
    query_example: torch.Tensor  # (B, n_way*q_query)
    query_y: torch.Tensor  # (B, n_way*q_query)


class EpisodeSampler:
    """Draws meta-batches of `n_way`-way `k_shot`-shot tasks with `q_query` query images per class.

    Arguments:
        images: uint8 tensor (classes, examples_per_class, height, width), strokes 255 on background 0
            (what `mamlkit.data.omniglot.load_omniglot` returns; 28x28 for Omniglot). It may live on a GPU:
            indices are drawn on the CPU and the images are gathered where they are.
        n_way: classes per task (≤ classes).
        k_shot: support images per class.
        q_query: query images per class (k_shot + q_query ≤ examples_per_class: no image is both).
        meta_batch_size: tasks per meta-batch, B.

    `sample(generator)` returns (support_x, support_y, query_x, query_y):

        support_x  float32 (B, n_way*k_shot, 1, H, W) in [0, 1], strokes 1 on background 0
        support_y  int64   (B, n_way*k_shot)   labels 0..n_way−1
        query_x    float32 (B, n_way*q_query, 1, H, W)
        query_y    int64   (B, n_way*q_query)

    Within a task the images come in a random order (labels are not sorted), the classes are
    distinct, and the examples of one class are distinct across support and query.
    """

    def __init__(self, images: torch.Tensor, *, n_way: int, k_shot: int, q_query: int, meta_batch_size: int):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a uint8 torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise TypeError(
                f"images: expected dtype torch.uint8 (0..255, strokes 255), got {images.dtype}; "
                f"convert with mamlkit.data.preprocess.preprocess or (x * 255).round().to(torch.uint8)"
            )
        if images.ndim != 4:
            raise ValueError(
                f"images: expected 4 dimensions (classes, examples_per_class, height, width), "
                f"got shape {tuple(images.shape)}"
            )
        self.n_way = _check_size("n_way", n_way)
        self.k_shot = _check_size("k_shot", k_shot)
        self.q_query = _check_size("q_query", q_query)
        self.meta_batch_size = _check_size("meta_batch_size", meta_batch_size)
        classes, examples = images.shape[:2]
        if n_way > classes:
            raise ValueError(f"n_way: {n_way} classes per task, but images holds only {classes} classes")
        if k_shot + q_query > examples:
            raise ValueError(
                f"k_shot + q_query: {k_shot} + {q_query} = {k_shot + q_query} images per class, but images "
                f"holds only {examples} examples per class"
            )
        self.images = images
        self.classes, self.examples_per_class = classes, examples

    def sample_indices(self, generator: torch.Generator) -> EpisodeIndices:
        """The random draws behind one `sample`, as an `EpisodeIndices` of int64 CPU tensors.

        Image j of task i in the support set is
        `images[classes[i, support_y[i, j]], support_example[i, j]]` (the same for the query set):
        `sample(g)` is exactly `gather(sample_indices(g))`, so tests can check where every image
        came from.
        """
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            what = f"one on {generator.device}" if isinstance(generator, torch.Generator) else type(generator).__name__
            raise TypeError(
                f"generator: expected a CPU torch.Generator (e.g. torch.Generator().manual_seed(0)), got {what}"
            )
        B, N, K, Q = self.meta_batch_size, self.n_way, self.k_shot, self.q_query
        # n_way distinct classes per task, in random order: label j <- class classes[i, j]
        classes = _random_permutations((B,), self.classes, N, generator)  # (B, N)
        # K + Q distinct examples of each chosen class: the first K support, the rest query
        examples = _random_permutations((B, N), self.examples_per_class, K + Q, generator)  # (B, N, K+Q)
        labels = torch.arange(N).view(1, N, 1).expand(B, N, K + Q)  # (B, N, K+Q)

        def flat_shuffled(y, e, per_class):
            # (B, N, per_class) -> (B, N*per_class), then a random order within each task, so that
            # the labels do not come sorted (0,0,1,1,...) and position says nothing about the class
            y, e = y.reshape(B, N * per_class), e.reshape(B, N * per_class)
            order = _random_permutations((B,), N * per_class, N * per_class, generator)  # (B, N*per_class)
            return y.gather(1, order), e.gather(1, order)

        support_y, support_example = flat_shuffled(labels[:, :, :K], examples[:, :, :K], K)
        query_y, query_example = flat_shuffled(labels[:, :, K:], examples[:, :, K:], Q)
        return EpisodeIndices(classes, support_example, support_y, query_example, query_y)

    def gather(self, indices: EpisodeIndices) -> tuple[torch.Tensor, ...]:
        """Images and labels for `sample_indices`' draws: (support_x, support_y, query_x, query_y)."""
        device = self.images.device

        def images_of(y, e):
            c = indices.classes.gather(1, y)  # (B, N*per_class): the class id of every image
            x = self.images[c.to(device), e.to(device)]  # (B, N*per_class, H, W) uint8
            return x.unsqueeze(2).to(torch.float32).div_(255.0)  # (B, N*per_class, 1, H, W) in [0, 1]

        return (
            images_of(indices.support_y, indices.support_example), indices.support_y.to(device),
            images_of(indices.query_y, indices.query_example), indices.query_y.to(device),
        )

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One meta-batch (support_x, support_y, query_x, query_y); see the class docstring for shapes."""
        return self.gather(self.sample_indices(generator))

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.classes} classes x {self.examples_per_class} examples, "
            f"n_way={self.n_way}, k_shot={self.k_shot}, q_query={self.q_query}, "
            f"meta_batch_size={self.meta_batch_size})"
        )


def benchmark_sampling(*, classes: int = 4 * 964, examples_per_class: int = 20, n_way: int = 5, k_shot: int = 1,
                       q_query: int = 15, meta_batch_size: int = 32, seconds: float = 2.0,
                       threads: int | None = None) -> float:
    """Print and return the tasks/s `EpisodeSampler.sample` reaches on this machine (a benchmark, not a test).

    The defaults are the paper's Omniglot training set: 964 background characters x 4 rotations,
    20 drawers, 5-way 1-shot with 15 query images per class, 32 tasks per meta-batch.
    Target on a 2-core CPU: ≥ 1,000 tasks/s. `threads` sets torch's intra-op threads for the
    measurement (restored after); None keeps the current setting.
    """
    images = torch.randint(0, 256, (classes, examples_per_class, 28, 28), dtype=torch.uint8)
    sampler = EpisodeSampler(images, n_way=n_way, k_shot=k_shot, q_query=q_query, meta_batch_size=meta_batch_size)
    generator = torch.Generator().manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        sampler.sample(generator)  # warm-up (first-call allocations)
        batches, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            sampler.sample(generator)
            batches += 1
    finally:
        torch.set_num_threads(before)
    rate = batches * meta_batch_size / elapsed
    print(f"{sampler}: {rate:,.0f} tasks/s ({batches} meta-batches in {elapsed:.2f} s, "
          f"{threads or before} threads); target >= 1,000 tasks/s -> ratio {rate / 1000:.1f}x")
    return rate


if __name__ == "__main__":
    # small tensor ops gain little from threads, and lose a lot when other processes share the cores
    for threads in (1, 2):
        benchmark_sampling(threads=threads)
