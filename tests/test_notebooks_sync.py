"""The student notebooks in notebooks/ are exactly what `python -m mamlkit.course.exercises` makes of solutions/.

If one of these fails after you edited a solution: run `python -m mamlkit.course.exercises` and commit both folders.
"""
from pathlib import Path

import nbformat
import pytest

from mamlkit.course import exercises as ex

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MIN_EXERCISES = 12  # issue 6: the course as a whole has at least 12 exercises with checks


def names(paths):
    return [p.name for p in paths]


def test_there_are_solution_notebooks():
    assert SOLUTIONS, "solutions/ holds no notebooks"


def test_same_file_names_in_both_folders():
    assert names(NOTEBOOKS) == names(SOLUTIONS), "run `python -m mamlkit.course.exercises`"


def test_notebooks_equal_the_generators_output():
    stale = [str(p.relative_to(ROOT)) for p in ex.differing(ROOT)]
    assert stale == [], f"out of date (run `python -m mamlkit.course.exercises`): {stale}"


@pytest.mark.parametrize("path", SOLUTIONS + NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_outputs_and_every_code_cell_tagged(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}, cell {i}: outputs are stored"
        assert ex.NBVAL_TAG in cell.metadata.get("tags", []), f"{path.name}, cell {i}: no {ex.NBVAL_TAG} tag"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_notebooks_hold_no_solutions(path):
    text = path.read_text(encoding="utf-8")
    assert ex.BEGIN_SOLUTION not in text and ex.END_SOLUTION not in text
    assert ex.BEGIN_ANSWER not in text


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_exercise_has_a_check_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        if ex.BEGIN_SOLUTION in cell.source:
            following = code[i + 1].source if i + 1 < len(code) else ""
            assert "check_exercise(" in following, f"{path.name}: the exercise cell {cell.source[:60]!r}... has no check cell after it"


def test_at_least_12_exercises_in_the_course():
    # Fails until all six notebooks have landed (01 and 02 hold about half); keep it: it is the target.
    count = ex.count_exercises(ROOT / "solutions")
    assert count >= MIN_EXERCISES, (
        f"the course has {count} exercises across {len(SOLUTIONS)} solution notebooks; "
        f"issue 6 asks for at least {MIN_EXERCISES} (notebooks 03-06 add the rest)"
    )
