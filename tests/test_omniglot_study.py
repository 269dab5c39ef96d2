"""The Omniglot study's bookkeeping: configurations, per-run results, mean ± sd over seeds, paired gaps."""
import json

import pytest
import torch

from mamlkit.data.characters import OmniglotData
from mamlkit.experiments import omniglot_study as study
from mamlkit.experiments.fewshot import FewShotConfig


def test_config_for_applies_recipe_setting_and_changes():
    c = study.config_for("5w1s", "fomaml", 2)
    assert (c.width, c.downsample, c.augment, c.meta_lr_schedule, c.split) == (64, "stride", True, "cosine", "alphabets")
    assert (c.n_way, c.k_shot, c.meta_batch_size, c.iterations, c.first_order, c.seed) == (5, 1, 16, 8000, True, 2)
    t = study.config_for("20w1s", "maml", 0)
    assert (t.n_way, t.inner_steps, t.inner_lr, t.test_steps) == (20, 1, 0.4, 3)
    w = study.config_for("5w1s", "maml", 0, iterations=400, first_order_steps=None)
    assert w.first_order_steps == 100
    with pytest.raises(ValueError, match="setting"):
        study.config_for("5w2s", "maml", 0)
    with pytest.raises(ValueError, match="algorithm"):
        study.config_for("5w1s", "reptile", 0)
    assert study.run_path("r", "5w1s", "maml", 3).name == "5w1s_maml_s3.pt"
    assert study.run_path("r", "5w1s", "maml", 3, "+ cosine β").parent.name == "ablation"


def fake_result(setting, algorithm, seed, accuracy, row=None, **changes):
    config = study.config_for(setting, algorithm, seed, **changes)
    from dataclasses import asdict

    return {"config": asdict(config), "accuracy": accuracy, "row": row}


def test_summary_is_mean_and_sd_over_seeds_and_the_gap_is_paired():
    results = [fake_result("5w1s", "maml", s, a) for s, a in ((0, 97.0), (1, 96.0), (2, 98.0))]
    results += [fake_result("5w1s", "fomaml", s, a) for s, a in ((0, 96.5), (1, 95.0))]
    results += [fake_result("5w1s", "maml", 0, 90.0, row="plain (constant β, no augmentation)", augment=False,
                            meta_lr_schedule="constant")]
    summary = study.summarize(results)
    assert summary["5w1s maml"]["mean"] == 97.0 and summary["5w1s maml"]["sd"] == 1.0
    assert summary["5w1s fomaml"]["seeds"] == 2
    gap = summary["5w1s gap maml − fomaml"]
    assert gap["paired_seeds"] == [0, 1] and gap["mean"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2, seed 2 unpaired
    assert "one seed" not in study.markdown(summary).split("5w1s maml")[1].split("\n")[0]
    table = study.ablation_table(results)
    assert "plain (constant β, no augmentation) | 90.00 (one seed)" in table


def tiny_omniglot(seed: int, train: int):
    """A stand-in for omniglot_split: 12 noisy copies-of-a-prototype "characters", the first `train` for training."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(12, 1, 7, 7, generator=g) > 0.6).float().repeat_interleave(4, 2).repeat_interleave(4, 3)
    images = ((protos != (torch.rand(12, 20, 28, 28, generator=g) < 0.1).float()).float() * 255).to(torch.uint8)
    names = [f"A/character{i:02d}" for i in range(12)]
    split = (OmniglotData(images, names, "p"), OmniglotData(images[:train], names[:train], "train"),
             OmniglotData(images[train:], names[train:], "test"))
    return lambda path=None, **kw: split


def test_train_and_evaluate_writes_its_result_once(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "omniglot_split", tiny_omniglot(seed=0, train=8))
    config = FewShotConfig(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=8, iterations=3, augment=True,
                           meta_lr_schedule="cosine")
    path = tmp_path / "run.pt"
    result = study.train_and_evaluate(config, path, tasks=5, progress=False)
    saved = json.loads((tmp_path / "run.pt.result.json").read_text())
    assert saved == result and 0 <= result["accuracy"] <= 100 and result["test_tasks"] == 5
    assert (tmp_path / "run.pt.snapshots").is_dir()
    monkeypatch.setattr(study, "train_fewshot", lambda *a, **k: pytest.fail("trained a finished run again"))
    assert study.train_and_evaluate(config, path, tasks=5, progress=False) == result
    assert study.collect(tmp_path) == [result]


def test_a_learned_alpha_run_records_each_layers_alpha_and_its_accuracy_at_the_training_steps(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(12, 20, 28, 28, generator=g) > 0.7).to(torch.uint8) * 255
    names = [f"A/character{i:02d}" for i in range(12)]
    split = (OmniglotData(images, names, "p"), OmniglotData(images[:8], names[:8], "train"),
             OmniglotData(images[8:], names[8:], "test"))
    monkeypatch.setattr(study, "omniglot_split", lambda path=None, **kw: split)
    config = FewShotConfig(n_way=3, k_shot=1, q_query=2, meta_batch_size=2, width=8, iterations=3, inner_lr=0.4,
                           learn_inner_lr="layer", test_steps=3)
    path = tmp_path / "run.pt"
    result = study.train_and_evaluate(config, path, tasks=5, progress=False)
    # independently: the checkpoint's α, and the accuracy after 1 step (its training steps) on the same tasks
    classifier = study.FewShotClassifier.from_checkpoint(path)
    assert result["learned_inner_lr"] == {k: round(v.item(), 4) for k, v in classifier.inner_lr.items()}
    assert any(v != 0.4 for v in result["learned_inner_lr"].values())  # learned: some α moved
    accuracy, _ = study.evaluate_fewshot(classifier, images[8:], n_way=3, k_shot=1, tasks=5, steps=1, seed=study.TEST_SEED)
    assert (result["train_steps"], result["accuracy_train_steps"]) == (1, round(100 * accuracy, 2))
    # a result written before these fields gets them on the next call, without training again
    old = {k: v for k, v in result.items() if k not in ("learned_inner_lr", "accuracy_train_steps",
                                                        "ci95_train_steps", "train_steps")}
    (tmp_path / "run.pt.result.json").write_text(json.dumps(old))
    monkeypatch.setattr(study, "train_fewshot", lambda *a, **k: pytest.fail("trained a finished run again"))
    assert study.train_and_evaluate(config, path, tasks=5, progress=False) == result
    assert json.loads((tmp_path / "run.pt.result.json").read_text()) == result


def test_ablation_rows_run_one_command_each(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "train_and_evaluate", lambda config, path, row=None, **kw: calls.append((row, config)))
    study.main(["ablation", "--runs-dir", str(tmp_path), "--rows", "plain", "width32", "--seeds", "0", "1",
                "--iterations", "10"])
    assert [(row, c.seed) for row, c in calls] == [(study.ROWS["plain"], 0), (study.ROWS["width32"], 0),
                                                    (study.ROWS["plain"], 1), (study.ROWS["width32"], 1)]
    plain, width32 = calls[0][1], calls[1][1]
    assert (plain.augment, plain.meta_lr_schedule, plain.width) == (False, "constant", 64)
    assert (width32.augment, width32.meta_lr_schedule, width32.width, width32.iterations) == (True, "cosine", 32, 10)
    assert list(study.ROWS.values()) == list(study.ABLATION)  # every row has its key


def test_an_ablation_row_is_never_a_study_run_even_with_the_study_s_length():
    row = study.ROWS["steps5"]  # the same configuration as the study's maml_5steps when run for 8,000 steps
    results = [fake_result("5w1s", "maml", 0, 97.0, row=row, **study.ABLATION[row]),
               fake_result("5w1s", "maml", 0, 96.0)]
    assert results[0]["config"]["iterations"] == 8000 and results[0]["config"]["inner_steps"] == 5
    summary = study.summarize(results)
    assert list(summary) == ["5w1s maml"] and summary["5w1s maml"]["mean"] == 96.0
    assert row in study.ablation_table(results)


def test_the_characters_row_changes_only_the_split_and_trains_and_tests_on_it(tmp_path, monkeypatch):
    row = study.ROWS["characters"]
    config = study.config_for("5w1s", "maml", 0, **study.ABLATION[row])
    recipe = study.config_for("5w1s", "maml", 0)
    from dataclasses import asdict

    assert {k for k, v in asdict(config).items() if asdict(recipe)[k] != v} == {"split"}
    assert config.split == "characters" and recipe.split == "alphabets"
    seen = []  # which split train_and_evaluate reads: the row's, for training and for the test tasks

    def split(path=None, *, glyphs_fallback=True, split="alphabets"):
        seen.append(split)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(study, "omniglot_split", split)
    with pytest.raises(FileNotFoundError, match="stop here"):
        study.train_and_evaluate(config, tmp_path / "c.pt", progress=False, row=row)
    assert seen == ["characters"]


def test_runs_on_the_paper_s_split_are_rows_of_their_own_with_their_own_gaps(tmp_path, monkeypatch):
    results = [fake_result("5w1s", a, s, acc, split="characters")
               for a, s, acc in (("maml", 0, 97.2), ("maml", 1, 97.4), ("fomaml", 0, 96.0), ("fomaml", 1, 96.6))]
    results += [fake_result("5w1s", "maml", 0, 96.0), fake_result("5w1s", "fomaml", 0, 92.0)]
    summary = study.summarize(results)
    assert summary["5w1s maml"]["by_seed"] == {0: 96.0}  # the unseen-alphabet run, not averaged with the others
    assert summary["5w1s maml (paper's split)"]["by_seed"] == {0: 97.2, 1: 97.4}
    assert summary["5w1s gap maml − fomaml"]["mean"] == 4.0  # paired within its split only
    assert summary["5w1s gap maml − fomaml (paper's split)"]["mean"] == pytest.approx(1.0)  # (1.2 + 0.8) / 2
    assert list(summary)[:4] == ["5w1s fomaml", "5w1s maml", "5w1s fomaml (paper's split)", "5w1s maml (paper's split)"]
    # its own checkpoint folder, so an unseen-alphabet run of the same name is never resumed as this one
    assert study.run_path("r", "5w1s", "maml", 0, split="characters").as_posix() == "r/characters/5w1s_maml_s0.pt"
    with pytest.raises(ValueError, match="split: expected one of"):
        study.run_path("r", "5w1s", "maml", 0, split="drawers")
    seen = []  # `run --split characters` trains and tests on that split, in that folder

    def train(config, path, **kw):
        seen.append((config.split, path.relative_to(tmp_path).as_posix()))
        return fake_result("5w1s", "maml", 0, 97.0, split="characters")

    monkeypatch.setattr(study, "train_and_evaluate", train)
    study.main(["run", "--settings", "5w1s", "--algorithms", "maml", "--split", "characters", "--runs-dir", str(tmp_path)])
    assert seen == [("characters", "characters/5w1s_maml_s0.pt")]


def test_command_line_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["run", "--settings", "5w2s"])
    assert e.value.code == 2 and "--settings" in capsys.readouterr().err


def test_ship_replaces_the_settings_checkpoint_and_rows_and_refuses_shorter_runs(tmp_path, monkeypatch):
    from dataclasses import asdict

    from mamlkit.experiments import fewshot
    from mamlkit.experiments.fewshot import train_fewshot

    weights, runs = tmp_path / "weights", tmp_path / "runs"
    weights.mkdir()
    monkeypatch.setattr(fewshot, "WEIGHTS", weights)
    monkeypatch.setattr(fewshot, "RESULTS_JSON", weights / "omniglot_results.json")
    old = {"name": "omniglot_5way_1shot_maml", "config": {"iterations": 2}, "weights": "old.pt", "accuracy": 87.0}
    other = {"name": "omniglot_5way_5shot_maml", "config": {"iterations": 400}, "weights": "five.pt"}
    (weights / "omniglot_results.json").write_text(json.dumps({"command": "results", "runs": [old, other]}))
    g = torch.Generator().manual_seed(0)
    images = ((torch.rand(8, 20, 28, 28, generator=g) > 0.8) * 255).to(torch.uint8)
    config = study.config_for("5w1s", "maml", 0, iterations=3, width=8, meta_batch_size=2, q_query=2)
    path = study.run_path(runs, "5w1s", "maml", 0)
    train_fewshot(config, checkpoint_path=path, data=images, progress=False)
    result = {"config": asdict(config), "accuracy": 96.0, "ci95": 0.5, "test_tasks": 600, "train_seconds": 12.0,
              "test_alphabets": ["Early_Aramaic", "Korean"], "test_characters": 62}
    path.with_name(path.name + ".result.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match="no finished maml run of 20w1s"):
        study.ship(["5w1s", "20w1s"], runs)
    assert json.loads((weights / "omniglot_results.json").read_text())["runs"][0] == old  # nothing written
    table = study.ship(["5w1s"], runs)
    rows = {r["name"]: r for r in table["runs"]}
    assert rows["omniglot_5way_5shot_maml"] == {"budget": True, **other}  # a setting not named keeps its row
    new = rows["omniglot_5way_1shot_maml"]
    assert (new["accuracy"], new["budget"], new["config"]["width"]) == (96.0, False, 8)
    classifier = fewshot.load_pretrained(5, 1)  # the shipped file, its sha256 checked
    assert classifier.config.split == "alphabets" and classifier.config.iterations == 3
    longer = {**new, "config": {**new["config"], "iterations": 10}}
    (weights / "omniglot_results.json").write_text(json.dumps({"runs": [longer]}))
    with pytest.raises(ValueError, match="shorter run"):
        study.ship(["5w1s"], runs)


def test_zeroed_head_runs_are_their_own_rows_with_paired_gaps():
    results = [fake_result("20w1s", "maml", s, a) for s, a in ((0, 85.0), (1, 86.0))]
    results += [fake_result("20w1s", "fomaml_zerohead", s, a) for s, a in ((0, 82.0), (1, 85.0))]
    summary = study.summarize(results)
    assert summary["20w1s fomaml_zerohead"]["mean"] == 83.5 and "20w1s fomaml" not in summary
    assert summary["20w1s gap maml − fomaml_zerohead"]["mean"] == 2.0
    assert study.config_for("20w1s", "fomaml_zerohead", 0).name == "omniglot_20way_1shot_fomaml_zerohead"


def test_five_small_steps_variants_override_the_settings_inner_loop():
    c = study.config_for("20w1s", "fomaml_5steps", 1)
    assert (c.first_order, c.inner_steps, c.inner_lr, c.test_steps, c.n_way) == (True, 5, 0.1, 5, 20)
    results = [fake_result("20w1s", "maml", 1, 85.0), fake_result("20w1s", "fomaml_5steps", 1, 81.0),
               fake_result("20w1s", "fomaml", 1, 60.0)]
    summary = study.summarize(results)
    assert summary["20w1s fomaml_5steps"]["mean"] == 81.0 and summary["20w1s fomaml"]["mean"] == 60.0
    assert summary["20w1s gap maml − fomaml_5steps"]["mean"] == 4.0


def test_prototypical_network_runs_are_their_own_row_and_other_algorithms_are_left_out():
    c = study.config_for("20w1s", "protonet", 0)
    assert (c.algorithm, c.inner_steps, c.width, c.iterations) == ("protonet", 0, 64, 4000)
    anil = fake_result("20w1s", "maml", 0, 70.0)
    anil["config"]["algorithm"] = "anil"  # not a study algorithm: left out
    results = [fake_result("20w1s", "maml", 0, 85.0), fake_result("20w1s", "protonet", 0, 91.0), anil]
    summary = study.summarize(results)
    assert summary["20w1s protonet"]["mean"] == 91.0 and summary["20w1s maml"]["mean"] == 85.0
    assert len([k for k in summary if not k.startswith("20w1s gap")]) == 2


def test_record_copies_results_and_refuses_to_replace_a_different_one(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    (runs / "ablation").mkdir(parents=True)
    maml = {**fake_result("20w1s", "maml", 0, 85.0), "lake_error": 22.5, "train_seconds": 600.0}
    row = fake_result("5w1s", "maml", 1, 90.0, row="+ cosine β", augment=False)
    (runs / "20w1s_maml_s0.pt.result.json").write_text(json.dumps(maml))
    (runs / "ablation" / "cosine_s1.pt.result.json").write_text(json.dumps(row))
    written = study.record(runs, records)
    assert sorted(p.name for p in written) == ["20w1s_maml_s0.json", "ablation_cosine_s1.json"]
    assert study.record(runs, records) == []  # the same results again: nothing to write
    assert sorted(map(json.dumps, study.collect(records, "*.json"))) == sorted(map(json.dumps, [maml, row]))
    summary = study.summarize(study.collect(records, "*.json"))
    assert summary["20w1s maml"]["lake"]["mean"] == 22.5 and summary["20w1s maml"]["minutes"] == 10.0
    assert "| 20w1s maml | 85.00 (one seed: no spread, no conclusion) | 22.5 | 4,000 | 10 | 1 |" in study.markdown(summary)
    before = (records / "20w1s_maml_s0.json").read_text()
    (runs / "20w1s_maml_s0.pt.result.json").write_text(json.dumps({**maml, "accuracy": 84.0}))
    (runs / "5w1s_maml_s2.pt.result.json").write_text(json.dumps(fake_result("5w1s", "maml", 2, 96.0)))
    with pytest.raises(ValueError, match="differs from the record"):
        study.record(runs, records)
    assert (records / "20w1s_maml_s0.json").read_text() == before and not (records / "5w1s_maml_s2.json").exists()


def test_record_updates_a_record_whose_run_gained_fields_and_keeps_a_richer_one(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    runs.mkdir()
    result = fake_result("5w1s", "maml", 0, 96.0)
    source = runs / "5w1s_maml_s0.pt.result.json"
    source.write_text(json.dumps(result))
    assert [p.name for p in study.record(runs, records)] == ["5w1s_maml_s0.json"]
    gained = {**result, "learned_inner_lr": {"head.weight": 0.77}}  # filled in after the first record
    source.write_text(json.dumps(gained))
    assert [p.name for p in study.record(runs, records)] == ["5w1s_maml_s0.json"]
    assert json.loads((records / "5w1s_maml_s0.json").read_text()) == gained
    source.write_text(json.dumps(result))  # a result poorer than its record: the record keeps its field
    assert study.record(runs, records) == []
    assert json.loads((records / "5w1s_maml_s0.json").read_text()) == gained
    source.write_text(json.dumps({**gained, "learned_inner_lr": {"head.weight": 0.5}, "threads": 1}))  # a field changed
    assert study.record(runs, records) == []
    assert json.loads((records / "5w1s_maml_s0.json").read_text()) == gained


def test_the_shipped_records_make_the_table():
    results = study.collect(study.RECORDS, "*.json")
    assert {r["checkpoint"] for r in results} >= {"5w1s_maml_s0.pt", "20w1s_maml_s0.pt"}
    summary = study.summarize(results)
    assert summary["5w1s maml"]["by_seed"][0] == 96.06 and summary["20w1s maml"]["by_seed"][0] == 85.4
    assert summary["20w1s maml"]["seeds"] == 3  # seed 0 on the CPU, seeds 1 and 2 on a GPU (gpu_session.py)


def finished_run(runs, setting, algorithm, accuracy, images, seed=0, **result_fields):
    """A tiny trained run of the study with its `.result.json`, as `run` leaves a finished one."""
    from dataclasses import asdict

    from mamlkit.experiments.fewshot import train_fewshot

    q_query = 2 if setting.startswith("5w") else 1
    config = study.config_for(setting, algorithm, seed, iterations=2, width=8, meta_batch_size=2, q_query=q_query)
    path = study.run_path(runs, setting, algorithm, seed)
    train_fewshot(config, checkpoint_path=path, data=images, progress=False)
    result = {"config": asdict(config), "accuracy": accuracy, "ci95": 0.5, "test_tasks": 600,
              "test_alphabets": ["Early_Aramaic", "Korean"], "test_characters": 62, **result_fields}
    path.with_name(path.name + ".result.json").write_text(json.dumps(result))
    return config


def test_ship_exports_the_prototypical_network_beside_maml(tmp_path, monkeypatch):
    from mamlkit.experiments import fewshot

    weights, runs = tmp_path / "weights", tmp_path / "runs"
    weights.mkdir()
    monkeypatch.setattr(fewshot, "WEIGHTS", weights)
    monkeypatch.setattr(fewshot, "RESULTS_JSON", weights / "omniglot_results.json")
    images = ((torch.rand(20, 20, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8) * 255).to(torch.uint8)
    for algorithm, accuracy in (("maml", 85.0), ("protonet", 91.0)):
        finished_run(runs, "20w1s", algorithm, accuracy, images, lake_error=19.0)
    with pytest.raises(ValueError, match="no finished fomaml run"):
        study.ship(["20w1s"], runs, algorithms=["protonet", "fomaml"])
    only = {r["name"] for r in study.ship(["20w1s"], runs, algorithms=["protonet"])["runs"]}
    assert only == {"omniglot_20way_1shot_protonet"}  # MAML's finished run was not named: not shipped
    rows = {r["name"]: r for r in study.ship(["20w1s"], runs)["runs"]}
    proto = rows["omniglot_20way_1shot_protonet"]
    assert (proto["algorithm"], proto["accuracy"], proto["lake_error"]) == ("ProtoNet", 91.0, 19.0)
    # Finn et al.'s number belongs beside MAML's row only, never beside the prototypical network's
    assert proto["paper"] is None and rows["omniglot_20way_1shot_maml"]["paper"] == study.PAPER[(20, 1, False)]
    classifier = fewshot.load_pretrained(20, 1, algorithm="protonet")  # its own file, its sha256 checked
    assert classifier.config.algorithm == "protonet" and fewshot.load_pretrained(20, 1).config.algorithm == "maml"
    # FOMAML with five small steps makes the same row name as plain FOMAML: shipping both is refused
    for algorithm in ("fomaml", "fomaml_5steps"):
        finished_run(runs, "20w1s", algorithm, 60.0, images)
    before = (weights / "omniglot_results.json").read_text()
    with pytest.raises(ValueError, match="fomaml and fomaml_5steps of 20w1s would both ship the row"):
        study.ship(["20w1s"], runs)
    assert (weights / "omniglot_results.json").read_text() == before  # nothing written
    row = {r["name"]: r for r in study.ship(["20w1s"], runs, algorithms=["fomaml_5steps"])["runs"]}[
        "omniglot_20way_1shot_fomaml"]
    assert row["algorithm"] == "FOMAML, 5 steps of α = 0.1" and row["config"]["inner_steps"] == 5


def test_the_readme_shows_the_table_its_command_prints():
    """The README's study table is `omniglot_study table --records`, verbatim: no number typed by hand."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    results = study.collect(study.RECORDS, "*.json")
    assert study.markdown(study.summarize(results)) in readme
    assert study.ablation_table(results) in readme


def test_minutes_are_kept_apart_by_the_hardware_that_trained_the_run():
    cpu = {**fake_result("5w1s", "maml", 0, 96.0), "train_seconds": 3600.0}
    gpu = [{**fake_result("5w1s", "maml", s, 96.5), "train_seconds": 240.0, "hardware": "NVIDIA H200"} for s in (1, 2)]
    summary = study.summarize([cpu, *gpu])["5w1s maml"]
    assert summary["minutes"] == 60.0 and summary["gpu_minutes"] == {"NVIDIA H200": 4.0}
    assert "| 8,000 | 60 (CPU); 4.0 (NVIDIA H200) | 3 |" in study.markdown(study.summarize([cpu, *gpu]))
    assert study.hardware("cpu") == "CPU"


def test_run_parallel_runs_jobs_in_order_and_stops_them_at_the_deadline(tmp_path):
    import sys
    import time

    sleep = (sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))")
    from mamlkit.experiments.gpu_session import run_parallel

    status = run_parallel([["0", "0"], ["0", "3"], ["60", "0"], ["0", "0"]], 2, tmp_path / "logs",
                          program=sleep, deadline=time.monotonic() + 8)
    assert status == [0, 3, None, 0]  # the 60-second job was stopped at the deadline (else 0); the others ran
    first = (tmp_path / "logs" / "02.log").read_text().splitlines()[0]
    assert first.endswith("time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2])) 60 0")


def test_record_names_ablation_rows_by_their_command_line_name(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    (runs / "ablation").mkdir(parents=True)
    row = fake_result("5w1s", "maml", 0, 94.0, row="plain (constant β, no augmentation)", augment=False,
                      meta_lr_schedule="constant")
    (runs / "ablation" / "plain__constant_β__no_augmentation_s0.pt.result.json").write_text(json.dumps(row))
    assert [p.name for p in study.record(runs, records)] == ["ablation_plain_s0.json"]  # ASCII in the repository


def test_the_gpu_sessions_jobs_are_valid_study_commands():
    from mamlkit.experiments.gpu_session import STUDY

    parser = study.build_parser()
    for job in STUDY:
        parser.parse_args([*job, "--device", "cpu"])
    assert len({tuple(job) for job in STUDY}) == len(STUDY)  # no run twice


def test_the_gpu_session_skips_runs_already_recorded(tmp_path):
    from mamlkit.experiments.gpu_session import recorded

    (tmp_path / "20w1s_maml_s1.json").write_text("{}")
    (tmp_path / "ablation_plain_s0.json").write_text("{}")
    job = ["run", "--settings", "20w1s", "--algorithms", "maml", "--seeds", "1"]
    assert recorded(job, tmp_path) and not recorded([*job[:-1], "2"], tmp_path)
    assert recorded(["ablation", "--rows", "plain", "--seeds", "0"], tmp_path)
    assert not recorded(["ablation", "--rows", "plain", "--seeds", "1"], tmp_path)
    assert recorded(job)  # the shipped records: made by the GPU session of 2026-12-04


def test_the_gpu_session_knows_the_record_of_a_run_on_the_paper_s_split(tmp_path):
    from mamlkit.experiments.gpu_session import STUDY, recorded

    job = ["run", "--settings", "5w1s", "--algorithms", "maml", "--seeds", "0", "--split", "characters"]
    assert job in STUDY
    path = study.run_path(tmp_path / "runs", "5w1s", "maml", 0, split="characters")
    path.parent.mkdir(parents=True)
    path.with_name(path.name + ".result.json").write_text(json.dumps(fake_result("5w1s", "maml", 0, 97.0,
                                                                                  split="characters")))
    assert not recorded(job, tmp_path / "records")
    (tmp_path / "records").mkdir()
    study.record(tmp_path / "runs", tmp_path / "records")  # the name record() gives it is the one recorded() reads
    assert recorded(job, tmp_path / "records") and not recorded(job[:-2], tmp_path / "records")


def test_the_gpu_session_packs_unfinished_checkpoints_and_resumes_them(tmp_path):
    from mamlkit.experiments.gpu_session import pack, unpack

    runs = tmp_path / "runs"
    (runs / "ablation" / "plain_s1.pt.snapshots").mkdir(parents=True)
    (runs / "logs").mkdir()
    for name in ("20w1s_maml_s1.pt", "20w1s_maml_s1.pt.result.json", "ablation/plain_s1.pt",
                 "ablation/plain_s1.pt.snapshots/step_000250.pt", "logs/00.log"):
        (runs / name).write_text(name)
    written = pack(runs, tmp_path / "study.tar.gz")
    # the finished run's result, the log, the unfinished run's checkpoint; no finished checkpoint, no snapshot
    assert sorted(written) == ["20w1s_maml_s1.pt.result.json", "ablation/plain_s1.pt", "logs/00.log"]
    again = tmp_path / "next_session"
    assert unpack(tmp_path / "study.tar.gz", again) == ["ablation/plain_s1.pt"]
    assert (again / "ablation" / "plain_s1.pt").read_text() == "ablation/plain_s1.pt"


def test_retest_tests_finished_runs_again_on_the_same_tasks_and_adds_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "omniglot_split", tiny_omniglot(seed=1, train=7))
    paths, results = [], []
    for algorithm in ("maml", "fomaml"):
        for seed in (0, 1):
            config = study.config_for("5w1s", algorithm, seed, iterations=3, width=8, meta_batch_size=2, q_query=2)
            paths.append(study.run_path(tmp_path, "5w1s", algorithm, seed))
            results.append(study.train_and_evaluate(config, paths[-1], tasks=6, progress=False))
    # the same tasks: retested after the run's own 3 test steps, each run scores exactly what its result says
    again = study.retest(paths, 3, progress=False)
    assert [r["accuracy_3_steps"] for r in again] == [r["accuracy"] for r in results]
    ten = study.retest(paths, 10, progress=False)
    on_disk = [json.loads(p.with_name(p.name + ".result.json").read_text()) for p in paths]
    assert on_disk == ten and all({"accuracy_10_steps", "ci95_10_steps", "accuracy_3_steps"} <= set(r) for r in ten)
    assert all(r["accuracy"] == old["accuracy"] and r["config"] == old["config"] for r, old in zip(ten, results))
    monkeypatch.setattr(study, "evaluate_fewshot", lambda *a, **k: pytest.fail("tested a retested run again"))
    assert study.retest(paths, 10, progress=False) == ten

    # the table: rows of their own, each right after its runs' row, and the gap at those steps, paired by seed
    fake = [{**fake_result("5w1s", a, seed, acc), "accuracy_10_steps": acc10, "accuracy_3_steps": acc}
            for a, seed, acc, acc10 in (("maml", 0, 96.0, 96.5), ("maml", 1, 96.2, 96.9), ("fomaml", 0, 92.0, 93.0),
                                         ("fomaml", 1, 92.4, 93.1))]
    summary = study.summarize(fake + [fake_result("5w1s", "fomaml", 2, 92.1)])  # seed 2: no retest, no pair
    assert summary["5w1s maml, 10 test steps"]["by_seed"] == {0: 96.5, 1: 96.9}
    assert summary["5w1s maml"]["by_seed"] == {0: 96.0, 1: 96.2}  # unchanged
    assert summary["5w1s fomaml"]["seeds"] == 3 and summary["5w1s fomaml, 10 test steps"]["seeds"] == 2
    gap = summary["5w1s gap maml − fomaml, 10 test steps"]
    assert gap["paired_seeds"] == [0, 1] and gap["mean"] == pytest.approx(3.65)  # (3.5 + 3.8) / 2
    assert summary["5w1s gap maml − fomaml"]["mean"] == pytest.approx(3.9)  # (4.0 + 3.8) / 2
    names = list(summary)
    assert names.index("5w1s maml, 10 test steps") == names.index("5w1s maml") + 1
    assert names.index("5w1s gap maml − fomaml, 10 test steps") == names.index("5w1s gap maml − fomaml") + 1
    assert "| 5w1s maml, 10 test steps | 96.70 ± 0.28 |" in study.markdown(summary)
    assert not any("3 test steps" in name for name in summary)  # the runs' own test steps: their rows already
    # a retest row's minutes are those of the runs it retested (seed 1 trained on a GPU, not retested)
    timed = [{**fake_result("20w1s", "maml", 0, 85.0), "train_seconds": 600.0, "accuracy_10_steps": 86.0},
             {**fake_result("20w1s", "maml", 1, 86.0), "train_seconds": 60.0, "hardware": "NVIDIA H200"}]
    summary = study.summarize(timed)
    assert (summary["20w1s maml"]["minutes"], summary["20w1s maml"]["gpu_minutes"]) == (10.0, {"NVIDIA H200": 1.0})
    assert (summary["20w1s maml, 10 test steps"]["minutes"], summary["20w1s maml, 10 test steps"]["gpu_minutes"]) \
        == (10.0, {})

    # the records keep the new fields: `record` rewrites a record whose run gained fields
    records = tmp_path / "records"
    study.record(tmp_path, records)
    assert json.loads((records / "5w1s_maml_s0.json").read_text())["accuracy_10_steps"] == ten[0]["accuracy_10_steps"]

    # a result written before a configuration field existed (here "algorithm") is retested all the same
    monkeypatch.setattr(study, "evaluate_fewshot", lambda *a, **k: (0.5, 0.01))
    old = json.loads(paths[0].with_name(paths[0].name + ".result.json").read_text())
    del old["config"]["algorithm"], old["accuracy_10_steps"]
    paths[0].with_name(paths[0].name + ".result.json").write_text(json.dumps(old))
    assert study.retest(paths[:1], 10, progress=True)[0]["accuracy_10_steps"] == 50.0
    assert "50.00 ± 1.00 % after 10 inner steps" in capsys.readouterr().out


def test_retest_refuses_unfinished_runs_and_prototypical_networks_before_any_test(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "evaluate_fewshot", lambda *a, **k: pytest.fail("tested before refusing"))
    (tmp_path / "5w1s_maml_s0.pt.result.json").write_text(json.dumps(fake_result("5w1s", "maml", 0, 96.0)))
    with pytest.raises(ValueError, match=r"runs: no finished result .*5w1s_maml_s1\.pt\.result\.json"):
        study.retest([study.run_path(tmp_path, "5w1s", "maml", s) for s in (0, 1)], 10)
    (tmp_path / "20w1s_protonet_s0.pt.result.json").write_text(json.dumps(fake_result("20w1s", "protonet", 0, 90.0)))
    with pytest.raises(ValueError, match="algorithms: .*prototypical network"):
        study.retest([study.run_path(tmp_path, "5w1s", "maml", 0), study.run_path(tmp_path, "20w1s", "protonet", 0)], 10)
    assert "accuracy_10_steps" not in json.loads((tmp_path / "5w1s_maml_s0.pt.result.json").read_text())
    with pytest.raises(SystemExit) as e:
        study.main(["retest", "--settings", "5w5s", "--seeds", "0", "--steps", "10", "--runs-dir", str(tmp_path)])
    assert "error: runs: no finished result" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        study.main(["retest", "--settings", "5w5s", "--steps", "0", "--runs-dir", str(tmp_path)])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
