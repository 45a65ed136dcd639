"""The proxy's logger: exchanges → session, seq, fork → entries → the writer (files, Loki).

This is the :class:`~llmproxy.proxy.capture.ExchangeLogger` the proxy calls. Logging never fails a
proxied call: a log dir that becomes unwritable (or full) is reported on stderr once a minute and
by ``/health`` (``"file_logging": "failing"`` and the reason), the entries still go to Loki, and
the call goes on; the next line that can be written says so.

A worker may be killed at any instant of this (``kill -9``, the OOM killer): the steps are
ordered so that a session file never gets a seq twice, a client session never gets two files,
and Loki gets every line the files keep (:mod:`llmproxy.record.journal`,
:mod:`llmproxy.record.multiwriter`). The ``crash_point`` calls name those instants for the
fault-injection test (tests/test_crashes.py); they do nothing otherwise.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import sqlite3
from typing import Any, Protocol

from llmproxy import providers
from llmproxy.common.clientids import RESPONSE_KEY, session_name
from llmproxy.common.faults import crash_point
from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.proxy import decoding
from llmproxy.proxy.capture import Exchange, now_ns
from llmproxy.record.entries import Entry, EntryBuilder
from llmproxy.record.journal import Intent
from llmproxy.record.multiwriter import Staged
from llmproxy.record.sessions import Assignment, SessionStore, message_hashes, new_session_id

log = logging.getLogger("llmproxy.sessionlog")

ERROR_LOG_INTERVAL = 60.0


class Writer(Protocol):
    """The :class:`~llmproxy.record.multiwriter.MultiWriter`'s steps."""

    def stage(self, entries: list[Entry]) -> Staged: ...
    def append(self, staged: Staged, before=None) -> OSError | None: ...
    def export(self, staged: Staged) -> None: ...
    def cancel(self, staged: Staged) -> None: ...


class FileHealth:
    """Whether file logging works, with stderr lines about it at most once a minute.

    With ``shared`` (a small file on tmpfs, where gunicorn's workers keep their metrics, never in
    the log dir: a full disk there must not keep a worker from saying so) the state is the
    server's: the last line any worker wrote or failed to write decides, so ``/health`` says the
    same whichever worker answers it.
    """

    SIZE = 4096

    def __init__(self, interval: float = ERROR_LOG_INTERVAL, shared: str | None = None):
        self._failing = False
        self._error: str | None = None
        self._errors = RateLimitedLog(log, logging.ERROR, interval)
        self._shared: mmap.mmap | None = None
        if shared:
            try:
                fd = os.open(shared, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    if os.fstat(fd).st_size < self.SIZE:
                        os.ftruncate(fd, self.SIZE)
                    self._shared = mmap.mmap(fd, self.SIZE)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("file logging health is per worker (%s: %s)", shared, exc)

    @property
    def failing(self) -> bool:
        return self._shared[0] == 1 if self._shared is not None else self._failing

    @property
    def last_error(self) -> str | None:
        if self._shared is None:
            return self._error
        text = self._shared[1:].split(b"\0", 1)[0]
        return text.decode("utf-8", "replace") or None

    def ok(self) -> None:
        if self.failing:
            if self._shared is not None:
                self._shared[0] = 0
            self._failing = False
            log.warning("file logging works again")

    def failed(self, error: BaseException) -> None:
        self._failing, self._error = True, str(error)
        if self._shared is not None:
            text = self._error.encode("utf-8", "replace")[: self.SIZE - 2]
            self._shared[1:len(text) + 2] = text + b"\0"
            self._shared[0] = 1
        self._errors.log("file logging failed: %s; proxied calls go on (and their entries to Loki)", error)

    def wrote(self, error: OSError | None) -> None:
        if error is None:
            self.ok()
        else:
            self.failed(error)

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

        staged: list[Staged] = []

        def write_request(assignment: Assignment) -> None:
            # Inside the sessions.db transaction: noted for Loki, noted on the lock's pad, written.
            crash_point("request_assigned")
            lines = self.writer.stage(self.builder.request_entries(exchange, assignment, fields))
            staged.append(lines)

            def note(offset: int = 0, device: int = 0, inode: int = 0) -> None:
                self.store.intend(Intent(lines.entries[0].path, offset, device, inode, assignment.session,
                                         assignment.seq, assignment.started_session, exchange.request_id))
                crash_point("request_noted")

            if assignment.started_session:  # noted before the file exists: even an empty one goes
                note()
            self.health.wrote(self.writer.append(lines, None if assignment.started_session else note))
            crash_point("request_written")

        try:
            assignment = self.store.assign(route.provider, route.upstream, client_id, agent, hashes,
                                           exchange.started_ns, write_request)
        except BaseException as exc:
            for lines in staged:  # not committed: taken out of the file, not for Loki either
                self.writer.cancel(lines)
            if not isinstance(exc, (sqlite3.Error, OSError)):
                raise
            # sessions.db is unusable: the exchange is still logged, as a session of its own.
            self.health.failed(exc)
            assignment = Assignment(session=new_session_id(exchange.started_ns), seq=1,
                                    upstream=route.upstream, started_session=True, agent=agent,
                                    client_id=session_name(client_id))
            self._write(self.builder.request_entries(exchange, assignment, fields), "fallback")
        else:
            crash_point("request_cleared")
            self.writer.export(staged[-1])
            crash_point("request_queued")
        exchange.state = assignment

    def log_response(self, exchange: Exchange) -> None:
        assignment = exchange.state
        if not isinstance(assignment, Assignment):
            return
        entry = self.builder.response_entry(exchange, assignment, now_ns())
        route = exchange.route
        decoded = exchange.decoded_body() if exchange.chunks is None else None
        response_id = providers.response_id(
            route.provider, route.path,
            None if exchange.chunks is None else (c.raw for c in exchange.chunks[:3] if not c.binary),
            decoded.data if decoded is not None else None)
        if response_id:  # a later previous_response_id continues this session
            # Before the line: a file that shows the answer always has its id mapped.
            try:
                self.store.remember(route.provider, route.upstream, RESPONSE_KEY + response_id,
                                    assignment.session)
            except (sqlite3.Error, OSError) as exc:
                self.health.failed(exc)
        self._write([entry], "response")

    def _write(self, entries: list[Entry], kind: str) -> None:
        lines = self.writer.stage(entries)
        crash_point(f"{kind}_noted")
        self.health.wrote(self.writer.append(lines))
        crash_point(f"{kind}_written")
        self.writer.export(lines)
        crash_point(f"{kind}_queued")
