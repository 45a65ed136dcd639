"""Keeping ``catalog.db`` up with the tree: :class:`Catalog`.

An update lists the tree, stats each session's files and compares with what the catalog saw
last time (``files.seen``); only a session whose files changed is opened, and only what it
gained is read (:func:`llmproxy.record.tail.read_new`). Each session's increment is one
transaction: its rows, its sums, its new mark and the indexers' rows commit together, so an
update cut short (or racing another) never counts a line twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from llmproxy import providers
from llmproxy.catalog import schema
from llmproxy.catalog.lines import (Entry, integer, kind_of, meta, number, parse, request_parts, text,
                                    tokens_and_cost, unix)
from llmproxy.providers.clients import client_of
from llmproxy.record import logtree, tail

NAME = "catalog.db"
ENTRY_POINTS = "llmproxy.catalog_indexers"
BUSY_TIMEOUT_MS = 120_000  # another process cataloguing a long session holds the write lock that long at most


class Indexer(Protocol):
    """What the catalog hands new entries to (see the package docstring)."""

    name: str
    version: int

    def create(self, db: sqlite3.Connection) -> None: ...

    def add(self, db: sqlite3.Connection, entry: Entry) -> None: ...

    def forget(self, db: sqlite3.Connection, session: str) -> None: ...


def installed_indexers() -> list[Indexer]:
    """The indexers of the ``llmproxy.catalog_indexers`` entry point group."""
    from importlib.metadata import entry_points

    return [point.load()() for point in sorted(entry_points(group=ENTRY_POINTS), key=lambda p: p.name)]


def catalog_path(log_dir: Path) -> Path:
    """``{log_dir}/catalog.db``; for a log dir this user cannot write (the proxy runs as another
    user), a catalog of its own in the user's cache directory."""
    if os.access(log_dir, os.W_OK) or not log_dir.is_dir():
        return log_dir / NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-proxy"
    return cache / f"catalog-{hashlib.sha256(str(log_dir.resolve()).encode()).hexdigest()[:16]}.db"


@dataclass
class Stats:
    """What one update did."""

    sessions: int = 0          # sessions in the tree
    read: int = 0              # sessions opened because their files changed
    lines: int = 0             # entry lines catalogued
    bytes: int = 0             # bytes of those lines
    skipped: int = 0           # lines that were not entries (corrupt)
    removed: int = 0           # sessions that left the tree
    reread: int = 0            # sessions read again from their start
    failed: int = 0            # sessions that could not be read (an unreadable .zst): left for next time
    seconds: float = 0.0


class Catalog:
    """``catalog.db`` of a log dir. ``update()`` brings it up to date; ``db`` answers queries."""

    def __init__(self, log_dir: Path, indexers: Sequence[Indexer] | None = None, path: Path | None = None):
        self.log_dir = Path(log_dir)
        self.path = Path(path) if path is not None else catalog_path(self.log_dir)
        self.indexers = list(installed_indexers() if indexers is None else indexers)
        self._db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The open catalog (created, or rebuilt, when needed; opened again when the file was
        deleted or replaced since)."""
        if self._db is not None and self._identity != _identity(self.path):
            self._db.close()
            self._db = None
        if self._db is None:
            self._db = self._open()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _signature(self) -> str:
        return ",".join([f"schema:{schema.VERSION}"] + [f"{i.name}:{i.version}" for i in self.indexers])

    @contextmanager
    def _creating(self) -> Iterator[None]:
        """One process at a time creates or rebuilds the file (queries and updates of an existing
        catalog take SQLite's own locks)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def _open(self) -> sqlite3.Connection:
        with self._creating():
            if not self.path.exists():
                _remove(self.path)  # a -wal left beside a deleted catalog belongs to no database now
            try:
                db = self._connect()
                current = db.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone() \
                    if _has_meta(db) else None
            except sqlite3.DatabaseError:  # not a database (a truncated or foreign file): rebuilt
                current, db = ("unreadable", None)
            if current is None or current[0] != self._signature():
                if db is not None:
                    db.close()
                if current is not None:
                    _remove(self.path)
                db = self._connect()
                db.executescript(schema.TABLES)
                for indexer in self.indexers:
                    indexer.create(db)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)", (self._signature(),))
                db.commit()
            else:
                for indexer in self.indexers:
                    indexer.create(db)
                db.commit()
            self._identity = _identity(self.path)
            return db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # a lost commit is read again from the files
        return db

    def update(self) -> Stats:
        """Catalogue what the tree gained since the last update; forget sessions that left it."""
        started = time.monotonic()
        stats = Stats()
        db = self.db
        known = {row[0]: row[1] for row in db.execute("SELECT session, seen FROM files")}
        present = set()
        for files in logtree.sessions(self.log_dir):
            present.add(files.session)
            stats.sessions += 1
            try:
                seen = tail.seen(files)
            except OSError:  # moved between listing and stat (prune): its new place next time
                continue
            if known.get(files.session) != seen:
                self._catch_up(db, files, seen, stats)
        for session in known.keys() - present:
            with _transaction(db):
                self._forget(db, session)
            stats.removed += 1
        stats.seconds = time.monotonic() - started
        return stats

    def _catch_up(self, db: sqlite3.Connection, files: logtree.SessionFiles, seen: str, stats: Stats) -> None:
        with _transaction(db):
            row = db.execute("SELECT seen, mark, skipped FROM files WHERE session = ?", (files.session,)).fetchone()
            if row is not None and row[0] == seen:
                return  # another process caught up meanwhile
            mark = tail.Mark.loads(row[1] if row else None)
            skipped = row[2] if row else 0
            reader = _SessionReader(db, files, self.indexers)
            try:
                try:
                    mark = tail.read_new(files, mark, reader.line)
                except tail.Reread:
                    db.execute("ROLLBACK")
                    db.execute("BEGIN IMMEDIATE")
                    self._forget(db, files.session)
                    stats.reread += 1
                    reader, skipped = _SessionReader(db, files, self.indexers), 0
                    mark = tail.read_new(files, tail.Mark(), reader.line)
            except (OSError, ValueError) as exc:
                # An unreadable .zst: left as it was read last, tried again once its files change.
                db.execute("ROLLBACK")
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO files (session, upstream, day, seen, mark, skipped, problem) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (files.session, files.upstream, files.day, seen,
                                                            (row[1] if row else tail.Mark().dumps()), skipped,
                                                            str(exc)))
                stats.failed += 1
                return
            reader.finish()
            db.execute("INSERT OR REPLACE INTO files (session, upstream, day, seen, mark, skipped) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (files.session, files.upstream, files.day, seen, mark.dumps(), skipped + reader.skipped))
        stats.read += 1
        stats.lines += reader.lines
        stats.bytes += reader.bytes
        stats.skipped += reader.skipped

    def _forget(self, db: sqlite3.Connection, session: str) -> None:
        for table in ("calls", "sessions", "files"):
            db.execute(f"DELETE FROM {table} WHERE session = ?", (session,))
        for indexer in self.indexers:
            indexer.forget(db, session)


class _SessionReader:
    """The new lines of one session → rows of ``calls`` and ``sessions``, and the indexers."""

    def __init__(self, db: sqlite3.Connection, files: logtree.SessionFiles, indexers: Sequence[Indexer]):
        self.db = db
        self.files = files
        self.indexers = indexers
        self.lines = self.bytes = self.skipped = 0
        self.started = False
        self.provider: str | None = None
        self.requests: dict[int, tuple] = {}  # seq → (path, ts, model, client) of requests read now

    def line(self, line: bytes) -> None:
        self.bytes += len(line) + 1
        kind = kind_of(line)
        if kind is None:
            self.skipped += 1
            return
        name, seq, doc = kind
        if name == "request" and seq is not None:
            doc = request_parts(line) if doc is None else doc
            if doc is not None:
                self._request(seq, doc)
        elif name == "response" and seq is not None:
            doc = parse(line) if doc is None else doc
            if doc is not None:
                self._response(seq, doc)
        elif name == "session_start":
            doc = parse(line) if doc is None else doc
            if doc is not None:
                self._start(doc)
        if name in ("request", "response", "session_start") and doc is None:
            self.skipped += 1
            return
        self.lines += 1
        if self.indexers:
            entry = Entry(self.files.session, self.files.upstream, self.files.day, name, seq, line,
                          doc if name != "request" else None)
            for indexer in self.indexers:
                indexer.add(self.db, entry)

    def _ensure_session(self) -> None:
        if not self.started:
            self.db.execute("INSERT OR IGNORE INTO sessions (session, upstream, day) VALUES (?, ?, ?)",
                            (self.files.session, self.files.upstream, self.files.day))
            self.started = True

    def _provider(self) -> str | None:
        if self.provider is None:
            row = self.db.execute("SELECT provider FROM sessions WHERE session = ?", (self.files.session,)).fetchone()
            self.provider = (row[0] if row else None) or providers.provider_for_host(self.files.upstream) or ""
        return self.provider or None

    def _start(self, doc: dict) -> None:
        self.provider = text(doc.get("provider")) or self.provider
        self.db.execute(schema.SESSION_START, (self.files.session, text(doc.get("upstream")) or self.files.upstream,
                                               self.provider, self.files.day, text(meta(doc).get("machine")),
                                               text(doc.get("client_session_id"))))
        self.started = True

    def _request(self, seq: int, doc: dict) -> None:
        self._ensure_session()
        info = meta(doc)
        ts = info.get("ts")
        path = text(doc.get("path"))
        model = text(doc.get("model"))
        headers = doc.get("headers")
        client = client_of(headers) if isinstance(headers, dict) else None
        self.requests[seq] = (path, unix(ts), model, client)
        self.db.execute(schema.REQUEST_UPSERT, (
            self.files.session, seq, unix(ts), ts[:10] if isinstance(ts, str) else None, text(info.get("machine")),
            self._provider(), text(info.get("host")) or self.files.upstream, path, client, model,
            text(info.get("thread")), text(info.get("agent")), integer(doc.get("size"))))

    def _request_of(self, seq: int) -> tuple:
        found = self.requests.get(seq)
        if found is None:  # catalogued by an earlier update
            found = self.db.execute("SELECT path, ts, model, client FROM calls WHERE session = ? AND seq = ?",
                                    (self.files.session, seq)).fetchone() or (None, None, None, None)
        return found

    def _response(self, seq: int, doc: dict) -> None:
        self._ensure_session()
        path, ts, request_model, client = self._request_of(seq)
        info = meta(doc)
        model = text(doc.get("model")) or request_model
        api = providers.api_of_entry(self._provider(), path or "")
        counts, cost = tokens_and_cost(doc, api, model, text(info.get("host")) or self.files.upstream,
                                       ts or unix(info.get("ts")) or 0.0)
        timing = doc.get("timing") if isinstance(doc.get("timing"), dict) else {}
        tools = doc.get("tool_calls")
        error = doc.get("error")
        answered = info.get("ts")
        self.db.execute(schema.RESPONSE_UPSERT, (
            self.files.session, seq, unix(answered), answered[:10] if isinstance(answered, str) else None,
            integer(doc.get("status")), text(doc.get("stop_reason")), model,
            text(doc.get("client")) or client, *(integer(counts.get(k)) for k in ("input", "output", "cache_write",
                                                                                 "cache_read")),
            *(number(cost.get(k)) for k in ("total", "input", "output", "cache_write", "cache_read")),
            text(cost.get("source")), number(timing.get("ttfb_ms")), number(timing.get("total_ms")),
            integer(doc.get("size")), len(tools) if isinstance(tools, list) else 0, 1 if doc.get("incomplete") else 0,
            None if error is None else str(error)))

    def finish(self) -> None:
        self._ensure_session()
        self.db.execute(schema.SESSION_SUMS, (self.files.session,))


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _has_meta(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is not None


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
