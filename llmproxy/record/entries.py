"""Log entries: what goes on one JSONL line, serialised once.

Field names follow the predecessor Go llm-proxy so existing tools keep working. The serialised
line (bytes, no newline) is what the file gets and what the Loki exporter ships.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from llmproxy import pricing, providers
from llmproxy.common.masking import mask_headers, mask_query
from llmproxy.proxy.capture import Chunk, Exchange
from llmproxy.providers.clients import client_of
from llmproxy.proxy.decoding import Decoded
from llmproxy.record.sessions import FORK_REASON, Assignment, session_date


@dataclass(frozen=True)
class Entry:
    """One serialised log line and what it is filed and labelled under."""

    type: str           # session_start | request | response | fork
    provider: str       # anthropic | openai | chatgpt
    upstream: str
    session: str
    ts_ns: int
    line: bytes
    path: str           # the session file, relative to the log dir
    # Loki structured metadata: ids and what a query groups by, without parsing the line
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return len(self.line)


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ns(ts_ns: int) -> str:
    """``2026-11-28T10:15:00.123456789Z``."""
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    return f"{_second(seconds)}.{nanos:09d}Z"


def session_file(upstream: str, session: str) -> str:
    return f"{upstream}/{session_date(session)}/{session}.jsonl"


def _dumps(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def body_fields(decoded: Decoded) -> dict:
    """``body`` as text, or base64 with ``body_encoding`` when it is not UTF-8; and why it is not
    decoded (``body_decode_error``) or cut at the decoding cap (``body_truncated``)."""
    try:
        fields = {"body": decoded.data.decode("utf-8")}
    except UnicodeDecodeError:
        fields = _base64_fields(decoded.data)
    if decoded.error:
        fields["body_decode_error"] = decoded.error
    if decoded.truncated:
        fields["body_truncated"] = True
    return fields


def _base64_fields(data: bytes) -> dict:
    return {"body": base64.b64encode(data).decode("ascii"), "body_encoding": "base64"}


def _transport(exchange: Exchange) -> dict:
    return {"transport": exchange.transport} if exchange.transport != "http" else {}


def _chunk_fields(chunk: Chunk) -> dict:
    fields = {"ts": rfc3339_ns(chunk.ts_ns), "delta_ms": chunk.delta_ms}
    if chunk.binary:
        fields.update(raw=base64.b64encode(chunk.raw).decode("ascii"), encoding="base64")
    else:
        fields["raw"] = chunk.raw.decode("utf-8", "replace")
    return fields


class EntryBuilder:
    """Turns exchanges into entries for one machine."""

    def __init__(self, machine: str):
        self.machine = machine

    def _entry(self, kind: str, exchange: Exchange, assignment: Assignment, ts_ns: int, fields: dict,
               request_id: bool = True, serialized: bytes = b"", model: str | None = None) -> Entry:
        """One entry; ``serialized`` is JSON member text made earlier, placed after ``fields``."""
        meta = {"ts": rfc3339_ns(ts_ns), "machine": self.machine, "host": assignment.upstream,
                "session": assignment.session}
        if request_id:
            meta["request_id"] = exchange.request_id
        if assignment.client_id:
            meta["client_session_id"] = assignment.client_id
        if assignment.agent:
            meta["agent"] = assignment.agent
        if assignment.thread and request_id:
            meta["thread"] = assignment.thread
        head = _dumps({"type": kind, **fields})[:-1]
        line = b"%s,%s%s\"_meta\":%s}" % (head, serialized, b"," if serialized else b"", _dumps(meta))
        metadata = entry_metadata(assignment.session, meta.get("request_id"), assignment.client_id, model,
                                  fields.get("status"))
        return Entry(kind, exchange.route.provider, assignment.upstream, assignment.session, ts_ns,
                     line, session_file(assignment.upstream, assignment.session), metadata)

    def request_fields(self, exchange: Exchange, decoded: Decoded) -> bytes:
        """The request's own fields, serialised once and before its session is known, so the
        work (a Claude Code body is megabytes) is not done inside the sessions.db lock.
        ``decoded`` is the request body decoded for the log; ``size`` counts the bytes as sent.
        ``exchange.request_summary`` (model, stream…) goes before the headers and body."""
        body = (_base64_fields(exchange.request_body) if exchange.request_binary
                else body_fields(decoded))
        fields = {"method": exchange.method, "path": mask_query(exchange.path), **exchange.request_summary,
                  "headers": mask_headers(exchange.request_headers), **body,
                  "size": len(exchange.request_body), **_transport(exchange)}
        return _dumps(fields)[1:-1]

    def request_entries(self, exchange: Exchange, assignment: Assignment, fields: bytes) -> list[Entry]:
        """session_start and fork (when due), then the request. Timestamps keep that order."""
        ts = exchange.started_ns
        entries = []
        if assignment.started_session:
            start = {"provider": exchange.route.provider, "upstream": assignment.upstream}
            if assignment.client_id:
                start["client_session_id"] = assignment.client_id
            entries.append(self._entry("session_start", exchange, assignment, ts - 2, start, request_id=False))
        if assignment.fork:
            # The branch stays in its session: parent_session is that session (the field keeps
            # the predecessor's shape), thread names the new branch.
            fork = {"from_seq": assignment.fork.from_seq, "parent_session": assignment.session,
                    "reason": FORK_REASON, "from_thread": assignment.fork.from_thread,
                    "thread": assignment.thread}
            entries.append(self._entry("fork", exchange, assignment, ts - 1, fork))
        entries.append(self._entry("request", exchange, assignment, ts, {"seq": assignment.seq},
                                   serialized=fields, model=exchange.request_summary.get("model")))
        return entries

    def response_entry(self, exchange: Exchange, assignment: Assignment, ts_ns: int) -> Entry:
        """The answer, with its summary (model, stop_reason, usage, tool_calls) read from its body or
        events, its ``tokens`` and ``cost``, and the ``client`` that asked. Built after the last
        byte went to the client (see app.py), never on the way."""
        api = providers.api_for(exchange.route.provider, exchange.route.path)
        content: dict = _transport(exchange)
        summary: dict = {}
        if exchange.chunks is not None:
            content["chunks"] = [_chunk_fields(c) for c in exchange.chunks]
            summary = providers.stream_summary(api, (c.raw for c in exchange.chunks if not c.binary))
        decoded = exchange.decoded_body()
        if decoded is not None:
            content.update(body_fields(decoded))
            if not summary:
                summary = providers.response_summary(api, decoded.data)
        if exchange.stream_truncated:
            content["body_truncated"] = True
        timing = {"ttfb_ms": exchange.ttfb_ms, "total_ms": exchange.total_ms}
        if exchange.upstream_ms is not None:
            timing["upstream_ms"] = exchange.upstream_ms
        if exchange.proxy_ms is not None:
            timing["proxy_ms"] = exchange.proxy_ms
        # The answer's model, else the one asked for (an error answer names none): what the call
        # is filed and priced under, in the line as in the structured metadata.
        model = summary.get("model") or exchange.request_summary.get("model")
        fields: dict = {"seq": assignment.seq, "status": exchange.status, **({"model": model} if model else {}),
                        **summary,
                        **cost_fields(api, summary.get("usage"), model, assignment.upstream, exchange.started_ns),
                        "client": client_of(exchange.request_headers),
                        "headers": mask_headers(exchange.response_headers), "timing": timing,
                        "size": exchange.size, **content}
        if exchange.error:
            fields["error"] = exchange.error
        if exchange.incomplete:
            fields["incomplete"] = True
        return self._entry("response", exchange, assignment, ts_ns, fields, model=model)


def cost_fields(api, usage, model: str | None, upstream: str, started_ns: int) -> dict:
    """``tokens`` (the usage under names every API shares) and ``cost`` (when the price data
    knows the model), for an answer with usage."""
    counts, cost = pricing.priced(api, usage, model, upstream, started_ns / 1e9)
    out: dict = {}
    if counts is not None:
        out["tokens"] = counts.fields()
    if cost is not None:
        out["cost"] = cost.fields()
    return out


METADATA_KEYS = ("session_id", "request_id", "client_session_id", "model", "status")


def entry_metadata(session: str, request_id: str | None, client_session_id: str | None, model: str | None,
                   status: int | None) -> tuple[tuple[str, str], ...]:
    """Loki structured metadata of an entry: what is known of :data:`METADATA_KEYS`, as strings.
    The backfill derives the same from the file lines."""
    values = (session, request_id, client_session_id, model, None if status is None else str(status))
    return tuple((k, v) for k, v in zip(METADATA_KEYS, values) if v)
