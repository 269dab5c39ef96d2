"""A small progress bar that works in a terminal and in JupyterLab (an ipywidgets bar).

`progress_bar(iterable, desc=..., total=...)` yields the items of `iterable` and shows
"desc  1200/70000  [ 1.7%]  350 it/s  ETA 3m15s  loss=0.812". Call `.set_postfix(loss=...)` on it to
show metrics. In a notebook it draws an `ipywidgets.IntProgress` with a label; elsewhere it rewrites
one line on stderr at most 5 times a second (no flood of lines in CI logs: a newline every 10%).
"""
from __future__ import annotations

import sys
import time


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class progress_bar:
    """Iterate with a progress display. `disable=True` turns it into a plain iterator."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, disable: bool = False,
                 initial: int = 0):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.disable, self.n = desc, disable, initial
        self.postfix = ""
        self._start, self._last = time.perf_counter(), 0.0
        self._start_n = initial
        self._widget = None
        self._last_tenth = -1
        if not disable and _in_notebook():
            import ipywidgets as w
            from IPython.display import display

            self._bar = w.IntProgress(value=initial, min=0, max=self.total or 1)
            self._label = w.Label()
            self._widget = w.HBox([w.Label(desc), self._bar, self._label])
            display(self._widget)

    def set_postfix(self, **metrics) -> None:
        self.postfix = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())

    def _text(self) -> str:
        elapsed = time.perf_counter() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [self.desc, f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts.append(f"[{100 * self.n / self.total:5.1f}%]")
        parts.append(f"{rate:.1f} it/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_fmt_time((self.total - self.n) / rate)}")
        parts.append(self.postfix)
        return "  ".join(p for p in parts if p)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and (self.total is None or self.n < self.total):
            return
        self._last = now
        text = self._text()
        if self._widget is not None:
            self._bar.value = self.n
            self._label.value = text[len(self.desc):].strip()
        else:
            # in a terminal, rewrite one line; in a log (CI, a pipe), print a line every 10% only
            tenth = int(10 * self.n / self.total) if self.total else self.n // 1000
            if sys.stderr.isatty():
                sys.stderr.write("\r" + text)
            elif tenth != self._last_tenth:
                sys.stderr.write(text + "\n")
            self._last_tenth = tenth
            sys.stderr.flush()

    def close(self) -> None:
        if not self.disable and self._widget is None and not getattr(self, "_closed", False):
            self._closed = True
            sys.stderr.write(("\r" if sys.stderr.isatty() else "") + self._text() + "\n")
            sys.stderr.flush()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()
