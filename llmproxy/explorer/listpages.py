"""The pages over the catalog: sessions (``/sessions``), search (``/search``) and usage
(``/usage``), each also as ``.json``. The catalog is kept up to date by the indexer process;
these pages only read it (``PRAGMA query_only``). Before its first update has finished they
say so, and look again in a few seconds."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from flask import Flask, current_app, jsonify, redirect, render_template, request

from llmproxy.explorer import listing, search, usagepage
from llmproxy.explorer.app import Explorer

HITS_PER_PAGE = 50


def _reading(read):
    """``read(db)`` over the catalog, or None while there is none (or the indexer is creating
    its tables right now)."""
    db = Explorer.of(current_app).catalog()
    if db is None:
        return None
    with closing(db):
        try:
            return read(db)
        except sqlite3.OperationalError:
            return None


def _building():
    if request.path.endswith(".json"):
        return jsonify({"building": True}), 503
    return render_template("building.html"), 503


def register(app: Flask) -> None:
    choices = listing.Choices()

    @app.get("/")
    def home():
        return redirect("/sessions", 302)

    def sessions_data():
        filters = listing.Filters.of(request.args)
        return _reading(lambda db: (listing.sessions(db, filters), choices.of(db)))

    @app.get("/sessions")
    def sessions_page():
        found = sessions_data()
        if found is None:
            return _building()
        result, options = found
        return render_template("sessions.html", listing=result, filters=result.filters, options=options,
                               day_choices=listing.DAYS, search_text=result.filters.q)

    @app.get("/sessions.json")
    def sessions_json():
        found = sessions_data()
        if found is None:
            return _building()
        result, _ = found
        return jsonify({"total": result.total, "page": result.filters.page, "pages": result.pages,
                        "filters": {k: v for k, v in vars(result.filters).items()},
                        "sessions": [row.to_json() for row in result.rows]})

    def search_data():
        text = (request.args.get("q") or "").strip()[:500]
        page = max(1, request.args.get("page", type=int, default=1))
        order = request.args.get("order") if request.args.get("order") in search.ORDERS else "newest"

        def read(db):
            if not search.ready(db):
                return None
            return search.search(db, text, limit=HITS_PER_PAGE + 1, offset=(page - 1) * HITS_PER_PAGE,
                                 order=order) if text else []

        hits = _reading(read)
        return None if hits is None else (text, page, order, hits[:HITS_PER_PAGE], len(hits) > HITS_PER_PAGE)

    @app.get("/search")
    def search_page():
        found = search_data()
        if found is None:
            return _building()
        text, page, order, hits, more = found
        return render_template("search.html", search_text=text, page=page, order=order, hits=hits, more=more)

    @app.get("/search.json")
    def search_json():
        found = search_data()
        if found is None:
            return _building()
        text, page, order, hits, more = found
        return jsonify({"q": text, "page": page, "order": order, "more": more, "hits": [h.to_json() for h in hits]})

    @app.get("/usage")
    def usage_page():
        ask = usagepage.Ask.of(request.args)

        def read(db):
            report = usagepage.report(db, ask)
            return report, usagepage.charts(db, ask, report), usagepage.updated(db)

        found = _reading(read)
        if found is None:
            return _building()
        report, (cost, tokens), updated = found
        return render_template("usage.html", ask=ask, report=report, cost_chart=cost, token_chart=tokens,
                               updated=updated, kinds=usagepage.KINDS)

    @app.get("/usage.json")
    def usage_json():
        ask = usagepage.Ask.of(request.args)
        report = _reading(lambda db: usagepage.report(db, ask))
        if report is None:
            return _building()
        return jsonify(usagepage.as_data(report, ask))
