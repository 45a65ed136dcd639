"""Per-worker state, created in one place after fork and handed to the app.

A gunicorn worker imports :mod:`llmproxy.wsgi` after it is forked; :func:`create_app` builds a
:class:`Runtime` there. Threads are started by :meth:`Runtime.start` (gunicorn's
``post_worker_init``) and flushed by :meth:`Runtime.close` (``worker_exit``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from urllib.parse import urlsplit

from llmproxy import __version__, providers
from llmproxy.loki import LokiExporter
from llmproxy.loki.labels import LabelMaker
from llmproxy.loki.ledger import Ledger
from llmproxy.loki.recovery import Recovery
from llmproxy.loki.stats import StatsBoard, disabled_summary, pid_alive, summarize
from llmproxy.proxy import forwarding
from llmproxy.proxy.capture import ExchangeLogger
from llmproxy.proxy.websocket import RelayHub
from llmproxy.record.entries import EntryBuilder
from llmproxy.record.filelog import FileLogger
from llmproxy.record.multiwriter import MultiWriter
from llmproxy.record.sessionlog import FileHealth, SessionLog
from llmproxy.record.sessions import SessionStore
from llmproxy.record.websocket_log import MessageLog
from llmproxy.server.metrics import MULTIPROC_ENV, Metrics
from llmproxy.server.saturation import Saturation
from llmproxy.server.saturation import summarize as summarize_threads
from llmproxy.settings import Settings, redact_url

log = logging.getLogger("llmproxy")

EXTENSION_KEY = "llmproxy"


class Runtime:
    """Everything one worker process owns."""

    def __init__(self, settings: Settings, logger: ExchangeLogger | None = None):
        self.settings = settings
        self.upstream = forwarding.new_session(settings.threads)
        self.signers = providers.signers(settings)  # the APIs whose calls the proxy signs (Bedrock)
        self.file_health = FileHealth(shared=shared_file("file-logging"))
        self.sessions = SessionStore(settings.log_dir / "sessions.db")
        self.file_logger = FileLogger(settings.log_dir)
        self.board = StatsBoard(settings.run_dir / str(os.getppid()))
        self.saturation = Saturation(settings.threads, self.board.directory)
        self.relays = RelayHub()                  # open WebSockets: one thread moves their bytes
        self.metrics = Metrics(self.saturation, lambda: self.relays.open_count,
                               *loki_labels(settings))
        labels = LabelMaker(settings.loki.environment, settings.machine_id)
        self.exporter = self.recovery = None
        if settings.loki.enabled:
            ledger = Ledger(settings.loki.spool_dir / "ledgers") if settings.loki.spool_dir else None
            self.exporter = LokiExporter(settings.loki, self.board, metrics=self.metrics, ledger=ledger)
            if ledger is not None:  # a dead worker's entries: pushed from the files by a live one
                self.recovery = Recovery(self.exporter, settings.log_dir, labels, self.sessions.recover)
        self.writer = MultiWriter(self.file_logger, self.exporter, labels)
        self.logger: ExchangeLogger = logger or SessionLog(
            self.sessions, self.writer, EntryBuilder(settings.machine_id), self.file_health)
        self.ws_log = MessageLog(self.logger)     # what the WebSockets carried is written here
        self.stopping_since: float | None = None  # set when SIGTERM arrives (gunicorn_config)

    @staticmethod
    def of(app) -> "Runtime | None":
        """The runtime of a Flask app built by :func:`llmproxy.server.app.create_app`, if any."""
        extensions = getattr(app, "extensions", None)
        return extensions.get(EXTENSION_KEY) if extensions else None

    def start(self) -> None:
        """Start the worker's background threads (after fork: a thread does not survive it)."""
        self.saturation.start()
        self.metrics.start()
        if self.exporter is not None:
            self.exporter.start()
        if self.recovery is not None:
            self.recovery.start()

    def close(self, flush_budget: float | None = None) -> None:
        """Flush and release what the worker holds. Called once, from ``worker_exit``;
        ``flush_budget`` (seconds) defaults to LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT. Open WebSockets
        are closed first, so that what they carried reaches the logs before the Loki flush."""
        self.relays.close()
        self.ws_log.close()
        self.metrics.close()
        if self.recovery is not None:
            self.recovery.close()
        if self.exporter is not None:
            self.exporter.close(flush_budget)
        self.saturation.close()
        self.upstream.close()
        self.sessions.close()

    def loki_health(self) -> tuple[dict, int]:
        """``/health/loki``: the exporter numbers of all workers, and the HTTP status to answer."""
        if self.exporter is None:
            return disabled_summary(), 200
        summary = summarize(self.exporter.snapshot(), os.getpid(), self.board.read(),
                            self.exporter.failing_after)
        spool = self.exporter.spool
        summary["spooled_entries"], summary["spool_bytes"] = spool.usage() if spool else (0, 0)
        return summary, 503 if summary["status"] == "failing" else 200

    def health(self) -> dict:
        threads = summarize_threads(self.saturation.snapshot(), self.saturation.read_others())
        return {"status": "ok", "version": __version__, "file_logging": self.file_health.status,
                "file_logging_error": self.file_health.last_error if self.file_health.failing else None,
                "threads": threads}


def shared_file(name: str) -> str | None:
    """A file the workers of this server share on tmpfs (beside their metric files), or None
    outside gunicorn."""
    directory = os.environ.get(MULTIPROC_ENV)
    return os.path.join(directory, name) if directory else None


def loki_labels(settings: Settings) -> tuple[str, str]:
    """``host`` and ``tenant`` of the exporter's metrics, as Alloy labels them (no credentials)."""
    if not settings.loki.enabled:
        return "", ""
    parts = urlsplit(settings.loki.push_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return (f"{host}:{parts.port}" if parts.port else host), settings.loki.tenant_id or ""


def describe_destinations(settings: Settings) -> list[str]:
    """The start-up lines saying where entries go."""
    lines = [f"session logs: {settings.log_dir}"]
    loki = settings.loki
    if loki.enabled:
        lines.append(f"Loki export: {redact_url(loki.push_url)} (batches of {loki.batch_size} entries / "
                     f"{loki.batch_bytes} bytes / {loki.batch_wait:g}s, gzip {'on' if loki.use_gzip else 'off'}, "
                     f"environment={loki.environment}, machine={settings.machine_id})")
    else:
        lines.append("Loki export: disabled (LLM_PROXY_LOKI_ENABLED=false)")
    return lines


def prepare_run_dir(settings: Settings) -> None:
    """Before workers start: create sessions.db (WAL, tables) so that workers never race to, and
    remove runtime files left by earlier servers that are no longer running."""
    store = SessionStore(settings.log_dir / "sessions.db")
    try:
        store.prepare()
    except (OSError, sqlite3.Error) as exc:  # the workers will report it on /health
        log.error("cannot prepare %s: %s", store.path, exc)
    finally:
        store.close()
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for child in run_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not pid_alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)
