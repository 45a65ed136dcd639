"""Recovery of a dead worker's entries: what its ledger names, pushed from the session files.

A worker that dies without its ``worker_exit`` (``kill -9``, the kernel's OOM killer, systemd's
``MemoryMax``, gunicorn's timeout, a segfault) takes its memory queue with it; its ledger
(:mod:`llmproxy.loki.ledger`) stays on disk, locked by nobody. Every worker's recovery thread
looks at the ledgers every :data:`SCAN_INTERVAL` seconds; the first to find one unlocked twice
(so that a push the dead worker had sent has reached Loki) claims it and, like ``loki-backfill``
but only for those entries:

1. lets ``sessions.db`` take out lines the dead worker wrote but never committed
   (:mod:`llmproxy.record.journal`);
2. reads the entries the ledger names from their session files;
3. leaves out those in the dead worker's spool files (replayed in their turn) and those Loki
   already holds (asked per session: Loki 3 does not reliably deduplicate a resend);
4. pushes the rest, counts them (``entries_recovered`` in ``/health/loki``,
   ``loki_write_recovered_entries_total``) and says in one log line what it found.

When Loki cannot be reached the ledger stays, and the next scan tries again. When Loki refuses
queries (a token that may only push), the entries are pushed without asking, and Loki's own
deduplication is all that stands between a push the dead worker had sent and a second copy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.loki.backfill import Backfill
from llmproxy.loki.client import QueryRefused
from llmproxy.loki.exporter import LokiExporter
from llmproxy.loki.labels import APP_LABEL, LabelMaker
from llmproxy.loki.ledger import claim, dead_ledgers, read_ledger
from llmproxy.record import logtree

log = logging.getLogger("llmproxy.loki")

SCAN_INTERVAL = 2.0
GRACE = 2.0  # a ledger is taken up only after it was found unlocked this long ago


@dataclass
class Recovered:
    """What became of one dead worker's unsettled entries."""

    pid: int
    entries: int = 0       # named by its ledger and not settled
    sessions: int = 0
    pushed: int = 0        # pushed now (parts of split entries counted one by one, as Loki sees them)
    present: int = 0       # parts Loki held already
    spooled: int = 0       # parts in its spool files
    refused: int = 0       # parts Loki refused
    unwritten: int = 0     # entries not in any session file (a full disk, or a request that never committed)
    unasked: bool = False  # Loki refused the query: pushed without asking

    def describe(self) -> str:
        """The one log line of the event. Lines Loki takes in parts are counted as Loki counts
        them, part by part, from the files on."""
        found = [f"{self.pushed} pushed", f"{self.present} already in Loki"]
        if self.spooled:
            found.append(f"{self.spooled} in its spool")
        if self.refused:
            found.append(f"{self.refused} refused by Loki")
        unwritten = f"; {self.unwritten} were in no session file" if self.unwritten else ""
        return (f"Loki: worker {self.pid} died holding {self.entries} entries ({self.sessions} sessions) "
                f"Loki had not confirmed{unwritten}; from the session files: {', '.join(found)}"
                + (" (Loki refused the query: pushed without asking)" if self.unasked else ""))


class Recovery:
    """The recovery thread of one worker."""

    def __init__(self, exporter: LokiExporter, log_dir: Path, labels: LabelMaker,
                 before_reading: Callable[[], None] = lambda: None, interval: float = SCAN_INTERVAL):
        self.exporter = exporter
        self.log_dir = Path(log_dir)
        self.labels = labels
        self.before_reading = before_reading
        self.interval = interval
        self._seen: dict[Path, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backfill: Backfill | None = None
        self._warn = RateLimitedLog(log, logging.WARNING, 60.0)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loki-recovery", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._backfill is not None:
            self._backfill.exporter.client.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # the thread must outlive any surprise; the ledgers stay
                log.exception("Loki recovery error")

    def scan(self, now: float | None = None) -> list[Recovered]:
        """One look at the ledgers: recover those found unlocked :data:`GRACE` seconds ago."""
        ledger = self.exporter.ledger
        if ledger is None:
            return []
        now = time.monotonic() if now is None else now
        done = []
        present = set()
        for path, pid in dead_ledgers(ledger.directory, ledger.path):
            fd = claim(path)
            if fd is None:
                continue
            present.add(path)
            try:
                first = self._seen.setdefault(path, now)
                if now - first < GRACE:
                    continue
                recovered = self._recover(path, pid, fd)
                if recovered is not None:
                    done.append(recovered)
                    present.discard(path)
            finally:
                os.close(fd)
        self._seen = {p: t for p, t in self._seen.items() if p in present}
        return done

    def _recover(self, path: Path, pid: int, fd: int) -> Recovered | None:
        """Push what the claimed ledger names and Loki lacks; None if that has to wait."""
        data = b""
        while chunk := os.pread(fd, 1 << 20, len(data)):
            data += chunk
        unsettled = read_ledger(data, pid)
        result = Recovered(pid, entries=len(unsettled.entries))
        if unsettled.entries:
            self.before_reading()
            wanted: dict[str, set[int]] = defaultdict(set)
            for ts, session_path in unsettled.entries:
                wanted[Path(session_path).name.removesuffix(logtree.PLAIN)].add(ts)
            result.sessions = len(wanted)
            spool = self.exporter.spool
            spooled = spool.entries_of(pid) if spool is not None else set()
            if not self._push(wanted, spooled, result):
                return None
        path.unlink(missing_ok=True)
        if result.entries:
            log.warning(result.describe())
        return result

    def _push(self, wanted: dict[str, set[int]], spooled: set, result: Recovered) -> bool:
        """Push what Loki lacks of the wanted entries (session id → timestamps), as the backfill
        does: in time order across the sessions. False when Loki did not answer: try again."""
        found = {}
        for session in wanted:
            files = logtree.find_session(self.log_dir, session)
            if files is None:  # never written (a full disk), or a new session taken back
                result.unwritten += len(wanted[session])
            else:
                found[session] = files
        if not found:
            return True
        backfill = self._backfill or Backfill(self.exporter.settings, self.labels)
        self._backfill = backfill
        waiting = False
        try:
            result.unasked = not self._can_ask(backfill)
            backfill.check = not result.unasked
            for report in backfill.run(found.values(), lambda files, ts: ts in wanted[files.session], spooled):
                if report.failure or report.undelivered:
                    self._warn.log("Loki recovery of worker %d's entries waits: %s", result.pid,
                                   report.failure or "; ".join(report.errors[:1]) or "Loki did not take them")
                    waiting = True
                if report.pushed:  # counted at once: what must wait does not undo these
                    self.exporter.stats.add(entries_sent=report.pushed, entries_recovered=report.pushed)
                    if self.exporter.metrics is not None:
                        self.exporter.metrics.recovered(report.pushed, report.pushed_bytes)
                result.unwritten += len(wanted[report.session]) - report.read
                result.pushed += report.pushed
                result.present += report.present
                result.spooled += report.excluded
                result.refused += len(report.refused)
        except (RuntimeError, ValueError, OSError) as exc:
            self._warn.log("Loki recovery of worker %d's entries waits: %s", result.pid, exc)
            return False
        return not waiting

    def _can_ask(self, backfill: Backfill) -> bool:
        """Whether Loki answers queries (a token that may only push is refused them)."""
        now = time.time_ns()
        try:
            backfill.exporter.client.query_range(f'{{app="{APP_LABEL}"}}', now - 10**9, now, limit=1)
        except QueryRefused:
            return False
        return True
