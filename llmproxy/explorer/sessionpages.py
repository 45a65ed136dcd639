"""The session page: one session as a conversation, streamed as it is read, kept live.

``/session/<id>`` streams its calls as they are built (the first screen comes while the rest of
a long session is still read); ``.json`` gives the same calls as data and ``.jsonl`` the file
itself. A call's raw entries (``raw.json``) and a long piece's whole text (``piece/<n>.txt``)
are fetched only when opened. ``changes.json?since=<byte>&gen=<n>`` answers a live page with
the calls that changed since the bytes it was built from.
"""

from __future__ import annotations

import bisect
import time
from operator import attrgetter
from typing import Iterator

from flask import Flask, Response, abort, current_app, jsonify, request, stream_with_context

from llmproxy.explorer.app import Explorer
from llmproxy.explorer.conversation import Call, Conversation
from llmproxy.explorer.formatting import parse_ts
from llmproxy.explorer.reader import NoSuchSession, SessionLines

STEP = 8                  # lines taken in between two looks at what can be shown
FLUSH_BYTES = 32 * 1024   # a streamed page is sent in pieces of about this size
ACTIVE_SECONDS = 300      # written to this recently: the session is shown as active now


def _lines(session: str) -> SessionLines:
    try:
        return Explorer.of(current_app).reader.lines(session)[0]
    except NoSuchSession:
        abort(404, f"No session {session!r} in this log dir.")


def _caught_up(lines: SessionLines) -> Conversation:
    with lines.lock:
        conversation = Conversation.of(lines)
        conversation.update()
        return conversation


def _active(lines: SessionLines) -> bool:
    """Written to in the last minutes: its last entry is that recent (not its file's time: a
    copied tree is new on disk)."""
    moment = parse_ts(lines.last_time())
    return moment is not None and time.time() - moment.timestamp() < ACTIVE_SECONDS


class Progress:
    """Where a streamed page is: the byte and generation it was built from (for live updates)."""

    since = 0
    generation = 0


def _calls_as_read(lines: SessionLines, conversation: Conversation, progress: Progress) -> Iterator[Call]:
    """The calls in seq order, each once it is settled (or the file ends), read a few lines at a
    time so that the first ones go out while the rest are read."""
    shown = 0
    while True:
        with lines.lock:
            conversation.update(STEP)
            behind = conversation.behind
            ordered = conversation.ordered()
            progress.since, progress.generation = lines.size, lines.generation
        while shown < len(ordered) and ((ordered[shown].settled and ordered[shown].answered) or not behind):
            yield ordered[shown]
            shown += 1
        if not behind:
            return


def _buffered(pieces: Iterator[str]) -> Iterator[bytes]:
    """A template's small pieces joined into fewer, larger writes; the first goes out at once."""
    buffer: list[str] = []
    size = 0
    first = True
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if first or size >= FLUSH_BYTES:
            yield "".join(buffer).encode()
            buffer, size, first = [], 0, False
    if buffer:
        yield "".join(buffer).encode()


def totals(calls: list[Call]) -> dict:
    tokens: dict[str, int] = {}
    for call in calls:
        for kind, value in call.tokens.items():
            tokens[kind] = tokens.get(kind, 0) + value
    costs = [c.cost for c in calls if c.cost is not None]
    return {"calls": len(calls), "errors": sum(1 for c in calls if c.failed), "tokens": tokens,
            "cost": sum(costs) if costs else None, "unpriced": sum(1 for c in calls if c.answered and c.cost is None
                                                                 and c.tokens)}


def _threads(calls: list[Call]) -> list[dict]:
    seen: dict[str | None, dict] = {}
    for call in calls:
        thread = seen.setdefault(call.thread, {"name": call.thread, "agent": call.agent, "calls": 0,
                                               "first": call.seq, "fork": call.fork})
        thread["calls"] += 1
    return list(seen.values())


def register(app: Flask) -> None:

    @app.get("/session/<session>")
    def session_page(session: str):
        lines = _lines(session)
        with lines.lock:
            conversation = Conversation.of(lines)
            conversation.update(STEP)
        progress = Progress()
        template = app.jinja_env.get_template("session.html")
        shown: list[Call] = []

        def calls() -> Iterator[Call]:
            for call in _calls_as_read(lines, conversation, progress):
                shown.append(call)
                yield call

        first = conversation.calls.get(min(conversation.calls, default=0))
        context = {"session": session, "start": conversation.start, "client": first.client if first else "", "calls": calls(), "shown": shown,
                   "progress": progress, "active": _active(lines), "files": lines.files, "totals": totals,
                   "threads": _threads}
        app.update_template_context(context)
        return Response(stream_with_context(_buffered(template.generate(context))),
                        content_type="text/html; charset=utf-8")

    @app.get("/session/<session>.json")
    def session_json(session: str):
        lines = _lines(session)
        conversation = _caught_up(lines)
        calls = conversation.ordered()
        meta = conversation.start.get("_meta") if isinstance(conversation.start.get("_meta"), dict) else {}
        return jsonify({"session": session, "provider": conversation.start.get("provider"),
                        "upstream": lines.files.upstream, "machine": meta.get("machine"),
                        "client_session_id": conversation.start.get("client_session_id"),
                        "active": _active(lines), "totals": totals(calls), "since": lines.size,
                        "generation": lines.generation, "calls": [c.to_json() for c in calls]})

    @app.get("/session/<session>.jsonl")
    def session_download(session: str):
        from llmproxy.record import logtree

        lines = _lines(session)
        data = logtree.read_session(lines.files)
        return Response(data, content_type="application/x-ndjson; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{session}.jsonl"'})

    @app.get("/session/<session>/changes.json")
    def session_changes(session: str):
        since = request.args.get("since", type=int, default=0)
        generation = request.args.get("gen", type=int, default=-1)
        lines = _lines(session)
        with lines.lock:
            if generation != lines.generation:
                return jsonify({"reload": True})
            conversation = Conversation.of(lines)
            conversation.update()
            fresh = lines.lines[bisect.bisect_left(lines.lines, since, key=attrgetter("start")):]
            changed = set()
            for line in fresh:  # answered now; a tool result read earlier may now be under its call
                call = conversation.calls.get(line.seq) if line.kind == "response" else None
                if call is not None:
                    changed.add(call.seq)
                    changed |= {p.result.seq for p in call.calls if p.result is not None}
            for line in fresh:
                call = conversation.calls.get(line.seq) if line.kind == "request" else None
                if call is not None:  # new: it settles the call before it, and answers tool calls
                    changed.add(call.seq)
                    changed |= {p.answers for _, parts in call.turn for p in parts if p.answers is not None}
                    if call.before is not None:
                        changed.add(call.before)
            calls = [conversation.calls[s] for s in sorted(changed) if s in conversation.calls]
            size, generation = lines.size, lines.generation
        template = app.jinja_env.get_template("call.html")
        context = {"session": session, "active": _active(lines)}
        app.update_template_context(context)
        return jsonify({"since": size, "gen": generation, "active": context["active"],
                        "calls": [{"seq": c.seq, "html": template.render(call=c, **context)} for c in calls]})

    @app.get("/session/<session>/call/<int:seq>/raw.json")
    def call_raw(session: str, seq: int):
        lines = _lines(session)
        with lines.lock:
            request_line, response_line = lines.requests.get(seq), lines.responses.get(seq)
            if request_line is None:
                abort(404, f"No call {seq} in session {session}.")
            return jsonify({"request": lines.entry(request_line), "response": lines.entry(response_line)})

    @app.get("/session/<session>/call/<int:seq>/piece/<int:key>.txt")
    def piece_text(session: str, seq: int, key: int):
        lines = _lines(session)
        piece = _caught_up(lines).piece(seq, key)
        if piece is None:
            abort(404, f"No piece {key} in call {seq} of session {session}.")
        return Response(piece.text, content_type="text/plain; charset=utf-8")
