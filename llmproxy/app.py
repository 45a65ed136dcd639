"""The Flask application factory."""

from __future__ import annotations

from flask import Flask, jsonify

from llmproxy import __version__
from llmproxy.runtime import EXTENSION_KEY, Runtime
from llmproxy.settings import Settings


def create_app(settings: Settings, runtime: Runtime | None = None) -> Flask:
    """Build the proxy app. ``runtime`` holds the worker's state; one is built if not given."""
    app = Flask("llmproxy")
    runtime = runtime or Runtime(settings)
    app.extensions[EXTENSION_KEY] = runtime

    @app.get("/health")
    def health():
        return jsonify(status="ok", version=__version__)

    return app
