"""Conv4: output shapes, and the BatchNorm policy (batch statistics, no running-stat buffers)."""
import pytest
import torch
from torch import nn

from mamlkit.checks import check_model
from mamlkit.models.conv4 import BatchNorm, make_conv4

torch.set_num_threads(1)


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
@pytest.mark.parametrize("n_way, width, image_size", [(5, 8, 28), (20, 4, 28), (3, 8, 32), (2, 4, 105)])
def test_output_shapes(downsample, n_way, width, image_size):
    model = make_conv4(n_way, width=width, image_size=image_size, downsample=downsample)
    x = torch.rand(6, 1, image_size, image_size)
    assert model(x).shape == (6, n_way)
    features = model[:-1](x)  # everything but the head, run for real: the head's size must match it
    assert features.shape == (6, model.head.in_features)
    # the spatial size after four halvings, computed independently of make_conv4
    size = image_size
    for _ in range(4):
        size = size // 2 if downsample == "maxpool" else (size - 1) // 2 + 1  # conv output: ⌊(n + 2·1 − 3)/2⌋ + 1
    assert model.head.in_features == width * size * size


def test_paper_sizes():
    model = make_conv4(5)  # 28 -> 14 -> 7 -> 3 -> 1: the head sees 64 features, the paper's last hidden layer
    assert model.head.in_features == 64
    assert make_conv4(5, downsample="stride").head.in_features == 64 * 2 * 2  # 28 -> 14 -> 7 -> 4 -> 2


def test_in_channels():
    model = make_conv4(5, width=4, in_channels=3, image_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_no_running_statistics_and_check_model_accepts():
    model = make_conv4(5, width=8)
    norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
    assert len(norms) == 4
    assert list(model.buffers()) == []  # nothing to update, nothing to save besides θ
    model.train()
    check_model(model)  # does not raise in training mode
    # the same architecture with running statistics is rejected in training mode
    bad = make_conv4(5, width=8)
    bad.block2.norm = nn.BatchNorm2d(8)
    with pytest.raises(ValueError, match="track_running_stats"):
        check_model(bad)


def test_batch_statistics_in_train_and_eval_mode():
    torch.manual_seed(0)
    model = make_conv4(5, width=8)
    x = torch.rand(10, 1, 28, 28)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    assert torch.equal(train_out, eval_out)  # eval() changes nothing: there are no running statistics
    # a hand-written block1: conv, normalize with this batch's mean and biased variance, γ, β, ReLU, pool
    b = model.block1
    h = nn.functional.conv2d(x, b.conv.weight, b.conv.bias, padding=1)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + b.norm.eps) * b.norm.weight.view(1, -1, 1, 1) + b.norm.bias.view(1, -1, 1, 1)
    by_hand = nn.functional.max_pool2d(h.relu(), 2)
    torch.testing.assert_close(b(x), by_hand, rtol=1e-5, atol=1e-5)


def test_transductive_prediction_depends_on_the_batch():
    torch.manual_seed(0)
    model = make_conv4(5, width=8)
    x = torch.rand(8, 1, 28, 28)
    alone_with_a = model(torch.cat([x[:1], x[1:4]]))[0]
    alone_with_b = model(torch.cat([x[:1], x[4:8]]))[0]
    assert not torch.allclose(alone_with_a, alone_with_b)  # shared batch statistics


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_way=1), "n_way"), (dict(n_way=5, width=0), "width"), (dict(n_way=5, downsample="avg"), "downsample"),
    (dict(n_way=5, image_size=8), "image_size"), (dict(n_way=5, in_channels=2.0), "in_channels"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_conv4(**kwargs)


def test_batchnorm_equals_torch_batch_statistics_batchnorm():
    torch.manual_seed(0)
    ours, torchs = BatchNorm(6), nn.BatchNorm2d(6, track_running_stats=False)
    with torch.no_grad():
        for m in (ours, torchs):
            m.weight.uniform_(0.5, 1.5)
        torchs.load_state_dict(ours.state_dict())  # same keys: weight (γ), bias (β_bn)
    h = torch.randn(10, 6, 7, 7) * 3 + 1
    torch.testing.assert_close(ours(h), torchs(h), rtol=1e-5, atol=1e-5)


def test_second_order_vmap_equals_loop_with_conv4():
    # the reason for conv4.BatchNorm: with torch's BatchNorm this comparison fails under vmap
    import torch.nn.functional as F

    from mamlkit import meta_loss

    torch.manual_seed(0)
    model = make_conv4(3, width=4, image_size=16).double()
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(2, 3, 1, 16, 16, generator=g, dtype=torch.float64), torch.rand(2, 6, 1, 16, 16, generator=g, dtype=torch.float64)
    sy, qy = torch.tensor([[0, 1, 2]] * 2), torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    grads = {}
    for batching in ("vmap", "loop"):
        loss = meta_loss(model, params, sx, sy, qx, qy, loss_fn=F.cross_entropy, inner_lr=0.4, steps=2, batching=batching)
        grads[batching] = torch.cat([x.flatten() for x in torch.autograd.grad(loss, list(params.values()))])
    torch.testing.assert_close(grads["vmap"], grads["loop"], rtol=1e-6, atol=1e-10)
