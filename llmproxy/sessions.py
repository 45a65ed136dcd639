"""Sessions in ``{log_dir}/sessions.db``: client ids → our session ids, seq numbers, threads, forks.

Every worker process and thread shares one SQLite database (WAL, busy timeout). A request's
session, seq and thread are decided in one ``BEGIN IMMEDIATE`` transaction, so two workers that
receive the first two requests of a client session at the same instant still create one session
with seq 1 and 2. The caller writes its log lines inside that transaction too (see
:meth:`SessionStore.assign`), which keeps each session file in seq order.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from llmproxy.writelock import WriteLock

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    upstream TEXT NOT NULL,
    client_id TEXT,
    parent TEXT,
    fork_from_seq INTEGER,
    created_ns INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS client_ids (
    provider TEXT NOT NULL,
    upstream TEXT NOT NULL,
    client_id TEXT NOT NULL,
    session TEXT NOT NULL,
    PRIMARY KEY (provider, upstream, client_id)
);
CREATE TABLE IF NOT EXISTS threads (
    session TEXT NOT NULL,
    key TEXT NOT NULL,
    hashes TEXT NOT NULL,   -- JSON list: canonical hash of each message of the thread's last request
    history TEXT NOT NULL,  -- JSON list of [seq, number of messages]
    PRIMARY KEY (session, key)
);
"""

FORK_REASON = "message_history_diverged"


def new_session_id(now_ns: int) -> str:
    """``YYYYMMDD-HHMMSS-{8 hex}`` (UTC)."""
    stamp = datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(4)}"


def session_date(session_id: str) -> str:
    """``YYYY-MM-DD`` of a session id: the day its file lives under."""
    return f"{session_id[0:4]}-{session_id[4:6]}-{session_id[6:8]}"


def _feed(h, value: Any) -> None:
    """Feed a canonical form of a JSON value to a hash: dict keys sorted, ``cache_control``
    left out (clients move that marker between turns). Strings go in as UTF-8 bytes, tagged and
    length-prefixed, so no JSON escaping of megabyte tool results is needed."""
    if isinstance(value, dict):
        keys = sorted(k for k in value if k != "cache_control")
        h.update(b"{%d" % len(keys))
        for key in keys:
            _feed(h, key)
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, list):
        h.update(b"[%d" % len(value))
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(data))
        h.update(data)
    else:  # numbers, booleans, null
        h.update(b"v" + json.dumps(value).encode())


def message_hashes(messages: Any) -> list[str]:
    """Canonical hash of each message: keys sorted, ``cache_control`` ignored."""
    if not isinstance(messages, list):
        return []
    digests = []
    for message in messages:
        h = hashlib.sha256()
        _feed(h, message)
        digests.append(h.hexdigest()[:16])
    return digests


def conversation_messages(provider: str, body: Any) -> list:
    """The message history a request carries (Messages / Chat Completions / Responses input)."""
    if not isinstance(body, dict):
        return []
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    if body.get("previous_response_id"):  # the history lives on the server, not in the request
        return []
    items = body.get("input")
    return items if isinstance(items, list) else []


@dataclass
class Assignment:
    """Where one request's entries go."""

    session: str
    seq: int
    upstream: str
    started_session: bool = False       # a session_start entry is due
    parent_session: str | None = None   # set when this request forks a session
    fork_from_seq: int | None = None
    agent: str | None = None
    client_id: str | None = None


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SessionStore:
    """The sessions database; safe to share between threads (one connection per thread)."""

    def __init__(self, path: Path, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._schema_ready = False
        self._write_lock = WriteLock(self.path.with_name(self.path.name + ".lock"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            if not self._schema_ready:
                self._prepare(conn)
                self._schema_ready = True
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never torn
            self._local.conn = conn
        return conn

    def prepare(self) -> None:
        """Create the database, WAL mode and tables (gunicorn's master does it before forking)."""
        self._conn()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL answers "database is locked" at once, without the busy timeout, while
        # another process has the new database open: retry for as long as the timeout allows.
        deadline = time.monotonic() + self.busy_timeout
        while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        conn.execute("BEGIN IMMEDIATE")  # waits with the busy timeout, unlike executescript
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def assign(self, provider: str, upstream: str, client_id: str | None, agent: str | None,
               hashes: list[str], now_ns: int, within: Callable[[Assignment], None]) -> Assignment:
        """Decide the session, seq and thread of a request; run ``within`` before committing.

        ``within`` writes the request's lines, so lines of one session land in seq order even
        when workers race. If it raises, nothing is recorded.
        """
        conn = self._conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                assignment = self._assign(conn, provider, upstream, client_id, agent, hashes, now_ns)
                within(assignment)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return assignment

    def _assign(self, conn, provider, upstream, client_id, agent, hashes, now_ns) -> Assignment:
        session = None
        if client_id is not None:
            row = conn.execute("SELECT session FROM client_ids WHERE provider=? AND upstream=? AND client_id=?",
                               (provider, upstream, client_id)).fetchone()
            session = row[0] if row else None

        if session is None:
            assignment = self._create(conn, provider, upstream, client_id, now_ns)
            if client_id is not None and hashes:
                self._save_thread(conn, assignment.session, agent or "t1", hashes, [[1, len(hashes)]])
            assignment.agent = agent
            return assignment

        seq = conn.execute("SELECT last_seq FROM sessions WHERE id=?", (session,)).fetchone()[0] + 1
        assignment = Assignment(session=session, seq=seq, upstream=upstream, agent=agent, client_id=client_id)
        if hashes:
            fork = self._follow_thread(conn, session, seq, agent, hashes)
            if fork is not None:
                parent, key, from_seq = fork
                assignment = self._create(conn, provider, upstream, client_id, now_ns, parent, from_seq)
                assignment.agent = agent
                self._save_thread(conn, assignment.session, key, hashes, [[1, len(hashes)]])
                return assignment
        conn.execute("UPDATE sessions SET last_seq=? WHERE id=?", (seq, session))
        return assignment

    def _create(self, conn, provider, upstream, client_id, now_ns, parent=None, from_seq=None) -> Assignment:
        session = new_session_id(now_ns)
        conn.execute("INSERT INTO sessions (id, provider, upstream, client_id, parent, fork_from_seq, created_ns, last_seq)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                     (session, provider, upstream, client_id, parent, from_seq, now_ns))
        if client_id is not None:
            conn.execute("INSERT OR REPLACE INTO client_ids (provider, upstream, client_id, session) VALUES (?, ?, ?, ?)",
                         (provider, upstream, client_id, session))
        return Assignment(session=session, seq=1, upstream=upstream, started_session=True,
                          parent_session=parent, fork_from_seq=from_seq, client_id=client_id)

    def _follow_thread(self, conn, session, seq, agent, hashes) -> tuple[str, str, int] | None:
        """Continue the thread this request extends, or start one; a diverging one is a fork."""
        rows = conn.execute("SELECT key, hashes, history FROM threads WHERE session=?", (session,)).fetchall()
        best = None  # (common prefix, key, hashes, history)
        for key, h_json, hist_json in rows:
            if agent is not None and key != agent:
                continue
            known = json.loads(h_json)
            common = _common_prefix(known, hashes)
            if common and (best is None or common > best[0]):
                best = (common, key, known, json.loads(hist_json))
        if best is None:  # a sub-agent, a title or quota call: a new thread of the same session
            key = agent or f"t{len(rows) + 1}"
            while any(r[0] == key for r in rows):
                key += "+"
            self._save_thread(conn, session, key, hashes, [[seq, len(hashes)]])
            return None
        common, key, known, history = best
        if common == len(known):  # extends (or repeats) the thread
            if history and history[-1][1] == len(hashes):
                history[-1][0] = seq  # a repeat: only the latest seq per length is ever needed
            else:
                history.append([seq, len(hashes)])
            self._save_thread(conn, session, key, hashes, history)
            return None
        # Departs before the thread's last message: the user rewound or edited the conversation.
        earlier = [s for s, n in history if n <= common]
        from_seq = max(earlier) if earlier else history[0][0]
        return session, key, from_seq

    @staticmethod
    def _save_thread(conn, session, key, hashes, history) -> None:
        conn.execute("INSERT OR REPLACE INTO threads (session, key, hashes, history) VALUES (?, ?, ?, ?)",
                     (session, key, json.dumps(hashes), json.dumps(history)))

    def remember(self, provider: str, upstream: str, client_id: str, session: str) -> None:
        """Map one more client id (a response id) to a session."""
        conn = self._conn()
        with self._write_lock:
            conn.execute("INSERT OR REPLACE INTO client_ids (provider, upstream, client_id, session) VALUES (?, ?, ?, ?)",
                         (provider, upstream, client_id, session))
