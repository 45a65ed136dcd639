"""A session's entries as a readable conversation (``loki-session --transcript``).

Each request re-sends the conversation so far; a turn shows only what is new in it: the
messages after the last assistant message (the user's words, tool results). The answer shows
the assistant's text with streamed deltas joined, its tool calls, and the tokens of the turn.
Anthropic Messages, OpenAI Chat Completions and the Responses API (JSON, SSE or WebSocket) are understood;
anything else is shown as its size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

WIDTH = 2000  # longest text shown of one block; the JSONL has the rest


@dataclass
class Answer:
    text: list[str] = field(default_factory=list)
    tools: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments)
    tokens_in: int | None = None
    tokens_out: int | None = None
    model: str | None = None


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= WIDTH else text[:WIDTH] + f" … [{len(text) - WIDTH} more characters]"


def _blocks_text(content) -> list[str]:
    """Lines for a message's content (a string or a list of typed blocks)."""
    if isinstance(content, str):
        return [_short(content)]
    lines = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("text", "input_text", "output_text"):
            lines.append(_short(block.get("text", "")))
        elif kind == "tool_result":
            inner = block.get("content")
            text = inner if isinstance(inner, str) else " ".join(_blocks_text(inner))
            lines.append(f"[tool result {block.get('tool_use_id', '')}] {_short(text)}")
        elif kind == "tool_use":
            lines.append(f"[tool call {block.get('name')}] {json.dumps(block.get('input'), ensure_ascii=False)}")
        elif kind:
            lines.append(f"[{kind}]")
    return lines


def new_turn(body: dict) -> list[tuple[str, list[str]]]:
    """(role, lines) of the request's messages after its last assistant message."""
    if isinstance(body.get("messages"), list):
        messages = body["messages"]
    elif isinstance(body.get("input"), str):
        return [("user", [_short(body["input"])])]
    elif isinstance(body.get("input"), list):
        messages = body["input"]
    else:
        return []
    last = max((i for i, m in enumerate(messages) if isinstance(m, dict)
                and (m.get("role") == "assistant" or m.get("type") == "function_call")), default=-1)
    turn = []
    for message in messages[last + 1:]:
        if not isinstance(message, dict):
            continue
        if message.get("type") == "function_call_output":
            turn.append(("tool", [f"[tool result {message.get('call_id', '')}] {_short(str(message.get('output')))}"]))
            continue
        role = message.get("role", "user")
        lines = _blocks_text(message.get("content"))
        if role == "tool":
            lines = [f"[tool result {message.get('tool_call_id', '')}] " + " ".join(lines)]
        turn.append((role, lines))
    return turn


def _sse_events(chunks: list[dict], websocket: bool = False) -> list[dict]:
    """The JSON events of an answer's chunks: SSE ``data:`` lines, or (a WebSocket answer)
    each text message itself."""
    events = []
    for chunk in chunks:
        raw = chunk.get("raw", "")
        if websocket:
            raw = "" if chunk.get("encoding") else "data: " + raw.replace("\n", " ")
        for line in raw.splitlines():
            if line.startswith("data:"):
                data = line[5:].strip()
                if data and data != "[DONE]":
                    try:
                        events.append(json.loads(data))
                    except ValueError:
                        continue
    return events


def _usage(answer: Answer, usage: dict | None) -> None:
    if not isinstance(usage, dict):
        return
    for key in ("input_tokens", "prompt_tokens"):
        if usage.get(key) is not None:
            answer.tokens_in = usage[key] + usage.get("cache_read_input_tokens", 0) + \
                usage.get("cache_creation_input_tokens", 0)
    for key in ("output_tokens", "completion_tokens"):
        if usage.get(key) is not None:
            answer.tokens_out = usage[key]


def answer_of(response: dict) -> Answer:
    answer = Answer()
    if response.get("chunks") is not None:
        _from_events(answer, _sse_events(response["chunks"], response.get("transport") == "websocket"))
    else:
        try:
            doc = json.loads(response.get("body") or "")
        except ValueError:
            return answer
        if isinstance(doc, dict):
            _from_object(answer, doc)
    return answer


def _from_object(answer: Answer, doc: dict) -> None:
    answer.model = doc.get("model")
    _usage(answer, doc.get("usage"))
    if isinstance(doc.get("content"), list):  # Anthropic
        for block in doc["content"]:
            if block.get("type") == "text":
                answer.text.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                answer.tools.append((block.get("name"), json.dumps(block.get("input"), ensure_ascii=False)))
    for choice in doc.get("choices") or []:  # Chat Completions
        message = choice.get("message") or {}
        if message.get("content"):
            answer.text.append(message["content"])
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            answer.tools.append((fn.get("name"), fn.get("arguments", "")))
    for item in doc.get("output") or []:  # Responses
        if item.get("type") == "message":
            answer.text.extend(b.get("text", "") for b in item.get("content") or [] if b.get("type") == "output_text")
        elif item.get("type") == "function_call":
            answer.tools.append((item.get("name"), item.get("arguments", "")))


def _from_events(answer: Answer, events: list[dict]) -> None:
    text: list[str] = []
    tools: dict = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start":  # Anthropic
            answer.model = event.get("message", {}).get("model")
            _usage(answer, event.get("message", {}).get("usage"))
        elif kind == "content_block_start" and event.get("content_block", {}).get("type") == "tool_use":
            tools[event.get("index")] = [event["content_block"].get("name"), ""]
        elif kind == "content_block_delta":
            delta = event.get("delta", {})
            if delta.get("type") == "text_delta":
                text.append(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta" and event.get("index") in tools:
                tools[event["index"]][1] += delta.get("partial_json", "")
        elif kind == "message_delta":
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                answer.tokens_out = usage["output_tokens"]
        elif kind == "response.output_text.delta":  # Responses
            text.append(event.get("delta", ""))
        elif kind == "response.output_item.added" and event.get("item", {}).get("type") == "function_call":
            tools[event.get("output_index")] = [event["item"].get("name"), ""]
        elif kind == "response.function_call_arguments.delta" and event.get("output_index") in tools:
            tools[event["output_index"]][1] += event.get("delta", "")
        elif kind == "response.completed":
            response = event.get("response") or {}
            answer.model = response.get("model") or answer.model
            _usage(answer, response.get("usage"))
        elif "choices" in event:  # Chat Completions chunks
            answer.model = event.get("model") or answer.model
            _usage(answer, event.get("usage"))
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text.append(delta["content"])
                for call in delta.get("tool_calls") or []:
                    slot = tools.setdefault(("chat", call.get("index")), ["", ""])
                    fn = call.get("function") or {}
                    slot[0] = slot[0] or fn.get("name") or ""
                    slot[1] += fn.get("arguments") or ""
    if text:
        answer.text.append("".join(text))
    answer.tools.extend((name, args) for name, args in tools.values())


def render(lines: list[str]) -> str:
    """The transcript of a session's JSONL lines."""
    out: list[str] = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        kind = doc.get("type")
        meta = doc.get("_meta") or {}
        if kind == "session_start":
            out.append(f"# session {meta.get('session')} · {doc.get('provider')} · {doc.get('upstream')}"
                       + (f" · client session {doc['client_session_id']}" if doc.get("client_session_id") else ""))
        elif kind == "fork":
            out.append(f"# forked from {doc.get('parent_session')} at seq {doc.get('from_seq')} ({doc.get('reason')})")
        elif kind == "request":
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
            for role, texts in new_turn(body):
                for text in texts:
                    out.append(f"{role}: {text}")
        elif kind == "response":
            answer = answer_of(doc)
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
    return "\n".join(out).lstrip("\n") + "\n"
