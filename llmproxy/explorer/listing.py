"""The sessions page's questions to the catalog: which sessions, newest first, under which
filters, and what there is to filter by.

:class:`Filters` is what the page's address holds (``?days=7&provider=…&q=…&page=2``); it reads
itself from the query string, writes itself back into links, and becomes SQL over the
catalog's ``sessions`` table. Values go to SQLite as parameters, never into the SQL text.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import urlencode

from llmproxy.explorer import search
from llmproxy.usage import local

PAGE_SIZE = 50
ACTIVE_SECONDS = 300   # a session with a call this recent is marked active now
DAYS = (1, 7, 30, 90)  # the choices the page offers (any whole number works in the address)
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
MONTH = re.compile(r"\d{4}-\d{2}")


@dataclass(frozen=True)
class Filters:
    days: int | None = None
    day: str = ""          # sessions with calls answered on this UTC day (YYYY-MM-DD) …
    month: str = ""        # … or in this month (YYYY-MM): where the usage page's rows lead
    provider: str = ""
    model: str = ""
    machine: str = ""
    client: str = ""
    errors: bool = False
    q: str = ""
    page: int = 1

    @classmethod
    def of(cls, args: Mapping[str, str]) -> "Filters":
        def whole(name: str, low: int, high: int) -> int | None:
            value = (args.get(name) or "").strip()
            return min(max(int(value), low), high) if value.isdigit() else None

        return cls(days=whole("days", 1, 36500), day=_matching(args, "day", DAY), month=_matching(args, "month", MONTH),
                   provider=_text(args, "provider"), model=_text(args, "model"),
                   machine=_text(args, "machine"), client=_text(args, "client"),
                   errors=(args.get("errors") or "") in ("1", "on", "true", "yes"), q=_text(args, "q"),
                   page=whole("page", 1, 1_000_000) or 1)

    def query(self, **changes: Any) -> str:
        """This page's address query with ``changes``, defaults left out (a filter change goes
        back to page 1)."""
        if "page" not in changes and any(k != "page" for k in changes):
            changes["page"] = 1
        values = asdict(replace(self, **changes))
        defaults = {f.name: f.default for f in fields(self)}
        pairs = [(k, "1" if v is True else str(v)) for k, v in values.items() if v != defaults[k] and v is not None]
        return ("?" + urlencode(pairs)) if pairs else ""

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) != f.default for f in fields(self) if f.name != "page")

    def where(self, now: float) -> tuple[str, list]:
        clauses: list[str] = []
        params: list = []
        if self.days:
            clauses.append("last >= ?")
            params.append(now - self.days * 86400)
        if self.day or self.month:  # a call's day is its answer's, as in the usage reports
            clauses.append("EXISTS (SELECT 1 FROM calls c WHERE c.session = sessions.session AND "
                           + (f"{local.DAY} = ?)" if self.day else f"substr({local.DAY}, 1, 7) = ?)"))
            params.append(self.day or self.month)
        for column in ("provider", "machine"):
            if getattr(self, column):
                clauses.append(f"{column} = ?")
                params.append(getattr(self, column))
        for column in ("model", "client"):  # a session may have several: one of its calls had it
            if getattr(self, column):
                clauses.append(f"EXISTS (SELECT 1 FROM calls c WHERE c.session = sessions.session AND c.{column} = ?)")
                params.append(getattr(self, column))
        if self.errors:
            clauses.append("errors > 0")
        if self.q:
            sql, args = search.sessions_matching(self.q)
            if args[0]:
                clauses.append(f"({sql} OR session = ? OR client_session_id = ?)")
                params += [*args, self.q, self.q]
        return " AND ".join(f"({c})" for c in clauses) or "1", params


def _text(args: Mapping[str, str], name: str) -> str:
    return (args.get(name) or "").strip()[:200]


def _matching(args: Mapping[str, str], name: str, pattern: re.Pattern) -> str:
    value = (args.get(name) or "").strip()
    return value if pattern.fullmatch(value) else ""


COLUMNS = ("session", "upstream", "provider", "day", "machine", "client_session_id", "clients", "models", "started",
           "last", "calls", "errors", "input", "output", "cache_write", "cache_read", "cost", "unpriced")


@dataclass
class Row:
    session: str
    upstream: str | None
    provider: str | None
    day: str | None
    machine: str | None
    client_session_id: str | None
    clients: str | None
    models: str | None
    started: float | None
    last: float | None
    calls: int
    errors: int
    input: int | None
    output: int | None
    cache_write: int | None
    cache_read: int | None
    cost: float | None
    unpriced: int
    active: bool = False

    @property
    def last_day(self) -> str:
        moment = self.last or self.started
        return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%d") if moment else (self.day or "")

    @property
    def duration_ms(self) -> float | None:
        return (self.last - self.started) * 1000 if self.last and self.started else None

    @property
    def model_list(self) -> list[str]:
        return sorted(filter(None, (self.models or "").split(",")))

    @property
    def client_list(self) -> list[str]:
        return sorted(filter(None, (self.clients or "").split(",")))

    def to_json(self) -> dict:
        doc = {name: getattr(self, name) for name in COLUMNS}
        doc.update(models=self.model_list, clients=self.client_list, active=self.active)
        return doc


@dataclass
class Listing:
    rows: list[Row]
    total: int
    filters: Filters
    pages: int

    @property
    def days(self) -> list[Day]:
        """The rows grouped by the UTC day of their last activity, newest day first."""
        out: list[Day] = []
        for row in self.rows:
            if not out or out[-1].day != row.last_day:
                out.append(Day(row.last_day))
            out[-1].rows.append(row)
        return out


@dataclass
class Day:
    day: str
    rows: list[Row] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.rows)

    @property
    def cost(self) -> float | None:
        costs = [r.cost for r in self.rows if r.cost is not None]
        return sum(costs) if costs else None


def sessions(db: sqlite3.Connection, filters: Filters, now: float | None = None) -> Listing:
    now = time.time() if now is None else now
    where, params = filters.where(now)
    total = db.execute(f"SELECT count(*) FROM sessions WHERE {where}", params).fetchone()[0]
    pages = max(1, -(-total // PAGE_SIZE))
    rows = [Row(*values) for values in db.execute(
        f"SELECT {', '.join(COLUMNS)} FROM sessions WHERE {where} ORDER BY last DESC LIMIT ? OFFSET ?",
        [*params, PAGE_SIZE, (filters.page - 1) * PAGE_SIZE])]
    for row in rows:
        row.calls, row.errors, row.unpriced = row.calls or 0, row.errors or 0, row.unpriced or 0
        row.active = bool(row.last and now - row.last < ACTIVE_SECONDS)
    return Listing(rows, total, filters, pages)


class Choices:
    """What the filters can be set to (every provider, model, machine and client the catalog
    knows), worked out again only when the catalog changed."""

    def __init__(self) -> None:
        self._key: Any = None
        self._values: dict[str, list[str]] = {}

    def of(self, db: sqlite3.Connection) -> dict[str, list[str]]:
        key = db.execute("SELECT count(*), max(last), sum(calls) FROM sessions").fetchone()
        if key != self._key:
            found: dict[str, set[str]] = {"provider": set(), "model": set(), "machine": set(), "client": set()}
            for provider, machine, models, clients in db.execute(
                    "SELECT DISTINCT provider, machine, models, clients FROM sessions"):
                found["provider"].add(provider or "")
                found["machine"].add(machine or "")
                found["model"].update((models or "").split(","))
                found["client"].update((clients or "").split(","))
            self._values = {name: sorted(v for v in values if v) for name, values in found.items()}
            self._key = key
        return self._values
