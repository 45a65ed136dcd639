"""A fake LLM provider: a real threaded HTTP server on 127.0.0.1.

Speaks enough of the Anthropic Messages API, the OpenAI Chat Completions and Responses APIs
(JSON and SSE), the Gemini API (JSON, SSE and the JSON-array stream; countTokens) and AWS
Bedrock (invoke and Converse, their streams in AWS's event-stream framing; with
:attr:`FakeProvider.aws_region` set, every call's SigV4 signature checked, see fakebedrock.py)
for the official SDKs and CLIs, records every request it receives, and can be told per
request (``x-fake-*`` headers) or per server (:attr:`FakeProvider.defaults`) to:

- ``x-fake-events: N``        stream N text deltas (default 5)
- ``x-fake-delay-ms: D``      wait D ms before each streamed event
- ``x-fake-status: 429``      answer with that status and a provider-shaped error body
- ``x-fake-retry-after: S``   add ``retry-after: S``
- ``x-fake-gzip: 1``          gzip the body (``Content-Encoding: gzip``)
- ``x-fake-encoding: gzip, br`` encode the body or stream with that stack (see contentcoding.py)
- ``x-fake-hang-ms: D``       wait D ms before sending the response headers
- ``x-fake-cut-after: N``     break a stream off (close the socket) after N events
- ``x-fake-stamp: 1``         prefix each event with ``: sent <unix time>`` (an SSE comment)
- ``x-fake-bedrock-exception: throttlingException`` end a Bedrock stream with that error frame
- ``x-fake-usage: {json}``    answer with this usage (in the API's own names; a Chat Completions
  stream then ends with a usage chunk, as with ``stream_options.include_usage``)

Every answer's final usage, as the API's client adds it up, is kept in :attr:`FakeProvider.sent`
(what usage reports are checked against).

``GET /download?size=N`` streams N bytes; ``ANY /echo…`` answers with what it received.

The real CLIs cannot set such headers per turn, so the newest user message can steer the answer
(see :func:`scripted_answer`): a line ``fake-reply: TEXT`` is answered with TEXT; a line
``fake-tool: NAME {json arguments}`` with a call of tool NAME (Anthropic ``tool_use``, Responses
``function_call``, Gemini ``functionCall``, Converse ``toolUse``); a tool's result is answered
with ``Tool output: …`` quoting it. Anthropic's
``/v1/messages/count_tokens`` and ``GET …/models`` (which Codex asks when signed in with
ChatGPT) are answered too.

A WebSocket upgrade (the Responses API's WebSocket mode) is served by :mod:`fakews`.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import fakebedrock
import fakews
from contentcoding import StreamEncoder, encode, header_value

WORDS = ["Hello", " from", " the", " fake", " provider", "."]


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The benchmark opens hundreds of connections at once; the default backlog of 5 drops
    # handshakes and leaves clients waiting for SYN retries (or reset).
    request_queue_size = 1024


class FakeProvider:
    """Start with ``FakeProvider().start()``; ``url`` is its base URL; ``stop()`` ends it."""

    def __init__(self, host: str = "127.0.0.1", record: bool = True):
        self.record = record  # off: ``received`` keeps requests without their bodies (a long soak)
        self.received: list[Received] = []
        self.disconnects: list[tuple[str, float]] = []   # (path, when) for clients that left
        self.websockets: list = []                       # fakews.FakeSocket, one per WebSocket served
        self.defaults: dict[str, str] = {}
        self.sent: list[Sent] = []                       # the usage of every answer, in order
        # Bedrock: when a region is set, every Bedrock call must carry a good SigV4 signature for
        # it (fakebedrock.check_signature; with ``aws_token``, temporary credentials); the refused
        # ones are kept here as (path, why).
        self.aws_region: str | None = None
        self.aws_token: str | None = None
        self.refused: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = _Server((host, 0), _Handler)
        self.server.fake = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """How the proxy names this upstream: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FakeProvider":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self) -> Received:
        with self.lock:
            return self.received[-1]


@dataclass
class Sent:
    """An answer's final usage as the fake sent it: what the client was told it used."""
    path: str
    model: str
    usage: dict


@dataclass
class Answer:
    """What the fake says: ``words`` of text, optionally followed by a call of ``tool``."""
    words: list[str]
    tool: tuple[str, dict] | None = None
    ident: str = "fake01"  # in every id of the answer; Claude Code merges blocks of one message id

    @property
    def text(self) -> str:
        return "".join(self.words)


_REPLY = re.compile(r"^fake-reply: (.+)$", re.MULTILINE)
_TOOL = re.compile(r"^fake-tool: (\S+) (\{.*\})$", re.MULTILINE)


def _text_of(content) -> str:
    """The text of a message's content in any spelling: a string or a list of text-like blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(part.get("text", part.get("content", ""))) if isinstance(part, dict) else
                         str(part) for part in content)
    return ""


def _newest_turn(path: str, request: dict) -> tuple[str, str] | None:
    """``("user", text)`` or ``("tool", output)`` for the newest input of a conversation request."""
    if isinstance(request.get("contents"), list):  # Gemini: parts, a functionResponse the tool's output
        for content in reversed(request["contents"]):
            if not isinstance(content, dict) or content.get("role", "user") != "user":
                continue
            parts = [p for p in content.get("parts") or () if isinstance(p, dict)]
            results = [p["functionResponse"] for p in parts if isinstance(p.get("functionResponse"), dict)]
            if results:
                return "tool", json.dumps(results[-1].get("response"))
            return "user", "\n".join(p.get("text", "") for p in parts)
        return None
    if path.endswith("/responses"):
        items = request.get("input")
        if isinstance(items, str):
            return "user", items
        for item in reversed(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            if item.get("type") in ("function_call_output", "custom_tool_call_output"):
                return "tool", _text_of(item.get("output"))
            if item.get("role") == "user":
                return "user", _text_of(item.get("content"))
        return None
    messages = request.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":
            return "tool", _text_of(message.get("content"))
        if message.get("role") == "user":
            # Claude Code appends a new prompt to the message holding the last tool_result.
            content = message.get("content")
            blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
            if blocks and blocks[-1].get("type") == "tool_result":
                return "tool", _text_of(blocks[-1].get("content"))
            return "user", _text_of(content)
    return None


def scripted_answer(path: str, request, body: bytes, default: list[str]) -> Answer:
    """The answer the newest turn asks for (``fake-reply:`` / ``fake-tool:`` lines), else ``default``.

    Its ids derive from the request body: the same request gets the same answer, the next turn of
    a conversation new ids (as from a real provider).
    """
    ident = hashlib.sha256(body).hexdigest()[:24]
    turn = _newest_turn(path, request) if isinstance(request, dict) else None
    if turn is None:
        return Answer(default, ident=ident)
    kind, text = turn
    if kind == "tool":
        quoted = " ".join(text.split())[:200]
        return Answer(_split_words(f"Tool output: {quoted}"), ident=ident)
    tool = _TOOL.findall(text)
    if tool:
        name, arguments = tool[-1]
        return Answer(_split_words(f"Calling {name}."), (name, json.loads(arguments)), ident)
    reply = _REPLY.findall(text)
    return Answer(_split_words(reply[-1].strip()) if reply else default, ident=ident)


def _split_words(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) or [text]


ANTHROPIC_USAGE = {"input_tokens": 12, "output_tokens": 6}
CHAT_USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
RESPONSES_USAGE = {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens_details": {"reasoning_tokens": 0}}


def anthropic_message(text: str, model: str, ident: str = "fake01", usage: dict | None = None) -> dict:
    return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": dict(usage or ANTHROPIC_USAGE)}


def anthropic_stream_usage(words: list[str], usage: dict | None) -> dict:
    """A stream's final usage: message_start's input side, message_delta's output_tokens."""
    return dict(usage) if usage else {**ANTHROPIC_USAGE, "output_tokens": len(words)}


def anthropic_answer(answer: Answer, model: str, usage: dict | None = None) -> dict:
    message = anthropic_message(answer.text, model, answer.ident, usage)
    if answer.tool:
        message["content"].append({"type": "tool_use", "id": f"toolu_{answer.ident}",
                                   "name": answer.tool[0], "input": answer.tool[1]})
        message["stop_reason"] = "tool_use"
    return message


def anthropic_events(words: list[str], model: str, tool: tuple[str, dict] | None = None,
                     ident: str = "fake01", usage: dict | None = None) -> list[bytes]:
    final = anthropic_stream_usage(words, usage)
    message = anthropic_message("", model, ident, {**final, "output_tokens": 1} if usage else None)
    message["content"], message["stop_reason"] = [], None
    events = [("message_start", {"type": "message_start", "message": message}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("ping", {"type": "ping"})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": w}}) for w in words]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if tool:
        block = {"type": "tool_use", "id": f"toolu_{ident}", "name": tool[0], "input": {}}
        events += [("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block}),
                   ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                       "type": "input_json_delta", "partial_json": json.dumps(tool[1])}}),
                   ("content_block_stop", {"type": "content_block_stop", "index": 1})]
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn",
                                                                     "stop_sequence": None},
                                  "usage": {"output_tokens": final["output_tokens"]}}),
               ("message_stop", {"type": "message_stop"})]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


def chat_completion(text: str, model: str, usage: dict | None = None) -> dict:
    return {"id": "chatcmpl-fake01", "object": "chat.completion", "created": 1764300000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": dict(usage or CHAT_USAGE)}


def chat_events(words: list[str], model: str, usage: dict | None = None) -> list[bytes]:
    """A stream; with ``usage``, ended by the usage chunk (``"choices": []``) as OpenAI sends it."""
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-fake01", "object": "chat.completion.chunk", "created": 1764300000,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w}) for w in words]
    chunks.append(chunk({}, "stop"))
    if usage:
        chunks.append({**chunk({}), "choices": [], "usage": usage})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def response_message_item(text: str, status: str = "completed", ident: str = "fake01") -> dict:
    return {"type": "message", "id": f"msg_{ident}", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []}


def response_call_item(tool: tuple[str, dict], status: str = "completed", ident: str = "fake01") -> dict:
    return {"type": "function_call", "id": f"fc_{ident}", "call_id": f"call_{ident}", "name": tool[0],
            "arguments": json.dumps(tool[1]) if status == "completed" else "", "status": status}


def response_object(text: str, model: str, status: str = "completed", response_id: str = "resp_fake01",
                    tool: tuple[str, dict] | None = None, ident: str = "fake01", usage: dict | None = None) -> dict:
    output = [response_message_item(text, ident=ident)] if text else []
    if tool:
        output.append(response_call_item(tool, ident=ident))
    return {"id": response_id, "object": "response", "created_at": 1764300000, "status": status,
            "model": model, "error": None, "incomplete_details": None, "instructions": None,
            "output": output if status == "completed" else [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "temperature": 1.0,
            "top_p": 1.0, "metadata": {},
            "usage": dict(usage or RESPONSES_USAGE)}


def response_event_dicts(words: list[str], model: str, response_id: str,
                         tool: tuple[str, dict] | None = None, ident: str = "fake01",
                         usage: dict | None = None) -> list[dict]:
    """The whole item lifecycle of a Responses stream; Codex builds what it prints from it.
    Without words or tool (Codex's prewarm, ``generate: false``): created, then completed."""
    text = "".join(words)
    started = response_object("", model, "in_progress", response_id)
    if not words and not tool:
        return [{"type": "response.created", "response": started, "sequence_number": 0},
                {"type": "response.completed", "response": response_object("", model, response_id=response_id,
                                                                           usage=usage),
                 "sequence_number": 1}]
    part = {"type": "output_text", "text": "", "annotations": []}
    at = {"item_id": f"msg_{ident}", "output_index": 0, "content_index": 0}
    events = [{"type": "response.created", "response": started},
              {"type": "response.in_progress", "response": started},
              {"type": "response.output_item.added", "output_index": 0,
               "item": response_message_item("", "in_progress", ident)},
              {"type": "response.content_part.added", **at, "part": part}]
    events += [{"type": "response.output_text.delta", **at, "delta": w} for w in words]
    events += [{"type": "response.output_text.done", **at, "text": text},
               {"type": "response.content_part.done", **at, "part": {**part, "text": text}},
               {"type": "response.output_item.done", "output_index": 0, "item": response_message_item(text, ident=ident)}]
    if tool:
        call = {"item_id": f"fc_{ident}", "output_index": 1}
        arguments = json.dumps(tool[1])
        events += [{"type": "response.output_item.added", "output_index": 1,
                    "item": response_call_item(tool, "in_progress", ident)},
                   {"type": "response.function_call_arguments.delta", **call, "delta": arguments},
                   {"type": "response.function_call_arguments.done", **call, "arguments": arguments},
                   {"type": "response.output_item.done", "output_index": 1, "item": response_call_item(tool, ident=ident)}]
    events.append({"type": "response.completed",
                   "response": response_object(text, model, response_id=response_id, tool=tool, ident=ident,
                                               usage=usage)})
    return [{**e, "sequence_number": i} for i, e in enumerate(events)]


def response_events(words: list[str], model: str, response_id: str,
                    tool: tuple[str, dict] | None = None, ident: str = "fake01", usage: dict | None = None) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
            for e in response_event_dicts(words, model, response_id, tool, ident, usage)]


# --- Gemini (as Gemini CLI 0.61 and google-genai use it: tests/corpus/gemini-*.jsonl) ---

GEMINI_METHOD = re.compile(r".*/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)")
THOUGHT = "Weighing the question."


def _field(doc: dict, name: str):
    """A field in either spelling the Gemini API reads: Gemini CLI sends ``includeThoughts``,
    google-genai 3.6 ``include_thoughts``."""
    snake = re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)
    return doc.get(name, doc.get(snake))


def _from_schema(schema) -> object:
    """A value of a JSON schema's shape (Gemini CLI's routing call asks for a complexity score)."""
    kind = str((schema or {}).get("type", "object")).lower()
    if kind == "object":
        return {name: _from_schema(sub) for name, sub in ((schema or {}).get("properties") or {}).items()}
    return {"string": "fake", "integer": 1, "number": 1, "boolean": False, "array": []}.get(kind)


def gemini_pieces(answer: Answer, model: str, request: dict, usage: dict | None = None) -> list[dict]:
    """The GenerateContentResponse pieces of an answer, as a stream sends them: the thinking it
    shows (when asked for: ``thinkingConfig.includeThoughts``), a piece per word, then the call;
    the last with ``finishReason`` and the whole usage. One piece is the non-streamed answer."""
    config = _field(request, "generationConfig") or {}
    words = answer.words
    if _field(config, "responseMimeType") == "application/json":  # asked for JSON (and no tools): only that
        words = [json.dumps(_from_schema(_field(config, "responseJsonSchema") or _field(config, "responseSchema")))]
        answer = Answer(words, None, answer.ident)
    parts = []
    if _field(_field(config, "thinkingConfig") or {}, "includeThoughts"):
        parts.append({"text": THOUGHT, "thought": True})
    parts += [{"text": w} for w in words]
    if answer.tool:
        parts.append({"functionCall": {"name": answer.tool[0], "args": answer.tool[1]},
                      "thoughtSignature": f"sig-{answer.ident}"})
    pieces = [{"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 21, "totalTokenCount": 21},
               "modelVersion": model, "responseId": f"gem-{answer.ident}"} for part in parts]
    last = pieces[-1]
    last["candidates"][0]["finishReason"] = "STOP"
    last["usageMetadata"] = dict(usage) if usage else {
        "promptTokenCount": 21, "candidatesTokenCount": len(words) + (3 if answer.tool else 0),
        "thoughtsTokenCount": 4, "cachedContentTokenCount": 5, "totalTokenCount": 25 + len(words) + (3 if answer.tool else 0)}
    return pieces


def gemini_response(pieces: list[dict]) -> dict:
    """The pieces of a stream as one answer: their parts, the last one's usage and reason."""
    whole = copy.deepcopy(pieces[-1])
    whole["candidates"][0]["content"]["parts"] = [p["candidates"][0]["content"]["parts"][0] for p in pieces]
    return whole


# --- AWS Bedrock (as Claude Code 2.1.332 in Bedrock mode and boto3 use it: tests/corpus/bedrock-*.jsonl) ---

BEDROCK_OPERATION = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|converse-stream)")
BEDROCK_CONTROL = ("/inference-profiles", "/foundation-models")


def bedrock_events(answer: Answer, model: str, usage: dict | None = None) -> list[bytes]:
    """invoke-with-response-stream: the Anthropic events, each in a ``chunk`` frame; the last
    one carries Bedrock's invocation metrics."""
    events = [json.loads(raw.split(b"data: ", 1)[1]) for raw in anthropic_events(answer.words, model, answer.tool,
                                                                                answer.ident, usage)]
    events[-1]["amazon-bedrock-invocationMetrics"] = {"inputTokenCount": 12, "outputTokenCount": len(answer.words),
                                                      "invocationLatency": 5, "firstByteLatency": 2}
    return [fakebedrock.chunk(e) for e in events]


def converse_usage(answer: Answer) -> dict:
    return {"inputTokens": 12, "outputTokens": len(answer.words), "totalTokens": 12 + len(answer.words)}


def converse_answer(answer: Answer, usage: dict | None = None) -> dict:
    content = [{"text": answer.text}]
    if answer.tool:
        content.append({"toolUse": {"toolUseId": f"tooluse_{answer.ident}", "name": answer.tool[0],
                                    "input": answer.tool[1]}})
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if answer.tool else "end_turn",
            "usage": usage or converse_usage(answer), "metrics": {"latencyMs": 5}}


def converse_events(answer: Answer, usage: dict | None = None) -> list[bytes]:
    events = [("messageStart", {"role": "assistant"})]
    events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in answer.words]
    events.append(("contentBlockStop", {"contentBlockIndex": 0}))
    if answer.tool:
        start = {"toolUse": {"toolUseId": f"tooluse_{answer.ident}", "name": answer.tool[0]}}
        events += [("contentBlockStart", {"contentBlockIndex": 1, "start": start}),
                   ("contentBlockDelta", {"contentBlockIndex": 1,
                                          "delta": {"toolUse": {"input": json.dumps(answer.tool[1])}}}),
                   ("contentBlockStop", {"contentBlockIndex": 1})]
    events += [("messageStop", {"stopReason": "tool_use" if answer.tool else "end_turn"}),
               ("metadata", {"usage": usage or converse_usage(answer), "metrics": {"latencyMs": 5}})]
    return [fakebedrock.converse_event(kind, doc) for kind, doc in events]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"
    disable_nagle_algorithm = True  # headers and body go in separate writes

    def log_message(self, format, *args):  # quiet
        pass

    def _opt(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(f"x-fake-{name}") or self.server.fake.defaults.get(name, default)

    def _handle(self):
        fake: FakeProvider = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, list(self.headers.items()), body if fake.record else b"")
        with fake.lock:
            fake.received.append(received)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return fakews.serve(self)

        hang = float(self._opt("hang-ms", "0"))
        if hang:
            time.sleep(hang / 1000)
        path = urlsplit(self.path).path
        if path.startswith("/echo"):
            return self._send_json(200, {
                "method": self.command, "path": self.path, "headers": list(self.headers.items()),
                "body_sha256": hashlib.sha256(body).hexdigest(), "body_size": len(body)})
        if path == "/download":
            return self._download(int(parse_qs(urlsplit(self.path).query)["size"][0]))

        bedrock = BEDROCK_OPERATION.fullmatch(path)
        if (bedrock or path.startswith(BEDROCK_CONTROL)) and fake.aws_region:
            refused = fakebedrock.check_signature(self.command, f"127.0.0.1:{fake.port}", self.path,
                                                  list(self.headers.items()), body, fake.aws_region, fake.aws_token)
            if refused:
                with fake.lock:
                    fake.refused.append((self.path, refused))
                kind, message = refused.split(": ", 1)
                return self._send_json(403, {"message": message}, {"x-amzn-errortype": kind})
        status = int(self._opt("status", "200"))
        if status != 200:
            return self._error(status, path)
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        model = request.get("model", "fake-model") if isinstance(request, dict) else "fake-model"
        count = int(self._opt("events", str(len(WORDS))))
        answer = scripted_answer(path, request, body, [WORDS[i % len(WORDS)] for i in range(count)])
        words = answer.words
        stream = isinstance(request, dict) and request.get("stream") is True
        if self.command == "GET" and path.endswith("/models"):
            # OpenAI's list and the Codex backend's: an empty one sends Codex to its built-in presets.
            return self._send_json(200, {"object": "list", "data": [], "models": []})
        if path.endswith("/messages/count_tokens"):
            return self._send_json(200, {"input_tokens": max(1, len(body) // 4)})
        usage = json.loads(self._opt("usage")) if self._opt("usage") else None
        if bedrock:
            return self._bedrock(path, unquote(bedrock.group(1)), bedrock.group(2), answer, usage)
        if path.startswith(BEDROCK_CONTROL):
            return self._send_json(200, {"inferenceProfileSummaries": []})
        gemini = GEMINI_METHOD.fullmatch(path)
        if gemini:
            return self._gemini(path, gemini.group(1), gemini.group(2), answer, request, usage)
        if path.endswith("/messages"):
            self._sent(path, model, usage or (anthropic_stream_usage(words, usage) if stream else ANTHROPIC_USAGE))
            if stream:
                return self._stream(anthropic_events(words, model, answer.tool, answer.ident, usage))
            return self._send_json(200, anthropic_answer(answer, model, usage))
        if path.endswith("/chat/completions") or path.endswith("/completions"):
            if stream:
                options = request.get("stream_options") if isinstance(request, dict) else None
                if usage is None and isinstance(options, dict) and options.get("include_usage"):
                    usage = CHAT_USAGE
                if usage:
                    self._sent(path, model, usage)
                return self._stream(chat_events(words, model, usage))
            self._sent(path, model, usage or CHAT_USAGE)
            return self._send_json(200, chat_completion("".join(words), model, usage))
        if path.endswith("/responses"):
            response_id = f"resp_{uuid.uuid4().hex}"
            self._sent(path, model, usage or RESPONSES_USAGE)
            if stream:
                return self._stream(response_events(words, model, response_id, answer.tool, answer.ident, usage))
            return self._send_json(200, response_object(answer.text, model, response_id=response_id,
                                                        tool=answer.tool, ident=answer.ident, usage=usage))
        return self._send_json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    def _sent(self, path: str, model: str, usage: dict) -> None:
        with self.server.fake.lock:
            self.server.fake.sent.append(Sent(path, model, dict(usage)))

    def do_HEAD(self):
        self.server.fake.received.append(Received("HEAD", self.path, list(self.headers.items()), b""))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    def _bedrock(self, path: str, model: str, operation: str, answer: Answer, usage: dict | None):
        metrics = {"x-amzn-requestid": f"req-{answer.ident}", "x-amzn-bedrock-invocation-latency": "5"}
        if operation.startswith("converse"):
            usage = usage or converse_usage(answer)
            self._sent(path, model, usage)
            if operation == "converse":
                return self._send_json(200, converse_answer(answer, usage), metrics)
            frames = converse_events(answer, usage)
        else:
            self._sent(path, model, usage or (anthropic_stream_usage(answer.words, usage) if operation != "invoke"
                                              else ANTHROPIC_USAGE))
            if operation == "invoke":
                return self._send_json(200, anthropic_answer(answer, model, usage), metrics)
            frames = bedrock_events(answer, model, usage)
        cut = self._opt("bedrock-exception")  # an error frame after the first event: ThrottlingException…
        if cut:
            frames = frames[:1] + [fakebedrock.exception(cut, f"fake {cut}")]
        return self._stream(frames, "application/vnd.amazon.eventstream", metrics)

    def _gemini(self, path: str, model: str, method: str, answer: Answer, request: dict, usage: dict | None):
        if method == "countTokens":
            return self._send_json(200, {"totalTokens": max(1, len(json.dumps(request)) // 4)})
        pieces = gemini_pieces(answer, model, request, usage)
        self._sent(path, model, pieces[-1]["usageMetadata"])
        if method == "generateContent":
            return self._send_json(200, gemini_response(pieces))
        pieces = [json.dumps(p).encode() for p in pieces]
        if "alt=sse" in self.path:  # SSE, each event ending in a blank line of CRLFs as Google's do
            return self._stream([b"data: " + p + b"\r\n\r\n" for p in pieces])
        # One JSON array, its elements sent as they are made.
        return self._stream([b"[" + pieces[0]] + [b"\n,\r\n" + p for p in pieces[1:]] + [b"\n]"],
                            "application/json; charset=UTF-8")

    def _error(self, status: int, path: str):
        if BEDROCK_OPERATION.fullmatch(path) or path.startswith(BEDROCK_CONTROL):
            kind = {429: "ThrottlingException", 400: "ValidationException"}.get(status, "InternalServerException")
            return self._send_json(status, {"message": f"fake {status}"}, {"x-amzn-errortype": kind})
        if GEMINI_METHOD.fullmatch(path):
            names = {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}
            doc = {"error": {"code": status, "message": f"fake {status}", "status": names.get(status, "INTERNAL")}}
        elif path.endswith("/messages"):
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            doc = {"type": "error", "error": {"type": kind, "message": f"fake {status}"}}
        else:
            doc = {"error": {"message": f"fake {status}", "type": "rate_limit_exceeded" if status == 429
                             else "server_error", "code": None}}
        extra = {}
        if self._opt("retry-after"):
            extra["retry-after"] = self._opt("retry-after")
        self._send_json(status, doc, extra)

    def _body_bytes(self, data: bytes) -> tuple[bytes, dict]:
        if self._opt("gzip") == "1":
            return gzip.compress(data), {"Content-Encoding": "gzip"}
        if self._opt("encoding"):
            return encode(data, self._opt("encoding")), {"Content-Encoding": header_value(self._opt("encoding"))}
        return data, {}

    def _send_json(self, status: int, doc, extra: dict | None = None):
        data, headers = self._body_bytes(json.dumps(doc).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake01")
        self.send_header("Set-Cookie", "a=1; Path=/")
        self.send_header("Set-Cookie", "b=2; Path=/")
        for name, value in {**headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[bytes], content_type: str = "text/event-stream; charset=utf-8",
                extra: dict | None = None):
        delay = float(self._opt("delay-ms", "0")) / 1000
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        encoder = StreamEncoder(self._opt("encoding")) if self._opt("encoding") else None
        if encoder:
            self.send_header("Content-Encoding", header_value(self._opt("encoding")))
        self.end_headers()
        cut = int(self._opt("cut-after", "0"))
        stamp = self._opt("stamp") == "1"
        try:
            for i, event in enumerate(events):
                if cut and i == cut:
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                if delay:
                    time.sleep(delay)
                if stamp:
                    event = b": sent %.6f\n%s" % (time.time(), event)
                event = encoder.piece(event) if encoder else event
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            tail = encoder.end() if encoder else b""
            if tail:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with self.server.fake.lock:
                self.server.fake.disconnects.append((self.path, time.monotonic()))
            self.close_connection = True

    def _download(self, size: int):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = bytes(range(256)) * 256
        sent = 0
        try:
            while sent < size:
                part = block[: min(len(block), size - sent)]
                self.wfile.write(part)
                sent += len(part)
        except OSError:
            with self.server.fake.lock:
                self.server.fake.disconnects.append((self.path, time.monotonic()))
            self.close_connection = True
