"""MultiWriter: the file log first (its errors returned), then Loki with the very same line.

Loki errors are recorded by the exporter and never raised: the secondary log can never fail the
primary one or the proxied call.
"""

from __future__ import annotations

import logging

from llmproxy.record.entries import Entry
from llmproxy.record.filelog import FileLogger
from llmproxy.loki import Labels, LokiExporter

log = logging.getLogger("llmproxy.loki")

APP_LABEL = "llm-proxy"


class LabelMaker:
    """Loki labels, low cardinality only: app, provider, environment, machine, log_type.

    Session and request ids stay in the line (``|= "<session>"`` finds them)."""

    def __init__(self, environment: str, machine: str):
        self.environment = environment
        self.machine = machine
        self._cache: dict[tuple[str, str], Labels] = {}

    def __call__(self, provider: str, log_type: str) -> Labels:
        key = (provider, log_type)
        labels = self._cache.get(key)
        if labels is None:
            labels = self._cache[key] = (("app", APP_LABEL), ("provider", provider),
                                         ("environment", self.environment), ("machine", self.machine),
                                         ("log_type", log_type))
        return labels


class MultiWriter:
    """Writes each entry to the file log and hands the same bytes to the Loki exporter."""

    def __init__(self, files: FileLogger, exporter: LokiExporter | None, labels: LabelMaker):
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
