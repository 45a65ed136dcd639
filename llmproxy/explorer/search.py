"""Full-text search over every session: what is new in each call, in the catalog's database.

:class:`SearchIndexer` is a catalog indexer (``llmproxy.catalog_indexers`` entry point, see
:mod:`llmproxy.catalog`): for each request it indexes the turn it adds (the user's words, tool
results) and for each answer what it said (text, thinking, tool calls with their input),
never the history a request re-sends, which grows with the square of a session's length. One
row per piece, so that a hit names the very call and what it was. Each piece is indexed up to
:data:`PIECE_LIMIT` characters (a 10 MB tool result is found by its beginning).

:func:`search` turns what a person types into an FTS5 query (words and "quoted phrases",
``word*`` for a prefix; everything else is taken literally) and returns hits with snippets.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from llmproxy import providers
from llmproxy.catalog import Entry
from llmproxy.providers import Part

PIECE_LIMIT = 64 * 1024
TABLE = "explorer_text"       # FTS5: the text of each piece (rowid = explorer_pieces.id)
PIECES = "explorer_pieces"    # where each piece is: session, seq, kind, name
# Snippet markers: control characters, which the pages show as pictures, never as markup.
MARK_START, MARK_END = "\x02", "\x03"
CONTEXT_ROLES = providers.SPELLING.context_roles
CONTEXT_TEXTS = providers.SPELLING.context_texts

# What a hit is, as the pages name it.
KINDS = {"words": "You", "result": "Tool result", "text": "Assistant", "call": "Tool call", "thinking": "Thinking"}


class SearchIndexer:
    """The explorer's catalog indexer: the new text of every call into :data:`TABLE`."""

    name = "explorer_search"
    version = 2

    def create(self, db: sqlite3.Connection) -> None:
        db.execute(f"CREATE TABLE IF NOT EXISTS {PIECES} (id INTEGER PRIMARY KEY, session TEXT NOT NULL, "
                   "seq INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT, ref TEXT)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {PIECES}_by_session ON {PIECES} (session, ref)")
        db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(text, "
                   "tokenize = 'unicode61 remove_diacritics 2')")

    def add(self, db: sqlite3.Connection, entry: Entry) -> None:
        if entry.seq is None or entry.kind not in ("request", "response"):
            return
        try:
            pieces = list(_request_pieces(db, entry) if entry.kind == "request" else _answer_pieces(db, entry))
        except Exception:  # a body of a shape no reader expects is not searchable, and that is all
            return
        for kind, name, ref, text in pieces:
            if not text.strip():
                continue
            cursor = db.execute(f"INSERT INTO {PIECES} (session, seq, kind, name, ref) VALUES (?, ?, ?, ?, ?)",
                                (entry.session, entry.seq, kind, name or None, ref or None))
            db.execute(f"INSERT INTO {TABLE} (rowid, text) VALUES (?, ?)", (cursor.lastrowid, text[:PIECE_LIMIT]))

    def forget(self, db: sqlite3.Connection, session: str) -> None:
        db.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT id FROM {PIECES} WHERE session = ?)", (session,))
        db.execute(f"DELETE FROM {PIECES} WHERE session = ?", (session,))


def _api(db: sqlite3.Connection, entry: Entry, path: str | None):
    row = db.execute("SELECT provider FROM sessions WHERE session = ?", (entry.session,)).fetchone()
    return providers.api_of_entry(row[0] if row and row[0] else providers.provider_for_host(entry.upstream),
                                  (path or "").split("?")[0])


def _request_pieces(db: sqlite3.Connection, entry: Entry) -> Iterator[tuple[str, str, str, str]]:
    """(kind, name, ref, text) of what a request adds."""
    doc = entry.doc
    body = doc.get("body")
    if not isinstance(body, str) or doc.get("body_encoding") or body[:1] != "{":
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        return
    api = _api(db, entry, doc.get("path") if isinstance(doc.get("path"), str) else None)
    for role, parts in providers.turn(api, parsed):
        if role in CONTEXT_ROLES:
            continue
        for part in parts:
            if part.kind == "text" and not (CONTEXT_TEXTS and part.text.lstrip().startswith(CONTEXT_TEXTS)):
                yield "words", "", "", part.text
            elif part.kind == "result":
                yield "result", "", part.ref, _result_text(part)


def _result_text(part: Part) -> str:
    if part.parts is None:
        return part.text
    return "\n".join(p.text for p in part.parts if p.kind == "text")


def _answer_pieces(db: sqlite3.Connection, entry: Entry) -> Iterator[tuple[str, str, str, str]]:
    """(kind, name, ref, text) of what an answer said."""
    row = db.execute("SELECT path FROM calls WHERE session = ? AND seq = ?", (entry.session, entry.seq)).fetchone()
    said = providers.said(_api(db, entry, row[0] if row else None), entry.doc)
    for part in said.parts:
        if part.kind in ("text", "thinking"):
            yield part.kind, "", "", part.text
        elif part.kind == "call":
            yield "call", part.name, part.ref, f"{part.name} {part.text}"


# --- queries ---

_TERM = re.compile(r'"([^"]*)"|(\S+)')


def fts_query(text: str) -> str:
    """What a person typed as an FTS5 query: every word and "quoted phrase" must occur (a word
    ending in ``*`` is a prefix); operators and punctuation are taken as text."""
    terms = []
    for phrase, word in _TERM.findall(text or ""):
        value = phrase if phrase else word
        prefix = bool(word) and word.endswith("*") and len(word) > 1
        value = value.rstrip("*") if prefix else value
        if not value.strip():
            continue
        terms.append('"' + value.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


@dataclass
class Hit:
    session: str
    seq: int                          # the call whose request or answer has it
    kind: str
    name: str
    snippet: list[tuple[bool, str]]   # (marked, text) runs
    shown_at: int                     # the call it is shown with: a tool result, under its call
    ts: float | None = None
    model: str | None = None
    client: str | None = None
    upstream: str | None = None

    @property
    def label(self) -> str:
        return KINDS.get(self.kind, self.kind)

    def to_json(self) -> dict[str, Any]:
        return {"session": self.session, "seq": self.seq, "shown_at": self.shown_at, "kind": self.kind,
                "name": self.name or None,
                "snippet": "".join(f"[{t}]" if marked else t for marked, t in self.snippet), "ts": self.ts,
                "model": self.model, "client": self.client, "upstream": self.upstream}


def runs(snippet: str) -> list[tuple[bool, str]]:
    """A snippet's text split into (marked, text) runs at the markers."""
    out: list[tuple[bool, str]] = []
    marked = False
    for piece in re.split(f"([{MARK_START}{MARK_END}])", snippet or ""):
        if piece == MARK_START:
            marked = True
        elif piece == MARK_END:
            marked = False
        elif piece:
            out.append((marked, piece))
    return out


def ready(db: sqlite3.Connection) -> bool:
    """Whether the search tables exist (the catalog was built with this indexer)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone() is not None


ORDERS = {"newest": f"{TABLE}.rowid DESC", "best": "rank"}


def search(db: sqlite3.Connection, text: str, limit: int = 50, offset: int = 0, order: str = "newest") -> list[Hit]:
    """The pieces that match ``text`` with snippets, newest first (FTS5 walks its index in that
    order and stops at ``limit``) or ``best`` first (every match ranked: slower for common
    words)."""
    query = fts_query(text)
    if not query:
        return []
    rows = db.execute(
        f"SELECT p.session, p.seq, p.kind, p.name, snippet({TABLE}, 0, ?, ?, '…', 24), "
        f"(SELECT min(asked.seq) FROM {PIECES} asked WHERE p.kind = 'result' AND asked.session = p.session "
        f"AND asked.ref = p.ref AND asked.kind = 'call'), c.ts, c.model, c.client, c.upstream "
        f"FROM {TABLE} JOIN {PIECES} p ON p.id = {TABLE}.rowid "
        f"LEFT JOIN calls c ON c.session = p.session AND c.seq = p.seq "
        f"WHERE {TABLE} MATCH ? ORDER BY {ORDERS[order]} LIMIT ? OFFSET ?",
        (MARK_START, MARK_END, query, limit, offset)).fetchall()
    return [Hit(s, q, k, n or "", runs(snip), asked or q, ts, model, client, upstream)
            for s, q, k, n, snip, asked, ts, model, client, upstream in rows]


def sessions_matching(text: str) -> tuple[str, tuple]:
    """SQL that keeps the sessions with a piece matching ``text`` (for the sessions page)."""
    return (f"session IN (SELECT p.session FROM {TABLE} JOIN {PIECES} p ON p.id = {TABLE}.rowid "
            f"WHERE {TABLE} MATCH ?)", (fts_query(text),))
