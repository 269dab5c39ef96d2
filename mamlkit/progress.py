"""Progress of a long loop: tqdm where a person watches, timed log lines where nobody does.

`progress_bar(iterable, desc=..., total=...)` is `tqdm.auto.tqdm` (a bar in a terminal, an ipywidgets
bar in JupyterLab) when stderr is a terminal or the code runs in a notebook. When stderr is a file or a
pipe (nohup, CI, a cluster job), a bar redrawn with carriage returns shows nothing useful, so it prints
one plain line every `interval` seconds instead:

    omniglot_5way_1shot_maml  1200/5000 (24.0%)  0.93 it/s  ETA 1h08m  meta_loss=0.412

The rate is measured from the first completed item on (the first item, which warms up caches and
allocators, would make the first ETA far too long), so the first line's ETA is already the steady one.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between two log lines when stderr is not a terminal


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_bar(iterable=None, *, desc: str = "", total: int | None = None, disable: bool = False,
                 initial: int = 0, interval: float = LOG_INTERVAL, file=None):
    """A tqdm bar, or a `LogProgress` when `file` (default stderr) is not a terminal and not a notebook."""
    file = sys.stderr if file is None else file
    if disable or _in_notebook() or (hasattr(file, "isatty") and file.isatty()):
        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, file=file, dynamic_ncols=True)
    return LogProgress(iterable, desc=desc, total=total, initial=initial, interval=interval, file=file)


class LogProgress:
    """The tqdm calls a training loop makes (`update`, `set_postfix`, `close`, iteration), as timed log lines."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0,
                 interval: float = LOG_INTERVAL, file=None, clock=time.monotonic):
        if not (isinstance(interval, (int, float)) and interval > 0):
            raise ValueError(f"interval: expected a positive number of seconds, got {interval!r}")
        self.iterable, self.desc, self.interval, self.clock = iterable, desc, interval, clock
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = initial
        self.file = sys.stderr if file is None else file
        self.postfix = ""
        self._first = None  # (time, n) when the first item after the start completed: the rate's origin
        self._last_line = clock()
        self._closed = False

    def set_postfix(self, **metrics) -> None:
        self.postfix = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())

    def rate(self) -> float | None:
        """Items per second since the first completed item; None until a second one completes."""
        if self._first is None or self.n <= self._first[1]:
            return None
        return (self.n - self._first[1]) / max(self.clock() - self._first[0], 1e-9)

    def line(self) -> str:
        parts = [self.desc, f"{self.n}/{self.total} ({100 * self.n / self.total:.1f}%)" if self.total else f"{self.n}"]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} it/s")
            if self.total:
                parts.append(f"ETA {_fmt_time((self.total - self.n) / rate)}")
        parts.append(self.postfix)
        return "  ".join(p for p in parts if p)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self._first is None:
            self._first = (now, self.n)
        if now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=self.file, flush=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            print(self.line(), file=self.file, flush=True)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()
