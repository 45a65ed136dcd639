"""A Loki stand-in: a real threaded HTTP server on 127.0.0.1 that answers like Grafana Loki 3.

It follows ``shared/LOKI-FACTS.md``: JSON pushes (plain or gzip) answered 204; Loki's own 400
messages for a missing ``Content-Type``, bad gzip, malformed JSON, numeric timestamps, bad label
names, long label values, lines over ``max_line_size``, too old / too new entries and entries
too far behind their stream's newest; 422 for no streams; 429 for a push over the burst. Valid
entries of a partly refused push are stored; identical (stream, timestamp, line) is stored once.

Structured metadata (a value's third element) is stored with its entry and joins the stream's
labels in query results, so ``| session_id="…"`` filters on it. ``FakeLoki(structured_metadata=
False)`` is a Loki without it (``allow_structured_metadata: false``): a value carrying some is
refused with Loki's message, one line per stream, while the plain values of the push are stored.

A query whose answer is over 4 MiB fails with 500 and Loki's gRPC message, as a real Loki's
querier cannot send it to its frontend (a page of long lines: ask for fewer).

It can be told to refuse connections (:meth:`down`), hang, answer 500 or 429, or fail the next
few pushes, and it answers ``GET /loki/api/v1/query_range`` for the LogQL forms the tests use:
a selector, line filters ``|= "…"``, ``| json`` (bare or ``name="path"``) and label filters.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
HOUR_NS = 3600 * 10**9


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // 10**9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stream_text(labels: dict) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


@dataclass
class Push:
    headers: dict
    size: int            # bytes on the wire
    status: int
    at: float = field(default_factory=time.monotonic)
    values: int = 0
    with_metadata: int = 0  # values that carried structured metadata


MAX_METADATA = 128


class FakeLoki:
    def __init__(self, out_of_order_window: float = 3600.0, max_line_size: int = 262144,
                 burst_bytes: int = 6 * 1024 * 1024, reject_old_max_age: float = 168 * 3600.0,
                 creation_grace: float = 600.0, max_body_bytes: int | None = None,
                 structured_metadata: bool = True, max_answer_bytes: int = 4 * 1024 * 1024):
        self.window_ns = int(out_of_order_window * 1e9)
        self.max_line_size = max_line_size
        self.burst_bytes = burst_bytes
        self.reject_old_ns = int(reject_old_max_age * 1e9)
        self.grace_ns = int(creation_grace * 1e9)
        self.max_body_bytes = max_body_bytes      # a gateway in front (nginx: 413)
        self.structured_metadata = structured_metadata
        self.max_answer_bytes = max_answer_bytes  # grpc_server_max_send_msg_size: querier → frontend
        self.mode = "ok"                          # ok | error500 | ratelimit | hang
        self.refuse_queries = False               # a gateway that serves the push path only: 403
        self.retry_after: str | None = None
        self._fail_next: list[int] = []
        # labels → {"labels", "entries": {(ts, line)}, "metadata": {(ts, line): {…}}, "newest"}
        self.streams: dict[frozenset, dict] = {}
        self.pushes: list[Push] = []
        self.rejected: list[str] = []
        self.queries: list[dict] = []             # query_range parameters, in arrival order
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._connections: set = set()
        self._thread: threading.Thread | None = None

    # --- control ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeLoki":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.daemon_threads = True
        self._server.loki = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening: pushes get 'connection refused' until :meth:`up`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:  # kept-alive connections too: a Loki that is down answers nothing
            for conn in list(self._connections):
                try:
                    conn.shutdown(2)
                except OSError:
                    pass
            self.changed.notify_all()

    def up(self) -> None:
        if self._server is None:
            self.start()

    stop = down

    def set_mode(self, mode: str, retry_after: str | None = None) -> None:
        with self.lock:
            self.mode, self.retry_after = mode, retry_after
            self.changed.notify_all()

    def fail_next(self, count: int, status: int = 500) -> None:
        """The next ``count`` pushes answer ``status`` (after those already told; 204: as usual)."""
        with self.lock:
            self._fail_next += [status] * count

    # --- what it holds ---

    def entries(self, **labels: str) -> list[tuple[dict, int, str]]:
        """Every stored entry as (labels, ts_ns, line), oldest first; filtered by label values."""
        with self.lock:
            out = [(s["labels"], ts, line) for s in self.streams.values() for ts, line in s["entries"]
                   if all(s["labels"].get(k) == v for k, v in labels.items())]
        return sorted(out, key=lambda e: e[1])

    def entries_with_metadata(self, **labels: str) -> list[tuple[dict, int, str, dict]]:
        """Like :meth:`entries`, with each entry's structured metadata."""
        with self.lock:
            out = [(s["labels"], ts, line, s["metadata"].get((ts, line), {})) for s in self.streams.values()
                   for ts, line in s["entries"] if all(s["labels"].get(k) == v for k, v in labels.items())]
        return sorted(out, key=lambda e: e[1])

    def lines(self, **labels: str) -> list[str]:
        return [line for _, _, line in self.entries(**labels)]

    def count(self) -> int:
        with self.lock:
            return sum(len(s["entries"]) for s in self.streams.values())

    def wait_for(self, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                n = sum(len(s["entries"]) for s in self.streams.values())
                if n >= count or time.monotonic() >= deadline:
                    return n
                self.changed.wait(min(0.2, max(0.0, deadline - time.monotonic())))

    # --- push ---

    def handle_push(self, headers: dict, raw: bytes) -> tuple[int, str, dict]:
        """Answer one push and record it in :attr:`pushes` (before waiters on the entries wake)."""
        push = Push(headers, len(raw), 0)
        status, message, extra = self._push(headers, raw, push)
        if not push.status:
            push.status = status
            with self.lock:
                self.pushes.append(push)
        return status, message, extra

    def _push(self, headers: dict, raw: bytes, push: Push) -> tuple[int, str, dict]:
        with self.lock:
            status = self._fail_next.pop(0) if self._fail_next else None
            if status not in (None, 204):  # 204 in the list: this push is taken as usual
                return status, {500: "internal server error", 429: self._rate_message(1, len(raw)),
                                503: "service unavailable"}.get(status, "error"), {}
            mode, retry_after = ("ok", None) if status == 204 else (self.mode, self.retry_after)
        if mode == "error500":
            return 500, "rpc error: code = Unavailable desc = the ingester is shutting down", {}
        if mode == "ratelimit":
            return 429, self._rate_message(1, len(raw)), ({"Retry-After": retry_after} if retry_after else {})
        if self.max_body_bytes is not None and len(raw) > self.max_body_bytes:
            return 413, "<html><head><title>413 Request Entity Too Large</title></head></html>", {}
        if not headers.get("content-type", "").startswith("application/json"):
            return 400, "snappy: corrupt input", {}
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                return 400, "gzip: invalid header", {}
        try:
            doc = json.loads(raw)
        except ValueError:
            text = raw[:40].decode("utf-8", "replace")
            if not raw.lstrip().startswith(b"{"):
                return 400, (f"readObjectStart: expect {{ or n, but found {text[:1]}, error found in #1 byte "
                             f"of ...|{text}|..., bigger context ...|{text}|..."), {}
            return 400, ("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: ReadObjectCB: object not "
                         f"ended with }}, error found in #10 byte of ...|{text}|..."), {}
        streams = doc.get("streams") if isinstance(doc, dict) else None
        if not streams:
            return 422, "error at least one valid stream is required for ingestion", {}

        parsed = []
        total_bytes = total_lines = 0
        for stream in streams:
            labels = stream.get("stream") or {}
            for name, value in labels.items():
                if not LABEL_NAME.fullmatch(name):
                    bad = next(c for c in name if not re.match(r"[a-zA-Z0-9_]", c)) if not name[:1].isdigit() \
                        else name[0]
                    return 400, f"couldn't parse labels: 1:2: parse error: unexpected character inside braces: '{bad}'", {}
                if len(str(value).encode()) > 2048:
                    return 400, (f"stream '{_stream_text(labels)}' has label value too long: "
                                 f"'{len(str(value).encode())}' bytes"), {}
            values = []
            for value in stream.get("values") or []:
                if (not isinstance(value, list) or len(value) not in (2, 3) or not isinstance(value[0], str)
                        or not value[0].isdigit() or not isinstance(value[1], str)):
                    return 400, ("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: unmarshalerDecoder: "
                                 "Value looks like Number/Boolean/None, but can't find its end: ',' or '}' "
                                 "symbol, error found in #10 byte of ..."), {}
                metadata = value[2] if len(value) == 3 else {}
                if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                    return 400, ("loghttp.PushRequest.Streams: []loghttp.LogProtoStream: decode structured "
                                 "metadata: expected an object of strings"), {}
                values.append((int(value[0]), value[1], metadata))
                push.values += 1
                push.with_metadata += bool(metadata)
                total_bytes += len(value[1].encode())
                total_lines += 1
            parsed.append((dict(labels), values))

        if total_bytes > self.burst_bytes:
            return 429, self._rate_message(total_lines, total_bytes), {}

        errors: list[str] = []
        stored = 0
        now = time.time_ns()
        with self.lock:
            for labels, values in parsed:
                key = frozenset(labels.items())
                stream = self.streams.setdefault(key, {"labels": {**labels, "service_name": labels.get(
                    "service_name", labels.get("app", "unknown_service"))}, "entries": set(), "metadata": {},
                    "newest": 0})
                ignored = 0
                disallowed = False
                for ts, line, metadata in values:
                    size = len(line.encode())
                    if metadata and not self.structured_metadata:
                        disallowed = True
                    elif len(metadata) > MAX_METADATA:
                        errors.append(f"stream '{_stream_text(stream['labels'])}' has too many structured "
                                      f"metadata labels: '{len(metadata)}', limit: '{MAX_METADATA}'. Please see "
                                      "`limits_config.max_structured_metadata_entries_count` or contact your Loki "
                                      "administrator to increase it.")
                    elif size > self.max_line_size:
                        errors.append(f"max entry size '{self.max_line_size}' bytes exceeded for stream "
                                      f"'{_stream_text(labels)}' while adding an entry with length '{size}' bytes")
                    elif ts < now - self.reject_old_ns:
                        errors.append(f"entry for stream '{_stream_text(labels)}' has timestamp too old: "
                                      f"{_iso(ts)}, oldest acceptable timestamp is: {_iso(now - self.reject_old_ns)}")
                    elif ts > now + self.grace_ns:
                        errors.append(f"entry for stream '{_stream_text(labels)}' has timestamp too new: {_iso(ts)}")
                    elif stream["newest"] and ts < stream["newest"] - self.window_ns:
                        ignored += 1
                        errors.append(f"entry with timestamp {_iso(ts)} ignored, reason: 'entry too far behind, "
                                      f"entry timestamp is: {_iso(ts)}, oldest acceptable timestamp is: "
                                      f"{_iso(stream['newest'] - self.window_ns)}',")
                    else:
                        if (ts, line) not in stream["entries"]:
                            stream["entries"].add((ts, line))
                            if metadata:
                                stream["metadata"][(ts, line)] = metadata
                            stored += 1
                        stream["newest"] = max(stream["newest"], ts)
                if disallowed:
                    errors.append(f"stream '{_stream_text(stream['labels'])}' includes structured metadata, but "
                                  "this feature is disallowed. Please see `limits_config.allow_structured_metadata`"
                                  " or contact your Loki administrator to enable it")
                if ignored:
                    errors.append(f"user 'fake', total ignored: {ignored} out of {len(values)} for stream: "
                                  f"{_stream_text(labels)}")
            self.rejected.extend(errors)
            push.status = 400 if errors else 204
            self.pushes.append(push)
            self.changed.notify_all()
        if errors:
            return 400, "\n".join(errors), {}
        return 204, "", {}

    def _rate_message(self, lines: int, size: int) -> str:
        return (f"ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while attempting to "
                f"ingest '{lines}' lines totaling '{size}' bytes, reduce log volume or contact your Loki "
                "administrator to see if the limit can be increased")

    # --- query ---

    def query_range(self, query: str, start: int | None, end: int | None, limit: int, direction: str) -> dict:
        selector, stages = parse_logql(query)
        rows = []
        for labels, ts, line, metadata in self.entries_with_metadata():
            if start is not None and ts < start or end is not None and ts >= end:
                continue
            if not all(_match(labels.get(name), op, value) for name, op, value in selector):
                continue
            result = run_pipeline({**labels, **metadata}, line, stages)
            if result is not None:
                rows.append((result, ts, format_line(line, stages)))
        rows.sort(key=lambda r: r[1], reverse=direction != "forward")
        rows = rows[:limit]
        size = sum(len(line) + 64 for _, _, line in rows)
        if size > self.max_answer_bytes:
            raise AnswerTooLarge(f"rpc error: code = ResourceExhausted desc = trying to send message larger than "
                                 f"max ({size} vs. {self.max_answer_bytes})")
        grouped: dict[frozenset, dict] = {}
        for labels, ts, line in rows:
            grouped.setdefault(frozenset(labels.items()), {"stream": labels, "values": []})["values"].append(
                [str(ts), line])
        return {"status": "success", "data": {"resultType": "streams", "result": list(grouped.values()),
                                              "stats": {}}}


class AnswerTooLarge(Exception):
    """A query's answer is over the 4 MiB a Loki querier may send its frontend: HTTP 500."""


# --- a small LogQL subset ---

_TOKEN = re.compile(r'\s*(\{|\}|,|\|=|!=|\|~|=~|!~|\||=|"(?:[^"\\]|\\.)*"|`[^`]*`|[A-Za-z_][A-Za-z0-9_.]*)')


def _tokens(query: str) -> list[str]:
    pos, out = 0, []
    query = query.strip()
    while pos < len(query):
        match = _TOKEN.match(query, pos)
        if not match:
            raise ValueError(f"parse error at {pos}: {query[pos:pos + 20]!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return token[1:-1] if token.startswith("`") else json.loads(token)


def parse_logql(query: str):
    tokens = _tokens(query)
    if not tokens or tokens[0] != "{":
        raise ValueError("a stream selector {…} is required")
    i, selector = 1, []
    while tokens[i] != "}":
        selector.append((tokens[i], tokens[i + 1], _unquote(tokens[i + 2])))
        i += 3
        if tokens[i] == ",":
            i += 1
    i += 1
    stages = []
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("|=", "!=", "|~", "!~"):
            stages.append(("line", tok, _unquote(tokens[i + 1])))
            i += 2
        elif tok == "|" and tokens[i + 1] == "json":
            i += 2
            fields = []
            while i < len(tokens) and tokens[i] not in ("|", "|=", "!=", "|~", "!~"):
                if tokens[i] == ",":
                    i += 1
                    continue
                fields.append((tokens[i], _unquote(tokens[i + 2])))  # name = "path"
                i += 3
            stages.append(("json", fields))
        elif tok == "|" and tokens[i + 1] == "line_format":
            stages.append(("format", _unquote(tokens[i + 2])))
            i += 3
        elif tok == "|":
            stages.append(("label", tokens[i + 1], tokens[i + 2], _unquote(tokens[i + 3])))
            i += 4
        else:
            raise ValueError(f"unsupported LogQL near {tok!r}")
    return selector, stages


def _match(actual, op, value) -> bool:
    actual = "" if actual is None else str(actual)
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    if op == "=~":
        return re.fullmatch(value, actual) is not None
    if op == "!~":
        return re.fullmatch(value, actual) is None
    raise ValueError(op)


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}_{k}" if prefix else re.sub(r"[^A-Za-z0-9_]", "_", k), v, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value)
    elif value is not None:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)


def _path(doc, path: str):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc if isinstance(doc, str) or doc is None else json.dumps(doc)


def format_line(line: str, stages) -> str:
    """``| line_format``: only the template the proxy sends, the line's length in bytes."""
    for stage in stages:
        if stage[0] == "format":
            if stage[1].replace(" ", "") != "{{len__line__}}":
                raise ValueError(f"unsupported line_format template {stage[1]!r}")
            line = str(len(line.encode()))
    return line


def run_pipeline(labels: dict, line: str, stages) -> dict | None:
    for stage in stages:
        if stage[0] == "format":
            continue
        if stage[0] == "line":
            _, op, text = stage
            ok = {"|=": text in line, "!=": text not in line,
                  "|~": re.search(text, line) is not None, "!~": re.search(text, line) is None}[op]
            if not ok:
                return None
        elif stage[0] == "json":
            try:
                doc = json.loads(line)
            except ValueError:
                labels["__error__"] = "JSONParserErr"
                continue
            if stage[1]:
                for name, path in stage[1]:
                    value = _path(doc, path)
                    if value is not None:
                        labels[name] = value
            else:
                _flatten("", doc, labels)
        else:
            _, name, op, value = stage
            if not _match(labels.get(name), op, value):
                return None
    return labels


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.loki.lock:
            self.server.loki._connections.add(self.connection)

    def finish(self):
        with self.server.loki.lock:
            self.server.loki._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _reply(self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8",
               extra: dict | None = None):
        data = body.encode() if isinstance(body, str) else body
        if status >= 400 and not data.endswith(b"\n"):
            data += b"\n"
        self.send_response(status)
        if data or status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if status != 204:
            self.wfile.write(data)

    def do_POST(self):
        loki: FakeLoki = self.server.loki
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/loki/api/v1/push":
            return self._reply(404, "404 page not found")
        if loki.mode == "hang":
            deadline = time.monotonic() + 120
            with loki.lock:
                while loki.mode == "hang" and time.monotonic() < deadline:
                    loki.changed.wait(0.2)
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, message, extra = loki.handle_push(headers, raw)
        self._reply(status, message, extra=extra)

    def do_GET(self):
        loki: FakeLoki = self.server.loki
        url = urlsplit(self.path)
        if url.path == "/loki/api/v1/push":
            return self._reply(405, "405 method not allowed")
        if url.path == "/ready":
            return self._reply(200, "ready")
        if url.path == "/stats":  # not Loki's: for the benchmark
            return self._reply(200, json.dumps({"entries": loki.count(), "pushes": len(loki.pushes)}),
                               "application/json")
        if url.path != "/loki/api/v1/query_range":
            return self._reply(404, "404 page not found")
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        with loki.lock:
            loki.queries.append(params)
        if loki.refuse_queries:
            return self._reply(403, "forbidden")
        try:
            doc = loki.query_range(params["query"], int(params["start"]) if "start" in params else None,
                                   int(params["end"]) if "end" in params else None,
                                   int(params.get("limit", 100)), params.get("direction", "backward"))
        except (KeyError, ValueError, IndexError) as exc:
            return self._reply(400, f"parse error : {exc}")
        except AnswerTooLarge as exc:
            return self._reply(500, str(exc))
        self._reply(200, json.dumps(doc), "application/json")
