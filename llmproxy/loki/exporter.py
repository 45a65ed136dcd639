"""The Loki exporter: a bounded queue the request threads put into, one pusher thread per worker.

``push`` is ``put_nowait``: it never blocks on Loki and never raises, so Loki can never slow or
fail a proxied call. The pusher drains the queue into a :class:`Batch` and pushes it when it
holds ``batch_size`` entries or ``batch_bytes`` bytes, or when its oldest entry has waited
``batch_wait`` (a deadline per batch, not a ticker). The pusher is woken only when it has
something to do: an entry for an empty batch, a full batch's worth queued, the batch's deadline
(under load, once per batch instead of once per entry: each wake costs the request threads GIL
hand-overs). Failed pushes are retried with backoff; what
still fails goes to the disk spool, and while anything is spooled, new batches go there too and
the spool is replayed oldest first (Loki wants each stream's entries roughly in order). ``close``
flushes within the shutdown budget and spools the rest.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.loki.backoff import Backoff
from llmproxy.loki.batch import Batch, Labels, LokiEntry, Metadata, batch_of
from llmproxy.loki.client import LokiClient, PushResult
from llmproxy.loki.split import split_entry
from llmproxy.loki.spool import Spool
from llmproxy.loki.stats import ExporterStats, StatsBoard
from llmproxy.settings import LokiSettings

log = logging.getLogger("llmproxy.loki")

PUBLISH_INTERVAL = 1.0
SPOOL_MARGIN = 2.0  # of the shutdown budget, kept for writing what could not be pushed


class ExportMetrics(Protocol):
    """Where the exporter counts what it does (:class:`llmproxy.server.metrics.Metrics`, built
    by the server for ``/metrics``)."""

    def pushed(self, status: int | None, seconds: float, encoded: int) -> None: ...
    def sent(self, entries: int, line_bytes: int) -> None: ...
    def retried(self) -> None: ...
    def dropped(self, reason: str, entries: int, line_bytes: int) -> None: ...
    def exporter_state(self, queue_entries: int, queue_bytes: int, spool_entries: int, spool_bytes: int,
                       oldest_ns: int | None) -> None: ...


def drop_reason(status: int | None, message: str) -> str:
    """Alloy's reason for entries Loki refused."""
    if status == 429:
        return "rate_limited"
    if "max entry size" in message or "line too long" in message:
        return "line_too_long"
    if "stream limit" in message or "maximum active stream" in message:
        return "stream_limited"
    return "ingester_error"
_WAKE = object()

# Loki names the entries it refused in a 400; the others of the push were stored.
_PER_ENTRY_ERROR = re.compile(r"has timestamp too (?:old|new)|max entry size .* exceeded")
_TOTAL_IGNORED = re.compile(r"total ignored: (\d+) out of \d+")
# A Loki without structured metadata (before schema v13, or allow_structured_metadata: false)
# refuses, one line per stream, the values that carry it; it stores the plain values of the push.
METADATA_DISALLOWED = re.compile(r"includes structured metadata, but this feature is disallowed")


def rejected_entries(message: str, batch_size: int) -> int:
    """How many entries of a batch a Loki 400 refused; all of them when it names none."""
    counted = sum(int(n) for n in _TOTAL_IGNORED.findall(message))
    counted += sum(1 for line in message.splitlines() if _PER_ENTRY_ERROR.search(line))
    return min(counted, batch_size) if counted else batch_size


@dataclass
class Outcome:
    """What became of entries handed to Loki."""

    sent: int = 0
    failed: int = 0                     # refused by Loki (4xx): pushing them again cannot help
    undelivered: list[LokiEntry] = field(default_factory=list)  # retries spent: spool them
    errors: list[str] = field(default_factory=list)

    def __iadd__(self, other: "Outcome") -> "Outcome":
        self.sent += other.sent
        self.failed += other.failed
        self.undelivered += other.undelivered
        self.errors += other.errors
        return self


class LokiExporter:
    """Ships entries to Loki from one worker process."""

    def __init__(self, settings: LokiSettings, board: StatsBoard | None = None,
                 client: LokiClient | None = None, sleep: Callable[[float], None] | None = None,
                 spool: Spool | None = None, metrics: ExportMetrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.client = client or LokiClient(settings)
        self.board = board
        self.spool = spool if spool is not None else (
            Spool(settings.spool_dir, settings.spool_max_bytes) if settings.spool_dir else None)
        self.backoff = Backoff(settings.backoff_min, settings.backoff_max, settings.retry_max, settings.jitter)
        self.failing_after = settings.batch_wait + self.backoff.budget()
        self.stats = ExporterStats()
        self._queue: queue.Queue = queue.Queue(maxsize=settings.buffer_size)
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        # Set by push when the pusher must look at the queue before its next deadline.
        self._wake = threading.Event()
        self._idle = True  # the pusher waits with an empty batch: the next entry starts one
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        # The push in flight (at most one: Loki wants each stream's entries in order). The pusher
        # builds the next batch meanwhile; a sender thread does the HTTP round trip.
        self._inflight: Future | None = None
        self._inflight_oldest_ns: int | None = None
        self._batch: Batch | None = None  # the one being gathered, for the oldest-pending gauge
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pid: int | None = None
        self._start_lock = threading.Lock()
        self._pause = sleep if sleep is not None else self._default_pause
        self._warn = RateLimitedLog(log, logging.WARNING, 60.0)
        self._last_publish = 0.0
        self._publish_due = False
        self._next_probe = 0.0
        self._next_replay = 0.0
        self._replay_failures = 0
        self._undelivered = 0
        self._metadata = settings.structured_metadata != "false"
        self.stats.structured_metadata = "on" if self._metadata else "off"

    # --- request threads ---

    def push(self, line: bytes, labels: Labels, ts_ns: int, metadata: Metadata = ()) -> bool:
        """Queue one entry. Never blocks on Loki, never raises. When the queue is full (by
        entries or bytes) the entry goes to the disk spool instead; False if even that failed."""
        try:
            if self._pid != os.getpid():
                self.start()
            entry = LokiEntry(ts_ns, line, labels, metadata if self._metadata else ())
            with self._bytes_lock:
                room = self._queued_bytes + entry.size <= self.settings.buffer_bytes
                if room:
                    self._queued_bytes += entry.size
            if room:
                try:
                    self._queue.put_nowait(entry)
                    if self._idle or self._queued_bytes >= self.settings.batch_bytes or (
                            self._queue.qsize() >= self.settings.batch_size):
                        self._wake.set()
                    return True
                except queue.Full:
                    with self._bytes_lock:
                        self._queued_bytes -= entry.size
            return self._overflow(entry)
        except Exception as exc:  # never the proxied call's problem
            self.stats.error(f"enqueue failed: {exc}")
            return False

    def _overflow(self, entry: LokiEntry) -> bool:
        """The memory queue is full: better a disk write on this request than a lost entry."""
        if self.spool is not None:
            try:
                self._spooled(self.spool.write([entry]))
                return True
            except OSError as exc:
                self._warn.log("Loki spool write failed: %s", exc)
        self.stats.add(entries_dropped=1)
        self._count_drop("queue_is_full", [entry])
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
            threading.Thread(target=self._sender, name="loki-sender", daemon=True).start()

    def close(self, timeout: float | None = None) -> int:
        """Push everything queued within ``timeout`` (the shutdown budget), spool the rest;
        return how many entries are neither in Loki nor in the spool."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)
        except queue.Full:
            pass  # the pusher is busy and will see the stop flag
        self._wake.set()
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout + 2.0)
            left = self._queue.qsize() + self._undelivered
        else:
            left = 0
        self._outbox.put(None)
        self._publish(force=True)
        self.client.close()
        if self.spool is not None:
            self.spool.unlock()
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
        if self._metadata and self.settings.structured_metadata == "auto" and self.board is not None and any(
                doc.get("structured_metadata") == "refused" for doc in self.board.read()):
            self._metadata_refused(None)  # another worker of this server has found out already
        self._publish(force=True)  # count this worker in /health/loki from its start
        while not self._stop.is_set():
            try:
                batch = self._step(batch)
            except Exception:  # the pusher must outlive any surprise; entries stay queued
                log.exception("Loki pusher error")
                self._stop.wait(1.0)
        self._flush(batch)

    def _step(self, batch: Batch) -> Batch:
        """Wait for entries (at most until the batch is due), add them, ship when due."""
        self._settle(wait=False)
        spooled = self.spool is not None and self.spool.pending()
        timeout = PUBLISH_INTERVAL
        if self._publish_due:  # a publish was held back: do it as soon as it is allowed
            timeout = max(0.01, self._last_publish + PUBLISH_INTERVAL - time.monotonic())
        if spooled:
            timeout = min(timeout, max(0.01, self._next_replay - time.monotonic()))
        if batch:
            timeout = min(timeout, max(0.0, self.settings.batch_wait - batch.age()))
        self._idle = not batch
        if self._queue.empty() or (batch and self._queue.qsize() + len(batch) < self.settings.batch_size
                                   and self._queued_bytes + batch.bytes < self.settings.batch_bytes):
            self._wake.wait(timeout)
        self._wake.clear()
        self._idle = False
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            item = None
        while item is not None and item is not _WAKE:
            self._take(item)
            for part in split_entry(item, self.settings.max_line_bytes):
                if batch and batch.bytes + part.size > self.settings.batch_bytes:
                    self._ship(batch)
                    batch = Batch()
                batch.add(part)
            if len(batch) >= self.settings.batch_size:
                break
            try:  # take what is already there without waiting
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        if batch and (len(batch) >= self.settings.batch_size or batch.bytes >= self.settings.batch_bytes
                      or batch.age() >= self.settings.batch_wait):
            self._ship(batch)
            batch = Batch()
        if self.spool is not None and time.monotonic() >= self._next_replay and self.spool.pending():
            self._replay()
        elif not batch and self._queue.empty():
            self._maybe_probe()
        self._batch = batch
        self._publish()
        return batch

    def _ship(self, batch: Batch) -> None:
        """A due batch: behind the spool while anything is spooled, else to Loki (the push runs
        in the sender thread while the pusher gathers the next batch)."""
        if self._push_stuck():
            # Loki is failing and the push in flight is still retrying: rather than let the
            # memory queue fill up behind it, put this batch on disk (replayed oldest first).
            self._to_spool(batch.entries)
            return
        self._settle()  # one push at a time: its failure must reach the spool before the next
        if self.spool is not None and self.spool.pending():
            self._to_spool(batch.entries)
            return
        future: Future = Future()
        self._inflight = future
        self._inflight_oldest_ns = min(e.ts_ns for e in batch.entries)
        self._outbox.put((future, batch))

    def _push_stuck(self) -> bool:
        future = self._inflight
        return future is not None and not future.done() and self.stats.failing_since is not None

    def _sender(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            future, batch = item
            try:
                future.set_result(self._send(batch))
            except BaseException as exc:  # reported by _settle
                future.set_exception(exc)

    def _settle(self, wait: bool = True) -> None:
        """Collect the push in flight: what it could not deliver goes to the spool."""
        future = self._inflight
        if future is None or (not wait and not future.done()):
            return
        self._inflight = None
        try:
            outcome = future.result()
        except Exception:
            log.exception("Loki push error")
            return
        if outcome.undelivered:
            self._to_spool(outcome.undelivered)

    def _to_spool(self, entries: list[LokiEntry]) -> bool:
        if self.spool is None:
            self.stats.add(entries_failed=len(entries))
            self._count_drop("ingester_error", entries)
            return False
        try:
            self._spooled(self.spool.write(entries))
            return True
        except OSError as exc:
            self.stats.add(entries_failed=len(entries))
            self._count_drop("ingester_error", entries)
            self._warn.log("Loki spool write failed, %d entries lost: %s", len(entries), exc)
            return False

    def _spooled(self, dropped: int) -> None:
        if dropped:
            self.stats.add(entries_dropped=dropped)
            if self.metrics is not None:
                self.metrics.dropped("spool_full", dropped, 0)
            self._warn.log("Loki spool over LLM_PROXY_LOKI_SPOOL_MAX_BYTES: dropped its %d oldest entries",
                           dropped)

    def _replay(self) -> None:
        """Push the oldest spool file (one worker at a time); on failure, back off and keep it."""
        self._settle()
        if not self.spool.try_lock():
            self._next_replay = time.monotonic() + max(self.settings.batch_wait, 0.5)
            return
        claimed = self.spool.claim_oldest()
        if claimed is None:
            self._next_replay = time.monotonic() + 0.5
            return
        spool_file, entries = claimed
        outcome = Outcome()
        for chunk in self._chunks(entries):
            outcome += self._send(batch_of(chunk), attempts=1)
            if outcome.undelivered:
                break
        if outcome.undelivered:
            self.spool.release(spool_file)
            # Entries Loki took before it failed stay sent; an exact resend of them is dropped.
            delay = self.backoff.delay(min(self._replay_failures, 16))
            self._replay_failures += 1
            self._next_replay = time.monotonic() + delay
        else:
            self.spool.done(spool_file)
            self._replay_failures = 0
            self._next_replay = 0.0

    def _flush(self, batch: Batch) -> None:
        """On shutdown: everything queued goes to Loki before the deadline, or to the spool."""
        self._settle()
        started = time.monotonic()
        pending = list(batch.entries)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                self._take(item)
                pending.extend(split_entry(item, self.settings.max_line_bytes))
        if not pending:
            return
        sent_before = self.stats.entries_sent
        left: list[LokiEntry] = []
        push_deadline = (self._deadline or time.monotonic()) - SPOOL_MARGIN
        spooled_first = self.spool is not None and self.spool.pending()
        for chunk in self._chunks(pending):
            if spooled_first or time.monotonic() >= push_deadline:
                left.extend(chunk)
                continue
            left.extend(self._send(batch_of(chunk), deadline=push_deadline).undelivered)
        flushed = self.stats.entries_sent - sent_before
        self._undelivered = 0
        if left and self._to_spool(left):
            log.warning("Loki: %d entries spooled on shutdown (%d flushed); the next start delivers them",
                        len(left), flushed)
        elif left:
            self._undelivered = len(left)
            log.warning("Loki: %d entries not delivered within the %gs shutdown budget (%d flushed)",
                        len(left), self.settings.shutdown_timeout, flushed)
        else:
            log.info("Loki: flushed %d entries on shutdown in %.2fs", flushed, time.monotonic() - started)

    def _chunks(self, entries: Iterable[LokiEntry]) -> Iterator[list[LokiEntry]]:
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

    def send_entries(self, entries: Iterable[LokiEntry]) -> Outcome:
        """Push entries now, in this thread: split, batched and retried like the pusher does
        (the backfill's way in). Nothing is spooled; what could not be pushed is returned."""
        outcome = Outcome()
        parts = (part for entry in entries for part in split_entry(entry, self.settings.max_line_bytes))
        for chunk in self._chunks(parts):
            outcome += self._send(batch_of(chunk))
        return outcome

    def _send(self, batch: Batch, attempts: int | None = None, deadline: float | None = None) -> Outcome:
        """Push one batch with retries."""
        attempts = self.backoff.retries + 1 if attempts is None else attempts
        if not self._metadata and batch.has_metadata:  # spooled, or batched before the fallback
            batch = batch_of([e.without_metadata() for e in batch.entries])
        body = batch.encode()
        result = None
        for attempt in range(attempts):
            if self._deadline is not None:  # closing: leave time to spool what does not go out
                closing = self._deadline - SPOOL_MARGIN
                deadline = closing if deadline is None else min(deadline, closing)
            timeout = self.settings.push_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    break
            if attempt and self.metrics is not None:
                self.metrics.retried()
            started = time.perf_counter()
            result = self.client.push(body, timeout=timeout)
            if self.metrics is not None:
                self.metrics.pushed(result.status, time.perf_counter() - started, len(body))
            if result.ok:
                self.stats.succeeded(len(batch))
                if self.metrics is not None:
                    self.metrics.sent(len(batch), batch.bytes)
                return Outcome(sent=len(batch))
            if result.status == 413 and len(batch) > 1:
                self._record(result, batch, reachable=True)
                return self._send_halves(batch, attempts, deadline)
            if not result.retryable:
                if (result.status == 400 and self.settings.structured_metadata == "auto"
                        and batch.has_metadata and METADATA_DISALLOWED.search(result.message)):
                    return self._without_metadata(batch, result, attempts, deadline)
                return self._refused(batch, result)
            self._record(result, batch, reachable=False)
            if attempt == attempts - 1:
                break
            delay = self.backoff.delay(attempt)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            if deadline is not None and time.monotonic() + delay >= deadline:
                break
            self._pause(delay)
        if result is not None and result.status == 429 and len(batch) > 1:
            # A push larger than Loki's burst can never pass, however often it is retried.
            return self._send_halves(batch, attempts, deadline)
        return Outcome(undelivered=list(batch.entries), errors=[result.describe()] if result else [])

    def _send_halves(self, batch: Batch, attempts: int, deadline: float | None) -> Outcome:
        first, second = batch.split()
        outcome = self._send(first, attempts, deadline)
        outcome += self._send(second, attempts, deadline)
        return outcome

    def _without_metadata(self, batch: Batch, result: PushResult, attempts: int,
                          deadline: float | None) -> Outcome:
        """Loki does not take structured metadata: from now on send none, and resend, without it,
        exactly the entries that carried it (Loki stored the others of the push)."""
        self._metadata_refused(result.message)
        plain = [e for e in batch.entries if not e.metadata]
        outcome = Outcome()
        if plain:
            rest = "\n".join(line for line in result.message.splitlines() if not METADATA_DISALLOWED.search(line))
            failed = rejected_entries(rest, len(plain)) if rest.strip() else 0
            if failed:
                self.stats.add(entries_failed=failed)
            if failed < len(plain):
                self.stats.succeeded(len(plain) - failed)
            outcome = Outcome(sent=len(plain) - failed, failed=failed)
        outcome += self._send(batch_of([e.without_metadata() for e in batch.entries if e.metadata]),
                              attempts, deadline)
        return outcome

    def _metadata_refused(self, message: str | None) -> None:
        if not self._metadata:
            return
        self._metadata = False
        self.stats.structured_metadata = "refused"
        if message is not None:
            log.warning("Loki does not accept structured metadata (%s); sending entries without it "
                        "(LLM_PROXY_LOKI_STRUCTURED_METADATA=auto)", message.splitlines()[0][:300])

    def _refused(self, batch: Batch, result: PushResult) -> Outcome:
        """Loki said no (4xx): it names what it refused and has stored the rest."""
        failed = rejected_entries(result.message, len(batch)) if result.status == 400 else len(batch)
        self._record(result, batch, reachable=True)
        self.stats.add(entries_failed=failed)
        if failed < len(batch):
            self.stats.succeeded(len(batch) - failed)
        if self.metrics is not None:
            # Loki names the refused entries only in prose: bytes are the batch's average per entry.
            per_entry = batch.bytes / len(batch)
            self.metrics.dropped(drop_reason(result.status, result.message), failed, round(failed * per_entry))
            if failed < len(batch):
                self.metrics.sent(len(batch) - failed, round((len(batch) - failed) * per_entry))
        return Outcome(sent=len(batch) - failed, failed=failed, errors=[result.describe()])

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

    def _count_drop(self, reason: str, entries: list[LokiEntry]) -> None:
        if self.metrics is not None:
            self.metrics.dropped(reason, len(entries), sum(e.size for e in entries))

    def oldest_pending_ns(self) -> int | None:
        """Timestamp of the oldest entry not yet in Loki: queued, being batched, in flight or
        spooled (an estimate for the metrics: the queue's head is its oldest in practice)."""
        candidates = []
        with self._queue.mutex:
            head = self._queue.queue[0] if self._queue.queue else None
        if isinstance(head, LokiEntry):
            candidates.append(head.ts_ns)
        batch = self._batch
        if batch:
            candidates.append(min(e.ts_ns for e in batch.entries))
        if self._inflight is not None and not self._inflight.done() and self._inflight_oldest_ns:
            candidates.append(self._inflight_oldest_ns)
        if self.spool is not None:
            files = self.spool.files()
            if files:
                candidates.append(files[0].oldest_ns)
        return min(candidates) if candidates else None

    def _publish_metrics(self) -> None:
        spooled = self.spool.usage() if self.spool is not None else (0, 0)
        self.metrics.exporter_state(self.queue_depth, self._queued_bytes, spooled[0], spooled[1],
                                    self.oldest_pending_ns())

    def _publish(self, force: bool = False) -> None:
        if self.board is None and self.metrics is None:
            return
        now = time.monotonic()
        if not force and now - self._last_publish < PUBLISH_INTERVAL:
            self._publish_due = True
            return
        self._last_publish = now
        self._publish_due = False
        try:
            if self.board is not None:
                self.board.publish(os.getpid(), self.snapshot())
            if self.metrics is not None:
                self._publish_metrics()
        except OSError as exc:
            self._warn.log("cannot publish Loki stats: %s", exc)
