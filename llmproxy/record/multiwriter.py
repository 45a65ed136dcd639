"""MultiWriter: the file log first (its errors returned), then Loki with the very same line.

Loki errors are recorded by the exporter and never raised: the secondary log can never fail the
primary one or the proxied call. The exporter and its labels come from the export stage
(:mod:`llmproxy.loki`), which this stage does not import: they are handed in.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from llmproxy.record.entries import Entry
from llmproxy.record.filelog import FileLogger

log = logging.getLogger("llmproxy.loki")


class Exporter(Protocol):
    """What the MultiWriter needs of the Loki exporter (:class:`llmproxy.loki.LokiExporter`)."""

    def push(self, line: bytes, labels: Any, ts_ns: int, metadata: Any = ()) -> bool: ...


class MultiWriter:
    """Writes each entry to the file log and hands the same bytes to the Loki exporter.

    ``labels(provider, log_type)`` gives an entry's Loki labels
    (:class:`llmproxy.loki.labels.LabelMaker`)."""

    def __init__(self, files: FileLogger, exporter: Exporter | None, labels: Callable[[str, str], Any]):
        self.files = files
        self.exporter = exporter
        self.labels = labels

    def write(self, entry: Entry) -> OSError | None:
        error = self.files.write(entry)
        if self.exporter is not None:
            try:
                self.exporter.push(entry.line, self.labels(entry.provider, entry.type), entry.ts_ns,
                                   entry.metadata)
            except Exception as exc:  # push never raises; this is the belt to its braces
                log.error("Loki enqueue failed: %s", exc)
        return error
