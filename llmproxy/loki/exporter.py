"""The Loki exporter: a bounded queue the request threads put into, one pusher thread per worker.

``push`` is ``put_nowait``: it never blocks and never raises, so Loki can never slow or fail a
proxied call. The pusher drains the queue into a :class:`Batch` and pushes it when it holds
``batch_size`` entries or ``batch_bytes`` bytes, or when its oldest entry has waited
``batch_wait`` (a deadline per batch, not a ticker). Failed pushes are retried with backoff;
``close`` flushes within the shutdown budget.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from typing import Callable

from llmproxy.loki.backoff import Backoff
from llmproxy.loki.batch import Batch, Labels, LokiEntry, batch_of
from llmproxy.loki.client import LokiClient, PushResult
from llmproxy.loki.health import ExporterStats, StatsBoard
from llmproxy.ratelimit import RateLimitedLog
from llmproxy.settings import LokiSettings

log = logging.getLogger("llmproxy.loki")

PUBLISH_INTERVAL = 1.0
_WAKE = object()

# Loki names the entries it refused in a 400; the others of the push were stored.
_PER_ENTRY_ERROR = re.compile(r"has timestamp too (?:old|new)|max entry size .* exceeded|ignored, reason:")
_TOTAL_IGNORED = re.compile(r"total ignored: (\d+) out of \d+")


def rejected_entries(message: str, batch_size: int) -> int:
    """How many entries of a batch a Loki 400 refused; all of them when it names none."""
    ignored = [int(n) for n in _TOTAL_IGNORED.findall(message)]
    per_entry = sum(1 for line in message.splitlines() if _PER_ENTRY_ERROR.search(line)
                    and "ignored, reason:" not in line)
    counted = sum(ignored) + per_entry
    return min(counted, batch_size) if counted else batch_size


class LokiExporter:
    """Ships entries to Loki from one worker process."""

    def __init__(self, settings: LokiSettings, board: StatsBoard | None = None,
                 client: LokiClient | None = None, sleep: Callable[[float], None] | None = None):
        self.settings = settings
        self.client = client or LokiClient(settings)
        self.board = board
        self.backoff = Backoff(settings.backoff_min, settings.backoff_max, settings.retry_max, settings.jitter)
        self.failing_after = settings.batch_wait + self.backoff.budget()
        self.stats = ExporterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=settings.buffer_size)
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._pause = sleep if sleep is not None else self._default_pause
        self._carry: list[LokiEntry] = []   # given up on while closing: flushed once more
        self._undelivered = 0
        self._warn = RateLimitedLog(log, logging.WARNING, 60.0)
        self._last_publish = 0.0
        self._publish_due = False
        self._next_probe = 0.0

    # --- request threads ---

    def push(self, line: bytes, labels: Labels, ts_ns: int) -> bool:
        """Queue one entry. Never blocks, never raises; False (and counted) when dropped."""
        try:
            if self._pid != os.getpid():
                self.start()
            size = len(line)
            with self._bytes_lock:
                if self._queued_bytes + size > self.settings.buffer_bytes:
                    self.stats.add(entries_dropped=1)
                    return False
                self._queued_bytes += size
            try:
                self._queue.put_nowait(LokiEntry(ts_ns, line, labels))
            except queue.Full:
                with self._bytes_lock:
                    self._queued_bytes -= size
                self.stats.add(entries_dropped=1)
                return False
            return True
        except Exception as exc:  # never the proxied call's problem
            self.stats.error(f"enqueue failed: {exc}")
            return False

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def snapshot(self) -> dict:
        return {**self.stats.snapshot(), "queue_depth": self.queue_depth}

    # --- lifecycle ---

    def start(self) -> None:
        """Start the pusher thread in this process (after fork: threads do not survive it)."""
        with self._start_lock:
            if self._pid == os.getpid() and self._thread is not None:
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="loki-pusher", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> int:
        """Push everything queued within ``timeout`` (the shutdown budget); return what is left."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)
        except queue.Full:
            pass  # the pusher is busy and will see the stop flag
        left = 0
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout + 2.0)
            left = self._queue.qsize() + self._undelivered
        self._publish(force=True)
        self.client.close()
        return left

    # --- the pusher thread ---

    def _default_pause(self, seconds: float) -> None:
        """Wait before a retry; close() cuts the wait short (then the deadline rules)."""
        if self._deadline is not None:
            seconds = min(seconds, self._deadline - time.monotonic())
        if seconds <= 0:
            return
        if self._stop.is_set():
            time.sleep(seconds)
        else:
            self._stop.wait(seconds)

    def _take(self, entry: LokiEntry) -> None:
        with self._bytes_lock:
            self._queued_bytes -= entry.size

    def _run(self) -> None:
        batch = Batch()
        self._publish(force=True)  # count this worker in /health/loki from its start
        while not self._stop.is_set():
            try:
                batch = self._step(batch)
            except Exception:  # the pusher must outlive any surprise; entries stay queued
                log.exception("Loki pusher error")
                self._stop.wait(1.0)
        self._flush(batch)

    def _step(self, batch: Batch) -> Batch:
        """Wait for entries (at most until the batch is due), add them, push when due."""
        timeout = PUBLISH_INTERVAL
        if self._publish_due:  # a publish was held back: do it as soon as it is allowed
            timeout = max(0.01, self._last_publish + PUBLISH_INTERVAL - time.monotonic())
        if batch:
            timeout = min(timeout, max(0.0, self.settings.batch_wait - batch.age()))
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            item = None
        while item is not None and item is not _WAKE:
            self._take(item)
            if batch and batch.bytes + item.size > self.settings.batch_bytes:
                self._carry += self._send(batch)
                batch = Batch()
            batch.add(item)
            if len(batch) >= self.settings.batch_size:
                break
            try:  # take what is already there without waiting
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        if batch and (len(batch) >= self.settings.batch_size or batch.bytes >= self.settings.batch_bytes
                      or batch.age() >= self.settings.batch_wait):
            self._carry += self._send(batch)
            batch = Batch()
        if not batch and self._queue.empty():
            self._maybe_probe()
        self._publish()
        return batch

    def _flush(self, batch: Batch) -> None:
        """On shutdown: everything queued goes out before the deadline, in batches."""
        started = time.monotonic()
        pending = self._carry + list(batch.entries)
        self._carry = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                self._take(item)
                pending.append(item)
        sent_before = self.stats.entries_sent
        left: list[LokiEntry] = []
        for chunk in self._chunks(pending):
            if self._deadline is not None and time.monotonic() >= self._deadline:
                left.extend(chunk)
                continue
            left.extend(self._send(batch_of(chunk)))
        self._undelivered = len(left)
        flushed = self.stats.entries_sent - sent_before
        if left:
            self.stats.add(entries_failed=len(left))
            log.warning("Loki: %d entries not delivered within the %gs shutdown budget (%d flushed)",
                        len(left), self.settings.shutdown_timeout, flushed)
        elif pending:
            log.info("Loki: flushed %d entries on shutdown in %.2fs", flushed, time.monotonic() - started)

    def _chunks(self, entries: list[LokiEntry]):
        chunk: list[LokiEntry] = []
        size = 0
        for entry in entries:
            if chunk and (len(chunk) >= self.settings.batch_size or size + entry.size > self.settings.batch_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += entry.size
        if chunk:
            yield chunk

    def _send(self, batch: Batch) -> list[LokiEntry]:
        """Push one batch with retries; return the entries that could not be delivered."""
        body = batch.encode()
        result = None
        for attempt in range(self.backoff.retries + 1):
            timeout = self.settings.push_timeout
            if self._deadline is not None:
                timeout = min(timeout, self._deadline - time.monotonic())
                if timeout <= 0:
                    break
            result = self.client.push(body, timeout=timeout)
            if result.ok:
                self.stats.succeeded(len(batch))
                return []
            if result.status == 413 and len(batch) > 1:
                self._record(result, batch, reachable=True)
                return self._send_halves(batch)
            if not result.retryable:
                failed = rejected_entries(result.message, len(batch)) if result.status == 400 else len(batch)
                self._record(result, batch, reachable=True)
                self.stats.add(entries_failed=failed)
                if failed < len(batch):  # Loki kept the others
                    self.stats.succeeded(len(batch) - failed)
                return []
            self._record(result, batch, reachable=False)
            if attempt == self.backoff.retries:
                break
            delay = self.backoff.delay(attempt)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            self._pause(delay)
        if result is not None and result.status == 429 and len(batch) > 1:
            # A push larger than Loki's burst can never pass, however often it is retried.
            return self._send_halves(batch)
        return self._give_up(batch, result)

    def _send_halves(self, batch: Batch) -> list[LokiEntry]:
        first, second = batch.split()
        return self._send(first) + self._send(second)

    def _give_up(self, batch: Batch, result: PushResult | None) -> list[LokiEntry]:
        """Retries are spent. While running, the entries count as failed; while closing, they
        go back to the caller (the shutdown flush reports them)."""
        if self._deadline is None:
            self.stats.add(entries_failed=len(batch))
            return []
        return list(batch.entries)

    def _record(self, result: PushResult, batch: Batch, reachable: bool) -> None:
        message = result.describe()
        self.stats.error(message, reachable=reachable)
        self._warn.log("Loki push of %d entries failed: %s", len(batch), message)

    def _maybe_probe(self) -> None:
        """While idle, check that Loki is there: at start, then while it is failing."""
        now = time.monotonic()
        if now < self._next_probe:
            return
        if self._next_probe and self.stats.failing_since is None:
            return
        self._next_probe = now + max(self.settings.batch_wait, 1.0)
        result = self.client.probe(timeout=min(self.settings.push_timeout, 5.0))
        if result.ok:
            self.stats.answered()
        else:
            self.stats.error(result.describe())
            self._warn.log("Loki is not reachable: %s", result.describe())

    def _publish(self, force: bool = False) -> None:
        if self.board is None:
            return
        now = time.monotonic()
        if not force and now - self._last_publish < PUBLISH_INTERVAL:
            self._publish_due = True
            return
        self._last_publish = now
        self._publish_due = False
        try:
            self.board.publish(os.getpid(), self.snapshot())
        except OSError as exc:
            self._warn.log("cannot publish Loki stats: %s", exc)
