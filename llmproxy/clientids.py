"""Which client session a request belongs to, by what today's clients send, first match wins.

Claude Code, the Codex CLI and the SDKs each name their session differently; the ids found here
are only used when they look like ids (``[A-Za-z0-9_-]{1,255}``): anything else is ignored, so a
client can never steer a file path.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_THREAD_PATH = re.compile(r"/v1/threads/([^/?]+)/")

# A lookup key of this kind names a response the proxy has seen; the session it belongs to is
# stored under it when the response is logged (Responses API ``previous_response_id``).
RESPONSE_KEY = "response:"


def session_name(client_id: str | None) -> str | None:
    """What the client calls its session (``client_session_id``): a response key names none."""
    return None if client_id is None or client_id.startswith(RESPONSE_KEY) else client_id


def _valid(value: Any) -> str | None:
    return value if isinstance(value, str) and VALID_ID.fullmatch(value) else None


def _header(headers: dict[str, str], *names: str) -> str | None:
    for name in names:
        value = _valid(headers.get(name))
        if value:
            return value
    return None


def _user_id_session(body: dict) -> str | None:
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):  # Claude Code ≥ 2.1.78: a JSON string
        try:
            inner = json.loads(user_id)
        except ValueError:
            return None
        return _valid(inner.get("session_id")) if isinstance(inner, dict) else None
    if "_session_" in user_id:  # legacy user_<hash>_account_<uuid>_session_<uuid>
        return _valid(user_id.rsplit("_session_", 1)[1])
    return None


def anthropic_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    return _header(headers, "x-claude-code-session-id") or _user_id_session(body)


def openai_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    thread = _THREAD_PATH.match(path)
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    previous = _valid(body.get("previous_response_id"))
    metadata = body.get("metadata")
    candidates: list[Callable[[], str | None]] = [
        lambda: _valid(thread.group(1)) if thread else None,
        lambda: _header(headers, "session-id", "session_id"),
        lambda: _valid(conversation),
        lambda: RESPONSE_KEY + previous if previous else None,
        lambda: _valid(metadata.get("session_id")) if isinstance(metadata, dict) else None,
        lambda: _header(headers, "x-session-id", "x-client-request-id"),
        lambda: _valid(body.get("user")),
    ]
    for candidate in candidates:
        found = candidate()
        if found:
            return found
    return None


def client_session_id(provider: str, path: str, headers: list[tuple[str, str]], body: Any) -> str | None:
    """The client's own session id for this request, or None (then it is a session of its own)."""
    lowered = {name.lower(): value for name, value in headers}
    body = body if isinstance(body, dict) else {}
    if provider == "anthropic":
        return anthropic_id(path, lowered, body)
    return openai_id(path, lowered, body)


AGENT_HEADERS = ("x-claude-code-agent-id", "x-openai-subagent")


def agent_name(headers: list[tuple[str, str]]) -> str | None:
    """The sub-agent a client names in a header, if any."""
    lowered = {name.lower(): value for name, value in headers}
    for header in AGENT_HEADERS:
        value = _valid(lowered.get(header))
        if value:
            return value
    return None
