"""The explorer's Flask application factory: pages over the catalog and the session files.

Every page is server-rendered HTML (templates/, one stylesheet and one small script in static/);
the same address with ``.json`` gives its data. What the pages read is handed in: the settings
and an :class:`Explorer` (the session reader, the catalog); nothing is read from the
environment here.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from llmproxy import __version__
from llmproxy.explorer import formatting, guard
from llmproxy.explorer.reader import SessionReader
from llmproxy.settings import Settings

EXTENSION_KEY = "llmproxy.explorer"
HERE = Path(__file__).parent


@dataclass
class Explorer:
    """What the pages read: the settings, the session files, the catalog (when there is one)."""

    settings: Settings
    reader: SessionReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = SessionReader(self.settings.log_dir)

    def catalog(self) -> sqlite3.Connection | None:
        """A read-only connection to the catalog, or None while there is none yet."""
        from llmproxy.catalog import catalog_path

        path = catalog_path(self.settings.log_dir)
        if not path.exists():
            return None
        db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        db.execute("PRAGMA query_only = ON")
        return db

    @staticmethod
    def of(app: Flask) -> "Explorer":
        return app.extensions[EXTENSION_KEY]


def wants_json() -> bool:
    return request.path.endswith(".json")


def refuse(status: int, title: str, message: str):
    """An error answer: JSON for a ``.json`` address, a page otherwise."""
    if wants_json():
        return jsonify({"error": {"status": status, "title": title, "message": message}}), status
    return render_template("error.html", status=status, title=title, message=message), status


def create_app(settings: Settings, explorer: Explorer | None = None) -> Flask:
    """Build the explorer app over ``settings.log_dir``."""
    from llmproxy.explorer import listpages, sessionpages

    app = Flask("llmproxy.explorer", root_path=str(HERE), static_url_path="/static")
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 3600
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    app.jinja_env.filters.update(formatting.FILTERS)
    app.jinja_env.globals.update(version=__version__)
    app.extensions[EXTENSION_KEY] = explorer or Explorer(settings)
    guard.install(app, settings.explorer, refuse)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return refuse(error.code or 500, error.name, error.description or "")

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", "version": __version__})

    sessionpages.register(app)
    listpages.register(app)
    return app
