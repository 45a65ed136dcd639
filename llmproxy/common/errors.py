"""The proxy's own failures, one small family, and how each becomes an HTTP answer.

Upstream errors (429, 500, 529…) are not errors of the proxy: they pass through untouched. These
are only for what the proxy itself refuses or cannot do; each provider module shapes them like
its own errors (``llmproxy.providers.error_body``) so that SDKs show the message.
"""

from __future__ import annotations


class ProxyError(Exception):
    """Base of the proxy's own failures. ``status``, ``message`` and ``code`` shape the answer."""

    status = 500
    code = "proxy_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRoute(ProxyError):
    status = 400
    code = "invalid_proxy_path"


class UnknownProvider(BadRoute):
    code = "unknown_provider"


class UpstreamNotAllowed(ProxyError):
    status = 403
    code = "upstream_not_allowed"


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"


class UpstreamCredentialsMissing(ProxyError):
    """The proxy signs this API's calls itself (Bedrock's SigV4) and has no credentials (or no
    region) to sign this one with."""

    status = 502
    code = "upstream_credentials_missing"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class RequestRejected(ProxyError):
    """A request the proxy refuses before any of its code runs: Werkzeug's own HTTP exceptions
    (a method the router does not know, a WebSocket upgrade with a method other than GET…) and
    gunicorn's request parser (a bad request line or header), answered as JSON."""

    code = "request_rejected"

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def rejected(status: int, message: str) -> ProxyError:
    """A refusal with the server's status: the client's fault (4xx) or the proxy's (5xx)."""
    return RequestRejected(status, message) if status < 500 else ProxyError(message)


class WebSocketUnsupported(ProxyError):
    """The server in front of the app cannot hand over its client socket (not gunicorn's
    plain-socket workers): the upgrade is refused before anything is sent upstream."""

    status = 501
    code = "websocket_unsupported"


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
