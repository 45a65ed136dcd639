"""Exporter numbers across gunicorn workers, for ``/health/loki``.

Like prometheus_client's multiprocess mode: each worker writes its own numbers to its own small
file (atomically, at most once a second), and whoever answers ``/health/loki`` sums the files.
No worker ever asks another. Counters of workers that have exited still count; their queue does
not.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

COUNTERS = ("entries_sent", "entries_failed", "entries_dropped", "batches_sent", "entries_recovered")
DEGRADED_WINDOW = 300.0  # errors this recent make an otherwise working exporter "degraded"


@dataclass
class ExporterStats:
    """One worker's exporter numbers. Updated under ``lock``."""

    entries_sent: int = 0
    entries_failed: int = 0
    entries_dropped: int = 0
    batches_sent: int = 0
    entries_recovered: int = 0          # pushed from the files for a worker that died (recovery.py)
    queue_depth: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    last_success_time: float | None = None
    failing_since: float | None = None  # first error since Loki last answered
    structured_metadata: str = "on"     # on | off (configured) | refused (by Loki, in auto)

    def __post_init__(self):
        self.lock = threading.Lock()

    def snapshot(self) -> dict:
        with self.lock:
            doc = asdict(self)
        return doc

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def answered(self) -> None:
        """Loki answered (a push was taken, or it is at least reachable)."""
        with self.lock:
            self.failing_since = None

    def succeeded(self, entries: int) -> None:
        with self.lock:
            self.entries_sent += entries
            self.batches_sent += 1
            self.last_success_time = time.time()
            self.failing_since = None

    def error(self, message: str, reachable: bool = False) -> None:
        """A push or probe failed; ``reachable`` when Loki answered but refused entries (4xx)."""
        now = time.time()
        with self.lock:
            self.last_error = message
            self.last_error_time = now
            if reachable:
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = now


def worker_status(snapshot: dict, failing_after: float, now: float | None = None) -> str:
    """``failing``: no answer from Loki since an error, for longer than ``failing_after``;
    ``degraded``: recent errors while pushes still succeed; else ``ok``."""
    now = now or time.time()
    since = snapshot.get("failing_since")
    if since is not None and now - since > failing_after:
        return "failing"
    last_error = snapshot.get("last_error_time")
    if last_error is not None and now - last_error < DEGRADED_WINDOW:
        return "degraded"
    return "ok"


_SEVERITY = {"ok": 0, "degraded": 1, "failing": 2}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StatsBoard:
    """The directory where the workers of one gunicorn master publish their numbers: one file
    per worker, ``{prefix}-{pid}.json``, replaced atomically. The exporter's numbers are
    ``loki-*``; the request threads' (llmproxy/server/saturation.py) are ``threads-*``."""

    def __init__(self, directory: Path, prefix: str = "loki"):
        self.directory = Path(directory)
        self.prefix = prefix

    def _path(self, pid: int) -> Path:
        return self.directory / f"{self.prefix}-{pid}.json"

    def publish(self, pid: int, snapshot: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(pid)
        tmp = path.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_text(json.dumps({**snapshot, "pid": pid, "updated": time.time()}))
        os.replace(tmp, path)

    def read(self) -> list[dict]:
        docs = []
        for path in self.directory.glob(f"{self.prefix}-*.json"):
            try:
                docs.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # a worker replacing its file right now
                continue
        return docs

    def withdraw(self, pid: int) -> None:
        """Remove a worker's file (it is stopping); gone already is fine."""
        try:
            self._path(pid).unlink()
        except OSError:
            pass


def summarize(own: dict, own_pid: int, others: list[dict], failing_after: float) -> dict:
    """Sum one worker's live numbers with the other workers' published ones."""
    docs = [own] + [d for d in others if d.get("pid") != own_pid]
    live = [own] + [d for d in docs[1:] if pid_alive(d.get("pid", 0))]
    total = {name: sum(d.get(name, 0) for d in docs) for name in COUNTERS}
    total["queue_depth"] = sum(d.get("queue_depth", 0) for d in live)
    status = max((worker_status(d, failing_after) for d in live), key=_SEVERITY.__getitem__)
    errors = [d for d in docs if d.get("last_error_time")]
    newest_error = max(errors, key=lambda d: d["last_error_time"]) if errors else {}
    successes = [d["last_success_time"] for d in docs if d.get("last_success_time")]
    failing = [d["failing_since"] for d in live if d.get("failing_since")]
    return {
        "status": status,
        **total,
        "last_error": newest_error.get("last_error"),
        "last_error_time": _iso(newest_error.get("last_error_time")),
        "last_success_time": _iso(max(successes) if successes else None),
        "failing_since": _iso(min(failing) if failing else None),  # first error Loki has not answered since
        "workers": len(live),
        # one worker that found Loki refusing it is enough: the others follow on their next push
        "structured_metadata": "refused" if any(d.get("structured_metadata") == "refused" for d in docs)
        else own.get("structured_metadata", "on"),
    }


def disabled_summary() -> dict:
    return {"status": "disabled", **{name: 0 for name in COUNTERS}, "queue_depth": 0, "last_error": None,
            "last_error_time": None, "last_success_time": None, "failing_since": None, "workers": 0, "spooled_entries": 0,
            "spool_bytes": 0, "structured_metadata": "off"}
