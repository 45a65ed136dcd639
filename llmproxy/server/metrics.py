"""Prometheus metrics: ``GET /metrics``, summed across gunicorn workers.

prometheus_client's multiprocess mode: every worker writes its numbers to its own mmap files in
``PROMETHEUS_MULTIPROC_DIR``, and whichever worker answers ``/metrics`` sums the files. The
gunicorn hooks set that directory up (wiped at start: a file of an earlier server would be summed
too) and drop a dead worker's live gauges (``child_exit`` → ``mark_process_dead``). prometheus_client
decides at import time whether it runs multiprocess, so it is imported here only when a
:class:`Metrics` is built (in the worker, after the master has set the directory).

The exporter's own numbers carry the names of Grafana Alloy's ``loki.write`` component
(``loki_write_sent_entries_total``, ``loki_write_dropped_entries_total{reason}``, …) so that
alerts written for Alloy read the same here. Labels never hold a secret: the Loki host without
credentials, the tenant id, provider names, status classes and reasons.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.proxy.views import BODY_BYTES_KEY, PROVIDER_KEY
from llmproxy.server.saturation import Saturation

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# LLM calls last from a few hundred ms to many minutes; time to first byte is mostly the model's.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Alloy's reasons, plus spool_full: an entry the full disk spool had to give up.
REASONS = ("ingester_error", "rate_limited", "stream_limited", "line_too_long", "queue_is_full", "spool_full",
           "spool_write_failed")
OWN_PATHS = frozenset({"/health", "/health/loki", "/metrics"})
SAMPLE_INTERVAL = 1.0  # live counts (busy threads, streams) reach the shared files this often


class LiveCount:
    """A number of things in progress (open event streams), counted in this process.

    The request path only moves an int under a lock; the gauge file is written by the sampler
    thread and before each ``/metrics`` answer, not on every call."""

    __slots__ = ("value", "_lock")

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def inc(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def dec(self) -> None:
        with self._lock:
            self.value -= 1


def multiprocess_dir(master_pid: int) -> Path:
    """Where one gunicorn master's workers keep their metric files: on tmpfs (``/dev/shm``, as
    gunicorn's heartbeat files) when there is one, not in the log dir, whose trouble must not stop
    a worker from booting."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return base / f"llm-proxy-metrics-{master_pid}"


def prepare_multiprocess_dir(master_pid: int) -> Path:
    """In the gunicorn master, before any worker: an empty directory, named in the environment
    the workers inherit. Directories of masters that are gone are removed."""
    from llmproxy.loki.stats import pid_alive  # not at the top: llmproxy.loki imports this module

    directory = multiprocess_dir(master_pid)
    for old in directory.parent.glob("llm-proxy-metrics-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == master_pid or not pid_alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    directory.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def worker_gone(pid: int) -> None:
    """gunicorn's ``child_exit``: the dead worker's live gauges (busy threads, queue) stop counting;
    its counters and histograms stay summed, as prometheus_client's docs say."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class Metrics:
    """One process's metrics. Built once per worker (:class:`llmproxy.server.runtime.Runtime`)."""

    def __init__(self, saturation: Saturation, websockets: Callable[[], int] = lambda: 0,
                 loki_host: str = "", loki_tenant: str = ""):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._multiprocess_dir = os.environ.get(MULTIPROC_ENV)
        if self._multiprocess_dir:  # someone may have cleaned up /dev/shm
            os.makedirs(self._multiprocess_dir, mode=0o700, exist_ok=True)
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry

        self.requests = Counter("llm_proxy_requests_total", "Proxied calls answered, by provider and status class.",
                                ["provider", "status_class"], registry=reg)
        self.duration = Histogram("llm_proxy_request_duration_seconds",
                                  "From the call reaching the proxy to the last byte relayed.",
                                  ["provider"], buckets=DURATION_BUCKETS, registry=reg)
        self.ttfb = Histogram("llm_proxy_time_to_first_byte_seconds",
                              "From the call reaching the proxy to the upstream's response headers.",
                              ["provider"], buckets=DURATION_BUCKETS, registry=reg)
        self.bytes_in = Counter("llm_proxy_request_bytes_total",
                                "Request body bytes received from clients (WebSocket: every byte from the client).",
                                ["provider"], registry=reg)
        self.bytes_out = Counter("llm_proxy_response_bytes_total",
                                 "Response body bytes relayed to clients (WebSocket: every byte to the client).",
                                 ["provider"], registry=reg)
        # Busy threads are counted by llmproxy.server.saturation (gunicorn's pre/post_request hooks),
        # which also warns while a worker is full; the gauges here publish its numbers.
        self.saturation = saturation
        self.websockets_open = websockets  # llmproxy.proxy.websocket.RelayHub.open_count
        self.streams_now = LiveCount()
        self._streams = Gauge("llm_proxy_active_streams", "Event-stream (SSE) answers being relayed now.",
                             multiprocess_mode="livesum", registry=reg)
        self._websockets = Gauge("llm_proxy_active_websockets", "WebSocket connections being relayed now.",
                                multiprocess_mode="livesum", registry=reg)
        self._busy = Gauge("llm_proxy_busy_threads", "Request threads serving a request now.",
                          multiprocess_mode="livesum", registry=reg)
        self._threads = Gauge("llm_proxy_threads", "Request threads (all workers).",
                             multiprocess_mode="livesum", registry=reg)
        self._waiting = Gauge("llm_proxy_requests_waiting", "Requests waiting for a free request thread.",
                              multiprocess_mode="livesum", registry=reg)

        where = ["host", "tenant"]
        self._where = (loki_host, loki_tenant)
        self.sent_entries = Counter("loki_write_sent_entries_total", "Log entries Loki accepted.",
                                    where, registry=reg)
        self.sent_bytes = Counter("loki_write_sent_bytes_total", "Log line bytes Loki accepted.",
                                  where, registry=reg)
        self.encoded_bytes = Counter("loki_write_encoded_bytes_total", "Push body bytes encoded (before gzip).",
                                     where, registry=reg)
        self.dropped_entries = Counter("loki_write_dropped_entries_total",
                                       "Log entries that will not reach Loki from this proxy, by reason.",
                                       where + ["reason"], registry=reg)
        self.dropped_bytes = Counter("loki_write_dropped_bytes_total",
                                     "Log line bytes that will not reach Loki from this proxy, by reason.",
                                     where + ["reason"], registry=reg)
        self.retries = Counter("loki_write_batch_retries_total", "Pushes tried again after a failure.",
                               where, registry=reg)
        self.recovered_entries = Counter(
            "loki_write_recovered_entries_total",
            "Log entries a worker that died had not delivered, pushed from the session files by another.",
            where, registry=reg)
        self.push_duration = Histogram("loki_write_request_duration_seconds", "Duration of push requests.",
                                       ["status_code"] + where, buckets=PUSH_BUCKETS, registry=reg)
        self.queue_entries = Gauge("loki_write_queue_entries", "Entries in the memory queues.",
                                   multiprocess_mode="livesum", registry=reg)
        self.queue_bytes = Gauge("loki_write_queue_bytes", "Line bytes in the memory queues.",
                                 multiprocess_mode="livesum", registry=reg)
        self.spool_entries = Gauge("loki_write_spool_entries", "Entries in the disk spool (shared by workers).",
                                   multiprocess_mode="livemax", registry=reg)
        self.spool_bytes = Gauge("loki_write_spool_bytes", "Bytes of the disk spool (shared by workers).",
                                 multiprocess_mode="livemax", registry=reg)
        self.oldest_pending = Gauge("loki_write_oldest_pending_entry_age_seconds",
                                    "Age of the oldest entry not yet in Loki (queue, batch or spool); 0 when none.",
                                    multiprocess_mode="livemax", registry=reg)
        for reason in REASONS:  # so that rate() sees the first drop
            self.dropped_entries.labels(*self._where, reason)
            self.dropped_bytes.labels(*self._where, reason)
        self._sent = (self.sent_entries.labels(*self._where), self.sent_bytes.labels(*self._where),
                      self.encoded_bytes.labels(*self._where), self.retries.labels(*self._where))
        self._recovered = self.recovered_entries.labels(*self._where)
        self._by_provider: dict[str, tuple] = {}
        self._stop = threading.Event()

    def provider(self, name: str) -> tuple:
        """The labelled children of one provider (``labels()`` is slow enough to cache)."""
        children = self._by_provider.get(name)
        if children is None:
            children = self._by_provider[name] = (
                {cls: self.requests.labels(name, cls) for cls in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")},
                self.duration.labels(name), self.ttfb.labels(name),
                self.bytes_in.labels(name), self.bytes_out.labels(name))
        return children

    def websocket_bytes(self, provider: str) -> Callable[[str, int], None]:
        """For a WebSocket relay of ``provider``: counts what it moves as it moves it (called in
        the relay thread with ``"client"`` or ``"upstream"``, the side the bytes came from)."""
        bytes_in, bytes_out = self.provider(provider)[3:]

        def count(source: str, n: int) -> None:
            (bytes_in if source == "client" else bytes_out).inc(n)

        return count

    def sample(self) -> None:
        """Write this process's live counts to its gauge files."""
        numbers = self.saturation.snapshot()
        self._busy.set(numbers["busy"])
        self._threads.set(numbers["threads"])
        self._waiting.set(numbers["waiting"] or 0)
        self._streams.set(self.streams_now.value)
        self._websockets.set(self.websockets_open())

    def start(self) -> None:
        """The sampler thread (after fork)."""
        failures = RateLimitedLog(logging.getLogger("llmproxy"), logging.ERROR, 60.0)

        def run():
            while True:
                try:
                    self.sample()
                except Exception as exc:  # a bug here must not end the sampling for good
                    failures.log("metrics sampling failed: %r", exc)
                if self._stop.wait(SAMPLE_INTERVAL):
                    return

        threading.Thread(target=run, name="metrics-sampler", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    # --- the request path (WSGI middleware) ---

    def wrap(self, app: Callable) -> Callable:
        """A WSGI middleware: status class, timings, bytes and streams of every proxied call
        (not /health, /metrics)."""
        metrics = self

        def middleware(environ, start_response):
            call = _Call(metrics, environ, environ.get("PATH_INFO") not in OWN_PATHS)

            def observe_start(status, headers, exc_info=None):
                call.started(status, headers)
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            try:
                body = app(environ, observe_start)
            except BaseException:
                call.done()
                raise
            return _CountedBody(body, call)

        return middleware

    # --- the Loki exporter (its pusher and sender threads) ---

    def pushed(self, status: int | None, seconds: float, encoded: int) -> None:
        self.push_duration.labels(str(status) if status is not None else "error", *self._where).observe(seconds)
        self._sent[2].inc(encoded)

    def sent(self, entries: int, line_bytes: int) -> None:
        self._sent[0].inc(entries)
        self._sent[1].inc(line_bytes)

    def retried(self) -> None:
        self._sent[3].inc()

    def recovered(self, entries: int, line_bytes: int) -> None:
        """Entries of a dead worker pushed from the files (also counted as sent)."""
        self._recovered.inc(entries)
        self.sent(entries, line_bytes)

    def dropped(self, reason: str, entries: int, line_bytes: int) -> None:
        self.dropped_entries.labels(*self._where, reason).inc(entries)
        self.dropped_bytes.labels(*self._where, reason).inc(line_bytes)

    def exporter_state(self, queue_entries: int, queue_bytes: int, spool_entries: int, spool_bytes: int,
                       oldest_ns: int | None) -> None:
        self.queue_entries.set(queue_entries)
        self.queue_bytes.set(queue_bytes)
        self.spool_entries.set(spool_entries)
        self.spool_bytes.set(spool_bytes)
        self.oldest_pending.set(max(0.0, time.time() - oldest_ns / 1e9) if oldest_ns else 0.0)

    # --- /metrics ---

    def render(self) -> bytes:
        """The text exposition: all workers' numbers when multiprocess, else this process's."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.sample()
        if not self._multiprocess_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        registry.register(_WholeFiles(self._multiprocess_dir, multiprocess.MultiProcessCollector))
        return generate_latest(registry)


class _WholeFiles:
    """prometheus_client's MultiProcessCollector over the files that have their header.

    A worker creates a metrics file empty and then sizes it; read in between, it has no 8-byte
    header yet and the stock collector fails the whole scrape (``unpack_from requires a buffer of
    at least 4 bytes``: a 500 on ``/metrics``). Such a file holds no value yet: leave it out."""

    def __init__(self, path: str, collector: type):
        self.path = path
        self.merge = collector.merge

    def collect(self):
        files = []
        for path in Path(self.path).glob("*.db"):
            try:
                if path.stat().st_size >= 8:
                    files.append(str(path))
            except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
                pass
        return self.merge(files, accumulate=True)



class _Call:
    """One proxied call as the middleware sees it."""

    __slots__ = ("metrics", "environ", "proxied", "t0", "t_headers", "status", "sse", "sent", "finished")

    def __init__(self, metrics: Metrics, environ: dict, proxied: bool):
        self.metrics = metrics
        self.environ = environ
        self.proxied = proxied
        self.t0 = time.perf_counter()
        self.t_headers = 0.0
        self.status = 0
        self.sse = False
        self.sent = 0
        self.finished = False

    def provider(self) -> str:
        return self.environ.get(PROVIDER_KEY) or "none"

    def started(self, status: str, headers: Iterable[tuple[str, str]]) -> None:
        self.status = int(status[:3])
        if not self.proxied:
            return
        self.t_headers = time.perf_counter()
        for name, value in headers:
            if name.lower() == "content-type" and value.startswith("text/event-stream"):
                self.sse = True
                self.metrics.streams_now.inc()

    def done(self) -> None:
        """Called once the last byte is on the wire (or the call failed): the files are written
        here, off the client's time."""
        if self.finished:
            return
        self.finished = True
        if not self.proxied:
            return
        m = self.metrics
        if self.sse:
            m.streams_now.dec()
        requests, duration, ttfb, bytes_in, bytes_out = m.provider(self.provider())
        requests[status_class(self.status or 500)].inc()
        duration.observe(time.perf_counter() - self.t0)
        if self.t_headers:
            ttfb.observe(self.t_headers - self.t0)
        received = self.environ.get(BODY_BYTES_KEY)
        if received:
            bytes_in.inc(received)
        if self.sent:
            bytes_out.inc(self.sent)


class _CountedBody:
    """The response body, passed through; counts bytes and ends the call when the server closes it."""

    __slots__ = ("body", "call")

    def __init__(self, body, call: _Call):
        self.body = body
        self.call = call

    def __iter__(self):
        call = self.call
        for data in self.body:
            call.sent += len(data)
            yield data

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.call.done()
