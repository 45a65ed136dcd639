"""How busy each worker's request threads are, so that a full worker shows instead of hanging.

A gthread worker serves every request on one of its ``LLM_PROXY_THREADS`` threads, and an SSE
stream holds its thread for as long as it lasts. Once every thread of a worker is busy, the next
request that worker takes waits in gunicorn's queue for a free thread, and nothing says so.

:class:`Saturation` counts the busy threads of one worker: gunicorn's ``pre_request`` and
``post_request`` hooks call :meth:`~Saturation.enter` and :meth:`~Saturation.leave` around every
request (a lock and two integers). Its monitor thread wakes once a second: it logs a warning at
most once a minute while every thread is busy, and publishes the worker's numbers to the run
directory so that ``/health``, whichever worker answers it, sums all workers
(:func:`summarize`), on the :class:`llmproxy.loki.stats.StatsBoard` the exporter uses too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from llmproxy.loki.stats import StatsBoard, pid_alive

log = logging.getLogger("llmproxy.saturation")

WARN_INTERVAL = 60.0
TICK = 1.0


class Saturation:
    """The request threads of one worker: how many exist, how many are busy, since when all.

    ``waiting`` is a callable answering how many requests are queued for a thread right now
    (gunicorn's pool queue), or None when that is not known.
    """

    def __init__(self, threads: int, directory: Path | None = None,
                 waiting: Callable[[], int] | None = None, warn_interval: float = WARN_INTERVAL):
        self.threads = threads
        self.board = StatsBoard(directory, "threads") if directory is not None else None
        self.warn_interval = warn_interval
        self._waiting = waiting
        self._lock = threading.Lock()
        self.busy = 0
        self.peak = 0                         # most threads busy at once since the worker started
        self._saturated_total = 0.0           # seconds with every thread busy, ended periods
        self._full_since: float | None = None
        self._last_warning = float("-inf")
        self._published: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the request path: keep it cheap ---

    def enter(self) -> None:
        """A request thread starts serving a request."""
        with self._lock:
            self.busy += 1
            if self.busy > self.peak:
                self.peak = self.busy
            if self.busy >= self.threads and self._full_since is None:
                self._full_since = time.monotonic()

    def leave(self) -> None:
        """A request thread is done with its request (the response is sent or abandoned)."""
        with self._lock:
            self.busy -= 1
            if self._full_since is not None and self.busy < self.threads:
                self._saturated_total += time.monotonic() - self._full_since
                self._full_since = None

    def set_waiting(self, waiting: Callable[[], int] | None) -> None:
        """Tell how to count the requests queued for a thread (known once the worker runs)."""
        self._waiting = waiting

    # --- reading ---

    def snapshot(self) -> dict:
        """This worker's numbers: ``threads``, ``busy``, ``waiting`` (None if unknown), ``peak``,
        ``saturated`` (every thread busy now), ``saturated_seconds`` (total, a counter)."""
        now = time.monotonic()
        with self._lock:
            busy, peak, since, total = self.busy, self.peak, self._full_since, self._saturated_total
        if since is not None:
            total += now - since
        return {"threads": self.threads, "busy": busy, "waiting": self._queued(), "peak": peak,
                "saturated": since is not None, "saturated_seconds": round(total, 3)}

    def saturated_for(self) -> float | None:
        """Seconds since every thread became busy, or None while one is free."""
        since = self._full_since
        return None if since is None else time.monotonic() - since

    def _queued(self) -> int | None:
        if self._waiting is None:
            return None
        try:
            return int(self._waiting())
        except Exception:  # a number for health must never break a request
            return None

    # --- the monitor thread ---

    def start(self) -> None:
        """Start the monitor thread (in the worker, after fork)."""
        self._thread = threading.Thread(target=self._run, name="llm-proxy-saturation", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the monitor thread and withdraw this worker's file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TICK * 2)
        if self.board is not None:
            self.board.withdraw(os.getpid())

    def _run(self) -> None:
        self.tick()  # publish at once: /health counts this worker from its first second
        while not self._stop.wait(TICK):
            self.tick()

    def tick(self, now: float | None = None) -> None:
        """What the monitor does once a second: warn while saturated, publish when changed."""
        now = time.monotonic() if now is None else now
        doc = self.snapshot()
        if doc["saturated"] and now - self._last_warning >= self.warn_interval:
            self._last_warning = now
            waiting = "" if doc["waiting"] is None else f", {doc['waiting']} requests waiting for one"
            log.warning("all %d request threads of worker %d are busy (for %.0fs%s): new requests wait; "
                        "raise LLM_PROXY_THREADS or LLM_PROXY_WORKERS (docs/performance.rst)",
                        self.threads, os.getpid(), self.saturated_for() or 0.0, waiting)
        if self.board is not None:
            current = {k: v for k, v in doc.items() if k != "saturated_seconds"}
            if current != self._published or doc["saturated"]:
                self._publish(doc)
                self._published = current

    def _publish(self, doc: dict) -> None:
        try:
            self.board.publish(os.getpid(), doc)
        except OSError:  # the run dir is gone or full: /health then shows this worker alone
            pass

    def read_others(self) -> list[dict]:
        """The numbers the other live workers of this server published."""
        if self.board is None:
            return []
        return [doc for doc in self.board.read()
                if doc.get("pid") != os.getpid() and pid_alive(doc.get("pid", 0))]


def summarize(own: dict, others: list[dict]) -> dict:
    """The request threads of all workers, for ``/health``: this worker's live numbers plus
    what the others published (at most a second old)."""
    docs = [own] + others
    waiting = [d.get("waiting") for d in docs]
    return {
        "threads": sum(d.get("threads", 0) for d in docs),
        "busy": sum(d.get("busy", 0) for d in docs),
        "waiting": None if any(w is None for w in waiting) else sum(waiting),
        "saturated_workers": sum(1 for d in docs if d.get("saturated")),
        "saturated_seconds": round(sum(d.get("saturated_seconds", 0.0) for d in docs), 3),
        "workers": len(docs),
    }


def pool_queue(worker) -> Callable[[], int] | None:
    """How many requests wait for a thread of a gthread worker: the length of its
    ThreadPoolExecutor's work queue (gunicorn hands each ready connection to ``tpool.submit``).
    None for another worker class."""
    work_queue = getattr(getattr(worker, "tpool", None), "_work_queue", None)
    return work_queue.qsize if work_queue is not None and hasattr(work_queue, "qsize") else None
