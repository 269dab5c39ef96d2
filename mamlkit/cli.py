"""Shared pieces of mamlkit's command lines: argparse `type=` functions that check a value's range.

Every `python -m mamlkit...` command builds its parser with `allow_abbrev=False` (a typo such as
`--run` for `--runs` is an error, not a silent match) and gives each option a `type=` from here, so a
value that makes no sense (`--threads 0`, `--meta-lr inf`, `--device cuda` on a machine without CUDA)
ends the command with argparse's one-line error naming the option, exit status 2, before anything is
loaded, trained or written:

    python -m mamlkit.fewshot train: error: argument --threads: expected an integer >= 1, got '0'

    positive_int         an integer >= 1 (counts: iterations, tasks, threads, widths)
    nonnegative_int      an integer >= 0 (seeds, inner steps where 0 means "no adaptation")
    int_at_least(n)      an integer >= n (e.g. `int_at_least(2)`: a confidence interval needs 2 tasks)
    positive_float       a finite float > 0 (step sizes α and β); rejects 0, negatives, inf and nan
    device               cpu, cuda, cuda:N or mps, and only one that this machine has
    device_among(*kinds) the same, limited to some device types (e.g. a benchmark that knows cpu and cuda)
"""
from __future__ import annotations

import argparse
import math
from typing import Callable

__all__ = ["positive_int", "nonnegative_int", "int_at_least", "positive_float", "device", "device_among"]


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, else argparse's one-line error naming the option."""

    def parse(text: str) -> int:
        value = _integer(text, f"an integer >= {minimum}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = "positive_int"
positive_int.__doc__ = "An argparse type: an integer >= 1 (a count)."
nonnegative_int = int_at_least(0)
nonnegative_int.__name__ = "nonnegative_int"
nonnegative_int.__doc__ = "An argparse type: an integer >= 0 (a seed, or a number of steps that may be 0)."


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0 (a step size); 0, negatives, inf and nan are refused."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


DEVICE_KINDS = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def device_among(*kinds: str) -> Callable[[str], str]:
    """An argparse type: a torch device of one of `kinds` that this machine has (returned as given)."""
    kinds = kinds or DEVICE_KINDS
    expected = ", ".join(k + (", cuda:N" if k == "cuda" else "") for k in kinds)

    def parse(text: str) -> str:
        import torch

        try:
            dev = torch.device(text)
        except (RuntimeError, TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected one of {expected}, got {text!r}") from None
        if dev.type not in kinds:
            raise argparse.ArgumentTypeError(f"expected one of {expected}, got {text!r}")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available on this machine "
                                                 f"(torch.cuda.is_available() is False); use cpu")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA "
                                                 f"device(s), numbered from 0")
        if dev.type == "mps" and not _mps_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no MPS device is available on this machine "
                                             f"(torch.backends.mps.is_available() is False); use cpu")
        return text

    parse.__name__ = "device"
    return parse


device = device_among(*DEVICE_KINDS)
device.__doc__ = "An argparse type: cpu, cuda, cuda:N or mps, refused when this machine does not have it."
