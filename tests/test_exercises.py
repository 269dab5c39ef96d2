"""mamlkit.course.exercises: solution markers -> student stubs, and check_exercise's three outcomes."""
import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mamlkit.course import exercises as ex

SOLUTION = """\
import torch

def inner_step(theta, grad, alpha):
    \"\"\"θ' = θ − α g\"\"\"
    ### BEGIN SOLUTION
    step = alpha * grad
    return theta - step
    ### END SOLUTION

class Learner:
    def meta_step(self):
        if True:
            ### BEGIN SOLUTION
            return 1
            ### END SOLUTION
print("after")"""


def synthetic_notebook(code=SOLUTION, markdown="Why?\n<!-- BEGIN SOLUTION -->Because.<!-- END SOLUTION -->\nEnd."):
    nb = new_notebook(cells=[new_markdown_cell("# Title"), new_code_cell(code), new_markdown_cell(markdown)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i}"
    nb.cells[1]["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nb.cells[1]["execution_count"] = 7
    return nb


def test_code_blocks_become_stubs_at_their_own_indentation():
    out = ex.strip_code_solutions(SOLUTION).split("\n")
    # every line outside the blocks survives in order
    kept = [l for l in SOLUTION.split("\n")]
    start1, end1 = kept.index("    ### BEGIN SOLUTION"), kept.index("    ### END SOLUTION")
    start2, end2 = kept.index("            ### BEGIN SOLUTION"), kept.index("            ### END SOLUTION")
    expected = (kept[:start1] + ["    # YOUR CODE HERE", "    raise NotImplementedError()"] + kept[end1 + 1:start2]
                + ["            # YOUR CODE HERE", "            raise NotImplementedError()"] + kept[end2 + 1:])
    assert out == expected
    assert "alpha * grad" not in "\n".join(out) and "return 1" not in "\n".join(out)
    compile("\n".join(out), "<student>", "exec")  # the stub is valid Python


def test_stubbed_function_raises_not_implemented():
    scope = {}
    exec(ex.strip_code_solutions(SOLUTION), scope)
    with pytest.raises(NotImplementedError):
        scope["inner_step"](1.0, 2.0, 0.5)


@pytest.mark.parametrize("source, message", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside the block"),
])
def test_unbalanced_code_markers_raise(source, message):
    with pytest.raises(ex.MarkerError, match=message):
        ex.strip_code_solutions(source, "nb.ipynb, cell 3")
    with pytest.raises(ex.MarkerError, match="nb.ipynb, cell 3"):
        ex.strip_code_solutions(source, "nb.ipynb, cell 3")


def test_markdown_answers():
    md = "Q1 <!-- BEGIN SOLUTION -->a1<!-- END SOLUTION --> Q2 <!-- BEGIN SOLUTION -->\na2\n<!-- END SOLUTION -->."
    assert ex.strip_markdown_answers(md) == f"Q1 {ex.ANSWER_STUB} Q2 {ex.ANSWER_STUB}."
    with pytest.raises(ex.MarkerError, match="never closed"):
        ex.strip_markdown_answers("<!-- BEGIN SOLUTION --> a")
    with pytest.raises(ex.MarkerError, match="without"):
        ex.strip_markdown_answers("a <!-- END SOLUTION -->")


def test_student_version_strips_outputs_tags_cells_and_keeps_the_solution_intact():
    nb = synthetic_notebook()
    original = json.dumps(nb, sort_keys=True)
    student = ex.student_version(nb, "x.ipynb")
    assert json.dumps(nb, sort_keys=True) == original  # the input is not modified
    code, md = student.cells[1], student.cells[2]
    assert code.outputs == [] and code.execution_count is None
    assert ex.NBVAL_TAG in code.metadata["tags"]
    assert ex.BEGIN_SOLUTION not in code.source and code.source.count("raise NotImplementedError()") == 2
    assert md.source == f"Why?\n{ex.ANSWER_STUB}\nEnd."
    assert ex.normalize(nb).cells[1].source == SOLUTION  # the solution keeps its answers


def test_unbalanced_marker_in_a_notebook_names_notebook_and_cell():
    nb = synthetic_notebook(code="def f():\n    ### BEGIN SOLUTION\n    return 1")
    with pytest.raises(ex.MarkerError, match=r"01_x\.ipynb, cell 1"):
        ex.student_version(nb, "01_x.ipynb")


def write_repo(tmp_path, nb):
    (tmp_path / "solutions").mkdir()
    nbformat.write(nb, tmp_path / "solutions" / "01_x.ipynb")
    return tmp_path


def test_generator_writes_byte_stable_files_and_check_reports_differences(tmp_path, capsys):
    root = write_repo(tmp_path, synthetic_notebook())
    assert ex.main(["--check", "--root", str(root)]) == 1  # notebooks/ missing, solution has outputs
    assert not (root / "notebooks").exists()  # --check writes nothing
    assert ex.main(["--root", str(root)]) == 0
    student = (root / "notebooks" / "01_x.ipynb").read_text(encoding="utf-8")
    solution = (root / "solutions" / "01_x.ipynb").read_text(encoding="utf-8")
    assert student.endswith("\n") and ex.BEGIN_SOLUTION not in student and "YOUR CODE HERE" in student
    assert '"outputs": []' in solution and "alpha * grad" in solution
    assert ex.main(["--check", "--root", str(root)]) == 0
    assert ex.generate(root) == []  # a second run changes nothing: byte-stable
    assert (root / "notebooks" / "01_x.ipynb").read_text(encoding="utf-8") == student

    (root / "notebooks" / "01_x.ipynb").write_text(student.replace("YOUR CODE HERE", "edited"), encoding="utf-8")
    (root / "notebooks" / "99_orphan.ipynb").write_text(student, encoding="utf-8")
    capsys.readouterr()
    assert ex.main(["--check", "--root", str(root)]) == 1
    listed = capsys.readouterr().out
    assert "notebooks/01_x.ipynb" in listed and "notebooks/99_orphan.ipynb" in listed
    ex.generate(root)
    assert not (root / "notebooks" / "99_orphan.ipynb").exists()
    assert ex.differing(root) == []


def test_generator_exit_code_on_unbalanced_markers(tmp_path, capsys):
    root = write_repo(tmp_path, synthetic_notebook(code="x = 1\n### END SOLUTION"))
    assert ex.main(["--root", str(root)]) == 2
    assert "solutions/01_x.ipynb, cell 1" in capsys.readouterr().err


def test_count_exercises(tmp_path):
    root = write_repo(tmp_path, synthetic_notebook())  # one code cell with two blocks + one markdown answer
    assert ex.count_exercises(root / "solutions" / "01_x.ipynb") == 2
    nbformat.write(synthetic_notebook(markdown="no answer"), root / "solutions" / "02_y.ipynb")
    assert ex.count_exercises(root / "solutions") == 3


# ----------------------------------------------------------------------------------------------
# check_exercise


def reference_double(x):
    return 2 * x


def check_doubles(fn):
    if fn(3) != 6:
        raise ex.ExerciseError("fn(3) should be 6: did you add instead of multiply?")


def check_negative(fn):
    ex.expect_close(fn(-1.5), -3.0, "negative inputs: did you take an absolute value?")


def test_check_exercise_right_answer_returns_the_learners_function(capsys):
    def mine(x):
        return x + x

    assert ex.check_exercise("double", mine, reference=reference_double, checks=[check_doubles, check_negative]) is mine
    assert "✓ double: 2 checks passed" in capsys.readouterr().out


def test_check_exercise_stub_returns_reference(capsys):
    def stub(x):
        # YOUR CODE HERE
        raise NotImplementedError()

    got = ex.check_exercise("double", stub, reference=reference_double, checks=[check_doubles])
    assert got is reference_double
    assert "✗ double: not done yet" in capsys.readouterr().out


def test_check_exercise_wrong_answer_raises_the_specific_feedback():
    with pytest.raises(ex.ExerciseError, match="add instead of multiply"):
        ex.check_exercise("double", lambda x: x + 2, reference=reference_double, checks=[check_doubles])
    with pytest.raises(ex.ExerciseError, match=r"absolute value\?\n  got 3, expected -3"):
        ex.check_exercise("double", lambda x: 2 * abs(x), reference=reference_double, checks=[check_doubles, check_negative])
    assert issubclass(ex.ExerciseError, AssertionError)


def test_check_exercise_crash_in_learner_code_names_the_check():
    def crashes(x):
        return x["key"]

    with pytest.raises(ex.ExerciseError, match=r"check 1 of 1 \(check_doubles\).*TypeError"):
        ex.check_exercise("double", crashes, reference=reference_double, checks=[check_doubles])


def test_check_exercise_rejects_bad_arguments():
    with pytest.raises(TypeError, match="checks"):
        ex.check_exercise("double", reference_double, reference=reference_double, checks=[])
    with pytest.raises(TypeError, match="reference"):
        ex.check_exercise("double", reference_double, reference=None, checks=[check_doubles])
    with pytest.raises(TypeError, match="fn"):
        ex.check_exercise("double", 3, reference=reference_double, checks=[check_doubles])


def test_expect_close_shape_mismatch():
    import torch

    with pytest.raises(ex.ExerciseError, match="shape"):
        ex.expect_close(torch.zeros(2), torch.zeros(3), "wrong shape")
    ex.expect_close(torch.ones(3), torch.ones(3) + 1e-9, "close enough")


def test_missing_cell_ids_get_deterministic_ones(tmp_path):
    (tmp_path / "solutions").mkdir()
    raw = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {}, "execution_count": 1, "outputs": [],
         "source": ["def f():\n", "    ### BEGIN SOLUTION\n", "    return 1\n", "    ### END SOLUTION"]},
        {"cell_type": "markdown", "metadata": {}, "source": "text"}]}
    (tmp_path / "solutions" / "01_x.ipynb").write_text(json.dumps(raw), encoding="utf-8")
    first = ex.plan(tmp_path)
    assert ex.plan(tmp_path) == first  # the same input gives the same bytes, ids included
    student = json.loads(first[tmp_path / "notebooks" / "01_x.ipynb"])
    assert [c["id"] for c in student["cells"]] == ["cell-000", "cell-001"]
    assert "".join(student["cells"][0]["source"]) == "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()"


# ----------------------------------------------------------------------------------------------
# under nbgrader (NBGRADER_EXECUTION set): every failure raises, after mamlkit's reference takes the name


def run_check_cell(namespace):
    """Run a check cell `double = check_exercise(...)` in `namespace`, as a notebook cell does."""
    exec("double = check_exercise('double', double, reference=reference_double, checks=checks)", namespace)
    return namespace


def cell_namespace(fn, checks):
    return {"check_exercise": ex.check_exercise, "double": fn, "reference_double": reference_double, "checks": checks}


def stub(x):
    # YOUR CODE HERE
    raise NotImplementedError()


@pytest.mark.parametrize("fn, error, message", [
    (stub, ex.ExerciseNotDone, "not done yet"),
    (lambda x: x + 2, ex.ExerciseError, "add instead of multiply"),
    (lambda x: x["key"], ex.ExerciseError, "could not run your function"),
])
def test_under_nbgrader_a_failure_raises_and_the_reference_takes_the_name(monkeypatch, fn, error, message):
    monkeypatch.setenv(ex.GRADING_ENV, "autograde")
    namespace = cell_namespace(fn, [check_doubles])
    with pytest.raises(error, match=message) as info:
        run_check_cell(namespace)
    assert namespace["double"] is reference_double  # the later cells run with mamlkit's version
    assert "0 points" in str(info.value) and "in place of double" in str(info.value)


def test_under_nbgrader_a_right_answer_passes(monkeypatch, capsys):
    monkeypatch.setenv(ex.GRADING_ENV, "validate")

    def mine(x):
        return x + x

    assert run_check_cell(cell_namespace(mine, [check_doubles, check_negative]))["double"] is mine
    assert "✓ double: 2 checks passed" in capsys.readouterr().out


def test_outside_nbgrader_a_stub_still_falls_back(monkeypatch):
    monkeypatch.delenv(ex.GRADING_ENV, raising=False)
    assert not ex.grading()
    assert run_check_cell(cell_namespace(stub, [check_doubles]))["double"] is reference_double


# ----------------------------------------------------------------------------------------------
# nbgrader cell metadata


def test_nbgrader_metadata_scheme():
    nb = synthetic_notebook()
    nb.cells.insert(2, new_code_cell("double = check_exercise('double', double, reference=r, checks=[c])"))
    nb.cells.append(new_code_cell("print('the end')"))
    nb.cells[2]["id"], nb.cells[4]["id"] = "c-check", "c-end"
    nb.cells[0].metadata["nbgrader"] = {"grade": True, "stale": 1}  # replaced, whatever it was
    meta = [c.metadata["nbgrader"] for c in ex.normalize(nb, "solutions/07_x.ipynb").cells]
    base = {"schema_version": 3}
    assert meta == [
        dict(base, grade=False, solution=False, locked=True, grade_id="nb07_ro_c0"),
        dict(base, grade=False, solution=True, locked=False, grade_id="nb07_ex1"),
        dict(base, grade=True, solution=False, locked=True, grade_id="nb07_ex1_check", points=ex.POINTS),
        dict(base, grade=True, solution=True, locked=False, grade_id="nb07_ex2", points=ex.POINTS),  # markdown answer
        dict(base, grade=False, solution=False, locked=True, grade_id="nb07_ro_c-end"),
    ]
    student = ex.student_version(nb, "solutions/07_x.ipynb")
    assert [c.metadata["nbgrader"] for c in student.cells] == meta
    assert ex.notebook_key("notebook") == "notebook" and ex.notebook_key("12_a.ipynb") == "nb12"


def test_under_nbgrader_a_warning_in_a_check_does_not_reach_stderr(monkeypatch, capsys):
    import sys

    def warns(fn):  # as warnings.warn does (pytest captures real warnings itself)
        print("UserWarning: a harmless deprecation", file=sys.stderr)
        check_doubles(fn)

    monkeypatch.setenv(ex.GRADING_ENV, "autograde")
    run_check_cell(cell_namespace(reference_double, [warns]))
    out = capsys.readouterr()
    assert out.err == "" and "a harmless deprecation" in out.out  # nbgrader scores a cell with stderr output 0
