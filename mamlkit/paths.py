"""Where the files shipped inside the package live (they install with it: pyproject's package-data).

    WEIGHTS   mamlkit/weights/   shipped checkpoints, their sha256 and the results tables they come with
    RESULTS   mamlkit/results/   measured results (benchmarks, accuracy checks) that notebooks show

Only two lookups reach outside the package, both documented fallbacks for a source checkout:
`data.omniglot.shared_dir()` (../shared/omniglot beside the repository, where this project's offline
machines keep Omniglot) and `course.exercises.REPO` (the solutions/ and notebooks/ folders it syncs).
"""
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
WEIGHTS = PACKAGE / "weights"
RESULTS = PACKAGE / "results"
