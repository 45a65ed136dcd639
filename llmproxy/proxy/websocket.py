"""WebSocket pass-through: the upstream handshake, taking the client's connection over from
gunicorn, and one relay thread per worker that moves the bytes of every open WebSocket.

The bytes are never re-framed: what one side sends, the other receives, byte for byte. Parsing
the frames for the session log is :mod:`llmproxy.record.websocket_log`'s business, in a thread of its
own, so that logging never holds up a byte.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol
from urllib.parse import urlsplit

import h11
import requests.certs

from llmproxy.common.errors import UpstreamTimeout, UpstreamUnreachable, WebSocketUnsupported
from llmproxy.proxy.capture import Exchange, now_ns
from llmproxy.proxy.routing import Route

log = logging.getLogger("llmproxy.websocket")

READ_SIZE = 64 * 1024
# Bytes waiting for a slow reader; beyond this the other side is not read until they drain.
BUFFER_LIMIT = 1024 * 1024
# After one side closed, how long bytes it sent before closing may take to reach the other.
CLOSE_FLUSH_SECONDS = 2.0
# How often a relay held back for its log (Tap.behind) looks whether the log has caught up.
LOG_CATCH_UP_POLL = 0.05
_RETRY = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def is_upgrade(environ: dict) -> bool:
    """A WebSocket opening handshake, decided as Werkzeug's router decides it."""
    connection = {t.strip(" \t").lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    return "upgrade" in connection and environ.get("HTTP_UPGRADE", "").lower() == "websocket"


def handshake_headers(environ: dict, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers for the upstream handshake: the forwarded ones (``Sec-WebSocket-*``,
    auth, the client's own) plus the two hop-by-hop ones a handshake is made of."""
    return [("Connection", "Upgrade"), ("Upgrade", environ["HTTP_UPGRADE"]), *headers]


# -- the client's side: taking the connection over from gunicorn -------------------------------

def check_can_take_over(environ: dict) -> None:
    """Raise :class:`WebSocketUnsupported` unless the client connection can be taken over.

    gunicorn puts its client socket in ``environ["gunicorn.socket"]`` (flask-sock and
    simple-websocket rely on the same); a TLS-wrapped one cannot be handed over by fd.
    """
    if type(environ.get("gunicorn.socket")) is not socket.socket:
        raise WebSocketUnsupported("WebSocket pass-through needs gunicorn serving plain HTTP "
                                   "(gthread worker); this server cannot hand over its connection")


def take_over(environ: dict) -> socket.socket:
    """Take the client's connection from gunicorn: a socket of ours on the same connection.

    flask-sock runs the whole WebSocket inside the request and then ends it by raising
    StopIteration, so gunicorn writes nothing and closes the connection. Here the request ends
    right after the handshake, with the WebSocket still open, and gunicorn 27's gthread worker
    closes a finished connection "gracefully": shutdown (a FIN to the client), then reading up
    to 64 KiB for 2 s, which would cut the WebSocket and swallow its first frames. So gunicorn's
    file descriptor is pointed at a fresh, unconnected socket (dup2): gunicorn writes its answer
    into that (EPIPE, which it takes as a client that left, after writing the access-log line),
    its shutdown fails harmlessly, it closes it, and never reuses it. The connection stays ours.
    """
    theirs: socket.socket = environ["gunicorn.socket"]
    ours = theirs.dup()
    placeholder = socket.socket(theirs.family, socket.SOCK_STREAM)
    try:
        os.dup2(placeholder.fileno(), theirs.fileno(), inheritable=False)
    finally:
        placeholder.close()
    ours.setblocking(True)
    return ours


# -- the upstream's side: the handshake ---------------------------------------------------------

@dataclass
class Handshake:
    """The upstream's answer to the opening handshake."""

    upstream: str
    sock: socket.socket
    status: int
    headers: list[tuple[str, str]]   # as received, names as the upstream spelled them
    head: bytes                      # the raw response head, relayed to the client as it came
    early: bytes                     # bytes after a 101 head (frames the upstream sent at once)
    conn: h11.Connection             # reads the body of an answer that is not a 101


def open_handshake(route: Route, target: str, headers: list[tuple[str, str]],
                   connect_timeout: float, read_timeout: float) -> Handshake:
    """Connect (TLS for non-loopback upstreams), send the handshake, read the answer's head."""
    parts = urlsplit(route.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        sock = socket.create_connection((route.host, port), timeout=connect_timeout)
    except socket.timeout:
        raise UpstreamTimeout(f"connecting to {route.upstream} timed out after {connect_timeout:g}s") from None
    except OSError as exc:
        raise UpstreamUnreachable(f"cannot reach {route.upstream}: {exc.strerror or exc}") from None
    try:
        if parts.scheme == "https":
            sock = _tls_context().wrap_socket(sock, server_hostname=route.host)
        sock.settimeout(read_timeout)
        conn = h11.Connection(h11.CLIENT)
        sock.sendall(conn.send(h11.Request(method="GET", target=target,
                                           headers=[("Host", route.upstream), *headers])))
        received = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(READ_SIZE)
                received += data
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue  # 100, 103: nothing to act on; the client gets them with the head
            elif isinstance(event, (h11.InformationalResponse, h11.Response)):
                break
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
        early = conn.trailing_data[0] if event.status_code == 101 else b""
        return Handshake(route.upstream, sock, event.status_code,
                         [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()],
                         bytes(received[:len(received) - len(early)]), bytes(early), conn)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, socket.timeout):
            raise UpstreamTimeout(f"{route.upstream} sent no response within {read_timeout:g}s") from None
        if isinstance(exc, ssl.SSLError):
            raise UpstreamUnreachable(f"TLS error talking to {route.upstream}: {exc}") from None
        if isinstance(exc, (OSError, h11.ProtocolError)):
            raise UpstreamUnreachable(f"WebSocket handshake with {route.upstream} failed: {exc}") from None
        raise


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """Verified TLS with the CA bundle the HTTP path (requests) uses; HTTP/1.1 only, since a
    WebSocket is an HTTP/1.1 upgrade. One per worker: loading the bundle takes milliseconds."""
    context = ssl.create_default_context(cafile=requests.certs.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


def answer_body(handshake: Handshake, exchange: Exchange | None) -> Iterator[bytes]:
    """The body of an answer that is not a 101 (401, 426…), as it arrives, for the client to fall
    back on. Like :func:`llmproxy.proxy.forwarding.relay`: an upstream that breaks off cuts the client."""
    error = None
    try:
        while True:
            event = handshake.conn.next_event()
            if event is h11.NEED_DATA:
                handshake.conn.receive_data(handshake.sock.recv(READ_SIZE))
            elif isinstance(event, h11.Data):
                if exchange is not None:
                    exchange.got_data(event.data)
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return
    except GeneratorExit:
        error = "client disconnected"
        raise
    except (OSError, h11.ProtocolError) as exc:
        error = f"upstream stream broke off: {exc}"
        log.warning("%s: %s", handshake.upstream, error)
        raise ConnectionResetError(errno.ECONNRESET, error) from None
    finally:
        handshake.sock.close()
        if exchange is not None:
            exchange.finish(error)


# -- the relay ----------------------------------------------------------------------------------

class Tap(Protocol):
    """Sees what a relay moves; called in the relay thread, so it must return at once."""

    def data(self, source: str, data: bytes, ts_ns: int, at: float) -> None: ...

    def closed(self, reason: str, at: float) -> None: ...

    def behind(self) -> bool:
        """Whether too much of this connection waits for the log: the relay then reads neither
        side (as for a slow reader) until it has caught up, so memory stays bounded and
        nothing is dropped."""


class _Side:
    """One of a relay's two connections, and the bytes waiting to be written to it."""

    def __init__(self, relay: "_Relay", sock: socket.socket, name: str):
        self.relay = relay
        self.sock = sock
        self.name = name              # "client" | "upstream": who sends what is read here
        self.out = bytearray()
        self.peer: _Side = self
        self.events = 0               # what the selector watches for


class _Relay:
    def __init__(self, client: socket.socket, upstream: socket.socket, tap: Tap | None,
                 count: Callable[[str, int], None] | None):
        self.client = _Side(self, client, "client")
        self.upstream = _Side(self, upstream, "upstream")
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.tap = tap
        self.count = count                # metrics: (side the bytes came from, how many)
        self.closing: str | None = None   # why, once one side has closed
        self.deadline = 0.0
        self.closed = False
        self.held = False                 # not read while its log catches up (Tap.behind)


class RelayHub:
    """One selector thread per worker moves the bytes of every open WebSocket.

    A WebSocket holds no request thread: the request thread does the handshake, hands both
    sockets over with :meth:`add` and is free again. Started on first use (after fork);
    :meth:`close` (gunicorn's ``worker_exit``) ends every relay.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._incoming: deque[_Relay] = deque()
        self._relays: set[_Relay] = set()
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = None
        self._stopping = False

    @property
    def open_count(self) -> int:
        return len(self._relays) + len(self._incoming)

    def add(self, client: socket.socket, upstream: socket.socket, tap: Tap | None,
            early: bytes = b"", count: Callable[[str, int], None] | None = None) -> None:
        """Relay between the two sockets until either closes. ``early``: upstream bytes already
        read (they go to the client first); ``count`` is told the bytes read from each side."""
        relay = _Relay(client, upstream, tap, count)
        for side in (relay.client, relay.upstream):
            side.sock.setblocking(False)
            side.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if early:
            relay.client.out += early
            if count is not None:
                count("upstream", len(early))
            if tap is not None:
                tap.data("upstream", early, now_ns(), time.perf_counter())
        with self._lock:
            if self._stopping:
                self._close(relay, "the proxy is shutting down")
                return
            if self._thread is None:
                self._start()
            self._incoming.append(relay)
        self._wake()

    def close(self, timeout: float = 2.0) -> None:
        """End every relay: both connections closed, each tap told."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is None:
            return
        self._wake()
        thread.join(timeout)
        for relay in list(self._relays) + list(self._incoming):
            self._close(relay, "the proxy is shutting down")
        self._incoming.clear()

    def _start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="llmproxy-ws-relay", daemon=True)
        self._thread.start()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, AttributeError):  # already awake / never started
            pass

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # a bug here must not stall every other WebSocket of the worker
                log.exception("WebSocket relay loop")

    def _turn(self) -> None:
        deadlines = [r.deadline for r in self._relays if r.closing]
        if any(r.held for r in self._relays):
            deadlines.append(time.monotonic() + LOG_CATCH_UP_POLL)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for key, events in self._selector.select(timeout):
            side: _Side | None = key.data
            if side is None:
                self._adopt()
                continue
            if side.relay.closed:
                continue
            if events & selectors.EVENT_WRITE:
                self._flush(side)
            if events & selectors.EVENT_READ and not side.relay.closed:
                self._read(side)
            if not side.relay.closed:
                self._watch(side.relay)
        for relay in [r for r in self._relays if r.held]:
            self._watch(relay)
        now = time.monotonic()
        for relay in [r for r in self._relays if r.closing and r.deadline <= now]:
            self._close(relay, relay.closing)

    def _adopt(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._incoming:
            relay = self._incoming.popleft()
            self._relays.add(relay)
            self._flush(relay.client)
            if not relay.closed:
                self._watch(relay)

    def _read(self, side: _Side) -> None:
        relay, peer = side.relay, side.peer
        try:
            while True:
                data = side.sock.recv(READ_SIZE)
                if not data:
                    self._ended(relay, f"{side.name} closed the connection")
                    break
                peer.out += data
                if relay.count is not None:
                    relay.count(side.name, len(data))
                if relay.tap is not None:
                    relay.tap.data(side.name, data, now_ns(), time.perf_counter())
                # TLS may hold decrypted bytes the selector cannot see.
                if not (isinstance(side.sock, ssl.SSLSocket) and side.sock.pending()):
                    break
        except _RETRY:
            pass
        except OSError as exc:
            self._close(relay, f"{side.name} connection failed: {exc.strerror or exc}")
            return
        self._flush(peer)

    def _flush(self, side: _Side) -> None:
        relay = side.relay
        try:
            while side.out:
                sent = side.sock.send(side.out)
                del side.out[:sent]
        except _RETRY:
            pass
        except OSError as exc:
            self._close(relay, f"{side.name} connection failed: {exc.strerror or exc}")
            return
        if relay.closing and not relay.client.out and not relay.upstream.out:
            self._close(relay, relay.closing)

    def _ended(self, relay: _Relay, reason: str) -> None:
        """One side closed: what it sent before still goes to the other, then both close."""
        if relay.closing is None:
            relay.closing = reason
            relay.deadline = time.monotonic() + CLOSE_FLUSH_SECONDS

    def _watch(self, relay: _Relay) -> None:
        relay.held = relay.tap is not None and relay.tap.behind()
        for side in (relay.client, relay.upstream):
            wanted = 0
            if relay.closing is None and not relay.held and len(side.peer.out) < BUFFER_LIMIT:
                wanted |= selectors.EVENT_READ
            if side.out:
                wanted |= selectors.EVENT_WRITE
            if wanted == side.events:
                continue
            if side.events == 0:
                self._selector.register(side.sock, wanted, side)
            elif wanted == 0:
                self._selector.unregister(side.sock)
            else:
                self._selector.modify(side.sock, wanted, side)
            side.events = wanted

    def _close(self, relay: _Relay, reason: str) -> None:
        if relay.closed:
            return
        relay.closed = True
        self._relays.discard(relay)
        for side in (relay.client, relay.upstream):
            if side.events:
                try:
                    self._selector.unregister(side.sock)
                except (KeyError, ValueError):
                    pass
                side.events = 0
            try:
                side.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            side.sock.close()
        if relay.tap is not None:
            relay.tap.closed(reason, time.perf_counter())
