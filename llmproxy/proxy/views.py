"""The proxy view: every path but the server's own is a call to forward, log and relay.

:func:`register` adds it to the Flask app the server builds (:mod:`llmproxy.server.app`), with the
error handlers that answer in the provider's JSON shape. What it needs of the worker (the
upstream session, the exchange logger, the WebSocket relay and its log) comes in as a
:class:`WorkerState`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import requests
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from llmproxy.common.errors import ProxyError, rejected
from llmproxy.common.ratelimit import RateLimitedLog
from llmproxy import providers
from llmproxy.proxy import forwarding, websocket
from llmproxy.proxy.capture import Exchange, ExchangeLogger
from llmproxy.proxy.routing import resolve
from llmproxy.settings import Settings

log = logging.getLogger("llmproxy")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]

# WSGI environ keys the view sets; the metrics and the access log read them.
PROVIDER_KEY = "llmproxy.provider"
SESSION_KEY = "llmproxy.session"
BODY_BYTES_KEY = "llmproxy.body_bytes"  # the request body the view read (a chunked one has no length)


class WebSocketMetrics(Protocol):
    def websocket_bytes(self, provider: str) -> Callable[[str, int], None]: ...


class WorkerState(Protocol):
    """What the view uses of the worker's runtime (:class:`llmproxy.server.runtime.Runtime`)."""

    upstream: requests.Session
    signers: dict[str, providers.Signer]  # by provider label: the APIs whose calls the proxy signs
    logger: ExchangeLogger
    ws_log: Any       # llmproxy.record.websocket_log.MessageLog: .conversation(...) gives a tap
    relays: websocket.RelayHub
    metrics: WebSocketMetrics


class RelayedResponse(Response):
    """A response that adds nothing: no default Content-Type when upstream sent none."""

    default_mimetype = None
    automatically_set_content_length = False


def register(app: Flask, settings: Settings, runtime: WorkerState) -> None:
    """Route every method of every path not claimed before to the proxy view, and answer the
    proxy's own errors (and Werkzeug's) in the provider's JSON shape."""

    @app.errorhandler(ProxyError)
    def proxy_error(error: ProxyError):
        provider = getattr(request, "proxy_provider", None)
        return RelayedResponse(providers.error_body(provider, error), status=error.status,
                               headers=providers.error_headers(provider, error), content_type="application/json")

    @app.errorhandler(HTTPException)
    def routing_error(error: HTTPException):
        """Werkzeug's own refusals (405 for a method the proxy does not know, a WebSocket
        upgrade with POST…) and Flask's 500 for a bug of ours, in the provider's JSON shape:
        clients show JSON, not an HTML page."""
        path = request.environ.get("RAW_URI") or request.path
        provider = path.lstrip("/").split("/", 1)[0]
        status = error.code or 400
        message = f"{request.method} {path.split('?')[0]}: {error.description}"
        refusal = rejected(status, message)
        response = RelayedResponse(providers.error_body(provider, refusal), status=refusal.status,
                                   headers=providers.error_headers(provider, refusal), content_type="application/json")
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    def proxy(target: str = ""):
        environ = request.environ
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        # Until the route is resolved, an error takes the shape of the provider the path names.
        request.proxy_provider = raw_uri.lstrip("/").split("/", 1)[0]
        route = resolve(raw_uri, request.headers.get("Authorization"), settings.allowed_upstreams)
        request.proxy_provider = route.provider
        environ[PROVIDER_KEY] = route.provider  # for the metrics and the access log
        headers = forwarding.client_headers(environ)
        if request.method == "GET" and websocket.is_upgrade(environ):
            return _upgrade(runtime, settings, route, headers)
        body = request.get_data(cache=False)
        environ[BODY_BYTES_KEY] = len(body)

        exchange = None
        if route.conversation:
            exchange = Exchange(route=route, method=request.method, path=_path_and_query(route.url),
                                request_headers=headers, request_body=body)
            _log(runtime.logger.log_request, exchange)
            session = getattr(exchange.state, "session", None)
            if session:
                environ[SESSION_KEY] = session
            exchange.request_body = b""  # logged; the upstream call below holds its own reference
        if exchange is not None:
            exchange.sending()
        signer = runtime.signers.get(route.provider)
        try:
            # Signed here, after the log took the client's headers: no signature is ever logged.
            sent = signer.sign(request.method, route.url, headers, body) if signer is not None else headers
            upstream = forwarding.open_upstream(
                runtime.upstream, request.method, route.url, sent, body,
                settings.upstream_connect_timeout, settings.upstream_read_timeout)
        except ProxyError as error:
            log.warning("%s %s: %s", request.method, route.url.split("?")[0], error.message)
            if exchange is not None:
                exchange.fail(error.status, error.message)
                _log(runtime.logger.log_response, exchange)
            raise

        resp_headers = forwarding.response_headers(upstream)
        if exchange is not None:
            content_type = upstream.headers.get("content-type", "")
            sse = content_type.startswith("text/event-stream")
            framer = None if sse else providers.framer(route.provider, route.path, upstream.status_code, content_type)
            exchange.got_headers(upstream.status_code, resp_headers, sse, framer)
        # Werkzeug ignores call_on_close with direct_passthrough; the server closes this iterator
        # after the last byte is on the wire, so logging never delays the client.
        on_close = [upstream.close]
        if exchange is not None:
            on_close.append(lambda: _log_response(runtime, exchange))
        body_iter = ClosingIterator(forwarding.relay(upstream, exchange), on_close)
        return RelayedResponse(body_iter, status=upstream.status_code, headers=resp_headers,
                               direct_passthrough=True)

    app.add_url_rule("/", "proxy_root", proxy, methods=METHODS, provide_automatic_options=False)
    app.add_url_rule("/<path:target>", "proxy", proxy, methods=METHODS, provide_automatic_options=False)
    # Werkzeug matches a WebSocket upgrade only to rules marked for it (GET only).
    app.add_url_rule("/", "proxy_root_ws", proxy, methods=["GET"], websocket=True,
                     provide_automatic_options=False)
    app.add_url_rule("/<path:target>", "proxy_ws", proxy, methods=["GET"], websocket=True,
                     provide_automatic_options=False)


def _upgrade(runtime: WorkerState, settings: Settings, route, headers: list[tuple[str, str]]):
    """A WebSocket opening handshake, sent upstream as the client made it.

    A 101 hands both connections to the worker's relay thread and ends the request (gunicorn
    writes nothing to the client; see :func:`llmproxy.proxy.websocket.take_over`). Any other answer
    is relayed like a plain response, so the client can fall back to HTTP.
    """
    environ = request.environ
    websocket.check_can_take_over(environ)
    headers = websocket.handshake_headers(environ, headers)
    path = _path_and_query(route.url)
    exchange = None
    if route.conversation:
        exchange = Exchange(route=route, method="GET", path=path, request_headers=headers, request_body=b"",
                            transport="websocket")
    try:
        handshake = websocket.open_handshake(route, path, headers, settings.upstream_connect_timeout,
                                             settings.upstream_read_timeout)
    except ProxyError as error:
        log.warning("WebSocket %s: %s", route.url.split("?")[0], error.message)
        if exchange is not None:
            _log(runtime.logger.log_request, exchange)
            exchange.fail(error.status, error.message)
            _log(runtime.logger.log_response, exchange)
        raise

    if handshake.status == 101:
        client = websocket.take_over(environ)
        try:
            client.sendall(handshake.head)
        except OSError:
            client.close()
            handshake.sock.close()
            return RelayedResponse(b"", status=101)
        tap = None
        if route.conversation:
            tap = runtime.ws_log.conversation(route, path, headers, 101, handshake.headers)
        runtime.relays.add(client, handshake.sock, tap, handshake.early,
                           runtime.metrics.websocket_bytes(route.provider))
        return RelayedResponse(b"", status=101)

    resp_headers = forwarding.without_hop_by_hop(handshake.headers)
    on_close = []
    if exchange is not None:
        _log(runtime.logger.log_request, exchange)
        exchange.got_headers(handshake.status, resp_headers, sse=False)
        on_close.append(lambda: _log_response(runtime, exchange))
    body_iter = ClosingIterator(websocket.answer_body(handshake, exchange), on_close)
    return RelayedResponse(body_iter, status=handshake.status, headers=resp_headers, direct_passthrough=True)


def _log_response(runtime: WorkerState, exchange: Exchange) -> None:
    if exchange.total_ms is None:  # the body was never read: the client left first
        exchange.finish("client disconnected")
    _log(runtime.logger.log_response, exchange)


_log_failures = RateLimitedLog(log, logging.ERROR, 60.0)


def _log(method, exchange: Exchange) -> None:
    """Logging never fails a proxied call, not even through a bug of its own."""
    try:
        method(exchange)
    except Exception as exc:
        _log_failures.log("logging %s %s failed: %r", exchange.method, exchange.route.path, exc)


def _path_and_query(url: str) -> str:
    return "/" + url.split("/", 3)[3]
