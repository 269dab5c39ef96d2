"""Every bad input a clear error, nothing lost: a table of wrong calls across the public API and the command lines.

Each case is (id, call, expected exception, regex): `call(c)` gets a context `c` (tiny models, batches,
data and checkpoints built once per module, and pytest's monkeypatch) and must raise the exception with
a message matching the regex, which names the argument (or the file / option) and what was expected.
A command line must end with a one-line message (SystemExit), never a traceback. After every case the
files of the context are byte for byte what they were: a refused call writes nothing and loses nothing.

Models are tiny (an MLP of width 8, a Conv4 of width 4) so the whole table runs in seconds on one thread.
"""
import hashlib
import io
import os
import re
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mamlkit
from mamlkit import (
    MetaConfig,
    MetaLearner,
    adapt,
    adapt_batch,
    inner_step,
    load_checkpoint,
    meta_loss,
    predict_batch,
    save_checkpoint,
    train,
)
from mamlkit.bench import run as bench_run
from mamlkit.checkpoint import atomic_save, atomic_write_text, check_writable
from mamlkit.data import omniglot
from mamlkit.data.augment import random_affine
from mamlkit.data.characters import OmniglotData
from mamlkit.data.episodes import EpisodeSampler
from mamlkit.data.preprocess import preprocess
from mamlkit.experiments import fewshot_cli, lake
from mamlkit.experiments.fewshot import (
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    train_fewshot,
)
from mamlkit.experiments.sinusoid import make_mlp, sample_tasks
from mamlkit.maml import single_task_forward
from mamlkit.models.conv4 import make_conv4

torch.set_num_threads(1)
NAN, INF = float("nan"), float("inf")


def images(classes=6, examples=20, seed=0) -> torch.Tensor:
    """uint8 (classes, examples, 28, 28): random strokes, enough for tiny 3-way tasks."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(classes, examples, 28, 28, generator=g) > 0.7) * 255).to(torch.uint8)


def tiny_fewshot(**kw) -> FewShotConfig:
    base = dict(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=4, downsample="stride", iterations=1,
                inner_lr=0.4)
    return FewShotConfig(**{**base, **kw})


def mlp(hidden=8, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return make_mlp(hidden=hidden)


def sinusoid_sampler(generator):
    return sample_tasks(2, 3, 4, generator=generator).tensors()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Everything the cases use, made once: models, batches, data, checkpoints, broken files."""
    d = tmp_path_factory.mktemp("bad_inputs")
    n = SimpleNamespace(dir=d)
    # sinusoid: an MLP 1-8-8-1, 2 tasks of K=3 support and Q=4 query points, (tasks, K, 1) each
    n.mlp = mlp()
    n.params = dict(n.mlp.named_parameters())
    n.sx, n.sy, n.qx, n.qy = sample_tasks(2, 3, 4, generator=torch.Generator().manual_seed(0)).tensors()
    n.alpha = {k: torch.full_like(p, 0.1) for k, p in n.params.items()}  # Meta-SGD α
    # classification: Conv4 3-way of width 4, 2 tasks of 3-way 1-shot with 2 query images per class
    torch.manual_seed(0)
    n.conv = make_conv4(3, width=4, downsample="stride")
    n.conv_params = dict(n.conv.named_parameters())
    n.data = images()
    n.csx, n.csy, n.cqx, n.cqy = EpisodeSampler(n.data, n_way=3, k_shot=1, q_query=2, meta_batch_size=2).sample(
        torch.Generator().manual_seed(0))
    # checkpoints: a sinusoid run of train(), a few-shot run of train_fewshot(), and broken files
    n.sin_ckpt = d / "sinusoid.pt"
    train(MetaLearner(mlp(), F.mse_loss, MetaConfig(inner_lr=0.01)), sinusoid_sampler, iterations=2,
          checkpoint_path=n.sin_ckpt, progress=False)
    n.cos_ckpt = d / "cosine.pt"
    train(MetaLearner(mlp(), F.mse_loss, MetaConfig(meta_lr_schedule="cosine")), sinusoid_sampler, iterations=2,
          checkpoint_path=n.cos_ckpt, progress=False)
    n.fs_ckpt = d / "fewshot.pt"
    train_fewshot(tiny_fewshot(), checkpoint_path=n.fs_ckpt, data=n.data, progress=False)
    n.classifier = FewShotClassifier.from_checkpoint(n.fs_ckpt)
    state = load_checkpoint(n.fs_ckpt)
    state.pop("format")
    state["learner"]["fewshot"]["width"] = 8  # the config says width 8, the weights are width 4
    n.tampered = d / "tampered.pt"
    save_checkpoint(state, n.tampered)
    n.not_a_run = d / "not_a_run.pt"
    save_checkpoint({"step": 1}, n.not_a_run)
    whole = n.sin_ckpt.read_bytes()
    n.truncated = d / "truncated.pt"
    n.truncated.write_bytes(whole[: len(whole) // 2])
    n.foreign = d / "foreign.pt"
    torch.save({"step": 1}, n.foreign)  # a valid torch file, not a mamlkit checkpoint
    n.wrong_tag = d / "wrong_tag.pt"
    torch.save({"format": "mamlkit-checkpoint-v0", "learner": {}}, n.wrong_tag)
    n.empty = d / "empty.pt"
    n.empty.write_bytes(b"")
    n.afile = d / "a_file.txt"
    n.afile.write_text("not a folder")
    n.folder = d / "a_folder"
    n.folder.mkdir()
    n.nowhere = d / "does" / "not" / "exist"
    # CSVs for `python -m mamlkit.bench --replot`
    n.csv_garbage = d / "garbage.csv"
    n.csv_garbage.write_text("hello,world\n1,2\n")
    n.csv_empty = d / "empty.csv"
    n.csv_empty.write_text("")
    n.csv_binary = d / "binary.csv"
    n.csv_binary.write_bytes(bytes(range(256)) * 4)
    n.csv_section = d / "section.csv"
    header, width = ",".join(bench_run.COLUMNS) + "\n", len(bench_run.COLUMNS)
    n.csv_section.write_text(header + ",".join(["lunch"] + ["1"] * (width - 1)) + "\n")
    n.csv_words = d / "words.csv"
    n.csv_words.write_text(header + ",".join(["time", "conv4", "m", "second"] + ["many"] * (width - 4)) + "\n")
    # an Omniglot-shaped folder that is not in Omniglot's layout
    n.bad_layout = d / "bad_layout"
    (n.bad_layout / "stuff").mkdir(parents=True)
    return n


@pytest.fixture
def c(built, monkeypatch):
    """The module's context plus this test's monkeypatch (`c.mp`), on a machine without CUDA or MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    return SimpleNamespace(**vars(built), mp=monkeypatch)


# ------------------------------------------------------------------------------------------------
# small builders for the cases


def sin_learner(**config):
    return MetaLearner(mlp(), F.mse_loss, MetaConfig(**config))


def conv_learner():
    torch.manual_seed(0)
    return MetaLearner(make_conv4(3, width=4, downsample="stride"), F.cross_entropy, MetaConfig(inner_lr=0.4))


def with_label(y: torch.Tensor, value: int) -> torch.Tensor:
    y = y.clone()
    y.view(-1)[0] = value
    return y


def pixels(value, n=3) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[0, 0, 5, 5] = value
    return x


def sin_adapt(c, sx=None, sy=None, **kw):
    kw = {"loss_fn": F.mse_loss, "inner_lr": 0.1, **kw}
    params = kw.pop("params", c.params)
    return adapt(kw.pop("model", c.mlp), params, c.sx[0] if sx is None else sx, c.sy[0] if sy is None else sy, **kw)


def sin_batch(c, sx=None, sy=None, **kw):
    kw = {"loss_fn": F.mse_loss, "inner_lr": 0.1, **kw}
    return adapt_batch(c.mlp, kw.pop("params", c.params), c.sx if sx is None else sx, c.sy if sy is None else sy, **kw)


def sin_meta(c, **tensors):
    t = {"support_x": c.sx, "support_y": c.sy, "query_x": c.qx, "query_y": c.qy}
    kw = {"loss_fn": F.mse_loss, "inner_lr": 0.1}
    for k, v in tensors.items():
        (t if k in t else kw)[k] = v
    return meta_loss(c.mlp, c.params, t["support_x"], t["support_y"], t["query_x"], t["query_y"], **kw)


def conv_meta(c, sy=None, qy=None, qx=None, batching="loop"):
    return meta_loss(c.conv, c.conv_params, c.csx, c.csy if sy is None else sy, c.cqx if qx is None else qx,
                     c.cqy if qy is None else qy, loss_fn=F.cross_entropy, inner_lr=0.4, batching=batching)


def resume(c, learner, path=None, iterations=4, **kw):
    return train(learner, sinusoid_sampler, iterations=iterations, checkpoint_path=path or c.sin_ckpt,
                 progress=False, **kw)


def resume_fewshot(c, path=None, data=None, **config):
    return train_fewshot(tiny_fewshot(iterations=2, **config), checkpoint_path=path or c.fs_ckpt,
                         data=c.data if data is None else data, progress=False)


def classify(c, support=None, labels=None, query=None, **kw):
    support = torch.rand(3, 1, 28, 28) if support is None else support
    query = torch.rand(4, 1, 28, 28) if query is None else query
    return c.classifier.classify(support, torch.tensor([0, 1, 2]) if labels is None else labels, query, **kw)


def evaluate(c, model=None, test_images=None, **kw):
    kw = {"n_way": 3, "k_shot": 1, "tasks": 2, "q_query": 2, **kw}
    return evaluate_fewshot(c.classifier if model is None else model, c.data if test_images is None else test_images,
                            **kw)


def cli_train(c, *argv):
    return fewshot_cli.main(["train", "--n-way", "3", "--k-shot", "1", "--q-query", "2", "--meta-batch-size", "2",
                             "--width", "4", "--downsample", "stride", "--inner-lr", "0.4", "--iterations", "2",
                             *argv])


def diverging_meta_step():
    # a huge α: θ' after inner step 1 is ~1e30, its support loss overflows float32 at inner step 2
    learner = MetaLearner(mlp(), F.mse_loss, MetaConfig(inner_lr=1e30, inner_steps=2))
    x = torch.full((2, 3, 1), 3.0)
    return learner.meta_step(x, x * 100, x, x)


def bn_model():
    return nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


class NoParams(nn.Module):
    def forward(self, x):
        return x


# ------------------------------------------------------------------------------------------------
# the table: (id, call, exception, regex naming the argument and what was expected)

CASES = [
    # MetaConfig
    ("MetaConfig meta_lr=inf", lambda c: MetaConfig(meta_lr=INF), ValueError, r"meta_lr: expected a positive finite"),
    ("MetaConfig meta_lr=nan", lambda c: MetaConfig(meta_lr=NAN), ValueError, r"meta_lr: expected a positive finite"),
    ("MetaConfig meta_lr=-inf", lambda c: MetaConfig(meta_lr=-INF), ValueError, r"meta_lr"),
    ("MetaConfig meta_lr='1e-3'", lambda c: MetaConfig(meta_lr="1e-3"), TypeError, r"meta_lr: expected"),
    ("MetaConfig inner_lr=True", lambda c: MetaConfig(inner_lr=True), TypeError, r"inner_lr: expected"),
    ("MetaConfig inner_lr=nan", lambda c: MetaConfig(inner_lr=NAN), ValueError, r"inner_lr: expected a positive"),
    ("MetaConfig inner_lr='0.1'", lambda c: MetaConfig(inner_lr="0.1"), TypeError, r"inner_lr"),
    ("MetaConfig first_order='no'", lambda c: MetaConfig(first_order="no"), TypeError,
     r"first_order: expected True or False, got 'no'"),
    ("MetaConfig learn_inner_lr='yes'", lambda c: MetaConfig(learn_inner_lr="yes"), TypeError,
     r"learn_inner_lr: expected False, True \(Meta-SGD.*or 'layer'"),
    ("MetaConfig learn_inner_lr='entry'", lambda c: MetaConfig(learn_inner_lr="entry"), TypeError,
     r"learn_inner_lr: expected False, True .* got 'entry'"),
    ("MetaConfig bf16=1", lambda c: MetaConfig(bf16=1), TypeError, r"bf16: expected True or False"),
    ("MetaConfig grad_clip=inf", lambda c: MetaConfig(grad_clip=INF), ValueError, r"grad_clip: expected a positive"),
    ("MetaConfig grad_clip=True", lambda c: MetaConfig(grad_clip=True), TypeError, r"grad_clip"),
    ("MetaConfig grad_clip=0", lambda c: MetaConfig(grad_clip=0), ValueError, r"grad_clip"),
    ("MetaConfig meta_lr_min>meta_lr", lambda c: MetaConfig(meta_lr_min=0.1), ValueError, r"meta_lr_min: expected"),
    ("MetaConfig meta_lr_min=nan", lambda c: MetaConfig(meta_lr_min=NAN), ValueError, r"meta_lr_min"),
    ("MetaConfig inner_steps=1.5", lambda c: MetaConfig(inner_steps=1.5), ValueError, r"inner_steps: expected"),
    ("MetaConfig batching=list", lambda c: MetaConfig(batching=["vmap"]), ValueError, r"batching: expected one of"),
    ("MetaConfig meta_lr_schedule=None", lambda c: MetaConfig(meta_lr_schedule=None), ValueError,
     r"meta_lr_schedule: expected one of"),
    ("MetaConfig first_order_steps=True", lambda c: MetaConfig(first_order_steps=True), ValueError,
     r"first_order_steps"),
    # FewShotConfig
    ("FewShotConfig meta_lr=inf", lambda c: FewShotConfig(meta_lr=INF), ValueError, r"meta_lr: expected a positive"),
    ("FewShotConfig meta_lr=nan", lambda c: FewShotConfig(meta_lr=NAN), ValueError, r"meta_lr"),
    ("FewShotConfig inner_lr=True", lambda c: FewShotConfig(inner_lr=True), TypeError, r"inner_lr"),
    ("FewShotConfig first_order='no'", lambda c: FewShotConfig(first_order="no"), TypeError, r"first_order"),
    ("FewShotConfig augment='yes'", lambda c: FewShotConfig(augment="yes"), TypeError, r"augment"),
    ("FewShotConfig device=cuda without CUDA", lambda c: FewShotConfig(device="cuda"), ValueError,
     r"device: 'cuda'.*no CUDA device"),
    ("FewShotConfig device=cuda:3 without CUDA", lambda c: FewShotConfig(device="cuda:3"), ValueError, r"device"),
    ("FewShotConfig device=mps without MPS", lambda c: FewShotConfig(device="mps"), ValueError, r"device: 'mps'"),
    ("FewShotConfig device=tpu", lambda c: FewShotConfig(device="tpu"), ValueError, r"device: expected"),
    ("FewShotConfig seed=-1", lambda c: FewShotConfig(seed=-1), ValueError, r"seed: expected an integer >= 0"),
    ("FewShotConfig split=random", lambda c: FewShotConfig(split="random"), ValueError, r"split: expected one of"),
    ("FewShotConfig q_query=0", lambda c: FewShotConfig(q_query=0), ValueError, r"q_query"),
    ("FewShotConfig width=2.0", lambda c: FewShotConfig(width=2.0), ValueError, r"width"),
    ("FewShotConfig meta_lr_schedule=linear", lambda c: FewShotConfig(meta_lr_schedule="linear"), ValueError,
     r"meta_lr_schedule"),
    # adapt: one task
    ("adapt support_x of 3 features for Linear(1, 8)", lambda c: sin_adapt(c, sx=torch.randn(3, 3)), ValueError,
     r"support_x: the model rejected inputs of shape \(3, 3\)"),
    ("adapt MSE support_y (K,) for predictions (K, 1)", lambda c: sin_adapt(c, sy=c.sy[0, :, 0]), ValueError,
     r"support_y: float targets must have the shape of the model's predictions, \(3, 1\)"),
    ("adapt empty support set", lambda c: sin_adapt(c, sx=c.sx[0, :0], sy=c.sy[0, :0]), ValueError,
     r"support_x: the support set is empty"),
    ("adapt support_y count differs", lambda c: sin_adapt(c, sy=c.sy[0, :2]), ValueError, r"support_y: expected 3"),
    ("adapt support_x a list", lambda c: sin_adapt(c, sx=[[0.0]] * 3), TypeError, r"support_x: expected a tensor"),
    ("adapt params missing a key", lambda c: sin_adapt(c, params={k: v for k, v in c.params.items() if k != "4.bias"}),
     KeyError, r"params: .*missing \['4.bias'\]"),
    ("adapt params with an extra key", lambda c: sin_adapt(c, params={**c.params, "head.weight": torch.ones(1)}),
     KeyError, r"params: .*unexpected \['head.weight'\]"),
    ("adapt params of a wrong shape", lambda c: sin_adapt(c, params={**c.params, "0.weight": torch.ones(8, 2)}),
     ValueError, r"params\['0.weight'\]: expected shape \(8, 1\)"),
    ("adapt params a list", lambda c: sin_adapt(c, params=list(c.params.values())), TypeError, r"params: expected"),
    ("adapt Meta-SGD alpha missing a key",
     lambda c: sin_adapt(c, inner_lr={k: v for k, v in c.alpha.items() if k != "0.bias"}), KeyError,
     r"inner_lr: .*missing \['0.bias'\]"),
    ("adapt Meta-SGD alpha with an extra key", lambda c: sin_adapt(c, inner_lr={**c.alpha, "x": torch.ones(1)}),
     KeyError, r"inner_lr: .*unexpected \['x'\]"),
    ("adapt Meta-SGD alpha of a wrong shape", lambda c: sin_adapt(c, inner_lr={**c.alpha, "2.weight": torch.ones(8)}),
     ValueError, r"inner_lr\['2.weight'\]: expected the shape of params\['2.weight'\], \(8, 8\)"),
    ("adapt inner_lr=True", lambda c: sin_adapt(c, inner_lr=True), TypeError, r"inner_lr: expected"),
    ("adapt inner_lr=inf", lambda c: sin_adapt(c, inner_lr=INF), ValueError, r"inner_lr: expected a positive finite"),
    ("adapt first_order='no'", lambda c: sin_adapt(c, first_order="no"), TypeError, r"first_order: expected True"),
    ("adapt steps=-1", lambda c: sin_adapt(c, steps=-1), ValueError, r"steps: expected an integer >= 0"),
    ("adapt model not a module", lambda c: sin_adapt(c, model=lambda x: x), TypeError, r"model: expected"),
    ("adapt BatchNorm tracking running stats", lambda c: sin_adapt(c, model=bn_model(),
                                                                    params=dict(bn_model().named_parameters())),
     ValueError, r"model: .*BatchNorm"),
    ("adapt label 7 for a 3-way model",
     lambda c: adapt(c.conv, c.conv_params, c.csx[0], with_label(c.csy[0], 7), loss_fn=F.cross_entropy, inner_lr=0.4),
     ValueError, r"support_y: .*expected labels in 0\.\.2 \(the model has 3 outputs"),
    ("adapt label -1", lambda c: adapt(c.conv, c.conv_params, c.csx[0], with_label(c.csy[0], -1),
                                       loss_fn=F.cross_entropy, inner_lr=0.4),
     ValueError, r"support_y: .*0\.\.2"),
    ("adapt RGB images for a 1-channel Conv4",
     lambda c: adapt(c.conv, c.conv_params, c.csx[0].expand(-1, 3, -1, -1), c.csy[0], loss_fn=F.cross_entropy,
                     inner_lr=0.4),
     ValueError, r"support_x: the model rejected inputs of shape \(3, 3, 28, 28\)"),
    # adapt_batch: a batch of tasks
    ("adapt_batch loop 4 support tasks, 3 target tasks",
     lambda c: sin_batch(c, sx=torch.randn(4, 3, 1), sy=torch.randn(3, 3, 1), batching="loop"), ValueError,
     r"support_y: expected \(tasks, K\) = \(4, 3\)"),
    ("adapt_batch vmap 4 support tasks, 3 target tasks",
     lambda c: sin_batch(c, sx=torch.randn(4, 3, 1), sy=torch.randn(3, 3, 1), batching="vmap"), ValueError,
     r"support_y: expected \(tasks, K\)"),
    ("adapt_batch one task's (K, 1) without a task dimension", lambda c: sin_batch(c, sx=c.sx[0], sy=c.sy[0]),
     ValueError, r"support_x: expected float inputs of shape \(tasks, examples, features...\), got \(3, 1\)"),
    ("adapt_batch empty support sets", lambda c: sin_batch(c, sx=c.sx[:, :0], sy=c.sy[:, :0]), ValueError,
     r"support_x: the support set is empty"),
    ("adapt_batch no tasks", lambda c: sin_batch(c, sx=c.sx[:0], sy=c.sy[:0]), ValueError, r"support_x: no tasks"),
    ("adapt_batch support_x 1-D", lambda c: sin_batch(c, sx=torch.randn(3), sy=torch.randn(3)), ValueError,
     r"support_x: expected a tensor with a leading task dimension"),
    ("adapt_batch vmap MSE targets (tasks, K) for (tasks, K, 1)",
     lambda c: sin_batch(c, sy=c.sy[..., 0], batching="vmap"), ValueError, r"support_y: float targets must have"),
    ("adapt_batch loop MSE targets (tasks, K) for (tasks, K, 1)",
     lambda c: sin_batch(c, sy=c.sy[..., 0], batching="loop"), ValueError, r"support_y: float targets must have"),
    ("adapt_batch vmap input features mismatch",
     lambda c: sin_batch(c, sx=torch.randn(2, 3, 5), batching="vmap"), ValueError,
     r"support_x: the model rejected inputs of shape \(2, 3, 5\)"),
    ("adapt_batch loop label 9 in the last task",
     lambda c: adapt_batch(c.conv, c.conv_params, c.csx, torch.stack([c.csy[0], with_label(c.csy[1], 9)]),
                           loss_fn=F.cross_entropy, inner_lr=0.4, batching="loop"),
     ValueError, r"support_y: .*0\.\.2"),
    ("adapt_batch vmap label 9",
     lambda c: adapt_batch(c.conv, c.conv_params, c.csx, with_label(c.csy, 9), loss_fn=F.cross_entropy,
                           inner_lr=0.4, batching="vmap"),
     ValueError, r"support_y: .*0\.\.2"),
    ("adapt_batch batching=threads", lambda c: sin_batch(c, batching="threads"), ValueError,
     r"batching: expected one of"),
    ("adapt_batch Meta-SGD alpha with an extra key", lambda c: sin_batch(c, inner_lr={**c.alpha, "x": torch.ones(1)}),
     KeyError, r"inner_lr: .*unexpected"),
    ("adapt_batch params missing a key",
     lambda c: sin_batch(c, params={k: v for k, v in c.params.items() if k != "0.weight"}), KeyError,
     r"params: .*missing \['0.weight'\]"),
    ("predict_batch adapted for 2 tasks, x for 3",
     lambda c: predict_batch(c.mlp, {k: v.expand(2, *v.shape) for k, v in c.params.items()}, torch.randn(3, 4, 1)),
     ValueError, r"adapted\['0.weight'\]: expected shape \(3, 8, 1\)"),
    # meta_loss
    ("meta_loss MSE query_y (tasks, Q) for (tasks, Q, 1)", lambda c: sin_meta(c, query_y=c.qy[..., 0]), ValueError,
     r"query_y: float targets must have the shape of the model's predictions, \(2, 4, 1\)"),
    ("meta_loss MSE support_y (tasks, K, 1, 1)", lambda c: sin_meta(c, support_y=c.sy[..., None]), ValueError,
     r"support_y: float targets"),
    ("meta_loss query_x features mismatch", lambda c: sin_meta(c, query_x=torch.randn(2, 4, 2)), ValueError,
     r"query_x: the model rejected inputs of shape"),
    ("meta_loss query_x without a feature dimension", lambda c: sin_meta(c, query_x=c.qx[..., 0]), ValueError,
     r"query_x: expected float inputs of shape \(tasks, examples, features...\)"),
    ("meta_loss task counts disagree", lambda c: sin_meta(c, query_x=c.qx[:1], query_y=c.qy[:1]), ValueError,
     r"task dimensions disagree.*'query_x': 1"),
    ("meta_loss empty query set", lambda c: sin_meta(c, query_x=c.qx[:, :0], query_y=c.qy[:, :0]), ValueError,
     r"query_x: the query set is empty"),
    ("meta_loss first_order='no'", lambda c: sin_meta(c, first_order="no"), TypeError, r"first_order"),
    ("meta_loss query label 5 (loop)", lambda c: conv_meta(c, qy=with_label(c.cqy, 5)), ValueError,
     r"query_y: .*expected labels in 0\.\.2"),
    ("meta_loss query label 5 (vmap)", lambda c: conv_meta(c, qy=with_label(c.cqy, 5), batching="vmap"), ValueError,
     r"query_y: .*0\.\.2"),
    ("meta_loss support label 3", lambda c: conv_meta(c, sy=with_label(c.csy, 3)), ValueError, r"support_y: .*0\.\.2"),
    ("meta_loss query images of another size", lambda c: conv_meta(c, qx=torch.rand(2, 6, 1, 64, 64)), ValueError,
     r"query_x: the model rejected inputs of shape \(6, 1, 64, 64\)"),
    # inner_step
    ("inner_step theta a list",
     lambda c: inner_step(single_task_forward(c.mlp), list(c.params.values()), c.sx[0], c.sy[0], loss_fn=F.mse_loss,
                          inner_lr=0.1), TypeError, r"theta: expected a non-empty dict"),
    ("inner_step inner_lr=-1",
     lambda c: inner_step(single_task_forward(c.mlp), c.params, c.sx[0], c.sy[0], loss_fn=F.mse_loss, inner_lr=-1.0),
     ValueError, r"inner_lr: expected a positive finite"),
    ("inner_step first_order='yes'",
     lambda c: inner_step(single_task_forward(c.mlp), c.params, c.sx[0], c.sy[0], loss_fn=F.mse_loss, inner_lr=0.1,
                          first_order="yes"), TypeError, r"first_order: expected True or False"),
    ("inner_step Meta-SGD alpha missing a key",
     lambda c: inner_step(single_task_forward(c.mlp), c.params, c.sx[0], c.sy[0], loss_fn=F.mse_loss,
                          inner_lr={"0.weight": c.alpha["0.weight"]}), KeyError, r"inner_lr: .*missing"),
    # MetaLearner
    ("MetaLearner loss_fn not callable", lambda c: MetaLearner(mlp(), "mse", MetaConfig()), TypeError,
     r"loss_fn: expected a function"),
    ("MetaLearner config a dict", lambda c: MetaLearner(mlp(), F.mse_loss, {"inner_lr": 0.1}), TypeError,
     r"config: expected a MetaConfig"),
    ("MetaLearner model without parameters", lambda c: MetaLearner(NoParams(), F.mse_loss), ValueError,
     r"model: it has no parameters"),
    ("MetaLearner BatchNorm tracking running stats", lambda c: MetaLearner(bn_model(), F.mse_loss), ValueError,
     r"model: .*track_running_stats"),
    ("meta_step support_x without a task dimension", lambda c: sin_learner().meta_step(c.sx[0], c.sy[0], c.qx, c.qy),
     ValueError, r"support_x|task dimensions"),
    ("meta_step MSE query_y (tasks, Q)", lambda c: sin_learner().meta_step(c.sx, c.sy, c.qx, c.qy[..., 0]), ValueError,
     r"query_y: float targets must have the shape"),
    ("meta_step query label 3 of 3 classes",
     lambda c: conv_learner().meta_step(c.csx, c.csy, c.cqx, with_label(c.cqy, 3)), ValueError, r"query_y: .*0\.\.2"),
    ("meta_step inner loss diverges: names the meta-step", lambda c: diverging_meta_step(), FloatingPointError,
     r"inner step 2 of 2 \(task 0\).*at meta-step 1"),
    ("MetaLearner.adapt 4 support tasks, 3 target tasks",
     lambda c: sin_learner().adapt(torch.randn(4, 3, 1), torch.randn(3, 3, 1)), ValueError, r"support_y: expected"),
    ("MetaLearner.predict adapted of another model",
     lambda c: sin_learner().predict({"w": torch.ones(2, 1)}, c.qx), KeyError, r"adapted: .*missing"),
    ("MetaLearner.load_state_dict of another model",
     lambda c: MetaLearner(mlp(hidden=16), F.mse_loss, MetaConfig(inner_lr=0.01)).load_state_dict(
         load_checkpoint(c.sin_ckpt)["learner"]),
     ValueError, r"state: holds the parameters of another model; shapes"),
    # train(): resuming a checkpoint
    ("train resume with another inner_lr", lambda c: resume(c, sin_learner(inner_lr=0.02)), ValueError,
     r"checkpoint_path: .*sinusoid.pt.*another configuration.*'inner_lr': \(0.01, 0.02\)"),
    ("train resume with first_order flipped", lambda c: resume(c, sin_learner(inner_lr=0.01, first_order=True)),
     ValueError, r"checkpoint_path: .*'first_order': \(False, True\)"),
    ("train resume as Meta-SGD", lambda c: resume(c, sin_learner(inner_lr=0.01, learn_inner_lr=True)), ValueError,
     r"checkpoint_path: .*'learn_inner_lr'"),
    ("train resume with another meta_lr", lambda c: resume(c, sin_learner(inner_lr=0.01, meta_lr=0.01)), ValueError,
     r"checkpoint_path: .*'meta_lr'"),
    ("train resume with grad_clip", lambda c: resume(c, sin_learner(inner_lr=0.01, grad_clip=1.0)), ValueError,
     r"checkpoint_path: .*'grad_clip'"),
    ("train resume with another model",
     lambda c: resume(c, MetaLearner(mlp(hidden=16), F.mse_loss, MetaConfig(inner_lr=0.01))), ValueError,
     r"checkpoint_path: .*sinusoid.pt: holds the parameters of another model"),
    ("train resume of a few-shot checkpoint into an MLP",
     lambda c: resume(c, MetaLearner(mlp(), F.cross_entropy, tiny_fewshot().meta_config()), path=c.fs_ckpt),
     ValueError, r"checkpoint_path: .*fewshot.pt: holds the parameters of another model"),
    ("train resume a cosine run for other iterations", lambda c: resume(c, sin_learner(meta_lr_schedule="cosine"),
                                                                         path=c.cos_ckpt, iterations=5),
     ValueError, r"checkpoint_path: .*iterations=2.*cosine"),
    ("train resume a file that holds no run", lambda c: resume(c, sin_learner(), path=c.not_a_run), ValueError,
     r"checkpoint_path: .*not_a_run.pt holds no training run"),
    ("train resume a truncated file", lambda c: resume(c, sin_learner(), path=c.truncated), ValueError,
     r"truncated.pt is not a readable checkpoint"),
    ("train checkpoint_path is a folder", lambda c: resume(c, sin_learner(), path=c.folder), ValueError,
     r"checkpoint_path: .* is a folder"),
    ("train checkpoint_path inside a file", lambda c: resume(c, sin_learner(), path=c.afile / "run.pt"), ValueError,
     r"checkpoint_path: cannot save .*a_file.txt is a file, not a folder"),
    ("train sample_batch not callable",
     lambda c: train(sin_learner(), [c.sx, c.sy, c.qx, c.qy], iterations=1, progress=False), TypeError,
     r"sample_batch: expected a function"),
    ("train seed='0'", lambda c: train(sin_learner(), sinusoid_sampler, iterations=1, seed="0", progress=False),
     ValueError, r"seed: expected an integer"),
    ("train learner a model", lambda c: train(mlp(), sinusoid_sampler, iterations=1, progress=False), TypeError,
     r"learner: expected a MetaLearner"),
    ("train iterations=-1", lambda c: train(sin_learner(), sinusoid_sampler, iterations=-1, progress=False),
     ValueError, r"iterations: expected"),
    ("train a sampler with 3 query tasks",
     lambda c: train(sin_learner(), lambda g: (c.sx, c.sy, c.qx[:1], c.qy[:1]), iterations=1, progress=False),
     ValueError, r"task dimensions disagree"),
    # train_fewshot
    ("train_fewshot resume on other data", lambda c: resume_fewshot(c, data=images(seed=1)), ValueError,
     r"data: .*fewshot.pt was trained on other images"),
    ("train_fewshot resume with another inner_lr", lambda c: resume_fewshot(c, inner_lr=0.1), ValueError,
     r"checkpoint_path: .*another configuration.*inner_lr"),
    ("train_fewshot resume a sinusoid checkpoint", lambda c: resume_fewshot(c, path=c.sin_ckpt), ValueError,
     r"checkpoint_path: .*holds no FewShotConfig"),
    ("train_fewshot float data", lambda c: train_fewshot(tiny_fewshot(), checkpoint_path=c.dir / "new.pt",
                                                         data=c.data.float(), progress=False),
     ValueError, r"data: expected uint8 images"),
    ("train_fewshot checkpoint_path None",
     lambda c: train_fewshot(tiny_fewshot(), checkpoint_path=None, data=c.data, progress=False), ValueError,
     r"checkpoint_path: expected a file path"),
    ("train_fewshot checkpoint_path inside a file",
     lambda c: train_fewshot(tiny_fewshot(), checkpoint_path=c.afile / "x.pt", data=c.data, progress=False),
     ValueError, r"checkpoint_path: cannot save"),
    ("train_fewshot config a dict",
     lambda c: train_fewshot({"n_way": 3}, checkpoint_path=c.dir / "new.pt", data=c.data), TypeError,
     r"config: expected a FewShotConfig"),
    # FewShotClassifier
    ("classify NaN support pixel", lambda c: classify(c, support=pixels(NAN)), ValueError,
     r"support_images: holds NaN or inf pixels"),
    ("classify inf query pixel", lambda c: classify(c, query=pixels(INF, 4)), ValueError,
     r"query_images: holds NaN or inf pixels"),
    ("classify 0..255 float support images", lambda c: classify(c, support=pixels(255.0)), ValueError,
     r"support_images: float pixels must lie in \[0, 1\].*divide 0\.\.255 images by 255"),
    ("classify negative query pixels", lambda c: classify(c, query=pixels(-0.5, 4)), ValueError,
     r"query_images: float pixels must lie in \[0, 1\]"),
    ("classify numpy floats above 1", lambda c: classify(c, support=np.full((3, 40, 40), 2.0)), ValueError,
     r"support_images: float pixels must lie in \[0, 1\]"),
    ("classify a dict of images", lambda c: classify(c, query={"a": 1}), TypeError, r"query_images: expected a PIL"),
    ("classify query images 32x32", lambda c: classify(c, query=torch.rand(4, 1, 32, 32)), ValueError,
     r"query_images: expected a tensor of shape \(n, 1, 28, 28\)"),
    ("classify label 3 of a 3-way model", lambda c: classify(c, labels=torch.tensor([0, 1, 3])), ValueError,
     r"support_labels: .*3-way.*0\.\.2"),
    ("classify steps=-1", lambda c: classify(c, steps=-1), ValueError, r"steps: expected an integer >= 0"),
    ("FewShotClassifier.adapt NaN support", lambda c: c.classifier.adapt(pixels(NAN), torch.tensor([0, 1, 2])),
     ValueError, r"support_images: holds NaN"),
    ("FewShotClassifier inner_lr=-1", lambda c: FewShotClassifier(c.conv, n_way=3, inner_lr=-1.0, steps=1), ValueError,
     r"inner_lr: expected a positive"),
    ("from_checkpoint device=cuda without CUDA", lambda c: FewShotClassifier.from_checkpoint(c.fs_ckpt, device="cuda"),
     ValueError, r"device: 'cuda'.*no CUDA"),
    ("from_checkpoint of a sinusoid run", lambda c: FewShotClassifier.from_checkpoint(c.sin_ckpt), ValueError,
     r"path: .*sinusoid.pt holds no FewShotConfig"),
    ("from_checkpoint weights of another width", lambda c: FewShotClassifier.from_checkpoint(c.tampered), ValueError,
     r"path: .*tampered.pt: holds the parameters of another model"),
    ("from_checkpoint of a run-less file", lambda c: FewShotClassifier.from_checkpoint(c.not_a_run), ValueError,
     r"path: .*not_a_run.pt holds no learner"),
    # EpisodeSampler
    ("EpisodeSampler float images", lambda c: EpisodeSampler(c.data.float(), n_way=3, k_shot=1, q_query=2,
                                                              meta_batch_size=2), TypeError,
     r"images: expected dtype torch.uint8"),
    ("EpisodeSampler images 3-D", lambda c: EpisodeSampler(c.data[0], n_way=3, k_shot=1, q_query=2, meta_batch_size=2),
     ValueError, r"images: expected 4 dimensions"),
    ("EpisodeSampler n_way > classes", lambda c: EpisodeSampler(c.data, n_way=7, k_shot=1, q_query=2, meta_batch_size=2),
     ValueError, r"n_way: 7 classes per task, but images holds only 6"),
    ("EpisodeSampler k_shot + q_query > examples",
     lambda c: EpisodeSampler(c.data, n_way=3, k_shot=5, q_query=16, meta_batch_size=2), ValueError,
     r"k_shot \+ q_query: 5 \+ 16"),
    ("EpisodeSampler meta_batch_size=0",
     lambda c: EpisodeSampler(c.data, n_way=3, k_shot=1, q_query=2, meta_batch_size=0), ValueError,
     r"meta_batch_size: expected a positive integer"),
    ("EpisodeSampler.sample generator=0",
     lambda c: EpisodeSampler(c.data, n_way=3, k_shot=1, q_query=2, meta_batch_size=2).sample(0), TypeError,
     r"generator: expected a CPU torch.Generator"),
    # evaluate_fewshot
    ("evaluate_fewshot float test_images", lambda c: evaluate(c, test_images=c.data.float()), ValueError,
     r"test_images: expected uint8 images"),
    ("evaluate_fewshot n_way differs from the model", lambda c: evaluate(c, n_way=4), ValueError,
     r"n_way: the model has 3 outputs but the tasks are 4-way"),
    ("evaluate_fewshot bare module without inner_lr", lambda c: evaluate(c, model=c.conv), ValueError,
     r"inner_lr, steps: required"),
    ("evaluate_fewshot tasks=1", lambda c: evaluate(c, tasks=1), ValueError, r"tasks: need at least 2"),
    ("evaluate_fewshot seed='1'", lambda c: evaluate(c, seed="1"), ValueError, r"seed: expected an integer"),
    ("evaluate_fewshot a path instead of a model", lambda c: evaluate(c, model=str(c.fs_ckpt)), TypeError,
     r"learner_or_model: expected"),
    ("evaluate_fewshot k_shot + q_query > examples", lambda c: evaluate(c, k_shot=10, q_query=15), ValueError,
     r"k_shot \+ q_query"),
    # random_affine
    ("random_affine uint8 images", lambda c: random_affine(c.data[:2, :, None], torch.Generator()), ValueError,
     r"x: expected float images"),
    ("random_affine generator=None", lambda c: random_affine(torch.rand(2, 1, 28, 28), None), TypeError,
     r"generator: expected a CPU torch.Generator"),
    ("random_affine scale=1.5", lambda c: random_affine(torch.rand(2, 1, 28, 28), torch.Generator(), scale=1.5),
     ValueError, r"scale: expected a number in \[0, 1\)"),
    ("random_affine rotation=nan", lambda c: random_affine(torch.rand(2, 1, 28, 28), torch.Generator(), rotation=NAN),
     ValueError, r"rotation: expected a finite number"),
    # load_checkpoint
    ("load_checkpoint truncated", lambda c: load_checkpoint(c.truncated), ValueError,
     r"path: .*truncated.pt is not a readable checkpoint"),
    ("load_checkpoint empty file", lambda c: load_checkpoint(c.empty), ValueError,
     r"path: .*empty.pt is not a readable checkpoint"),
    ("load_checkpoint foreign torch file", lambda c: load_checkpoint(c.foreign), ValueError,
     r"path: .*foreign.pt is not a mamlkit-checkpoint-v1 file"),
    ("load_checkpoint wrong format tag", lambda c: load_checkpoint(c.wrong_tag), ValueError,
     r"path: .*wrong_tag.pt is not a mamlkit-checkpoint-v1 file"),
    ("load_checkpoint missing", lambda c: load_checkpoint(c.dir / "missing.pt"), FileNotFoundError,
     r"path: no checkpoint at .*missing.pt"),
    ("load_checkpoint a folder", lambda c: load_checkpoint(c.folder), FileNotFoundError,
     r"path: a folder, not a checkpoint file"),
    ("load_checkpoint map_location=cuda without CUDA", lambda c: load_checkpoint(c.sin_ckpt, map_location="cuda"),
     ValueError, r"map_location: 'cuda'.*no CUDA"),
    # splits, preprocessing, finding the data
    ("split_characters of a tensor", lambda c: omniglot.split_characters(c.data), TypeError,
     r"data: expected an OmniglotData"),
    ("split_characters all characters to test",
     lambda c: omniglot.split_characters(OmniglotData(c.data, [f"A/character{i:02d}" for i in range(6)], "t"),
                                         test_characters=6), ValueError, r"test_characters: expected an integer in 1\.\.5"),
    ("split_characters seed='0'",
     lambda c: omniglot.split_characters(OmniglotData(c.data, [f"A/character{i:02d}" for i in range(6)], "t"),
                                         seed="0"), TypeError, r"seed: expected an integer"),
    ("split_alphabets one name as a string",
     lambda c: omniglot.split_alphabets(OmniglotData(c.data, [f"A{i % 2}/character{i:02d}" for i in range(6)], "t"),
                                        test_alphabets="A1"), TypeError, r"test_alphabets: .*write \['A1'\]"),
    ("split_alphabets unknown alphabet",
     lambda c: omniglot.split_alphabets(OmniglotData(c.data, [f"A{i % 2}/character{i:02d}" for i in range(6)], "t"),
                                        test_alphabets=["Korean"]), ValueError, r"test_alphabets: \['Korean'\] not in"),
    ("split_alphabets every alphabet",
     lambda c: omniglot.split_alphabets(OmniglotData(c.data, [f"A{i % 2}/character{i:02d}" for i in range(6)], "t"),
                                        test_alphabets=["A0", "A1"]), ValueError, r"test_alphabets: .*every character"),
    ("preprocess 4x4 image", lambda c: preprocess(np.zeros((4, 4))), ValueError, r"images: .*at least 8x8"),
    ("preprocess NaN pixels", lambda c: preprocess(np.full((20, 20), NAN)), ValueError,
     r"images: float pixels must lie in \[0, 1\]"),
    ("preprocess a dict", lambda c: preprocess({"x": 1}), TypeError, r"images: expected a PIL image"),
    ("preprocess channels first", lambda c: preprocess(np.zeros((2, 3, 40, 40))), ValueError, r"images: .*channels-first"),
    ("find_omniglot MAMLKIT_DATA pointing nowhere",
     lambda c: (c.mp.setenv("MAMLKIT_DATA", str(c.nowhere)), omniglot.find_omniglot()), FileNotFoundError,
     r"MAMLKIT_DATA: .*does not exist"),
    ("load_omniglot_or_glyphs MAMLKIT_DATA pointing nowhere",
     lambda c: (c.mp.setenv("MAMLKIT_DATA", str(c.nowhere)), omniglot.load_omniglot_or_glyphs()), FileNotFoundError,
     r"MAMLKIT_DATA: .*does not exist"),
    ("find_omniglot path not in Omniglot's layout", lambda c: omniglot.find_omniglot(c.bad_layout), ValueError,
     r"path: .*bad_layout is not in Omniglot's layout"),
    ("rotate_classes of non-square images", lambda c: omniglot.rotate_classes(torch.zeros(2, 3, 28, 20)), ValueError,
     r"images: expected a tensor \(classes, examples, H, W\) with H == W"),
]

# command lines: (id, argv maker, regex). Semantic errors only (tests/test_cli.py has argparse's type errors).
COMMAND_CASES = [
    ("fewshot train --out inside a file", fewshot_cli.main, lambda c: ["train", "--iterations", "1", "--out",
                                                                       str(c.afile / "run.pt")],
     r"--out: cannot save .*is a file, not a folder"),
    ("fewshot train --out a folder", fewshot_cli.main, lambda c: ["train", "--iterations", "1", "--out", str(c.folder)],
     r"--out: .* is a folder"),
    ("fewshot train resume with another --inner-lr", None,
     lambda c: cli_train(c, "--out", str(c.fs_ckpt), "--inner-lr", "0.1"),
     r"checkpoint_path: .*another configuration.*'inner_lr': \(0.4, 0.1\)"),
    ("fewshot train resume with --first-order", None, lambda c: cli_train(c, "--out", str(c.fs_ckpt), "--first-order"),
     r"'first_order': \(False, True\)"),
    ("fewshot train resume a sinusoid checkpoint", None, lambda c: cli_train(c, "--out", str(c.sin_ckpt)),
     r"holds no FewShotConfig"),
    ("fewshot train resume a truncated file", None, lambda c: cli_train(c, "--out", str(c.truncated)),
     r"truncated.pt is not a readable checkpoint"),
    ("fewshot train MAMLKIT_DATA pointing nowhere", None,
     lambda c: (c.mp.setenv("MAMLKIT_DATA", str(c.nowhere)), cli_train(c, "--out", str(c.dir / "new.pt")))[1],
     r"MAMLKIT_DATA: .*does not exist"),
    ("fewshot train --data nowhere", None, lambda c: cli_train(c, "--out", str(c.dir / "new.pt"), "--data",
                                                               str(c.nowhere)),
     r"path: .*does not exist"),
    ("fewshot evaluate a missing file", fewshot_cli.main, lambda c: ["evaluate", str(c.dir / "missing.pt")],
     r"path: no checkpoint at"),
    ("fewshot evaluate a truncated file", fewshot_cli.main, lambda c: ["evaluate", str(c.truncated)],
     r"truncated.pt is not a readable checkpoint"),
    ("fewshot evaluate a foreign torch file", fewshot_cli.main, lambda c: ["evaluate", str(c.foreign)],
     r"foreign.pt is not a mamlkit-checkpoint-v1 file"),
    ("fewshot evaluate a sinusoid checkpoint", fewshot_cli.main, lambda c: ["evaluate", str(c.sin_ckpt)],
     r"holds no FewShotConfig"),
    ("fewshot evaluate weights of another model", fewshot_cli.main, lambda c: ["evaluate", str(c.tampered)],
     r"tampered.pt: holds the parameters of another model"),
    ("fewshot evaluate --data nowhere", fewshot_cli.main,
     lambda c: ["evaluate", str(c.fs_ckpt), "--data", str(c.nowhere)], r"path: .*does not exist"),
    ("lake a missing checkpoint", lake.main, lambda c: [str(c.dir / "missing.pt")], r"no checkpoint at"),
    ("lake a 3-way checkpoint", lake.main, lambda c: [str(c.fs_ckpt)], r"classifier: .*20-way.*n_way=3"),
    ("lake the same alphabet twice", lake.main, lambda c: [str(c.fs_ckpt), "--alphabets", "Korean", "Korean"],
     r"alphabets: each alphabet once"),
    ("lake --json inside a file", lake.main, lambda c: [str(c.fs_ckpt), "--json", str(c.afile / "out.json")],
     r"--json: cannot save"),
    ("bench --replot a missing CSV", bench_run.main, lambda c: ["--replot", str(c.dir / "missing.csv")],
     r"argument --replot: no CSV at"),
    ("bench --replot a CSV of other columns", bench_run.main, lambda c: ["--replot", str(c.csv_garbage)],
     r"argument --replot: .*garbage.csv is not a CSV written by python -m mamlkit.bench"),
    ("bench --replot an empty CSV", bench_run.main, lambda c: ["--replot", str(c.csv_empty)],
     r"argument --replot: .*empty.csv holds no rows"),
    ("bench --replot a binary file", bench_run.main, lambda c: ["--replot", str(c.csv_binary)],
     r"argument --replot: "),
    ("bench --replot an unknown section", bench_run.main, lambda c: ["--replot", str(c.csv_section)],
     r"argument --replot: .*line 2: section 'lunch'"),
    ("bench --replot words for numbers", bench_run.main, lambda c: ["--replot", str(c.csv_words)],
     r"argument --replot: .*line 2: expected numbers in the columns \['meta_batch_size'"),
    ("omniglot --data nowhere", omniglot.main, lambda c: ["--data", str(c.nowhere)], r"path: .*does not exist"),
]


def file_hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_is_large_and_its_ids_unique():
    ids = [case[0] for case in CASES] + [case[0] for case in COMMAND_CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("call, error, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_error(c, call, error, pattern):
    before = file_hashes(c.dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. F.mse_loss's broadcasting warning: the error is what counts here
        with pytest.raises(error) as raised:
            call(c)
    message = raised.value.args[0] if raised.value.args else ""  # KeyError's str() adds quotes: take the text
    assert isinstance(message, str) and re.search(pattern, message), message
    assert file_hashes(c.dir) == before, "a refused call changed or wrote a file"


@pytest.mark.parametrize("main, argv, pattern", [case[1:] for case in COMMAND_CASES],
                         ids=[case[0] for case in COMMAND_CASES])
def test_bad_command_line_is_one_line(c, capsys, main, argv, pattern):
    before = file_hashes(c.dir)
    with pytest.raises(SystemExit) as raised:
        args = argv(c)
        if main is not None:
            main(args)
    code = raised.value.code
    err = capsys.readouterr().err
    assert code not in (0, None) and "Traceback" not in err, (code, err)
    if isinstance(code, str):  # raise SystemExit(message): the whole message is one line
        message = code
        assert "\n" not in message, message
    else:  # argparse's parser.error: usage, then one line "prog: error: ...", exit status 2
        assert code == 2, (code, err)
        message = err.strip().splitlines()[-1]
        assert "error: argument" in message, err
    assert re.search(pattern, message), message
    assert file_hashes(c.dir) == before, "a refused command changed or wrote a file"


# ------------------------------------------------------------------------------------------------
# the rest of "nothing lost": what a table of exceptions cannot show


def test_refused_resume_leaves_the_learner_untouched(c):
    learner = MetaLearner(mlp(hidden=16, seed=3), F.mse_loss, MetaConfig(inner_lr=0.01))
    before = {k: v.detach().clone() for k, v in learner.model.state_dict().items()}
    with pytest.raises(ValueError, match="another model"):
        resume(c, learner)
    assert learner.step == 0
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())


def test_resume_with_another_batching_is_allowed(c, tmp_path):
    path = tmp_path / "run.pt"
    path.write_bytes(c.sin_ckpt.read_bytes())
    log = resume(c, sin_learner(inner_lr=0.01, batching="loop"), path=path, iterations=3)
    assert load_checkpoint(path)["learner"]["step"] == 3 and log


def test_fewshot_checkpoint_without_a_data_fingerprint_still_resumes(c, tmp_path):
    state = load_checkpoint(c.fs_ckpt)
    state.pop("format")
    del state["learner"]["data_sha256"]  # as written before fingerprints existed
    path = tmp_path / "old.pt"
    save_checkpoint(state, path)
    learner, _ = resume_fewshot(c, path=path, data=images(seed=1))
    assert learner.step == 2 and load_checkpoint(path)["learner"]["data_sha256"] == learner.data_sha256


def test_a_refused_command_writes_no_checkpoint(c, tmp_path):
    out = tmp_path / "sub" / "run.pt"
    c.mp.setenv("MAMLKIT_DATA", str(c.nowhere))
    with pytest.raises(SystemExit):
        cli_train(c, "--out", str(out))
    assert not out.exists()


def test_the_next_save_removes_temporary_files_of_interrupted_saves(tmp_path):
    path = tmp_path / "c.pt"
    stale = [tmp_path / ".c.pt.abcd1234.tmp", tmp_path / ".c.pt.zz_9yy8x.tmp"]  # left by killed saves
    keep = [tmp_path / ".other.pt.abcd1234.tmp", tmp_path / ".c.pt.backup.abcd1234.tmp", tmp_path / "c.pt.tmp"]
    for p in stale + keep:
        p.write_bytes(b"torn")
    save_checkpoint({"step": 1}, path)
    assert load_checkpoint(path)["step"] == 1
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)  # other files' temporaries and look-alikes stay
    (tmp_path / ".c.pt.qwertyui.tmp").write_bytes(b"torn")
    atomic_save({"x": 1}, path)
    atomic_write_text("{}", tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".c.pt")) == [".c.pt.backup.abcd1234.tmp"]


def test_a_save_leaves_the_temporary_file_of_another_process_saving_the_same_path(tmp_path):
    # two runs building the same data cache at once: the first to finish must not delete the other's file
    import subprocess
    import sys
    import time
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # a pid that has ended
    ended.wait()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live "writer"
    try:
        path = tmp_path / "c.pt"
        live = tmp_path / f".c.pt.pid{writer.pid}.abcd1234.tmp"
        dead = tmp_path / f".c.pt.pid{ended.pid}.abcd1234.tmp"
        old = tmp_path / f".c.pt.pid{writer.pid}.zzzz9999.tmp"
        for p in (live, dead, old):
            p.write_bytes(b"half written")
        day_ago = time.time() - 2 * 86400
        os.utime(old, (day_ago, day_ago))  # untouched for two days: stale whoever wrote it
        atomic_save({"x": 1}, path)
        assert live.exists(), "deleted the temporary file of a save still in progress in another process"
        assert not dead.exists() and not old.exists()
        # and the probe of check_writable survives too (it uses the same naming)
        check_writable(path, "out")
    finally:
        writer.kill()
        writer.wait()


def _omniglot_zip(path: Path) -> Path:
    from PIL import Image, ImageDraw

    with zipfile.ZipFile(path, "w") as z:
        for k in range(1, 3):
            for d in range(1, 21):
                im = Image.new("L", (105, 105), 255)
                ImageDraw.Draw(im).line([(10, 10 + 20 * k), (90, 15 + 20 * k + d % 3)], fill=0, width=4)
                buf = io.BytesIO()
                im.convert("1").save(buf, format="PNG")
                z.writestr(f"images_background/Alpha/character{k:02d}/{1000 + k:04d}_{d:02d}.png", buf.getvalue())
    return path


def test_an_unwritable_cache_folder_warns_and_loads_anyway(tmp_path, monkeypatch):
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    _omniglot_zip(data / "images_background.zip")
    blocked = tmp_path / "a_file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match=r"cache_dir: could not write the processed cache into .*a_file"):
        loaded = omniglot.load_omniglot(data, cache_dir=blocked / "cache")
    assert loaded.images.shape == (2, 20, 28, 28) and not loaded.from_cache

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(omniglot, "atomic_save", full_disk)
    with pytest.warns(UserWarning, match=r"No space left on device"):
        assert omniglot.load_omniglot(data, cache_dir=tmp_path / "cache").images.shape == (2, 20, 28, 28)


def test_good_inputs_still_work(c):
    # the checks refuse only what is wrong: the right shapes, Meta-SGD α, integer labels and a scalar α tensor
    adapted, losses = adapt_batch(c.mlp, c.params, c.sx, c.sy, loss_fn=F.mse_loss, inner_lr=c.alpha, steps=2)
    assert losses.shape == (2, 2) and adapted["0.weight"].shape == (2, 8, 1)
    alpha = {k: torch.tensor(0.1) for k in c.params}
    assert torch.isfinite(sin_meta(c, inner_lr=alpha))
    assert torch.isfinite(conv_meta(c))
    assert mamlkit.predict_batch(c.mlp, adapted, c.qx).shape == (2, 4, 1)
    assert classify(c, support=torch.rand(3, 28, 28), query=(torch.rand(2, 28, 28) * 255).to(torch.uint8)).shape == (2,)
