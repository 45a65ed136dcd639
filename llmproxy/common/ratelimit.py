"""A log message that repeats at most once per interval, counting what it held back."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """``log(message)`` writes at most once per ``interval`` seconds; the next line says how many
    were held back meanwhile. For failures that repeat per request or per push."""

    def __init__(self, logger: logging.Logger, level: int, interval: float = 60.0):
        self.logger = logger
        self.level = level
        self.interval = interval
        self._held = 0
        self._last = float("-inf")
        self._lock = threading.Lock()

    def log(self, message: str, *args) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        suffix = f" ({held} more since the last message)" if held else ""
        self.logger.log(self.level, message + suffix, *args)
