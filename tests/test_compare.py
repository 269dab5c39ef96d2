"""Beyond MAML on Omniglot: test-time adaptation of every algorithm, its checkpoints as classifiers, the comparison.

The test-time paths are checked against hand-written computations: MAML's θ' by explicit SGD on the
support set, ProtoNets by distances to class means, ANIL by SGD on the head alone, Meta-SGD's learned α.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit.algorithms import adapted_predictions
from mamlkit.data.episodes import EpisodeSampler
from mamlkit.experiments import compare
from mamlkit.experiments.fewshot import (
    FewShotClassifier,
    FewShotConfig,
    evaluate_fewshot,
    make_learner,
    saved_config,
    train_fewshot,
)


def images(classes=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(classes, 20, 28, 28, generator=g) > 0.8) * 255).to(torch.uint8)


def tasks(n_way=5, k_shot=1, q=3, count=2, seed=0):
    sampler = EpisodeSampler(images(), n_way=n_way, k_shot=k_shot, q_query=q, meta_batch_size=count)
    return sampler.sample(torch.Generator().manual_seed(seed))


def tiny(**changes):
    return FewShotConfig(n_way=5, k_shot=1, q_query=3, meta_batch_size=2, width=8, iterations=2, **changes)


def sgd(model, theta, x, y, lr, steps, names=None):
    """Plain SGD on the support set, one task: the independent reference for θ'."""
    theta = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        fast = {k: v.requires_grad_() for k, v in theta.items() if names is None or k in names}
        loss = F.cross_entropy(functional_call(model, {**theta, **fast}, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        step = {k: (lr[k] if isinstance(lr, dict) else lr) * g for k, g in zip(fast, grads)}
        theta = {k: (v - step[k]).detach() if k in step else v.detach() for k, v in theta.items()}
    return theta


def test_maml_test_time_predictions_are_sgd_on_the_support_set():
    learner = make_learner(tiny())
    sx, sy, qx, qy = tasks()
    _, out = adapted_predictions(learner.config, learner.model, learner.params, 0.4, sx, sy, qx, qy,
                                 loss_fn=F.cross_entropy, steps=2)
    for i in range(sx.shape[0]):
        theta = sgd(learner.model, learner.params, sx[i], sy[i], 0.4, 2)
        torch.testing.assert_close(out[i], functional_call(learner.model, theta, (qx[i],)), rtol=1e-4, atol=1e-5)
    assert not out.requires_grad and all(p.grad is None for p in learner.params.values())


def test_protonet_test_time_predictions_are_the_nearest_class_mean():
    learner = make_learner(tiny(algorithm="protonet", inner_steps=0, test_steps=1))
    sx, sy, qx, qy = tasks(k_shot=2)
    _, out = adapted_predictions(learner.config, learner.model, learner.params, 0.4, sx, sy, qx, qy,
                                 loss_fn=F.cross_entropy, steps=1)
    body = learner.model[:-1]
    for i in range(sx.shape[0]):
        with torch.no_grad():
            s, q = body(sx[i]), body(qx[i])
        means = torch.stack([s[sy[i] == c].mean(0) for c in range(5)])  # (5, features)
        nearest = torch.cdist(q, means).argmin(-1)
        assert torch.equal(out[i].argmax(-1), nearest)


def test_anil_checkpoint_classifies_by_adapting_the_head_only(tmp_path):
    config = tiny(algorithm="anil", inner_lr=0.5, test_steps=2)
    learner, _ = train_fewshot(config, checkpoint_path=tmp_path / "anil.pt", data=images(), progress=False)
    classifier = FewShotClassifier.from_checkpoint(tmp_path / "anil.pt")
    sx, sy, qx, _ = tasks()
    predicted = classifier.classify(sx[0], sy[0], qx[0])
    theta = sgd(learner.model, learner.params, sx[0], sy[0], 0.5, 2, names={"head.weight", "head.bias"})
    whole = sgd(learner.model, learner.params, sx[0], sy[0], 0.5, 2)  # what MAML's loop would do instead
    with torch.no_grad():
        expected = functional_call(learner.model, theta, (qx[0],)).argmax(-1)
        maml_logits = functional_call(learner.model, whole, (qx[0],))
        anil_logits = functional_call(learner.model, theta, (qx[0],))
    assert torch.equal(predicted, expected)
    _, out = adapted_predictions(classifier.config.meta_config(), classifier.model, classifier.params,
                                 classifier.inner_lr, sx[:1], sy[:1], qx[:1], torch.zeros(1, qx.shape[1], dtype=torch.int64),
                                 loss_fn=F.cross_entropy, steps=2)  # the logits behind classify's labels
    torch.testing.assert_close(out[0], anil_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(maml_logits, anil_logits, atol=1e-4)  # the check can tell ANIL from MAML
    with pytest.raises(ValueError, match="transductive"):
        classifier.classify(sx[0], sy[0], qx[0], transductive=False)


def test_meta_sgd_checkpoint_classifies_with_its_learned_alpha(tmp_path):
    train_fewshot(tiny(learn_inner_lr=True), checkpoint_path=tmp_path / "msgd.pt", data=images(), progress=False)
    state = torch.load(tmp_path / "msgd.pt", weights_only=False)
    alpha = state["learner"]["inner_lr"]
    assert isinstance(alpha, dict)
    classifier = FewShotClassifier.from_checkpoint(tmp_path / "msgd.pt")
    sx, sy, qx, _ = tasks()
    theta = sgd(classifier.model, classifier.params, sx[0], sy[0], alpha, 3)
    with torch.no_grad():
        expected = functional_call(classifier.model, theta, (qx[0],)).argmax(-1)
    assert torch.equal(classifier.classify(sx[0], sy[0], qx[0]), expected)
    for k, v in alpha.items():
        torch.testing.assert_close(classifier.inner_lr[k], v)


def test_evaluate_fewshot_uses_each_algorithms_own_test_loop():
    # a ProtoNet learner: accuracy = share of query images nearest their own class mean, by hand
    learner = make_learner(tiny(algorithm="protonet", inner_steps=0, test_steps=1))
    data = images()
    accuracy, _ = evaluate_fewshot(learner, data, n_way=5, k_shot=1, tasks=6, q_query=3, seed=3)
    sampler = EpisodeSampler(data, n_way=5, k_shot=1, q_query=3, meta_batch_size=6)
    sx, sy, qx, qy = sampler.sample(torch.Generator().manual_seed(3))
    body, correct = learner.model[:-1], []
    for i in range(6):
        with torch.no_grad():
            means = torch.stack([body(sx[i])[sy[i] == c].mean(0) for c in range(5)])
            correct.append((torch.cdist(body(qx[i]), means).argmin(-1) == qy[i]).float().mean())
    assert accuracy == pytest.approx(float(torch.stack(correct).mean()), abs=1e-6)


def test_mamlpp_test_steps_cannot_exceed_its_learned_steps():
    assert FewShotConfig(algorithm="mamlpp", inner_steps=3).test_steps == 3
    with pytest.raises(ValueError, match="test_steps: MAML\\+\\+"):
        FewShotConfig(algorithm="mamlpp", inner_steps=2, test_steps=3)


def test_variant_names_and_old_checkpoints():
    assert [tiny(**c).variant for c in ({}, {"first_order": True}, {"learn_inner_lr": True}, {"algorithm": "anil"},
                                        {"algorithm": "anil", "first_order": True})] == \
        ["maml", "fomaml", "metasgd", "anil", "anil_first_order"]
    assert tiny(first_order=True).name == "omniglot_5way_1shot_fomaml"  # shipped names unchanged
    old = {k: v for k, v in tiny().__dict__.items() if k not in ("algorithm", "learn_inner_lr", "multi_step_loss_steps")}
    assert saved_config(old) == tiny().__dict__  # a checkpoint from before the fields: read as MAML
    with pytest.raises(ValueError, match="algorithm"):
        tiny(algorithm="maml2")
    with pytest.raises(TypeError, match="learn_inner_lr"):
        tiny(learn_inner_lr="yes")


@pytest.mark.parametrize("setting", sorted(compare.SETTINGS))
def test_every_comparison_run_is_the_same_but_for_its_method(setting):
    configs = {m: compare.config_for(setting, m, 0) for m in compare.METHODS}
    shared = ("n_way", "k_shot", "q_query", "meta_batch_size", "iterations", "width", "downsample", "augment",
              "meta_lr", "meta_lr_schedule", "split", "seed")
    for name, config in configs.items():
        assert {k: getattr(config, k) for k in shared} == {k: getattr(configs["maml"], k) for k in shared}
        assert compare.method_of(config.__dict__) == name  # a result file names its method unambiguously
        assert compare.setting_of(config.__dict__) == setting
    assert len({json.dumps(c.__dict__, sort_keys=True) for c in configs.values()}) == len(configs)  # all distinct
    assert configs["mamlpp"].first_order_steps > 0 and configs["mamlpp"].multi_step_loss_steps > 0
    with pytest.raises(ValueError, match="method"):
        compare.config_for(setting, "matching_net", 0)


def test_summary_is_mean_and_sd_over_seeds_with_the_lake_error():
    results = []
    for seed, (acc, lake) in enumerate([(80.0, 30.0), (82.0, 26.0), (84.0, 28.0)]):
        results.append({"config": compare.config_for("20w1s", "anil", seed).__dict__, "accuracy": acc, "lake_error": lake,
                        "train_seconds": 60.0 * (seed + 1)})
    results.append({"config": compare.config_for("5w1s", "maml", 0, iterations=7).__dict__, "accuracy": 99.0})  # not ours
    summary = compare.summarize(results)
    assert list(summary) == ["20w1s"]
    entry = summary["20w1s"]["anil"]
    assert (entry["mean"], entry["sd"], entry["seeds"], entry["lake_error"], entry["lake_sd"]) == (82.0, 2.0, [0, 1, 2], 28.0, 2.0)
    table = compare.markdown(summary, {"20w1s": {"anil": {"ms_per_step": 12.5, "peak_mib": 3.0}}})
    row = next(line for line in table.splitlines() if line.startswith("| anil"))
    assert "82.00 ± 2.00" in row and "28.0 ± 2.0" in row and "12.5" in row and "96.2" in row and "Raghu" in row
    assert entry["train_minutes"] == 2.0 and "| — ; 2.0 |".replace(" ;", ";") in row  # 5-way not run: no minutes
    results[0].pop("train_seconds")  # one run from before the wall time was recorded: no mean over the rest
    assert "train_minutes" not in compare.summarize(results)["20w1s"]["anil"]


def test_cost_measures_every_method_it_is_given():
    cost = compare.measure_cost("5w1s", ("fomaml", "protonet"), rounds=1)
    assert set(cost) == {"fomaml", "protonet"}
    assert all(c["ms_per_step"] > 0 and c["peak_mib"] > 0 for c in cost.values())


def test_cli_table_writes_json_and_rejects_unknown_methods(tmp_path, capsys):
    config = compare.config_for("5w1s", "reptile", 0)
    (tmp_path / "5w1s_reptile_s0.pt.result.json").write_text(json.dumps({"config": config.__dict__, "accuracy": 90.0}))
    compare.main(["table", "--runs-dir", str(tmp_path), "--json", str(tmp_path / "out.json")])
    assert "| reptile | 90.00 (1 seed)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["5w1s"]["reptile"]["mean"] == 90.0
    with pytest.raises(SystemExit):
        compare.main(["run", "--methods", "matching_net"])


def test_ship_refuses_an_unfinished_comparison_and_writes_nothing(tmp_path):
    config = compare.config_for("5w1s", "maml", 0)
    (tmp_path / "5w1s_maml_s0.pt.result.json").write_text(json.dumps({"config": config.__dict__, "accuracy": 90.0}))
    with pytest.raises(ValueError, match="refusing to ship.*5w1s maml \\(1 seeds\\)"):
        compare.ship(["5w1s"], tmp_path, json_path=tmp_path / "shipped.json", weights_dir=tmp_path / "w")
    assert not (tmp_path / "shipped.json").exists() and not (tmp_path / "w").exists()


def test_ship_then_load_checks_sha256(tmp_path, monkeypatch):
    # a finished comparison in miniature: every method, 3 seeds, 2 meta-steps on random images
    monkeypatch.setitem(compare.SETTINGS, "5w1s", {**compare.SETTINGS["5w1s"], "iterations": 2, "meta_batch_size": 2})
    monkeypatch.setitem(compare.COMMON, "width", 8)
    runs = tmp_path / "runs"
    for method in compare.METHODS:
        config = compare.config_for("5w1s", method, 0)
        train_fewshot(config, checkpoint_path=runs / f"5w1s_{method}_s0.pt", data=images(), progress=False)
        for seed in range(3):
            c = compare.config_for("5w1s", method, seed)
            (runs / f"5w1s_{method}_s{seed}.pt.result.json").write_text(
                json.dumps({"config": c.__dict__, "accuracy": 50.0 + seed}))
    record = compare.ship(["5w1s"], runs, json_path=tmp_path / "b.json", weights_dir=tmp_path / "w")
    assert record["summary"]["5w1s"]["anil"]["mean"] == 51.0 and len(record["weights"]) == len(compare.METHODS)
    classifier = compare.shipped_classifier("5w1s", "anil", json_path=tmp_path / "b.json", weights_dir=tmp_path / "w")
    assert classifier.config.algorithm == "anil"
    (tmp_path / "w" / "5w1s_anil.pt").write_bytes(b"replaced")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        compare.shipped_classifier("5w1s", "anil", json_path=tmp_path / "b.json", weights_dir=tmp_path / "w")


@pytest.mark.parametrize("algorithm", ["anil", "mamlpp", "protonet", "protomaml"])
def test_adapt_refuses_algorithms_that_do_not_adapt_like_maml(algorithm):
    changes = {"algorithm": algorithm, **({"inner_steps": 2} if algorithm == "mamlpp" else {})}
    learner = make_learner(tiny(**changes))
    sx, sy, qx, qy = tasks()
    with pytest.raises(ValueError, match="adapted_predictions"):
        learner.adapt(sx, sy)
    classifier = FewShotClassifier(learner.model, n_way=5, inner_lr=learner.inner_lr, steps=1, config=tiny(**changes))
    with pytest.raises(ValueError, match="classify"):
        classifier.adapt(sx[0], sy[0])
    assert classifier.classify(sx[0], sy[0], qx[0]).shape == (15,)  # its own loop


@pytest.mark.skipif(not compare.SHIPPED_JSON.is_file(), reason="no shipped comparison")
def test_shipped_comparison_is_complete_and_its_checkpoints_load():
    record = compare.load_shipped()
    for setting, rows in record["summary"].items():
        for method in compare.METHODS:
            assert len(rows[method]["seeds"]) >= compare.MIN_SEEDS, (setting, method)
            classifier = compare.shipped_classifier(setting, method)  # sha256 checked
            assert compare.method_of(classifier.config.__dict__) == method
            assert (compare.SHIPPED_WEIGHTS / record["weights"][f"{setting} {method}"]["file"]).stat().st_size < 1_000_000
