"""Every command line: --help works, every option has help naming its default, bad values are one-line errors.

A bad value must end the command with argparse's error (exit status 2, the option named on stderr)
before anything is loaded, trained or written; unknown flags and abbreviations of real ones too.
"""
import argparse
import json
import math

import pytest
import torch

from mamlkit import cli
from mamlkit.bench import run as bench_run
from mamlkit.bench import widgets as bench_widgets
from mamlkit.checkpoint import sha256
from mamlkit.course import exercises
from mamlkit.experiments import fewshot_cli, gpu_session, lake, omniglot_study, reproduce_sinusoid

COMMANDS = {  # name -> (build_parser, main)
    "fewshot": (fewshot_cli.build_parser, fewshot_cli.main),
    "bench": (bench_run.build_parser, bench_run.main),
    "bench.widgets": (bench_widgets.build_parser, bench_widgets.main),
    "reproduce_sinusoid": (reproduce_sinusoid.build_parser, reproduce_sinusoid.main),
    "exercises": (exercises.build_parser, exercises.main),
    "lake": (lake.build_parser, lake.main),
    "omniglot_study": (omniglot_study.build_parser, omniglot_study.main),
    "gpu_session": (gpu_session.build_parser, gpu_session.main),
}
HELP_ARGV = [("fewshot", ["--help"]), ("fewshot", ["train", "--help"]), ("fewshot", ["evaluate", "--help"]),
             ("fewshot", ["results", "--help"]), ("fewshot", ["bf16", "--help"]), ("bench", ["--help"]),
             ("bench.widgets", ["--help"]), ("reproduce_sinusoid", ["--help"]), ("exercises", ["--help"]),
             ("lake", ["--help"]), ("omniglot_study", ["run", "--help"]), ("gpu_session", ["--help"])]


def all_parsers(parser: argparse.ArgumentParser, name: str):
    """(name, parser) for the parser and every subcommand's parser under it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {sub_name}")


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine has neither CUDA nor MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("command, argv", HELP_ARGV, ids=[" ".join([c] + a) for c, a in HELP_ARGV])
def test_help_exits_0(command, argv, capsys):
    with pytest.raises(SystemExit) as e:
        COMMANDS[command][1](argv)
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_with_its_default(command):
    for name, parser in all_parsers(COMMANDS[command][0](), command):
        assert parser.allow_abbrev is False, f"{name}: allow_abbrev must be False"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{what} {choice.dest}: no help"
                continue
            assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{what}: no help"
            if action.option_strings:  # an option: its help says its default (or that it is required)
                text = action.help.lower()
                assert ("default" in text) if not action.required else ("required" in text), f"{what}: {action.help!r}"



@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_text_shows_no_format_escapes(command):
    """argparse %-formats option help but not a description: "95%%" there is printed as is."""
    for name, parser in all_parsers(COMMANDS[command][0](), command):
        text = parser.format_help()
        assert "%%" not in text and "%(" not in text, f"{name}: a format escape in its help:\n{text}"

BAD_VALUES = [
    ("fewshot", ["train", "--threads", "0"], "--threads"),
    ("fewshot", ["train", "--k-shot", "0"], "--k-shot"),
    ("fewshot", ["train", "--meta-lr", "inf"], "--meta-lr"),
    ("fewshot", ["train", "--meta-lr", "nan"], "--meta-lr"),
    ("fewshot", ["train", "--inner-lr", "0"], "--inner-lr"),
    ("fewshot", ["train", "--inner-lr", "-0.1"], "--inner-lr"),
    ("fewshot", ["train", "--n-way", "1"], "--n-way"),
    ("fewshot", ["train", "--iterations", "0"], "--iterations"),
    ("fewshot", ["train", "--iterations", "2.5"], "--iterations"),
    ("fewshot", ["train", "--meta-batch-size", "-3"], "--meta-batch-size"),
    ("fewshot", ["train", "--width", "wide"], "--width"),
    ("fewshot", ["train", "--test-steps", "0"], "--test-steps"),
    ("fewshot", ["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    ("fewshot", ["train", "--seed", "-1"], "--seed"),
    ("fewshot", ["train", "--device", "cuda"], "--device"),
    ("fewshot", ["train", "--device", "mps"], "--device"),
    ("fewshot", ["train", "--device", "tpu"], "--device"),
    ("fewshot", ["train", "--downsample", "avg"], "--downsample"),
    ("fewshot", ["evaluate", "x.pt", "--tasks", "1"], "--tasks"),
    ("fewshot", ["evaluate", "x.pt", "--tasks", "0"], "--tasks"),
    ("fewshot", ["evaluate", "x.pt", "--steps", "-1"], "--steps"),
    ("fewshot", ["results", "--iterations", "0"], "--iterations"),
    ("fewshot", ["results", "--tasks", "1"], "--tasks"),
    ("fewshot", ["results", "--width", "0"], "--width"),
    ("fewshot", ["results", "--meta-batch-size", "0"], "--meta-batch-size"),
    ("fewshot", ["bf16", "--iterations", "-5"], "--iterations"),
    ("fewshot", ["bf16", "--tasks", "1"], "--tasks"),
    ("bench", ["--threads", "0"], "--threads"),
    ("bench", ["--device", "cuda"], "--device"),
    ("bench", ["--device", "mps"], "--device"),
    ("bench", ["--replot", "/nonexistent/bench.csv"], "--replot"),
    ("bench.widgets", ["--n", "0"], "--n"),
    ("bench.widgets", ["--threads", "-1"], "--threads"),
    ("reproduce_sinusoid", ["--iterations", "0"], "--iterations"),
    ("reproduce_sinusoid", ["--k-shot", "5", "0"], "--k-shot"),
    ("reproduce_sinusoid", ["--threads", "0"], "--threads"),
    ("reproduce_sinusoid", ["--seed", "-2"], "--seed"),
    ("lake", ["x.pt", "--runs", "0"], "--runs"),
    ("lake", ["x.pt", "--steps", "-1"], "--steps"),
    ("lake", ["x.pt", "--seed", "one"], "--seed"),
    ("exercises", ["--check=yes"], "--check"),
    ("omniglot_study", ["run", "--device", "cuda"], "--device"),
    ("omniglot_study", ["ablation", "--rows", "everything"], "--rows"),
    ("gpu_session", ["--out", "o", "--data", "d"], "--device"),  # its default, cuda, on a machine without CUDA
    ("gpu_session", ["--out", "o", "--data", "/nonexistent/omniglot", "--device", "cpu"], "--data"),
    ("gpu_session", ["--out", "o", "--data", "d", "--device", "cpu", "--workers", "0"], "--workers"),
    ("gpu_session", ["--out", "o", "--data", "d", "--device", "cpu", "--minutes", "0"], "--minutes"),
    ("gpu_session", ["--out", "o", "--data", "d", "--device", "cpu", "--resume", "README.md"], "--resume"),
]


@pytest.mark.parametrize("command, argv, option", BAD_VALUES, ids=[" ".join([c] + a) for c, a, _ in BAD_VALUES])
def test_bad_values_are_argparse_errors_naming_the_option(command, argv, option, capsys, no_gpu):
    with pytest.raises(SystemExit) as e:
        COMMANDS[command][1](argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"argument {option}" in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].count("error:") == 1


UNKNOWN = [  # unknown flags, and abbreviations of real ones (refused: allow_abbrev=False)
    ("fewshot", ["results", "--no-ship"], "--no-ship"),
    ("fewshot", ["train", "--iterations", "1", "--out", "x.pt", "--bogus"], "--bogus"),
    ("fewshot", ["train", "--iterations", "1", "--out", "x.pt", "--iter", "5"], "--iter"),
    ("fewshot", ["results", "--runs", "somewhere"], "--runs"),
    ("fewshot", ["bf16", "--shi"], "--shi"),
    ("bench", ["--qui"], "--qui"),
    ("bench.widgets", ["--thr", "2"], "--thr"),
    ("reproduce_sinusoid", ["--iter", "10"], "--iter"),
    ("exercises", ["--che"], "--che"),
    ("lake", ["x.pt", "--run", "3"], "--run"),
    ("gpu_session", ["--out", "o", "--data", "d", "--device", "cpu", "--work", "2"], "--work"),
]


@pytest.mark.parametrize("command, argv, flag", UNKNOWN, ids=[" ".join([c] + a) for c, a, _ in UNKNOWN])
def test_unknown_flags_and_abbreviations_are_errors(command, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        COMMANDS[command][1](argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments" in err and flag in err, err


def test_good_values_parse_to_numbers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = fewshot_cli.build_parser().parse_args(
        ["train", "--iterations", "10", "--out", "x.pt", "--meta-lr", "1e-3", "--inner-lr", "0.4", "--threads", "2",
         "--inner-steps", "0", "--seed", "0", "--device", "cuda:0"])
    assert (args.iterations, args.meta_lr, args.inner_lr, args.threads, args.inner_steps, args.seed, args.device) == (
        10, 1e-3, 0.4, 2, 0, 0, "cuda:0")
    results = fewshot_cli.build_parser().parse_args(["results"])
    assert (results.runs_dir, results.json, results.ship) == ("runs/omniglot", None, False)
    assert bench_run.build_parser().parse_args(["--device", "cuda"]).device == "cuda"


def test_the_helpers(monkeypatch):
    assert cli.positive_int("3") == 3 and cli.nonnegative_int("0") == 0 and cli.int_at_least(2)("2") == 2
    assert cli.positive_float("1e-3") == 1e-3 and cli.device("cpu") == "cpu"
    for fn, text in ((cli.positive_int, "0"), (cli.positive_int, "1.5"), (cli.nonnegative_int, "-1"),
                     (cli.int_at_least(2), "1"), (cli.positive_float, "0"), (cli.positive_float, "-inf"),
                     (cli.positive_float, "inf"), (cli.positive_float, "nan"), (cli.positive_float, "x"),
                     (cli.device, "gpu"), (cli.device_among("cpu"), "cuda")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected|available"):
            fn(text)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cli.device("cuda:0") == "cuda:0"
    with pytest.raises(argparse.ArgumentTypeError, match="1 CUDA device"):
        cli.device("cuda:1")
    assert math.isfinite(cli.positive_float("1e300"))


def test_reproduce_sinusoid_writes_into_the_run_dir_and_ships_only_when_asked(tmp_path, capsys):
    shipped = {p: sha256(p) for p in (reproduce_sinusoid.SHIPPED_RESULTS, *reproduce_sinusoid.SHIPPED_WEIGHTS.glob("sinusoid_k*.pt"))}
    assert len(shipped) == 3  # the results and K = 5, 10
    reproduce_sinusoid.main(["--k-shot", "5", "--iterations", "2", "--run-dir", str(tmp_path), "--no-progress"])
    report = json.loads((tmp_path / "sinusoid.json").read_text())
    assert [r["k_shot"] for r in report["rows"]] == [5] and report["rows"][0]["iterations"] == 2
    assert report["rows"][0]["sha256"] == sha256(tmp_path / "sinusoid_k5.pt") and "--ship" not in report["command"]
    assert {p: sha256(p) for p in shipped} == shipped  # a quick look never touches the shipped files
    # --ship with fewer meta-iterations than shipped: refused before any training or write
    with pytest.raises(SystemExit) as e:
        reproduce_sinusoid.main(["--k-shot", "5", "--iterations", "3", "--run-dir", str(tmp_path / "ship"), "--ship"])
    assert "--iterations" in str(e.value) and "70,000" in str(e.value)
    assert not (tmp_path / "ship").exists() and {p: sha256(p) for p in shipped} == shipped
