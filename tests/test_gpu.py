"""The CUDA path against independent computations: a CPU float64 reference, finite differences, the CPU run.

Every test here skips without a CUDA device (CI has none); `python -m mamlkit.experiments.gpu_session`
runs them first on a GPU machine. The course's claims of "GPU-capable" rest on these: the same
meta-gradient on the GPU (vmap batching, grouped convolutions in cuDNN) as on the CPU (the loop), a
second-order meta-gradient that matches finite differences on the GPU itself, and a meta-trained
model that scores the same on the same test tasks whichever device evaluates it.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlkit import meta_loss
from mamlkit.bench.baselines import finite_difference
from mamlkit.models.conv4 import make_conv4

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture
def exact_float32():
    """cuDNN and cuBLAS without TF32 (their default for float32 convolutions): float32 rounding only."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def image_batch(tasks=4, n_way=5, k=1, q=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, n_way * (k + q), 1, 28, 28, generator=g, dtype=dtype)
    y = torch.arange(n_way).repeat(k + q).expand(tasks, -1)
    return x[:, :n_way * k], y[:, :n_way * k], x[:, n_way * k:], y[:, n_way * k:]


def meta_gradient(model, batch, device, *, first_order, batching, steps=2):
    model = copy.deepcopy(model).to(device)
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    loss = meta_loss(model, params, *(t.to(device) for t in batch), loss_fn=F.cross_entropy, inner_lr=0.4,
                     steps=steps, first_order=first_order, batching=batching)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()))]).cpu()


@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_meta_gradient_on_gpu_equals_the_cpu_loop_in_float64(first_order):
    torch.manual_seed(0)
    model = make_conv4(5, width=8, downsample="stride").double()
    batch = image_batch()
    gpu = meta_gradient(model, batch, "cuda", first_order=first_order, batching="vmap")
    cpu = meta_gradient(model, batch, "cpu", first_order=first_order, batching="loop")
    torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=1e-12)


def test_conv4_meta_gradient_on_gpu_in_float32_is_float32_close_to_float64(exact_float32):
    torch.manual_seed(0)
    model = make_conv4(5, width=16, downsample="stride")
    batch = image_batch(dtype=torch.float32)
    gpu = meta_gradient(model, batch, "cuda", first_order=False, batching="vmap").double()
    reference = meta_gradient(model.double(), tuple(t.double() if t.is_floating_point() else t for t in batch),
                              "cpu", first_order=False, batching="loop")
    assert ((gpu - reference).norm() / reference.norm()).item() < 1e-4


def test_second_order_meta_gradient_on_gpu_matches_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)).double().cuda()
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 12, 1, generator=g, dtype=torch.float64) * 4 - 2).cuda()
    y = torch.sin(x)
    batch = (x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])

    def f(p):
        return meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=0.1, steps=2, batching="vmap")

    autograd = torch.cat([g.flatten() for g in torch.autograd.grad(f(params), list(params.values()))])
    torch.testing.assert_close(autograd.cpu(), finite_difference(f, params), rtol=1e-5, atol=1e-7)


def test_fewshot_run_on_gpu_trains_and_scores_as_on_the_cpu(tmp_path):
    from mamlkit.experiments.fewshot import FewShotClassifier, FewShotConfig, evaluate_fewshot, train_fewshot

    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(30, 1, 28, 28, generator=g) > 0.7  # 30 "characters", 20 noisy drawings each
    noise = torch.rand(30, 20, 28, 28, generator=g) > 0.9
    images = ((prototypes ^ noise) * 255).to(torch.uint8)
    config = FewShotConfig(n_way=5, k_shot=1, q_query=5, meta_batch_size=8, width=16, iterations=60, seed=0,
                           device="cuda", downsample="stride", augment=True, meta_lr_schedule="cosine")
    learner, log = train_fewshot(config, checkpoint_path=tmp_path / "run.pt", data=images[:20], progress=False)
    assert learner.device.type == "cuda" and len(log) > 0
    test = images[20:]
    on_gpu = evaluate_fewshot(learner, test, n_way=5, k_shot=1, tasks=40, seed=1)
    on_cpu = evaluate_fewshot(FewShotClassifier.from_checkpoint(tmp_path / "run.pt"), test, n_way=5, k_shot=1,
                              tasks=40, seed=1)
    assert on_gpu[0] > 0.4  # chance is 0.2: 60 meta-steps learned something on the GPU
    assert abs(on_gpu[0] - on_cpu[0]) <= 0.02  # the same tasks: at most a near-tie query flips


def test_bf16_meta_step_on_gpu_is_finite_and_keeps_float32_parameters(tmp_path):
    from mamlkit.experiments.fewshot import FewShotConfig, train_fewshot

    images = (torch.rand(20, 20, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).to(torch.uint8) * 255
    config = FewShotConfig(n_way=5, k_shot=1, q_query=2, meta_batch_size=4, width=8, iterations=5, device="cuda",
                           bf16=True)
    learner, log = train_fewshot(config, checkpoint_path=tmp_path / "bf16.pt", data=images, progress=False)
    assert all(p.dtype == torch.float32 for p in learner.params.values())
    assert all(torch.isfinite(p).all() for p in learner.params.values())
