"""Keeping the catalog up to date while the explorer runs: a process of its own, beside the
pages' gunicorn worker, that catches the catalog up with the log tree every few seconds.

It runs at a lower priority (``nice``) and dies with the explorer (the parent death signal on
Linux, and a check of its parent on every round elsewhere).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy.settings import Settings

log = logging.getLogger("llmproxy.explorer.indexing")
INTERVAL = 2.0     # seconds between two catch-ups: a live session's new calls are searchable soon
NICENESS = 10


_catalogs: dict = {}


def catch_up(settings: Settings):
    """Bring the catalog (and the indexers' tables: the explorer's search) up to date with the
    log tree; what the update did (:class:`llmproxy.catalog.Stats`)."""
    from llmproxy.catalog import Catalog

    catalog = _catalogs.get(settings.log_dir)
    if catalog is None:
        catalog = _catalogs[settings.log_dir] = Catalog(settings.log_dir)
    return catalog.update()


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def loop(settings: Settings, parent: int, interval: float = INTERVAL) -> None:
    """Catch up, wait, again, until the parent is gone. Never raises on a bad round."""
    _die_with_parent()
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    failures = RateLimitedLog(log, logging.ERROR, 60.0)
    while os.getppid() == parent:
        started = time.monotonic()
        try:
            catch_up(settings)
        except Exception as exc:  # the next round tries again; the pages read what there is
            failures.log("catalog update failed: %r", exc)
        time.sleep(max(0.2, interval - (time.monotonic() - started)))


def start_process(settings: Settings) -> subprocess.Popen:
    """The indexer in a fresh interpreter (nothing of gunicorn's state comes along, and the
    workers gunicorn forks later hold nothing of it)."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(settings.log_dir), str(os.getpid())],
                            stdin=subprocess.DEVNULL)


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def main(argv: list[str]) -> int:
    """``python -m llmproxy.explorer.indexing LOG_DIR PARENT_PID``: what :func:`start_process` runs."""
    from dataclasses import replace

    from llmproxy.settings import load_settings_or_exit

    settings = replace(load_settings_or_exit(create_dirs=False), log_dir=Path(argv[0]))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    loop(settings, int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
