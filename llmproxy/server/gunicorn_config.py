"""Gunicorn settings and server hooks for llm-proxy.

``llm-proxy serve`` loads this module (``-c python:llmproxy.server.gunicorn_config``); the top-level
``gunicorn.conf.py`` of a checkout only imports it. Names here are gunicorn settings; the hooks
hand lifecycle work to :mod:`llmproxy.server.runtime`.
"""

import ctypes
import gc
import logging
import os
import resource
import shutil
import signal
import time

from llmproxy import pricing
from llmproxy.common import masking
from llmproxy.proxy import forwarding, views
from llmproxy.server import metrics, presence
from llmproxy.server.runtime import Runtime, describe_destinations, prepare_run_dir
from llmproxy.server.saturation import Saturation, pool_queue
from llmproxy.settings import load_settings_or_exit

_settings = load_settings_or_exit(credentials=True)


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads malloc arenas of their own (up to 8 per core); with 32 threads each
    copying megabyte request bodies, freed memory stays spread over them and a worker's RSS
    grows by tens of MB. Two arenas is the usual cure for threaded Python servers. Set here, in
    the master before it forks, so every worker inherits it; MALLOC_ARENA_MAX, if set, wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass


_limit_malloc_arenas()


def _raise_open_files_limit() -> None:
    """Every open WebSocket holds two descriptors of its worker for as long as it lives; the
    usual soft limit of 1024 would stop a worker at about 500 of them. Raise the soft limit to
    the hard one, as servers that hold many connections do; workers inherit it."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a hard limit the kernel refuses as soft (macOS): keep it
        pass


_raise_open_files_limit()

wsgi_app = "llmproxy.wsgi:app"
_host = f"[{_settings.host}]" if ":" in _settings.host else _settings.host
bind = [f"{_host}:{_settings.port}"]
# gthread, serving a busy kept-alive connection without a round trip through its main loop.
worker_class = "llmproxy.proxy.worker.ProxyWorker"
workers = _settings.workers
threads = _settings.threads
# In gthread the main loop tells the arbiter it is alive while request threads work, so this
# does not bound a request: an SSE stream may run for many minutes.
timeout = 60
# worker_exit flushes Loki within LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT; the arbiter must not SIGKILL
# the worker before that budget is spent.
graceful_timeout = _settings.graceful_timeout
# Clients (Claude Code, SDKs) reuse connections between calls.
keepalive = 30
proc_name = "llm-proxy"
# Each worker's main loop touches a heartbeat file on every event; on a disk-backed /tmp that
# is a journalled metadata write per request. gunicorn's docs suggest tmpfs.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
# gunicorn ≥ 25 opens a control socket at one fixed path per user; two proxies on a host (or a
# test run beside a live proxy) would fight over it, and llm-proxy does not use it.
control_socket_disable = True
errorlog = "-"
loglevel = _settings.log_level
accesslog = "-"
logger_class = "llmproxy.server.accesslog.AccessLogger"  # gunicorn's, computing only the atoms named
# Path without the query string: a query may carry a key (?key=…), and nothing secret is logged.
# The app puts the provider and the session id into the WSGI environ ("-" for other paths).
access_log_format = ('%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms '
                     f'provider=%({{{views.PROVIDER_KEY}}}e)s session=%({{{views.SESSION_KEY}}}e)s')


# Codex sends a ``session_id`` header. gunicorn's default drops header names with underscores;
# keep them, and tell the app which names had them (WSGI folds ``-`` and ``_`` together).
header_map = "dangerous"


def pre_request(worker, req):
    _saturation.enter()
    forwarding.underscore_headers.names = {name for name, _ in req.headers if "_" in name}


def post_request(worker, req, environ, resp):
    _saturation.leave()


def on_starting(server):
    # llm-proxy's own messages go where gunicorn's go (stderr → journald), in the same format.
    ours = logging.getLogger("llmproxy")
    # A filter on the loggers (not their handlers) survives gunicorn re-creating handlers on HUP.
    for logger in (server.log.error_log, ours):
        logger.addFilter(masking.MaskingFilter())
    ours.handlers = list(server.log.error_log.handlers)
    ours.setLevel(server.log.error_log.level)
    ours.propagate = False
    prepare_run_dir(_settings)
    metrics.prepare_multiprocess_dir(server.pid)
    for line in describe_destinations(_settings):
        ours.info(line)
    # Before the fork, and out of the collector's reach: every worker shares the price data's
    # pages (docs/usage.rst); a collection in a worker would otherwise write to each object and
    # copy them all.
    pricing.load()
    gc.freeze()


# This worker's busy-thread count (llmproxy.server.saturation), fed by pre_request / post_request.
# Replaced by the runtime's own in post_worker_init; this one only keeps the hooks safe for an
# app without a runtime.
_saturation = Saturation(threads)


def post_worker_init(worker):
    global _saturation
    runtime = Runtime.of(worker.wsgi)
    if runtime is None:
        return
    _saturation = runtime.saturation
    _saturation.threads = worker.cfg.threads
    _saturation.set_waiting(pool_queue(worker))
    runtime.start()
    # Everything made so far (modules, the app, the runtime) lives as long as the worker: move it
    # out of the collector's reach. A full collection then scans only what requests made,
    # instead of pausing every thread, a relaying stream's included, for 25 to 100 ms.
    gc.freeze()
    # gunicorn has no hook for "SIGTERM arrived". The worker then finishes its in-flight
    # requests (an SSE stream may take a while) before worker_exit, and the arbiter kills it at
    # graceful_timeout: note when the stop began so the Loki flush fits in what is left.
    handle_exit = worker.handle_exit

    def on_sigterm(sig, frame):
        runtime.stopping_since = time.monotonic()
        handle_exit(sig, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


# The presence file (llmproxy/server/presence.py): shells and `llm-proxy status` learn from it
# that this server listens, for exactly as long as the master lives.
_announcement = presence.Announcement(presence.path(_settings))


def when_ready(server):
    try:
        _announcement.publish(_settings.base_url)
    except OSError as exc:  # the proxy works without it; only the shell integration misses it
        server.log.warning("cannot write %s: %s", _announcement.file, exc)


def on_exit(server):
    _announcement.withdraw()
    shutil.rmtree(metrics.multiprocess_dir(server.pid), ignore_errors=True)


def child_exit(server, worker):
    metrics.worker_gone(worker.pid)


def worker_exit(server, worker):
    runtime = Runtime.of(getattr(worker, "wsgi", None))
    if runtime is None:
        return
    budget = _settings.loki.shutdown_timeout
    if runtime.stopping_since is not None:
        left = graceful_timeout - (time.monotonic() - runtime.stopping_since) - 3
        budget = max(1.0, min(budget, left))
    runtime.close(budget)
