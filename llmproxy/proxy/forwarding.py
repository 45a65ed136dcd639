"""Sending a request upstream and relaying the answer back, bytes untouched, as it arrives."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Iterator

import requests
import urllib3
from requests.adapters import HTTPAdapter

from llmproxy.common.errors import UpstreamTimeout, UpstreamUnreachable, innermost_reason
from llmproxy.proxy.capture import Exchange

log = logging.getLogger("llmproxy.forwarding")

# RFC 9110 7.6.1 hop-by-hop headers, plus Host (it names the upstream, set from the URL) and
# Expect: gunicorn already answered "100 Continue" and the whole body is here (curl sends
# "Expect: 100-continue" with large bodies).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "expect",
})
# gunicorn writes its own Date and Server; a second copy of each would only confuse.
_RESPONSE_DROP = HOP_BY_HOP | {"date", "server"}

READ_SIZE = 64 * 1024

# Header names the client sent with underscores (``session_id`` from the Codex CLI). WSGI folds
# ``-`` and ``_`` together; gunicorn's ``pre_request`` hook records the real names here.
underscore_headers = threading.local()


class _NoCookies(requests.cookies.RequestsCookieJar):
    """Keeps nothing: a session shared by all clients must never send one client's cookies
    (Set-Cookie from the provider) with another client's request."""

    def set_cookie(self, cookie, *args, **kwargs):
        pass

    def extract_cookies(self, response, request):
        pass


class _RelayAdapter(HTTPAdapter):
    """An adapter that leaves Set-Cookie to the client instead of parsing it for a jar."""

    def build_response(self, req, resp):
        response = requests.Response()
        response.status_code = resp.status
        response.headers = requests.structures.CaseInsensitiveDict(resp.headers)
        response.encoding = None
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url
        response.request = req
        response.connection = self
        return response


def new_session(pool_size: int) -> requests.Session:
    """One pooled session for all threads of a worker; it adds no headers or cookies of its own."""
    session = requests.Session()
    session.trust_env = False          # no proxies or .netrc credentials from the environment
    session.headers.clear()            # no User-Agent, Accept or Accept-Encoding of requests'
    session.cookies = _NoCookies()
    adapter = _RelayAdapter(pool_connections=8, pool_maxsize=max(pool_size, 1), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# WSGI environ key → (header name as forwarded, its lower case); the same keys come every request.
_HEADER_NAMES: dict[str, tuple[str, str]] = {}


def _header_name(key: str) -> tuple[str, str]:
    names = _HEADER_NAMES.get(key)
    if names is None:
        name = (key[5:] if key.startswith("HTTP_") else key).replace("_", "-").title()
        names = (name, name.lower())
        if len(_HEADER_NAMES) < 1000:  # header names are the client's to choose: keep it bounded
            _HEADER_NAMES[key] = names
    return names


def client_headers(environ: dict) -> list[tuple[str, str]]:
    """The request headers to forward: all but hop-by-hop ones and those ``Connection`` names."""
    with_underscores = getattr(underscore_headers, "names", None) or ()
    underscore_headers.names = None
    connection = environ.get("HTTP_CONNECTION")
    connection_tokens = {t.strip().lower() for t in connection.split(",")} if connection else ()
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key[5:] in with_underscores:
                name = lowered = key[5:].lower()
            else:
                name, lowered = _header_name(key)
        elif key == "CONTENT_TYPE":
            name, lowered = "Content-Type", "content-type"
        else:  # CONTENT_LENGTH is the proxy's to set; the rest is not a header
            continue
        if lowered not in HOP_BY_HOP and lowered not in connection_tokens and lowered != "content-length":
            headers.append((name, value))
    return headers


def upstream_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    out = dict(headers)
    if not any(n.lower() == "user-agent" for n in out):
        out["User-Agent"] = urllib3.util.SKIP_HEADER  # not urllib3's own
    return out


def response_headers(resp: requests.Response) -> list[tuple[str, str]]:
    """Upstream response headers minus hop-by-hop ones; repeated headers (Set-Cookie) kept apart."""
    return without_hop_by_hop(resp.raw.headers.items())


def without_hop_by_hop(headers) -> list[tuple[str, str]]:
    """Response headers as the client gets them: no hop-by-hop ones, none ``Connection`` names."""
    headers = list(headers)
    connection_tokens = {t.strip().lower() for n, v in headers if n.lower() == "connection"
                         for t in v.split(",")}
    return [(n, v) for n, v in headers
            if n.lower() not in _RESPONSE_DROP and n.lower() not in connection_tokens]


def open_upstream(session: requests.Session, method: str, url: str, headers: list[tuple[str, str]],
                  body: bytes, connect_timeout: float, read_timeout: float) -> requests.Response:
    """Send the request; return once the response headers are in. Raise the proxy's own errors.

    The request goes straight to the session's adapter: ``Session.request`` would merge
    environment settings, cookies and hooks the proxy must not add, and costs about 0.4 ms a call.
    """
    prepared = requests.PreparedRequest()
    prepared.method = method
    prepared.url = url
    prepared.headers = requests.structures.CaseInsensitiveDict(upstream_headers(headers))
    if body or method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        prepared.headers["Content-Length"] = str(len(body))
    prepared.body = body or None
    prepared.hooks = {"response": []}
    try:
        response = session.get_adapter(url).send(prepared, stream=True,
                                                 timeout=(connect_timeout, read_timeout))
        prepared.body = None  # sent; a long stream need not keep a large request alive
        return response
    except requests.exceptions.ConnectTimeout:
        raise UpstreamTimeout(f"connecting to {_origin(url)} timed out after {connect_timeout:g}s") from None
    except requests.exceptions.ReadTimeout:
        raise UpstreamTimeout(f"{_origin(url)} sent no response within {read_timeout:g}s") from None
    except requests.exceptions.SSLError as exc:
        raise UpstreamUnreachable(f"TLS error talking to {_origin(url)}: {innermost_reason(exc)}") from None
    except requests.exceptions.ConnectionError as exc:
        raise UpstreamUnreachable(f"cannot reach {_origin(url)}: {innermost_reason(exc)}") from None


def relay(resp: requests.Response, exchange: Exchange | None) -> Iterator[bytes]:
    """Yield the upstream body as it arrives, still content-encoded, each read at once.

    ``read1`` returns whatever bytes are there (an SSE event, a chunk) instead of waiting for a
    full buffer. A client that goes away ends the generator (GeneratorExit), which closes the
    upstream connection. An upstream that breaks off cuts the client's connection too, rather
    than letting a truncated answer look complete: gunicorn closes a connection on ECONNRESET
    without a traceback (our warning says what happened).
    """
    raw = resp.raw
    error = None
    try:
        while True:
            data = raw.read1(READ_SIZE, decode_content=False)
            if not data:
                break
            if exchange is not None:
                exchange.got_data(data)
            yield data
    except GeneratorExit:
        error = "client disconnected"
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        error = f"upstream stream broke off: {innermost_reason(exc)}"
        log.warning("%s: %s", resp.url.split("?")[0], error)
        raise ConnectionResetError(errno.ECONNRESET, error) from None
    finally:
        resp.close()
        if exchange is not None:
            exchange.finish(error)


def _origin(url: str) -> str:
    return url.split("/", 3)[2] if "://" in url else url
