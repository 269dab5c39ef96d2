"""The 20-way within-alphabet one-shot test of Lake et al. (2015), on alphabets held out from meta-training.

Lake, Salakhutdinov, Tenenbaum (2015), "Human-level concept learning through probabilistic program
induction", Science 350(6266), introduced Omniglot together with this test ("one-shot classification"):

    one run = 20 characters of ONE alphabet
        support: one drawer's image of each character (20 images, labels 0..19), seen once each
        query:   another drawer's image of each character (20 images), to be labelled 0..19
    error of a run = share of the 20 query images misclassified
    reported: the mean error over the runs (± 1.96 sd / sqrt(runs), a 95% confidence interval)

Why within one alphabet: the 20 characters share strokes and style, so telling them apart is harder
than the usual 20-way task of the meta-learning papers (MAML's Table 1 draws its 20 characters from
all test alphabets, where the alphabet alone often gives a character away). It is the test people
and Bayesian Program Learning (BPL) were compared on.

The published error rates (`BASELINES`):

    people                                             4.5%   Lake et al. (2015)
    Bayesian Program Learning (BPL)                    3.3%   Lake et al. (2015)
    convnet, minimal background set 1 / set 2  24.0% / 22.3%  Lake et al. (2015), supplementary material
    Siamese convnet, full background set               8.0%   Koch, Zemel, Salakhutdinov (2015)
    modified Hausdorff distance (pixels, no training) 38.8%   Lake et al. (2015); demo_classification.py
                                                              of github.com/brendenlake/omniglot

Their 20 official runs take 2 runs from each of the 10 alphabets of `images_evaluation`; the convnets
and BPL learned from `images_background` (30 alphabets, 964 characters) or, in the supplementary
material, from one of the two minimal sets (5 alphabets each, `images_background_small1/2`): the
setting closest to this course, whose models learn from the minimal sets. Here the runs come from
alphabets of the minimal sets that the "alphabets" split holds out of meta-training
(`omniglot.TEST_ALPHABETS`: Early_Aramaic and Korean), drawn at random with a seed: the same protocol
on other alphabets, so the comparison is indicative, not exact.

    make_runs(path)                          the runs: alphabet, 20 characters, two drawers, raw PNGs
    evaluate_within_alphabet(classifier)     the mean error of a 20-way classifier over the runs
    python -m mamlkit.experiments.lake CHECKPOINT        the same from the command line, as a markdown table

The runs read the RAW PNG files (105x105, 1-bit), not the processed 28x28 cache, and hand them to
`classifier.classify` as PIL images: the path a learner's own scans take, preprocessing included.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text, check_writable
from ..cli import nonnegative_int, positive_int
from ..data.omniglot import (
    TEST_ALPHABETS,
    find_omniglot,
    list_images,
    source_files,
)
from ..evaluation import mean_ci95

WAYS = 20  # characters per run: the test is 20-way, one shot

# The published error rates (%), with where they come from. `background`: what the method learned from.
BASELINES = [
    {"method": "people", "error": 4.5, "background": "a lifetime of writing",
     "source": "Lake, Salakhutdinov, Tenenbaum (2015), Science 350(6266)"},
    {"method": "Bayesian Program Learning (BPL)", "error": 3.3, "background": "images_background (30 alphabets)",
     "source": "Lake, Salakhutdinov, Tenenbaum (2015), Science 350(6266)"},
    {"method": "convnet (Lake et al.), minimal background set 1", "error": 24.0,
     "background": "images_background_small1 (5 alphabets)",
     "source": "Lake, Salakhutdinov, Tenenbaum (2015), supplementary material (minimal background sets)"},
    {"method": "convnet (Lake et al.), minimal background set 2", "error": 22.3,
     "background": "images_background_small2 (5 alphabets)",
     "source": "Lake, Salakhutdinov, Tenenbaum (2015), supplementary material (minimal background sets)"},
    {"method": "Siamese convnet", "error": 8.0, "background": "images_background (30 alphabets), distorted copies",
     "source": "Koch, Zemel, Salakhutdinov (2015), Siamese neural networks for one-shot image recognition, "
               "ICML Deep Learning Workshop"},
    {"method": "modified Hausdorff distance", "error": 38.8, "background": "none (compares pixels)",
     "source": "Lake, Salakhutdinov, Tenenbaum (2015); github.com/brendenlake/omniglot "
               "python/one-shot-classification/demo_classification.py"},
]


# ----------------------------------------------------------------------------------------------
# the raw files: which PNG is which alphabet / character / drawer


def _catalogue(root: Path) -> dict[str, dict[str, dict[int, tuple[Path, str]]]]:
    """{alphabet: {characterNN: {drawer: (zip or folder, member)}}} of every set found at `root`.

    Only the listing is read here (a zip's directory, a folder's file names): no image is opened.
    A character that two sets both hold (Greek and Latin are in both minimal sets) is taken from the
    first, as `omniglot.load_omniglot` does, so it is never counted twice.
    """
    catalogue: dict[str, dict[str, dict[int, tuple[Path, str]]]] = {}
    for source in source_files(root):
        found: dict[str, dict[str, dict[int, tuple[Path, str]]]] = {}
        for alphabet, character, d, m in list_images(source):
            drawers = found.setdefault(alphabet, {}).setdefault(character, {})
            if d in drawers:
                raise ValueError(f"{source}: {alphabet}/{character} has two images of drawer {d}: "
                                 f"{drawers[d][1]} and {m}")
            drawers[d] = (source, m)
        for alphabet, characters in found.items():
            for character, drawers in characters.items():
                catalogue.setdefault(alphabet, {}).setdefault(character, drawers)  # the first set wins
    return catalogue


def _read_files(files) -> list[bytes]:
    """The bytes of each (zip or folder, member), each zip opened once."""
    zips: dict[Path, zipfile.ZipFile] = {}
    out = []
    try:
        for source, member in files:
            try:
                if source.is_file():
                    if source not in zips:
                        zips[source] = zipfile.ZipFile(source)
                    out.append(zips[source].read(member))
                else:
                    out.append((source / member).read_bytes())
            except (zipfile.BadZipFile, zlib.error, KeyError, OSError) as e:
                raise ValueError(f"{source}: cannot read {member} (moved, truncated or corrupt?): {e}") from e
    finally:
        for z in zips.values():
            z.close()
    return out


def _open_images(files) -> list:
    from PIL import Image, UnidentifiedImageError

    images = []
    for (source, member), data in zip(files, _read_files(files)):
        try:
            im = Image.open(io.BytesIO(data))
            im.load()  # decode now: a broken file fails here, naming itself, not inside the classifier
        except (UnidentifiedImageError, OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{source}: {member} is not a readable image (corrupt file?): {e}") from e
        images.append(im)
    return images


@dataclass(frozen=True)
class Run:
    """One run of the test: 20 characters of one alphabet, one drawer's image of each as the support set
    (label i = `characters[i]`), another drawer's as the query set.

    `query_order`: the order `evaluate_within_alphabet` shows the query images in (a random permutation
    of the labels, so the position of a query image says nothing about its label).
    """

    index: int  # which run of `make_runs` (0, 1, ...)
    alphabet: str
    characters: tuple[str, ...]  # 20 "characterNN" names; the label of characters[i] is i
    support_drawer: int
    query_drawer: int
    query_order: tuple[int, ...]  # a permutation of 0..19
    support_files: tuple[tuple[Path, str], ...] = field(repr=False)  # (zip or folder, member), label order
    query_files: tuple[tuple[Path, str], ...] = field(repr=False)

    def support_bytes(self) -> list[bytes]:
        """The raw PNG files of the 20 support images, in label order."""
        return _read_files(self.support_files)

    def query_bytes(self) -> list[bytes]:
        """The raw PNG files of the 20 query images, in label order (query i shows characters[i])."""
        return _read_files(self.query_files)

    def support_images(self) -> list:
        """The 20 support images as PIL images (Omniglot: 105x105, mode '1'), in label order."""
        return _open_images(self.support_files)

    def query_images(self) -> list:
        """The 20 query images as PIL images, in label order (not yet shuffled by `query_order`)."""
        return _open_images(self.query_files)


# ----------------------------------------------------------------------------------------------
# argument checks: all made before any image is read or any classifier is run


def _check_runs_seed(runs, seed) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int):
        raise TypeError(f"runs: expected an integer >= 1 (how many 20-way runs), got {runs!r}")
    if runs < 1:
        raise ValueError(f"runs: expected an integer >= 1 (how many 20-way runs), got {runs}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an integer (the runs' random seed), got {seed!r}")


def _check_alphabets(alphabets) -> tuple[str, ...]:
    if isinstance(alphabets, str):
        raise TypeError(f"alphabets: expected a list of alphabet names, got the string {alphabets!r}; "
                        f"write ({alphabets!r},) for one alphabet")
    try:
        alphabets = tuple(alphabets)
    except TypeError:
        raise TypeError(f"alphabets: expected a list of alphabet names, got {type(alphabets).__name__}") from None
    if not alphabets:
        raise ValueError("alphabets: expected at least one alphabet name, got none")
    bad = [a for a in alphabets if not isinstance(a, str)]
    if bad:
        raise TypeError(f"alphabets: expected alphabet names (strings), got {bad!r}")
    if len(set(alphabets)) != len(alphabets):
        raise ValueError(f"alphabets: each alphabet once (runs are spread evenly over them), got {list(alphabets)}")
    return alphabets


def _check_steps(steps) -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps: expected None (the model's test steps) or an integer >= 0, got {steps!r}")


def _check_classifier(classifier) -> None:
    if not callable(getattr(classifier, "classify", None)):
        raise TypeError(f"classifier: expected an object with a classify(support_images, support_labels, "
                        f"query_images, steps=None) method and n_way == {WAYS} (a 20-way FewShotClassifier), "
                        f"got {type(classifier).__name__}")
    n_way = getattr(classifier, "n_way", None)
    if n_way != WAYS:
        raise ValueError(f"classifier: the within-alphabet test is {WAYS}-way, so the classifier must be too; "
                         f"this one has n_way={n_way!r} (meta-train one with "
                         f"`python -m mamlkit.fewshot train --n-way {WAYS} ...`)")


# ----------------------------------------------------------------------------------------------
# the runs


def _make_runs(path, alphabets, runs: int, seed: int) -> tuple[Path, list[Run]]:
    _check_runs_seed(runs, seed)
    alphabets = _check_alphabets(alphabets)
    root = find_omniglot(path)
    catalogue = _catalogue(root)
    unknown = [a for a in alphabets if a not in catalogue]
    if unknown:
        raise ValueError(f"alphabets: {unknown} not in the data at {root}; its alphabets are {sorted(catalogue)}")
    for a in alphabets:
        if len(catalogue[a]) < WAYS:
            enough = sorted(b for b, chars in catalogue.items() if len(chars) >= WAYS)
            raise ValueError(f"alphabets: {a} has {len(catalogue[a])} characters; a {WAYS}-way within-alphabet run "
                             f"needs at least {WAYS} of one alphabet (alphabets with enough: {enough})")

    # One generator, seeded once, drives every draw in a fixed order: the same data, alphabets, runs
    # and seed give the same runs on any machine (torch.randperm on the CPU is deterministic).
    g = torch.Generator().manual_seed(seed)
    made = []
    for i in range(runs):
        alphabet = alphabets[i % len(alphabets)]  # round-robin: every alphabet gets its share of runs
        names = sorted(catalogue[alphabet])
        pick = torch.randperm(len(names), generator=g)[:WAYS].tolist()  # 20 of them, at random if there are more
        characters = tuple(sorted(names[j] for j in pick))  # sorted: labels follow the character numbers
        drawers_of = [catalogue[alphabet][c] for c in characters]
        # the two drawers must have drawn all 20 characters (always true of Omniglot's 20 drawers)
        common = sorted(set.intersection(*(set(d) for d in drawers_of)))
        if len(common) < 2:
            raise ValueError(f"path: in {root}, the characters {alphabet}/{list(characters)} share fewer than two "
                             f"drawers ({common}); a run needs two drawers who drew all {WAYS} of them")
        a, b = torch.randperm(len(common), generator=g)[:2].tolist()  # distinct by construction
        support_drawer, query_drawer = common[a], common[b]
        query_order = tuple(torch.randperm(WAYS, generator=g).tolist())
        made.append(Run(index=i, alphabet=alphabet, characters=characters, support_drawer=support_drawer,
                        query_drawer=query_drawer, query_order=query_order,
                        support_files=tuple(d[support_drawer] for d in drawers_of),
                        query_files=tuple(d[query_drawer] for d in drawers_of)))
    return root, made


def make_runs(path=None, *, alphabets=TEST_ALPHABETS, runs: int = 40, seed: int = 0) -> list[Run]:
    """`runs` seeded 20-way within-alphabet runs on the raw Omniglot PNGs at `find_omniglot(path)`.

    Run i uses alphabets[i % len(alphabets)] (round-robin, so the alphabets share the runs evenly); its
    20 characters (all of them, or 20 at random when the alphabet has more), its two distinct drawers
    and its query order come from one `torch.Generator` seeded with `seed`. Only the file listing is
    read here; a run opens its PNGs when asked (`Run.support_images()`, `Run.support_bytes()`, ...).

    Raises ValueError / TypeError naming the argument for runs < 1, a non-integer seed, an alphabet
    the data lacks, or one with fewer than 20 characters (Tagalog has 17).
    """
    return _make_runs(path, alphabets, runs, seed)[1]


# ----------------------------------------------------------------------------------------------
# the evaluation


def _mean_ci(errors: list[float]) -> tuple[float, float | None]:
    if len(errors) < 2:
        return errors[0], None  # one run: no spread to estimate, so no interval
    return mean_ci95(torch.tensor(errors))


def evaluate_within_alphabet(classifier, path=None, *, alphabets=TEST_ALPHABETS, runs: int = 40, seed: int = 0,
                             steps: int | None = None) -> dict:
    """The 20-way within-alphabet one-shot error (%) of `classifier` over `make_runs(path, ...)`.

    classifier: anything with n_way == 20 and `classify(support_images, support_labels, query_images,
    steps=...)` returning 20 labels, e.g. `FewShotClassifier.from_checkpoint(path)` of a 20-way model.
    It gets the raw images (lists of 20 PIL images) and labels 0..19; the query images come in the
    run's `query_order`, so their position says nothing about their labels.
    steps: inner steps at test time, passed to `classify` (None: the model's own, for MAML 5 at 20-way).

    Returns {"error", "ci95" (None for a single run), "runs", "per_alphabet": {alphabet: {"error",
    "ci95", "runs"}}, "alphabets", "seed", "steps", "data"}, errors in percent.
    """
    _check_classifier(classifier)  # every check first: a wrong argument costs no classification
    _check_steps(steps)
    root, run_list = _make_runs(path, alphabets, runs, seed)
    labels = torch.arange(WAYS)
    errors: list[float] = []
    for run in run_list:
        order = list(run.query_order)
        query = run.query_images()
        predicted = classifier.classify(run.support_images(), labels, [query[j] for j in order], steps=steps)
        predicted = torch.as_tensor(predicted).detach().cpu().flatten()
        if predicted.numel() != WAYS:
            raise ValueError(f"classifier: classify returned {predicted.numel()} labels for {WAYS} query images")
        wrong = (predicted.long() != torch.tensor(order)).sum().item()  # query k shows character order[k]
        errors.append(100.0 * wrong / WAYS)
    error, ci95 = _mean_ci(errors)
    per_alphabet = {}
    for a in dict.fromkeys(r.alphabet for r in run_list):  # the alphabets that got runs, in order
        mine = [e for e, r in zip(errors, run_list) if r.alphabet == a]
        e, ci = _mean_ci(mine)
        per_alphabet[a] = {"error": e, "ci95": ci, "runs": len(mine)}
    return {"error": error, "ci95": ci95, "runs": len(run_list), "per_alphabet": per_alphabet,
            "alphabets": list(_check_alphabets(alphabets)), "seed": seed, "steps": steps, "data": str(root)}


# ----------------------------------------------------------------------------------------------
# the table and the command line


def _pct(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def markdown_table(result: dict | None = None, *, name: str = "this model") -> str:
    """The baselines as a markdown table, with `result` (of `evaluate_within_alphabet`) on top when given."""
    lines = ["| method | learned from | error (%) | source |", "| --- | --- | ---: | --- |"]
    if result is not None:
        ci = "" if result["ci95"] is None else f" ± {result['ci95']:.1f}"
        lines.append(f"| **{name}** | mamlkit meta-training | **{result['error']:.1f}{ci}** ({result['runs']} runs, "
                     f"{', '.join(result['alphabets'])}) | `python -m mamlkit.experiments.lake`, seed {result['seed']} |")
    for b in BASELINES:
        lines.append(f"| {b['method']} | {b['background']} | {b['error']:.1f} | {b['source']} |")
    return "\n".join(lines)


def _held_out_note(classifier, alphabets) -> str | None:
    """Why the number might not be a held-out-alphabet result, read from the checkpoint's config."""
    config = getattr(classifier, "config", None)
    split = getattr(config, "split", None)
    if split is None:
        return None
    if split != "alphabets":
        return (f"note: this model was meta-trained with split={split!r} (a random character split): other "
                f"characters of these alphabets were in its training set, so this is not a held-out-alphabet "
                f"result; meta-train with `--split alphabets` for one.")
    seen = [a for a in alphabets if a not in TEST_ALPHABETS]
    if seen:
        return (f"note: the 'alphabets' split holds out only {list(TEST_ALPHABETS)}; {seen} were in this "
                f"model's meta-training set.")
    return None


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.experiments.lake`."""
    parser = argparse.ArgumentParser(
        prog="python -m mamlkit.experiments.lake", allow_abbrev=False,  # --run is not --runs: a typo is an error
        description="The 20-way within-alphabet one-shot test of Lake et al. (2015) on held-out alphabets: "
                    "error of a 20-way checkpoint beside the published baselines, as a markdown table.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a 20-way checkpoint of `python -m mamlkit.fewshot train --n-way 20` "
                             "(or mamlkit/weights/omniglot_20way_1shot_maml.pt)")
    parser.add_argument("--runs", type=positive_int, default=40,
                        help="number of runs, spread evenly over the alphabets (default 40)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the characters, drawers and query order (default 0)")
    parser.add_argument("--steps", type=nonnegative_int, default=None,
                        help="inner steps at test time (default: the checkpoint's test steps)")
    parser.add_argument("--alphabets", nargs="+", default=list(TEST_ALPHABETS), metavar="ALPHABET",
                        help=f"alphabets to draw the runs from (default {' '.join(TEST_ALPHABETS)}, the ones the "
                             f"'alphabets' split holds out of meta-training)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="Omniglot zips or folders (default: found automatically, see mamlkit.data.omniglot.find_omniglot)")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="also write the result as JSON to OUT, atomically (default: no file)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        # the cheap checks before loading anything
        _check_runs_seed(args.runs, args.seed)
        _check_steps(args.steps)
        alphabets = _check_alphabets(args.alphabets)
        if args.json is not None:
            check_writable(args.json, "--json")  # before the runs, not after them
        from .fewshot import FewShotClassifier

        classifier = FewShotClassifier.from_checkpoint(args.checkpoint)
        result = evaluate_within_alphabet(classifier, args.data, alphabets=alphabets, runs=args.runs,
                                          seed=args.seed, steps=args.steps)
        note = _held_out_note(classifier, alphabets)
        out = {**result, "checkpoint": str(args.checkpoint), "held_out_note": note, "baselines": BASELINES}
        if args.json is not None:
            atomic_write_text(json.dumps(out, indent=2) + "\n", args.json)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:  # one line, never a traceback
        raise SystemExit(f"python -m mamlkit.experiments.lake: error: {' '.join(str(e).split())}") from None
    print("## 20-way within-alphabet one-shot classification (Lake et al. 2015)\n")
    print(markdown_table(result, name=os.path.basename(str(args.checkpoint))))
    print("\nper alphabet: " + ", ".join(f"{a} {_pct(v['error'])}% ({v['runs']} runs)"
                                         for a, v in result["per_alphabet"].items()))
    if note:
        print(note)
    if args.json is not None:
        print(f"written: {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
