"""Per-worker state, created in one place after fork and handed to the app.

A gunicorn worker imports :mod:`llmproxy.wsgi` after it is forked; :func:`create_app` builds a
:class:`Runtime` there. Threads are started by :meth:`Runtime.start` (gunicorn's
``post_worker_init``) and flushed by :meth:`Runtime.close` (``worker_exit``).
"""

from __future__ import annotations

import logging
import os
import shutil

from llmproxy import __version__, forwarding
from llmproxy.capture import ExchangeLogger
from llmproxy.entries import EntryBuilder
from llmproxy.filelog import FileLogger
from llmproxy.sessionlog import FileHealth, SessionLog
from llmproxy.sessions import SessionStore
from llmproxy.settings import Settings

log = logging.getLogger("llmproxy")

EXTENSION_KEY = "llmproxy"


class Runtime:
    """Everything one worker process owns."""

    def __init__(self, settings: Settings, logger: ExchangeLogger | None = None):
        self.settings = settings
        self.upstream = forwarding.new_session(settings.threads)
        self.file_health = FileHealth()
        self.sessions = SessionStore(settings.log_dir / "sessions.db")
        self.file_logger = FileLogger(settings.log_dir)
        self.logger: ExchangeLogger = logger or SessionLog(
            self.sessions, self.file_logger, EntryBuilder(settings.machine_id), self.file_health)
        self.started = False

    @staticmethod
    def of(app) -> "Runtime | None":
        """The runtime of a Flask app built by :func:`llmproxy.app.create_app`, if any."""
        extensions = getattr(app, "extensions", None)
        return extensions.get(EXTENSION_KEY) if extensions else None

    def start(self) -> None:
        """Start the worker's background threads (after fork: a thread does not survive it)."""
        self.started = True

    def close(self) -> None:
        """Flush and release what the worker holds. Called once, from ``worker_exit``."""
        self.started = False
        self.upstream.close()

    def health(self) -> dict:
        return {"status": "ok", "version": __version__, "file_logging": self.file_health.status}


def prepare_run_dir(settings: Settings) -> None:
    """Remove runtime files left by earlier servers that are no longer running."""
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for child in run_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not _pid_alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
