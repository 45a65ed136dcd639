"""Sessions in ``{log_dir}/sessions.db``: client ids → our session ids, seq numbers, threads, forks.

Every worker process and thread shares one SQLite database (WAL, busy timeout). A request's
session, seq and thread are decided in one ``BEGIN IMMEDIATE`` transaction, so two workers that
receive the first two requests of a client session at the same instant still create one session
with seq 1 and 2. The caller writes its log lines inside that transaction too (see
:meth:`SessionStore.assign`), which keeps each session file in seq order.

The threads of one worker that need a transaction while another one holds the write lock share
the next one (group commit): one lock, one ``BEGIN`` and one ``COMMIT`` for all of them, each
request in a savepoint of its own. Under load that is what keeps the one lock every request of
the server passes through from becoming its limit (docs/performance.rst, "Under load").
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from llmproxy.common.clientids import session_name
from llmproxy.providers import SPELLING
from llmproxy.record.writelock import WriteLock

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    upstream TEXT NOT NULL,
    client_id TEXT,
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
SESSION_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")  # what new_session_id makes


def new_session_id(now_ns: int) -> str:
    """``YYYYMMDD-HHMMSS-{8 hex}`` (UTC)."""
    stamp = datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(4)}"


def session_date(session_id: str) -> str:
    """``YYYY-MM-DD`` of a session id: the day its file lives under."""
    return f"{session_id[0:4]}-{session_id[4:6]}-{session_id[6:8]}"


# What a message's identity leaves out, and why (docs/log-format.rst, "Sessions, threads and
# forks", lists the rules): each API module declares its spellings (llmproxy/providers/spelling.py);
# they are bound here once, so the hashing below, which reads megabyte bodies, does plain set lookups.
_ANNOTATIONS = SPELLING.annotations          # per-request markers clients move between turns
_INSTRUCTION_ROLES = SPELLING.context_roles  # the client's instructions, regenerated per request
_CONTEXT_TEXTS = SPELLING.context_texts      # client context prepended to a user message
_REASONING = SPELLING.hidden                 # the model's hidden reasoning, kept or dropped at will
_ITEM_FIELDS = SPELLING.server_fields        # ids and states the server assigns
_TEXT_TYPES = SPELLING.text_types            # other names of a "text" block (the canonical one)
_CONTENT_FIELDS = SPELLING.content_fields    # item type → the field that holds its content
_MESSAGE_TYPE = SPELLING.message_type        # the type of an item with a role and no type


def _feed(out: list[bytes], value: Any) -> None:
    """Append a JSON value's canonical bytes: dict keys sorted; annotations, and null, false and
    empty lists (the APIs' defaults: ``"is_error": false`` is no error) left out. Strings go in as UTF-8 bytes, tagged and length-prefixed, so no JSON
    escaping of megabyte tool results is needed."""
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data))
        out.append(data)
    elif isinstance(value, dict):
        keys = sorted(k for k, v in value.items()
                      if v is not None and v is not False and v != [] and k not in _ANNOTATIONS)
        out.append(b"{%d" % len(keys))
        for key in keys:
            _feed(out, key)
            _feed(out, value[key])
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[%d" % len(value))
        for item in value:
            _feed(out, item)
        out.append(b"]")
    else:  # numbers, booleans
        out.append(b"v" + json.dumps(value).encode())


def _content(value: Any) -> Any:
    """Content in one spelling: a string is the list of one text block; reasoning blocks and
    client context (Claude Code's reminders) are left out."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        return value
    blocks = []
    for block in value:
        if isinstance(block, dict):
            kind = block.get("type")
            if kind in _REASONING:
                continue
            text = block.get("text")
            if kind == "text" and isinstance(text, str) and text.startswith(_CONTEXT_TEXTS):
                continue
            block = {k: _content(v) if k == "content" else v for k, v in block.items()}
            if kind in _TEXT_TYPES:
                block["type"] = "text"
        blocks.append(block)
    return blocks


def _canonical(message: Any) -> Any:
    """A message or input item as its identity sees it; None when it is no turn of the
    conversation (an instruction, reasoning)."""
    if not isinstance(message, dict):
        return message
    kind = message.get("type")
    if message.get("role") in _INSTRUCTION_ROLES or kind in _REASONING:
        return None
    content = _CONTENT_FIELDS.get(kind, "content")
    doc = {}
    for key, value in message.items():
        if key in _ITEM_FIELDS:
            continue
        if key == "content" or key == content:
            value = _content(value)
        doc[key] = value
    if "role" in doc and "type" not in doc:  # a message item may omit its type
        doc["type"] = _MESSAGE_TYPE
    return doc


def message_hashes(messages: Any) -> list[str]:
    """The canonical hash of each turn of a conversation, the same for every spelling a provider
    accepts of the same content (see the rules above)."""
    if not isinstance(messages, list):
        return []
    digests = []
    for message in messages:
        doc = _canonical(message)
        if doc is None:
            continue
        out: list[bytes] = []
        _feed(out, doc)
        digests.append(hashlib.sha256(b"".join(out)).hexdigest()[:16])
    return digests


T = TypeVar("T")


class _Job:
    """One thread's share of a write transaction: ``work(conn)``, then its result or error."""

    __slots__ = ("work", "result", "error", "done")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]):
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


@dataclass
class Fork:
    """Where a conversation departed from its history: the user rewound or edited it, or a
    compaction rewrote it. The new branch goes on as ``thread`` of the same session."""

    from_seq: int       # the last request whose history the new branch still shares
    from_thread: str    # the thread it departed from


@dataclass
class Assignment:
    """Where one request's entries go."""

    session: str
    seq: int
    upstream: str
    started_session: bool = False       # a session_start entry is due
    agent: str | None = None
    client_id: str | None = None        # the client's name for the session, when it gave one
    thread: str | None = None           # the conversation thread (branch) the request continues
    fork: Fork | None = None            # set when this request starts a branch: a fork entry is due


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
        self._jobs: list[_Job] = []
        self._jobs_changed = threading.Condition()
        self._leading = False  # a thread of this process is running a transaction for the jobs

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
        def work(conn: sqlite3.Connection) -> Assignment:
            assignment = self._assign(conn, provider, upstream, client_id, agent, hashes, now_ns)
            within(assignment)
            return assignment
        return self._transact(work)

    def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(conn)`` in a write transaction; return its result or raise its error.

        A thread that comes while another thread of this process runs a transaction queues its
        work; when that transaction ends, one waiting thread runs all queued work in the next
        one (group commit), and the others only collect their results.
        """
        job = _Job(work)
        with self._jobs_changed:
            self._jobs.append(job)
            while self._leading and not job.done:
                self._jobs_changed.wait()
            batch = None
            if not job.done:
                self._leading = True
                batch, self._jobs = self._jobs, []
        if batch is not None:
            try:
                self._run(batch)
            finally:
                with self._jobs_changed:
                    self._leading = False
                    self._jobs_changed.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self, batch: list[_Job]) -> None:
        """One transaction for ``batch``: each job's changes in a savepoint of its own (one that
        fails is rolled back alone), all committed at once. A failed commit fails them all."""
        try:
            conn = self._conn()
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if len(batch) == 1:  # no savepoint needed: the transaction is the job's
                        job = batch[0]
                        try:
                            job.result = job.work(conn)
                        except BaseException as exc:
                            job.error = exc
                            conn.execute("ROLLBACK")
                            return
                    else:
                        for job in batch:
                            conn.execute("SAVEPOINT job")
                            try:
                                job.result = job.work(conn)
                            except BaseException as exc:
                                job.error = exc
                                conn.execute("ROLLBACK TO job")
                            conn.execute("RELEASE job")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except BaseException as exc:
            for job in batch:
                if job.error is None:
                    job.error, job.result = exc, None
        finally:
            for job in batch:
                job.done = True

    def _assign(self, conn, provider, upstream, client_id, agent, hashes, now_ns) -> Assignment:
        row = None
        if client_id is not None:
            row = conn.execute("SELECT s.id, s.last_seq, s.client_id FROM client_ids c JOIN sessions s ON s.id = c.session"
                               " WHERE c.provider=? AND c.upstream=? AND c.client_id=?",
                               (provider, upstream, client_id)).fetchone()
        if row is None:
            assignment = self._create(conn, provider, upstream, client_id, now_ns)
            assignment.agent = agent
            if client_id is not None and hashes:
                assignment.thread = agent or "t1"
                self._save_thread(conn, assignment.session, assignment.thread, hashes, [[1, len(hashes)]])
            return assignment

        session, seq, named = row[0], row[1] + 1, row[2]
        assignment = Assignment(session=session, seq=seq, upstream=upstream, agent=agent, client_id=named)
        if hashes:
            assignment.thread, assignment.fork = self._follow_thread(conn, session, seq, agent, hashes)
        conn.execute("UPDATE sessions SET last_seq=? WHERE id=?", (seq, session))
        return assignment

    def _create(self, conn, provider, upstream, client_id, now_ns) -> Assignment:
        session = new_session_id(now_ns)
        named = session_name(client_id)
        conn.execute("INSERT INTO sessions (id, provider, upstream, client_id, created_ns, last_seq)"
                     " VALUES (?, ?, ?, ?, ?, 1)", (session, provider, upstream, named, now_ns))
        if client_id is not None:
            conn.execute("INSERT OR REPLACE INTO client_ids (provider, upstream, client_id, session) VALUES (?, ?, ?, ?)",
                         (provider, upstream, client_id, session))
        return Assignment(session=session, seq=1, upstream=upstream, started_session=True, client_id=named)

    def _follow_thread(self, conn, session, seq, agent, hashes) -> tuple[str, Fork | None]:
        """Continue the thread this request extends, or start one; one that departs from a
        thread before its last message starts a new branch (a thread too), marked as a fork."""
        rows = conn.execute("SELECT key, hashes, history FROM threads WHERE session=?", (session,)).fetchall()
        best = None  # (common prefix, key, hashes, history)
        for key, h_json, hist_json in rows:
            if agent is not None and key != agent and not key.startswith(agent + "+"):
                continue
            known = json.loads(h_json)
            common = _common_prefix(known, hashes)
            if common and (best is None or common > best[0]):
                best = (common, key, known, json.loads(hist_json))
        if best is not None and best[0] == len(best[2]):  # extends (or repeats) the thread
            common, key, known, history = best
            if history and history[-1][1] == len(hashes):
                history[-1][0] = seq  # a repeat: only the latest seq per length is ever needed
            else:
                history.append([seq, len(hashes)])
            self._save_thread(conn, session, key, hashes, history)
            return key, None
        # A new thread: a sub-agent, a title or quota call (no first message in common), or a
        # branch of a thread that departs before that thread's last message.
        key = agent or f"t{len(rows) + 1}"
        while any(r[0] == key for r in rows):
            key += "+"
        self._save_thread(conn, session, key, hashes, [[seq, len(hashes)]])
        if best is None:
            return key, None
        common, from_thread, _, history = best
        earlier = [s for s, n in history if n <= common]
        return key, Fork(from_seq=max(earlier) if earlier else history[0][0], from_thread=from_thread)

    @staticmethod
    def _save_thread(conn, session, key, hashes, history) -> None:
        conn.execute("INSERT OR REPLACE INTO threads (session, key, hashes, history) VALUES (?, ?, ?, ?)",
                     (session, key, json.dumps(hashes), json.dumps(history)))

    def remember(self, provider: str, upstream: str, client_id: str, session: str) -> None:
        """Map one more client id (a response id) to a session."""
        self._transact(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO client_ids (provider, upstream, client_id, session) VALUES (?, ?, ?, ?)",
            (provider, upstream, client_id, session)))
