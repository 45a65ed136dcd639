"""A worker's ledger: its entries that Loki may not have yet, on disk, for whoever outlives it.

The exporter's memory queue dies with its worker (``kill -9``, the OOM killer, gunicorn's
timeout). The session files keep every line, but not which of them the dead worker still held.
So, the way Promtail keeps positions, each worker keeps a ledger file,
``{spool_dir}/ledgers/{pid}-{token}.ledger``, of plain lines:

- ``{ticket} {ts_ns} {path}``: an entry about to be written to the session file ``path``
  (relative to the log dir), appended by the request thread *before* the line goes to the file
  (one ``write``; a worker killed after the file write but before the queue still has it noted);
- ``-{ticket}``: the entry is settled (Loki took it or refused it, or it is in the spool, or it
  never reached its file), appended by the pusher after each push.

The worker holds an exclusive ``flock`` on its ledger while it lives and removes it on a clean
exit with nothing unsettled. A ledger nobody holds belongs to a worker that died;
:mod:`llmproxy.loki.recovery` pushes what it names from the session files. The file is rewritten
with only the unsettled entries when it grows past a few megabytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("llmproxy.loki")

COMPACT_BYTES = 4 * 1024**2
NAME = re.compile(r"(\d+)-[0-9a-f]+\.ledger")
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(frozen=True)
class Unsettled:
    """What a ledger names and does not mark settled: ``(ts_ns, path)`` of each entry."""

    pid: int
    entries: list[tuple[int, str]]


def read_ledger(data: bytes, pid: int) -> Unsettled:
    """Parse a ledger's text; a last line cut short (its writer died writing it) is skipped."""
    noted: dict[int, tuple[int, str]] = {}
    settled: set[int] = set()
    for line in data.split(b"\n")[:-1]:
        try:
            if line.startswith(b"-"):
                settled.add(int(line[1:]))
            else:
                ticket, ts, path = line.split(b" ", 2)
                noted[int(ticket)] = (int(ts), path.decode())
        except ValueError:
            continue
    return Unsettled(pid, [noted[t] for t in sorted(noted) if t not in settled])


def _open_locked(path: Path) -> int:
    fd = os.open(path, _FLAGS | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


class Ledger:
    """One worker's ledger. ``note`` and ``settle`` are called from any thread; ``flush`` from
    the pusher."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path: Path | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, bytes] = {}  # ticket → its record line
        self._settled: list[int] = []         # marks not yet written
        self._size = 0

    def open(self) -> None:
        """Start this process's ledger (after fork). Without one (an unwritable spool dir) the
        export works as before; a worker that dies then loses its queue."""
        with self._lock:
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.ledger"
                self._fd = _open_locked(path)
                self.path = path
            except OSError as exc:
                log.warning("Loki ledger %s cannot be written (%s): a worker that is killed loses the "
                            "entries it holds", self.directory, exc)
            self._next, self._pending, self._settled, self._size = 0, {}, [], 0

    def note(self, entries: list[tuple[int, str]]) -> list[int] | None:
        """Tickets for entries about to be written, ``(ts_ns, path)`` each; None when they could
        not be noted (then they are only as safe as the memory queue)."""
        with self._lock:
            if self._fd is None:  # no ledger, or closed by the worker's exit meanwhile
                return None
            first = self._next
            records = [b"%d %d %s\n" % (first + i, ts, path.encode()) for i, (ts, path) in enumerate(entries)]
            data = b"".join(records)
            try:
                os.write(self._fd, data)
            except OSError:
                return None
            self._next += len(records)
            self._size += len(data)
            for i, record in enumerate(records):
                self._pending[first + i] = record
        return list(range(first, first + len(records)))

    def settle(self, tickets: Iterable[int]) -> None:
        """No successor needs these entries any more (the marks are written by :meth:`flush`)."""
        with self._lock:
            for ticket in tickets:
                if self._pending.pop(ticket, None) is not None:
                    self._settled.append(ticket)

    @property
    def unsettled(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write the marks of what was settled; rewrite a long file with what is still open."""
        if not self._settled:
            return
        with self._lock:
            if self._fd is None:  # closed by the worker's exit meanwhile
                return
            marks = b"".join(b"-%d\n" % t for t in self._settled)
            self._settled = []
            try:
                os.write(self._fd, marks)
                self._size += len(marks)
                if self._size > COMPACT_BYTES:
                    self._compact()
            except OSError:  # a full disk: a successor would push these again only if Loki lacks them
                pass

    def _compact(self) -> None:
        # The new file is locked before it takes the name: nobody can mistake it for a dead one's.
        tmp = self.path.with_name(self.path.name + ".new")
        fd = _open_locked(tmp)
        try:
            data = b"".join(self._pending.values())
            os.write(fd, data)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)  # a full disk: no half-written copy left taking room
            raise
        os.close(self._fd)
        self._fd, self._size = fd, len(data)

    def close(self) -> bool:
        """On exit: remove the ledger when nothing is unsettled, else leave it for a successor
        (the lock goes with the process). Whether it was removed."""
        self.flush()
        with self._lock:
            if self._fd is None:
                return True
            removed = not self._pending
            if removed:
                try:
                    self.path.unlink()
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None
        return removed


def dead_ledgers(directory: Path, own: Path | None) -> Iterable[tuple[Path, int]]:
    """``(path, pid)`` of the ledgers in ``directory`` other than ``own``, in name order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = NAME.fullmatch(name)
        path = Path(directory) / name
        if match and path != own:
            found.append((path, int(match.group(1))))
    return sorted(found)


def claim(path: Path) -> int | None:
    """A locked descriptor of a ledger nobody holds (its worker is gone), or None: it is alive,
    or the file is gone or renamed meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        mine, named = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None
