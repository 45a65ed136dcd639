"""The fake provider's WebSocket side, and a WebSocket client for tests; frames by wsproto.

The Responses API over WebSocket, at any path ending in ``/responses`` (``/v1/responses``,
``/backend-api/codex/responses``): the client sends ``{"type": "response.create", …}`` messages,
the server answers each with the events the SSE stream carries, one JSON text message each
(:func:`fakeprovider.response_event_dicts`, steered like HTTP turns by ``fake-reply:`` lines). The upgrade takes the fake's ``x-fake-*``
headers (``x-fake-status`` for a refusal, ``x-fake-events``, ``x-fake-delay-ms``,
``x-fake-cut-after``), ``x-fake-echo: 1`` (send every message back as it came) and, as the
Realtime API does, ``x-fake-greet: 1`` (a ``session.created`` message before any request) and
``x-fake-after: 1`` (a ``rate_limits.updated`` message after each answer).
Every connection is kept in ``FakeProvider.websockets`` with the exact bytes both ways.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import generate_accept_token

IDLE_LIMIT = 120.0  # seconds a fake connection waits for a client before it gives up


@dataclass
class FakeSocket:
    """One WebSocket the fake served: what it read and wrote after the handshake, byte for byte."""

    path: str
    head: bytes = b""                  # the 101 head it wrote
    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)
    messages: list = field(default_factory=list)   # client messages, decoded (str or bytes)
    ended: str | None = None           # "close frame", "eof", "send failed", "cut"
    ended_at: float | None = None

    def end(self, how: str) -> None:
        if self.ended is None:
            self.ended, self.ended_at = how, time.monotonic()


def serve(handler) -> None:
    """Answer an upgrade request the fake provider received (``handler``: its request handler)."""
    fake = handler.server.fake
    path = handler.path.split("?")[0]
    if not path.endswith("/responses"):
        return handler._send_json(404, {"error": {"message": f"no WebSocket at {path}", "type": "not_found"}})
    status = int(handler._opt("status", "101"))
    if status != 101:
        return handler._error(status, path)
    conn_socket: socket.socket = handler.connection
    record = FakeSocket(path)
    with fake.lock:
        fake.websockets.append(record)
    extensions, accepted = [], None
    offer = handler.headers.get("Sec-WebSocket-Extensions", "")
    if "permessage-deflate" in offer:
        deflate = PerMessageDeflate()
        params = deflate.accept(next(o for o in offer.split(",") if "permessage-deflate" in o))
        extensions, accepted = [deflate], "permessage-deflate" + (f"; {params}" if params else "")
    head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {generate_accept_token(handler.headers['Sec-WebSocket-Key'].encode()).decode()}\r\n"
            + (f"Sec-WebSocket-Extensions: {accepted}\r\n" if accepted else "")
            + "x-fake-ws: 1\r\n\r\n").encode()
    record.head = head
    conn_socket.sendall(head)
    handler.close_connection = True
    _Session(handler, conn_socket, Connection(ConnectionType.SERVER, extensions), record).run()


class _Session:
    def __init__(self, handler, sock: socket.socket, ws: Connection, record: FakeSocket):
        self.handler, self.sock, self.ws, self.record = handler, sock, ws, record
        self.parts: list = []
        self.echo = handler._opt("echo") == "1"
        self.delay = float(handler._opt("delay-ms", "0")) / 1000
        self.cut = int(handler._opt("cut-after", "0"))
        from fakeprovider import WORDS

        self.words = [WORDS[i % len(WORDS)] for i in range(int(handler._opt("events", str(len(WORDS)))))]

    def run(self) -> None:
        try:
            if self.handler._opt("greet") == "1":
                self._send(Message(data=json.dumps({"type": "session.created", "session": {"id": "sess_fake"}})))
            while self.record.ended is None:
                if not self._receive(IDLE_LIMIT):
                    return
                for event in list(self.ws.events()):
                    self._on(event)
        except OSError:
            self.record.end("send failed")

    def _receive(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False once the client has gone."""
        pending = getattr(self.sock, "pending", lambda: 0)()  # TLS: decrypted, unseen by select
        ready = pending or _readable(self.sock, timeout)
        if not ready:
            self.record.end("idle")
            return False
        data = self.sock.recv(65536)
        if not data:
            self.record.end("eof")
            return False
        self.record.received += data
        self.ws.receive_data(data)
        return True

    def _send(self, event) -> None:
        data = self.ws.send(event)
        self.sock.sendall(data)
        self.record.sent += data

    def _on(self, event) -> None:
        if isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self._send(event.response())
            self.record.end("close frame")
        elif isinstance(event, (TextMessage, BytesMessage)):
            self.parts.append(event.data)
            if event.message_finished:
                message = "".join(self.parts) if isinstance(event, TextMessage) else b"".join(self.parts)
                self.parts = []
                self.record.messages.append(message)
                if self.echo:
                    self._send(Message(data=message))
                elif isinstance(message, str):
                    self._answer(json.loads(message))

    def _answer(self, request: dict) -> None:
        if request.get("type") != "response.create":
            return self._send(Message(data=json.dumps({"type": "error", "error": {
                "type": "invalid_request_error", "message": f"unknown message type {request.get('type')!r}"}})))
        from fakeprovider import response_event_dicts, scripted_answer

        answer = scripted_answer(self.record.path, request, json.dumps(request).encode(), self.words)
        events = response_event_dicts(answer.words, request.get("model", "fake-model"), f"resp_{uuid.uuid4().hex}",
                                      answer.tool, answer.ident)
        if request.get("generate") is False:  # Codex's prewarm: a response id, nothing generated
            events = [events[0], {**events[-1], "response": {**events[-1]["response"], "output": []}}]
        for i, event in enumerate(json.dumps(e) for e in events):
            if self.cut and i == self.cut:
                self.sock.shutdown(socket.SHUT_RDWR)
                self.record.end("cut")
                return
            if self.delay and not self._wait(self.delay):
                return
            self._send(Message(data=event))
        if self.handler._opt("after") == "1":
            self._send(Message(data=json.dumps({"type": "rate_limits.updated", "rate_limits": []})))

    def _wait(self, seconds: float) -> bool:
        """Pause between events, noticing at once a client that has gone."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if _readable(self.sock, left) and not self._receive(0):
                return False
        return True


def _readable(sock: socket.socket, timeout: float) -> bool:
    """poll, not select: a test holding hundreds of WebSockets has descriptors above 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


class WsClient:
    """A WebSocket client on a raw socket that keeps every byte it sent and received."""

    def __init__(self, port: int, path: str, headers: list[tuple[str, str]] = (), deflate: bool = False,
                 timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sent = bytearray()        # after the handshake
        self.received = bytearray()    # after the answer's head
        self.head = b""
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""                # of a refusal
        self.inbox: list = []
        self._parts: list = []
        self.closed = False
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target=path, extra_headers=list(headers),
                                               extensions=[PerMessageDeflate()] if deflate else [])))
        raw = bytearray()
        while self.status is None or (self.status != 101 and not self.closed):
            data = self.sock.recv(65536)
            if not data and self.status is None:
                raise ConnectionError(f"closed before any answer: {bytes(raw)!r}")
            self.closed = self.closed or not data
            raw += data
            self.ws.receive_data(data or None)
            self._drain()
        end = raw.find(b"\r\n\r\n") + 4
        self.head, self.received = bytes(raw[:end]), bytearray(raw[end:])

    def _drain(self) -> None:
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.status, self.headers = 101, event.extra_headers
            elif isinstance(event, RejectConnection):
                self.status, self.headers = event.status_code, event.headers
                self.closed = not event.has_body
            elif isinstance(event, RejectData):
                self.body += event.data
                self.closed = self.closed or event.body_finished
            elif isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(event.data)
                if event.message_finished:
                    joined = "".join(self._parts) if isinstance(event, TextMessage) else b"".join(self._parts)
                    self.inbox.append(joined)
                    self._parts = []
            elif isinstance(event, CloseConnection):
                self.closed = True

    def send(self, message: str | bytes | dict) -> None:
        if isinstance(message, dict):
            message = json.dumps(message)
        data = self.ws.send(Message(data=message))
        self.sock.sendall(data)
        self.sent += data

    def receive(self, timeout: float = 10.0):
        """The next whole message; raise TimeoutError if none comes in time."""
        deadline = time.monotonic() + timeout
        while not self.inbox:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise TimeoutError(f"no message within {timeout}s (closed: {self.closed})")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
                continue
            self.received += data
            self.ws.receive_data(data)
            self._drain()
        return self.inbox.pop(0)

    def events_until(self, final: str = "response.completed", timeout: float = 10.0) -> list[dict]:
        events = []
        while not events or events[-1]["type"] != final:
            events.append(json.loads(self.receive(timeout)))
        return events

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Read until the proxy closes the connection; True if it did within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.received += data
        return False

    def abort(self) -> None:
        """Close TCP without a close frame, as the Codex CLI does."""
        self.sock.close()

    def close(self) -> None:
        """A close frame, the answer, then TCP."""
        data = self.ws.send(CloseConnection(code=1000))
        self.sock.sendall(data)
        self.sent += data
        self.wait_closed()
        self.sock.close()


def open_many(port: int, path: str, count: int, headers=()) -> list[WsClient]:
    """``count`` open WebSockets (opened in parallel, as many clients would)."""
    clients: list[WsClient] = []
    lock = threading.Lock()

    def one():
        client = WsClient(port, path, headers)
        with lock:
            clients.append(client)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return clients
