"""The primary log: JSONL files, one per session, under the log dir.

Each line goes to the file in one ``write`` on a descriptor opened with ``O_APPEND``: the kernel
appends it whole, so lines of threads and worker processes never interleave or tear.

``llm-proxy prune`` renames an old file aside before compressing it. A writer holds a shared
``flock`` on the file while it writes, and writes only if the path still names the file it
opened; prune takes the exclusive lock once after the rename, so every line is either in the
file set aside before prune reads it, or in a fresh file at the old path. Nothing is ever lost.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from llmproxy.record.entries import Entry

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_ATTEMPTS = 10  # prune moves a file once per run


def open_locked(path: str) -> int:
    """A descriptor of the file at ``path``, share-locked, the path still naming it."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, _FLAGS, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, _FLAGS, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            mine, named = os.fstat(fd), os.stat(path)
        except FileNotFoundError:  # set aside by prune meanwhile
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
            return fd
        os.close(fd)
    raise OSError(f"{path} kept being moved while opened")


class FileLogger:
    """Appends entries to ``{log_dir}/{upstream}/{YYYY-MM-DD}/{session}.jsonl``."""

    def __init__(self, log_dir: Path):
        self.log_dir = str(log_dir)

    def write(self, entry: Entry) -> OSError | None:
        """Append the entry's line. File errors are returned (the caller decides), never raised."""
        path = os.path.join(self.log_dir, entry.path)
        try:
            fd = open_locked(path)
            try:
                # One writev, no copy of a multi-megabyte line just to add its newline.
                written = os.writev(fd, [entry.line, b"\n"])
                if written < len(entry.line) + 1:  # only on a full disk or a signal
                    rest = memoryview(entry.line + b"\n")[written:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)  # and the lock with it
        except OSError as exc:
            return exc
        return None
