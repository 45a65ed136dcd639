"""What differs between LLM APIs, one module per API.

Each module answers the questions the rest of the proxy asks about an exchange of its API:
which exchanges it speaks (``handles``), what a request asks for (``request_summary``), and what
an answer says about itself (``response_summary`` for a JSON body, ``Stream`` for the events of an
SSE stream or WebSocket session). Adding an API is adding a module here and to :data:`APIS`.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, Iterable

from llmproxy.providers import anthropic, openai_chat, openai_responses
from llmproxy.providers.summary import Summary

# First match wins: Responses before Chat, whose module also takes the rest of OpenAI's paths.
APIS: tuple[ModuleType, ...] = (anthropic, openai_responses, openai_chat)

__all__ = ["APIS", "Summary", "api_for", "request_summary", "response_summary", "stream_summary"]


def api_for(provider: str, path: str) -> ModuleType | None:
    """The module of the API an exchange speaks, or None for one the proxy does not summarise."""
    for api in APIS:
        if api.handles(provider, path):
            return api
    return None


def _json(data: bytes | str) -> Any:
    if not data or data[:1] not in ("{", b"{"):
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def request_summary(api: ModuleType | None, body: Any) -> dict:
    """``model``, ``stream``, ``tools_count``, ``messages_count`` of a parsed request body (what is
    there); empty when the body is not a JSON object. Never raises."""
    if api is None or not isinstance(body, dict):
        return {}
    try:
        return api.request_summary(body)
    except Exception:  # a body of an unexpected shape is logged without a summary
        return {}


def response_summary(api: ModuleType | None, body: bytes | str) -> dict:
    """The summary fields of a JSON answer (``model``, ``stop_reason``, ``usage``, ``tool_calls``,
    what is there). Never raises."""
    if api is None:
        return {}
    doc = _json(body.lstrip() if isinstance(body, (bytes, str)) else b"")
    if not isinstance(doc, dict):
        return {}
    summary = Summary()
    try:
        api.response_summary(doc, summary)
    except Exception:
        pass  # whatever was read before the surprise is kept
    return summary.fields()


def events(raws: Iterable[bytes], wanted) -> Iterable[dict]:
    """The JSON events of SSE chunks (``data:`` lines) or WebSocket messages (one JSON text each):
    the first, and those whose raw text ``wanted`` (a compiled regex) finds. The many text deltas
    of a long answer are never parsed."""
    for i, raw in enumerate(raws):
        if i and not wanted.search(raw):
            continue
        start = raw.lstrip()[:1]
        if start == b"{":  # a WebSocket message
            doc = _json(raw.strip())
        else:
            data = b"\n".join(line[5:].lstrip(b" ") for line in raw.splitlines() if line.startswith(b"data:"))
            doc = _json(data)
        if isinstance(doc, dict):
            yield doc


def stream_summary(api: ModuleType | None, raws: Iterable[bytes]) -> dict:
    """The summary fields of a stream, from its events in order. A stream cut short keeps what its
    events carried so far (usage from ``message_start`` is billed). Never raises."""
    if api is None:
        return {}
    summary = Summary()
    try:
        for event in events(raws, api.WANTED):
            api.add_event(event, summary)
    except Exception:
        pass
    return summary.fields()
