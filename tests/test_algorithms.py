"""ANIL, MAML++, Reptile, ProtoNets, ProtoMAML (mamlkit/algorithms/) against independent computations.

Float64 throughout the gradient checks: central finite differences, closed forms, hand-written loops.
Then each algorithm through the trainer: three meta-steps, and a resumed run that ends where a straight one does.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlkit import MetaConfig, MetaLearner, load_checkpoint, meta_loss, train
from mamlkit.algorithms import (
    VARIANTS,
    anil_meta_loss,
    init_inner_state,
    mamlpp,
    mamlpp_meta_loss,
    per_step_loss_weights,
    protomaml_head,
    protomaml_meta_loss,
    protonet_loss,
    protonet_task_losses,
    reptile_direction,
    reptile_targets,
    reptile_task_losses,
    task_losses_for,
)
from mamlkit.bench.baselines import finite_difference
from mamlkit.models.conv4 import make_conv4


def smooth_mlp(seed=0, sizes=(1, 5, 4, 1)):
    # tanh, not ReLU: finite differences need a smooth loss
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1])).double()


def regression_batch(tasks=3, k=5, q=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(tasks, k + q, 1, generator=g, dtype=torch.float64) * 4 - 2
    y = (torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64) + 0.5) * torch.sin(x)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


def classification_batch(tasks=2, n_way=3, k=2, q=2, features=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, n_way * k, features, generator=g, dtype=torch.float64)
    qx = torch.randn(tasks, n_way * q, features, generator=g, dtype=torch.float64)
    sy = torch.arange(n_way).repeat_interleave(k).repeat(tasks, 1)
    qy = torch.arange(n_way).repeat(q).repeat(tasks, 1)
    return sx, sy, qx, qy


def leaf(params):
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def grads(loss, params):
    out = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), out)}


def flat(d):
    return torch.cat([v.flatten() for v in d.values()])


# ----------------------------------------------------------------------------------------------- ANIL


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_anil_second_order_meta_gradient_matches_finite_differences(batching):
    model = smooth_mlp()
    params = leaf(dict(model.named_parameters()))
    batch = regression_batch()
    f = lambda p: anil_meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=0.3, steps=2, batching=batching)
    g = grads(f(params), params)
    torch.testing.assert_close(flat(g), finite_difference(f, params), rtol=1e-5, atol=1e-8)
    assert g["0.weight"].abs().max() > 1e-3 and g["4.weight"].abs().max() > 1e-3  # body and head both learn
    # ANIL is MAML with α = 0 on the body (a Meta-SGD α): the same loss and meta-gradient
    alpha = {k: torch.full_like(v, 0.3 if k.startswith("4.") else 0.0) for k, v in params.items()}
    maml = meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=alpha, steps=2, batching=batching)
    torch.testing.assert_close(maml, f(params), rtol=1e-12, atol=0)
    torch.testing.assert_close(flat(grads(maml, params)), flat(g), rtol=1e-10, atol=1e-12)


def test_anil_first_order_equals_its_closed_form():
    # body gradient = ∇ of the query loss at the adapted head, the head's inner gradient held constant
    model, alpha = smooth_mlp(1), 0.3
    params = leaf(dict(model.named_parameters()))
    batch = regression_batch(seed=2)
    body = model[:-1]
    total = 0.0
    for sx, sy, qx, qy in zip(*batch):
        theta_body = {k: v for k, v in params.items() if not k.startswith("4.")}
        w, b = params["4.weight"], params["4.bias"]
        fs, fq = functional_call(body, theta_body, (sx,)), functional_call(body, theta_body, (qx,))
        gw, gb = torch.autograd.grad(F.mse_loss(fs @ w.T + b, sy), [w, b])  # no graph: constants
        total = total + F.mse_loss(fq @ (w - alpha * gw).T + (b - alpha * gb), qy)
    closed = grads(total / 3, params)
    first = grads(anil_meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=alpha, first_order=True), params)
    torch.testing.assert_close(flat(first), flat(closed), rtol=1e-10, atol=1e-12)
    second = grads(anil_meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=alpha), params)
    assert (flat(second) - flat(first)).abs().max() > 1e-4  # the flag changes the body's meta-gradient


# --------------------------------------------------------------------------------------------- MAML++


def test_multi_step_loss_weights_sum_to_one_and_anneal_to_the_last_step():
    for steps in (1, 2, 5):
        assert per_step_loss_weights(steps, 0) == pytest.approx([1 / steps] * steps)
        previous = None
        for progress in np.linspace(0, 0.999, 12):
            w = per_step_loss_weights(steps, float(progress))
            assert sum(w) == pytest.approx(1.0) and len(w) == steps and min(w) > 0
            if previous is not None:  # the last weight grows, the others shrink
                assert w[-1] >= previous[-1] and all(a <= b for a, b in zip(w[:-1], previous[:-1]))
            previous = w
        assert per_step_loss_weights(steps, 1.0) == [0.0] * (steps - 1) + [1.0]
    # the paper's formula at half-way, 5 steps: non-final max(0.5/5, 0.006), final (1 + 4·0.5)/5
    assert per_step_loss_weights(5, 0.5) == pytest.approx([0.1] * 4 + [0.6])
    assert per_step_loss_weights(5, 0.99)[:4] == pytest.approx([0.006] * 4)  # floor 0.03/S
    # the trainer's weights at meta-step t: progress t / multi_step_loss_steps
    config = MetaConfig(algorithm="mamlpp", inner_steps=5, multi_step_loss_steps=10)
    assert task_losses_for(config, 5).keywords["loss_weights"] == pytest.approx([0.1] * 4 + [0.6])
    assert task_losses_for(config, 10).keywords["loss_weights"] == [0.0] * 4 + [1.0]


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_mamlpp_lslr_and_theta_gradients_match_finite_differences(batching):
    model = smooth_mlp(2)
    params = leaf(dict(model.named_parameters()))
    state = init_inner_state(model, 2, 0.1)
    with torch.no_grad():  # distinct α per layer and step, so a swapped index would show
        for i, v in enumerate(state.values()):
            v.copy_(torch.tensor([0.05 + 0.01 * i, 0.12 - 0.01 * i]))
    batch = regression_batch(seed=4)
    f = lambda p, s: mamlpp_meta_loss(model, p, *batch, loss_fn=F.mse_loss, inner_lr=s, steps=2,
                                      batching=batching, loss_weights=[0.3, 0.7])
    loss = f(params, state)
    g = grads(loss, {**params, **state})
    torch.testing.assert_close(flat({k: g[k] for k in state}), finite_difference(lambda s: f(params, s), state),
                               rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(flat({k: g[k] for k in params}), finite_difference(lambda p: f(p, state), params),
                               rtol=1e-5, atol=1e-8)
    assert all(g[k].abs().min() > 1e-6 for k in state)  # every α[name][step] is learned
    # at its initial state, last-step loss only and no BatchNorm, MAML++ is MAML
    fresh = init_inner_state(model, 2, 0.1)
    same = mamlpp_meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=fresh, steps=2, batching=batching)
    torch.testing.assert_close(same, meta_loss(model, params, *batch, loss_fn=F.mse_loss, inner_lr=0.1, steps=2),
                               rtol=1e-12, atol=0)


def test_mamlpp_per_step_batchnorm_gets_its_own_gradients():
    torch.manual_seed(0)
    model = make_conv4(2, width=2, image_size=16).double()
    params = leaf(dict(model.named_parameters()))
    state = init_inner_state(model, 2, 0.2)
    bn = {k: v for k, v in state.items() if k.startswith(mamlpp.BN)}
    assert set(bn) == {f"bn/block{i}.norm.{w}" for i in range(1, 5) for w in ("weight", "bias")}
    assert all(tuple(v.shape) == (2, 2) for v in bn.values())  # (steps, channels)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(2, 4, 1, 16, 16, generator=g, dtype=torch.float64), torch.tensor([[0, 0, 1, 1]] * 2),
             torch.randn(2, 4, 1, 16, 16, generator=g, dtype=torch.float64), torch.tensor([[0, 1, 0, 1]] * 2))
    f = lambda s: mamlpp_meta_loss(model, params, *batch, loss_fn=F.cross_entropy, inner_lr=s, steps=2,
                                   batching="loop", loss_weights=[0.4, 0.6])
    loss = f(state)
    everything = {**params, **state}
    g = dict(zip(everything, torch.autograd.grad(loss, list(everything.values()), allow_unused=True)))
    torch.testing.assert_close(flat({k: g[k] for k in bn}), finite_difference(lambda b: f({**state, **b}), bn),
                               rtol=1e-5, atol=1e-8)
    for k in bn:  # step 0's γ, β_bn and step 1's: both learned, each its own gradient
        assert g[k][0].abs().max() > 1e-6 and g[k][1].abs().max() > 1e-6
        assert not torch.allclose(g[k][0], g[k][1])
    assert g["block1.norm.weight"] is None  # the model's own γ is replaced by the per-step ones
    assert g["block1.conv.weight"] is not None and g["head.weight"] is not None


# -------------------------------------------------------------------------------------------- Reptile


class Linear(nn.Module):
    """f(x) = x·θ: an MSE loss is a quadratic with gradient 2/n Xᵀ(Xθ − y)."""

    def __init__(self, d):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d, dtype=torch.float64))

    def forward(self, x):
        return x @ self.theta


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_reptile_direction_equals_closed_form_sgd(batching):
    rng = np.random.default_rng(0)
    tasks, n, d, alpha, k = 3, 6, 4, 0.05, 3
    xs, ys, xq, yq = rng.normal(size=(tasks, n, d)), rng.normal(size=(tasks, n)), rng.normal(size=(tasks, n, d)), \
        rng.normal(size=(tasks, n))
    theta = rng.normal(size=d)
    expected = []
    for X, y in zip(xs, ys):
        t = theta.copy()
        for _ in range(k):
            t = t - alpha * 2 / n * X.T @ (X @ t - y)
        expected.append(t)
    expected = np.stack(expected)  # θ̃ᵢ
    torch.manual_seed(0)
    model = Linear(d)
    with torch.no_grad():
        model.theta.copy_(torch.from_numpy(theta))
    params = dict(model.named_parameters())
    batch = tuple(torch.from_numpy(a) for a in (xs, ys, xq, yq))
    targets, _ = reptile_targets(model, params, batch[0], batch[1], loss_fn=F.mse_loss, inner_lr=alpha, steps=k,
                                 batching=batching)
    np.testing.assert_allclose(targets["theta"].numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(reptile_direction(params, targets)["theta"].numpy(), (expected - theta).mean(0),
                               rtol=1e-12, atol=1e-14)
    # the trainer's per-task term: value = query loss of θ̃ᵢ, gradient of its mean = 1/B Σ (θ − θ̃ᵢ)
    terms, _, _ = reptile_task_losses(model, params, *batch, loss_fn=F.mse_loss, inner_lr=alpha, steps=k,
                                      batching=batching)
    query = [np.mean((Xq @ t - y) ** 2) for Xq, y, t in zip(xq, yq, expected)]
    np.testing.assert_allclose(terms.detach().numpy(), query, rtol=1e-12)
    (g,) = torch.autograd.grad(terms.mean(), [model.theta])
    np.testing.assert_allclose(g.numpy(), (theta - expected).mean(0), rtol=1e-10, atol=1e-14)
    # through the trainer: .grad holds it, and SGD with lr = ε takes θ + ε 1/B Σ (θ̃ᵢ − θ)
    learner = MetaLearner(model, F.mse_loss, MetaConfig(algorithm="reptile", inner_lr=alpha, inner_steps=k,
                                                        batching=batching))
    learner.optimizer = torch.optim.SGD(list(learner.params.values()), lr=0.5)
    metrics = learner.meta_step(*batch)
    np.testing.assert_allclose(model.theta.grad.numpy(), (theta - expected).mean(0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(model.theta.detach().numpy(), theta + 0.5 * (expected - theta).mean(0), rtol=1e-12)
    assert metrics["meta_loss"] == pytest.approx(np.mean(query), rel=1e-12)


# ------------------------------------------------------------------------------- ProtoNets, ProtoMAML


def class_mlp(seed=0, n_way=3):
    return smooth_mlp(seed, sizes=(2, 5, 3, n_way))  # body: 2 -> 5 -> 3 (tanh), head: Linear(3, n_way)


def by_hand(model, params, sx, sy, qx):
    """Per task: the prototypes c_k, the logits −‖φ(x) − c_k‖² with Python loops, and φ(query)."""
    body = model[:-1]
    theta = {k: v for k, v in params.items() if not k.startswith("4.")}
    out = []
    for x, y, xq in zip(sx, sy, qx):
        f, fq = functional_call(body, theta, (x,)), functional_call(body, theta, (xq,))
        c = torch.stack([f[y == k].mean(0) for k in range(3)])
        logits = torch.stack([torch.stack([-((fq[j] - c[k]) ** 2).sum() for k in range(3)]) for j in range(len(xq))])
        out.append((c, logits, fq))
    return out


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_protonet_logits_are_negative_squared_distances_to_prototypes(batching):
    model = class_mlp()
    params = leaf(dict(model.named_parameters()))
    batch = classification_batch()
    losses, support, logits = protonet_task_losses(model, params, *batch, loss_fn=F.cross_entropy, batching=batching)
    hand = by_hand(model, params, batch[0], batch[1], batch[2])
    torch.testing.assert_close(logits, torch.stack([h[1] for h in hand]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses, torch.stack([F.cross_entropy(h[1], y) for h, y in zip(hand, batch[3])]))
    assert support.shape == (2, 0)  # no inner loop


def test_protonet_gradient_matches_finite_differences():
    model = class_mlp(1)
    params = leaf(dict(model.named_parameters()))
    body = {k: v for k, v in params.items() if not k.startswith("4.")}
    batch = classification_batch(seed=3)
    f = lambda b: protonet_loss(model, {**params, **b}, *batch)
    g = grads(f(body), params)
    torch.testing.assert_close(flat({k: g[k] for k in body}), finite_difference(f, body), rtol=1e-5, atol=1e-8)
    assert flat({k: g[k] for k in params if k.startswith("4.")}).abs().max() == 0  # the head is not used


def test_protomaml_head_is_the_prototype_classifier():
    model = class_mlp(2)
    params = leaf(dict(model.named_parameters()))
    batch = classification_batch(seed=5)
    body = model[:-1]
    theta = {k: v for k, v in params.items() if not k.startswith("4.")}
    features = torch.stack([functional_call(body, theta, (x,)) for x in batch[0]])
    w, b = protomaml_head(features, batch[1], 3)
    for i, (c, logits, fq) in enumerate(by_hand(model, params, batch[0], batch[1], batch[2])):
        torch.testing.assert_close(w[i], 2 * c, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b[i], -(c ** 2).sum(-1), rtol=1e-12, atol=1e-12)
        # W φ + b = −‖φ − c‖² + ‖φ‖²: the same softmax as ProtoNet's
        torch.testing.assert_close(fq @ w[i].T + b[i], logits + (fq ** 2).sum(-1, keepdim=True))
    # so with no inner step ProtoMAML's loss is ProtoNet's
    zero = protomaml_meta_loss(model, params, *batch, loss_fn=F.cross_entropy, inner_lr=0.1, steps=0)
    torch.testing.assert_close(zero, protonet_loss(model, params, *batch), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adapt_body,batching", [(True, "vmap"), (True, "loop"), (False, "vmap")])
def test_protomaml_meta_gradient_matches_finite_differences(adapt_body, batching):
    model = class_mlp(3)
    params = leaf(dict(model.named_parameters()))
    body = {k: v for k, v in params.items() if not k.startswith("4.")}
    batch = classification_batch(seed=7)
    f = lambda b: protomaml_meta_loss(model, {**params, **b}, *batch, loss_fn=F.cross_entropy, inner_lr=0.5,
                                      steps=2, batching=batching, adapt_body=adapt_body)
    g = grads(f(body), params)
    torch.testing.assert_close(flat({k: g[k] for k in body}), finite_difference(f, body), rtol=1e-5, atol=1e-8)
    assert flat({k: g[k] for k in params if k.startswith("4.")}).abs().max() == 0  # replaced by the prototypes
    # the inner loop matters: two steps move the loss away from ProtoNet's
    assert abs(f(body).item() - protonet_loss(model, params, *batch).item()) > 1e-4


# -------------------------------------------------------------------------------------------- trainer


def conv_sampler(g):
    x = torch.randn(2, 6, 1, 16, 16, generator=g)
    y = torch.arange(3).repeat(2).repeat(2, 1)
    return x[:, :3], y[:, :3], x[:, 3:], y[:, 3:]


def conv_learner(variant, seed=0):
    torch.manual_seed(seed)
    config = MetaConfig(**VARIANTS[variant], inner_lr=0.1, inner_steps=2, meta_lr=0.01, multi_step_loss_steps=4)
    return MetaLearner(make_conv4(3, width=4, image_size=16), F.cross_entropy, config)


def learned(learner):
    lr = learner.inner_lr
    return torch.cat([p.detach().flatten() for p in learner.params.values()]
                     + ([v.detach().flatten() for v in lr.values()] if isinstance(lr, dict) else []))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_algorithm_trains_and_resumes_exactly(variant, tmp_path):
    straight = conv_learner(variant)
    start = learned(straight).clone()
    log = train(straight, conv_sampler, iterations=3, seed=1, log_every=1, progress=False)
    assert [m["step"] for m in log] == [1, 2, 3] and all(np.isfinite(m["meta_loss"]) for m in log)
    assert not torch.equal(learned(straight), start)
    ckpt, calls = tmp_path / "run.pt", []

    def interrupted(g):  # the run dies while drawing the batch of meta-step 3 (MAML++'s cosine β needs
        calls.append(1)  # the same `iterations` on resume, so the run is cut, not shortened)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return conv_sampler(g)

    with pytest.raises(KeyboardInterrupt):
        train(conv_learner(variant), interrupted, iterations=3, seed=1, checkpoint_path=ckpt, checkpoint_every=1,
              progress=False)
    resumed = conv_learner(variant, seed=99)  # another θ (and state): all of it comes from the checkpoint
    train(resumed, conv_sampler, iterations=3, seed=1, checkpoint_path=ckpt, progress=False)
    assert resumed.step == 3 and torch.equal(learned(resumed), learned(straight))
    state = torch.load(ckpt, weights_only=True)["learner"]
    assert state["config"]["algorithm"] == VARIANTS[variant]["algorithm"]
    if variant == "mamlpp":  # the learned per-step α and BatchNorm are in the checkpoint, and were trained
        saved = load_checkpoint(ckpt)["learner"]["inner_lr"]
        assert {k.split("/")[0] for k in saved} == {"lslr", "bn"} and saved["lslr/head.weight"].shape == (2,)
        assert not torch.equal(saved["lslr/head.weight"], torch.full((2,), 0.1))
        assert saved["bn/block1.norm.weight"].shape == (2, 4)


def test_trainer_meta_step_is_the_algorithms_meta_gradient():
    model = smooth_mlp(5)
    batch = regression_batch(seed=6)
    for algorithm, loss in (("anil", anil_meta_loss), ("mamlpp", mamlpp_meta_loss)):
        learner = MetaLearner(model, F.mse_loss, MetaConfig(algorithm=algorithm, inner_lr=0.1, inner_steps=2,
                                                            multi_step_loss_steps=0, batching="vmap"))
        extra = learner.inner_lr if algorithm == "mamlpp" else {}
        theta = {**learner.params, **extra}
        kw = {"inner_lr": learner.inner_lr} if algorithm == "mamlpp" else {"inner_lr": 0.1}
        expected = grads(loss(model, learner.params, *batch, loss_fn=F.mse_loss, steps=2, **kw), theta)
        learner.meta_step(*batch)
        for k, p in theta.items():
            torch.testing.assert_close(p.grad, expected[k], rtol=1e-10, atol=1e-14)
        learner.optimizer.zero_grad(set_to_none=True)


def test_meta_sgd_goes_through_the_same_switch():
    torch.manual_seed(0)
    learner = MetaLearner(make_conv4(3, width=4, image_size=16), F.cross_entropy,
                          MetaConfig(**VARIANTS["metasgd"], inner_lr=0.1))
    assert learner.config.algorithm == "maml" and isinstance(learner.inner_lr, dict)
    anil = MetaLearner(make_conv4(3, width=4, image_size=16), F.cross_entropy,
                       MetaConfig(algorithm="anil", learn_inner_lr=True, inner_lr=0.1))
    anil.meta_step(*conv_sampler(torch.Generator().manual_seed(0)))
    assert anil.inner_lr["head.weight"].grad.abs().max() > 0 and anil.inner_lr["block1.conv.weight"].grad is None


@pytest.mark.parametrize("kwargs,error,match", [
    ({"algorithm": "fomaml"}, ValueError, "algorithm: expected one of"),
    ({"algorithm": "mamlpp", "learn_inner_lr": True}, ValueError, "learn_inner_lr: .*LSLR"),
    ({"algorithm": "reptile", "learn_inner_lr": True}, ValueError, "learn_inner_lr"),
    ({"algorithm": "mamlpp", "inner_steps": 0}, ValueError, "inner_steps"),
    ({"head": ""}, ValueError, "head: expected"),
    ({"multi_step_loss_steps": -1}, ValueError, "multi_step_loss_steps"),
])
def test_config_rejects_bad_algorithm_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        MetaConfig(**kwargs)


def test_head_algorithms_name_what_the_model_lacks():
    class NotSequential(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 3)

        def forward(self, x):
            return self.head(x)

    with pytest.raises(ValueError, match="nn.Sequential"):
        MetaLearner(NotSequential(), F.cross_entropy, MetaConfig(algorithm="anil"))
    with pytest.raises(ValueError, match="head: 'classifier' is not the model's last layer, which is 'head'"):
        MetaLearner(make_conv4(3, width=4, image_size=16), F.cross_entropy,
                    MetaConfig(algorithm="protonet", head="classifier"))
    with pytest.raises(ValueError, match="linear head"):
        MetaLearner(nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 3))), F.cross_entropy,
                    MetaConfig(algorithm="protomaml"))


@pytest.mark.parametrize("algorithm", ["anil", "mamlpp", "reptile", "protonet", "protomaml"])
def test_a_meta_step_still_reads_the_device_once(algorithm, device_reads):
    learner = conv_learner("maml")
    learner = MetaLearner(learner.model, F.cross_entropy, MetaConfig(algorithm=algorithm, inner_steps=2,
                                                                     multi_step_loss_steps=4))
    batch = conv_sampler(torch.Generator().manual_seed(0))
    learner.meta_step(*batch)
    reads = device_reads(lambda: learner.meta_step(*batch))
    assert len(reads) <= 1, f"meta_step synchronised with the device {len(reads)} times: {reads}"
