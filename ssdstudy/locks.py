"""Exclusive locks on folders: one study per results folder, one writer per run and per
generated dataset.

A lock is a file (``.lock`` in a run folder, ``.study.lock`` in a profile's results
folder, ``<folder>.lock`` beside a dataset) held with ``flock``. The operating system
takes it atomically and releases it when its holder exits, however it exits, so a
killed process never leaves a lock that blocks the next one (on NFS, Linux maps
``flock`` to POSIX byte-range locks, which the lock manager keeps across hosts).

While held, the file names its holder (:class:`Holder`: pid, host, start time,
command), so that a process that finds the lock taken can say who holds it. A normal
release empties the file; a file that still names a holder when its lock is free
was left by a process that died holding it: a stale lock, taken over (and said so).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file while it is held."""

    pid: int
    host: str
    since: str
    command: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200])

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder named in ``path`` (None: empty, missing or unreadable)."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(int(data["pid"]), str(data["host"]), str(data["since"]), str(data["command"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} ({self.command})"


class StaleLockWarning(UserWarning):
    """A lock left by a process that died holding it was taken over."""


#: Set by a process that holds a lock for the child processes it starts to work under it
#: (a study training a run with torchrun): the holder's pid. See :func:`delegated`.
DELEGATE_ENV = "SSDSTUDY_LOCK_HELD_BY"


def delegated(holder: Holder | None) -> bool:
    """Whether ``holder`` is the process that started this one to work under its lock:
    its pid is :data:`DELEGATE_ENV` and it runs on this host."""
    held_by = os.environ.get(DELEGATE_ENV, "")
    return (holder is not None and held_by.isdigit() and holder.pid == int(held_by)
            and holder.host == socket.gethostname())


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], *, wait: bool = False,
              on_wait=None) -> Iterator[Holder | None]:
    """Hold the lock file ``path`` for the block.

    Yields None while this process holds it. When another process holds it: with
    ``wait`` false, yields that process's :class:`Holder` (and holds nothing); with
    ``wait`` true, calls ``on_wait(holder)`` once and blocks until the lock is free.

    Args:
        path: the lock file (its folder is made if missing).
        wait: block until the lock is free instead of yielding its holder.
        on_wait: called with the holder before blocking (to tell the user).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Holder.read(path) or Holder(0, "?", "?", "a process that has not yet named itself")
            if not wait:
                yield holder
                return
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        left = Holder.read(path)
        if left is not None:
            warnings.warn(f"{path}: taking over a stale lock left by {left}, which ended without "
                          "releasing it", StaleLockWarning, stacklevel=3)
        _write(fd, json.dumps(asdict(Holder.this_process())) + "\n")
        try:
            yield None
        finally:
            _write(fd, "")
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)


__all__ = ["DELEGATE_ENV", "Holder", "StaleLockWarning", "delegated", "exclusive"]
