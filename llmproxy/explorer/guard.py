"""What keeps the explorer safe by default: who may ask, what a page may do.

Without ``LLM_PROXY_EXPLORER_TOKEN`` the explorer listens on loopback only and answers only
requests that name a loopback host (a web page elsewhere cannot reach it through a DNS name
that resolves to 127.0.0.1). With a token, every request carries it: ``Authorization: Bearer``,
or the cookie that the link with ``?token=…`` sets once (the link ``llm-proxy explore`` prints).
The explorer only reads: any method but GET and HEAD is refused. Every answer forbids inline
script, framing and sniffing; everything from the logs is escaped by the templates.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlencode

from flask import Flask, Response, redirect, request

from llmproxy.settings import ExplorerSettings, is_loopback

COOKIE = "llm_proxy_explorer"
# No inline script or style; data: images only for the favicon; fetch() to ourselves only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _host_name(host: str) -> str:
    """``127.0.0.1:8081`` → ``127.0.0.1``; ``[::1]:8081`` → ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _given_token() -> str:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.args.get("token") or request.cookies.get(COOKIE) or ""


def install(app: Flask, settings: ExplorerSettings, refuse) -> None:
    """Check every request before its view, and add the headers to every answer. ``refuse``
    renders an error page: ``refuse(status, title, message)``."""
    token = settings.token

    @app.before_request
    def check() -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return refuse(405, "Read only", "The explorer only reads the logs.")
        if not token:
            if not is_loopback(_host_name(request.host)):
                return refuse(403, "Loopback only",
                              "Without LLM_PROXY_EXPLORER_TOKEN the explorer answers only at 127.0.0.1, "
                              "[::1] or localhost.")
            return None
        if request.path == "/health":  # says only that it is up, for checks that hold no token
            return None
        given = _given_token()
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return refuse(401, "Token needed",
                          "Open the address that llm-proxy explore printed (it carries the token), "
                          "or send Authorization: Bearer <LLM_PROXY_EXPLORER_TOKEN>.")
        if "token" in request.args:  # once: keep it in a cookie, and out of the address bar and history
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            answer = redirect(request.path + ("?" + urlencode(rest) if rest else ""), 303)
            answer.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
            return answer
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if token:
            response.headers.setdefault("Cache-Control", "private, no-store")
        return response
