"""Grading the course with nbgrader: a course directory made from solutions/.

    python -m mamlkit.course.grading COURSE_DIR                     # one assignment per notebook
    python -m mamlkit.course.grading COURSE_DIR 01 03               # only these notebooks (name prefixes)
    python -m mamlkit.course.grading COURSE_DIR --assignment maml   # the notebooks in one assignment

It copies `solutions/NN_name.ipynb` to `COURSE_DIR/source/<assignment>/NN_name.ipynb` (the assignment
is named after the notebook unless --assignment is given) and writes `COURSE_DIR/nbgrader_config.py`
unless one exists. The solutions already carry nbgrader's cell metadata (`python -m
mamlkit.course.exercises` sets it; the scheme is in that module's docstring), so from COURSE_DIR:

    nbgrader generate_assignment 01_maml_from_equations     # release/<assignment>/: what students get
    nbgrader autograde 01_maml_from_equations               # submitted/<student>/<assignment>/*.ipynb
    nbgrader export                                         # grades.csv

nbgrader is a tool for instructors, not a dependency of mamlkit (`pip install nbgrader`). The kernel
that autograde starts (the notebooks' `python3`) must import mamlkit.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .exercises import REPO

CONFIG = '''\
# nbgrader configuration written by `python -m mamlkit.course.grading`
c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file
c.CourseDirectory.course_id = "mamlkit"
# the time limit of one cell under autograde/validate: a meta-training cell takes minutes on a slow CPU
# (nbgrader's default is 30 s, after which the cell fails and scores 0)
c.Execute.timeout = 600
'''


def solution_notebooks(selection: list[str] | None = None, root: str | Path = REPO) -> list[Path]:
    """The solution notebooks, all or those whose file name starts with one of `selection` ("01", "03_loops")."""
    found = sorted((Path(root) / "solutions").glob("*.ipynb"))
    if not found:
        raise FileNotFoundError(f"root: no solutions/*.ipynb in {root}")
    if not selection:
        return found
    chosen = [p for p in found if any(p.name.startswith(s) for s in selection)]
    missing = [s for s in selection if not any(p.name.startswith(s) for p in found)]
    if missing:
        raise ValueError(f"notebooks: no solution notebook starts with {missing}; "
                         f"there are {[p.name for p in found]}")
    return chosen


def make_course(course_dir: str | Path, selection: list[str] | None = None, *, assignment: str | None = None,
                root: str | Path = REPO) -> dict[str, list[Path]]:
    """Write `course_dir/source/<assignment>/<notebook>.ipynb` from solutions/ and, unless present,
    `course_dir/nbgrader_config.py`. Returns {assignment: [source notebooks]}."""
    course = Path(course_dir)
    made: dict[str, list[Path]] = {}
    for src in solution_notebooks(selection, root):
        name = assignment or src.stem
        dest = course / "source" / name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        made.setdefault(name, []).append(dest)
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(CONFIG, encoding="utf-8")
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mamlkit.course.grading", allow_abbrev=False,
                                     description="Make an nbgrader course directory from solutions/.")
    parser.add_argument("course_dir", help="the nbgrader course directory (created if missing)")
    parser.add_argument("notebooks", nargs="*", help="name prefixes of the notebooks to include (default: all)")
    parser.add_argument("--assignment", default=None,
                        help="put the notebooks in this one assignment (default: one assignment per notebook)")
    parser.add_argument("--root", default=str(REPO), help="the repository root (default: the one holding mamlkit/)")
    args = parser.parse_intermixed_args(argv)  # options before or after the notebook prefixes
    try:
        made = make_course(args.course_dir, args.notebooks, assignment=args.assignment, root=args.root)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, paths in made.items():
        print(f"source/{name}/: {', '.join(p.name for p in paths)}")
    print(f"next, in {args.course_dir}: nbgrader generate_assignment <assignment>; "
          "nbgrader autograde <assignment>; nbgrader export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
