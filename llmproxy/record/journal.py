"""Crash consistency of the session log: a request's lines and its ``sessions.db`` commit.

A request's lines are written inside its ``sessions.db`` transaction, before the commit: that
keeps each session file in seq order when workers race. A worker killed between the write and the
commit leaves lines that ``sessions.db`` does not know: the next request of that session would
get the same seq, and the next request of a client session the killed one had just started would
start a second file for it. So the writer first notes on the write lock's pad
(:class:`~llmproxy.record.writelock.WriteLock`) where its lines go (an :class:`Intent`: file,
offset, session, seq) and clears the pad once committed. The next writer takes the lock, finds
the notes of one that died, and asks ``sessions.db`` whether that transaction committed: if it
did, the lines stand; if not, they come out of the file again (:func:`undo`), and a new session's
file goes. Every request line in a file is then one ``sessions.db`` counts, in order, once.

Only request lines (and the ``session_start`` and ``fork`` lines that come with them) are written
under the lock. Response lines are not: a killed worker may leave a request without its
response, as it would leave a client without its answer, but never a wrong seq.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass

from llmproxy.record.filelog import open_locked

log = logging.getLogger("llmproxy.sessionlog")


@dataclass(frozen=True)
class Intent:
    """Where one request's lines are being written, noted before they are."""

    path: str           # the session file, relative to the log dir
    offset: int         # its size before the lines
    device: int         # and its identity: prune may have set the file aside since
    inode: int
    session: str
    seq: int
    new: bool           # the transaction creates the session: the file is its alone (noted
                        # before the file is made: no offset, no identity)
    request_id: str

    def encode(self) -> bytes:
        """One line of words, the path last (a file name may hold spaces, never a newline): this
        is on every request's path, so no JSON."""
        return b"%d %d %d %d %d %s %s %s" % (self.offset, self.device, self.inode, self.seq, self.new,
                                            self.session.encode(), self.request_id.encode(), self.path.encode())

    @classmethod
    def decode(cls, raw: bytes) -> "Intent | None":
        """An intent from the pad; None for a note cut short (its writer died writing it, before
        any line) or a stale one."""
        try:
            offset, device, inode, seq, new, session, request_id, path = raw.decode().split(" ", 7)
            return cls(path, int(offset), int(device), int(inode), session, int(seq), new == "1", request_id)
        except (ValueError, UnicodeDecodeError):
            return None


def committed(conn: sqlite3.Connection, intent: Intent) -> bool:
    """Whether the transaction that noted ``intent`` committed (the caller holds the write lock:
    nobody has changed the session since)."""
    row = conn.execute("SELECT last_seq FROM sessions WHERE id=?", (intent.session,)).fetchone()
    return row is not None and row[0] >= intent.seq


def _ours(line: bytes, request_id: str) -> bool:
    """Whether a line is one of the request's own: its ``session_start``, ``fork`` or ``request``
    (a later response of that request cannot exist: it was never forwarded)."""
    if line.startswith(b'{"type":"response"'):
        return False
    meta = line.rfind(b',"_meta":')
    try:
        return json.loads(line[meta + 9:-1]).get("request_id") == request_id if meta >= 0 else False
    except ValueError:
        return False


def undo(log_dir: str, intent: Intent) -> int:
    """Take the intent's lines out of its file (or remove a new session's file); how many lines
    went. Lines that others appended after them (answers of the same session) stay, in order."""
    path = os.path.join(log_dir, intent.path)
    try:
        fd, status = open_locked(path, create=False)
    except FileNotFoundError:
        return 0
    try:
        if intent.new:  # nobody but the dead writer knew the session
            lines = os.pread(fd, status.st_size, 0).count(b"\n")
            os.unlink(path)
            return lines
        if (status.st_dev, status.st_ino) != (intent.device, intent.inode):
            return 0  # set aside by prune meanwhile: nothing to take back from the new file
        if status.st_size <= intent.offset:
            return 0
        *lines, torn = os.pread(fd, status.st_size - intent.offset, intent.offset).split(b"\n")
        kept = [line for line in lines if not _ours(line, intent.request_id)]
        if len(kept) == len(lines) and not torn:
            return 0
        # Cut back, then append what others wrote after the lines: a kill in between loses those
        # (answers, as a kill loses an answer in flight) and leaves no broken line.
        os.ftruncate(fd, intent.offset)
        if kept:
            os.write(fd, b"".join(line + b"\n" for line in kept))
        return len(lines) - len(kept)
    finally:
        os.close(fd)


def recover(conn: sqlite3.Connection, log_dir: str, notes: list[bytes]) -> None:
    """Finish what a writer that died left on the pad: undo the lines of its uncommitted requests,
    the last written first (an undo finds the lines after its own offset as they were)."""
    for intent in reversed(list(filter(None, map(Intent.decode, notes)))):
        if committed(conn, intent):
            continue
        removed = undo(log_dir, intent)
        log.warning("a worker died before committing seq %d of session %s: %s", intent.seq, intent.session,
                    f"took its {removed} line(s) out of {intent.path}" if removed else "it had written no line")
