"""Atomic, resumable checkpoints that load with `torch.load(weights_only=True)`.

An interrupted run must lose nothing and must never leave a half-written file that later loads as
valid. So a checkpoint is written to a temporary file in the same folder, flushed to disk (fsync),
then renamed over the old one with `os.replace`, which is atomic on POSIX and Windows: a reader sees
either the old complete file or the new complete file, never a mix. A torn temporary file is ignored
(and cleaned up by the next save).

Only tensors, numbers, strings, lists and dicts go in, so `weights_only=True` (no pickle code
execution) can read them back.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from .checks import check_device

FORMAT = "mamlkit-checkpoint-v1"


def _temporary_files(path: Path) -> list[Path]:
    """Temporary files beside `path` that no save is still writing: `.NAME.pidP.XXXXXXXX.tmp` of a process P
    that has ended (or untouched for a day), and `.NAME.XXXXXXXX.tmp` of older versions of this module.

    The writer's pid is in the name so that a save never deletes the temporary file of another process
    saving the same path at that moment (two runs building the same data cache at once)."""
    ours = re.compile(re.escape(f".{path.name}.pid") + r"(\d+)\.[a-z0-9_]{8}\.tmp")
    legacy = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return []
    stale = []
    for p in candidates:
        if legacy.fullmatch(p.name):
            stale.append(p)
        elif (m := ours.fullmatch(p.name)) and (_process_ended(int(m.group(1))) or _untouched_for_a_day(p)):
            stale.append(p)
    return stale


def _process_ended(pid: int) -> bool:
    """True when no process `pid` runs (POSIX: signal 0 probes without sending). Elsewhere False: on
    Windows os.kill(pid, 0) sends a Ctrl-C event, so there a torn file waits for `_untouched_for_a_day`."""
    if pid == os.getpid():
        return False  # this process: its own save is the one in progress
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it runs, as another user
        return False
    return False


def _untouched_for_a_day(p: Path) -> bool:
    try:
        return time.time() - p.stat().st_mtime > 86400
    except OSError:
        return False


def _atomic_write(path: str | os.PathLike, write, mode: str) -> Path:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it over `path`.

    After the rename, the temporary files that earlier saves of `path` left behind when they were killed
    (SIGKILL, power loss: nothing could clean up) are removed; another process's save in progress is left
    alone. Two processes saving the same path at the same time both succeed, and the last rename wins
    (fine for a cache both build from the same files; a run's checkpoint has one writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # interrupted (KeyboardInterrupt included) or failed: the old file at `path` is untouched
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for stale in _temporary_files(path):  # torn files of interrupted saves: never valid, never needed
        try:
            stale.unlink()
        except OSError:
            pass
    return path


def check_writable(path: str | os.PathLike, name: str = "path") -> Path:
    """Raise ValueError naming `name` unless a file can be saved at `path` (before any work is done for it).

    `path` must not be a folder; its folder must exist and accept a new file (tried, so that a read-only
    file system or a full quota is caught too), or be creatable (its nearest existing parent a writable folder).
    """
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder; expected a file path such as {path / 'run.pt'}")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}: cannot save {path}: {existing} is a file, not a folder")
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{name}: cannot create the folder {folder}: {existing} is not writable")
        return path
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{name}: cannot write into {folder} ({e.strerror or e})") from e
    return path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically (temporary file + fsync + os.replace)."""
    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (a results JSON) atomically, like `atomic_save`."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write a training state dict (see `MetaLearner.state_dict`) atomically, tagged with a format."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    return atomic_save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, with `weights_only=True`.

    Raises FileNotFoundError when it is missing and ValueError when the file is not a mamlkit
    checkpoint (truncated, corrupt, or something else).
    """
    path = Path(path)
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, "map_location")  # else torch's error would read as a corrupt file
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "no checkpoint"
        raise FileNotFoundError(f"path: {what} at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a torn or foreign file
        raise ValueError(f"path: {path} is not a readable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not a {FORMAT} file")
    return state


def sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, to publish next to a shipped checkpoint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
