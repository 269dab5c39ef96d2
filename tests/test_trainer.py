"""The trainer: meta_step is the meta-objective, runs resume exactly, checkpoints are atomic."""
import os

import pytest
import torch
import torch.nn.functional as F

import mamlkit
from mamlkit import MetaConfig, MetaLearner, load_checkpoint, meta_loss, save_checkpoint, train
from mamlkit.experiments.sinusoid import make_mlp, sample_tasks


def sampler(g):
    return sample_tasks(5, 5, generator=g).tensors()


def make_learner(seed=0, **config):
    torch.manual_seed(seed)
    return MetaLearner(make_mlp(hidden=16), F.mse_loss, MetaConfig(**config))


def params_of(learner):
    return torch.cat([p.detach().flatten() for p in learner.params.values()])


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_meta_step_follows_the_meta_gradient_of_meta_loss(batching):
    learner = make_learner(meta_lr=0.01, batching=batching)
    batch = sampler(torch.Generator().manual_seed(0))
    # independent of the trainer: the same loss through mamlkit.meta_loss, and Adam's first step
    # moves each entry by -β·g/(|g| + ε) (bias-corrected m̂ = g, v̂ = g² at step 1, ε = 1e-8)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    loss = meta_loss(learner.model, learner.params, *batch, loss_fn=F.mse_loss, inner_lr=0.01)
    grads = dict(zip(learner.params, torch.autograd.grad(loss, list(learner.params.values()))))
    metrics = learner.meta_step(*batch)
    assert metrics["meta_loss"] == pytest.approx(loss.item(), rel=1e-6)
    for k, p in learner.params.items():
        torch.testing.assert_close(p.detach(), before[k] - 0.01 * grads[k] / (grads[k].abs() + 1e-8), rtol=0, atol=1e-6)


def test_meta_training_lowers_the_query_loss():
    learner = make_learner(meta_lr=3e-3)
    test = sample_tasks(50, 5, 20, generator=torch.Generator().manual_seed(99))

    def query_mse():
        curve = mamlkit.adaptation_curve(learner.model, learner.params, *test.tensors(), loss_fn=F.mse_loss,
                                         inner_lr=0.01, steps=1)["loss"]
        return curve[:, 1].mean().item()

    before = query_mse()
    train(learner, sampler, iterations=300, progress=False)
    assert query_mse() < 0.8 * before


def test_meta_sgd_learns_the_inner_learning_rates():
    learner = make_learner(learn_inner_lr=True, meta_lr=1e-2)
    start = {k: v.detach().clone() for k, v in learner.inner_lr.items()}
    train(learner, sampler, iterations=20, progress=False)
    assert any(not torch.equal(start[k], v.detach()) for k, v in learner.inner_lr.items())


def test_resumed_run_ends_with_the_same_parameters(tmp_path):
    straight = make_learner()
    train(straight, sampler, iterations=40, seed=3, progress=False)

    ckpt = tmp_path / "run.pt"
    first = make_learner()
    train(first, sampler, iterations=20, seed=3, checkpoint_path=ckpt, checkpoint_every=10, log_every=10,
          progress=False)
    resumed = make_learner(seed=123)  # a fresh process: different initial θ, all restored from the checkpoint
    log = train(resumed, sampler, iterations=40, seed=3, checkpoint_path=ckpt, checkpoint_every=10,
                log_every=10, progress=False)
    assert resumed.step == 40
    assert torch.equal(params_of(resumed), params_of(straight))
    assert [m["step"] for m in log] == [10, 20, 30, 40]  # the log survives the restart


def test_nan_meta_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "run.pt"
    learner = make_learner()
    train(learner, sampler, iterations=10, checkpoint_path=ckpt, checkpoint_every=5, progress=False)
    good = ckpt.read_bytes()

    def poisoned(g):
        sx, sy, qx, qy = sampler(g)
        return sx, sy, qx, qy * float("nan")

    with pytest.raises(FloatingPointError, match="meta-step 11"):
        train(learner, poisoned, iterations=20, checkpoint_path=ckpt, checkpoint_every=1, progress=False)
    assert ckpt.read_bytes() == good
    assert learner.step == 10


def test_checkpoint_loads_with_weights_only(tmp_path):
    learner = make_learner(learn_inner_lr=True)
    train(learner, sampler, iterations=3, checkpoint_path=tmp_path / "c.pt", progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["learner"]["step"] == 3


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def torn_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")  # some bytes reach the temporary file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"step": 1, "w": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"step": 1}, path)  # a valid torch file, but not ours
    with pytest.raises(ValueError, match="not a mamlkit-checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="path: no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("field,value,match", [
    ("inner_lr", 0.0, "inner_lr: expected a positive"),
    ("meta_lr", -1.0, "meta_lr: expected a positive"),
    ("inner_steps", -1, "inner_steps: expected an integer"),
    ("batching", "threads", "batching: expected one of"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        MetaConfig(**{field: value})


def test_bf16_option_runs_the_convolutions_in_bfloat16_and_keeps_the_meta_gradient():
    from mamlkit.models.conv4 import make_conv4

    torch.manual_seed(0)
    model = make_conv4(3, width=8, image_size=16)
    batch = (torch.randn(2, 3, 1, 16, 16), torch.arange(3).repeat(2, 1), torch.randn(2, 6, 1, 16, 16),
             torch.arange(3).repeat_interleave(2).repeat(2, 1))
    seen = []
    model.block2.conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    grads = {}
    for bf16 in (False, True):
        learner = MetaLearner(model, F.cross_entropy, MetaConfig(inner_lr=0.4, batching="loop", bf16=bf16))
        before = [p.detach().clone() for p in learner.params.values()]
        metrics = learner.meta_step(*batch)
        grads[bf16] = torch.cat([p.grad.flatten() for p in learner.params.values()])
        assert all(p.dtype == torch.float32 for p in learner.params.values())  # θ stays float32
        with torch.no_grad():  # put θ back: both precisions judged at the same θ
            for p, b in zip(learner.params.values(), before):
                p.copy_(b)
        assert torch.isfinite(torch.tensor(metrics["meta_loss"]))
    assert set(seen[:4]) == {torch.float32} and torch.bfloat16 in seen[4:]  # the option changes the precision
    cosine = F.cosine_similarity(grads[False], grads[True], dim=0)
    assert cosine > 0.95, f"bf16 meta-gradient should point where the float32 one does (cos {cosine:.3f})"
    assert not torch.equal(grads[False], grads[True])  # and it is really a different computation
    with pytest.raises(TypeError, match="bf16: expected True or False"):
        MetaConfig(bf16="yes")


def test_meta_optimizer_is_adam_with_fused_kernel_on_cpu():
    learner = make_learner(meta_lr=0.003)
    assert isinstance(learner.optimizer, torch.optim.Adam)
    assert learner.optimizer.defaults["fused"] and learner.optimizer.defaults["lr"] == 0.003


def test_train_rejects_bad_iterations():
    with pytest.raises(ValueError, match="iterations: expected"):
        train(make_learner(), sampler, iterations=-5, progress=False)


def test_atomic_write_text_replaces_whole_files_only(tmp_path, monkeypatch):
    from mamlkit.checkpoint import atomic_write_text

    path = tmp_path / "results.json"
    atomic_write_text('{"old": 1}\n', path)

    def killed(fd):  # the new text is written to the temporary file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text('{"new": 2}\n', path)
    assert path.read_text() == '{"old": 1}\n'
    assert os.listdir(tmp_path) == ["results.json"]


def hand_written_meta_gradient(model, theta, batch, alpha, steps, first_order):
    """MAML's meta-gradient written out with nothing from mamlkit: per task, `steps` inner steps of
    θ' = θ − α ∇θ L(θ; support) with torch.autograd.grad, then the mean query loss's gradient."""
    from torch.func import functional_call

    names = list(theta)
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        adapted = dict(theta)
        for _ in range(steps):
            loss = F.mse_loss(functional_call(model, adapted, (sx,)), sy)
            grads = torch.autograd.grad(loss, [adapted[n] for n in names], create_graph=not first_order)
            adapted = {n: adapted[n] - alpha * g for n, g in zip(names, grads)}
        total = total + F.mse_loss(functional_call(model, adapted, (qx,)), qy)
    meta = total / batch[0].shape[0]
    return meta.item(), dict(zip(names, torch.autograd.grad(meta, [theta[n] for n in names])))


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
def test_one_meta_step_equals_a_hand_written_reference_exactly(batching, first_order):
    # the meta-gradient left in .grad by meta_step, against a reference built from autograd.grad alone:
    # a loss scaled by 3 (which Adam's first step cannot see) or a first-order slip fails here
    torch.manual_seed(0)
    model = make_mlp(hidden=8).double()
    learner = MetaLearner(model, F.mse_loss, MetaConfig(inner_lr=0.05, inner_steps=2, meta_lr=0.01,
                                                        first_order=first_order, batching=batching))
    batch = tuple(t.double() for t in sampler(torch.Generator().manual_seed(3)))
    theta = {k: v.detach().clone().requires_grad_() for k, v in learner.params.items()}
    ref_loss, ref_grads = hand_written_meta_gradient(model, theta, batch, 0.05, 2, first_order)
    metrics = learner.meta_step(*batch)
    assert metrics["meta_loss"] == pytest.approx(ref_loss, rel=1e-12)
    for k, p in learner.params.items():
        torch.testing.assert_close(p.grad, ref_grads[k], rtol=1e-10, atol=1e-12)
        g = ref_grads[k]  # Adam's first step: θ − β·g/(|g| + ε)
        torch.testing.assert_close(p.detach(), theta[k].detach() - 0.01 * g / (g.abs() + 1e-8), rtol=0, atol=1e-12)


def test_cosine_meta_lr_and_first_order_warm_up():
    from mamlkit.trainer import meta_lr_at

    config = MetaConfig(meta_lr=1e-3, meta_lr_schedule="cosine", meta_lr_min=1e-5, first_order_steps=2)
    assert meta_lr_at(config, 0, 100) == pytest.approx(1e-3)
    assert meta_lr_at(config, 50, 100) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert meta_lr_at(config, 100, 100) == pytest.approx(1e-5)
    assert meta_lr_at(MetaConfig(meta_lr=1e-3), 50, 100) == 1e-3
    learner = MetaLearner(make_mlp(hidden=8), F.mse_loss, config)
    seen = []
    for _ in range(3):
        seen.append(learner.first_order_now())
        learner.meta_step(*sampler(torch.Generator().manual_seed(0)))
    assert seen == [True, True, False]
    # train() sets β of every step from the schedule: after 10 of 10 steps the optimizer holds step 9's β
    learner = make_learner(meta_lr=1e-3, meta_lr_schedule="cosine")
    train(learner, sampler, iterations=10, progress=False)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(meta_lr_at(learner.config, 9, 10))
    with pytest.raises(ValueError, match="meta_lr_schedule"):
        MetaConfig(meta_lr_schedule="linear")
    with pytest.raises(ValueError, match="first_order_steps"):
        MetaConfig(first_order_steps=-1)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_a_meta_step_reads_the_device_once(batching, device_reads):
    # the counter sees each kind of read (else the test below could not fail)
    assert device_reads(lambda: (torch.tensor(1.0).item(), float(torch.tensor(2.0)))) == ["item", "__float__"]
    learner = make_learner(batching=batching, inner_steps=2)
    batch = sampler(torch.Generator().manual_seed(0))
    learner.meta_step(*batch)  # warm-up: lazy initialisations may read values once
    reads = device_reads(lambda: learner.meta_step(*batch))
    assert len(reads) <= 1, f"meta_step synchronised with the device {len(reads)} times: {reads}"


def test_checkpoint_records_training_seconds_summed_over_resumes(tmp_path, monkeypatch):
    clock = iter(range(0, 1000, 10))  # each perf_counter() call: 10 s later
    monkeypatch.setattr(mamlkit.trainer.time, "perf_counter", lambda: float(next(clock)))
    path = tmp_path / "run.pt"
    train(make_learner(), sampler, iterations=2, checkpoint_path=path, checkpoint_every=2, progress=False)
    first = load_checkpoint(path)
    assert (first["seconds"], first["seconds_from_step"]) == (10.0, 0)  # start at 0, saved at 10
    train(make_learner(), sampler, iterations=4, checkpoint_path=path, checkpoint_every=2, progress=False)
    assert load_checkpoint(path)["seconds"] == 20.0  # 10 s more in the resumed session
    legacy = {k: v for k, v in load_checkpoint(path).items() if k not in ("seconds", "seconds_from_step")}
    save_checkpoint(legacy, path)  # a checkpoint from before the time was recorded
    train(make_learner(), sampler, iterations=6, checkpoint_path=path, checkpoint_every=2, progress=False)
    assert load_checkpoint(path)["seconds_from_step"] == 4  # the time of steps 1-4 is unknown, and says so


@pytest.mark.parametrize("first_order", [False, True])
def test_zero_head_keeps_the_head_at_zero_and_follows_the_bodys_meta_gradient(first_order):
    import math

    from mamlkit.experiments.fewshot import FewShotConfig, make_learner

    config = FewShotConfig(n_way=5, k_shot=1, q_query=2, meta_batch_size=2, width=8, meta_lr=0.01, zero_head=True,
                           first_order=first_order)
    learner = make_learner(config)
    assert learner.head_params and all(float(p.detach().abs().max()) == 0 for p in learner.head_params)
    g = torch.Generator().manual_seed(0)
    images = ((torch.rand(10, 20, 28, 28, generator=g) > 0.8) * 255).to(torch.uint8)
    from mamlkit.data.episodes import EpisodeSampler

    batch = EpisodeSampler(images, n_way=5, k_shot=1, q_query=2, meta_batch_size=2).sample(g)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    # independent of the trainer: mamlkit.meta_loss at θ (head = 0), and Adam's first step -β·g/(|g| + ε)
    loss = meta_loss(learner.model, learner.params, *batch, loss_fn=F.cross_entropy, inner_lr=config.inner_lr,
                     first_order=first_order)
    grads = dict(zip(learner.params, torch.autograd.grad(loss, list(learner.params.values()))))
    metrics = learner.meta_step(*batch)
    assert metrics["support_loss"] == pytest.approx(math.log(5), rel=1e-6)  # zero logits: uniform before adapting
    for k, p in learner.params.items():
        if k.startswith("head."):
            assert float(p.detach().abs().max()) == 0, k  # not meta-learned
        else:
            torch.testing.assert_close(p.detach(), before[k] - 0.01 * grads[k] / (grads[k].abs() + 1e-8), rtol=0, atol=1e-6)
    assert config.variant == ("fomaml" if first_order else "maml") + "_zerohead"
    with pytest.raises(ValueError, match="zero_head"):
        FewShotConfig(algorithm="protonet", inner_steps=0, test_steps=1, zero_head=True)


def test_a_per_layer_alpha_gets_the_meta_gradient_of_finite_differences_and_of_meta_sgd_summed():
    # learn_inner_lr="layer": θ' = θ − α_l ∇θ L for every entry of layer l. Two independent references for
    # ∂L_meta/∂α_l: central finite differences in float64, and the chain rule through Meta-SGD's per-entry α
    # (every entry of layer l equal to α_l, so ∂L/∂α_l = Σ over those entries of ∂L/∂α_entry)
    torch.manual_seed(0)
    model = make_mlp(hidden=8).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    batch = [t.double() for t in sampler(torch.Generator().manual_seed(1))]
    rates = {k: 0.01 * (i + 1) for i, k in enumerate(params)}  # a different α per layer

    def loss_at(alpha):
        return meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=alpha, steps=2)

    layer = {k: torch.tensor(r, dtype=torch.float64, requires_grad=True) for k, r in rates.items()}
    g_layer = torch.autograd.grad(loss_at(layer), list(layer.values()))
    entry = {k: torch.full_like(p, rates[k], requires_grad=True) for k, p in params.items()}
    g_entry = torch.autograd.grad(loss_at(entry), list(entry.values()))
    for (k, g), ge in zip(zip(layer, g_layer), g_entry):
        assert g.shape == ()
        torch.testing.assert_close(g, ge.sum(), rtol=1e-10, atol=1e-12)
        h = 1e-6
        up = {j: torch.tensor(rates[j] + (h if j == k else 0.0), dtype=torch.float64) for j in rates}
        down = {j: torch.tensor(rates[j] - (h if j == k else 0.0), dtype=torch.float64) for j in rates}
        fd = (loss_at(up) - loss_at(down)).item() / (2 * h)
        assert g.item() == pytest.approx(fd, rel=1e-5, abs=1e-9), k


def test_a_learner_with_per_layer_alpha_learns_one_number_per_tensor_and_resumes_exactly(tmp_path):
    straight = make_learner(learn_inner_lr="layer", meta_lr=1e-2)
    assert all(v.shape == () and v.item() == pytest.approx(0.01) for v in straight.inner_lr.values())
    train(straight, sampler, iterations=20, seed=3, progress=False)
    assert all(v.item() != pytest.approx(0.01) for v in straight.inner_lr.values())  # each α moved
    ckpt = tmp_path / "run.pt"
    first = make_learner(learn_inner_lr="layer", meta_lr=1e-2)
    train(first, sampler, iterations=10, seed=3, checkpoint_path=ckpt, checkpoint_every=5, progress=False)
    resumed = make_learner(seed=7, learn_inner_lr="layer", meta_lr=1e-2)
    train(resumed, sampler, iterations=20, seed=3, checkpoint_path=ckpt, checkpoint_every=5, progress=False)
    assert torch.equal(params_of(resumed), params_of(straight))
    assert all(torch.equal(resumed.inner_lr[k], straight.inner_lr[k]) for k in straight.inner_lr)
    with pytest.raises(ValueError, match="learn_inner_lr"):  # Meta-SGD's checkpoint is another experiment
        train(make_learner(learn_inner_lr=True, meta_lr=1e-2), sampler, iterations=30, checkpoint_path=ckpt,
              progress=False)
