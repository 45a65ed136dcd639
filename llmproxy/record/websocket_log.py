"""What a relayed WebSocket becomes in the session log: one exchange per client message.

Each client message (a Responses API ``response.create``) is a ``request`` entry; the server's
messages that answer it are the ``chunks`` of its ``response`` entry, which is written when the
answer ends (``response.completed``, ``.failed``, ``.incomplete``, ``.done``, ``error``) or the
connection does (then ``incomplete``). Frames are parsed with wsproto, ``permessage-deflate``
undone as negotiated, in one logging thread per worker: the relay thread only hands bytes over,
and stops reading a connection whose bytes pile up there (:meth:`Conversation.behind`).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate

from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.proxy.capture import Exchange, ExchangeLogger
from llmproxy.proxy.routing import Route

log = logging.getLogger("llmproxy.websocket")
_failures = RateLimitedLog(log, logging.ERROR, 60.0)

# Relayed bytes of one WebSocket waiting for the logging thread (a slow disk) beyond which the
# relay stops reading that connection until the log catches up (websocket.Tap.behind).
BACKLOG_LIMIT = 4 * 1024 * 1024

FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete",
                          "response.done", "error"})


class MessageLog:
    """The worker's WebSocket logging thread, started on first use."""

    def __init__(self, logger: ExchangeLogger):
        self.logger = logger
        self._executor: ThreadPoolExecutor | None = None

    def conversation(self, route: Route, path: str, request_headers: list[tuple[str, str]],
                     status: int, response_headers: list[tuple[str, str]]) -> "Conversation":
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmproxy-ws-log")
        return Conversation(self, route, path, request_headers, status, response_headers)

    def submit(self, function, *args) -> None:
        try:
            self._executor.submit(_safely, function, *args)
        except RuntimeError:  # shut down: the worker is exiting
            pass

    def close(self) -> None:
        """Write everything handed over so far (call after the relays are closed)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def _safely(function, *args) -> None:
    try:
        function(*args)
    except Exception as exc:  # logging never fails a relay, not even through a bug of its own
        _failures.log("logging a WebSocket message failed: %r", exc)


def _deflate(extensions_header: str) -> PerMessageDeflate | None:
    """permessage-deflate as the upstream accepted it in ``Sec-WebSocket-Extensions``."""
    for offer in extensions_header.split(","):
        if offer.split(";")[0].strip().lower() == PerMessageDeflate.name:
            extension = PerMessageDeflate()
            extension.finalize(offer.strip())
            return extension
    return None


class Conversation:
    """One relayed WebSocket, seen from the log. A :class:`llmproxy.proxy.websocket.Tap`."""

    def __init__(self, owner: MessageLog, route: Route, path: str,
                 request_headers: list[tuple[str, str]], status: int,
                 response_headers: list[tuple[str, str]]):
        self.owner = owner
        self.route = route
        self.path = path
        self.request_headers = request_headers
        self.status = status
        self.response_headers = response_headers
        extensions = ", ".join(v for n, v in response_headers if n.lower() == "sec-websocket-extensions")
        # Client frames are parsed as their server would, upstream frames as their client would.
        self._parsers = {
            "client": Connection(ConnectionType.SERVER, _list(_deflate(extensions))),
            "upstream": Connection(ConnectionType.CLIENT, _list(_deflate(extensions))),
        }
        self._parts: dict[str, list] = {"client": [], "upstream": []}
        self._stopped: dict[str, str] = {}        # direction → why its frames are no longer read
        # requests whose answer is still coming, each with whether it answers a request (a
        # follow-up of the server's after an answer ended cuts nothing when the socket closes)
        self._pending: deque[tuple[Exchange, bool]] = deque()
        self._last: tuple[object, str] | None = None  # the last request's (session state, request_id)
        self._early: list[tuple[bytes, int, float, bool]] = []  # server messages before any request
        # bytes handed to the logging thread (counted by the relay thread) and parsed there (by
        # the logging thread): one writer each, so no lock
        self._handed = 0
        self._fed = 0

    # Tap: called in the relay thread; the work is done in the logging thread.
    def data(self, source: str, data: bytes, ts_ns: int, at: float) -> None:
        self._handed += len(data)
        self.owner.submit(self._feed, source, data, ts_ns, at)

    def closed(self, reason: str, at: float) -> None:
        self.owner.submit(self._close, reason, at)

    def behind(self) -> bool:
        return self._handed - self._fed > BACKLOG_LIMIT

    def _feed(self, source: str, data: bytes, ts_ns: int, at: float) -> None:
        try:
            self._parse(source, data, ts_ns, at)
        finally:
            self._fed += len(data)

    def _parse(self, source: str, data: bytes, ts_ns: int, at: float) -> None:
        if source in self._stopped:
            return
        parser = self._parsers[source]
        try:
            parser.receive_data(data)
            for event in parser.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    self._parts[source].append(event.data)
                    if event.message_finished:
                        self._message(source, self._parts[source], ts_ns, at)
                        self._parts[source] = []
                elif isinstance(event, CloseConnection):
                    if parser.state is ConnectionState.OPEN:  # wsproto's verdict on bytes it cannot parse
                        raise ValueError(f"{event.reason} (close code {event.code})")
                    self._stopped[source] = f"{source} sent close frame {event.code}"
        except Exception as exc:  # the relay goes on; only the log stops reading this direction
            self._stopped[source] = f"cannot parse {source} frames: {exc}"
            log.warning("%s: %s; the bytes are still relayed", self.route.upstream, self._stopped[source])

    def _message(self, source: str, parts: list, ts_ns: int, at: float) -> None:
        binary = not isinstance(parts[0], str)
        raw = b"".join(parts) if binary else "".join(parts).encode("utf-8")
        if source == "client":
            self._request(raw, binary, ts_ns, at)
        else:
            self._event(raw, binary, ts_ns, at)

    def _exchange(self, body: bytes, binary: bool, ts_ns: int, at: float) -> Exchange:
        exchange = Exchange(route=self.route, method="GET", path=self.path,
                            request_headers=self.request_headers, request_body=body,
                            started_ns=ts_ns, started=at, transport="websocket", request_binary=binary)
        exchange.status = self.status
        exchange.response_headers = self.response_headers
        exchange.chunks = []
        return exchange

    def _request(self, raw: bytes, binary: bool, ts_ns: int, at: float) -> None:
        exchange = self._exchange(raw, binary, ts_ns, at)
        self.owner.logger.log_request(exchange)
        exchange.request_body = b""  # logged; a long conversation need not keep every message
        for early, early_ns, _, early_binary in self._early:  # before the request: no delay to show
            exchange.got_message(early, early_ns, at, early_binary)
        self._early.clear()
        self._pending.append((exchange, True))
        self._last = exchange.state, exchange.request_id

    def _event(self, raw: bytes, binary: bool, ts_ns: int, at: float) -> None:
        if not self._pending:
            if self._last is None:
                self._early.append((raw, ts_ns, at, binary))
                return
            # More from the server after the last answer ended: a response entry of its own,
            # under the same request.
            follow_up = self._exchange(b"", False, ts_ns, at)
            follow_up.state, follow_up.request_id = self._last
            self._pending.append((follow_up, False))
        exchange = self._pending[0][0]
        exchange.got_message(raw, ts_ns, at, binary)
        if not binary and _event_type(raw) in FINAL_EVENTS:
            self._pending.popleft()
            exchange.finish(at=at)
            self.owner.logger.log_response(exchange)

    def _close(self, reason: str, at: float) -> None:
        why = next(iter(self._stopped.values()), reason)
        while self._pending:
            exchange, cut = self._pending.popleft()
            exchange.finish(f"WebSocket closed before the answer ended: {why}" if cut else None, at=at)
            self.owner.logger.log_response(exchange)


def _list(extension: PerMessageDeflate | None) -> list:
    return [extension] if extension else []


def _event_type(raw: bytes) -> str | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc.get("type") if isinstance(doc, dict) else None
