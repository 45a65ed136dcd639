"""What a usage report says, whatever it was read from: records in, rows and totals out.

A source (the catalog, Loki) answers one question: for the calls that pass the
:class:`Filters`, grouped by the report's key and by model, how many calls, tokens of each kind
and dollars (:class:`Record`). :func:`build` turns those into :class:`Row` values, one per key
(with its models as a breakdown) and the totals row. Costs are summed over priced calls only;
``unpriced`` counts the calls with tokens and no price.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class Kind:
    """One report: what its rows are (``key``, the column and JSON name), its title, and whether
    rows run in key order (days, months, sessions by last call) or by cost, largest first."""

    name: str
    key: str
    title: str
    by_cost: bool = False


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("daily", "day", "Usage by day (UTC)"),
    Kind("monthly", "month", "Usage by month (UTC)"),
    Kind("session", "session", "Usage by session, last active last"),
    Kind("model", "model", "Usage by model", by_cost=True),
    Kind("machine", "machine", "Usage by machine", by_cost=True),
    Kind("client", "client", "Usage by client", by_cost=True),
)}


@dataclass(frozen=True)
class Filters:
    """Which calls count: days ``since`` … ``until`` (UTC, inclusive), a provider label, models
    whose name contains ``model``, a machine."""

    since: date | None = None
    until: date | None = None
    provider: str | None = None
    model: str | None = None
    machine: str | None = None

    def describe(self) -> str:
        parts = []
        if self.since and self.until:
            parts.append(f"{self.since} to {self.until}")
        elif self.since or self.until:
            parts.append(f"from {self.since}" if self.since else f"up to {self.until}")
        for name in ("provider", "model", "machine"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {'~ ' if name == 'model' else ''}{value}")
        return ", ".join(parts)


@dataclass
class Record:
    """The calls of one group and model, summed by a source. ``last``: the newest call's time
    (Unix seconds), where the source knows it."""

    key: str
    model: str = ""
    calls: int = 0
    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0
    cost: float = 0.0
    unpriced: int = 0
    last: float | None = None

    @property
    def tokens(self) -> int:
        return self.input + self.output + self.cache_write + self.cache_read

    def add(self, other: Record) -> None:
        self.calls += other.calls
        self.input += other.input
        self.output += other.output
        self.cache_write += other.cache_write
        self.cache_read += other.cache_read
        self.cost += other.cost
        self.unpriced += other.unpriced
        if other.last is not None and (self.last is None or other.last > self.last):
            self.last = other.last


@dataclass
class Row(Record):
    """A line of the report: the sums of a group (or, in a breakdown, of a model of it: ``key``
    is the model), or the totals; ``models`` its breakdown."""

    models: list[Row] = field(default_factory=list)


@dataclass
class Report:
    kind: Kind
    filters: Filters
    rows: list[Row]
    total: Row
    unpriced_models: list[str]        # the models of the unpriced calls
    price_source: str = ""
    notes: list[str] = field(default_factory=list)


def build(kind: Kind, records: list[Record], filters: Filters = Filters(), price_source: str = "") -> Report:
    """Rows by key (each with its models, costliest first), ordered as the kind says, and the
    totals."""
    rows: dict[str, Row] = {}
    for record in records:
        row = rows.setdefault(record.key, Row(record.key))
        row.add(record)
        model = next((m for m in row.models if m.key == record.model), None)
        if model is None:
            model = Row(record.model)
            row.models.append(model)
        model.add(record)
    total = Row("Total")
    for row in rows.values():
        row.models.sort(key=lambda m: (-m.cost, -m.tokens, m.key))
        total.add(row)
    if kind.by_cost:
        ordered = sorted(rows.values(), key=lambda r: (-r.cost, -r.tokens, r.key))
    elif kind.name == "session":
        ordered = sorted(rows.values(), key=lambda r: (r.last or 0.0, r.key))
    else:
        ordered = sorted(rows.values(), key=lambda r: r.key)
    unpriced = sorted({r.model or "(no model)" for r in records if r.unpriced})
    return Report(kind, filters, ordered, total, unpriced, price_source)
