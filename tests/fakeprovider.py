"""A fake LLM provider: a real threaded HTTP server on 127.0.0.1.

Speaks enough of the Anthropic Messages API and the OpenAI Chat Completions and Responses APIs
(JSON and SSE) for the official SDKs, records every request it receives, and can be told per
request (``x-fake-*`` headers) or per server (:attr:`FakeProvider.defaults`) to:

- ``x-fake-events: N``        stream N text deltas (default 5)
- ``x-fake-delay-ms: D``      wait D ms before each streamed event
- ``x-fake-status: 429``      answer with that status and a provider-shaped error body
- ``x-fake-retry-after: S``   add ``retry-after: S``
- ``x-fake-gzip: 1``          gzip the body (``Content-Encoding: gzip``)
- ``x-fake-encoding: gzip, br`` encode the body or stream with that stack (see contentcoding.py)
- ``x-fake-hang-ms: D``       wait D ms before sending the response headers
- ``x-fake-cut-after: N``     break a stream off (close the socket) after N events
- ``x-fake-stamp: 1``         prefix each event with ``: sent <unix time>`` (an SSE comment)

``GET /download?size=N`` streams N bytes; ``ANY /echo…`` answers with what it received.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from contentcoding import StreamEncoder, encode, header_value

WORDS = ["Hello", " from", " the", " fake", " provider", "."]


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


class FakeProvider:
    """Start with ``FakeProvider().start()``; ``url`` is its base URL; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1"):
        self.received: list[Received] = []
        self.disconnects: list[tuple[str, float]] = []   # (path, when) for clients that left
        self.defaults: dict[str, str] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """How the proxy names this upstream: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FakeProvider":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> Received:
        with self.lock:
            return self.received[-1]


def anthropic_message(text: str, model: str) -> dict:
    return {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 6}}


def anthropic_events(words: list[str], model: str) -> list[bytes]:
    message = anthropic_message("", model)
    message["content"], message["stop_reason"] = [], None
    events = [("message_start", {"type": "message_start", "message": message}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": w}}) for w in words]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                     "stop_sequence": None},
                                  "usage": {"output_tokens": len(words)}}),
               ("message_stop", {"type": "message_stop"})]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def chat_completion(text: str, model: str) -> dict:
    return {"id": "chatcmpl-fake01", "object": "chat.completion", "created": 1764300000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}}


def chat_events(words: list[str], model: str) -> list[bytes]:
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-fake01", "object": "chat.completion.chunk", "created": 1764300000,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w}) for w in words]
    chunks.append(chunk({}, "stop"))
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def response_object(text: str, model: str, status: str = "completed", response_id: str = "resp_fake01") -> dict:
    return {"id": response_id, "object": "response", "created_at": 1764300000, "status": status,
            "model": model, "error": None, "incomplete_details": None, "instructions": None,
            "output": [{"type": "message", "id": "msg_fake01", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]
            if text else [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0,
            "top_p": 1.0, "metadata": {},
            "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def response_events(words: list[str], model: str, response_id: str) -> list[bytes]:
    events = [{"type": "response.created", "response": response_object("", model, "in_progress", response_id)}]
    events += [{"type": "response.output_text.delta", "item_id": "msg_fake01", "output_index": 0,
                "content_index": 0, "delta": w} for w in words]
    events.append({"type": "response.completed", "response": response_object("".join(words), model,
                                                                              response_id=response_id)})
    return [f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': i})}\n\n".encode()
            for i, e in enumerate(events)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"
    disable_nagle_algorithm = True  # headers and body go in separate writes

    def log_message(self, format, *args):  # quiet
        pass

    def _opt(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(f"x-fake-{name}") or self.server.fake.defaults.get(name, default)

    def _handle(self):
        fake: FakeProvider = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, list(self.headers.items()), body)
        with fake.lock:
            fake.received.append(received)

        hang = float(self._opt("hang-ms", "0"))
        if hang:
            time.sleep(hang / 1000)
        path = urlsplit(self.path).path
        if path.startswith("/echo"):
            return self._send_json(200, {
                "method": self.command, "path": self.path, "headers": list(self.headers.items()),
                "body_sha256": hashlib.sha256(body).hexdigest(), "body_size": len(body)})
        if path == "/download":
            return self._download(int(parse_qs(urlsplit(self.path).query)["size"][0]))

        status = int(self._opt("status", "200"))
        if status != 200:
            return self._error(status, path)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        model = request.get("model", "fake-model") if isinstance(request, dict) else "fake-model"
        count = int(self._opt("events", str(len(WORDS))))
        words = [WORDS[i % len(WORDS)] for i in range(count)]
        stream = isinstance(request, dict) and request.get("stream") is True
        if path.endswith("/messages"):
            if stream:
                return self._stream(anthropic_events(words, model))
            return self._send_json(200, anthropic_message("".join(words), model))
        if path.endswith("/chat/completions") or path.endswith("/completions"):
            if stream:
                return self._stream(chat_events(words, model))
            return self._send_json(200, chat_completion("".join(words), model))
        if path.endswith("/responses"):
            response_id = f"resp_{uuid.uuid4().hex}"
            if stream:
                return self._stream(response_events(words, model, response_id))
            return self._send_json(200, response_object("".join(words), model, response_id=response_id))
        return self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def do_HEAD(self):
        self.server.fake.received.append(Received("HEAD", self.path, list(self.headers.items()), b""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def _error(self, status: int, path: str):
        if path.endswith("/messages"):
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            doc = {"type": "error", "error": {"type": kind, "message": f"fake {status}"}}
        else:
            doc = {"error": {"message": f"fake {status}", "type": "rate_limit_exceeded" if status == 429
                             else "server_error", "code": None}}
        extra = {}
        if self._opt("retry-after"):
            extra["retry-after"] = self._opt("retry-after")
        self._send_json(status, doc, extra)

    def _body_bytes(self, data: bytes) -> tuple[bytes, dict]:
        if self._opt("gzip") == "1":
            return gzip.compress(data), {"Content-Encoding": "gzip"}
        if self._opt("encoding"):
            return encode(data, self._opt("encoding")), {"Content-Encoding": header_value(self._opt("encoding"))}
        return data, {}

    def _send_json(self, status: int, doc, extra: dict | None = None):
        data, headers = self._body_bytes(json.dumps(doc).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake01")
        self.send_header("Set-Cookie", "a=1; Path=/")
        self.send_header("Set-Cookie", "b=2; Path=/")
        for name, value in {**headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[bytes]):
        delay = float(self._opt("delay-ms", "0")) / 1000
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        encoder = StreamEncoder(self._opt("encoding")) if self._opt("encoding") else None
        if encoder:
            self.send_header("Content-Encoding", header_value(self._opt("encoding")))
        self.end_headers()
        cut = int(self._opt("cut-after", "0"))
        stamp = self._opt("stamp") == "1"
        try:
            for i, event in enumerate(events):
                if cut and i == cut:
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                if delay:
                    time.sleep(delay)
                if stamp:
                    event = b": sent %.6f\n%s" % (time.time(), event)
                event = encoder.piece(event) if encoder else event
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            tail = encoder.end() if encoder else b""
            if tail:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with self.server.fake.lock:
                self.server.fake.disconnects.append((self.path, time.monotonic()))
            self.close_connection = True

    def _download(self, size: int):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = bytes(range(256)) * 256
        sent = 0
        try:
            while sent < size:
                part = block[: min(len(block), size - sent)]
                self.wfile.write(part)
                sent += len(part)
        except OSError:
            with self.server.fake.lock:
                self.server.fake.disconnects.append((self.path, time.monotonic()))
            self.close_connection = True
