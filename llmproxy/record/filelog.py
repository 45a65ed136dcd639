"""The primary log: JSONL files, one per session, under the log dir.

A writer holds an exclusive ``flock`` on the file while it appends, and appends a call's lines in
one ``writev`` on a descriptor opened with ``O_APPEND``: lines of threads and worker processes
never interleave. A file never keeps a half line:

- a write that fails part-way (a full disk) is taken back at once (``ftruncate`` to where it
  began), so the file ends where it ended before (a file the write made is removed);
- a writer killed part-way (``SIGKILL`` stops a write between pages) leaves a last line without
  its newline; the next writer of that file cuts it off before it appends, or the line it
  writes would be glued to the fragment.

``llm-proxy prune`` renames an old file aside before compressing it. A writer writes only if the
path still names the file it opened and locked; prune takes the lock once after the rename, so
every line is either in the file set aside before prune reads it, or in a fresh file at the old
path. Nothing is ever lost.
"""

from __future__ import annotations

import fcntl
import logging
import os
from typing import TYPE_CHECKING, Callable

from llmproxy.common import faults

if TYPE_CHECKING:
    from llmproxy.record.entries import Entry

log = logging.getLogger("llmproxy.sessionlog")

_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_ATTEMPTS = 10  # prune moves a file once per run
_READ = 1 << 16

# Called with (offset, device, inode) once the file is locked, before anything is written.
BeforeWrite = Callable[[int, int, int], None]


def open_locked(path: str, create: bool = True) -> tuple[int, os.stat_result]:
    """A descriptor of the file at ``path``, exclusively locked, the path still naming it, and
    the file's status then. ``FileNotFoundError`` when it does not exist and ``create`` is off."""
    flags = _FLAGS if create else _FLAGS & ~os.O_CREAT
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            if not create:
                raise
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine, named = os.fstat(fd), os.stat(path)
        except FileNotFoundError:  # set aside by prune meanwhile
            os.close(fd)
            if not create:
                raise
            continue
        except BaseException:
            os.close(fd)
            raise
        if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
            return fd, mine
        os.close(fd)
    raise OSError(f"{path} kept being moved while opened")


def cut_torn_line(fd: int, size: int, path: str) -> int:
    """The file's size once a last line without its newline is cut off (see above)."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = cut = size
    while end > 0:
        start = max(0, end - _READ)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        end = cut = start
    os.ftruncate(fd, cut)
    log.warning("%s: cut off a half-written last line of %d bytes (its writer died while writing it)",
                path, size - cut)
    return cut


def append_whole(fd: int, lines: list[bytes], offset: int) -> None:
    """Append ``lines`` (each without its newline) at the end of the locked file, which is
    ``offset`` bytes long: all of them, or (the error raised) none."""
    parts = [part for line in lines for part in (line, b"\n")]
    total = sum(len(line) + 1 for line in lines)
    try:
        if faults.DIRECTORY is not None and _torn(fd, parts):
            return
        written = os.writev(fd, parts)  # no copy of a multi-megabyte line just to add its newline
        if written < total:  # only on a full disk or a signal
            rest = memoryview(b"".join(parts))[written:]
            while rest:
                rest = rest[os.write(fd, rest):]
    except OSError:
        try:
            os.ftruncate(fd, offset)
        except OSError:
            pass
        raise


def _torn(fd: int, parts: list[bytes]) -> bool:
    """Fault injection: write half of the lines, then die (a kill in the middle of a write)."""
    kind = b"response" if parts[-2].startswith(b'{"type":"response"') else b"request"
    if not faults.armed(f"{kind.decode()}_torn"):
        return False
    data = b"".join(parts)
    os.write(fd, data[: max(1, len(data) // 2)])
    faults.die()
    return True


class FileLogger:
    """Appends entries to ``{log_dir}/{upstream}/{YYYY-MM-DD}/{session}.jsonl``."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)

    def write(self, entry: Entry) -> OSError | None:
        """Append the entry's line. File errors are returned (the caller decides), never raised."""
        return self.append(entry.path, [entry.line])

    def append(self, path: str, lines: list[bytes], before: BeforeWrite | None = None) -> OSError | None:
        """Append lines to the session file ``path`` (relative to the log dir) in one write,
        whole or not at all. ``before(offset, device, inode)`` runs once the file is locked,
        before anything is written (the request path notes there where its lines go)."""
        full = os.path.join(self.log_dir, path)
        try:
            fd, status = open_locked(full)
            try:
                offset = cut_torn_line(fd, status.st_size, full)
                if before is not None:
                    before(offset, status.st_dev, status.st_ino)
                try:
                    append_whole(fd, lines, offset)
                except OSError:
                    if offset == 0:  # a file made for this write: no empty session file is left
                        os.unlink(full)
                    raise
            finally:
                os.close(fd)  # and the lock with it
        except OSError as exc:
            return exc
        return None
