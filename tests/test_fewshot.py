"""fewshot.py: training lowers the loss, resumes exactly, stops on NaN; evaluation; the classifier's API.

Tiny data (classes built from random prototypes, so there is something to learn), width 8, a few steps.
"""
import hashlib
import json
import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mamlkit
from mamlkit.checks import check_model
from mamlkit.data.episodes import EpisodeSampler
from mamlkit.experiments import fewshot, fewshot_cli
from mamlkit.experiments.fewshot import (
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    export_weights,
    make_learner,
    train_fewshot,
)

torch.set_num_threads(1)


def prototype_images(classes=12, examples=20, seed=0) -> torch.Tensor:
    """uint8 (classes, examples, 28, 28): each class a random blob pattern, each example it with 10% pixels flipped."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, 1, 7, 7, generator=g) > 0.6  # coarse patterns, upsampled to 28x28
    protos = protos.float().repeat_interleave(4, 2).repeat_interleave(4, 3)  # (classes, 1, 28, 28)
    flips = torch.rand(classes, examples, 28, 28, generator=g) < 0.1
    return ((protos != flips.float()).float() * 255).to(torch.uint8)  # (classes, examples, 28, 28)


def tiny(**kw) -> FewShotConfig:
    base = dict(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=8, iterations=4, inner_lr=0.4)
    return FewShotConfig(**{**base, **kw})


def params_of(learner):
    return {k: v.detach().clone() for k, v in learner.params.items()}


def test_paper_defaults():
    five, twenty = FewShotConfig(n_way=5), FewShotConfig(n_way=20, k_shot=5)
    assert (five.inner_lr, five.inner_steps, five.test_steps, five.meta_batch_size) == (0.4, 1, 3, 32)
    assert (twenty.inner_lr, twenty.inner_steps, twenty.test_steps, twenty.meta_batch_size) == (0.1, 5, 5, 16)
    assert five.name == "omniglot_5way_1shot_maml"
    assert FewShotConfig(first_order=True).name.endswith("_fomaml")


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_way=1), "n_way"), (dict(k_shot=0), "k_shot"), (dict(inner_lr=-1.0), "inner_lr"),
    (dict(downsample="avg"), "downsample"), (dict(meta_batch_size=0), "meta_batch_size"), (dict(iterations=0), "iterations"),
])
def test_config_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        FewShotConfig(**kwargs)


def test_meta_training_lowers_the_query_loss(tmp_path):
    images = prototype_images()
    config = tiny(iterations=20, meta_batch_size=4, q_query=3, meta_lr=0.01)  # a large β: 20 steps must show it
    before = make_learner(config)
    check_model(before.model)
    sampler = EpisodeSampler(images, n_way=3, k_shot=1, q_query=3, meta_batch_size=40)
    batch = sampler.sample(torch.Generator().manual_seed(123))  # fixed held-out tasks

    def query_loss_after_adaptation(learner):
        curve = mamlkit.adaptation_curve(learner.model, learner.params, *batch, loss_fn=F.cross_entropy,
                                         inner_lr=config.inner_lr, steps=1)
        return curve["loss"][:, 1].mean().item()

    loss_before = query_loss_after_adaptation(before)
    learner, log = train_fewshot(config, checkpoint_path=tmp_path / "run.pt", data=images, progress=False, log_every=1)
    loss_after = query_loss_after_adaptation(learner)
    assert learner.step == 20 and len(log) == 20
    assert loss_after < 0.8 * loss_before, (loss_before, loss_after)


def test_resume_gives_identical_parameters(tmp_path):
    images = prototype_images()
    whole, _ = train_fewshot(tiny(iterations=6), checkpoint_path=tmp_path / "whole.pt", data=images, progress=False,
                             checkpoint_every=100)
    half, _ = train_fewshot(tiny(iterations=3), checkpoint_path=tmp_path / "split.pt", data=images, progress=False)
    assert half.step == 3
    resumed, _ = train_fewshot(tiny(iterations=6), checkpoint_path=tmp_path / "split.pt", data=images, progress=False)
    assert resumed.step == 6
    a, b = params_of(whole), params_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(params_of(half)["head.weight"], a["head.weight"])  # the second half did change θ


def test_resume_with_another_configuration_is_refused(tmp_path):
    images = prototype_images()
    train_fewshot(tiny(iterations=2), checkpoint_path=tmp_path / "run.pt", data=images, progress=False)
    with pytest.raises(ValueError, match="inner_lr"):
        train_fewshot(tiny(iterations=4, inner_lr=0.1), checkpoint_path=tmp_path / "run.pt", data=images, progress=False)


def test_nan_meta_loss_raises_and_keeps_the_checkpoint(tmp_path):
    images = prototype_images()
    config = tiny(iterations=3)
    path = tmp_path / "run.pt"
    train_fewshot(config, checkpoint_path=path, data=images, progress=False)
    saved = path.read_bytes()
    sampler = EpisodeSampler(images, n_way=3, k_shot=1, q_query=2, meta_batch_size=2)

    def poisoned(generator):  # the query images of every later batch hold a NaN
        support_x, support_y, query_x, query_y = sampler.sample(generator)
        query_x[0, 0, 0, 0, 0] = float("nan")
        return support_x, support_y, query_x, query_y

    learner = make_learner(tiny(iterations=6))
    with pytest.raises(FloatingPointError, match="meta-step 4"):
        mamlkit.train(learner, poisoned, iterations=6, seed=config.seed, checkpoint_path=path, progress=False)
    assert path.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temporary file left behind


def test_checkpoints_load_with_weights_only(tmp_path):
    config = tiny(iterations=2)
    train_fewshot(config, checkpoint_path=tmp_path / "run.pt", data=prototype_images(), progress=False)
    export_weights(tmp_path / "run.pt", tmp_path / "small.pt")
    for name in ("run.pt", "small.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        assert state["learner"]["fewshot"]["n_way"] == 3 and state["learner"]["step"] == 2
    full, small = torch.load(tmp_path / "run.pt", weights_only=True), torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer" in full["learner"] and "optimizer" not in small["learner"]
    assert all(torch.equal(full["learner"]["model"][k], v) for k, v in small["learner"]["model"].items())


# ----------------------------------------------------------------------------------------------
# evaluation


def hand_adapt(model, params, x, y, inner_lr, steps):
    """θ' = θ − α ∇θ L, written out with torch.autograd.grad: the reference for adapt and evaluation."""
    p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, p, (x,)), y)
        grads = torch.autograd.grad(loss, list(p.values()))
        p = {k: (v - inner_lr * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
    return {k: v.detach() for k, v in p.items()}


def test_evaluation_matches_a_hand_computation():
    images = prototype_images(classes=8, seed=1)
    torch.manual_seed(0)
    model = fewshot.make_conv4(3, width=8)
    tasks, steps, alpha = 7, 2, 0.4
    mean, ci = evaluate_fewshot(model, images, n_way=3, k_shot=1, tasks=tasks, steps=steps, seed=5, inner_lr=alpha,
                                q_query=4)
    # the same tasks (one meta-batch of 7 from the same seed), each adapted and scored by hand
    sampler = EpisodeSampler(images, n_way=3, k_shot=1, q_query=4, meta_batch_size=tasks)
    support_x, support_y, query_x, query_y = sampler.sample(torch.Generator().manual_seed(5))
    params = dict(model.named_parameters())
    accuracies = []
    for i in range(tasks):
        adapted = hand_adapt(model, params, support_x[i], support_y[i], alpha, steps)
        predicted = functional_call(model, adapted, (query_x[i],)).argmax(-1)
        accuracies.append((predicted == query_y[i]).float().mean().item())
    assert mean == pytest.approx(statistics.fmean(accuracies), abs=1e-6)
    assert ci == pytest.approx(1.96 * statistics.stdev(accuracies) / math.sqrt(tasks), abs=1e-6)


def test_evaluation_of_a_learner_uses_its_alpha_and_test_steps():
    images = prototype_images(classes=8, seed=2)
    learner = make_learner(tiny(test_steps=2, inner_lr=0.3))
    kw = dict(n_way=3, k_shot=1, tasks=6, seed=0, q_query=2, chunk=4)  # chunks of 4 + 2 tasks
    from_learner = evaluate_fewshot(learner, images, **kw)
    assert from_learner == evaluate_fewshot(learner.model, images, inner_lr=0.3, steps=2, **kw)
    assert from_learner != evaluate_fewshot(learner.model, images, inner_lr=0.3, steps=0, **kw)
    with pytest.raises(ValueError, match="n_way"):
        evaluate_fewshot(learner, images, **{**kw, "n_way": 4})
    with pytest.raises(ValueError, match="inner_lr"):
        evaluate_fewshot(learner.model, images, n_way=3, k_shot=1, tasks=6)


# ----------------------------------------------------------------------------------------------
# the classifier


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "run.pt"
    train_fewshot(tiny(iterations=2, test_steps=2), checkpoint_path=path, data=prototype_images(), progress=False)
    return FewShotClassifier.from_checkpoint(path)


def episode(seed=0, n_way=3, k_shot=2, q_query=3):
    sampler = EpisodeSampler(prototype_images(seed=7), n_way=n_way, k_shot=k_shot, q_query=q_query, meta_batch_size=1)
    return [t[0] for t in sampler.sample(torch.Generator().manual_seed(seed))]


def test_classify_matches_a_hand_adaptation(classifier):
    support_x, support_y, query_x, _ = episode()
    predicted = classifier.classify(support_x, support_y, query_x)
    assert predicted.shape == (query_x.shape[0],) and predicted.dtype == torch.int64
    adapted = hand_adapt(classifier.model, classifier.params, support_x, support_y, classifier.inner_lr, 2)
    logits = functional_call(classifier.model, adapted, (query_x,))
    assert torch.equal(predicted, logits.argmax(-1))
    # non-transductive: each query image normalized with the support set
    alone = classifier.classify(support_x, support_y, query_x, transductive=False)
    by_hand = torch.stack([functional_call(classifier.model, adapted, (torch.cat([support_x, q[None]]),))[-1].argmax()
                           for q in query_x])
    assert torch.equal(alone, by_hand)
    assert classifier.classify(support_x, support_y, query_x[:1], transductive=False).shape == (1,)


def test_classify_accepts_uint8_and_raw_images(classifier):
    support_x, support_y, query_x, _ = episode()
    as_float = classifier.classify(support_x, support_y, query_x)
    as_uint8 = classifier.classify((support_x[:, 0] * 255).to(torch.uint8), support_y.tolist(), query_x[:, 0])
    assert torch.equal(as_float, as_uint8)
    # raw images: dark strokes on white paper at 56x56, as a list of numpy arrays -> preprocess -> the same 28x28
    raw = lambda x: [(255 - (img[0] * 255)).to(torch.uint8).repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
                     for img in x]
    from mamlkit.data.omniglot import preprocess
    expected = classifier.classify(preprocess(raw(support_x)), support_y, preprocess(raw(query_x)))
    assert torch.equal(classifier.classify(raw(support_x), support_y, raw(query_x)), expected)


def test_classify_errors(classifier):
    support_x, support_y, query_x, _ = episode()
    with pytest.raises(ValueError, match="3-way"):  # only 2 of the 3 classes in the support set
        classifier.classify(support_x[support_y < 2], support_y[support_y < 2], query_x)
    with pytest.raises(ValueError, match="3-way"):  # a label outside 0..n_way-1
        classifier.classify(support_x, torch.where(support_y == 2, 5, support_y), query_x)
    with pytest.raises(ValueError, match="support_labels"):
        classifier.classify(support_x, support_y[:-1], query_x)
    with pytest.raises(ValueError, match="support_labels"):
        classifier.classify(support_x, support_y.float(), query_x)
    with pytest.raises(ValueError, match=r"query_images.*\(n, 1, 28, 28\)"):
        classifier.classify(support_x, support_y, torch.rand(4, 1, 32, 32))
    with pytest.raises(ValueError, match="support_images"):
        classifier.classify(torch.rand(support_x.shape[0], 3, 28, 28), support_y, query_x)
    with pytest.raises(TypeError, match="query_images"):
        classifier.classify(support_x, support_y, query_x.to(torch.int32))


def test_load_pretrained_verifies_the_checksum(tmp_path, monkeypatch, classifier):
    checkpoint = tmp_path / "omniglot_3way_1shot_maml.pt"
    train_fewshot(tiny(iterations=1), checkpoint_path=tmp_path / "full.pt", data=prototype_images(), progress=False)
    export_weights(tmp_path / "full.pt", checkpoint)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    table = {"runs": [{"name": "omniglot_3way_1shot_maml", "weights": checkpoint.name, "sha256": digest}]}
    (tmp_path / "omniglot_results.json").write_text(json.dumps(table))
    monkeypatch.setattr(fewshot, "WEIGHTS", tmp_path)
    monkeypatch.setattr(fewshot, "RESULTS_JSON", tmp_path / "omniglot_results.json")
    loaded = fewshot.load_pretrained(3, 1)
    assert loaded.n_way == 3 and loaded.steps == 3
    with pytest.raises(FileNotFoundError, match="omniglot_3way_5shot_maml"):
        fewshot.load_pretrained(3, 5)
    data = bytearray(checkpoint.read_bytes())
    data[-100] ^= 1  # one flipped bit
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fewshot.load_pretrained(3, 1)


@pytest.mark.skipif(not fewshot.RESULTS_JSON.is_file(), reason="no shipped checkpoints yet")
def test_shipped_checkpoints_load_and_beat_chance():
    table = json.loads(fewshot.RESULTS_JSON.read_text())
    for run in table["runs"]:
        assert run["accuracy"] - run["ci95"] > run["chance"], run["name"]
        if run["weights"]:
            path = fewshot.WEIGHTS / run["weights"]
            assert path.stat().st_size < 1_000_000
            clf = fewshot.load_pretrained(run["n_way"], run["k_shot"], run["algorithm"] == "FOMAML",
                                          run["config"].get("algorithm", "maml"))
            assert clf.n_way == run["n_way"]


def test_command_line_train_then_evaluate(tmp_path, monkeypatch, capsys):
    from mamlkit.data.omniglot import OmniglotData

    images = prototype_images(classes=16)
    names = [f"Tiny/character{i:02d}" for i in range(16)]
    whole = OmniglotData(images, names, "prototypes")
    train_set, test_set = OmniglotData(images[:10], names[:10], "train"), OmniglotData(images[10:], names[10:], "test")
    monkeypatch.setattr(fewshot, "omniglot_split", lambda path=None, **kwargs: (whole, train_set, test_set))
    path = tmp_path / "cli.pt"
    fewshot_cli.main(["train", "--n-way", "3", "--k-shot", "1", "--iterations", "2", "--out", str(path), "--width", "8",
                  "--meta-batch-size", "2", "--q-query", "2"])
    assert "2 meta-steps" in capsys.readouterr().out
    fewshot_cli.main(["evaluate", str(path), "--tasks", "5", "--seed", "3"])
    printed = capsys.readouterr().out
    clf = FewShotClassifier.from_checkpoint(path)
    mean, ci = evaluate_fewshot(clf, test_set.images, n_way=3, k_shot=1, tasks=5, seed=3)
    assert f"{100 * mean:.1f} ± {100 * ci:.1f} %" in printed
    assert "of prototypes" in printed and "Finn" not in printed  # the data named; no paper number beside it
    real = OmniglotData(images, names, "Omniglot (a stand-in for this test)")
    monkeypatch.setattr(fewshot, "omniglot_split", lambda path=None, **kwargs: (real, train_set, test_set))
    monkeypatch.setattr(fewshot_cli, "PAPER", {(3, 1, False): (50.0, 1.0)})  # as if the paper had a 3-way row
    fewshot_cli.main(["evaluate", str(path), "--tasks", "5", "--seed", "3"])
    assert "Finn et al. 2017, full background set: 50.0 ± 1.0 %" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="another configuration"):  # a clear message instead of a traceback
        fewshot_cli.main(["train", "--n-way", "3", "--iterations", "4", "--out", str(path), "--width", "16"])


def test_bf16_config_and_the_bf16_accuracy_command(tmp_path, monkeypatch, capsys):
    from mamlkit.data.omniglot import OmniglotData
    from mamlkit.experiments import fewshot_results

    config = tiny(bf16=True)
    assert config.name.endswith("_bf16") and config.meta_config().bf16 and not tiny().meta_config().bf16
    images = prototype_images(classes=16)
    names = [f"Tiny/character{i:02d}" for i in range(16)]
    split = (OmniglotData(images, names, "prototypes"), OmniglotData(images[:10], names[:10], "train"),
             OmniglotData(images[10:], names[10:], "test"))
    monkeypatch.setattr(fewshot_results, "omniglot_split", lambda path=None, **kwargs: split)
    out = tmp_path / "bf16.json"
    fewshot_cli.main(["bf16", "--runs-dir", str(tmp_path), "--json", str(out), "--iterations", "2", "--tasks", "5"])
    table = json.loads(out.read_text())
    fp32, bf16 = table["runs"]
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bf16 autocast")
    assert (fp32["config"]["bf16"], bf16["config"]["bf16"]) == (False, True)
    assert fp32["config"]["seed"] == bf16["config"]["seed"] and fp32["config"]["iterations"] == 2
    assert table["bf16_minus_fp32_points"] == pytest.approx(bf16["accuracy"] - fp32["accuracy"], abs=0.011)
    assert f"{table['bf16_minus_fp32_points']:+.2f} accuracy points" in capsys.readouterr().out
    assert (tmp_path / "omniglot_5way_1shot_maml_bf16.pt").is_file()  # the two runs do not share a checkpoint


# ----------------------------------------------------------------------------------------------
# `results` and `bf16`: the runs folder by default; shipped files only with --ship, never by a shorter run

SMOKE = ["--iterations", "1", "--width", "8", "--meta-batch-size", "2", "--tasks", "2"]


def digests(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of mamlkit/weights/ (and of the shipped bf16 JSON) that fewshot and fewshot_results take for the
    shipped files, tiny Omniglot stand-ins (30 characters: 20-way needs 20 test characters), cwd = tmp_path."""
    import shutil

    from mamlkit.data.omniglot import OmniglotData
    from mamlkit.experiments import fewshot_results
    from mamlkit.paths import RESULTS, WEIGHTS  # the real folders (not patched below)

    if not fewshot.RESULTS_JSON.is_file() or not fewshot_results.BF16_JSON.is_file():
        pytest.skip("no shipped results table in this checkout")
    real = {"weights": digests(fewshot.WEIGHTS), "bf16": fewshot_results.BF16_JSON.read_bytes()}
    weights = tmp_path / "weights"
    shutil.copytree(fewshot.WEIGHTS, weights)
    bf16_json = tmp_path / "results" / "bf16_accuracy.json"
    bf16_json.parent.mkdir()
    shutil.copyfile(fewshot_results.BF16_JSON, bf16_json)
    monkeypatch.setattr(fewshot, "WEIGHTS", weights)  # fewshot_results reads both through the fewshot module
    monkeypatch.setattr(fewshot, "RESULTS_JSON", weights / "omniglot_results.json")
    monkeypatch.setattr(fewshot_results, "BF16_JSON", bf16_json)
    images = prototype_images(classes=30)
    names = [f"Tiny/character{i:02d}" for i in range(30)]
    split = (OmniglotData(images, names, "prototypes"), OmniglotData(images[:10], names[:10], "train"),
             OmniglotData(images[10:], names[10:], "test"))
    monkeypatch.setattr(fewshot_results, "omniglot_split", lambda path=None, **kwargs: split)
    monkeypatch.chdir(tmp_path)
    yield {"weights": weights, "json": weights / "omniglot_results.json", "bf16_json": bf16_json}
    # whatever a test did, the real shipped files are as they were
    assert digests(WEIGHTS) == real["weights"] and (RESULTS / "bf16_accuracy.json").read_bytes() == real["bf16"]


def test_results_without_ship_write_only_the_runs_folder(shipped, tmp_path, capsys):
    before, bf16_before = digests(shipped["weights"]), shipped["bf16_json"].read_bytes()
    fewshot_cli.main(["results", *SMOKE])
    assert digests(shipped["weights"]) == before  # the shipped checkpoints and table: byte-identical
    table = json.loads((tmp_path / "runs" / "omniglot" / "omniglot_results.json").read_text())  # the default
    assert len(table["runs"]) == 6 and all(r["weights"] is None and r["config"]["iterations"] == 1 for r in table["runs"])
    assert (tmp_path / "runs" / "omniglot" / "omniglot_5way_1shot_maml.pt").is_file()
    assert "| 5-way 1-shot | MAML |" in capsys.readouterr().out
    fewshot_cli.main(["bf16", "--runs-dir", "runs/bf16", "--iterations", "1", "--tasks", "2"])
    assert (tmp_path / "runs" / "bf16" / "bf16_accuracy.json").is_file()  # the default: in the runs folder
    assert digests(shipped["weights"]) == before and shipped["bf16_json"].read_bytes() == bf16_before
    with pytest.raises(SystemExit, match="--json.*shipped table"):  # the shipped table is not a run's table
        fewshot_cli.main(["results", *SMOKE, "--json", str(shipped["json"])])


@pytest.mark.parametrize("argv, words", [
    (["results", "--ship", *SMOKE], ["--ship", "omniglot_5way_1shot_maml", "1 meta-steps", "600"]),
    (["results", "--ship", "--iterations", "100000", "--tasks", "2"], ["--ship", "tested on 2 tasks", "600"]),
    (["bf16", "--ship", "--iterations", "1", "--tasks", "600"], ["--ship", "omniglot_5way_1shot_maml_bf16"]),
])
def test_ship_of_a_shorter_run_is_refused_before_anything_is_written(shipped, tmp_path, argv, words):
    before, bf16_before = digests(shipped["weights"]), shipped["bf16_json"].read_bytes()
    with pytest.raises(SystemExit) as e:
        fewshot_cli.main(argv)
    message = str(e.value.code)
    assert message.startswith(f"python -m mamlkit.fewshot {argv[0]}: error:") and "\n" not in message
    assert all(w in message for w in words), message
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    assert digests(shipped["weights"]) == before and shipped["bf16_json"].read_bytes() == bf16_before


def test_ship_of_a_long_enough_run_replaces_the_shipped_files(shipped, tmp_path):
    before = digests(shipped["weights"])
    table = json.loads(shipped["json"].read_text())
    for run in table["runs"]:  # pretend the shipped table came from a run as short as this one
        run["config"]["iterations"], run["test_tasks"] = 1, 2
    shipped["json"].write_text(json.dumps(table))
    fewshot_cli.main(["results", "--ship", *SMOKE])
    table = json.loads(shipped["json"].read_text())
    shipped_runs = [r for r in table["runs"] if r["weights"] and r["algorithm"] != "ProtoNet"]
    assert sorted(r["name"] for r in shipped_runs) == ["omniglot_20way_1shot_maml", "omniglot_5way_1shot_maml",
                                                       "omniglot_5way_5shot_maml"]
    after = digests(shipped["weights"])
    for run in shipped_runs:
        assert after[run["weights"]] == run["sha256"] != before[run["weights"]]  # replaced, and recorded
    assert {k: v for k, v in after.items() if k.startswith("sinusoid")} == {
        k: v for k, v in before.items() if k.startswith("sinusoid")}
    assert all(r["config"]["iterations"] == 1 and r["test_tasks"] == 2 for r in table["runs"])
    assert "--ship" in table["command"]
    assert fewshot.load_pretrained(5, 1).config.width == 8  # the new checkpoint passes its checksum
    run_table = json.loads((tmp_path / "runs" / "omniglot" / "omniglot_results.json").read_text())
    by_name = {r["name"]: r for r in table["runs"]}
    assert [r["sha256"] for r in run_table["runs"]] == [by_name[r["name"]]["sha256"] for r in run_table["runs"]]
    # the rows `results` does not make (the study's prototypical network) stay, and their checkpoints load
    kept = {r["name"] for r in table["runs"]} - {r["name"] for r in run_table["runs"]}
    assert kept == {"omniglot_20way_1shot_protonet"} and by_name["omniglot_20way_1shot_protonet"]["sha256"] == before[
        "omniglot_20way_1shot_protonet.pt"]
    assert fewshot.load_pretrained(20, 1, algorithm="protonet").config.algorithm == "protonet"
    shipped["bf16_json"].unlink()  # no shipped bf16 JSON: nothing to be shorter than
    fewshot_cli.main(["bf16", "--ship", "--runs-dir", "runs/bf16", "--iterations", "1", "--tasks", "2"])
    assert json.loads(shipped["bf16_json"].read_text())["runs"][1]["config"]["bf16"] is True
