"""Lines longer than Loki's ``max_line_size`` go as parts, each a JSON object Loki accepts.

A part keeps the entry's ``type`` and ``_meta`` (so ``|= "<session>" | json`` still finds it) and
adds ``part``, ``parts`` and ``chunk``, a slice of the original line. Concatenating the chunks in
order gives back the original line byte for byte. Part *i* (from 0) carries the entry's timestamp
plus *i* ns, so the parts sort.

The first part also carries every field of the entry but its bulk (``body``, ``chunks``): status,
timing, model, usage, headers… stay queryable with ``| json``, and a query that counts entries by
such a field counts a split entry once. Likewise only the first part carries the structured
metadata that describes the entry (``model``, ``status``); every part carries the ids.
"""

from __future__ import annotations

import json

from llmproxy.loki.batch import LokiEntry

_HEADROOM = 256  # for "part", "parts" and the JSON punctuation
BULK = ("body", "chunks")
ID_METADATA = frozenset({"session_id", "request_id", "client_session_id"})


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def split_entry(entry: LokiEntry, max_bytes: int) -> list[LokiEntry]:
    """The entry itself when it fits, else its parts."""
    if len(entry.line) <= max_bytes:
        return [entry]
    text = entry.line.decode("utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    head = {"type": doc.get("type"), "_meta": doc.get("_meta")} if doc else {}
    first = {"type": doc.get("type"), **{k: v for k, v in doc.items() if k not in BULK and k != "_meta"},
             "_meta": doc.get("_meta")} if doc else {}
    budget = max_bytes - len(_dumps(first).encode()) - _HEADROOM
    if budget < 1024:  # huge headers: the first part is like the others
        first = head
        budget = max_bytes - len(_dumps(head).encode()) - _HEADROOM
    if budget < 1024:  # an absurd _meta: keep only the type
        first = head = {"type": head.get("type")}
        budget = max_bytes - len(_dumps(head).encode()) - _HEADROOM

    chunks: list[str] = []
    pos, guess = 0, budget // 2
    while pos < len(text):
        n = min(len(text) - pos, max(guess, 1))
        while True:
            size = len(_dumps(text[pos:pos + n]).encode())
            if size <= budget or n == 1:
                break
            n = max(1, int(n * budget / size * 0.98))
        chunks.append(text[pos:pos + n])
        pos += n
        guess = n
    parts = len(chunks)
    ids = tuple(p for p in entry.metadata if p[0] in ID_METADATA)
    return [LokiEntry(entry.ts_ns + i,
                      _dumps({**(head if i else first), "part": i + 1, "parts": parts, "chunk": chunk}).encode(),
                      entry.labels, ids if i else entry.metadata, entry.ticket)
            for i, chunk in enumerate(chunks)]


def join_parts(lines: list[str]) -> str:
    """The original line from its parts (any order)."""
    docs = sorted((json.loads(line) for line in lines), key=lambda d: d["part"])
    if not docs or len(docs) != docs[0]["parts"]:
        raise ValueError(f"{len(docs)} parts of {docs[0]['parts'] if docs else '?'}")
    return "".join(d["chunk"] for d in docs)
