"""The proxy's logger: exchanges → session, seq, fork → entries → the writer (files, Loki).

This is the :class:`~llmproxy.capture.ExchangeLogger` the proxy calls. Logging never fails a
proxied call: a log dir that becomes unwritable is reported on stderr once a minute and by
``/health`` (``"file_logging": "failing"``), and the call goes on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any, Protocol

from llmproxy import providers
from llmproxy.capture import Exchange, now_ns
from llmproxy import decoding
from llmproxy.clientids import RESPONSE_KEY, agent_name, client_session_id, session_name
from llmproxy.entries import Entry, EntryBuilder
from llmproxy.ratelimit import RateLimitedLog
from llmproxy.sessions import Assignment, SessionStore, conversation_messages, message_hashes, new_session_id

log = logging.getLogger("llmproxy.sessionlog")

ERROR_LOG_INTERVAL = 60.0


class Writer(Protocol):
    def write(self, entry: Entry) -> OSError | None: ...


class FileHealth:
    """Whether file logging works, with stderr lines about it at most once a minute."""

    def __init__(self, interval: float = ERROR_LOG_INTERVAL):
        self.failing = False
        self.last_error: str | None = None
        self._errors = RateLimitedLog(log, logging.ERROR, interval)

    def ok(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("file logging works again")

    def failed(self, error: BaseException) -> None:
        self.failing = True
        self.last_error = str(error)
        self._errors.log("file logging failed: %s; proxied calls go on", error)

    @property
    def status(self) -> str:
        return "failing" if self.failing else "ok"


def _json_body(data: bytes) -> Any:
    if not data or data[:1] not in (b"{", b"[", b" ", b"\n", b"\r", b"\t"):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _response_id(exchange: Exchange) -> str | None:
    """The id of a Responses API answer (JSON or SSE), for a later ``previous_response_id``."""
    if exchange.chunks is not None:
        for chunk in exchange.chunks[:3]:
            # A WebSocket message is the event's JSON itself, an SSE event has it in data: lines.
            lines = [b"data:" + chunk.raw] if exchange.transport == "websocket" else chunk.raw.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    doc = _json_body(line[5:].strip())
                    response = doc.get("response") if isinstance(doc, dict) else None
                    if isinstance(response, dict) and isinstance(response.get("id"), str):
                        return response["id"]
        return None
    decoded = exchange.decoded_body()
    doc = _json_body(decoded.data) if decoded is not None else None
    return doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None


class SessionLog:
    """Logs exchanges: assigns sessions and seq, writes entries through ``writer``."""

    def __init__(self, store: SessionStore, writer: Writer, builder: EntryBuilder,
                 health: FileHealth | None = None):
        self.store = store
        self.writer = writer
        self.builder = builder
        self.health = health or FileHealth()

    def log_request(self, exchange: Exchange) -> None:
        route = exchange.route
        # Codex may send its request zstd-encoded: the session id and messages are inside.
        decoded = decoding.decode(exchange.request_body, exchange.request_header("content-encoding"))
        body = _json_body(decoded.data)
        client_id = client_session_id(route.provider, route.path, exchange.request_headers, body)
        agent = agent_name(exchange.request_headers)
        hashes = message_hashes(conversation_messages(route.provider, body)) if client_id else []

        exchange.request_summary = providers.request_summary(providers.api_for(route.provider, route.path), body)
        fields = self.builder.request_fields(exchange, decoded)

        def write_request(assignment: Assignment) -> None:
            for entry in self.builder.request_entries(exchange, assignment, fields):
                self._write(entry)

        try:
            assignment = self.store.assign(route.provider, route.upstream, client_id, agent, hashes,
                                           exchange.started_ns, write_request)
        except (sqlite3.Error, OSError) as exc:
            # sessions.db is unusable: the exchange is still logged, as a session of its own.
            self.health.failed(exc)
            assignment = Assignment(session=new_session_id(exchange.started_ns), seq=1,
                                    upstream=route.upstream, started_session=True, agent=agent,
                                    client_id=session_name(client_id))
            write_request(assignment)
        exchange.state = assignment

    def log_response(self, exchange: Exchange) -> None:
        assignment = exchange.state
        if not isinstance(assignment, Assignment):
            return
        self._write(self.builder.response_entry(exchange, assignment, now_ns()))
        if exchange.route.provider != "anthropic" and exchange.route.path.endswith("/responses"):
            response_id = _response_id(exchange)
            if response_id:
                try:
                    self.store.remember(exchange.route.provider, exchange.route.upstream,
                                        RESPONSE_KEY + response_id, assignment.session)
                except (sqlite3.Error, OSError) as exc:
                    self.health.failed(exc)

    def _write(self, entry: Entry) -> None:
        error = self.writer.write(entry)
        if error is None:
            self.health.ok()
        else:
            self.health.failed(error)
