"""The summary of one answer, as each API module fills it in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """``model``, ``stop_reason``, ``usage`` (in the provider's own names) and ``tool_calls`` (the
    names of the tools the model called, in order)."""

    model: str | None = None
    stop_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[str] = field(default_factory=list)

    def set_model(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.model = value

    def set_stop_reason(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.stop_reason = value

    def merge_usage(self, usage: Any) -> None:
        """Later numbers win (a stream's final usage over its first); nulls are not numbers."""
        if isinstance(usage, dict):
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def add_tool(self, name: Any) -> None:
        if isinstance(name, str) and name:
            self.tool_calls.append(name)

    def fields(self) -> dict:
        """The entry fields, only those known."""
        out: dict[str, Any] = {}
        if self.model:
            out["model"] = self.model
        if self.stop_reason:
            out["stop_reason"] = self.stop_reason
        if self.usage:
            out["usage"] = self.usage
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


@dataclass(frozen=True)
class Counts:
    """An answer's tokens under names every API shares (what ``tokens`` in a response entry holds,
    and what a call is priced from): ``input`` is the uncached input only, so ``input +
    cache_write + cache_read`` is the whole prompt; ``output`` includes reasoning.
    ``cache_write_1h`` (part of ``cache_write``, written to last an hour) and ``web_searches``
    (server-side searches) are priced apart, and not shown."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0
    cache_write_1h: int = 0
    web_searches: int = 0

    @property
    def prompt(self) -> int:
        """Every input token, cached or not."""
        return self.input + self.cache_write + self.cache_read

    def fields(self) -> dict[str, int]:
        """The entry's ``tokens``."""
        return {"input": self.input, "output": self.output, "cache_write": self.cache_write,
                "cache_read": self.cache_read}


def count(value: Any) -> int | None:
    return len(value) if isinstance(value, list) else None


def common_request(body: dict, messages: Any) -> dict:
    """``model``, ``stream``, ``tools_count``, ``messages_count`` (those the body has)."""
    out: dict[str, Any] = {}
    if isinstance(body.get("model"), str):
        out["model"] = body["model"]
    out["stream"] = body.get("stream") is True
    tools = count(body.get("tools"))
    if tools is None:
        tools = count(body.get("functions"))  # Chat Completions' legacy function calling
    out["tools_count"] = tools or 0
    if messages is not None:
        out["messages_count"] = messages
    return out
