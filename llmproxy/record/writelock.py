"""One writer at a time on ``sessions.db``, handed over at once instead of by SQLite's busy sleeps.

SQLite's busy handler polls: a ``BEGIN IMMEDIATE`` that finds the write lock taken sleeps 1, 2,
5, 10, 15, 20, 25, 25, 50… ms between tries, while the threads of the holder's process take the
lock back to back. With 16 concurrent clients that sleeping was most of the proxy's tail
(docs/performance.rst, "Under load"). Waiting on a thread lock, then on ``flock`` of a file
beside the database, wakes the next writer the moment the previous one is done, and SQLite then
finds its lock free.

The lock file is also the holder's note pad (:mod:`llmproxy.record.journal` says what for): the
holder notes what it is in the middle of and clears the pad when it is done; a holder that dies
leaves its notes, and the next one finds them in :attr:`WriteLock.left`.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

PAD_BYTES = 64 * 1024  # allocated up front: notes can be written on a full disk


class WriteLock:
    """A lock held by one thread of one process at a time, for all processes using ``path``.

    Without the lock file (an unwritable log dir) it still serialises this process's threads,
    and SQLite's own locking keeps the database safe (there is no pad then).
    """

    def __init__(self, path: Path):
        self.path = str(path)
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._flocked = False
        self._end = 0            # where the next note goes; 0: the pad is clear
        self.left: list[bytes] = []  # the notes a holder that died left, read when the lock is taken

    def _descriptor(self) -> int:
        # A descriptor inherited over fork shares its flock with the parent: open one per process.
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
            try:
                if os.fstat(self._fd).st_size < PAD_BYTES:
                    os.posix_fallocate(self._fd, 0, PAD_BYTES)
            except OSError:  # a full disk: notes that need new room will fail, and say so
                pass
        return self._fd

    def __enter__(self) -> "WriteLock":
        self._threads.acquire()
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            self._flocked = True
            self.left = self._read()
        except OSError:
            self._flocked = False
            self.left = []
        self._end = 0
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._flocked:
                self._flocked = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def note(self, record: bytes) -> None:
        """Add a line (no newline in it) to the pad; raises OSError if it cannot be written."""
        if not self._flocked:
            return
        os.pwrite(self._fd, record + b"\n\0", self._end)
        self._end += len(record) + 1

    def clear(self) -> None:
        """Empty the pad (what was noted is done with)."""
        if self._flocked and (self._end or self.left):
            os.pwrite(self._fd, b"\0", 0)
        self._end = 0
        self.left = []

    def _read(self) -> list[bytes]:
        """The pad's notes: whole lines up to the first NUL."""
        if os.pread(self._fd, 1, 0) in (b"", b"\0"):  # clear: the usual case, one byte read
            return []
        data = os.pread(self._fd, PAD_BYTES, 0)
        while b"\0" not in data:
            more = os.pread(self._fd, PAD_BYTES, len(data))
            if not more:
                break
            data += more
        return data.split(b"\0", 1)[0].split(b"\n")[:-1]
