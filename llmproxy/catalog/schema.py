"""The catalog's tables. A change here bumps :data:`VERSION`: an older catalog is then rebuilt
from the files, which stay the truth."""

from __future__ import annotations

VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);

-- How far each session was read: ``seen`` is what stat said then (record/tail.py ``seen``),
-- ``mark`` where reading stopped, ``skipped`` the lines that were not entries (corrupt).
CREATE TABLE IF NOT EXISTS files (
    session TEXT PRIMARY KEY, upstream TEXT NOT NULL, day TEXT NOT NULL,
    seen TEXT NOT NULL, mark TEXT NOT NULL, skipped INTEGER NOT NULL DEFAULT 0, problem TEXT);

-- One row per call: its request's columns, then its response's (``answered``). Times are Unix
-- seconds (``ts``: the request; ``answered_ts``: its answer's entry, the time Loki has it at);
-- ``day`` and ``answered_day`` their UTC days; cost in USD (NULL: no price known). The usage
-- reports date a call by its answer, as Loki does, so that both ways agree.
CREATE TABLE IF NOT EXISTS calls (
    session TEXT NOT NULL, seq INTEGER NOT NULL,
    ts REAL, day TEXT, machine TEXT, provider TEXT, upstream TEXT, path TEXT, client TEXT, model TEXT,
    thread TEXT, agent TEXT, request_bytes INTEGER,
    answered INTEGER NOT NULL DEFAULT 0, answered_ts REAL, answered_day TEXT, status INTEGER, stop_reason TEXT,
    input INTEGER, output INTEGER, cache_write INTEGER, cache_read INTEGER,
    cost REAL, cost_input REAL, cost_output REAL, cost_cache_write REAL, cost_cache_read REAL, cost_source TEXT,
    ttfb_ms REAL, total_ms REAL, response_bytes INTEGER, tool_calls INTEGER,
    incomplete INTEGER NOT NULL DEFAULT 0, error TEXT,
    PRIMARY KEY (session, seq));
CREATE INDEX IF NOT EXISTS calls_by_day ON calls (day);
CREATE INDEX IF NOT EXISTS calls_by_answered_day ON calls (coalesce(answered_day, day));

-- A session's sums over its calls (``calls``, ``errors``: answered ones; ``started``, ``last``:
-- its first and last request), and what its session_start said.
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY, upstream TEXT, provider TEXT, day TEXT, machine TEXT, client_session_id TEXT,
    clients TEXT, models TEXT, started REAL, last REAL, calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0, input INTEGER, output INTEGER, cache_write INTEGER, cache_read INTEGER,
    cost REAL, unpriced INTEGER NOT NULL DEFAULT 0, request_bytes INTEGER, response_bytes INTEGER);
CREATE INDEX IF NOT EXISTS sessions_by_last ON sessions (last);
"""

REQUEST_COLUMNS = ("ts", "day", "machine", "provider", "upstream", "path", "client", "model", "thread", "agent",
                   "request_bytes")
RESPONSE_COLUMNS = ("answered_ts", "answered_day", "status", "stop_reason", "model", "client", "input", "output", "cache_write", "cache_read",
                    "cost", "cost_input", "cost_output", "cost_cache_write", "cost_cache_read", "cost_source",
                    "ttfb_ms", "total_ms", "response_bytes", "tool_calls", "incomplete", "error")


def _upsert(columns: tuple[str, ...], extra: str = "") -> str:
    """Insert a call's row or, when its other half came first, fill in these columns (a value
    this line does not have keeps what the other half said)."""
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    updates = ", ".join(f"{c} = coalesce(excluded.{c}, calls.{c})" for c in columns)
    return (f"INSERT INTO calls (session, seq, {names}{extra and ', answered'}) "
            f"VALUES (?, ?, {marks}{extra and ', 1'}) "
            f"ON CONFLICT (session, seq) DO UPDATE SET {updates}{extra}")


REQUEST_UPSERT = _upsert(REQUEST_COLUMNS)
RESPONSE_UPSERT = _upsert(RESPONSE_COLUMNS, ", answered = 1")

SESSION_START = """
INSERT INTO sessions (session, upstream, provider, day, machine, client_session_id) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (session) DO UPDATE SET provider = coalesce(excluded.provider, sessions.provider),
    machine = coalesce(sessions.machine, excluded.machine),
    client_session_id = coalesce(excluded.client_session_id, sessions.client_session_id)
"""

SESSION_SUMS = """
UPDATE sessions SET (clients, models, started, last, calls, errors, input, output, cache_write, cache_read,
                     cost, unpriced, request_bytes, response_bytes, machine) = (
    SELECT group_concat(DISTINCT client), group_concat(DISTINCT model), min(ts), max(ts),
           count(*) FILTER (WHERE answered),
           coalesce(sum(status >= 400 OR error IS NOT NULL OR incomplete) FILTER (WHERE answered), 0),
           sum(input), sum(output), sum(cache_write), sum(cache_read), sum(cost),
           coalesce(sum(cost IS NULL AND input IS NOT NULL), 0), sum(request_bytes), sum(response_bytes),
           coalesce(sessions.machine, min(machine))
    FROM calls WHERE calls.session = sessions.session)
WHERE session = ?
"""
