"""Client session ids: the rules every provider's ids follow, and the lookup keys the proxy makes.

Claude Code, the Codex CLI and the SDKs each name their session differently (each provider module
in ``llmproxy.providers`` knows where its clients put it); the ids found are only used when they
look like ids (``[A-Za-z0-9_-]{1,255}``): anything else is ignored, so a client can never steer a
file path.
"""

from __future__ import annotations

import re
from typing import Any, Callable

VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")

# A lookup key of this kind names a response the proxy has seen; the session it belongs to is
# stored under it when the response is logged (Responses API ``previous_response_id``).
RESPONSE_KEY = "response:"


def session_name(client_id: str | None) -> str | None:
    """What the client calls its session (``client_session_id``): a response key names none."""
    return None if client_id is None or client_id.startswith(RESPONSE_KEY) else client_id


def valid(value: Any) -> str | None:
    return value if isinstance(value, str) and VALID_ID.fullmatch(value) else None


def header(headers: dict[str, str], *names: str) -> str | None:
    """The first of ``names`` (lower case) whose value is a valid id."""
    for name in names:
        value = valid(headers.get(name))
        if value:
            return value
    return None


def first(candidates: list[Callable[[], str | None]]) -> str | None:
    """The first candidate that finds an id (they are tried in order, lazily)."""
    for candidate in candidates:
        found = candidate()
        if found:
            return found
    return None
