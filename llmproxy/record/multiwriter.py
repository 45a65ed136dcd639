"""MultiWriter: the file log first (its errors returned), then Loki with the very same line.

Loki errors are recorded by the exporter and never raised: the secondary log can never fail the
primary one or the proxied call. The exporter and its labels come from the export stage
(:mod:`llmproxy.loki`), which this stage does not import: they are handed in.

A line goes three steps, so that a worker killed at any instant loses nothing Loki should get:
:meth:`MultiWriter.stage` (the exporter notes on disk that the line is coming, see
:mod:`llmproxy.loki.ledger`), :meth:`MultiWriter.append` (the file), :meth:`MultiWriter.export`
(the exporter's queue). A request's lines are exported only once ``sessions.db`` has committed
them: a line the commit never counted must not reach Loki.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from llmproxy.record.entries import Entry
from llmproxy.record.filelog import BeforeWrite, FileLogger

log = logging.getLogger("llmproxy.loki")


class Exporter(Protocol):
    """What the MultiWriter needs of the Loki exporter (:class:`llmproxy.loki.LokiExporter`)."""

    def note(self, lines: list[tuple[int, str]]) -> list[int] | None: ...
    def push(self, line: bytes, labels: Any, ts_ns: int, metadata: Any = (), ticket: int | None = None) -> bool: ...
    def cancel(self, tickets: list[int]) -> None: ...


@dataclass
class Staged:
    """Entries on their way, with the exporter's tickets for them (None: not noted)."""

    entries: list[Entry]
    tickets: list[int] | None = None


class MultiWriter:
    """Writes each entry to the file log and hands the same bytes to the Loki exporter.

    ``labels(provider, log_type)`` gives an entry's Loki labels
    (:class:`llmproxy.loki.labels.LabelMaker`)."""

    def __init__(self, files: FileLogger, exporter: Exporter | None, labels: Callable[[str, str], Any]):
        self.files = files
        self.exporter = exporter
        self.labels = labels

    def stage(self, entries: list[Entry]) -> Staged:
        staged = Staged(entries)
        if self.exporter is not None:
            try:
                staged.tickets = self.exporter.note([(e.ts_ns, e.path) for e in entries])
            except Exception as exc:  # note never raises; this is the belt to its braces
                log.error("Loki ledger note failed: %s", exc)
        return staged

    def append(self, staged: Staged, before: BeforeWrite | None = None) -> OSError | None:
        """The entries' lines (all of one session file) in one write, whole or not at all."""
        return self.files.append(staged.entries[0].path, [e.line for e in staged.entries], before)

    def export(self, staged: Staged) -> None:
        if self.exporter is None:
            return
        tickets = staged.tickets or [None] * len(staged.entries)
        for entry, ticket in zip(staged.entries, tickets):
            try:
                self.exporter.push(entry.line, self.labels(entry.provider, entry.type), entry.ts_ns,
                                   entry.metadata, ticket)
            except Exception as exc:  # push never raises; this is the belt to its braces
                log.error("Loki enqueue failed: %s", exc)

    def cancel(self, staged: Staged) -> None:
        """The entries were taken out of their file again: Loki is not to get them."""
        if self.exporter is not None and staged.tickets:
            self.exporter.cancel(staged.tickets)
