"""Usage and cost reports (``llm-proxy usage``): calls, tokens by kind and cost per day, month,
session, model, machine or client.

A report is built from :class:`~llmproxy.usage.report.Record` values, one per (group, model):
:mod:`~llmproxy.usage.local` makes them from the catalog of this machine's logs; a source that
asks Loki makes the same records from its metric queries, and both print through
:mod:`~llmproxy.usage.report` (grouping, rows, totals) and :mod:`~llmproxy.usage.render` (an
80-column table, or JSON).

May import: common, providers, pricing, settings, proxy, record, loki, server, catalog.
Must not be imported by: common, providers, pricing, settings, proxy, record, loki, server, catalog.
"""

from llmproxy.usage.report import KINDS, Filters, Kind, Record, Report, Row, build

__all__ = ["KINDS", "Filters", "Kind", "Record", "Report", "Row", "build"]
