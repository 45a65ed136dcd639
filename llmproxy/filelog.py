"""The primary log: JSONL files, one per session, under the log dir.

Each line goes to the file in one ``write`` on a descriptor opened with ``O_APPEND``: the kernel
appends it whole, so lines of threads and worker processes never interleave or tear.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmproxy.entries import Entry

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class FileLogger:
    """Appends entries to ``{log_dir}/{upstream}/{YYYY-MM-DD}/{session}.jsonl``."""

    def __init__(self, log_dir: Path):
        self.log_dir = str(log_dir)

    def write(self, entry: Entry) -> OSError | None:
        """Append the entry's line. File errors are returned (the caller decides), never raised."""
        path = os.path.join(self.log_dir, entry.path)
        try:
            try:
                fd = os.open(path, _FLAGS, 0o600)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(path, _FLAGS, 0o600)
            try:
                # One writev, no copy of a multi-megabyte line just to add its newline.
                written = os.writev(fd, [entry.line, b"\n"])
                if written < len(entry.line) + 1:  # only on a full disk or a signal
                    rest = memoryview(entry.line + b"\n")[written:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)
        except OSError as exc:
            return exc
        return None
