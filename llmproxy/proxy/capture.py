"""What the proxy hands to its logger: one :class:`Exchange` per conversation call.

The proxy calls ``logger.log_request(exchange)`` before it forwards the request and
``logger.log_response(exchange)`` once the answer has been relayed (or has failed). The logger may
annotate the exchange (session, seq) in between.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from llmproxy.providers import Framer
from llmproxy.providers.framing import FramingError
from llmproxy.proxy import decoding
from llmproxy.proxy.decoding import Decoded
from llmproxy.proxy.routing import Route


def now_ns() -> int:
    return time.time_ns()


@dataclass
class Chunk:
    """One SSE event, WebSocket message or event of another framing (the API's ``framer``) as it
    arrived: wall-clock ns, ms since the previous event, the raw text (a binary WebSocket
    message: its bytes, ``binary`` set)."""

    ts_ns: int
    delta_ms: float
    raw: bytes
    binary: bool = False


@dataclass
class Exchange:
    """One request and its response, as the client and the upstream saw them."""

    route: Route
    method: str
    path: str                           # as sent upstream, query string included
    request_headers: list[tuple[str, str]]
    request_body: bytes
    started_ns: int = field(default_factory=now_ns)
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    transport: str = "http"             # "websocket": one client message and its server events
    request_binary: bool = False        # the client message was a binary WebSocket message

    # whatever the logger keeps between log_request and log_response (its session assignment)
    state: object = None
    request_summary: dict = field(default_factory=dict)  # model, stream… as the request asked

    # the answer
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray | None = None       # non-stream answer body as received (still content-encoded)
    chunks: list[Chunk] | None = None   # stream events (SSE or the API's framing), decoded
    size: int = 0
    ttfb_ms: float | None = None
    total_ms: float | None = None
    proxy_ms: float | None = None       # our own time before the request went upstream
    upstream_ms: float | None = None    # from sending upstream to its response headers
    error: str | None = None
    incomplete: bool = False
    stream_truncated: bool = False      # an encoded stream decoded up to MAX_DECODED_BYTES only

    _sse_buffer: bytearray = field(default_factory=bytearray, repr=False)
    _last_event: float = 0.0
    # An SSE stream: each piece as it arrived (perf_counter, time_ns, bytes), split into events
    # (decoded first when content-encoded) once the last byte is relayed, so the events keep
    # their arrival times and the relay does no more than an append per read.
    _pieces: list[tuple[float, int, bytes]] | None = field(default=None, repr=False)
    _encoded: bool = field(default=False, repr=False)
    _decoded: Decoded | None = field(default=None, repr=False)
    _framer: Framer | None = field(default=None, repr=False)  # a stream that is not SSE
    _sent: float = 0.0

    def sending(self) -> None:
        """The request goes upstream now: what came before was the proxy's own time."""
        self._sent = time.perf_counter()
        self.proxy_ms = _ms(self._sent - self.started)

    def got_headers(self, status: int, headers: list[tuple[str, str]], sse: bool,
                    framer: Framer | None = None) -> None:
        """The answer's head is in: a stream (``sse``, or events a ``framer`` splits) is logged
        as chunks, anything else as its body."""
        self.status = status
        self.response_headers = headers
        now = time.perf_counter()
        self.ttfb_ms = _ms(now - self.started)
        if self._sent:
            self.upstream_ms = _ms(now - self._sent)
        self._last_event = time.perf_counter()
        if sse or framer is not None:
            self._framer = framer
            self.chunks = []
            self._pieces = []
            self._encoded = bool(decoding.codings(self.response_header("content-encoding")))
        else:
            self.body = bytearray()

    def request_header(self, name: str) -> str | None:
        return _header(self.request_headers, name)

    def response_header(self, name: str) -> str | None:
        return _header(self.response_headers, name)

    def got_data(self, data: bytes) -> None:
        self.size += len(data)
        if self._pieces is not None:
            self._pieces.append((time.perf_counter(), now_ns(), data))
        elif self.body is not None:
            self.body += data

    def _take_events(self, data: bytes, at: float, at_ns: int) -> None:
        if self._framer is not None:
            for event in self._framer.feed(data):
                self._add_chunk(event, at, at_ns)
            return
        buf = self._sse_buffer
        buf += data
        if b"\r" not in buf:  # the usual spelling: one split instead of a search per event
            *events, rest = bytes(buf).split(b"\n\n")
            for event in events:
                self._add_chunk(event + b"\n\n", at, at_ns)
            buf[:] = rest
            return
        while True:
            end, sep = _event_end(buf)
            if end < 0:
                break
            self._add_chunk(bytes(buf[:end + sep]), at, at_ns)
            del buf[:end + sep]

    def _add_chunk(self, raw: bytes, at: float, at_ns: int) -> None:
        self.chunks.append(Chunk(at_ns, _ms(at - self._last_event), raw))
        self._last_event = at

    def _split_stream(self) -> None:
        """The stream's pieces, as events with their arrival times."""
        pieces, self._pieces = self._pieces, None
        if self._encoded:
            self._decode_stream(pieces)
            return
        for i, (at, at_ns, data) in enumerate(pieces):
            try:
                self._take_events(data, at, at_ns)
            except FramingError as exc:
                self._keep_undecoded(pieces[i:], str(exc))
                return

    def _keep_undecoded(self, pieces: list[tuple[float, int, bytes]], error: str) -> None:
        """What of a stream did not decode or split is kept as the body, as it came, with why."""
        self._decoded = Decoded(b"".join(p for _, _, p in pieces), error=error)
        self._framer = None

    def _decode_stream(self, pieces: list[tuple[float, int, bytes]]) -> None:
        """Replay an encoded stream's pieces through the decoder, with their arrival times. What
        cannot be decoded is kept as the body, as it came, with the reason."""
        try:
            decoder = decoding.StreamDecoder(self.response_header("content-encoding"))
        except decoding.DecodeError as exc:
            self._keep_undecoded(pieces, str(exc))
            return
        for i, (at, at_ns, data) in enumerate(pieces):
            try:
                self._take_events(decoder.feed(data), at, at_ns)
            except (decoding.DecodeError, FramingError) as exc:
                self._keep_undecoded(pieces[i:], str(exc))
                return
            if decoder.truncated:
                self.stream_truncated = True
                return

    def decoded_body(self) -> Decoded | None:
        """The non-SSE body as the log shows it (or what of an encoded stream did not decode)."""
        if self._decoded is None and self.body is not None:
            self._decoded = decoding.decode(bytes(self.body), self.response_header("content-encoding"))
        return self._decoded

    def got_message(self, raw: bytes, ts_ns: int, at: float, binary: bool = False) -> None:
        """A WebSocket message from the upstream that arrived at ``ts_ns`` (``at`` on the
        perf_counter clock): one chunk. The relay thread took both times; the log is written
        later, in the logging thread."""
        if self.ttfb_ms is None:
            self.ttfb_ms = _ms(at - self.started)
        self.chunks.append(Chunk(ts_ns, _ms(at - (self._last_event or self.started)), raw, binary))
        self._last_event = at
        self.size += len(raw)

    def finish(self, error: str | None = None, at: float | None = None) -> None:
        """The answer is over (at ``at``, perf_counter; default now): completely, or cut
        (``error`` says why)."""
        if self._pieces is not None:
            self._split_stream()
        rest = self._framer.rest() if self._framer is not None else bytes(self._sse_buffer)
        if self.chunks is not None and rest:
            self._add_chunk(rest, time.perf_counter(), now_ns())
            self._sse_buffer.clear()
        self.total_ms = _ms((time.perf_counter() if at is None else at) - self.started)
        if error:
            self.error = error
            self.incomplete = True

    def fail(self, status: int, error: str) -> None:
        """The proxy answered itself (unreachable upstream, timeout): no upstream response."""
        self.status = status
        self.error = error
        self.total_ms = _ms(time.perf_counter() - self.started)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of header ``name`` (lower case), or None."""
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _event_end(buf: bytearray) -> tuple[int, int]:
    """Index and length of the first SSE event separator (a blank line) in ``buf``, or (-1, 0)."""
    best, sep_len = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, sep_len = i, len(sep)
    return best, sep_len


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class ExchangeLogger(Protocol):
    """The seam between the proxy and its logs (file logger, MultiWriter)."""

    def log_request(self, exchange: Exchange) -> None: ...

    def log_response(self, exchange: Exchange) -> None: ...
