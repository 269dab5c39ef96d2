"""Exercise tooling for the course: student notebooks generated from solutions, and answer checks.

The course's notebooks teach MAML (Finn, Abbeel, Levine 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks") by having the learner write its pieces. Each notebook is authored once,
with its answers, in `solutions/NN_name.ipynb`; the learner's copy `notebooks/NN_name.ipynb` is
generated from it:

    python -m mamlkit.course.exercises            # write notebooks/ (and tidy solutions/ in place)
    python -m mamlkit.course.exercises --check    # write nothing; exit 1 listing the files that differ

The markers are nbgrader's, so the same solutions also work with nbgrader:

    code cell                                   student version
        def inner_step(θ, ...):                     def inner_step(θ, ...):
            ### BEGIN SOLUTION                          # YOUR CODE HERE
            return θ - α * g                            raise NotImplementedError()
            ### END SOLUTION

    markdown cell: <!-- BEGIN SOLUTION --> ... <!-- END SOLUTION -->  becomes  YOUR ANSWER HERE

Both folders are stored without outputs or execution counts, every code cell carries the cell tag
`nbval-ignore-output` (so `pytest --nbval` runs them and the cells' own `assert` lines do the checking),
and the JSON is written the way `nbformat` writes it (sorted keys, indent 1, trailing newline), so that
running the generator twice gives the same bytes.

In a notebook, each exercise cell is followed by a check cell:

    inner_step = check_exercise("one inner step", inner_step, reference=mamlkit_version,
                                checks=[check_matches_hand_computation, ...])

A check is a function `check(fn)` that raises `ExerciseError("feedback naming the likely mistake")`.
An exercise not done yet (the stub raises NotImplementedError) is not an error: a notice is printed
and mamlkit's reference is returned, so every later cell still runs.

nbgrader. The generator also gives every cell nbgrader's cell metadata (schema 3), derived from the
markers alone, so `nbgrader generate_assignment` accepts `solutions/` as its source notebooks:

    cell                                        nbgrader metadata                    grade_id
    code cell with ### BEGIN SOLUTION           solution, not graded, editable       nbNN_exK
    the code cell right after it, calling       graded, locked, POINTS points        nbNN_exK_check
      check_exercise(...) (the check cell)        (autograded: it scores 0 if it raises)
    markdown cell with <!-- BEGIN SOLUTION -->  solution and graded, POINTS points   nbNN_exK
                                                  (nbgrader requires both; graded by hand)
    every other cell                            locked (read-only: autograde runs     nbNN_ro_<cell id>
                                                  the instructor's version)

NN is the notebook's number (01_... -> nb01), K counts the notebook's exercises from 1, and a cell id
never changes once set, so the grade ids are the same on every run. Every exercise is worth POINTS = 1.

While nbgrader executes a notebook (`nbgrader autograde` or `nbgrader validate`: it sets the
environment variable NBGRADER_EXECUTION), `check_exercise` grades instead of helping: an exercise not
done, wrong, or crashing makes the check cell raise (0 points for it), after putting mamlkit's
reference in place of the learner's function in the notebook's namespace, so the cells after it
still run and earn their own points. Outside nbgrader (a learner, `pytest --nbval`) nothing changes.
Two rules follow for authors: the check_exercise(...) call is the LAST statement of its check cell (a
statement after it would not run under nbgrader), and in markdown the answer markers stand on lines
of their own (nbgrader replaces whole lines). `tests/test_nbgrader.py` checks them and runs nbgrader.
Making an nbgrader course directory from solutions/: `python -m mamlkit.course.grading`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

import nbformat

from ..paths import PACKAGE

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
BEGIN_ANSWER = "<!-- BEGIN SOLUTION -->"
END_ANSWER = "<!-- END SOLUTION -->"
ANSWER_STUB = "YOUR ANSWER HERE"
NBVAL_TAG = "nbval-ignore-output"
CHECK_CALL = "check_exercise("  # what makes the code cell after an exercise its (graded) check cell
POINTS = 1  # nbgrader points of each exercise
NBGRADER_SCHEMA = 3  # nbgrader's cell-metadata schema_version (nbgrader 0.7-0.9)
GRADING_ENV = "NBGRADER_EXECUTION"  # set by nbgrader while it executes a notebook: 'autograde' or 'validate'

REPO = PACKAGE.parent  # the repository root of a source checkout: solutions/ and notebooks/ (paths.py)


class ExerciseError(AssertionError):
    """A wrong answer to an exercise; the message says what is likely wrong and how to fix it."""


class MarkerError(ValueError):
    """Unbalanced `### BEGIN SOLUTION` / `### END SOLUTION` markers in a solution notebook."""


class ExerciseNotDone(ExerciseError):
    """Raised under nbgrader only: the exercise still raises NotImplementedError (it scores 0 points)."""


# ----------------------------------------------------------------------------------------------
# checking answers inside a notebook


def grading() -> bool:
    """True while nbgrader executes the notebook (`nbgrader autograde` / `nbgrader validate` set
    NBGRADER_EXECUTION): `check_exercise` then raises for an exercise that is not done or wrong."""
    return bool(os.environ.get(GRADING_ENV))


def _stand_in(fn: Callable, reference: Callable, namespace: dict) -> list[str]:
    """Rebind every name of `namespace` bound to `fn` to `reference`; return those names."""
    names = [name for name, value in list(namespace.items()) if value is fn]
    for name in names:
        namespace[name] = reference
    return names


def check_exercise(title: str, fn: Callable, *, reference: Callable, checks: Iterable[Callable]) -> Callable:
    """Run each `check(fn)`; return `fn` when all pass, or `reference` when the exercise is not done.

    - the learner's stub raises NotImplementedError: print "✗ <title>: not done yet ..." and return
      `reference`, so the rest of the notebook runs with mamlkit's version;
    - a check raises ExerciseError: it propagates, and the notebook stops on its feedback;
    - the learner's function raises anything else: an ExerciseError naming the check and the error;
    - every check passes: print "✓ <title>: N checks passed" and return `fn`.

    Under nbgrader (`grading()`: autograde or validate) every failure raises, so that the graded check
    cell scores 0: not done raises ExerciseNotDone. Before raising, the names of the calling notebook's
    namespace that are bound to `fn` are rebound to `reference`, as the assignment
    `name = check_exercise(...)` would have done, so that the later cells still run. And what the checks
    write to stderr (a warning) goes to stdout: nbgrader would score a cell with stderr output 0.
    """
    if not isinstance(title, str) or not title:
        raise TypeError(f"title: expected a non-empty string naming the exercise, got {title!r}")
    if not callable(fn):
        raise TypeError(f"fn: expected the function you wrote for {title!r}, got {type(fn).__name__}")
    if not callable(reference):
        raise TypeError(f"reference: expected mamlkit's version of {title!r} (a callable), got {type(reference).__name__}")
    checks = list(checks)
    if not checks or not all(callable(c) for c in checks):
        raise TypeError(f"checks: expected a non-empty list of functions check(fn) for {title!r}")

    def graded_failure(error: ExerciseError) -> ExerciseError:
        """Under nbgrader: put `reference` in place of `fn` in the caller's namespace, say so in `error`."""
        frame = sys._getframe(2)  # graded_failure <- check_exercise <- the notebook cell
        try:
            names = _stand_in(fn, reference, frame.f_globals)
        finally:
            del frame
        where = f" in place of {', '.join(names)}" if names else ""
        error.args = (f"{error.args[0] if error.args else title}\n(graded: 0 points for {title!r}; mamlkit's "
                      f"reference now stands{where} so that the later cells still run)",)
        return error

    for i, check in enumerate(checks, 1):
        try:
            # nbgrader scores a graded cell 0 when it writes to stderr: under it, a warning goes to stdout
            with contextlib.redirect_stderr(sys.stdout) if grading() else contextlib.nullcontext():
                check(fn)
        except NotImplementedError as e:
            if grading():
                raise graded_failure(ExerciseNotDone(f"✗ {title}: not done yet (the stub raises NotImplementedError)")) from e
            print(f"✗ {title}: not done yet — carrying on with mamlkit's reference so later cells still run.")
            return reference
        except ExerciseError as e:
            if grading():
                raise graded_failure(e)
            raise
        except Exception as e:  # the learner's code crashed: say where, keep the original traceback
            name = getattr(check, "__name__", f"check {i}")
            error = ExerciseError(
                f"{title}: check {i} of {len(checks)} ({name}) could not run your function: "
                f"{type(e).__name__}: {e}"
            )
            raise (graded_failure(error) if grading() else error) from e
    print(f"✓ {title}: {len(checks)} checks passed")
    return fn


def expect_close(actual, expected, feedback: str, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Raise ExerciseError(feedback + the two values) unless `actual` ≈ `expected` (tensors or numbers).

    A small helper for check functions: `expect_close(fn(x), by_hand, "did you ...?")`.
    """
    import torch

    a = torch.as_tensor(actual, dtype=torch.float64) if not isinstance(actual, torch.Tensor) else actual.detach().double()
    e = torch.as_tensor(expected, dtype=torch.float64) if not isinstance(expected, torch.Tensor) else expected.detach().double()
    if a.shape != e.shape:
        raise ExerciseError(f"{feedback}\n  shape: got {tuple(a.shape)}, expected {tuple(e.shape)}")
    if not torch.allclose(a, e, rtol=rtol, atol=atol):
        err = float((a - e).abs().max())
        show = (lambda t: f"{float(t):.6g}") if a.numel() == 1 else (lambda t: str(t.flatten()[:4].tolist()) + ("…" if t.numel() > 4 else ""))
        raise ExerciseError(f"{feedback}\n  got {show(a)}, expected {show(e)} (max difference {err:.3g})")


# ----------------------------------------------------------------------------------------------
# solution -> student notebook


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_code_solutions(source: str, where: str = "this cell") -> str:
    """Replace each `### BEGIN SOLUTION` ... `### END SOLUTION` block (markers included) by a stub
    `# YOUR CODE HERE` / `raise NotImplementedError()` indented like the BEGIN marker."""
    out, indent, start = [], None, None
    for n, line in enumerate(source.split("\n"), 1):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if indent is not None:
                raise MarkerError(f"{where}: line {n} opens {BEGIN_SOLUTION!r} inside the block opened on line {start}")
            indent, start = line[: len(line) - len(line.lstrip())], n
        elif marker == END_SOLUTION:
            if indent is None:
                raise MarkerError(f"{where}: line {n} has {END_SOLUTION!r} without a {BEGIN_SOLUTION!r} before it")
            out += [indent + s for s in CODE_STUB]
            indent = None
        elif indent is None:
            out.append(line)
    if indent is not None:
        raise MarkerError(f"{where}: {BEGIN_SOLUTION!r} on line {start} is never closed by {END_SOLUTION!r}")
    return "\n".join(out)


def strip_markdown_answers(source: str, where: str = "this cell") -> str:
    """Replace each `<!-- BEGIN SOLUTION -->` ... `<!-- END SOLUTION -->` span by YOUR ANSWER HERE."""
    out, pos = [], 0
    while True:
        b, e = source.find(BEGIN_ANSWER, pos), source.find(END_ANSWER, pos)
        if b < 0 and e < 0:
            return "".join(out) + source[pos:]
        if b < 0 or (0 <= e < b):
            raise MarkerError(f"{where}: {END_ANSWER!r} without a {BEGIN_ANSWER!r} before it")
        e = source.find(END_ANSWER, b)
        nested = source.find(BEGIN_ANSWER, b + len(BEGIN_ANSWER))
        if e < 0:
            raise MarkerError(f"{where}: {BEGIN_ANSWER!r} is never closed by {END_ANSWER!r}")
        if 0 <= nested < e:
            raise MarkerError(f"{where}: a second {BEGIN_ANSWER!r} opens before the first is closed")
        out += [source[pos:b], ANSWER_STUB]
        pos = e + len(END_ANSWER)


def _has_solution(cell) -> bool:
    src = _source(cell)
    if cell.get("cell_type") == "code":
        return any(line.strip() == BEGIN_SOLUTION for line in src.split("\n"))
    return cell.get("cell_type") == "markdown" and BEGIN_ANSWER in src


def notebook_key(name: str) -> str:
    """The prefix of a notebook's nbgrader grade ids: "solutions/01_maml.ipynb" -> "nb01" (else the stem)."""
    stem = Path(name).stem
    number = re.match(r"\d+", stem)
    return f"nb{number.group(0)}" if number else (re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "nb")


def _nbgrader(grade_id: str, *, solution=False, grade=False, locked=False, points=None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": NBGRADER_SCHEMA,
            "solution": solution}
    if grade:
        meta["points"] = points
    return meta


def nbgrader_metadata(nb, name: str = "notebook"):
    """Set every cell's nbgrader metadata (in place; the scheme is in the module docstring) and return `nb`.

    Derived from the solution markers and cell ids only, replacing whatever nbgrader metadata the cells had:
    an exercise's solution cell, its check cell (the next code cell, when it calls check_exercise), and
    every other cell locked."""
    key, exercise, after_exercise = notebook_key(name), 0, False
    for cell in nb["cells"]:
        meta = cell.setdefault("metadata", {})
        code = cell["cell_type"] == "code"
        if _has_solution(cell):
            exercise += 1
            meta["nbgrader"] = _nbgrader(f"{key}_ex{exercise}", solution=True, grade=not code,
                                         points=POINTS if not code else None)
            after_exercise = code
            continue
        if code and after_exercise and CHECK_CALL in _source(cell):
            meta["nbgrader"] = _nbgrader(f"{key}_ex{exercise}_check", grade=True, locked=True, points=POINTS)
        else:
            cell_id = re.sub(r"[^A-Za-z0-9_-]", "_", cell["id"])
            meta["nbgrader"] = _nbgrader(f"{key}_ro_{cell_id}", locked=True)
        if code:
            after_exercise = False
    return nb


def normalize(nb, name: str = "notebook"):
    """A copy of `nb` as stored in the repository: no outputs, no execution counts, cell ids set,
    every code cell tagged `nbval-ignore-output`, nbgrader metadata on every cell (`nbgrader_metadata`).
    Deterministic: the same input gives the same output."""
    if nb.get("nbformat") != 4:
        raise ValueError(f"{name}: expected an nbformat 4 notebook, got nbformat {nb.get('nbformat')!r}")
    nb = copy.deepcopy(nb)
    nb["nbformat_minor"] = max(nb.get("nbformat_minor", 0), 5)  # 4.5: cells carry ids
    seen = set()
    for i, cell in enumerate(nb["cells"]):
        cell["source"] = _source(cell)
        if not cell.get("id") or cell["id"] in seen:
            cell["id"] = f"cell-{i:03d}"  # deterministic, unlike nbformat's random ids
        seen.add(cell["id"])
        meta = cell.setdefault("metadata", {})
        for transient in ("execution", "collapsed", "scrolled"):
            meta.pop(transient, None)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            tags = meta.setdefault("tags", [])
            if NBVAL_TAG not in tags:
                tags.append(NBVAL_TAG)
        else:
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    return nbgrader_metadata(nb, name)


def student_version(nb, name: str = "notebook"):
    """The learner's notebook: `normalize(nb)` with every solution block replaced by its stub."""
    nb = normalize(nb, name)
    for i, cell in enumerate(nb["cells"]):
        where = f"{name}, cell {i}"
        if cell["cell_type"] == "code":
            cell["source"] = strip_code_solutions(cell["source"], where)
        elif cell["cell_type"] == "markdown":
            cell["source"] = strip_markdown_answers(cell["source"], where)
    return nb


def dumps(nb) -> str:
    """The notebook's JSON text exactly as stored: nbformat's writer plus a trailing newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def read(path: str | Path):
    """A notebook as stored, without nbformat's read-time repairs (which give missing cell ids random values)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("nbformat") != 4:
        return nbformat.read(path, as_version=4)  # older formats: let nbformat convert
    return nbformat.from_dict(data)


def count_exercises(path: str | Path) -> int:
    """Number of exercises (cells holding a solution block) in one notebook, or in every *.ipynb of a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(count_exercises(p) for p in sorted(path.glob("*.ipynb")))
    if not path.is_file():
        raise FileNotFoundError(f"path: no notebook or folder at {path}")
    nb = read(path)
    return sum(_has_solution(cell) for cell in nb.cells)


def plan(root: str | Path = REPO) -> dict[Path, str | None]:
    """What the generator would write: {path: text} for solutions/ and notebooks/, None = delete.

    Raises MarkerError naming the notebook and cell index of unbalanced markers."""
    root = Path(root)
    solutions, notebooks = root / "solutions", root / "notebooks"
    if not solutions.is_dir():
        raise FileNotFoundError(f"root: expected a solutions/ folder in {root}")
    wanted: dict[Path, str | None] = {}
    for src in sorted(solutions.glob("*.ipynb")):
        nb = read(src)
        wanted[src] = dumps(normalize(nb, f"solutions/{src.name}"))
        wanted[notebooks / src.name] = dumps(student_version(nb, f"solutions/{src.name}"))
    if notebooks.is_dir():
        for stale in sorted(notebooks.glob("*.ipynb")):  # generated from a solution that no longer exists
            wanted.setdefault(stale, None)
    return wanted


def differing(root: str | Path = REPO) -> list[Path]:
    """The files that `python -m mamlkit.course.exercises` would change (write, rewrite or delete)."""
    out = []
    for path, text in plan(root).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            out.append(path)
    return out


def generate(root: str | Path = REPO) -> list[Path]:
    """Write notebooks/ from solutions/ (and tidy solutions/ in place). Returns the files changed."""
    root = Path(root)
    wanted = plan(root)
    changed = differing(root)
    for path in changed:
        if wanted[path] is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path], encoding="utf-8")
    return changed


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m mamlkit.course.exercises`."""
    parser = argparse.ArgumentParser(prog="python -m mamlkit.course.exercises", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing the files that differ (default off: write them)")
    parser.add_argument("--root", default=str(REPO), help="the repository root (default: the one holding mamlkit/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    try:
        if args.check:
            stale = differing(root)
            for path in stale:
                print(f"out of date: {path.relative_to(root)}")
            if stale:
                print("run `python -m mamlkit.course.exercises` to regenerate them", file=sys.stderr)
            return 1 if stale else 0
        changed = generate(root)
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in changed:
        print(f"wrote {path.relative_to(root)}" if path.exists() else f"removed {path.relative_to(root)}")
    n = len(list((root / "solutions").glob("*.ipynb")))
    print(f"{n} solution notebooks, {count_exercises(root / 'solutions') if n else 0} exercises, {len(changed)} files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
