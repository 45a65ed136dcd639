"""The usage page: the reports of ``llm-proxy usage`` (llmproxy/usage/) as tables, with charts of
cost and tokens per day by model, each row linking to the sessions behind it.

The reports are read from the catalog the explorer's indexer keeps (never updated here), with
the same records and the same building as the command; ``/usage.json`` is the command's
``--json``. The address holds the report and its filters: ``?report=model&since=2026-11-01``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Mapping
from urllib.parse import urlencode

from llmproxy.explorer import chart
from llmproxy.explorer.formatting import compact, money, when
from llmproxy.usage import KINDS, Filters, Report, build
from llmproxy.usage import local
from llmproxy.usage.render import as_json


@dataclass(frozen=True)
class Ask:
    """What the address asks: a report and its filters (bad values are left out)."""

    report: str = "daily"
    filters: Filters = Filters()
    breakdown: bool = False

    @classmethod
    def of(cls, args: Mapping[str, str]) -> "Ask":
        def day(name: str) -> date | None:
            try:
                return date.fromisoformat((args.get(name) or "").strip())
            except ValueError:
                return None

        def text(name: str) -> str | None:
            return (args.get(name) or "").strip()[:200] or None

        report = args.get("report") if args.get("report") in KINDS else "daily"
        return cls(report, Filters(day("since"), day("until"), text("provider"), text("model"), text("machine")),
                   (args.get("breakdown") or "") in ("1", "on", "true"))

    def query(self, **changes) -> str:
        values = {"report": self.report, "since": self.filters.since, "until": self.filters.until,
                  "provider": self.filters.provider, "model": self.filters.model, "machine": self.filters.machine,
                  "breakdown": "1" if self.breakdown else None, **changes}
        pairs = [(k, str(v)) for k, v in values.items() if v and not (k == "report" and v == "daily")]
        return ("?" + urlencode(pairs)) if pairs else ""

    def sessions_link(self, key: str) -> str:
        """The sessions behind a row: the session itself, or the sessions page filtered to it
        (not to the model filter: that is a part of a name, the sessions page's a whole one)."""
        if self.report == "session":
            return f"/session/{key}"
        f = self.filters
        pairs = {"provider": f.provider, "machine": f.machine}
        pairs[{"daily": "day", "monthly": "month"}.get(self.report, self.report)] = key or None
        return "/sessions?" + urlencode([(k, v) for k, v in pairs.items() if v])


def report(db: sqlite3.Connection, ask: Ask) -> Report:
    """The report, from the catalog as it is (the indexer keeps it up to date)."""
    return local.from_catalog(db, KINDS[ask.report], ask.filters)


def charts(db: sqlite3.Connection, ask: Ask, shown: Report) -> tuple[chart.Chart, chart.Chart]:
    """Cost and tokens per day by model, over every day from the first to the last with calls:
    the daily report's rows (``shown`` itself when it is the daily report)."""
    daily = shown if shown.kind.name == "daily" else \
        build(KINDS["daily"], local.records(db, KINDS["daily"], ask.filters))
    if not daily.rows:
        return chart.Chart(), chart.Chart()
    first, last = date.fromisoformat(daily.rows[0].key), date.fromisoformat(daily.rows[-1].key)
    days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
    at = {d: i for i, d in enumerate(days)}
    cost: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    for row in daily.rows:
        for model in row.models:
            name = model.key or "(no model)"
            cost.setdefault(name, [0.0] * len(days))[at[row.key]] += model.cost
            tokens.setdefault(name, [0.0] * len(days))[at[row.key]] += model.tokens
    order = sorted(cost, key=lambda name: (-sum(cost[name]), -sum(tokens[name]), name))  # one colour per model
    return chart.stacked(days, cost, money, order), chart.stacked(days, tokens, compact, order)


def as_data(found: Report, ask: Ask) -> dict:
    """What ``llm-proxy usage --json`` prints for the same report and filters."""
    return as_json(found, ask.breakdown)


def updated(db: sqlite3.Connection) -> str | None:
    """When the newest call the catalog knows was made."""
    newest, = db.execute("SELECT max(ts) FROM calls").fetchone()
    return when(newest) if newest else None
