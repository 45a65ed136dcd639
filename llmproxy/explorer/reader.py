"""One session's lines, found by their place: where each entry starts and ends in the session's
bytes, so that a page reads only the lines it shows and a live page only what was appended.

A session still written to is one plain file: it is read with ``pread`` at the offsets found,
and when it grows only the new bytes are scanned. A session with a compressed part (``llm-proxy
prune`` ran) is read whole once through :func:`llmproxy.record.logtree.read_session` and kept
in memory while it is in the cache. When its files change otherwise (prune compressed it
meanwhile), the index starts over.

An entry's kind and ``seq`` come from the head of its line, read as the catalog reads it
(:func:`llmproxy.catalog.lines.kind_of`: the proxy writes ``type`` first, then ``seq``); a line
whose head does not say is parsed whole, once.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmproxy.catalog.lines import kind_of, parse
from llmproxy.record import logtree
from llmproxy.record.sessions import SESSION_ID

SCAN_BYTES = 8 << 20
TAIL_BYTES = 512
TS = re.compile(rb'"_meta":\{"ts":"([0-9T:.\-]+Z)"')


class NoSuchSession(LookupError):
    """No session of that id in the log dir (or not a session id at all)."""


@dataclass(frozen=True)
class Line:
    """One entry's place: ``data[start:end]`` is its JSON (no newline)."""

    start: int
    end: int
    kind: str
    seq: int | None


def _identity(path: Path | None) -> tuple | None:
    if path is None:
        return None
    st = os.stat(path)
    return str(path), st.st_dev, st.st_ino


@dataclass
class SessionLines:
    """Where the entries of one session are, as far as its files have been read."""

    session: str
    files: logtree.SessionFiles
    identity: tuple
    size: int = 0                    # bytes scanned (whole lines only)
    data: bytes | None = None        # the whole session, when it has a compressed part
    lines: list[Line] = field(default_factory=list)
    requests: dict[int, Line] = field(default_factory=dict)
    responses: dict[int, Line] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    generation: int = 0              # bumped when the index started over
    derived: dict[str, Any] = field(default_factory=dict)  # what readers built from it; reset with it

    @property
    def plain(self) -> bool:
        return self.data is None

    @property
    def weight(self) -> int:
        """Bytes this index holds in memory, about."""
        return len(self.data or b"") + 64 * len(self.lines)

    def read(self, line: Line) -> bytes:
        if self.data is not None:
            return self.data[line.start:line.end]
        with open(self.files.plain, "rb") as f:
            return os.pread(f.fileno(), line.end - line.start, line.start)

    def entry(self, line: Line | None) -> dict | None:
        """The entry on ``line`` parsed, or None (no line, not JSON)."""
        return None if line is None else parse(self.read(line))

    def last_time(self) -> str | None:
        """The ``_meta.ts`` of the last entry (written last in its line), without parsing it."""
        if not self.lines:
            return None
        line = self.lines[-1]
        tail = self.read(Line(max(line.start, line.end - TAIL_BYTES), line.end, "", None))
        found = TS.findall(tail)
        return found[-1].decode() if found else None

    def _add(self, data: bytes, base: int) -> list[Line]:
        """Index the whole lines of ``data``, which starts at ``base``; return them."""
        added = []
        pos = 0
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                break
            if end > pos:
                added.append(_line(data, pos, end, base))
            pos = end + 1
        self.size = base + pos
        for line in added:
            self.lines.append(line)
            if line.seq is not None and line.kind == "request":
                self.requests[line.seq] = line
            elif line.seq is not None and line.kind == "response":
                self.responses[line.seq] = line
        return added


def _line(data: bytes, start: int, end: int, base: int) -> Line:
    found = kind_of(data, start, end)
    return Line(base + start, base + end, *(found[:2] if found else ("", None)))


def _identities(files: logtree.SessionFiles) -> tuple:
    return tuple(_identity(p) for p in (files.compressed, files.aside, files.plain))


def _scan(index: SessionLines, f) -> list[Line]:
    """Index the whole lines of a plain file from where the index stopped, a block at a time
    (a long session is hundreds of megabytes; its lines a few megabytes each)."""
    added: list[Line] = []
    f.seek(index.size)
    carry = b""
    while block := f.read(SCAN_BYTES):
        data = carry + block
        end = data.rfind(b"\n") + 1
        if end:
            added += index._add(data[:end], index.size)
        carry = data[end:]
    return added


class SessionReader:
    """The sessions of one log dir, their line indexes kept for the sessions read last (an LRU
    bounded by count and by the bytes held)."""

    def __init__(self, log_dir: Path, keep: int = 16, keep_bytes: int = 512 * 1024 * 1024):
        self.log_dir = Path(log_dir)
        self.keep = keep
        self.keep_bytes = keep_bytes
        self._cache: OrderedDict[str, SessionLines] = OrderedDict()
        self._lock = threading.Lock()

    def files(self, session: str) -> logtree.SessionFiles:
        if not SESSION_ID.fullmatch(session or ""):
            raise NoSuchSession(session)
        files = logtree.find_session(self.log_dir, session)
        if files is None or not files.paths:
            raise NoSuchSession(session)
        return files

    def lines(self, session: str) -> tuple[SessionLines, list[Line]]:
        """The session's index brought up to date, and the lines new since it was last read
        (all of them when it was read from the start)."""
        files = self.files(session)
        with self._lock:
            known = self._cache.get(session)
            if known is not None:
                self._cache.move_to_end(session)
        if known is None:
            known = SessionLines(session, files, ())
        with known.lock:
            added = self._refresh(known, files)
        with self._lock:
            self._cache[session] = known
            self._cache.move_to_end(session)
            self._trim()
        return known, added

    def _refresh(self, index: SessionLines, files: logtree.SessionFiles) -> list[Line]:
        try:
            identity = _identities(files)
        except FileNotFoundError:  # prune moved a file between listing and stat: list again
            files = self.files(index.session)
            identity = _identities(files)
        plain_only = files.compressed is None and files.aside is None
        if plain_only:
            with open(files.plain, "rb") as f:
                if identity == index.identity and index.plain:
                    if os.fstat(f.fileno()).st_size <= index.size:
                        return []
                else:
                    _reset(index, files, identity)  # new, or its file changed place
                return _scan(index, f)
        # A compressed part: read whole, again whenever any of its files changed.
        identity += (os.stat(files.plain).st_size if files.plain else 0,)
        if identity == index.identity:
            return []
        _reset(index, files, identity)
        index.data = logtree.read_session(files)
        return index._add(index.data, 0)

    def _trim(self) -> None:
        while len(self._cache) > self.keep or (
                len(self._cache) > 1 and sum(i.weight for i in self._cache.values()) > self.keep_bytes):
            self._cache.popitem(last=False)


def _reset(index: SessionLines, files: logtree.SessionFiles, identity: tuple) -> None:
    index.files, index.identity = files, identity
    index.size, index.data = 0, None
    index.lines, index.requests, index.responses = [], {}, {}
    index.derived = {}
    index.generation += 1
