"""Learning curves from θ snapshots; augmentation; the held-out-alphabet split."""
import json
from pathlib import Path

import pytest
import torch

from mamlkit.data.augment import random_affine
from mamlkit.data.characters import OmniglotData
from mamlkit.data.omniglot import split_alphabets
from mamlkit.experiments import curves, fewshot
from mamlkit.experiments.fewshot import FewShotClassifier, FewShotConfig, evaluate_fewshot, snapshot_dir, train_fewshot


def prototype_images(classes=12, examples=20, seed=0) -> torch.Tensor:
    """uint8 (classes, examples, 28, 28): a random blob pattern per class, 10% of its pixels flipped per example."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(classes, 1, 7, 7, generator=g) > 0.6).float().repeat_interleave(4, 2).repeat_interleave(4, 3)
    flips = torch.rand(classes, examples, 28, 28, generator=g) < 0.1
    return ((protos != flips.float()).float() * 255).to(torch.uint8)


def tiny(**kw) -> FewShotConfig:
    base = dict(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=8, iterations=4, inner_lr=0.4)
    return FewShotConfig(**{**base, **kw})


def test_snapshots_and_the_learning_curve_evaluate_each_saved_theta(tmp_path, monkeypatch):
    images = prototype_images(classes=16)
    names = [f"A{i // 8}/character{i:02d}" for i in range(16)]
    split = (OmniglotData(images, names, "p"), OmniglotData(images[:10], names[:10], "train"),
             OmniglotData(images[10:], names[10:], "test"))
    monkeypatch.setattr(curves, "omniglot_split", lambda path=None, **kw: split)
    path = tmp_path / "run.pt"
    train_fewshot(tiny(iterations=4), checkpoint_path=path, data=images[:10], progress=False, checkpoint_every=2,
                  snapshots=True)
    assert sorted(p.name for p in snapshot_dir(path).iterdir()) == ["step_000002.pt", "step_000004.pt"]
    curve = curves.learning_curve(path, tasks=6, progress=False)
    assert [p["step"] for p in curve["points"]] == [2, 4]
    # each point is that snapshot's accuracy on the same test tasks, independently recomputed
    for point in curve["points"]:
        classifier = FewShotClassifier.from_checkpoint(snapshot_dir(path) / f"step_{point['step']:06d}.pt")
        acc, ci = evaluate_fewshot(classifier, images[10:], n_way=3, k_shot=1, tasks=6, seed=1)
        assert point["accuracy"] == pytest.approx(round(100 * acc, 2))
    # cached: a second call evaluates nothing new (a broken evaluator would raise)
    monkeypatch.setattr(curves, "evaluate_fewshot", lambda *a, **k: pytest.fail("re-evaluated a cached snapshot"))
    assert curves.learning_curve(path, tasks=6, progress=False)["points"] == curve["points"]
    assert json.loads((tmp_path / "run.pt.curve.json").read_text())["tasks"] == 6
    assert curves.plot_curves([curve], tmp_path / "c.png").stat().st_size > 1000


def test_keep_adds_earlier_curves_and_a_rerun_replaces_its_namesake(tmp_path, monkeypatch, capsys):
    def curve(name, accuracy, tasks=200, seed=1):
        return {"name": name, "config": {}, "tasks": tasks, "seed": seed,
                "points": [{"step": 250, "accuracy": accuracy, "ci95": 1.0}]}

    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([curve("gone_s1", 90.0), curve("run", 50.0)]))
    monkeypatch.setattr(curves, "learning_curve", lambda path, **kw: curve(Path(path).stem, 80.0))
    curves.main(["runs/run.pt", "--keep", str(earlier), "--json", str(tmp_path / "all.json")])
    written = json.loads((tmp_path / "all.json").read_text())
    assert [(c["name"], c["points"][0]["accuracy"]) for c in written] == [("gone_s1", 90.0), ("run", 80.0)]
    # refused before any evaluation: a missing file, or curves measured on other test tasks
    monkeypatch.setattr(curves, "learning_curve", lambda *a, **k: pytest.fail("evaluated before checking --keep"))
    for keep, message in ((tmp_path / "none.json", "no such file"), (earlier, "same --tasks and --seed")):
        with pytest.raises(SystemExit):
            curves.main(["runs/run.pt", "--keep", str(keep), "--tasks", "100"])
        error = capsys.readouterr().err
        assert "--keep" in error and message in error


def test_threads_sets_torchs_threads_and_a_bad_count_is_refused_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(curves, "learning_curve", lambda path, **kw: {"name": "run", "points": []})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # so that ignoring --threads 1 cannot pass on a 1-core machine
        curves.main(["runs/run.pt", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(curves, "learning_curve", lambda *a, **k: pytest.fail("evaluated with --threads 0"))
    with pytest.raises(SystemExit):
        curves.main(["runs/run.pt", "--threads", "0"])
    assert "--threads" in capsys.readouterr().err


def test_learning_curve_without_snapshots_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--snapshots"):
        curves.learning_curve(tmp_path / "none.pt")


def test_random_affine_is_seeded_keeps_range_and_moves_strokes():
    x = torch.zeros(4, 5, 1, 28, 28)
    x[..., 8:20, 13:15] = 1
    a = random_affine(x, torch.Generator().manual_seed(0))
    b = random_affine(x, torch.Generator().manual_seed(0))
    c = random_affine(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().sum() > 0  # distorted
    # the identity map gives the image back, and each image gets its own distortion
    same = random_affine(x, torch.Generator(), rotation=0, shear=0, scale=0, shift=0)
    torch.testing.assert_close(same, x)
    assert not torch.equal(a[0, 0], a[0, 1])
    with pytest.raises(ValueError, match="x: expected float images"):
        random_affine(x.to(torch.uint8), torch.Generator())


def test_augmented_training_is_reproducible_and_differs_from_plain(tmp_path):
    images = prototype_images(classes=10)
    runs = [train_fewshot(tiny(iterations=3, augment=aug), checkpoint_path=tmp_path / f"{i}.pt", data=images,
                          progress=False)[0] for i, aug in enumerate([True, True, False])]
    first, again, plain = ({k: v.detach() for k, v in r.params.items()} for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], plain[k]) for k in first)


def test_split_alphabets_holds_out_whole_alphabets():
    names = [f"{a}/character{i:02d}" for a, n in (("Korean", 3), ("Greek", 4), ("Early_Aramaic", 2)) for i in range(n)]
    data = OmniglotData(torch.zeros(9, 2, 28, 28, dtype=torch.uint8), names, "fake")
    train, test = split_alphabets(data)
    assert {n.split("/")[0] for n in test.names} == {"Korean", "Early_Aramaic"} and len(test.names) == 5
    assert {n.split("/")[0] for n in train.names} == {"Greek"}
    with pytest.raises(ValueError, match="test_alphabets"):
        split_alphabets(data, ("Latin",))
    # a checkpoint from before the split existed was trained on the random character split
    assert fewshot.saved_config({"n_way": 5})["split"] == "characters"
