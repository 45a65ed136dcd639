"""OpenAI Chat Completions (``/v1/chat/completions``) and legacy Completions (``/v1/completions``),
and the rest of OpenAI's logged paths (Assistants threads), which answer in the same terms.

A stream carries usage only in its final chunk (``"choices": []``), and only when the client asked
for it (``stream_options.include_usage``); a tool call's name comes in the first delta of that call.
"""

from __future__ import annotations

import re

from llmproxy.providers.summary import Summary, common_request, count

WANTED = re.compile(rb'"usage"\s*:\s*\{|"finish_reason"\s*:\s*"|"tool_calls"|"function_call"')


def handles(provider: str, path: str) -> bool:
    return provider in ("openai", "chatgpt")


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
