"""The 20-way within-alphabet one-shot test (mamlkit/lake.py): runs, scoring, shuffling, errors, CLI.

Most tests use a small fake Omniglot folder written to a temporary directory: three alphabets (20, 21
and 5 characters, 4 drawers each), every character a distinct pattern of filled squares and every
drawer a tiny mark of its own, so a nearest-neighbour "oracle" classifier gets every query right.
One test reads the real minimal sets in ../shared/omniglot (skipped when absent).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlkit.data import omniglot
from mamlkit.experiments import lake
from mamlkit.experiments.lake import (
    BASELINES,
    TEST_ALPHABETS,
    Run,
    evaluate_within_alphabet,
    main,
    make_runs,
)

torch.set_num_threads(1)
SHARED = omniglot.shared_dir()
from mamlkit.paths import WEIGHTS  # noqa: E402

ALPHABETS = {"Alpha": 20, "Beta": 21, "Gamma": 5}
DRAWERS = 4
SIZE = 105


def _drawing(index: int, drawer: int) -> np.ndarray:
    """Character `index`: 8 of the 36 cells of a 6x6 grid filled black; drawer `drawer`: a 3x3 mark in a corner."""
    img = np.full((SIZE, SIZE), 255, np.uint8)
    cells = np.random.default_rng(1000 + index).choice(36, size=8, replace=False)
    for c in cells:
        r, k = divmod(int(c), 6)
        img[4 + 16 * r:4 + 16 * r + 12, 4 + 16 * k:4 + 16 * k + 12] = 0
    img[100:103, 2 + 3 * drawer:5 + 3 * drawer] = 0  # the drawer's own small mark
    return img


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    """<root>/images_background/<Alphabet>/characterNN/<id>_<drawer>.png, 1-bit 105x105 like Omniglot."""
    root = tmp_path_factory.mktemp("omniglot")
    index = 0
    for alphabet, n in ALPHABETS.items():
        for c in range(1, n + 1):
            folder = root / "images_background" / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            for d in range(1, DRAWERS + 1):
                Image.fromarray(_drawing(index, d)).convert("1").save(folder / f"{index:04d}_{d:02d}.png")
            index += 1
    return root


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)


def _nearest(support, query) -> torch.Tensor:
    """For each query image, the label of the support image with the fewest differing pixels."""
    s = np.stack([np.asarray(im.convert("L"), np.int32) for im in support])
    q = np.stack([np.asarray(im.convert("L"), np.int32) for im in query])
    return torch.from_numpy(np.abs(q[:, None] - s[None]).sum((2, 3)).argmin(1))


class Oracle:
    """A 20-way 'classifier' that is always right (pixel nearest neighbour on the fake characters)."""

    n_way = 20

    def __init__(self):
        self.calls = []

    def classify(self, support_images, support_labels, query_images, steps=None):
        self.calls.append((support_images, support_labels, query_images, steps))
        return torch.as_tensor(support_labels)[_nearest(support_images, query_images)]


class HalfRight(Oracle):
    """Right on the queries of labels 0..9, wrong on those of labels 10..19: exactly half of every run."""

    def classify(self, support_images, support_labels, query_images, steps=None):
        right = super().classify(support_images, support_labels, query_images, steps)
        return torch.where(right < 10, right, 29 - right)  # 10..19 -> 19..10: never the right one


class Constant(Oracle):
    def classify(self, support_images, support_labels, query_images, steps=None):
        return torch.zeros(len(query_images), dtype=torch.int64)


class Positional(Oracle):
    """Says query k has label k: right only if the query images came in label order."""

    def classify(self, support_images, support_labels, query_images, steps=None):
        return torch.arange(len(query_images))


def _key(run: Run):
    return run.alphabet, run.characters, run.support_drawer, run.query_drawer, run.query_order


# ----------------------------------------------------------------------------------------------
# make_runs


def test_runs_are_reproducible_and_depend_on_the_seed(fake):
    a = make_runs(fake, alphabets=("Alpha", "Beta"), runs=6, seed=3)
    b = make_runs(fake, alphabets=("Alpha", "Beta"), runs=6, seed=3)
    c = make_runs(fake, alphabets=("Alpha", "Beta"), runs=6, seed=4)
    assert [_key(r) for r in a] == [_key(r) for r in b]
    assert [_key(r) for r in a] != [_key(r) for r in c]
    assert [r.support_bytes() for r in a[:2]] == [r.support_bytes() for r in b[:2]]


def test_a_run_is_twenty_distinct_characters_of_one_alphabet_by_two_drawers(fake):
    runs = make_runs(fake, alphabets=("Beta", "Alpha"), runs=8, seed=0)
    assert [r.alphabet for r in runs] == ["Beta", "Alpha"] * 4  # round-robin, in the order given
    beta_sets = set()
    for r in runs:
        assert len(r.characters) == 20 and len(set(r.characters)) == 20
        assert set(r.characters) <= {f"character{c:02d}" for c in range(1, ALPHABETS[r.alphabet] + 1)}
        assert r.support_drawer != r.query_drawer
        assert {r.support_drawer, r.query_drawer} <= set(range(1, DRAWERS + 1))
        assert sorted(r.query_order) == list(range(20))
        for files, drawer in ((r.support_files, r.support_drawer), (r.query_files, r.query_drawer)):
            assert len(files) == 20
            for (_, member), character in zip(files, r.characters):
                assert member.startswith(f"{r.alphabet}/{character}/") and member.endswith(f"_{drawer:02d}.png")
        if r.alphabet == "Beta":
            beta_sets.add(r.characters)
    assert len(beta_sets) > 1  # Beta has 21 characters: the 20 of a run are drawn, not always the first 20
    drawer_pairs = {(r.support_drawer, r.query_drawer) for r in runs}
    assert len(drawer_pairs) > 1


def test_runs_hand_out_the_raw_pngs(fake):
    run = make_runs(fake, alphabets=("Alpha",), runs=1)[0]
    raw = run.query_bytes()
    assert len(raw) == 20 and all(b.startswith(b"\x89PNG") for b in raw)
    path = fake / "images_background" / run.query_files[3][1]
    assert raw[3] == path.read_bytes()
    images = run.support_images()
    assert len(images) == 20 and images[0].size == (SIZE, SIZE) and images[0].mode == "1"


def test_runs_are_spread_evenly_over_the_alphabets(fake):
    runs = make_runs(fake, alphabets=("Alpha", "Beta"), runs=5, seed=1)
    assert [r.alphabet for r in runs] == ["Alpha", "Beta", "Alpha", "Beta", "Alpha"]
    assert [r.index for r in runs] == list(range(5))


# ----------------------------------------------------------------------------------------------
# evaluate_within_alphabet


def test_a_perfect_classifier_has_no_error_and_gets_raw_images(fake):
    oracle = Oracle()
    result = evaluate_within_alphabet(oracle, fake, alphabets=("Alpha", "Beta"), runs=4, seed=0, steps=3)
    assert result["error"] == 0.0 and result["ci95"] == 0.0 and result["runs"] == 4
    assert result["per_alphabet"] == {"Alpha": {"error": 0.0, "ci95": 0.0, "runs": 2},
                                      "Beta": {"error": 0.0, "ci95": 0.0, "runs": 2}}
    assert result["alphabets"] == ["Alpha", "Beta"] and result["seed"] == 0 and result["steps"] == 3
    support, labels, query, steps = oracle.calls[0]
    assert len(support) == 20 and len(query) == 20 and isinstance(support[0], Image.Image)
    assert torch.as_tensor(labels).tolist() == list(range(20)) and steps == 3


def test_a_constant_classifier_is_wrong_on_19_of_20(fake):
    result = evaluate_within_alphabet(Constant(), fake, alphabets=("Alpha", "Beta"), runs=4)
    assert result["error"] == pytest.approx(95.0) and result["ci95"] == pytest.approx(0.0)


def test_half_right_is_fifty_percent(fake):
    result = evaluate_within_alphabet(HalfRight(), fake, alphabets=("Alpha", "Beta"), runs=4, seed=2)
    assert result["error"] == pytest.approx(50.0)
    assert all(v["error"] == pytest.approx(50.0) for v in result["per_alphabet"].values())


def test_the_query_order_is_shuffled(fake):
    oracle = Oracle()
    evaluate_within_alphabet(oracle, fake, alphabets=("Alpha",), runs=3)
    for support, _, query, _ in oracle.calls:  # the query images do not come in label order
        assert _nearest(support, query).tolist() != list(range(20))
    result = evaluate_within_alphabet(Positional(), fake, alphabets=("Alpha", "Beta"), runs=4)
    assert result["error"] > 50.0


def test_ci_over_runs_and_a_single_run(fake):
    class Varying(Oracle):  # right on everything in even calls, on nothing but label 0 in odd ones
        def classify(self, support_images, support_labels, query_images, steps=None):
            right = super().classify(support_images, support_labels, query_images, steps)
            return right if len(self.calls) % 2 else torch.zeros_like(right)

    result = evaluate_within_alphabet(Varying(), fake, alphabets=("Alpha",), runs=4)
    assert result["error"] == pytest.approx(47.5)
    assert result["ci95"] == pytest.approx(1.96 * np.std([0, 95, 0, 95], ddof=1) / 2)
    single = evaluate_within_alphabet(Oracle(), fake, alphabets=("Alpha",), runs=1)
    assert single["runs"] == 1 and single["error"] == 0.0 and single["ci95"] is None


# ----------------------------------------------------------------------------------------------
# bad arguments: refused before any work, naming the argument


@pytest.mark.parametrize("kwargs, name", [
    ({"runs": 0}, "runs"), ({"runs": 2.5}, "runs"), ({"runs": True}, "runs"), ({"seed": "0"}, "seed"),
    ({"alphabets": ("Alpha", "Klingon")}, "Klingon"), ({"alphabets": "Alpha"}, "alphabets"),
    ({"alphabets": ()}, "alphabets"), ({"alphabets": ("Alpha", "Alpha")}, "alphabets"),
    ({"steps": -1}, "steps"),
])
def test_bad_arguments_are_refused_naming_them(fake, kwargs, name):
    oracle = Oracle()
    with pytest.raises((ValueError, TypeError), match=name):
        evaluate_within_alphabet(oracle, fake, **{"alphabets": ("Alpha",), "runs": 2, **kwargs})
    assert oracle.calls == []
    if "steps" not in kwargs:
        with pytest.raises((ValueError, TypeError), match=name):
            make_runs(fake, **{"alphabets": ("Alpha",), "runs": 2, **kwargs})


def test_an_alphabet_with_fewer_than_20_characters_is_refused(fake):
    with pytest.raises(ValueError, match=r"alphabets: Gamma has 5 characters.*at least 20"):
        make_runs(fake, alphabets=("Alpha", "Gamma"))
    oracle = Oracle()
    with pytest.raises(ValueError, match="Gamma"):
        evaluate_within_alphabet(oracle, fake, alphabets=("Gamma",))
    assert oracle.calls == []


def test_the_classifier_must_be_20_way(fake):
    class FiveWay(Oracle):
        n_way = 5

    with pytest.raises(ValueError, match=r"classifier: .*20-way.*n_way=5"):
        evaluate_within_alphabet(FiveWay(), fake, alphabets=("Alpha",))
    with pytest.raises(TypeError, match="classifier"):
        evaluate_within_alphabet(object(), fake, alphabets=("Alpha",))
    with pytest.raises(ValueError, match="classifier"):  # checked even before the data is looked for
        evaluate_within_alphabet(FiveWay(), fake / "nowhere")


def test_a_wrong_data_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        make_runs(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------
# the baselines and the command line


def test_baselines_have_the_published_numbers_and_sources():
    errors = {b["method"]: b["error"] for b in BASELINES}
    assert errors["people"] == 4.5 and errors["Bayesian Program Learning (BPL)"] == 3.3
    assert sorted(e for m, e in errors.items() if "minimal" in m) == [22.3, 24.0]
    assert errors["Siamese convnet"] == 8.0 and errors["modified Hausdorff distance"] == 38.8
    assert all(b["source"] and b["background"] for b in BASELINES)
    assert "Koch" in next(b["source"] for b in BASELINES if b["method"] == "Siamese convnet")


@pytest.mark.parametrize("argv, words", [
    (["{ckpt20}", "--alphabets", "Gamma"], ["alphabets", "Gamma", "20"]),
    (["{ckpt20}", "--data", "{nowhere}"], ["path", "does not exist"]),
    (["{ckpt5}"], ["classifier", "20-way"]),
    (["{nowhere}.pt"], ["no checkpoint"]),
])
def test_cli_bad_input_is_a_one_line_message(fake, tmp_path, argv, words):
    ckpt20, ckpt5 = WEIGHTS / "omniglot_20way_1shot_maml.pt", WEIGHTS / "omniglot_5way_1shot_maml.pt"
    if not (ckpt20.is_file() and ckpt5.is_file()):
        pytest.skip(f"no shipped checkpoints in {WEIGHTS}")
    argv = [a.format(ckpt20=ckpt20, ckpt5=ckpt5, nowhere=tmp_path / "nowhere") for a in argv]
    if "--data" not in argv:
        argv += ["--data", str(fake)]
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value.code)
    assert message.startswith("python -m mamlkit.experiments.lake: error:") and "\n" not in message
    assert all(w in message for w in words), message


def test_cli_unknown_flags_are_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["x.pt", "--run", "3"])  # an abbreviation of --runs is not accepted either
    assert e.value.code == 2 and "unrecognized arguments: --run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["x.pt", "--tasks", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --tasks" in capsys.readouterr().err


def test_cli_prints_the_table_and_writes_json_only_when_asked(fake, tmp_path, capsys, monkeypatch):
    ckpt = WEIGHTS / "omniglot_20way_1shot_maml.pt"
    if not ckpt.is_file():
        pytest.skip(f"no shipped 20-way checkpoint at {ckpt}")
    monkeypatch.chdir(tmp_path)
    main([str(ckpt), "--data", str(fake), "--alphabets", "Alpha", "Beta", "--runs", "2", "--steps", "1"])
    out = capsys.readouterr().out
    assert "| **omniglot_20way_1shot_maml.pt** |" in out and "| people |" in out and "38.8" in out
    assert "per alphabet: Alpha" in out
    # a legacy checkpoint (random character split), or a study one whose split held out other alphabets
    assert "not a held-out-alphabet result" in out or "were in this model's meta-training set" in out
    assert list(tmp_path.iterdir()) == []  # no --json: no file
    main([str(ckpt), "--data", str(fake), "--alphabets", "Alpha", "--runs", "2", "--steps", "0",
          "--json", str(tmp_path / "out" / "lake.json")])
    saved = json.loads((tmp_path / "out" / "lake.json").read_text())
    assert saved["runs"] == 2 and saved["steps"] == 0 and saved["alphabets"] == ["Alpha"]
    assert 0.0 <= saved["error"] <= 100.0 and saved["baselines"] == BASELINES


def test_cli_in_a_subprocess_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mamlkit.experiments.lake", str(tmp_path / "missing.pt"), "--runs", "2"],
                       capture_output=True, text=True, timeout=120, check=False,
                       env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
                       cwd=Path(lake.__file__).resolve().parents[1])
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "no checkpoint" in p.stderr


# ----------------------------------------------------------------------------------------------
# the real minimal sets


@pytest.mark.skipif(not (SHARED / "images_background_small1.zip").is_file(), reason=f"no Omniglot subset at {SHARED}")
def test_real_omniglot_runs_on_the_held_out_alphabets():
    runs = make_runs(omniglot.find_omniglot(SHARED), alphabets=TEST_ALPHABETS, runs=4, seed=0)
    assert [r.alphabet for r in runs] == list(TEST_ALPHABETS) * 2
    for r in runs[:2]:
        for im in r.support_images() + r.query_images():
            assert im.size == (105, 105) and im.mode == "1"
    with pytest.raises(ValueError, match=r"Tagalog has 17 characters"):
        make_runs(SHARED, alphabets=("Tagalog",))
    greek = make_runs(SHARED, alphabets=("Greek",), runs=1)[0]  # in both zips: 24 characters, not 48
    assert len(set(greek.characters)) == 20 and all(c <= "character24" for c in greek.characters)
