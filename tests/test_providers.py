"""Each API module answers every question the proxy asks (llmproxy/providers/); nothing outside
that package names a provider. Adding an API is adding a module and a row to these tables."""

import ast
import json
import re
from pathlib import Path

import pytest

from llmproxy import providers
from llmproxy.common.errors import (
    BadRoute,
    ProxyError,
    RequestRejected,
    UpstreamCredentialsMissing,
    UnknownProvider,
    UpstreamNotAllowed,
    UpstreamTimeout,
    UpstreamUnreachable,
    WebSocketUnsupported,
)
from llmproxy.providers import anthropic, bedrock, gemini, openai_chat, openai_responses
from llmproxy.providers.framing import FramingError, JsonArray

PACKAGE = Path(providers.__file__).parents[1]
REQUIRED = ("PREFIX", "NAMES", "HOSTS", "LOGGED", "AGENT_HEADERS", "WANTED", "SPELLING", "handles",
            "client_session_id", "conversation", "error_document", "request_summary", "response_summary", "add_event",
            "turn", "system", "said", "said_events", "token_counts", "PRICED_AS")


@pytest.mark.parametrize("api", providers.APIS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_api_module_answers_every_question(api):
    missing = [name for name in REQUIRED if not hasattr(api, name)]
    assert missing == []
    assert api.PREFIX in providers.PREFIXES and api.PREFIX in api.NAMES


def test_no_code_outside_the_providers_package_names_a_provider():
    names = {n for api in providers.APIS for n in api.NAMES}
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(sorted(names)))
    offenders = [f"{path.relative_to(PACKAGE)}:{i}" for path in PACKAGE.rglob("*.py")
                 if "providers" not in path.parts
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


API_MODULES = [Path(api.__file__) for api in providers.APIS]
# Also a name of the proxy's own: the Loki metadata key of our session id.
OURS = {"session_id"}


def _literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of the string literals of Python source, docstrings left out."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _api_vocabulary() -> set[str]:
    """What only an API module spells: its compound literals (event and block types such as
    ``message_start`` or ``input_text``, fields such as ``cache_read_input_tokens``, paths,
    hosts, header names, ``<system-reminder>``). Single words (``content``, ``status``) are
    everyone's, and the package's shared modules' literals are the proxy's own."""
    shared = {text for path in Path(providers.__file__).parent.glob("*.py") if path not in API_MODULES
              for _, text in _literals(path.read_text())}
    return {text for path in API_MODULES for _, text in _literals(path.read_text())
            if re.search(r"[_.\-/<]", text) and text not in shared and text not in OURS}


def _spoken(source: str, vocabulary: set[str]) -> list[tuple[int, str]]:
    return [(line, text) for line, text in _literals(source) if text in vocabulary]


def test_no_code_outside_the_providers_package_speaks_an_api():
    vocabulary = _api_vocabulary()
    offenders = [f"{path.relative_to(PACKAGE)}:{line} {text!r}" for path in PACKAGE.rglob("*.py")
                 if "providers" not in path.parts for line, text in _spoken(path.read_text(), vocabulary)]
    assert offenders == []


def test_the_api_vocabulary_check_finds_what_it_looks_for():
    vocabulary = _api_vocabulary()
    assert {"message_start", "input_text", "function_call_output", "redacted_thinking", "cache_control",
            "<system-reminder>", "response.output_text.delta", "prompt_tokens", "api.openai.com"} <= vocabulary
    assert not {"content", "status", "model", "usage", "session_id"} & vocabulary
    parsing = 'if event["type"] == "content_block_delta":\n    text = {"type": "input_text"}\n'
    assert [text for _, text in _spoken(parsing, vocabulary)] == ["content_block_delta", "input_text"]
    assert _spoken('"""Parses message_start."""\nkind = "content"\n', vocabulary) == []


@pytest.mark.parametrize("provider, path, api", [
    ("anthropic", "/v1/messages", anthropic),
    ("openai", "/v1/chat/completions", openai_chat),
    ("openai", "/v1/completions", openai_chat),
    ("openai", "/v1/threads/t1/runs", openai_chat),
    ("openai", "/v1/responses", openai_responses),
    ("chatgpt", "/backend-api/codex/responses", openai_responses),
    ("gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", gemini),
    ("bedrock", "/model/us.anthropic.claude-opus-5-5/invoke-with-response-stream", bedrock),
    ("nosuch", "/v1/messages", None),
])
def test_each_exchange_is_answered_by_its_api(provider, path, api):
    assert providers.api_for(provider, path) is api


@pytest.mark.parametrize("path, logged", [
    ("/v1/messages", True), ("/v1/messages/count_tokens", False), ("/v1/chat/completions", True),
    ("/v1/completions", True), ("/v1/responses", True), ("/backend-api/codex/responses", True),
    ("/v1/threads/t/messages", True), ("/v1/models", False), ("/backend-api/codex/models", False),
    ("/v1beta/models/gemini-2.5-pro:generateContent", True), ("/v1/models/g:streamGenerateContent", True),
    ("/v1beta/tunedModels/t1:generateContent", True), ("/v1beta/models/g:countTokens", False),
    ("/v1beta/models", False), ("/model/anthropic.claude-3-v1%3A0/invoke", True),
    ("/model/m/invoke-with-response-stream", True), ("/model/m/converse", True), ("/model/m/converse-stream", True),
    ("/model/m/count-tokens", False), ("/inference-profiles", False),
])
def test_logged_paths(path, logged):
    assert providers.logged(path) is logged


@pytest.mark.parametrize("error, anthropic_type, openai_type, gemini_status, bedrock_type", [
    (BadRoute("m"), "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT", "ValidationException"),
    (UnknownProvider("m"), "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT", "ValidationException"),
    (UpstreamNotAllowed("m"), "permission_error", "invalid_request_error", "PERMISSION_DENIED", "AccessDeniedException"),
    (UpstreamUnreachable("m"), "api_error", "server_error", "UNAVAILABLE", "ServiceUnavailableException"),
    (UpstreamCredentialsMissing("m"), "api_error", "server_error", "UNAVAILABLE", "ServiceUnavailableException"),
    (UpstreamTimeout("m"), "timeout_error", "server_error", "DEADLINE_EXCEEDED", "ServiceUnavailableException"),
    (RequestRejected(405, "m"), "invalid_request_error", "invalid_request_error", "UNIMPLEMENTED", "ValidationException"),
    (RequestRejected(429, "m"), "invalid_request_error", "invalid_request_error", "RESOURCE_EXHAUSTED",
     "ThrottlingException"),
    (WebSocketUnsupported("m"), "api_error", "server_error", "UNIMPLEMENTED", "ServiceUnavailableException"),
    (ProxyError("m"), "api_error", "server_error", "INTERNAL", "ServiceUnavailableException"),
])
def test_the_proxys_errors_in_each_providers_shape(error, anthropic_type, openai_type, gemini_status, bedrock_type):
    assert json.loads(providers.error_body("anthropic", error)) == {
        "type": "error", "error": {"type": anthropic_type, "message": "m"}}
    for name in ("openai", "chatgpt"):
        assert json.loads(providers.error_body(name, error)) == {
            "error": {"message": "m", "type": openai_type, "code": error.code}}
    assert json.loads(providers.error_body("gemini", error)) == {
        "error": {"code": error.status, "message": "m", "status": gemini_status}}
    assert json.loads(providers.error_body("bedrock", error)) == {"message": "m"}
    assert providers.error_headers("bedrock", error) == [("x-amzn-errortype", bedrock_type)]
    assert providers.error_headers("anthropic", error) == providers.error_headers(None, error) == []
    # A provider no API knows: one body that every SDK reads (the first API's fields win).
    assert json.loads(providers.error_body("mistral", error)) == {
        "type": "error", "message": "m",
        "error": {"type": anthropic_type, "message": "m", "code": error.code, "status": gemini_status}}


@pytest.mark.parametrize("prefix, host, path, authorization, expected", [
    ("openai", "api.openai.com", "/v1/responses", "Bearer aaa.bbb.ccc",
     ("chatgpt", "chatgpt.com", "/backend-api/codex/responses")),
    ("openai", "api.openai.com", "/v1/models", "Bearer aaa.bbb.ccc", ("chatgpt", "chatgpt.com", "/backend-api/codex/models")),
    ("openai", "api.openai.com", "/v1/responses", "Bearer sk-proj-a.b.c", None),
    ("openai", "127.0.0.1", "/v1/responses", "Bearer aaa.bbb.ccc", None),
    ("anthropic", "api.openai.com", "/v1/responses", "Bearer aaa.bbb.ccc", None),
    # Bedrock: a region names the runtime's endpoint there, or the control plane's for its paths.
    ("bedrock", "eu-west-3", "/model/m/invoke", None, ("bedrock", "bedrock-runtime.eu-west-3.amazonaws.com", "/model/m/invoke")),
    ("bedrock", "us-gov-west-1", "/inference-profiles", None,
     ("bedrock", "bedrock.us-gov-west-1.amazonaws.com", "/inference-profiles")),
    ("bedrock", "bedrock-runtime.us-east-1.amazonaws.com", "/model/m/invoke", None, None),
    ("bedrock", "127.0.0.1", "/model/m/invoke", None, None),
    ("gemini", "us-east-1", "/v1beta/models", None, None),
])
def test_a_chatgpt_sign_in_goes_to_the_chatgpt_backend(prefix, host, path, authorization, expected):
    assert providers.rewrite(prefix, host, path, authorization) == expected


@pytest.mark.parametrize("provider, path, body, expected", [
    ("anthropic", "/v1/messages", {"messages": [{"role": "user"}]}, [{"role": "user"}]),
    ("openai", "/v1/chat/completions", {"messages": [1, 2]}, [1, 2]),
    ("openai", "/v1/responses", {"input": [1]}, [1]),
    ("openai", "/v1/responses", {"input": [1], "previous_response_id": "resp_1"}, []),  # history on the server
    ("openai", "/v1/responses", {"input": "just text"}, []),
    ("anthropic", "/v1/messages", "not a dict", []),
    ("bedrock", "/model/m/invoke", {"messages": [{"role": "user"}]}, [{"role": "user"}]),
    # Gemini: one turn per role, the thinking left out, and what Gemini CLI respells between calls.
    ("gemini", "/v1beta/models/g:generateContent", {"contents": [
        {"role": "user", "parts": [{"text": "ctx"}]}, {"role": "user", "parts": [{"text": "q"}]},
        {"role": "model", "parts": [{"text": "hm", "thought": True}, {"text": "a"},
                                    {"functionCall": {"id": "c1", "name": "f", "args": {}}, "thoughtSignature": "s"}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "c1", "name": "f", "response": {}}}] * 2}]},
     [{"role": "user", "parts": [{"text": "ctx"}, {"text": "q"}]},
      {"role": "model", "parts": [{"text": "a"}, {"functionCall": {"name": "f", "args": {}}}]},
      {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]),
])
def test_conversation_history(provider, path, body, expected):
    assert providers.conversation(provider, path, body) == expected


@pytest.mark.parametrize("host, provider", [
    ("api.anthropic.com", "anthropic"), ("api.openai.com", "openai"), ("chatgpt.com", "chatgpt"),
    ("127.0.0.1:9000", None),
])
def test_default_hosts_name_their_provider(host, provider):
    assert providers.provider_for_host(host) == provider


def test_only_the_responses_api_names_answers_a_later_request_continues():
    sse = [b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_7"}}\n\n']
    assert providers.response_id("chatgpt", "/backend-api/codex/responses", sse, None) == "resp_7"
    assert providers.response_id("openai", "/v1/responses", [b'{"type":"response.created","response":{"id":"r"}}'],
                                 None) == "r"  # a WebSocket message
    assert providers.response_id("openai", "/v1/responses", None, b'{"id":"resp_9","object":"response"}') == "resp_9"
    assert providers.response_id("openai", "/v1/responses", None, b"\x1f\x8b gzip") is None
    assert providers.response_id("anthropic", "/v1/messages", None, b'{"id":"msg_1"}') is None
    assert providers.response_id("openai", "/v1/chat/completions", None, b'{"id":"chatcmpl-1"}') is None


@pytest.mark.parametrize("provider, path, usage, expected", [
    ("anthropic", "/v1/messages", {"input_tokens": 10, "cache_read_input_tokens": 5,
                                   "cache_creation_input_tokens": 2, "output_tokens": 7}, (17, 7)),
    ("anthropic", "/v1/messages", {"output_tokens": 1}, (None, None)),  # without its input side: not counted
    ("openai", "/v1/chat/completions", {"prompt_tokens": 9, "completion_tokens": 3}, (9, 3)),
    ("openai", "/v1/responses", {"input_tokens": 20, "output_tokens": 5, "input_tokens_details": {"cached_tokens": 4}},
     (20, 5)),
    ("gemini", "/v1beta/models/g:generateContent", {"promptTokenCount": 30, "cachedContentTokenCount": 10,
                                                     "candidatesTokenCount": 7, "thoughtsTokenCount": 5}, (30, 12)),
    ("gemini", "/v1beta/models/g:generateContent", {"promptTokenCount": 30}, (30, 0)),
    ("bedrock", "/model/m/invoke", {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}, (15, 7)),
    ("bedrock", "/model/m/converse", {"inputTokens": 10, "cacheReadInputTokens": 4, "cacheWriteInputTokens": 1,
                                      "outputTokens": 3}, (15, 3)),
])
def test_tokens_in_and_out_of_each_apis_usage(provider, path, usage, expected):
    assert providers.tokens(providers.api_for(provider, path), usage) == expected


def _sse(*events):
    return {"chunks": [{"raw": f"data: {json.dumps(e)}\n\n"} for e in events] + [{"raw": "data: [DONE]\n\n"}]}


@pytest.mark.parametrize("path, response, text, tools", [
    ("/v1/messages", _sse({"type": "message_start", "message": {}},
                          {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
                          {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
                          {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "name": "sh"}},
                          {"type": "content_block_delta", "index": 1,
                           "delta": {"type": "input_json_delta", "partial_json": '{"a"'}},
                          {"type": "content_block_delta", "index": 1,
                           "delta": {"type": "input_json_delta", "partial_json": ": 1}"}}),
     ["Hello"], [("sh", '{"a": 1}')]),
    ("/v1/messages", {"body": json.dumps({"content": [{"type": "text", "text": "A"},
                                                      {"type": "tool_use", "name": "sh", "input": {"a": 1}}]})},
     ["A"], [("sh", '{"a": 1}')]),
    ("/v1/chat/completions", _sse({"choices": [{"delta": {"content": "Hi"}}]},
                                  {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
                                  {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]},
                                  {"choices": [], "usage": {"prompt_tokens": 1}}),
     ["Hi"], [("f", "{}")]),
    ("/v1/chat/completions", {"body": json.dumps({"choices": [{"message": {
        "content": "Yo", "tool_calls": [{"function": {"name": "g", "arguments": "{}"}}]}}]})}, ["Yo"], [("g", "{}")]),
    ("/v1/responses", {"transport": "websocket", "chunks": [{"raw": json.dumps(e)} for e in (
        {"type": "response.created", "response": {}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "function_call", "name": "sh"}},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{}"},
        {"type": "response.output_text.delta", "delta": "Tool "},
        {"type": "response.output_text.delta", "delta": "out"})]},
     ["Tool out"], [("sh", "{}")]),
    ("/v1/responses", {"body": json.dumps({"output": [
        {"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": "T"}]},
        {"type": "function_call", "name": "f", "arguments": "{}"}]})}, ["T"], [("f", "{}")]),
    ("/v1beta/models/g:streamGenerateContent", _sse(
        {"candidates": [{"content": {"parts": [{"text": "Hmm", "thought": True}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "Rea"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "ding."}, {"functionCall": {"name": "read_file",
                                                                                   "args": {"p": 1}}}]}}]},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "ls"}}]}, "finishReason": "STOP"}]}),
     ["Reading."], [("read_file", '{"p": 1}'), ("ls", "{}")]),
    ("/v1/models/g:generateContent", {"body": json.dumps({"candidates": [{"content": {"parts": [
        {"text": "A"}, {"functionCall": {"name": "f", "args": {}}}]}}]})}, ["A"], [("f", "{}")]),
    ("/model/m/invoke-with-response-stream", {"chunks": [{"raw": json.dumps(e)} for e in (
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 1}})]}, ["Hi"], []),
    ("/model/m/converse-stream", {"chunks": [{"raw": json.dumps(e)} for e in (
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Think"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": "Ok"}}},
        {"contentBlockStart": {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}},
        {"messageStop": {"stopReason": "tool_use"}})]}, ["Ok"], [("f", "{}")]),
    ("/model/m/converse", {"body": (Path(__file__).parent / "answers" / "bedrock-converse.json").read_text()},
     ["I'll check the weather."], [("get_weather", '{"city": "Paris"}')]),
])
def test_what_each_api_answer_said(path, response, text, tools):
    said = providers.said(providers.api_of_entry(None, path), response)
    assert (said.text, said.tools) == (text, tools)


@pytest.mark.parametrize("path, response, thinking", [
    ("/v1beta/models/g:streamGenerateContent", _sse({"candidates": [{"content": {"parts": [
        {"text": "Weigh", "thought": True}]}}]}, {"candidates": [{"content": {"parts": [
            {"text": "ing.", "thought": True}, {"text": "Answer"}]}}]}), ["Weighing."]),
    ("/model/m/converse", {"body": (Path(__file__).parent / "answers" / "bedrock-converse.json").read_text()},
     ["The user asks for the weather."]),
    ("/v1/messages", _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}),
     []),
])
def test_the_thinking_an_answer_showed(path, response, thinking):
    said = providers.said(providers.api_of_entry(None, path), response)
    assert [p.text for p in said.parts if p.kind == "thinking"] == thinking


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/messages", {"messages": [
        {"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "out"},
                                     {"type": "text", "text": "more"}, {"type": "image"}]}]},
     [("user", [("result", "t1", "out"), ("text", "", "more"), ("block", "image", "")])]),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "a"},
                                           {"role": "tool", "tool_call_id": "c1", "content": "res"}]},
     [("tool", [("result", "c1", [("text", "", "res")])])]),
    ("/v1/responses", {"input": [{"type": "function_call", "call_id": "c1", "name": "sh", "arguments": "{}"},
                                 {"type": "function_call_output", "call_id": "c1", "output": "README"},
                                 {"role": "user", "content": [{"type": "input_text", "text": "next"}]}]},
     [("tool", [("result", "c1", "README")]), ("user", [("text", "", "next")])]),
    ("/v1/responses", {"input": "just text"}, [("user", [("text", "", "just text")])]),
    ("/v1beta/models/g:streamGenerateContent", {"contents": [
        {"role": "user", "parts": [{"text": "q"}]},
        {"role": "model", "parts": [{"text": "t", "thought": True}, {"functionCall": {"name": "read_file", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "read_file", "response": {"output": "x"}}},
                                   {"text": "next"}, {"inlineData": {"mimeType": "image/png"}}]}]},
     [("user", [("result", "read_file", '{"output": "x"}'), ("text", "", "next"), ("block", "inlineData", "")])]),
    ("/model/m/invoke", {"anthropic_version": "bedrock-2023-05-31", "messages": [
        {"role": "assistant", "content": "a"}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "out"}]}]},
     [("user", [("result", "t1", "out")])]),
    ("/model/m/converse", {"messages": [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "out"}, {"json": {"a": 1}}]}},
                                     {"text": "more"}, {"image": {}}]}]},
     [("user", [("result", "t1", [("text", "", "out"), ("text", "", '{"a": 1}')]), ("text", "", "more"),
                ("block", "image", "")])]),
])
def test_what_each_api_request_adds_to_the_conversation(path, body, expected):
    def flat(part):
        return part.kind, part.name, part.text if part.parts is None else [flat(p) for p in part.parts]

    turn = providers.turn(providers.api_of_entry(None, path), body)
    assert [(role, [flat(p) for p in parts]) for role, parts in turn] == expected


ANSWERS = Path(__file__).parent / "answers"


def _recorded(name: str) -> dict:
    """A response entry of a recorded answer: its SSE events as chunks, or its JSON body."""
    data = (ANSWERS / name).read_text()
    if name.endswith(".sse"):
        return {"chunks": [{"raw": event + "\n\n"} for event in data.split("\n\n") if event.strip()]}
    if name.endswith(".ws.jsonl"):
        return {"transport": "websocket", "chunks": [{"raw": line} for line in data.splitlines() if line.strip()]}
    return {"body": data}


def _flat(said):
    return [(p.kind, p.name, p.ref, p.text[:30]) for p in said.parts], said.error


@pytest.mark.parametrize("path, name, parts, error", [
    ("/v1/messages", "anthropic-tool-use.sse", [
        ("text", "", "", "Let me read the file first."),
        ("call", "Read", "toolu_01T1x1fJ34qAmk2tNTrN7Up6", '{"file_path": "/src/app.py"}'),
        ("call", "Grep", "toolu_01Vx2", '{"pattern": "def "}')], ""),
    ("/v1/messages", "anthropic-overloaded-mid-stream.sse", [("text", "", "", "Let me")], "Overloaded"),
    ("/v1/messages", "anthropic-error.json", [], "This request would exceed your organization's rate limit."),
    ("/v1/responses", "responses-codex-tools.sse", [
        ("thinking", "redacted", "", ""), ("call", "shell", "call_A", '{"command":["ls"]}'),
        ("call", "apply_patch", "call_B", "*** Begin Patch\n*** End Patch")], ""),
    ("/v1/responses", "responses-function-call.json", [
        ("thinking", "redacted", "", ""), ("call", "shell", "call_A", '{"command":["ls"]}'),
        ("block", "web_search_call", "", "")], ""),
    ("/v1/responses", "responses-failed.sse", [], "An error occurred while processing your request."),
    ("/v1/chat/completions", "chat-tool-calls-usage.sse", [("call", "lookup_order", "call_9y", '{"order_id": 42}')], ""),
    ("/v1/chat/completions", "openai-error.json", [],
     "Rate limit reached for gpt-4.1 in organization org-x on tokens per min (TPM)."),
])
def test_what_a_recorded_answer_said_in_order_with_call_ids_and_its_error(path, name, parts, error):
    assert _flat(providers.said(providers.api_of_entry(None, path), _recorded(name))) == (parts, error)


def test_a_websocket_answer_reads_like_its_stream():
    api = providers.api_of_entry(None, "/v1/responses")
    ws, sse = (providers.said(api, _recorded(name)) for name in ("responses-codex-tools.ws.jsonl",
                                                                  "responses-codex-tools.sse"))
    assert _flat(ws) == _flat(sse)


@pytest.mark.parametrize("path, response, parts", [
    ("/v1/messages", _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
                          {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm"}},
                          {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking"}},
                          {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "A"}}),
     [("thinking", "", "", "Hm"), ("thinking", "redacted", "", ""), ("text", "", "", "A")]),
    ("/v1/messages", {"body": json.dumps({"content": [{"type": "thinking", "thinking": "Why"},
                                                      {"type": "text", "text": "B"}]})},
     [("thinking", "", "", "Why"), ("text", "", "", "B")]),
    ("/v1/responses", _sse({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning"}},
                           {"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "One"},
                           {"type": "response.reasoning_summary_part.added", "output_index": 0, "summary_index": 1},
                           {"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "Two"},
                           {"type": "response.output_text.delta", "output_index": 1, "delta": "C"}),
     [("thinking", "", "", "One\n\nTwo"), ("text", "", "", "C")]),
    ("/v1/responses", {"body": json.dumps({"output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "S"}]},
        {"type": "custom_tool_call", "name": "apply_patch", "call_id": "c9", "input": "*** Begin"}]})},
     [("thinking", "", "", "S"), ("call", "apply_patch", "c9", "*** Begin")]),
])
def test_thinking_is_read_where_each_api_shows_it(path, response, parts):
    assert _flat(providers.said(providers.api_of_entry(None, path), response)) == (parts, "")


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/messages", {"system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]},
     "Be brief.\n\nBe kind."),
    ("/v1/messages", {"system": "Plain."}, "Plain."),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Sys"}, {"role": "developer", "content": "Dev"},
                                           {"role": "user", "content": "q"}]}, "Sys\n\nDev"),
    ("/v1/responses", {"instructions": "Inst", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "Perms"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "q"}]}]}, "Inst\n\nPerms"),
    ("/v1/responses", {"input": "q"}, ""),
    ("/v1beta/models/g:generateContent", {"systemInstruction": {"parts": [{"text": "You are Gemini CLI."},
                                                                          {"text": "Be safe."}]}},
     "You are Gemini CLI.\n\nBe safe."),
    ("/model/m/invoke", {"anthropic_version": "bedrock-2023-05-31", "system": "Claude Code.", "messages": []},
     "Claude Code."),
    ("/model/m/converse", {"system": [{"text": "S1"}, {"cachePoint": {}}, {"text": "S2"}],
                           "messages": [{"role": "user", "content": [{"text": "q"}]}]}, "S1\n\nS2"),
])
def test_the_instructions_a_request_carries(path, body, expected):
    assert providers.system(providers.api_of_entry(None, path), body) == expected


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/messages", {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}]}]}, [("t1", True)]),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "a"},
                                           {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}, [("c1", False)]),
    ("/v1/responses", {"input": [{"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "x"},
                                 {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done"}]},
     [("c2", False)]),
    ("/v1beta/models/g:generateContent", {"contents": [  # as Gemini CLI sends them: ids on its calls
        {"role": "model", "parts": [{"functionCall": {"id": "read_file_1", "name": "read_file", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "read_file_1", "name": "read_file",
                                                         "response": {"error": "no such file"}}}]}]},
     [("read_file_1", True)]),
    ("/model/m/converse", {"messages": [
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tu1", "name": "f", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tu1", "status": "error",
                                                     "content": [{"text": "boom"}]}}]}]}, [("tu1", True)]),
])
def test_a_tool_result_names_the_call_it_answers(path, body, expected):
    turn = providers.turn(providers.api_of_entry(None, path), body)
    assert [(p.ref, p.failed) for _, parts in turn for p in parts if p.kind == "result"] == expected


@pytest.mark.parametrize("data, elements", [
    (b'[{"a": "x\\\\\\"]}{"}, {"b": [1, {"c": "\\\\"}]}]', [{"a": 'x\\"]}{'}, {"b": [1, {"c": "\\"}]}]),
    (b'[\n{"t": "\xc3\xa9"}\n,\r\n{"t": []}\n]', [{"t": "é"}, {"t": []}]),
    (b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}', [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}]),
    (b"[]", []),
])
def test_a_json_array_stream_splits_into_its_elements_wherever_it_is_cut(data, elements):
    for cut in range(1, len(data)):
        framer = JsonArray()
        got = framer.feed(data[:cut]) + framer.feed(data[cut:])
        assert [json.loads(e) for e in got] == elements and framer.rest() == b"", cut


def test_a_json_array_stream_cut_short_leaves_its_unfinished_element():
    framer = JsonArray()
    assert framer.feed(b'[{"a": 1}, {"b": "x') == [b'{"a": 1}'] and framer.rest() == b'{"b": "x'
    with pytest.raises(FramingError):
        JsonArray().feed(b'[{"a": 1}]]}')
