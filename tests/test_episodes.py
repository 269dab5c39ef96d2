"""EpisodeSampler: shapes, labels that match their images, no repeats, determinism, errors."""
import pytest
import torch

from mamlkit.data.episodes import EpisodeSampler

torch.set_num_threads(1)

CLASSES, EXAMPLES = 12, 20


def coded_images(classes=CLASSES, examples=EXAMPLES, size=28):
    """Images that encode where they came from: pixel (0, 0) = class id, pixel (0, 1) = example id."""
    images = torch.zeros(classes, examples, size, size, dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(classes, dtype=torch.uint8)[:, None]
    images[:, :, 0, 1] = torch.arange(examples, dtype=torch.uint8)[None, :]
    images[:, :, 5:, 5:] = 255  # some strokes, to check the scaling to [0, 1]
    return images


def decode(x):
    """(B, M, 1, H, W) float in [0, 1] -> class ids (B, M), example ids (B, M)."""
    codes = (x[:, :, 0, 0, :2] * 255).round().long()  # (B, M, 2)
    return codes[..., 0], codes[..., 1]


def make(n_way=5, k_shot=2, q_query=3, meta_batch_size=7, images=None):
    images = coded_images() if images is None else images
    return EpisodeSampler(images, n_way=n_way, k_shot=k_shot, q_query=q_query, meta_batch_size=meta_batch_size)


def test_shapes_dtypes_and_label_counts():
    sampler = make(n_way=5, k_shot=2, q_query=3, meta_batch_size=7)
    support_x, support_y, query_x, query_y = sampler.sample(torch.Generator().manual_seed(0))
    assert support_x.shape == (7, 10, 1, 28, 28) and support_x.dtype == torch.float32
    assert query_x.shape == (7, 15, 1, 28, 28) and query_x.dtype == torch.float32
    assert support_y.shape == (7, 10) and support_y.dtype == torch.int64
    assert query_y.shape == (7, 15) and query_y.dtype == torch.int64
    assert 0.0 <= support_x.min() and support_x.max() == 1.0  # strokes 255 -> 1
    # every label 0..n_way-1 appears exactly k_shot times in the support set, q_query times in the query set
    for y, per_class in ((support_y, 2), (query_y, 3)):
        counts = torch.stack([(y == j).sum(dim=1) for j in range(5)], dim=1)  # (B, n_way)
        assert torch.equal(counts, torch.full((7, 5), per_class))


def test_labels_match_images_and_nothing_repeats():
    sampler = make(n_way=5, k_shot=2, q_query=3, meta_batch_size=50)
    support_x, support_y, query_x, query_y = sampler.sample(torch.Generator().manual_seed(1))
    s_class, s_example = decode(support_x)
    q_class, q_example = decode(query_x)
    for i in range(50):
        # label j names one class, the same in the support and the query set
        label_to_class = {}
        for y, c in zip(support_y[i].tolist() + query_y[i].tolist(), s_class[i].tolist() + q_class[i].tolist()):
            assert label_to_class.setdefault(y, c) == c, f"task {i}: label {y} maps to two classes"
        # n_way distinct classes per task
        assert len(set(label_to_class.values())) == 5
        # no image twice in a task (support and query disjoint)
        pairs = list(zip(s_class[i].tolist() + q_class[i].tolist(), s_example[i].tolist() + q_example[i].tolist()))
        assert len(set(pairs)) == len(pairs)


def test_sample_is_gather_of_sample_indices():
    sampler = make()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batch = sampler.sample(g1)
    idx = sampler.sample_indices(g2)
    images = sampler.images
    expected_support = images[idx.classes.gather(1, idx.support_y), idx.support_example].float() / 255
    assert torch.equal(batch[0][:, :, 0], expected_support)
    assert torch.equal(batch[1], idx.support_y)
    expected_query = images[idx.classes.gather(1, idx.query_y), idx.query_example].float() / 255
    assert torch.equal(batch[2][:, :, 0], expected_query)


def test_randomness_labels_classes_and_order():
    """Labels are not tied to class ids, and support labels do not come sorted."""
    sampler = make(n_way=3, k_shot=2, q_query=1, meta_batch_size=400)
    idx = sampler.sample_indices(torch.Generator().manual_seed(4))
    # class c gets each label with frequency ~1/3; if labels followed class order, label 0 would get small ids
    assert 4.0 < idx.classes[:, 0].float().mean() < 7.0  # mean class id is 5.5 for 12 classes
    assert len(torch.unique(idx.classes)) == CLASSES
    sorted_tasks = (idx.support_y == idx.support_y.sort(dim=1).values).all(dim=1).float().mean()
    assert sorted_tasks < 0.2  # 6 positions, 3 labels: sorted by chance with probability 1/90


def test_same_generator_state_same_batch_and_fresh_state_differs():
    sampler = make()
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = sampler.sample(g)
    second = sampler.sample(g)
    g.set_state(state)
    again = sampler.sample(g)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], second[0])
    # global RNG is not used: reseeding it changes nothing
    torch.manual_seed(123)
    a = sampler.sample(torch.Generator().manual_seed(9))
    torch.manual_seed(456)
    b = sampler.sample(torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_full_use_of_examples():
    """k_shot + q_query == examples_per_class: every example of a chosen class appears once."""
    sampler = make(n_way=2, k_shot=5, q_query=15, meta_batch_size=4)
    idx = sampler.sample_indices(torch.Generator().manual_seed(6))
    for i in range(4):
        for j in range(2):
            ex = torch.cat([idx.support_example[i][idx.support_y[i] == j], idx.query_example[i][idx.query_y[i] == j]])
            assert sorted(ex.tolist()) == list(range(EXAMPLES))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(n_way=13), ValueError, ["n_way", "13", "12"]),
        (dict(k_shot=10, q_query=11), ValueError, ["k_shot + q_query", "21", "20"]),
        (dict(n_way=0), ValueError, ["n_way", "0"]),
        (dict(k_shot=-1), ValueError, ["k_shot", "-1"]),
        (dict(q_query=0), ValueError, ["q_query"]),
        (dict(meta_batch_size=0), ValueError, ["meta_batch_size"]),
        (dict(n_way=2.5), ValueError, ["n_way", "2.5"]),
        (dict(images=coded_images().float()), TypeError, ["images", "uint8", "float32"]),
        (dict(images=coded_images()[0]), ValueError, ["images", "4 dimensions", "(20, 28, 28)"]),
        (dict(images=coded_images().numpy()), TypeError, ["images", "ndarray"]),
    ],
)
def test_errors_name_the_argument_and_numbers(kwargs, error, words):
    with pytest.raises(error) as info:
        make(**kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="generator"):
        make().sample(0)
