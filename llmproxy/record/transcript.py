"""A session's entries as a readable conversation (``loki-session --transcript``).

Each request re-sends the conversation so far; a turn shows only what is new in it: the
messages after the last assistant message (the user's words, tool results). The answer shows
the thinking the model showed, the assistant's text with streamed deltas joined, its tool calls,
and the tokens of the turn.
Each API module reads its own requests and answers (``turn``, ``said``, ``tokens`` in
llmproxy/providers/); the model and usage are the response entry's summary fields. An exchange
no module reads is shown as its size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import ModuleType

from llmproxy import providers
from llmproxy.common.visible import visible
from llmproxy.providers import Part

WIDTH = 2000  # longest text shown of one block; the JSONL has the rest


@dataclass
class Answer:
    text: list[str] = field(default_factory=list)
    tools: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments)
    thinking: list[str] = field(default_factory=list)  # what the model showed of its reasoning
    tokens_in: int | None = None
    tokens_out: int | None = None
    model: str | None = None


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= WIDTH else text[:WIDTH] + f" … [{len(text) - WIDTH} more characters]"


def _lines(parts: list[Part]) -> list[str]:
    """Lines for a message's parts."""
    lines = []
    for part in parts:
        if part.kind == "text":
            lines.append(_short(part.text))
        elif part.kind == "result":
            content = _short(part.text) if part.parts is None else " ".join(_lines(part.parts))
            lines.append(f"[tool result {part.name}] {content}")
        elif part.kind == "call":
            lines.append(f"[tool call {part.name}] {part.text}")
        else:
            lines.append(f"[{part.name}]")
    return lines


def new_turn(api: ModuleType | None, body: dict) -> list[tuple[str, list[str]]]:
    """(role, lines) of the request's messages after its last assistant message."""
    return [(role, _lines(parts)) for role, parts in providers.turn(api, body)]


def answer_of(api: ModuleType | None, response: dict) -> Answer:
    said = providers.said(api, response)
    tokens_in, tokens_out = providers.tokens(api, response.get("usage"))
    model = response.get("model")
    thinking = [p.text for p in said.parts if p.kind == "thinking" and p.text]
    return Answer(said.text, said.tools, thinking, tokens_in, tokens_out,
                  model if isinstance(model, str) else None)


def render(lines: list[str]) -> str:
    """The transcript of a session's JSONL lines."""
    out: list[str] = []
    provider: str | None = None  # from session_start
    apis: dict = {}  # seq → the API of that request, which its answer speaks too
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        kind = doc.get("type")
        meta = doc.get("_meta") or {}
        if kind == "session_start":
            provider = doc.get("provider") if isinstance(doc.get("provider"), str) else None
            out.append(f"# session {meta.get('session')} · {doc.get('provider')} · {doc.get('upstream')}"
                       + (f" · client session {doc['client_session_id']}" if doc.get("client_session_id") else ""))
        elif kind == "fork":
            out.append(f"# forked from {doc.get('parent_session')} at seq {doc.get('from_seq')} ({doc.get('reason')})")
        elif kind == "request":
            api = apis[doc.get("seq")] = providers.api_of_entry(provider, str(doc.get("path", "")).split("?")[0])
            try:
                body = json.loads(doc.get("body") or "")
            except ValueError:
                body = None
            agent = f" · agent {meta['agent']}" if meta.get("agent") else ""
            out.append(f"\n── {doc.get('seq')} · {meta.get('ts', '')[:19].replace('T', ' ')} · "
                       f"{doc.get('method')} {doc.get('path', '').split('?')[0]}{agent} ──")
            if not isinstance(body, dict):
                out.append(f"(body of {doc.get('size', 0)} bytes)")
                continue
            for role, texts in new_turn(api, body):
                for text in texts:
                    out.append(f"{role}: {text}")
        elif kind == "response":
            answer = answer_of(apis.get(doc.get("seq")), doc)
            for text in answer.thinking:
                out.append(f"assistant (thinking): {_short(text)}")
            for text in answer.text:
                out.append(f"assistant: {_short(text)}")
            for name, arguments in answer.tools:
                out.append(f"assistant: [tool call {name}] {_short(arguments)}")
            status = doc.get("status")
            facts = [f"status {status}"] if status != 200 else []
            if doc.get("error"):
                facts.append(f"error: {doc['error']}")
            if answer.tokens_in is not None or answer.tokens_out is not None:
                facts.append(f"tokens in {answer.tokens_in if answer.tokens_in is not None else '?'}, "
                             f"out {answer.tokens_out if answer.tokens_out is not None else '?'}")
            if answer.model:
                facts.append(answer.model)
            if facts:
                out.append("   (" + "; ".join(facts) + ")")
    # Shown in a terminal: no escape sequence or bidi override from the logs may reach it.
    return visible("\n".join(out).lstrip("\n") + "\n")
