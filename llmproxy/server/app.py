"""The Flask application factory: the server's own endpoints, then the proxy view for the rest.

``/health``, ``/health/loki`` and ``/metrics`` answer from the worker's :class:`Runtime` (summed
over all workers); every other path is a proxied call (:mod:`llmproxy.proxy.views`).
"""

from __future__ import annotations

from flask import Flask, Response, jsonify

from llmproxy.proxy import views
from llmproxy.server.metrics import CONTENT_TYPE
from llmproxy.server.runtime import EXTENSION_KEY, Runtime
from llmproxy.settings import Settings


def create_app(settings: Settings, runtime: Runtime | None = None) -> Flask:
    """Build the proxy app. ``runtime`` holds the worker's state; one is built if not given."""
    app = Flask("llmproxy")
    runtime = runtime or Runtime(settings)
    app.extensions[EXTENSION_KEY] = runtime
    app.wsgi_app = runtime.metrics.wrap(app.wsgi_app)

    @app.get("/health")
    def health():
        return jsonify(runtime.health())

    @app.get("/health/loki")
    def health_loki():
        summary, status = runtime.loki_health()
        return jsonify(summary), status

    @app.get("/metrics")
    def metrics():
        return Response(runtime.metrics.render(), content_type=CONTENT_TYPE)

    views.register(app, settings, runtime)
    return app
