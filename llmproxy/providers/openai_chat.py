"""OpenAI Chat Completions (``/v1/chat/completions``) and legacy Completions (``/v1/completions``),
and the rest of OpenAI's logged paths (Assistants threads), which answer in the same terms.

Routed as ``/openai/{upstream}/…``. What all OpenAI APIs share lives here and the Responses
module reuses it: where a client names its session (first match wins), the sub-agent header
and the error shape ``{"error": {"message", "type", "code"}}``.

A stream carries usage only in its final chunk (``"choices": []``), and only when the client asked
for it (``stream_options.include_usage``); a tool call's name comes in the first delta of that call.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from llmproxy.common.clientids import RESPONSE_KEY, first, header, valid
from llmproxy.providers.spelling import TEXT, Spelling
from llmproxy.providers.summary import Counts, Summary, common_request, count
from llmproxy.providers.transcribe import Part, Said, Stream, after_last, blocks, error_message, joined, number

PREFIX = "openai"
NAMES = ("openai", "chatgpt")
HOSTS = {"api.openai.com": "openai"}
PRICED_AS = "openai"  # genai-prices' list for a host it does not know
# What points the SDK at the proxy (the Codex CLI reads config.toml instead: llmproxy/setup/codex.py).
CLIENT_ENV = {"OPENAI_BASE_URL": "/openai/api.openai.com/v1"}
LOGGED = re.compile(r"/v1/chat/completions|/v1/completions|/v1/threads/[^/]+/(?:messages|runs)(?:/.*)?")
AGENT_HEADERS = ("x-openai-subagent",)
_THREAD_PATH = re.compile(r"/v1/threads/([^/?]+)/")

# System and developer messages are the client's instructions, not turns of the conversation.
SPELLING = Spelling(context_roles=frozenset({"system", "developer"}))

WANTED = re.compile(rb'"usage"\s*:\s*\{|"finish_reason"\s*:\s*"|"tool_calls"|"function_call"')


def handles(provider: str, path: str) -> bool:
    return provider in NAMES


def client_session_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    """An Assistants thread; the Codex CLI's ``session-id`` header; the Responses API's
    ``conversation`` or ``previous_response_id`` (the session of that response, by its lookup
    key); ``metadata.session_id``; ``X-Session-ID``; ``X-Client-Request-Id``; ``user``."""
    thread = _THREAD_PATH.match(path)
    conversation_id = body.get("conversation")
    if isinstance(conversation_id, dict):
        conversation_id = conversation_id.get("id")
    previous = valid(body.get("previous_response_id"))
    metadata = body.get("metadata")
    candidates: list[Callable[[], str | None]] = [
        lambda: valid(thread.group(1)) if thread else None,
        lambda: header(headers, "session-id", "session_id"),
        lambda: valid(conversation_id),
        lambda: RESPONSE_KEY + previous if previous else None,
        lambda: valid(metadata.get("session_id")) if isinstance(metadata, dict) else None,
        lambda: header(headers, "x-session-id", "x-client-request-id"),
        lambda: valid(body.get("user")),
    ]
    return first(candidates)


def conversation(body: dict) -> list:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def error_document(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code}}


def request_summary(body: dict) -> dict:
    return common_request(body, count(body.get("messages")))


def _choice(choice, summary: Summary, key: str) -> None:
    if not isinstance(choice, dict):
        return
    summary.set_stop_reason(choice.get("finish_reason"))
    message = choice.get(key)
    if not isinstance(message, dict):
        return
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            summary.add_tool((call.get("function") or {}).get("name"))
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        summary.add_tool(legacy.get("name"))


def response_summary(doc: dict, summary: Summary) -> None:
    summary.set_model(doc.get("model"))
    summary.merge_usage(doc.get("usage"))
    for choice in doc.get("choices") or ():
        _choice(choice, summary, "message")


def add_event(event: dict, summary: Summary) -> None:
    if summary.model is None:
        summary.set_model(event.get("model"))
    summary.merge_usage(event.get("usage"))
    for choice in event.get("choices") or ():
        _choice(choice, summary, "delta")


# --- the transcript ---

def turn(body: dict) -> list[tuple[str, list[Part]]]:
    """(role, parts) of the messages after the last assistant message; a ``tool`` message is
    the result of a call."""
    out = []
    for message in after_last(conversation(body), lambda m: m.get("role") == "assistant"):
        role, parts = message.get("role", "user"), blocks(message.get("content"), (TEXT,))
        if role == "tool":
            ref = str(message.get("tool_call_id", ""))
            parts = [Part("result", name=ref, ref=ref, parts=parts)]
        out.append((role, parts))
    return out


def system(body: dict) -> str:
    """The system and developer messages' text."""
    return "\n\n".join(filter(None, (joined(m.get("content"), (TEXT,)) for m in conversation(body)
                                       if isinstance(m, dict) and m.get("role") in SPELLING.context_roles)))


def said(doc: dict) -> Said:
    out = Said(error=error_message(doc))
    for choice in doc.get("choices") or ():
        message = (choice.get("message") if isinstance(choice, dict) else None) or {}
        if message.get("content"):
            out.parts.append(Part("text", message["content"]))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            out.parts.append(Part("call", function.get("arguments", ""), name=function.get("name"),
                                  ref=str(call.get("id", ""))))
    return out


def said_events(events: Iterable[dict]) -> Said:
    stream = Stream()
    for event in events:
        if event.get("error"):
            stream.failed(error_message(event))
        for choice in event.get("choices") or ():
            delta = (choice.get("delta") if isinstance(choice, dict) else None) or {}
            if delta.get("content"):
                stream.delta(delta["content"])
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                key = ("call", call.get("index"))
                stream.call(key, function.get("name"), call.get("id"))
                stream.arguments(key, function.get("arguments") or "")
    return stream.said()


def token_counts(usage: dict) -> Counts | None:
    """``prompt_tokens`` counts the cached ones too (``prompt_tokens_details``); reasoning tokens
    are part of ``completion_tokens``."""
    return counts(usage, "prompt_tokens", "prompt_tokens_details", "completion_tokens")


def counts(usage: dict, prompt: str, details: str, completion: str) -> Counts | None:
    """OpenAI's usage in either API's names: a prompt total with its cached (and, where a
    gateway reports them, cache-written) tokens in a details object, and a completion total."""
    total = number(usage.get(prompt))
    if total is None:
        return None
    detail = usage.get(details) if isinstance(usage.get(details), dict) else {}
    read = number(detail.get("cached_tokens")) or 0
    written = number(detail.get("cache_write_tokens")) or 0
    return Counts(input=max(total - read - written, 0), output=number(usage.get(completion)) or 0,
                  cache_write=written, cache_read=read)
