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
    UnknownProvider,
    UpstreamNotAllowed,
    UpstreamTimeout,
    UpstreamUnreachable,
    WebSocketUnsupported,
)
from llmproxy.providers import anthropic, openai_chat, openai_responses

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
    ("nosuch", "/v1/messages", None),
])
def test_each_exchange_is_answered_by_its_api(provider, path, api):
    assert providers.api_for(provider, path) is api


@pytest.mark.parametrize("path, logged", [
    ("/v1/messages", True), ("/v1/messages/count_tokens", False), ("/v1/chat/completions", True),
    ("/v1/completions", True), ("/v1/responses", True), ("/backend-api/codex/responses", True),
    ("/v1/threads/t/messages", True), ("/v1/models", False), ("/backend-api/codex/models", False),
])
def test_logged_paths(path, logged):
    assert providers.logged(path) is logged


@pytest.mark.parametrize("error, anthropic_type, openai_type", [
    (BadRoute("m"), "invalid_request_error", "invalid_request_error"),
    (UnknownProvider("m"), "invalid_request_error", "invalid_request_error"),
    (UpstreamNotAllowed("m"), "permission_error", "invalid_request_error"),
    (UpstreamUnreachable("m"), "api_error", "server_error"),
    (UpstreamTimeout("m"), "timeout_error", "server_error"),
    (RequestRejected(405, "m"), "invalid_request_error", "invalid_request_error"),
    (WebSocketUnsupported("m"), "api_error", "server_error"),
    (ProxyError("m"), "api_error", "server_error"),
])
def test_the_proxys_errors_in_each_providers_shape(error, anthropic_type, openai_type):
    assert json.loads(providers.error_body("anthropic", error)) == {
        "type": "error", "error": {"type": anthropic_type, "message": "m"}}
    for name in ("openai", "chatgpt"):
        assert json.loads(providers.error_body(name, error)) == {
            "error": {"message": "m", "type": openai_type, "code": error.code}}
    # A provider no API knows: one body that every SDK reads.
    assert json.loads(providers.error_body("gemini", error)) == {
        "type": "error", "error": {"type": anthropic_type, "message": "m", "code": error.code}}


@pytest.mark.parametrize("prefix, host, path, authorization, expected", [
    ("openai", "api.openai.com", "/v1/responses", "Bearer aaa.bbb.ccc",
     ("chatgpt", "chatgpt.com", "/backend-api/codex/responses")),
    ("openai", "api.openai.com", "/v1/models", "Bearer aaa.bbb.ccc", ("chatgpt", "chatgpt.com", "/backend-api/codex/models")),
    ("openai", "api.openai.com", "/v1/responses", "Bearer sk-proj-a.b.c", None),
    ("openai", "127.0.0.1", "/v1/responses", "Bearer aaa.bbb.ccc", None),
    ("anthropic", "api.openai.com", "/v1/responses", "Bearer aaa.bbb.ccc", None),
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
])
def test_what_each_api_answer_said(path, response, text, tools):
    said = providers.said(providers.api_of_entry(None, path), response)
    assert (said.text, said.tools) == (text, tools)


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
])
def test_a_tool_result_names_the_call_it_answers(path, body, expected):
    turn = providers.turn(providers.api_of_entry(None, path), body)
    assert [(p.ref, p.failed) for _, parts in turn for p in parts if p.kind == "result"] == expected
