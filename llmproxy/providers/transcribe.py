"""What a session's readers show of a request's new turn and of an answer, as each API module
reads them: the module parses; the transcript (llmproxy/record/transcript.py) and the explorer
(llmproxy/explorer/) render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass
class Part:
    """One piece of a message: ``text``; ``thinking`` (the model's reasoning as it was shown;
    ``name`` is ``redacted`` when only its encrypted form came); a tool ``call`` (``name`` the
    tool, ``text`` its arguments, ``ref`` its id); a tool ``result`` (``name`` and ``ref`` the
    call's id, ``text`` or, when it has blocks, ``parts``; ``failed`` when the tool said it
    failed); or another ``block`` (``name`` its type)."""

    kind: str
    text: str = ""
    name: str = ""
    parts: list[Part] | None = None
    ref: str = ""
    failed: bool = False


def text(value: Any) -> Part:
    return Part("text", value if isinstance(value, str) else "")


@dataclass
class Said:
    """What an answer said, in order: text, thinking and tool calls (:class:`Part`), and the
    error it ended with, if any (a stream's error event, an error body)."""

    parts: list[Part] = field(default_factory=list)
    error: str = ""

    @property
    def text(self) -> list[str]:
        return [p.text for p in self.parts if p.kind == "text"]

    @property
    def tools(self) -> list[tuple[str, str]]:
        """(name, arguments) of each tool call."""
        return [(p.name, p.text) for p in self.parts if p.kind == "call"]


class Stream:
    """An answer's parts as an API module reads them from its events: each part has a key (the
    API's index of it); deltas add to the part of their key, in the order parts started."""

    def __init__(self) -> None:
        self._parts: dict[Any, Part] = {}
        self.error = ""

    def _slot(self, key: Any, kind: str) -> Part:
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = Part(kind)
        return part

    def delta(self, value: Any, key: Any = "text") -> None:
        """More text of the text part ``key``."""
        if isinstance(value, str):
            self._slot(key, "text").text += value

    def thinking(self, key: Any, value: Any = "", redacted: bool = False) -> None:
        """A thinking part starts, or gets more of its text."""
        part = self._slot(key, "thinking")
        if isinstance(value, str):
            part.text += value
        if redacted:
            part.name = "redacted"

    def call(self, key: Any, name: Any, ref: Any = None) -> None:
        """A tool call starts (or its first delta names it)."""
        part = self._slot(key, "call")
        part.name = part.name or (name if isinstance(name, str) else "")
        part.ref = part.ref or (ref if isinstance(ref, str) else "")

    def arguments(self, key: Any, value: Any) -> None:
        """More of a started call's arguments."""
        if key in self._parts and isinstance(value, str):
            self._parts[key].text += value

    def complete(self, key: Any, part: Part) -> None:
        """A part as the API sent it whole when it ended: taken where its deltas gave nothing
        (a WebSocket answer may carry only the finished items)."""
        known = self._parts.get(key)
        if known is None or (not known.text and (part.text or part.name or part.kind != known.kind)):
            self._parts[key] = part
        elif part.kind == "call":
            known.ref = known.ref or part.ref

    def failed(self, message: Any) -> None:
        self.error = message if isinstance(message, str) and message else self.error or "error"

    def said(self) -> Said:
        return Said([p for p in self._parts.values() if p.kind != "text" or p.text], self.error)


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


def joined(content: Any, text_types: Iterable[str]) -> str:
    """The text of a content value (a string, or text blocks), blocks a blank line apart."""
    return "\n\n".join(p.text for p in blocks(content, text_types) if p.kind == "text" and p.text)


def after_last(messages: list, answered: Callable[[dict], bool]) -> list[dict]:
    """The messages after the last one ``answered`` says the model wrote (what a turn adds)."""
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict) and answered(m)), default=-1)
    return [m for m in messages[last + 1:] if isinstance(m, dict)]


def error_message(doc: Any) -> str:
    """The message of an error document (``{"error": {"message": …}}``, the shape every API
    shares), else empty."""
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) and message else str(error.get("type") or "error")
    return error if isinstance(error, str) else ""


def number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
