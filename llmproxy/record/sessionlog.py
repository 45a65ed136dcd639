"""The proxy's logger: exchanges → session, seq, fork → entries → the writer (files, Loki).

This is the :class:`~llmproxy.proxy.capture.ExchangeLogger` the proxy calls. Logging never fails a
proxied call: a log dir that becomes unwritable is reported on stderr once a minute and by
``/health`` (``"file_logging": "failing"``), and the call goes on.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any, Protocol

from llmproxy import providers
from llmproxy.common.clientids import RESPONSE_KEY, session_name
from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.proxy import decoding
from llmproxy.proxy.capture import Exchange, now_ns
from llmproxy.record.entries import Entry, EntryBuilder
from llmproxy.record.sessions import Assignment, SessionStore, message_hashes, new_session_id

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
        client_id = providers.client_session_id(route.provider, route.path, exchange.request_headers, body)
        agent = providers.agent_name(exchange.request_headers)
        hashes = message_hashes(providers.conversation(route.provider, route.path, body)) if client_id else []

        exchange.request_summary = providers.request_summary(providers.api_for(route.provider, route.path), body,
                                                             route.path)
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
        route = exchange.route
        decoded = exchange.decoded_body() if exchange.chunks is None else None
        response_id = providers.response_id(
            route.provider, route.path,
            None if exchange.chunks is None else (c.raw for c in exchange.chunks[:3] if not c.binary),
            decoded.data if decoded is not None else None)
        if response_id:  # a later previous_response_id continues this session
            try:
                self.store.remember(route.provider, route.upstream, RESPONSE_KEY + response_id,
                                    assignment.session)
            except (sqlite3.Error, OSError) as exc:
                self.health.failed(exc)

    def _write(self, entry: Entry) -> None:
        error = self.writer.write(entry)
        if error is None:
            self.health.ok()
        else:
            self.health.failed(error)
