"""OpenAI Responses API (``/v1/responses``), also as the ChatGPT backend the Codex CLI uses when
signed in with ChatGPT (``chatgpt.com/backend-api/codex/responses``), over SSE or WebSocket.

The answer is a response object; a stream (or a WebSocket session) sends it in
``response.created`` (model, no usage yet) and in full in its last event, ``response.completed``
(or ``response.incomplete`` / ``response.failed``), with usage. Tool calls are output items.
"""

from __future__ import annotations

import re

from llmproxy.providers.summary import Summary, common_request

WANTED = re.compile(rb'"type"\s*:\s*"response\.(?:created|completed|incomplete|failed|output_item\.done)"')


def handles(provider: str, path: str) -> bool:
    return provider in ("openai", "chatgpt") and path.endswith("/responses")


def request_summary(body: dict) -> dict:
    items = body.get("input")
    messages = len(items) if isinstance(items, list) else (1 if isinstance(items, str) else None)
    summary = common_request(body, messages)
    if body.get("type") == "response.create":  # a WebSocket message: its answer always streams
        summary["stream"] = True
    return summary


def _item(item, summary: Summary) -> None:
    """A function or custom tool call names its tool; a built-in one (``web_search_call``,
    ``local_shell_call``…) is named by its type."""
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if not isinstance(kind, str) or not kind.endswith("_call"):
        return
    summary.add_tool(item.get("name") if kind in ("function_call", "custom_tool_call") else kind[:-5])


def response_summary(doc: dict, summary: Summary, items: bool = True) -> None:
    summary.set_model(doc.get("model"))
    status = doc.get("status")
    details = doc.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    summary.set_stop_reason(reason or (status if status != "in_progress" else None))
    summary.merge_usage(doc.get("usage"))
    if items:
        for item in doc.get("output") or ():
            _item(item, summary)


def add_event(event: dict, summary: Summary) -> None:
    kind = event.get("type")
    if kind == "response.output_item.done":
        _item(event.get("item"), summary)
    elif isinstance(event.get("response"), dict):
        # response.completed repeats the output items already counted from output_item.done
        response_summary(event["response"], summary, items=not summary.tool_calls)
