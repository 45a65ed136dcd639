"""The proxy's own failures, one small family, and how each becomes an HTTP answer.

Upstream errors (429, 500, 529…) are not errors of the proxy: they pass through untouched. These
are only for what the proxy itself refuses or cannot do, shaped like the provider's own errors so
that SDKs show the message.
"""

from __future__ import annotations

import json


class ProxyError(Exception):
    """Base of the proxy's own failures. ``status``, ``anthropic_type`` and ``code`` shape the answer."""

    status = 500
    anthropic_type = "api_error"
    openai_type = "server_error"
    code = "proxy_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRoute(ProxyError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    code = "invalid_proxy_path"


class UnknownProvider(BadRoute):
    code = "unknown_provider"


class UpstreamNotAllowed(ProxyError):
    status = 403
    anthropic_type = "permission_error"
    openai_type = "invalid_request_error"
    code = "upstream_not_allowed"


class UpstreamUnreachable(ProxyError):
    status = 502
    anthropic_type = "api_error"
    openai_type = "server_error"
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    anthropic_type = "timeout_error"
    openai_type = "server_error"
    code = "upstream_timeout"


class RequestRejected(ProxyError):
    """A request the proxy's router refuses (a method it does not know, a WebSocket upgrade
    with a method other than GET…): Werkzeug's own HTTP exceptions, answered as JSON."""

    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"
    code = "request_rejected"

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class WebSocketUnsupported(ProxyError):
    """The server in front of the app cannot hand over its client socket (not gunicorn's
    plain-socket workers): the upgrade is refused before anything is sent upstream."""

    status = 501
    code = "websocket_unsupported"


def error_body(provider: str | None, error: ProxyError) -> bytes:
    """The JSON body in the provider's own error shape.

    For an unknown provider the body satisfies both shapes (``type``/``error.type``/``error.message``
    for Anthropic clients, ``error.message``/``error.type``/``error.code`` for OpenAI ones).
    """
    if provider == "anthropic":
        doc: dict = {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
    elif provider in ("openai", "chatgpt"):
        doc = {"error": {"message": error.message, "type": error.openai_type, "code": error.code}}
    else:
        doc = {"type": "error",
               "error": {"type": error.anthropic_type, "message": error.message, "code": error.code}}
    return json.dumps(doc).encode()


def innermost_reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, without the wrappers' long text."""
    seen = exc
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__
        if inner is None and seen.args and isinstance(seen.args[0], BaseException):
            inner = seen.args[0]
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen)
    # urllib3 prefixes "<urllib3.connection.HTTPConnection object at 0x…>: "
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return text
