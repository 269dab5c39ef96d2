"""The old import path of the few-shot experiment, kept so that users' code and commands keep working.

The code is in `mamlkit.experiments.fewshot` (train, evaluate, classify, load_pretrained) and its command
line in `mamlkit.experiments.fewshot_cli`; `python -m mamlkit.fewshot ...` runs that command line.
"""
from .experiments.fewshot import *  # noqa: F401,F403
from .experiments.fewshot import __all__  # noqa: F401

if __name__ == "__main__":
    from .experiments.fewshot_cli import main

    main()
