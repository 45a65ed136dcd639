"""What a session's transcript (llmproxy/record/transcript.py) shows of a request's new turn and of an
answer, as each API module reads them: the module parses, the transcript renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass
class Part:
    """One piece of a message: ``text``; a tool ``call`` (``name``, ``text`` its arguments); a
    tool ``result`` (``name`` the call's id, ``text`` or, when it has blocks, ``parts``); or
    another ``block`` (``name`` its type)."""

    kind: str
    text: str = ""
    name: str = ""
    parts: list[Part] | None = None


def text(value: Any) -> Part:
    return Part("text", value if isinstance(value, str) else "")


@dataclass
class Said:
    """What an answer said: its text (a stream's deltas joined), its tool calls (name,
    arguments), in order, and the thinking it showed (summaries of its reasoning)."""

    text: list[str] = field(default_factory=list)
    tools: list[tuple[str, str]] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)


class Stream:
    """A stream's text deltas and tool calls, as an API module reads them from its events."""

    def __init__(self) -> None:
        self._deltas: list[str] = []
        self._thoughts: list[str] = []
        self._calls: dict[Any, list[str]] = {}

    def delta(self, value: Any) -> None:
        if isinstance(value, str):
            self._deltas.append(value)

    def thought(self, value: Any) -> None:
        """More of the thinking the model shows."""
        if isinstance(value, str):
            self._thoughts.append(value)

    def call(self, key: Any, name: Any) -> None:
        """A tool call starts (or its first delta names it)."""
        slot = self._calls.setdefault(key, ["", ""])
        slot[0] = slot[0] or (name if isinstance(name, str) else "")

    def arguments(self, key: Any, value: Any) -> None:
        """More of a started call's arguments."""
        if key in self._calls and isinstance(value, str):
            self._calls[key][1] += value

    def said(self) -> Said:
        return Said(["".join(self._deltas)] if self._deltas else [],
                    [(name, args) for name, args in self._calls.values()],
                    ["".join(self._thoughts)] if self._thoughts else [])


def blocks(content: Any, text_types: Iterable[str], special: Callable[[dict], Part | None] | None = None) -> list[Part]:
    """The parts of a message's content: a string, or a list of typed blocks (``text_types`` are
    text; ``special`` reads others it knows, such as tool calls; the rest show as their type)."""
    if isinstance(content, str):
        return [text(content)]
    parts = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        part = text(block.get("text", "")) if kind in text_types else special(block) if special else None
        if part is None and kind:
            part = Part("block", name=str(kind))
        if part is not None:
            parts.append(part)
    return parts


def after_last(messages: list, answered: Callable[[dict], bool]) -> list[dict]:
    """The messages after the last one ``answered`` says the model wrote (what a turn adds)."""
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and answered(m)), default=-1)
    return [m for m in messages[last + 1:] if isinstance(m, dict)]


def number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
