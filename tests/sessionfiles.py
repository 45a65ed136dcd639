"""Session files written the way the proxy writes them, for the readers' tests (explorer,
transcripts): entries with the proxy's field order (``type``, then ``seq``), ``_meta`` last,
each API's requests and answers in its own shapes (SSE chunks, WebSocket messages, JSON bodies).

What real clients send is in tests/corpus/ and what the fake provider answers in
tests/fakeprovider.py; these builders only put such exchanges into files quickly and exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

T0 = datetime(2026, 11, 28, 10, 15, 0, tzinfo=timezone.utc)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def sse(events: list[dict]) -> list[dict]:
    """SSE chunks as the proxy logs them: one event each."""
    return [{"ts": "2026-11-28T10:15:00.000000000Z", "delta_ms": 1,
             "raw": f"event: {e.get('type', 'message')}\ndata: {json.dumps(e)}\n\n"} for e in events]


def ws(messages: list[dict]) -> list[dict]:
    """WebSocket messages as the proxy logs them: one JSON text each."""
    return [{"ts": "2026-11-28T10:15:00.000000000Z", "delta_ms": 1, "raw": json.dumps(m)} for m in messages]


# --- Anthropic Messages ---

def anthropic_stream(text: str = "", thinking: str = "", tools: list[tuple[str, str, dict]] = (),
                     model: str = "claude-sonnet-4-5", stop: str | None = None, usage: dict | None = None,
                     error: str | None = None) -> list[dict]:
    """An answer's events: thinking, text, then tool calls ``(id, name, input)``."""
    events: list[dict] = [{"type": "message_start", "message": {"model": model, "usage": usage or {
        "input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 3000, "output_tokens": 1}}}]
    index = 0
    if thinking:
        events += [{"type": "content_block_start", "index": index, "content_block": {"type": "thinking", "thinking": ""}},
                   {"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": thinking}}]
        index += 1
    if text:
        events.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
        events += [{"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}
                   for word in _words(text)]
        index += 1
    for ident, name, arguments in tools:
        events += [{"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": ident, "name": name, "input": {}}},
                   {"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(arguments)}}]
        index += 1
    if error:
        events.append({"type": "error", "error": {"type": "overloaded_error", "message": error}})
        return events
    events.append({"type": "message_delta", "delta": {"stop_reason": stop or ("tool_use" if tools else "end_turn")},
                   "usage": {"output_tokens": 40}})
    events.append({"type": "message_stop"})
    return events


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def anthropic_assistant(text: str = "", tools: list[tuple[str, str, dict]] = ()) -> dict:
    content: list[dict] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in tools]
    return {"role": "assistant", "content": content}


def anthropic_results(results: list[tuple[str, str]], words: str = "", error: bool = False) -> dict:
    content: list[dict] = [{"type": "tool_result", "tool_use_id": i, "content": out, **({"is_error": True} if error else {})}
                           for i, out in results]
    if words:
        content.append({"type": "text", "text": words})
    return {"role": "user", "content": content}


# --- a session file ---

@dataclass
class SessionFile:
    """One session's file, written entry by entry (so a test can append while a page watches)."""

    log_dir: Path
    session: str = "20261128-101500-abcd1234"
    provider: str = "anthropic"
    upstream: str = "api.anthropic.com"
    machine: str = "dev@workstation"
    client_session_id: str | None = "5d4b0fc7-2ca0-4c21-903a-5c9035509e81"
    path: str = "/v1/messages"
    user_agent: str = "claude-cli/2.1.197 (external, cli)"
    clock: datetime = T0
    seq: int = 0
    written: list[dict] = field(default_factory=list)

    @property
    def file(self) -> Path:
        day = f"{self.session[0:4]}-{self.session[4:6]}-{self.session[6:8]}"
        return Path(self.log_dir) / self.upstream / day / f"{self.session}.jsonl"

    def _tick(self, seconds: float = 1.0) -> str:
        self.clock += timedelta(seconds=seconds)
        return rfc3339(self.clock)

    def _meta(self, ts: str, request_id: str | None = None, thread: str | None = None,
              agent: str | None = None) -> dict:
        meta: dict[str, Any] = {"ts": ts, "machine": self.machine, "host": self.upstream, "session": self.session}
        if request_id:
            meta["request_id"] = request_id
        if self.client_session_id:
            meta["client_session_id"] = self.client_session_id
        if agent:
            meta["agent"] = agent
        if thread and request_id:
            meta["thread"] = thread
        return meta

    def write(self, entry: dict) -> dict:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.file, "ab") as f:
            f.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        self.written.append(entry)
        return entry

    def start(self) -> "SessionFile":
        doc: dict[str, Any] = {"type": "session_start", "provider": self.provider, "upstream": self.upstream}
        if self.client_session_id:
            doc["client_session_id"] = self.client_session_id
        doc["_meta"] = self._meta(self._tick(0))
        self.write(doc)
        return self

    def fork(self, from_seq: int, from_thread: str, thread: str) -> None:
        self.write({"type": "fork", "from_seq": from_seq, "parent_session": self.session,
                    "reason": "message_history_diverged", "from_thread": from_thread, "thread": thread,
                    "_meta": self._meta(self._tick(0), request_id=f"req-{self.seq + 1}", thread=thread)})

    def request(self, body: dict | str, thread: str | None = "t1", agent: str | None = None,
                transport: str | None = None, headers: dict | None = None) -> int:
        self.seq += 1
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        doc: dict[str, Any] = {"type": "request", "seq": self.seq, "method": "POST", "path": self.path}
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            doc["model"] = body["model"]
        doc.update({"headers": headers or {"User-Agent": self.user_agent, "x-api-key": "sk-ant-...abcd"},
                    "body": text, "size": len(text.encode())})
        if transport:
            doc["transport"] = transport
        doc["_meta"] = self._meta(self._tick(), f"req-{self.seq}", thread, agent)
        self.write(doc)
        return self.seq

    def response(self, seq: int, chunks: list[dict] | None = None, body: str | None = None, status: int = 200,
                 model: str | None = "claude-sonnet-4-5", stop_reason: str | None = None,
                 tokens: dict | None = None, cost: float | None = None, error: str | None = None,
                 incomplete: bool = False, thread: str | None = "t1", agent: str | None = None,
                 transport: str | None = None, ttfb_ms: float = 850.0, total_ms: float = 4200.0) -> None:
        doc: dict[str, Any] = {"type": "response", "seq": seq, "status": status}
        if model:
            doc["model"] = model
        if stop_reason:
            doc["stop_reason"] = stop_reason
        if tokens is not None:
            doc["tokens"] = tokens
        if cost is not None:
            doc["cost"] = {"total": cost, "source": "genai-prices test"}
        doc["headers"] = {"content-type": "text/event-stream" if chunks is not None else "application/json"}
        doc["timing"] = {"ttfb_ms": ttfb_ms, "total_ms": total_ms}
        doc["size"] = sum(len(c["raw"]) for c in chunks) if chunks is not None else len(body or "")
        if transport:
            doc["transport"] = transport
        if chunks is not None:
            doc["chunks"] = chunks
        if body is not None:
            doc["body"] = body
        if error:
            doc["error"] = error
        if incomplete:
            doc["incomplete"] = True
        doc["_meta"] = self._meta(self._tick(total_ms / 1000), f"req-{seq}", thread, agent)
        self.write(doc)


def anthropic_body(messages: list[dict], system: str = "You are Claude Code, Anthropic's CLI.",
                   model: str = "claude-sonnet-4-5") -> dict:
    return {"model": model, "max_tokens": 32000, "stream": True,
            "system": [{"type": "text", "text": system}], "messages": messages,
            "tools": [{"name": "Read"}, {"name": "Bash"}]}


def claude_tool_loop(log_dir: Path, session: str = "20261128-101500-abcd1234", marker: str = "kiwi-5150") -> SessionFile:
    """A Claude Code session: a question, a ``Read`` call and its result, the answer; a title
    call on a thread of its own; a sub-agent; then the user's next question."""
    f = SessionFile(log_dir, session=session).start()
    first = {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nAs you answer, use the context below.\n</system-reminder>"},
        {"type": "text", "text": "What do the notes say?"}]}
    tool = ("toolu_01", "Read", {"file_path": "/home/dev/project/notes.txt"})
    seq = f.request(anthropic_body([first]))
    f.response(seq, sse(anthropic_stream("Let me read the notes.", thinking="The user wants the notes read.",
                                         tools=[tool])), stop_reason="tool_use",
               tokens={"input": 12, "output": 40, "cache_write": 100, "cache_read": 3000}, cost=0.0123)
    title = f.request(anthropic_body([{"role": "user", "content": "Write a title for: What do the notes say?"}],
                                     system="Generate a concise title.", model="claude-haiku-4-5"), thread="t2")
    f.response(title, body=json.dumps({"content": [{"type": "text", "text": "{\"title\": \"Read the notes\"}"}],
                                       "stop_reason": "end_turn"}), model="claude-haiku-4-5", stop_reason="end_turn",
               thread="t2", tokens={"input": 40, "output": 9}, cost=0.0001)
    history = [first, anthropic_assistant("Let me read the notes.", [tool]),
               anthropic_results([("toolu_01", f"     1\t{marker}\n     2\tbuy apples\n")])]
    seq = f.request(anthropic_body(history))
    f.response(seq, sse(anthropic_stream(f"The notes say {marker} and: buy apples.")), stop_reason="end_turn",
               tokens={"input": 30, "output": 25, "cache_write": 0, "cache_read": 3100}, cost=0.0042)
    agent = f.request(anthropic_body([{"role": "user", "content": "Find every TODO in the project."}],
                                     system="You are a sub-agent that searches code."), thread="explore-1",
                      agent="explore-1")
    f.response(agent, sse(anthropic_stream("No TODO found.")), stop_reason="end_turn", thread="explore-1",
               agent="explore-1", tokens={"input": 20, "output": 5}, cost=0.0002)
    history += [anthropic_assistant(f"The notes say {marker} and: buy apples."),
                {"role": "user", "content": "Thanks. And louder?"}]
    seq = f.request(anthropic_body(history))
    f.response(seq, sse(anthropic_stream("BUY APPLES.")), stop_reason="end_turn",
               tokens={"input": 8, "output": 4, "cache_write": 0, "cache_read": 3300}, cost=0.0031)
    return f


# --- OpenAI Responses (Codex), over WebSocket ---

def responses_messages(text: str = "", call: tuple[str, str, str] | None = None, model: str = "gpt-5-codex",
                       response_id: str = "resp_1") -> list[dict]:
    """A Responses answer's events: reasoning, then a function call ``(call_id, name,
    arguments)`` or text, then ``response.completed`` with usage."""
    out: list[dict] = [{"type": "response.created", "response": {"id": response_id, "model": model, "status": "in_progress"}},
                       {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "summary": []}},
                       {"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "Look at the file first."},
                       {"type": "response.output_item.done", "output_index": 0,
                        "item": {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Look at the file first."}]}}]
    items: list[dict] = []
    if call:
        ident, name, arguments = call
        item = {"type": "function_call", "call_id": ident, "name": name, "arguments": arguments}
        out += [{"type": "response.output_item.added", "output_index": 1, "item": {**item, "arguments": ""}},
                {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": arguments},
                {"type": "response.output_item.done", "output_index": 1, "item": item}]
        items.append(item)
    if text:
        out += [{"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": w} for w in _words(text)]
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
    out.append({"type": "response.completed", "response": {
        "id": response_id, "model": model, "status": "completed", "output": items,
        "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1500}, "output_tokens": 60}}})
    return out


def codex_session(log_dir: Path, session: str = "20261128-111500-00c0de01", marker: str = "kiwi-5150",
                  websocket: bool = True) -> SessionFile:
    """Codex signed in with ChatGPT: a session with an ``exec_command`` call, over WebSocket (each
    request a ``response.create`` message, each answer its messages) or over SSE."""
    transport, chunks = ("websocket", ws) if websocket else (None, sse)
    f = SessionFile(log_dir, session=session, provider="chatgpt", upstream="chatgpt.com",
                    client_session_id="0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", path="/backend-api/codex/responses",
                    user_agent="codex_cli_rs/0.171.0 (Debian 12; x86_64)", clock=T0 + timedelta(hours=1)).start()
    question = {"role": "user", "content": [{"type": "input_text", "text": "What do the notes say?"}]}
    kind = {"type": "response.create"} if websocket else {"stream": True}
    first = {**kind, "model": "gpt-5-codex", "instructions": "You are Codex, a coding agent.",
             "input": [{"role": "developer", "content": [{"type": "input_text", "text": "<permissions>sandbox</permissions>"}]},
                       question]}
    seq = f.request(first, transport=transport)
    f.response(seq, chunks(responses_messages(call=("call_1", "exec_command", '{"cmd":"cat notes.txt"}'))),
               transport=transport, model="gpt-5-codex", stop_reason="completed",
               tokens={"input": 500, "output": 60, "cache_write": 0, "cache_read": 1500}, cost=0.0052)
    call = {"type": "function_call", "call_id": "call_1", "name": "exec_command", "arguments": '{"cmd":"cat notes.txt"}'}
    second = {**kind, "model": "gpt-5-codex", "instructions": "You are Codex, a coding agent.",
              "input": [question, call, {"type": "function_call_output", "call_id": "call_1", "output": f"{marker}\n"}]}
    seq = f.request(second, transport=transport)
    f.response(seq, chunks(responses_messages(text=f"The notes say {marker}.", response_id="resp_2")),
               transport=transport, model="gpt-5-codex", stop_reason="completed",
               tokens={"input": 520, "output": 12, "cache_write": 0, "cache_read": 1500}, cost=0.0031)
    return f
