"""The Gemini API (``generativelanguage.googleapis.com``): Gemini CLI, the google-genai SDKs.

Routed as ``/gemini/{upstream}/…``: ``GOOGLE_GEMINI_BASE_URL`` (Gemini CLI) or the SDK's
``base_url`` is ``http://127.0.0.1:8080/gemini/generativelanguage.googleapis.com``. The model is
in the path (``/v1beta/models/{model}:generateContent``); ``:streamGenerateContent?alt=sse``
streams SSE, without ``alt=sse`` one JSON array whose elements come as they are made (logged as
one chunk each, see :class:`~llmproxy.providers.framing.JsonArray`). ``:countTokens`` and the
model lists are forwarded, not logged. The key (``x-goog-api-key`` or ``?key=``) is masked like
every key.

Every answer (each streamed piece too) is a ``GenerateContentResponse``: ``candidates[].content
.parts`` (``text``; ``thought: true`` for the thinking it shows; ``functionCall``),
``finishReason``, ``usageMetadata`` and ``modelVersion``.

Sessions: Gemini CLI names none on the wire (no header, no body field, also after
``--resume``), but the first user turn of its history (its ``<session_context>`` and the first
prompt) is the same in every call of one CLI session, resumed ones too: its hash is the
session. The CLI's routing call of a first turn sends the same parts as two user contents; they
are read as one turn. Errors are ``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable
from urllib.parse import unquote

from llmproxy.providers.framing import Framer, JsonArray, is_json
from llmproxy.providers.spelling import Spelling
from llmproxy.providers.summary import Counts, Summary
from llmproxy.providers.transcribe import Part, Said, Stream, after_last, error_message, number

PREFIX = "gemini"
NAMES = ("gemini",)
HOSTS = {"generativelanguage.googleapis.com": "gemini"}
PRICED_AS = "google"  # genai-prices' list for a host it does not know
# Gemini CLI and the google-genai SDKs read it
CLIENT_ENV = {"GOOGLE_GEMINI_BASE_URL": "/gemini/generativelanguage.googleapis.com"}
_METHOD = re.compile(r"/v1(?:alpha|beta)?/(?:models|tunedModels)/([^/:]+):(generateContent|streamGenerateContent)")
LOGGED = _METHOD
AGENT_HEADERS: tuple[str, ...] = ()
STREAM_METHOD = "streamGenerateContent"

# Parts carry no type; nothing in a content is the client's regenerated context.
SPELLING = Spelling()

WANTED = re.compile(rb'"finishReason"|"functionCall"|"usageMetadata"')
SESSION_PREFIX = "first-turn-"  # a session id made from the conversation's first turn

# google.rpc.Code names of the HTTP statuses the proxy answers with itself.
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
                 429: "RESOURCE_EXHAUSTED", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


def handles(provider: str, path: str) -> bool:
    return provider in NAMES


def path_summary(path: str) -> dict:
    """The model and whether the answer streams, which the path says (the body does not)."""
    match = _METHOD.fullmatch(path)
    if not match:
        return {}
    return {"model": unquote(match.group(1)), "stream": match.group(2) == STREAM_METHOD}


def framer(path: str, status: int, content_type: str) -> Framer | None:
    """A stream without ``alt=sse``: one JSON array, logged element by element."""
    if path.endswith(":" + STREAM_METHOD) and is_json(content_type):
        return JsonArray()
    return None


def _contents(body: dict) -> list:
    contents = body.get("contents")
    return contents if isinstance(contents, list) else []


def client_session_id(path: str, headers: dict[str, str], body: dict) -> str | None:
    """The hash of the first user turn: the parts of the user contents before the model's
    first answer."""
    parts = []
    for content in _contents(body):
        if not isinstance(content, dict) or content.get("role", "user") != "user":
            break
        parts.extend(content.get("parts") or ())
    if not parts:
        return None
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    return SESSION_PREFIX + digest.hexdigest()[:24]


# What Gemini CLI 0.61 changes in its history between calls of one session (tests/corpus/
# gemini-tool-loop.jsonl): the signature of the model's thinking (replaced after ``--resume``)
# and a call's id (spelt another way in its routing call); and it sends a tool's result twice
# once resumed.
def _stable_part(part: dict) -> dict:
    out = {k: v for k, v in part.items() if k != "thoughtSignature"}
    for key in ("functionCall", "functionResponse"):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != "id"}
    return out


def conversation(body: dict) -> list:
    """The contents as their identity sees them: consecutive contents of one role are one turn
    (the CLI's routing call splits the first), the model's shown thinking is left out, and what
    the CLI spells differently between calls (see :func:`_stable_part`) too."""
    turns: list[dict] = []
    for content in _contents(body):
        if not isinstance(content, dict):
            continue
        role = content.get("role", "user")
        parts = [_stable_part(p) for p in content.get("parts") or () if isinstance(p, dict) and not p.get("thought")]
        if turns and turns[-1]["role"] == role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": role, "parts": parts})
    for turn_ in turns:
        turn_["parts"] = [p for i, p in enumerate(turn_["parts"]) if i == 0 or p != turn_["parts"][i - 1]]
    return turns


def error_document(status: int, message: str, code: str) -> dict[str, Any]:
    name = _STATUS_NAMES.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
    return {"error": {"code": status, "message": message, "status": name}}


def request_summary(body: dict) -> dict:
    """``tools_count`` counts function declarations (and each built-in tool such as
    ``googleSearch``); the model and ``stream`` come from the path (:func:`path_summary`)."""
    tools = 0
    for tool in body.get("tools") or ():
        if isinstance(tool, dict):
            declarations = tool.get("functionDeclarations")
            tools += len(declarations) if isinstance(declarations, list) else len(tool)
    return {"stream": False, "tools_count": tools, "messages_count": len(_contents(body))}


def _parts(candidate: Any) -> list:
    content = candidate.get("content") if isinstance(candidate, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _candidates(doc: dict) -> list:
    candidates = doc.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def response_summary(doc: dict, summary: Summary) -> None:
    summary.set_model(doc.get("modelVersion"))
    summary.merge_usage(doc.get("usageMetadata"))
    for candidate in _candidates(doc)[:1]:  # a client asks for one candidate; the first is the answer
        summary.set_stop_reason(candidate.get("finishReason"))
        for part in _parts(candidate):
            call = part.get("functionCall")
            if isinstance(call, dict):
                summary.add_tool(call.get("name"))


def add_event(event: dict, summary: Summary) -> None:
    """Each streamed piece is a whole response of its own parts; its usage so far."""
    response_summary(event, summary)


# --- the transcript ---

def _arguments(call: dict) -> str:
    return json.dumps(call.get("args") or {}, ensure_ascii=False)


def _ref(call: dict) -> str:
    """A call's id: Gemini CLI sets one on its calls and their results; the API may not."""
    return str(call.get("id") or "")


def _part(part: dict) -> Part | None:
    if part.get("thought"):
        return Part("thinking", part.get("text") if isinstance(part.get("text"), str) else "")
    if isinstance(part.get("text"), str):
        return Part("text", part["text"])
    call = part.get("functionCall")
    if isinstance(call, dict):
        return Part("call", _arguments(call), name=str(call.get("name", "")), ref=_ref(call))
    result = part.get("functionResponse")
    if isinstance(result, dict):
        response = result.get("response")
        return Part("result", json.dumps(response, ensure_ascii=False), name=_ref(result) or str(result.get("name", "")),
                    ref=_ref(result), failed=isinstance(response, dict) and "error" in response)
    kinds = [k for k in part if k not in ("thoughtSignature", "thought")]
    return Part("block", name=kinds[0]) if kinds else None


def turn(body: dict) -> list[tuple[str, list[Part]]]:
    """(role, parts) of the contents after the model's last one; a ``functionResponse`` is the
    result of a call (named by the call's id where the client gave one, else the function's
    name; a ``response`` with an ``error`` is a failed call)."""
    out = []
    for content in after_last(_contents(body), lambda c: c.get("role") == "model"):
        parts = [p for p in (_part(part) for part in content.get("parts") or () if isinstance(part, dict)) if p]
        out.append((content.get("role", "user"), parts))
    return out


def system(body: dict) -> str:
    """The text of ``systemInstruction`` (a content's parts, or a string)."""
    instruction = body.get("systemInstruction")
    if isinstance(instruction, str):
        return instruction
    parts = instruction.get("parts") if isinstance(instruction, dict) else None
    return "\n\n".join(p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str)
                        and p["text"])


def _read(doc: dict, stream: Stream, calls: list[int]) -> None:
    """One response (a whole answer, or a stream's piece): its thinking and text add to one
    part each, in the order they came; each call comes whole, in one piece."""
    if doc.get("error"):  # an error answer, or an error element at the end of a stream
        stream.failed(error_message(doc))
    for candidate in _candidates(doc)[:1]:
        for part in _parts(candidate):
            call = part.get("functionCall")
            if part.get("thought"):
                stream.thinking("thinking", part.get("text"))
            elif isinstance(part.get("text"), str):
                stream.delta(part["text"])
            elif isinstance(call, dict):
                calls[0] += 1
                stream.call(("call", calls[0]), call.get("name"), _ref(call))
                stream.arguments(("call", calls[0]), _arguments(call))


def said(doc: dict) -> Said:
    stream = Stream()
    _read(doc, stream, [0])
    return stream.said()


def said_events(events: Iterable[dict]) -> Said:
    stream, calls = Stream(), [0]
    for event in events:
        _read(event, stream, calls)
    return stream.said()


def token_counts(usage: dict) -> Counts | None:
    """``promptTokenCount`` counts the cached tokens too (``cachedContentTokenCount``); the
    tokens of a tool's prompt (``toolUsePromptTokenCount``) are input besides; the thinking
    (``thoughtsTokenCount``) is output, billed as such, beside ``candidatesTokenCount``."""
    prompt = number(usage.get("promptTokenCount"))
    if prompt is None:
        return None
    cached = number(usage.get("cachedContentTokenCount")) or 0
    return Counts(input=max(prompt - cached, 0) + (number(usage.get("toolUsePromptTokenCount")) or 0),
                  output=(number(usage.get("candidatesTokenCount")) or 0) + (number(usage.get("thoughtsTokenCount")) or 0),
                  cache_read=cached)
