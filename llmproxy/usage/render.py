"""A report as a terminal table or as JSON.

The table takes the widest layout that fits the terminal: all columns with whole numbers; then
numbers shortened (``1.2M``); then without total tokens; then without calls — the compact
layout ccusage falls back to when narrow. Totals come last; the cost of a row that includes
calls without a price is marked ``*`` and a note names their models.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone

from llmproxy.common.visible import visible
from llmproxy.usage.report import Report, Row

# (heading, the Row attribute it shows); the cost column comes last in every layout
COLUMNS = (("Calls", "calls"), ("Input", "input"), ("Output", "output"), ("Cache write", "cache_write"),
           ("Cache read", "cache_read"), ("Total tokens", "tokens"))
GAP = "  "


def whole(n: int) -> str:
    return f"{n:,}"


def short(n: int) -> str:
    """``987``, ``12.3k``, ``4.56M``, ``1.2B``: three significant figures at most."""
    for divisor, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= divisor:
            value = n / divisor
            return f"{value:.3g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
    return str(n)


def money(value: float) -> str:
    """``$12.34``; a cost that rounds to nothing but is not nothing: ``<$0.01``."""
    return "<$0.01" if 0 < value < 0.005 else f"${value:,.2f}"


@dataclass(frozen=True)
class Layout:
    columns: tuple[tuple[str, str], ...]
    number: object  # whole or short


LAYOUTS = (
    Layout(COLUMNS, whole),
    Layout(COLUMNS, short),
    Layout(COLUMNS[:5], short),
    Layout(COLUMNS[1:5], short),
    Layout((("Tokens", "tokens"),), short),
)


def _cells(row: Row, layout: Layout) -> list[str]:
    cost = money(row.cost) + ("*" if row.unpriced else " ")
    if row.unpriced and not row.cost:
        cost = "no price*"
    return [layout.number(getattr(row, attr)) for _, attr in layout.columns] + [cost]


def _label(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _lines(report: Report, layout: Layout, key_width: int, breakdown: bool) -> list[list[str]]:
    out = []
    for row in report.rows:
        out.append([visible(row.key or "(none)")] + _cells(row, layout))
        if breakdown:
            for model in row.models:
                out.append(["  " + _label(visible(model.key or "(no model)"), key_width - 2)] + _cells(model, layout))
    return out


def table(report: Report, width: int = 80, breakdown: bool = False) -> str:
    """The report as text no wider than ``width`` (where any layout fits). Shortened layouts
    put two-word headings on two lines."""
    heading = report.kind.key.capitalize()
    breakdown = breakdown and report.kind.key != "model"  # a model's breakdown is itself
    keys = [visible(r.key or "(none)") for r in report.rows] + ["Total", heading]
    key_width = max(map(len, keys))
    if breakdown:
        key_width = max(key_width, min(28, max((len(visible(m.key)) + 2 for r in report.rows for m in r.models),
                                               default=0)))
    for layout in LAYOUTS:
        names = [name for name, _ in layout.columns] + ["Cost (USD)"]
        if layout.number is whole:
            headings = [["", heading] + [""] * len(names), [heading] + names][1:]
        else:
            split = [name.split(" ", 1) if " " in name else ["", name] for name in names]
            headings = [[""] + [top for top, _ in split], [heading] + [bottom for _, bottom in split]]
        body = _lines(report, layout, key_width, breakdown)
        total = ["Total"] + _cells(report.total, layout)
        widths = [max(len(line[i]) for line in [*headings, total, *body]) for i in range(len(names) + 1)]
        widths[0] = max(widths[0], key_width)
        if sum(widths) + len(GAP) * (len(widths) - 1) <= width:
            break
    rule = "─" * (sum(widths) + len(GAP) * (len(widths) - 1))

    def line(cells: list[str]) -> str:
        return GAP.join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    head = [line(cells) for cells in headings if any(cells)]
    # Wrapped between words only: a machine or model name (claude-sonnet-4-5) is never cut at a hyphen.
    def wrap(text: str) -> list[str]:
        return textwrap.wrap(visible(text), width, subsequent_indent="  ", break_on_hyphens=False) or [""]

    lines = [*wrap(_title(report)), "", *head, rule, *map(line, body), rule, line(total)]
    notes = [wrapped for note in _notes(report) for wrapped in wrap(note)]
    return "\n".join(lines + notes)


def _title(report: Report) -> str:
    scope = report.filters.describe()
    return report.kind.title + (f" · {scope}" if scope else "")


def _notes(report: Report) -> list[str]:
    notes = []
    if not report.rows:
        notes.append("No calls in this range.")
    if report.total.unpriced:
        notes.append(f"* includes {report.total.unpriced} call{'s' if report.total.unpriced != 1 else ''} "
                     f"without a price (tokens counted, cost not): {', '.join(report.unpriced_models)}")
    if report.price_source:
        notes.append(f"Costs at list price ({report.price_source}), subscription-paid calls included.")
    return ([""] if notes or report.notes else []) + notes + report.notes


def as_json(report: Report, breakdown: bool = False) -> dict:
    """The report as data: every row with its numbers (costs unrounded), the totals, the notes."""
    key = report.kind.key

    def fields(row: Row, name: str) -> dict:
        out = {name: row.key, "calls": row.calls, "input": row.input, "output": row.output,
               "cache_write": row.cache_write, "cache_read": row.cache_read, "total_tokens": row.tokens,
               "cost": row.cost, "unpriced_calls": row.unpriced}
        if row.last is not None:
            out["last"] = datetime.fromtimestamp(row.last, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        return out

    rows = []
    for row in report.rows:
        doc = fields(row, key)
        doc["models"] = [m.key for m in row.models]
        if breakdown:
            doc["breakdown"] = [fields(m, "model") for m in row.models]
        rows.append(doc)
    filters = report.filters
    return {"report": report.kind.name, "filters": {
                "since": filters.since and filters.since.isoformat(), "until": filters.until and filters.until.isoformat(),
                "provider": filters.provider, "model": filters.model, "machine": filters.machine},
            "rows": rows, "totals": {k: v for k, v in fields(report.total, key).items() if k != key},
            "unpriced_models": report.unpriced_models, "price_source": report.price_source, "notes": report.notes}
