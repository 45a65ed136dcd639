"""Anthropic Messages API (``/v1/messages``): Claude Code, the Anthropic SDKs.

A stream's usage comes in two parts: ``message_start`` carries the input side (``input_tokens``,
``cache_creation_input_tokens``, ``cache_read_input_tokens``) and ``message_delta`` the final
``output_tokens`` (newer API versions repeat the input side there too; the later number wins).
"""

from __future__ import annotations

import re

from llmproxy.providers.summary import Summary, common_request, count

# Events worth parsing; the many content_block_delta events carry none of the summary.
WANTED = re.compile(rb'"type"\s*:\s*"(?:message_start|message_delta|content_block_start)"')
TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def handles(provider: str, path: str) -> bool:
    return provider == "anthropic"


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
