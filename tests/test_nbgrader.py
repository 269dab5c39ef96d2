"""nbgrader end to end: the solutions are nbgrader source notebooks, and autograde scores them.

- the nbgrader metadata the generator sets (no nbgrader needed): one solution cell and one graded,
  locked check cell per exercise, every other cell locked, unique and stable grade ids;
- real `nbgrader generate_assignment` on every notebook of solutions/: it accepts them all, and the
  release it makes is, cell by cell, the student version in notebooks/;
- real `nbgrader autograde` of notebook 01 for three students: the full solution (full marks), the blank
  release (0 for every exercise) and one with an exercise crashing and one not done (0 for those two,
  full marks for the rest); every notebook runs to its last cell.

The nbgrader tests skip when nbgrader is not installed (it is a tool for instructors: pip install nbgrader).
Their kernel is this Python, with this checkout first on its path.
"""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mamlkit.course import exercises as ex
from mamlkit.course import grading

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
GRADED = "01_maml_from_equations"  # the notebook autograded here: 4 exercises, about 15 s to run


def read(path):
    return nbformat.read(path, as_version=4)


def nbgrader_of(cell):
    return cell.metadata.get("nbgrader", {})


# ----------------------------------------------------------------------------------------------
# the metadata, as the generator writes it


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_is_a_solution_cell_and_a_graded_check_cell(path):
    nb = read(path)
    key = ex.notebook_key(path.name)
    solution = [c for c in nb.cells if nbgrader_of(c).get("solution")]
    graded = [c for c in nb.cells if nbgrader_of(c).get("grade")]
    assert len(solution) == ex.count_exercises(path) > 0
    assert [nbgrader_of(c)["grade_id"] for c in solution] == [f"{key}_ex{k}" for k in range(1, len(solution) + 1)]
    assert [nbgrader_of(c)["grade_id"] for c in graded] == [f"{key}_ex{k}_check" for k in range(1, len(solution) + 1)]
    for cell in nb.cells:
        meta = nbgrader_of(cell)
        assert meta["schema_version"] == ex.NBGRADER_SCHEMA, f"{path.name}: a cell without nbgrader metadata"
        if meta["grade"]:
            assert cell.cell_type == "code" and ex.CHECK_CALL in cell.source
            assert meta["locked"] and not meta["solution"] and meta["points"] == ex.POINTS
        elif meta["solution"]:
            assert ex.BEGIN_SOLUTION in cell.source and not meta["locked"]
        else:
            assert meta["locked"] and ex.BEGIN_SOLUTION not in cell.source
    ids = [nbgrader_of(c)["grade_id"] for c in nb.cells]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_check_cell_ends_with_its_check_exercise_call(path):
    # under nbgrader an undone exercise makes that call raise: a statement after it would never run, and
    # the later cells would fail on what it defines (define it above the call instead)
    for cell in read(path).cells:
        if nbgrader_of(cell).get("grade") and cell.cell_type == "code":
            last = ast.parse(cell.source).body[-1]
            call = getattr(last, "value", None)
            name = getattr(getattr(call, "func", None), "id", None) or getattr(getattr(call, "func", None), "attr", None)
            assert isinstance(call, ast.Call) and name == "check_exercise", (
                f"{path.name}, {nbgrader_of(cell)['grade_id']}: the cell's last statement is "
                f"{ast.unparse(last)[:80]!r}, not the check_exercise(...) call")


def test_student_notebooks_carry_the_same_metadata():
    for path in SOLUTIONS:
        solution, student = read(path), read(ROOT / "notebooks" / path.name)
        assert [nbgrader_of(c) for c in student.cells] == [nbgrader_of(c) for c in solution.cells]


def test_the_course_is_worth_one_point_per_exercise():
    points = sum(nbgrader_of(c).get("points", 0) for p in SOLUTIONS for c in read(p).cells if nbgrader_of(c).get("grade"))
    assert points == ex.POINTS * ex.count_exercises(ROOT / "solutions")


def test_make_course(tmp_path, capsys):
    made = grading.make_course(tmp_path, ["01", "03"])
    assert {k: [p.name for p in v] for k, v in made.items()} == {
        "01_maml_from_equations": ["01_maml_from_equations.ipynb"], "03_loops_made_visible": ["03_loops_made_visible.ipynb"]}
    copied = tmp_path / "source" / "01_maml_from_equations" / "01_maml_from_equations.ipynb"
    assert copied.read_bytes() == (ROOT / "solutions" / "01_maml_from_equations.ipynb").read_bytes()
    config = tmp_path / "nbgrader_config.py"
    assert "c.Execute.timeout = 600" in config.read_text()
    config.write_text("c = get_config()  # the instructor's own\n")
    assert grading.main([str(tmp_path), "--assignment", "week1", "0"]) == 0  # every notebook starts with 0
    assert len(list((tmp_path / "source" / "week1").glob("*.ipynb"))) == len(SOLUTIONS)
    assert config.read_text() == "c = get_config()  # the instructor's own\n"  # never overwritten
    assert grading.main([str(tmp_path), "99"]) == 2 and "no solution notebook starts with ['99']" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# real nbgrader


@pytest.fixture
def nbgrader(tmp_path):
    """Run `python -m nbgrader ...` in a course directory of its own; the kernel is this Python + this checkout."""
    pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install nbgrader; it is in the dev extra)")
    course, home = tmp_path / "course", tmp_path / "jupyter"
    spec = home / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    env = dict(os.environ, JUPYTER_PATH=str(home / "data"), JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    env.pop("NBGRADER_EXECUTION", None)

    def run(*args, timeout=600):
        proc = subprocess.run([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"],
                              cwd=course, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc

    run.course = course
    return run


def solution_lines(source: str) -> set[str]:
    """The stripped lines inside `### BEGIN SOLUTION` blocks that do not also occur outside them."""
    inside, outside, block = set(), set(), False
    for line in source.split("\n"):
        marker = line.strip()
        if marker in (ex.BEGIN_SOLUTION, ex.END_SOLUTION):
            block = marker == ex.BEGIN_SOLUTION
        elif marker:
            (inside if block else outside).add(marker)
    return inside - outside


@pytest.mark.slow
def test_generate_assignment_accepts_every_notebook_and_releases_the_student_version(nbgrader):
    grading.make_course(nbgrader.course, assignment="course")
    nbgrader("generate_assignment", "course", "--force", "--log-level=WARN")
    for path in SOLUTIONS:
        release = nbformat.read(nbgrader.course / "release" / "course" / path.name, as_version=4)
        solution = read(path)
        assert [c.source for c in release.cells] == [c.source for c in read(ROOT / "notebooks" / path.name).cells]
        for got, cell in zip(release.cells, solution.cells):
            if nbgrader_of(cell).get("solution"):
                assert "raise NotImplementedError()" in got.source
                leaked = solution_lines(cell.source) & {line.strip() for line in got.source.split("\n")}
                assert not leaked, f"{path.name}: solution code in the release: {leaked}"
            else:  # nbgrader makes every other cell read-only in the release
                assert got.metadata.get("editable") is False


def crash_and_skip(nb):
    """A submission of `nb` with exercise 1 crashing (a ValueError) and exercise 2 not done."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    solutions = [c for c in nb.cells if nbgrader_of(c).get("solution")]
    first, second = solutions[0], solutions[1]
    first.source = re.sub(rf"( *){re.escape(ex.BEGIN_SOLUTION)}.*?{re.escape(ex.END_SOLUTION)}",
                          lambda m: f'{m.group(1)}raise ValueError("a bug")', first.source, count=1, flags=re.S)
    second.source = ex.strip_code_solutions(second.source)
    return nb


@pytest.mark.slow
def test_autograde_full_marks_for_the_solution_and_zero_for_the_blank_release(nbgrader):
    from nbgrader.api import Gradebook

    grading.make_course(nbgrader.course, [GRADED])
    nbgrader("generate_assignment", GRADED, "--force", "--log-level=WARN")
    release = nbgrader.course / "release" / GRADED / f"{GRADED}.ipynb"
    assert ex.BEGIN_SOLUTION not in release.read_text(encoding="utf-8")
    solution = read(ROOT / "solutions" / f"{GRADED}.ipynb")
    submissions = {"full": solution, "blank": nbformat.read(release, as_version=4), "partial": crash_and_skip(solution)}
    for student, nb in submissions.items():
        folder = nbgrader.course / "submitted" / student / GRADED
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{GRADED}.ipynb")
    nbgrader("autograde", GRADED, "--force", "--log-level=WARN")

    exercises = ex.count_exercises(ROOT / "solutions" / f"{GRADED}.ipynb")
    key = ex.notebook_key(GRADED)
    expected = {
        "full": {f"{key}_ex{k}_check": ex.POINTS for k in range(1, exercises + 1)},
        "blank": {f"{key}_ex{k}_check": 0 for k in range(1, exercises + 1)},
        "partial": {f"{key}_ex{k}_check": 0 if k <= 2 else ex.POINTS for k in range(1, exercises + 1)},
    }
    with Gradebook(f"sqlite:///{nbgrader.course / 'gradebook.db'}") as gb:
        for student, want in expected.items():
            submitted = gb.find_submission_notebook(GRADED, GRADED, student)
            got = {g.name: g.score for g in submitted.grades}
            assert got == want, f"{student}: scores {got}, expected {want}"
            assert submitted.max_score == ex.POINTS * exercises

    for student, want in expected.items():
        nb = nbformat.read(nbgrader.course / "autograded" / student / GRADED / f"{GRADED}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), f"{student}: not every cell ran"
        assert code[-1].outputs, f"{student}: the last cell has no output"
        failed = {nbgrader_of(c).get("grade_id") for c in code if any(o.output_type == "error" for o in c.outputs)}
        assert failed == {g for g, points in want.items() if points == 0}, f"{student}: cells that raised: {failed}"
