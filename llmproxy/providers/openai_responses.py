"""OpenAI Responses API (``/v1/responses``), also as the ChatGPT backend the Codex CLI uses when
signed in with ChatGPT (``chatgpt.com/backend-api/codex/responses``), over SSE or WebSocket.

The answer is a response object; a stream (or a WebSocket session) sends it in
``response.created`` (model, no usage yet) and in full in its last event, ``response.completed``
(or ``response.incomplete`` / ``response.failed``), with usage. Tool calls are output items.

Routed as ``/openai/{upstream}/…``; an OpenAI call to api.openai.com made with a ChatGPT
sign-in token goes to the ChatGPT backend instead (:func:`rewrite`). Session ids, sub-agents
and errors as every OpenAI API (:mod:`llmproxy.providers.openai_chat`); a response's id is
remembered so that a later ``previous_response_id`` finds its session.
"""

from __future__ import annotations

import json
import re
from typing import Iterable

from llmproxy.providers.openai_chat import AGENT_HEADERS, client_session_id, counts, error_document  # noqa: F401
from llmproxy.providers.spelling import TEXT, Spelling
from llmproxy.providers.summary import Counts, Summary, common_request
from llmproxy.providers.transcribe import Part, Said, Stream, after_last, blocks, error_message, joined

PREFIX = "openai"
NAMES = ("openai", "chatgpt")
HOSTS = {"chatgpt.com": "chatgpt"}
PRICED_AS = "openai"  # the ChatGPT backend too: signed-in calls are priced at list price
LOGGED = re.compile(r"/v1/responses|/backend-api/.+/responses")

# ChatGPT sign-in (Codex CLI): an OAuth access token, a JWT, instead of an sk-… API key.
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
CHATGPT_HOST = "chatgpt.com"
CHATGPT_PREFIX = "/backend-api/codex"

# Codex's developer items are instructions and reasoning items hidden reasoning: no turns. Item
# ids and states are the server's (a ``store: false`` client drops them); a message item may
# omit its type; input_text / output_text are text; a function_call_output's content is ``output``.
SPELLING = Spelling(context_roles=frozenset({"system", "developer"}), hidden=frozenset({"reasoning"}),
                    server_fields=frozenset({"id", "status"}), text_types=frozenset({"input_text", "output_text"}),
                    content_fields={"function_call_output": "output"}, message_type="message")

WANTED = re.compile(rb'"type"\s*:\s*"response\.(?:created|completed|incomplete|failed|output_item\.done)"')


def handles(provider: str, path: str) -> bool:
    return provider in NAMES and path.endswith("/responses")


def is_chatgpt_token(authorization: str | None) -> bool:
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    token = authorization[7:].strip()
    return not token.startswith("sk-") and bool(_JWT.fullmatch(token))


def rewrite(host: str, path: str, authorization: str | None) -> tuple[str, str, str] | None:
    """(provider, host, path) of a call that goes to the ChatGPT backend instead, else None.

    Codex signed in with ChatGPT talks to chatgpt.com/backend-api/codex/responses; clients
    configured with the usual …/v1 base URL send /v1/responses."""
    if host != "api.openai.com" or not is_chatgpt_token(authorization):
        return None
    return "chatgpt", CHATGPT_HOST, CHATGPT_PREFIX + (path[3:] if path == "/v1" or path.startswith("/v1/") else path)


def conversation(body: dict) -> list:
    if body.get("previous_response_id"):  # the history lives on the server, not in the request
        return []
    items = body.get("input")
    return items if isinstance(items, list) else []


def response_id(events: Iterable[dict], body: bytes | None) -> str | None:
    """The id of the answer (its first events, or its JSON body)."""
    for i, event in enumerate(events):
        response = event.get("response")
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            return response["id"]
        if i >= 2:
            return None
    if body is None or body.lstrip()[:1] != b"{":
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("id") if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None


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


# --- the transcript ---

_TEXT_BLOCKS = (TEXT, *SPELLING.text_types)
_CALLS = {"function_call": "arguments", "custom_tool_call": "input"}  # call item → its arguments' field
_OUTPUTS = ("function_call_output", "custom_tool_call_output")
_REASONING_TEXTS = ("summary", "content")  # a reasoning item's shown summary, or its text when sent


def _output(value) -> Part:
    ref = ""
    if isinstance(value, dict):
        ref, value = str(value.get("call_id", "")), value.get("output")
    if isinstance(value, list):
        return Part("result", name=ref, ref=ref, parts=blocks(value, _TEXT_BLOCKS))
    return Part("result", "" if value is None else str(value), name=ref, ref=ref)


def turn(body: dict) -> list[tuple[str, list[Part]]]:
    """(role, parts) of the input items after the model's last message or call; a
    ``function_call_output`` is the result of a call."""
    items = body.get("input")
    if isinstance(items, str):
        return [("user", [Part("text", items)])]
    out = []
    for item in after_last(items if isinstance(items, list) else [],
                           lambda m: m.get("role") == "assistant" or m.get("type") in _CALLS):
        if item.get("type") in _OUTPUTS:
            out.append(("tool", [_output(item)]))
        else:
            out.append((item.get("role", "user"), blocks(item.get("content"), _TEXT_BLOCKS)))
    return out


def system(body: dict) -> str:
    """The instructions, and the system and developer items' text."""
    items = body.get("input")
    texts = [body.get("instructions") if isinstance(body.get("instructions"), str) else ""]
    texts += [joined(item.get("content"), _TEXT_BLOCKS) for item in (items if isinstance(items, list) else [])
              if isinstance(item, dict) and item.get("role") in SPELLING.context_roles]
    return "\n\n".join(filter(None, texts))


def _reasoning(item: dict) -> Part:
    texts = [b.get("text", "") for field in _REASONING_TEXTS for b in item.get(field) or ()
             if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return Part("thinking", "\n\n".join(texts), name="" if texts else "redacted")


def _item_parts(item: dict) -> list[Part]:
    kind = item.get("type")
    if kind == "message" or (kind is None and item.get("role")):
        return [p for p in blocks(item.get("content"), _TEXT_BLOCKS) if p.kind == "text"]
    if kind in _CALLS:
        return [Part("call", str(item.get(_CALLS[kind]) or ""), name=item.get("name"), ref=str(item.get("call_id", "")))]
    if kind in SPELLING.hidden:
        return [_reasoning(item)]
    return [Part("block", name=kind)] if isinstance(kind, str) else []


def said(doc: dict) -> Said:
    out = Said(error=error_message(doc))
    for item in doc.get("output") or ():
        if isinstance(item, dict):
            out.parts += _item_parts(item)
    return out


def said_events(events: Iterable[dict]) -> Said:
    stream = Stream()
    for event in events:
        kind = event.get("type")
        index = event.get("output_index")
        if kind == "response.output_text.delta":
            stream.delta(event.get("delta", ""), index)
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") in _CALLS:
                stream.call(index, item.get("name"), item.get("call_id"))
            elif item.get("type") in SPELLING.hidden:
                stream.thinking(index)
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            stream.arguments(index, event.get("delta", ""))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            stream.thinking(index, event.get("delta", ""))
        elif kind == "response.reasoning_summary_part.added" and event.get("summary_index"):
            stream.thinking(index, "\n\n")
        elif kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            for part in _item_parts(event["item"])[:1]:
                stream.complete(index, part)
        elif isinstance(event.get("response"), dict) and event["response"].get("error"):  # it failed
            stream.failed(error_message(event["response"]))
        elif kind == "error":
            stream.failed(error_message(event) or event.get("message"))
    return stream.said()


def token_counts(usage: dict) -> Counts | None:
    """As Chat Completions, in the Responses API's names (``input_tokens_details.cached_tokens``;
    ``output_tokens`` includes ``output_tokens_details.reasoning_tokens``)."""
    return counts(usage, "input_tokens", "input_tokens_details", "output_tokens")
