"""Crash points for the fault-injection tests: a worker kills itself at a named step of its logging.

Off unless ``LLM_PROXY_FAULT_DIR`` names a directory (the tests set it; no user setting does).
A test arms a point by creating an empty file of that name there; the first process that reaches
the point renames the file (so exactly one fires, once) and dies of ``SIGKILL``, as it would by
the kernel's OOM killer. Unset, :func:`crash_point` is one global lookup.
"""

from __future__ import annotations

import os
import signal

DIRECTORY = os.environ.get("LLM_PROXY_FAULT_DIR") or None


def armed(point: str) -> bool:
    """Whether this process is to die at ``point`` now; claims the point (one process fires it)."""
    if DIRECTORY is None:
        return False
    try:
        os.rename(os.path.join(DIRECTORY, point), os.path.join(DIRECTORY, f"{point}.fired-{os.getpid()}"))
    except OSError:
        return False
    return True


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_point(point: str) -> None:
    """Die here if a test armed ``point``."""
    if DIRECTORY is not None and armed(point):
        die()
