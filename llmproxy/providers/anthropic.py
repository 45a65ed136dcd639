"""Anthropic Messages API (``/v1/messages``): Claude Code, the Anthropic SDKs.

Routed as ``/anthropic/{upstream}/…``. Claude Code names its session in the
``X-Claude-Code-Session-Id`` header, older versions inside ``metadata.user_id``; a sub-agent in
``x-claude-code-agent-id``. Errors are ``{"type": "error", "error": {"type", "message"}}``.

A stream's usage comes in two parts: ``message_start`` carries the input side (``input_tokens``,
``cache_creation_input_tokens``, ``cache_read_input_tokens``) and ``message_delta`` the final
``output_tokens`` (newer API versions repeat the input side there too; the later number wins).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from llmproxy.common.clientids import header, valid
from llmproxy.providers.spelling import TEXT, Spelling
from llmproxy.providers.summary import Counts, Summary, common_request, count
from llmproxy.providers.transcribe import Part, Said, Stream, after_last, blocks, error_message, joined, number

PREFIX = "anthropic"                       # /anthropic/{upstream}/…
NAMES = ("anthropic",)                     # the provider label its exchanges get
HOSTS = {"api.anthropic.com": "anthropic"}
PRICED_AS = "anthropic"                    # genai-prices' list for a host it does not know
# What points its clients (Claude Code, the SDK) at the proxy: variable → path under the proxy.
CLIENT_ENV = {"ANTHROPIC_BASE_URL": "/anthropic/api.anthropic.com"}
LOGGED = re.compile(r"/v1/messages")       # the exchanges worth a session log
AGENT_HEADERS = ("x-claude-code-agent-id",)

# Events worth parsing; the many content_block_delta events carry none of the summary.
WANTED = re.compile(rb'"type"\s*:\s*"(?:message_start|message_delta|content_block_start)"')
TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})

# A turn's identity leaves out cache_control (moved to the newest message each request), the
# system messages and <system-reminder> text Claude Code regenerates per request, and thinking
# blocks (kept or dropped for earlier turns as the client likes).
SPELLING = Spelling(annotations=frozenset({"cache_control"}), context_roles=frozenset({"system"}),
                    context_texts=("<system-reminder>",), hidden=frozenset({"thinking", "redacted_thinking"}))


def handles(provider: str, path: str) -> bool:
    return provider in NAMES


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
        return valid(inner.get("session_id")) if isinstance(inner, dict) else None
    if "_session_" in user_id:  # legacy user_<hash>_account_<uuid>_session_<uuid>
        return valid(user_id.rsplit("_session_", 1)[1])
    return None


def client_session_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    return header(headers, "x-claude-code-session-id") or _user_id_session(body)


def conversation(body: dict) -> list:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


# Anthropic's error types for the proxy's own answers, by status; other 4xx are invalid requests.
_ERROR_TYPES = {403: "permission_error", 504: "timeout_error"}


def error_document(status: int, message: str, code: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def request_summary(body: dict) -> dict:
    return common_request(body, count(body.get("messages")))


def _block(block, summary: Summary) -> None:
    if isinstance(block, dict) and block.get("type") in TOOL_BLOCKS:
        summary.add_tool(block.get("name"))


def response_summary(doc: dict, summary: Summary) -> None:
    summary.set_model(doc.get("model"))
    summary.set_stop_reason(doc.get("stop_reason"))
    summary.merge_usage(doc.get("usage"))
    for block in doc.get("content") or ():
        _block(block, summary)


def add_event(event: dict, summary: Summary) -> None:
    kind = event.get("type")
    if kind == "message_start":
        message = event.get("message") or {}
        summary.set_model(message.get("model"))
        summary.merge_usage(message.get("usage"))
    elif kind == "content_block_start":
        _block(event.get("content_block"), summary)
    elif kind == "message_delta":
        summary.set_stop_reason((event.get("delta") or {}).get("stop_reason"))
        summary.merge_usage(event.get("usage"))


# --- the transcript ---

def _part(block: dict) -> Part | None:
    kind = block.get("type")
    if kind == "tool_result":
        inner = block.get("content")
        ref = str(block.get("tool_use_id", ""))
        return Part("result", name=ref, ref=ref, failed=block.get("is_error") is True,
                    **({"text": inner} if isinstance(inner, str) else {"parts": _parts(inner)}))
    if kind in TOOL_BLOCKS:
        return Part("call", json.dumps(block.get("input"), ensure_ascii=False), name=block.get("name"),
                    ref=str(block.get("id", "")))
    if kind == "thinking":
        return Part("thinking", str(block.get("thinking", "")))
    if kind == "redacted_thinking":
        return Part("thinking", name="redacted")
    return None


def _parts(content: Any) -> list[Part]:
    return blocks(content, (TEXT,), _part)


def turn(body: dict) -> list[tuple[str, list[Part]]]:
    """(role, parts) of the messages after the last assistant message."""
    messages = conversation(body)
    return [(m.get("role", "user"), _parts(m.get("content")))
            for m in after_last(messages, lambda m: m.get("role") == "assistant")]


def system(body: dict) -> str:
    """The system prompt: a string or text blocks."""
    return joined(body.get("system"), (TEXT,))


def said(doc: dict) -> Said:
    return Said([p for p in _parts(doc.get("content")) if p.kind != "block"], error_message(doc))


def said_events(events: Iterable[dict]) -> Said:
    stream = Stream()
    for event in events:
        kind = event.get("type")
        index = event.get("index")
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") in TOOL_BLOCKS:
                stream.call(index, block.get("name"), block.get("id"))
            elif block.get("type") == "thinking":
                stream.thinking(index, block.get("thinking", ""))
            elif block.get("type") == "redacted_thinking":
                stream.thinking(index, redacted=True)
            elif block.get("type") == TEXT:
                stream.delta(block.get("text", ""), index)
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                stream.delta(delta.get("text", ""), index)
            elif delta.get("type") == "thinking_delta":
                stream.thinking(index, delta.get("thinking", ""))
            elif delta.get("type") == "input_json_delta":
                stream.arguments(index, delta.get("partial_json", ""))
        elif kind == "error":
            stream.failed(error_message(event))
    return stream.said()


def token_counts(usage: dict) -> Counts | None:
    """``input_tokens`` is the uncached input already; cache writes and reads come apart (a
    write's 1-hour part under ``cache_creation``), and the server's web searches in ``server_tool_use``."""
    given = number(usage.get("input_tokens"))
    if given is None:
        return None
    creation = usage.get("cache_creation")
    tools = usage.get("server_tool_use")
    return Counts(input=given, output=number(usage.get("output_tokens")) or 0,
                  cache_write=number(usage.get("cache_creation_input_tokens")) or 0,
                  cache_read=number(usage.get("cache_read_input_tokens")) or 0,
                  cache_write_1h=(number(creation.get("ephemeral_1h_input_tokens")) or 0)
                  if isinstance(creation, dict) else 0,
                  web_searches=(number(tools.get("web_search_requests")) or 0) if isinstance(tools, dict) else 0)
