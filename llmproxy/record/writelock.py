"""One writer at a time on ``sessions.db``, handed over at once instead of by SQLite's busy sleeps.

SQLite's busy handler polls: a ``BEGIN IMMEDIATE`` that finds the write lock taken sleeps 1, 2,
5, 10, 15, 20, 25, 25, 50… ms between tries, while the threads of the holder's process take the
lock back to back. With 16 concurrent clients that sleeping was most of the proxy's tail
(docs/performance.rst, "Under load"). Waiting on a thread lock, then on ``flock`` of a file
beside the database, wakes the next writer the moment the previous one is done, and SQLite then
finds its lock free.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class WriteLock:
    """A lock held by one thread of one process at a time, for all processes using ``path``.

    Without the lock file (an unwritable log dir) it still serialises this process's threads,
    and SQLite's own locking keeps the database safe.
    """

    def __init__(self, path: Path):
        self.path = str(path)
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._flocked = False

    def _descriptor(self) -> int:
        # A descriptor inherited over fork shares its flock with the parent: open one per process.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def __enter__(self) -> "WriteLock":
        self._threads.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            self._flocked = True
        except OSError:
            self._flocked = False
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._flocked:
                self._flocked = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
