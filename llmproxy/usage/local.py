"""Report records from the catalog of this machine's log tree (llmproxy/catalog/)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llmproxy import pricing
from llmproxy.catalog import Catalog
from llmproxy.usage.report import Filters, Kind, Record, Report, build

# A call's day and time are its answer's (when it has one), as in Loki: the two ways agree.
DAY = "coalesce(answered_day, day)"
WHEN = "coalesce(answered_ts, ts)"
# The SQL of each report's key, over the catalog's calls table.
KEYS = {"day": DAY, "month": f"substr({DAY}, 1, 7)", "session": "session", "model": "coalesce(model, '')",
        "machine": "coalesce(machine, '')", "client": "coalesce(client, '')"}


def where(filters: Filters) -> tuple[str, list]:
    """The SQL condition of the filters (answered calls only) and its arguments."""
    clauses, args = ["answered"], []
    if filters.since:
        clauses.append(f"{DAY} >= ?")
        args.append(filters.since.isoformat())
    if filters.until:
        clauses.append(f"{DAY} <= ?")
        args.append(filters.until.isoformat())
    if filters.provider:
        clauses.append("provider = ?")
        args.append(filters.provider)
    if filters.model:
        clauses.append("instr(lower(model), lower(?)) > 0")
        args.append(filters.model)
    if filters.machine:
        clauses.append("machine = ?")
        args.append(filters.machine)
    return " AND ".join(clauses), args


def records(db: sqlite3.Connection, kind: Kind, filters: Filters) -> list[Record]:
    """One record per (key, model) of the calls that pass the filters."""
    condition, args = where(filters)
    rows = db.execute(
        f"SELECT {KEYS[kind.key]} AS key, coalesce(model, '') AS model, count(*), coalesce(sum(input), 0), "
        f"coalesce(sum(output), 0), coalesce(sum(cache_write), 0), coalesce(sum(cache_read), 0), "
        f"coalesce(sum(cost), 0.0), sum(cost IS NULL AND input IS NOT NULL), max({WHEN}) "
        f"FROM calls WHERE {condition} GROUP BY 1, 2", args)
    return [Record(*row) for row in rows]


def skipped_lines(db: sqlite3.Connection) -> int:
    """Lines of the tree that were not entries (corrupt, or cut short by a crash)."""
    return db.execute("SELECT coalesce(sum(skipped), 0) FROM files").fetchone()[0]


def unreadable(db: sqlite3.Connection) -> list[str]:
    """Sessions whose files could not be read, and why."""
    return [f"{session}: {problem}" for session, problem in
            db.execute("SELECT session, problem FROM files WHERE problem IS NOT NULL ORDER BY session")]


def from_catalog(db: sqlite3.Connection, kind: Kind, filters: Filters) -> Report:
    """The report of the catalog as it is (the explorer's indexer keeps it up to date), with
    notes on what could not be read."""
    out = build(kind, records(db, kind, filters), filters, pricing.source())
    skipped = skipped_lines(db)
    if skipped:
        out.notes.append(f"{skipped} line{'s' if skipped != 1 else ''} of the logs skipped: not entries "
                         f"(corrupt, or cut short by a crash).")
    out.notes += [f"Not read: {problem}" for problem in unreadable(db)]
    return out


def report(log_dir: Path, kind: Kind, filters: Filters, catalog: Catalog | None = None) -> Report:
    """The report of this machine's logs: the catalog brought up to date first."""
    own = catalog is None
    catalog = catalog or Catalog(log_dir)
    try:
        catalog.update()
        return from_catalog(catalog.db, kind, filters)
    finally:
        if own:
            catalog.close()
