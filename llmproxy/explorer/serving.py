"""The explorer under gunicorn, a server of its own beside the proxy's.

One worker process with threads serves the pages (a streamed session page holds a thread while
it is read). The catalog is kept up to date by a separate indexer process started when gunicorn
is ready and stopped with it (:mod:`~llmproxy.explorer.indexing`): cataloguing parses JSON for
as long as there is new log, and in a process of its own, at a lower priority, it takes no
time from the pages' interpreter, nor from the proxy's workers.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from llmproxy.settings import Settings, local_url


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url(settings: Settings) -> str:
    """Where a browser on this machine opens the explorer (with its token, when there is one)."""
    base = local_url(settings.explorer.host, settings.explorer.port) + "/sessions"
    return base + (f"?token={settings.explorer.token}" if settings.explorer.token else "")


class ExplorerServer(BaseApplication):
    """gunicorn running :func:`llmproxy.explorer.app.create_app`, with the indexer beside it."""

    def __init__(self, settings: Settings, indexer: bool = True, on_ready=None):
        self.settings = settings
        self.indexer = indexer
        self.on_ready = on_ready
        self._indexer_process: Any = None
        super().__init__()

    def options(self) -> dict[str, Any]:
        explorer = self.settings.explorer
        return {
            "bind": [bind_address(explorer.host, explorer.port)],
            "workers": 1,
            "worker_class": "gthread",
            "threads": 16,
            # gthread's main loop tells the arbiter it is alive while a thread streams a page.
            "timeout": 60,
            "graceful_timeout": 10,
            "keepalive": 30,
            "proc_name": "llm-proxy-explorer",
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": self.settings.log_level,
            # Not the proxy's: gunicorn ≥ 25 opens a control socket at one path per user.
            "control_socket_disable": True,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
        }

    def load_config(self) -> None:
        for name, value in self.options().items():
            self.cfg.set(name, value)

    def load(self):
        from llmproxy.explorer.app import create_app

        return create_app(self.settings)

    def _when_ready(self, server) -> None:
        if self.indexer:
            from llmproxy.explorer import indexing

            self._indexer_process = indexing.start_process(self.settings)
        server.log.info("llm-proxy explorer at %s (log dir %s)", url(self.settings).split("?")[0],
                        self.settings.log_dir)
        if self.on_ready is not None:
            self.on_ready()

    def _on_exit(self, server) -> None:
        if self._indexer_process is not None:
            from llmproxy.explorer import indexing

            indexing.stop_process(self._indexer_process)
