"""A session as people read it: calls in order, each with the new words of its request (never
the history it re-sends), what the answer said, and the numbers of the call.

Each API module reads its own requests and answers (``turn``, ``system``, ``said`` in
llmproxy/providers/); this module arranges what they read. A tool call's result comes in a later
request (the next one of its thread); it is shown under the call, so a call is *settled* once
the next request of its thread was read, or every one of its tool calls has its result. A
:class:`Conversation` is built once per session and grows with the file: a live page asks it
for what changed since the lines it had.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from llmproxy import providers
from llmproxy.catalog.lines import integer, meta, number, text, tokens_and_cost, unix
from llmproxy.explorer.reader import Line, SessionLines
from llmproxy.providers import Part
from llmproxy.providers.clients import client_name, client_of

# Roles whose messages are the client's instructions (shown as the system prompt) and text
# blocks that are client context (Claude Code's reminders): collapsed, not the user's words.
CONTEXT_ROLES = providers.SPELLING.context_roles
CONTEXT_TEXTS = providers.SPELLING.context_texts


@dataclass
class Piece:
    """One thing shown in a call: the user's ``words``, client ``context``, ``text`` of the
    answer, ``thinking``, a tool ``call`` (with its ``result`` once a later request brings it),
    a tool ``result``, another ``block`` (``name`` its type), or ``system`` (the instructions).
    ``key`` addresses it within its call (the whole text is served by that address)."""

    kind: str
    text: str = ""
    name: str = ""
    ref: str = ""
    failed: bool = False
    key: int = 0
    seq: int = 0                       # the call it belongs to
    result: Piece | None = None        # a call's result
    answers: int | None = None         # a result: the seq of the call it answers

    def to_json(self) -> dict:
        doc: dict[str, Any] = {"kind": self.kind, "text": self.text}
        for name in ("name", "ref"):
            if getattr(self, name):
                doc[name] = getattr(self, name)
        if self.failed:
            doc["failed"] = True
        if self.result is not None:
            doc["result"] = self.result.to_json()
        if self.answers is not None:
            doc["answers"] = self.answers
        return doc


@dataclass
class Call:
    """One request and its answer, as shown."""

    seq: int
    ts: str = ""
    method: str = ""
    path: str = ""
    transport: str = "http"
    thread: str | None = None
    agent: str | None = None
    fork: dict | None = None           # from_seq, from_thread: where this branch left its thread
    client: str = ""
    system: Piece | None = None        # shown when it differs from the thread's previous one
    turn: list[tuple[str, list[Piece]]] = field(default_factory=list)
    answer: list[Piece] = field(default_factory=list)
    body_note: str = ""                # a request body no API module reads
    answered: bool = False
    status: int | None = None
    model: str | None = None
    stop_reason: str | None = None
    tokens: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    ttfb_ms: float | None = None
    total_ms: float | None = None
    size_in: int | None = None
    size_out: int | None = None
    error: str = ""                    # the proxy's (upstream cut, unreachable) or the answer's
    incomplete: bool = False
    pieces: dict[int, Piece] = field(default_factory=dict)
    settled: bool = False
    before: int | None = None          # the seq of the previous call of its thread
    api: ModuleType | None = field(default=None, repr=False)  # the answer speaks the request's API

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.incomplete or (self.status is not None and self.status >= 400)

    @property
    def calls(self) -> list[Piece]:
        return [p for p in self.answer if p.kind == "call"]

    def add(self, piece: Piece) -> Piece:
        piece.key, piece.seq = len(self.pieces), self.seq
        self.pieces[piece.key] = piece
        return piece

    def to_json(self) -> dict:
        return {"seq": self.seq, "ts": self.ts, "method": self.method, "path": self.path,
                "transport": self.transport, "client": self.client, "thread": self.thread, "agent": self.agent, "fork": self.fork,
                "system": self.system.to_json() if self.system else None,
                "turn": [{"role": role, "parts": [p.to_json() for p in parts]} for role, parts in self.turn],
                "answer": [p.to_json() for p in self.answer], "answered": self.answered, "status": self.status,
                "model": self.model, "stop_reason": self.stop_reason, "tokens": self.tokens, "cost": self.cost,
                "ttfb_ms": self.ttfb_ms, "total_ms": self.total_ms, "size_in": self.size_in,
                "size_out": self.size_out, "error": self.error or None, "incomplete": self.incomplete}


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _client(headers: Any) -> str:
    return client_of(headers) if isinstance(headers, dict) else client_name(None)


def _body(entry: dict) -> Any:
    body = entry.get("body")
    if not isinstance(body, str) or entry.get("body_encoding") or body[:1] not in ("{", "["):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class Conversation:
    """The calls of one session, built from its lines in seq order, as far as they were read."""

    def __init__(self, lines: SessionLines):
        self.lines = lines
        self.start: dict = {}
        self.provider: str | None = None
        self.calls: dict[int, Call] = {}
        self._fork: dict | None = None          # a fork entry, for the request after it
        self._open: dict[str, Piece] = {}      # tool call id → its call piece, still waiting for a result
        self._early: dict[str, Piece] = {}     # tool call id → a result read before its call's answer
        self._system: dict[str | None, str] = {}  # thread → hash of its last instructions
        self._last_of_thread: dict[str | None, int] = {}
        self._seen = 0                         # lines taken in

    @classmethod
    def of(cls, lines: SessionLines) -> "Conversation":
        """The session's conversation, kept with its index (started over with it)."""
        conversation = lines.derived.get("conversation")
        if conversation is None:
            conversation = lines.derived["conversation"] = cls(lines)
        return conversation

    @property
    def behind(self) -> bool:
        """Whether lines read are not taken in yet."""
        return self._seen < len(self.lines.lines)

    def update(self, most: int | None = None) -> set[int]:
        """Take in the lines read since last time (at most ``most`` of them); the seqs of the
        calls that changed (new, now answered, or given a tool result). Call it under the
        index's lock."""
        changed: set[int] = set()
        end = len(self.lines.lines) if most is None else min(len(self.lines.lines), self._seen + most)
        fresh = self.lines.lines[self._seen:end]
        self._seen = end
        for line in fresh:
            if line.kind == "session_start" and not self.start:
                self.start = self.lines.entry(line) or {}
                provider = self.start.get("provider")
                self.provider = provider if isinstance(provider, str) else None
            elif line.kind == "fork":
                self._fork = self.lines.entry(line) or {}
            elif line.kind == "request" and line.seq is not None and line.seq not in self.calls:
                changed |= self._request(line)
            elif line.kind == "response" and line.seq in self.calls and not self.calls[line.seq].answered:
                self._response(self.calls[line.seq], line)
                changed.add(line.seq)
        return changed

    def _request(self, line: Line) -> set[int]:
        entry = self.lines.entry(line) or {}
        info = meta(entry)
        path = str(entry.get("path", "")).split("?")[0]
        call = Call(seq=line.seq, ts=str(info.get("ts", "")), method=str(entry.get("method", "")), path=path,
                    transport=str(entry.get("transport") or "http"), thread=info.get("thread"),
                    agent=info.get("agent"), client=_client(entry.get("headers")),
                    size_in=_number(entry.get("size")))
        fork, self._fork = self._fork, None
        if fork is not None:
            call.fork = {"from_seq": fork.get("from_seq"), "from_thread": fork.get("from_thread")}
        api = providers.api_of_entry(self.provider, path)
        body = _body(entry)
        changed = {call.seq}
        if isinstance(body, dict):
            changed |= self._turn(call, api, body)
        else:
            call.body_note = f"{entry.get('size', 0)} bytes"
        call.api = api
        self.calls[call.seq] = call
        # A request of a thread settles the calls of that thread before it.
        call.before = before = self._last_of_thread.get(call.thread)
        if before is not None and not self.calls[before].settled:
            self.calls[before].settled = True
            changed.add(before)
        self._last_of_thread[call.thread] = call.seq
        return changed

    def _turn(self, call: Call, api: ModuleType | None, body: dict) -> set[int]:
        changed = set()
        system = providers.system(api, body)
        digest = hashlib.sha256(system.encode("utf-8", "surrogatepass")).hexdigest()
        if system and self._system.get(call.thread) != digest:
            call.system = call.add(Piece("system", system))
        self._system[call.thread] = digest
        for role, parts in providers.turn(api, body):
            if role in CONTEXT_ROLES:
                continue
            pieces = []
            for part in parts:
                piece = call.add(_piece(part))
                if piece.kind == "result" and piece.ref:
                    asked = self._open.pop(piece.ref, None)
                    if asked is not None:
                        changed.add(self._pair(asked, piece))
                    else:  # its call's answer is written after this request (the answer's
                        self._early[piece.ref] = piece  # line follows the last byte)
                pieces.append(piece)
            if pieces:
                call.turn.append((role, pieces))
        return changed

    def _response(self, call: Call, line: Line) -> None:
        entry = self.lines.entry(line) or {}
        api = call.api
        said = providers.said(api, entry)
        for part in said.parts:
            piece = call.add(_piece(part, answer=True))
            call.answer.append(piece)
            if piece.kind == "call" and piece.ref:
                early = self._early.pop(piece.ref, None)
                if early is not None:
                    self._pair(piece, early)
                else:
                    self._open[piece.ref] = piece
        timing = entry.get("timing") if isinstance(entry.get("timing"), dict) else {}
        call.answered = True
        call.status = entry.get("status") if isinstance(entry.get("status"), int) else None
        call.model = entry.get("model") if isinstance(entry.get("model"), str) else None
        call.stop_reason = entry.get("stop_reason") if isinstance(entry.get("stop_reason"), str) else None
        info = meta(entry)
        tokens, cost = tokens_and_cost(entry, api, call.model, text(info.get("host")) or self.lines.files.upstream,
                                       unix(call.ts) or unix(info.get("ts")) or time.time())
        call.tokens = {k: v for k, v in tokens.items() if integer(v) is not None}
        call.cost = number(cost.get("total"))
        if isinstance(entry.get("client"), str):
            call.client = entry["client"]
        call.ttfb_ms, call.total_ms = _number(timing.get("ttfb_ms")), _number(timing.get("total_ms"))
        call.size_out = _number(entry.get("size"))
        call.incomplete = entry.get("incomplete") is True or entry.get("body_truncated") is True
        error = entry.get("error")
        call.error = (error if isinstance(error, str) else "") or said.error
        if not call.error and call.status is not None and call.status >= 400 and not said.parts:
            call.error = str(entry.get("body") or "")[:2000] if not entry.get("body_encoding") else ""
        if all(p.result for p in call.calls):
            call.settled = True

    def _pair(self, asked: Piece, result: Piece) -> int:
        """A tool call and its result, found: the call is settled once all of its calls are."""
        asked.result, result.answers = result, asked.seq
        owner = self.calls.get(asked.seq)
        if owner is not None and all(p.result for p in owner.calls):
            owner.settled = True
        return asked.seq

    def ordered(self) -> list[Call]:
        return [self.calls[seq] for seq in sorted(self.calls)]

    def piece(self, seq: int, key: int) -> Piece | None:
        call = self.calls.get(seq)
        return call.pieces.get(key) if call is not None else None


def _piece(part: Part, answer: bool = False) -> Piece:
    if part.kind == "text":
        if answer:
            return Piece("text", part.text)
        return Piece("context" if CONTEXT_TEXTS and part.text.lstrip().startswith(CONTEXT_TEXTS) else "words",
                     part.text)
    if part.kind == "result":
        text = part.text if part.parts is None else "\n".join(
            p.text if p.kind == "text" else f"[{p.name}]" for p in part.parts)
        return Piece("result", text, name=part.name, ref=part.ref, failed=part.failed)
    return Piece(part.kind, part.text, name=part.name or "", ref=part.ref)
