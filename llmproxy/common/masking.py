"""Masking secrets before anything is written: a recognisable prefix and the last 4 characters.

``sk-ant-api03-…abcd`` → ``sk-ant-...abcd``; ``Bearer sk-proj-…wxyz`` → ``Bearer sk-proj-...wxyz``;
short secrets keep no suffix at all. Cookies keep their names and attributes, never values.
"""

from __future__ import annotations

import re

SECRET_HEADERS = frozenset({
    "x-api-key", "authorization", "proxy-authorization", "api-key", "x-goog-api-key",
    "x-amz-security-token",  # AWS temporary credentials: as secret as the key they go with
    "cookie", "set-cookie",
})
SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "access_token", "token",
                                 "x-amz-security-token", "x-amz-signature", "x-amz-credential"})  # presigned URLs

_KNOWN_PREFIX = re.compile(r"(sk-ant-|sk-proj-|sk-svcacct-|sk-admin-|sk-|glc_|xai-|gsk_|AIza|eyJ|ghp_|github_pat_)")
_SCHEME = re.compile(r"(Bearer|Basic|Token|Digest)(\s+)(.*)", re.IGNORECASE | re.DOTALL)
MIN_LEN_FOR_SUFFIX = 24  # shorter secrets would give away too large a share of themselves
_COOKIE_ATTRIBUTES = frozenset({"path", "domain", "expires", "max-age", "secure", "httponly", "samesite",
                                "partitioned", "priority"})


def mask_token(token: str) -> str:
    match = _KNOWN_PREFIX.match(token)
    prefix = match.group(1) if match else ""
    suffix = token[-4:] if len(token) >= MIN_LEN_FOR_SUFFIX else ""
    return f"{prefix}...{suffix}"


# Browsers cannot set Authorization on a WebSocket, so OpenAI's Realtime API takes the key as a
# subprotocol: ``Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.sk-…``.
_KEY_IN_PROTOCOL = re.compile(r"(?<=api-key\.)([^,\s]+)", re.IGNORECASE)


def mask_value(name: str, value: str) -> str:
    """The value of header ``name`` as it may be logged."""
    lname = name.lower()
    if lname == "sec-websocket-protocol":
        return _KEY_IN_PROTOCOL.sub(lambda m: mask_token(m.group(1)), value)
    if lname not in SECRET_HEADERS:
        return value
    if lname in ("cookie", "set-cookie"):
        return _mask_cookies(value, lname == "set-cookie")
    match = _SCHEME.fullmatch(value.strip())
    if match:
        return f"{match.group(1)}{match.group(2)}{mask_token(match.group(3).strip())}"
    return mask_token(value.strip())


def _mask_cookies(value: str, set_cookie: bool) -> str:
    parts = []
    for i, part in enumerate(value.split(";")):
        name, eq, _ = part.strip().partition("=")
        keep = set_cookie and i > 0 and name.lower() in _COOKIE_ATTRIBUTES
        parts.append(part.strip() if keep or not eq else f"{name}=...")
    return "; ".join(parts)


def mask_headers(headers: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Headers as a JSON object, secrets masked; a repeated header becomes a list of values."""
    out: dict[str, str | list[str]] = {}
    for name, value in headers:
        value = mask_value(name, value)
        if name in out:
            previous = out[name]
            out[name] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            out[name] = value
    return out


_QUERY_SECRET = re.compile(r"(?<=[?&])(" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS) + r")=([^&#]*)",
                           re.IGNORECASE)


def mask_query(path: str) -> str:
    """A path with query parameters that carry keys (``?key=…``) masked."""
    if "?" not in path:
        return path
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={mask_token(m.group(2))}", path)


# Free text that may hold a key: gunicorn's warning about a header line it cannot parse quotes
# the line (``Invalid header: 'Authorization Bearer sk-…'``), an error may quote a URL.
_SECRET_IN_TEXT = re.compile(
    r"(?:(?<=Bearer )|(?<=Basic )|(?<=Token ))[^\s'\"]+"
    r"|(?:sk-|glc_|xai-|gsk_|AIza|ghp_|github_pat_)[A-Za-z0-9_\-]{8,}"
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}"  # an AWS access key id
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*",
    re.IGNORECASE)
_QUERY_SECRET_IN_TEXT = re.compile(
    r"(?<=[?&])(" + "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS) + r")=([^&#\s'\"]*)", re.IGNORECASE)


def mask_text(text: str) -> str:
    """A log message or error text with anything that looks like a key or token masked."""
    text = _SECRET_IN_TEXT.sub(lambda m: mask_token(m.group(0)), text)
    return _QUERY_SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}={mask_token(m.group(2))}", text)


class MaskingFilter:
    """A :mod:`logging` filter: the record's formatted message with secrets masked
    (:func:`mask_text`). Attached to gunicorn's error log and llm-proxy's own logger."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True
