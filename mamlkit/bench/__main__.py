"""`python -m mamlkit.bench`: the benchmark's command line (run.py)."""
import sys

from .run import main

sys.exit(main())
