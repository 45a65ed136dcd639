"""The export to Grafana Loki, and the tools that read or check Loki.

The pusher side, in each worker: :mod:`~llmproxy.loki.exporter` (bounded queue, one pusher
thread) ships :mod:`~llmproxy.loki.batch`\\ es through :mod:`~llmproxy.loki.client`, with
:mod:`~llmproxy.loki.backoff`, :mod:`~llmproxy.loki.split` (lines over Loki's limit),
:mod:`~llmproxy.loki.spool` (what Loki has not taken yet) and :mod:`~llmproxy.loki.labels`;
its numbers across workers in :mod:`~llmproxy.loki.stats`. The tools:
:mod:`~llmproxy.loki.backfill` (push what Loki lacks from the files),
:mod:`~llmproxy.loki.session` (``loki-session``: one session out of Loki) and
:mod:`~llmproxy.loki.check` (``loki-health``: a Nagios check of ``/health/loki``).

May import: common, providers, settings, proxy, record.
Must not be imported by: common, providers, settings, proxy, record (the MultiWriter is handed
its exporter).
"""

from llmproxy.loki.batch import Labels, LokiEntry
from llmproxy.loki.exporter import LokiExporter

__all__ = ["Labels", "LokiEntry", "LokiExporter"]
