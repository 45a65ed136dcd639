"""Summary fields (model, stop_reason, usage, tool_calls; model, stream, tools_count,
messages_count) read from each API's answers and requests.

The answers in ``tests/answers/`` follow the providers' published examples event for event (a
provider cannot be reached from here): JSON bodies, SSE streams, a Codex WebSocket session (one
server message a line), streams cut short and error answers. The SDK tests at the end let the
official SDKs judge: what the SDK read from an answer is what the log entry says.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import fakebedrock
import pytest
from proxyproc import jsonl_lines, wait_until

from llmproxy import providers
from llmproxy.proxy.capture import Exchange

ANSWERS = Path(__file__).parent / "answers"

ANTHROPIC = ("anthropic", "/v1/messages")
CHAT = ("openai", "/v1/chat/completions")
COMPLETIONS = ("openai", "/v1/completions")
RESPONSES = ("openai", "/v1/responses")
CHATGPT = ("chatgpt", "/backend-api/codex/responses")
GEMINI = ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent")
GEMINI_STREAM = ("gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent")
BEDROCK_INVOKE = ("bedrock", "/model/anthropic.claude-opus-4-1-20250805-v1:0/invoke")
BEDROCK_STREAM = ("bedrock", "/model/us.anthropic.claude-opus-4-1-20250805-v1:0/invoke-with-response-stream")
BEDROCK_CONVERSE = ("bedrock", "/model/anthropic.claude-sonnet-4-5-20250929-v1:0/converse")
GEMINI_USAGE = {"promptTokenCount": 3110, "candidatesTokenCount": 24, "totalTokenCount": 3229,
                "cachedContentTokenCount": 2030, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 3110}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 2030}], "thoughtsTokenCount": 95}

RESP_USAGE = {"input_tokens": 10472, "input_tokens_details": {"cached_tokens": 9984}, "output_tokens": 213,
              "output_tokens_details": {"reasoning_tokens": 128}, "total_tokens": 10685}
CHAT_USAGE = {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99,
              "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
STREAM_START_USAGE = {"input_tokens": 3, "cache_creation_input_tokens": 2104, "cache_read_input_tokens": 15870,
                      "cache_creation": {"ephemeral_5m_input_tokens": 2104, "ephemeral_1h_input_tokens": 0},
                      "service_tier": "standard"}
# The summaries of anthropic-tool-use.json and .sse, the same from the Anthropic API and Bedrock.
TOOL_USE_JSON = {"model": "claude-sonnet-4-5-20250929", "stop_reason": "tool_use", "tool_calls": ["get_weather"],
                 "usage": {"input_tokens": 472, "cache_creation_input_tokens": 1024, "cache_read_input_tokens": 20480,
                           "cache_creation": {"ephemeral_5m_input_tokens": 1024, "ephemeral_1h_input_tokens": 0},
                           "output_tokens": 91, "service_tier": "standard"}}
TOOL_USE_SSE = {"model": "claude-opus-4-1-20250805", "stop_reason": "tool_use", "tool_calls": ["Read", "Grep"],
                "usage": {**STREAM_START_USAGE, "output_tokens": 142}}

CASES = [
    ("anthropic-tool-use.json", ANTHROPIC, TOOL_USE_JSON),
    # message_start's input side, message_delta's final output_tokens
    ("anthropic-tool-use.sse", ANTHROPIC, TOOL_USE_SSE),
    # cut before message_delta: the input side is billed, and kept
    ("anthropic-cut.sse", ANTHROPIC, {
        "model": "claude-opus-4-1-20250805", "usage": {**STREAM_START_USAGE, "output_tokens": 1}}),
    ("anthropic-overloaded-mid-stream.sse", ANTHROPIC, {
        "model": "claude-opus-4-1-20250805", "usage": {**STREAM_START_USAGE, "output_tokens": 1}}),
    ("anthropic-error.json", ANTHROPIC, {}),
    ("chat-tool-calls.json", CHAT, {
        "model": "gpt-4o-mini-2024-07-18", "stop_reason": "tool_calls", "tool_calls": ["get_current_weather"],
        "usage": CHAT_USAGE}),
    # the usage chunk (stream_options.include_usage) comes last, with "choices": []
    ("chat-tool-calls-usage.sse", CHAT, {
        "model": "gpt-4.1-2025-04-14", "stop_reason": "tool_calls", "tool_calls": ["lookup_order"],
        "usage": CHAT_USAGE}),
    ("chat-no-usage.sse", CHAT, {"model": "gpt-4.1-2025-04-14", "stop_reason": "stop"}),
    ("chat-cut.sse", CHAT, {"model": "gpt-4.1-2025-04-14"}),
    ("completions-legacy.json", COMPLETIONS, {
        "model": "gpt-3.5-turbo-instruct", "stop_reason": "length",
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}),
    ("openai-error.json", CHAT, {}),
    ("openai-error.json", RESPONSES, {}),
    ("responses-function-call.json", RESPONSES, {
        "model": "gpt-5-codex", "stop_reason": "completed", "tool_calls": ["shell", "web_search"],
        "usage": RESP_USAGE}),
    ("responses-codex-tools.sse", CHATGPT, {
        "model": "gpt-5-codex", "stop_reason": "completed", "tool_calls": ["shell", "apply_patch"],
        "usage": RESP_USAGE}),
    ("responses-codex-tools.sse", RESPONSES, {
        "model": "gpt-5-codex", "stop_reason": "completed", "tool_calls": ["shell", "apply_patch"],
        "usage": RESP_USAGE}),
    ("responses-codex-tools.ws.jsonl", CHATGPT, {
        "model": "gpt-5-codex", "stop_reason": "completed", "tool_calls": ["shell", "apply_patch"],
        "usage": RESP_USAGE}),
    # cut before response.completed: no usage was sent yet
    ("responses-cut.sse", CHATGPT, {"model": "gpt-5-codex"}),
    ("responses-incomplete.sse", RESPONSES, {
        "model": "gpt-4.1-mini", "stop_reason": "max_output_tokens",
        "usage": {"input_tokens": 31, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 16,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 47}}),
    ("responses-failed.sse", RESPONSES, {"model": "gpt-5-codex", "stop_reason": "failed"}),
    # Gemini: every piece a whole response of its own parts, the last one with finishReason and the usage
    ("gemini-function-call.sse", GEMINI_STREAM, {
        "model": "gemini-2.5-pro", "stop_reason": "STOP", "tool_calls": ["read_file"], "usage": GEMINI_USAGE}),
    ("gemini-function-call.stream.json", GEMINI_STREAM, {  # the same without alt=sse: one JSON array
        "model": "gemini-2.5-pro", "stop_reason": "STOP", "tool_calls": ["read_file"], "usage": GEMINI_USAGE}),
    ("gemini-thinking.json", GEMINI, {
        "model": "gemini-2.5-flash", "stop_reason": "MAX_TOKENS",
        "usage": {"promptTokenCount": 12, "candidatesTokenCount": 9, "totalTokenCount": 121, "thoughtsTokenCount": 100}}),
    ("gemini-error.json", GEMINI, {}),
    # Bedrock's invoke speaks Anthropic's Messages API: its stream, framed in AWS's event stream;
    # the model is the path's (the request's), not the name in Anthropic's answer
    ("anthropic-tool-use.json", BEDROCK_INVOKE, {k: v for k, v in TOOL_USE_JSON.items() if k != "model"}),
    ("anthropic-tool-use.sse", BEDROCK_STREAM, {k: v for k, v in TOOL_USE_SSE.items() if k != "model"}),
    ("bedrock-converse.json", BEDROCK_CONVERSE, {
        "stop_reason": "tool_use", "tool_calls": ["get_weather"],
        "usage": {"inputTokens": 412, "outputTokens": 87, "totalTokens": 2547, "cacheReadInputTokens": 2048,
                  "cacheWriteInputTokens": 0}}),
]


def _split(data: bytes, sse: bool, framer=None) -> list[bytes]:
    """Through the Exchange's own event splitter (SSE, or the API's framer), as it may arrive:
    split anywhere."""
    exchange = Exchange(route=None, method="POST", path="/", request_headers=[], request_body=b"")
    exchange.got_headers(200, [], sse=sse, framer=framer)
    for i in range(0, len(data), 700):
        exchange.got_data(data[i:i + 700])
    exchange.finish()
    assert exchange.decoded_body() is None  # nothing left unsplit
    return [c.raw for c in exchange.chunks]


def chunks_of(name: str, route: tuple[str, str]) -> list[bytes] | None:
    """A recorded stream as the proxy cuts it: SSE through the Exchange's own event splitter
    (for Bedrock, its events first framed as AWS's event stream), a stream in an API's own
    framing through its framer, a WebSocket session one message per line; None for a JSON body."""
    data = (ANSWERS / name).read_bytes()
    if name.endswith(".ws.jsonl"):
        return [line for line in data.splitlines() if line]
    if name.endswith(".sse") and route[0] == "bedrock":
        events = [json.loads(raw.split(b"data: ", 1)[1]) for raw in _split(data, sse=True) if b"data: " in raw]
        framer = providers.framer(*route, 200, "application/vnd.amazon.eventstream")
        return _split(b"".join(fakebedrock.chunk(e) for e in events), sse=False, framer=framer)
    if name.endswith(".sse"):
        return _split(data, sse=True)
    framer = providers.framer(*route, 200, "application/json")
    return _split(data, sse=False, framer=framer) if framer else None


@pytest.mark.parametrize("name, route, expected", CASES, ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_answer_summary(name, route, expected):
    api = providers.api_for(*route)
    chunks = chunks_of(name, route)
    if chunks is None:
        got = providers.response_summary(api, (ANSWERS / name).read_text())
    else:
        got = providers.stream_summary(api, chunks)
    assert got == expected


@pytest.mark.parametrize("route, body, expected", [
    (ANTHROPIC, {"model": "claude-opus-4-1", "stream": True, "max_tokens": 32000,
                 "tools": [{"name": "Read"}, {"name": "Bash"}], "messages": [{"role": "user", "content": "hi"}]},
     {"model": "claude-opus-4-1", "stream": True, "tools_count": 2, "messages_count": 1}),
    (ANTHROPIC, {"model": "claude-haiku-4-5", "messages": []},
     {"model": "claude-haiku-4-5", "stream": False, "tools_count": 0, "messages_count": 0}),
    (CHAT, {"model": "gpt-4.1", "stream": True, "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
     {"model": "gpt-4.1", "stream": True, "tools_count": 1, "messages_count": 2}),
    (CHAT, {"model": "gpt-3.5-turbo", "functions": [{"name": "a"}, {"name": "b"}], "messages": []},
     {"model": "gpt-3.5-turbo", "stream": False, "tools_count": 2, "messages_count": 0}),
    (COMPLETIONS, {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
     {"model": "gpt-3.5-turbo-instruct", "stream": False, "tools_count": 0}),
    (CHATGPT, {"model": "gpt-5-codex", "stream": True, "instructions": "…", "store": False,
               "tools": [{"type": "function", "name": "shell"}, {"type": "custom", "name": "apply_patch"}],
               "input": [{"type": "message", "role": "user", "content": []}, {"type": "reasoning"}]},
     {"model": "gpt-5-codex", "stream": True, "tools_count": 2, "messages_count": 2}),
    (RESPONSES, {"model": "gpt-4.1-mini", "input": "Tell me a joke"},
     {"model": "gpt-4.1-mini", "stream": False, "tools_count": 0, "messages_count": 1}),
    (ANTHROPIC, ["not", "an", "object"], {}),
    (CHAT, None, {}),
    (ANTHROPIC, {"model": 42, "messages": "nope", "tools": {"a": 1}}, {"stream": False, "tools_count": 0}),
    (CHATGPT, {"type": "response.create", "model": "gpt-5-codex", "input": []},  # a WebSocket message
     {"model": "gpt-5-codex", "stream": True, "tools_count": 0, "messages_count": 0}),
    # Gemini and Bedrock: the model and whether it streams are the path's word
    (GEMINI_STREAM, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                     "tools": [{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}, {"googleSearch": {}}]},
     {"model": "gemini-2.5-pro", "stream": True, "tools_count": 3, "messages_count": 1}),
    (("gemini", "/v1beta/tunedModels/my%2Dtune:generateContent"), {"contents": []},
     {"model": "my-tune", "stream": False, "tools_count": 0, "messages_count": 0}),
    (BEDROCK_STREAM, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "tools": [{"name": "Read"}],
                      "messages": [{"role": "user", "content": "hi"}]},
     {"model": "us.anthropic.claude-opus-4-1-20250805-v1:0", "stream": True, "tools_count": 1, "messages_count": 1}),
    (("bedrock", "/model/anthropic.claude-opus-4-1-20250805-v1%3A0/converse-stream"),
     {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "toolConfig": {"tools": [{"toolSpec": {}}]}},
     {"model": "anthropic.claude-opus-4-1-20250805-v1:0", "stream": True, "tools_count": 1, "messages_count": 1}),
])
def test_request_summary(route, body, expected):
    assert providers.request_summary(providers.api_for(*route), body, route[1]) == expected


def test_requests_the_real_clients_sent_are_summarised():
    """The requests real Claude Code (also on Bedrock), Codex and Gemini CLI sent (tests/corpus/)
    each yield their model, stream flag and counts."""
    apis = {"claude": "anthropic", "codex": "openai", "gemini": "gemini", "bedrock": "bedrock"}
    records = [(apis[path.stem.split("-")[0]], json.loads(line))
               for path in sorted((Path(__file__).parent / "corpus").glob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    records = [(api, r) for api, r in records if r["method"] == "POST"]  # not the probes and model lists
    assert {api for api, _ in records} == set(apis.values())
    for provider, record in records:
        body, path = record["body"], record["path"].split("?")[0]
        got = providers.request_summary(providers.api_for(provider, path), body, path)
        if provider == "gemini":
            model, stream = path.rsplit("/", 1)[1].split(":")
            tools = sum(len(t["functionDeclarations"]) for t in body.get("tools", []))
            assert got == {"model": model, "stream": stream == "streamGenerateContent", "tools_count": tools,
                           "messages_count": len(body["contents"])}, path
        elif provider == "bedrock":
            assert got == {"model": path.split("/")[2], "stream": path.endswith("-stream"),
                           "tools_count": len(body["tools"]), "messages_count": len(body["messages"])}, path
        else:
            items = body.get("messages", body.get("input"))
            assert got == {"model": body["model"], "stream": body.get("stream") is True,
                           "tools_count": len(body.get("tools", [])), "messages_count": len(items)}, path


@pytest.mark.parametrize("body", [
    b"", b"not json", b"{", b"[1,2]", b'{"model": ["x"], "usage": [1], "content": "text", "choices": {}}',
    b'{"content": [null, 1, {"type": "tool_use"}], "usage": {"input_tokens": null}}',
])
@pytest.mark.parametrize("route", [ANTHROPIC, CHAT, RESPONSES, GEMINI, BEDROCK_INVOKE, BEDROCK_CONVERSE])
def test_odd_answers_give_what_they_can_and_never_raise(route, body):
    api = providers.api_for(*route)
    assert providers.response_summary(api, body) == {}
    assert providers.stream_summary(api, [b"data: " + body + b"\n\n", body, b"event: x\n\n"]) == {}


def test_unsummarised_paths_get_no_summary():
    assert providers.api_for("nosuch", "/v1/x") is None
    assert providers.response_summary(None, b'{"model": "m"}') == {}
    assert providers.stream_summary(None, [b'data: {"model": "m"}\n\n']) == {}
    assert providers.request_summary(None, {"model": "m"}) == {}


def test_a_long_stream_costs_little_to_summarise():
    """Only the events that carry the summary are parsed: 5,000 text deltas cost little.
    (Measured, not asserted as a speed: the figure goes to the report.)"""
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"word "}}\n\n')
    raws = chunks_of("anthropic-tool-use.sse", ANTHROPIC)
    long = raws[:3] + [delta] * 5000 + raws[3:]
    api = providers.api_for(*ANTHROPIC)
    started = time.perf_counter()
    got = providers.stream_summary(api, long)
    elapsed = time.perf_counter() - started
    assert got["usage"]["output_tokens"] == 142
    print(f"summary of a 5,000-event stream: {elapsed * 1000:.2f} ms")


def logged(log_dir: Path, marker: str, responses: int) -> list[dict]:
    """The entries of the session whose client id is ``marker``, once ``responses`` are logged."""
    def done():
        for path in log_dir.glob("*/*/*.jsonl"):
            entries = [json.loads(line) for line in jsonl_lines(path)]
            if entries and entries[0].get("client_session_id") == marker and \
                    sum(e["type"] == "response" for e in entries) >= responses:
                return entries
        return None
    return wait_until(done, timeout=10, message=f"{responses} responses of {marker}")


def usage_of(sdk_usage) -> dict:
    return sdk_usage.model_dump(exclude_none=True)


def test_the_anthropic_sdk_reads_what_the_entries_say(proxy, fake_provider):
    import anthropic

    marker = f"sum-{uuid.uuid4()}"
    client = anthropic.Anthropic(api_key="sk-ant-api03-sdk-test-key", max_retries=0,
                                 base_url=f"{proxy.url}/anthropic/{fake_provider.upstream}",
                                 default_headers={"X-Claude-Code-Session-Id": marker})
    ask = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    message = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    requests_, responses = split(logged(proxy.log_dir, marker, 2))
    for sdk, entry in zip((message, final), responses):
        assert (entry["model"], entry["stop_reason"], entry["usage"]) == (sdk.model, sdk.stop_reason,
                                                                          usage_of(sdk.usage))
        assert "tool_calls" not in entry
    assert [(r["model"], r["stream"], r["messages_count"]) for r in requests_] == [
        ("claude-test", False, 1), ("claude-test", True, 1)]


def test_the_openai_sdk_reads_what_the_entries_say(proxy, fake_provider):
    import openai

    marker = f"sum-{uuid.uuid4()}"
    client = openai.OpenAI(api_key="sk-proj-sdk-test-key", max_retries=0,
                           base_url=f"{proxy.url}/openai/{fake_provider.upstream}/v1",
                           default_headers={"session_id": marker})
    chat = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    response = client.responses.create(model="gpt-test", input="hi")
    events = list(client.responses.create(model="gpt-test", input="hi", stream=True))
    streamed = events[-1].response
    requests_, responses = split(logged(proxy.log_dir, marker, 3))
    assert (responses[0]["model"], responses[0]["stop_reason"], responses[0]["usage"]) == (
        chat.model, chat.choices[0].finish_reason, usage_of(chat.usage))
    for sdk, entry in zip((response, streamed), responses[1:]):
        assert (entry["model"], entry["stop_reason"], entry["usage"]) == (sdk.model, sdk.status,
                                                                          usage_of(sdk.usage))
    assert [(r["model"], r["stream"], r["messages_count"]) for r in requests_] == [
        ("gpt-test", False, 1), ("gpt-test", False, 1), ("gpt-test", True, 1)]


def test_timing_splits_time_to_first_byte_into_ours_and_upstreams(proxy, fake_provider):
    import anthropic

    marker = f"sum-{uuid.uuid4()}"
    client = anthropic.Anthropic(api_key="sk-ant-api03-sdk-test-key", max_retries=0,
                                 base_url=f"{proxy.url}/anthropic/{fake_provider.upstream}",
                                 default_headers={"X-Claude-Code-Session-Id": marker, "x-fake-hang-ms": "150"})
    client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    (response,) = split(logged(proxy.log_dir, marker, 1))[1]
    timing = response["timing"]
    assert timing["upstream_ms"] >= 150 > timing["proxy_ms"] >= 0
    assert timing["proxy_ms"] + timing["upstream_ms"] == pytest.approx(timing["ttfb_ms"], abs=0.01)
    assert timing["total_ms"] >= timing["ttfb_ms"]


def split(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    return [e for e in entries if e["type"] == "request"], [e for e in entries if e["type"] == "response"]


def test_a_websocket_turn_is_summarised_like_a_stream(proxy, fake_provider):
    """Codex's WebSocket mode: the response entry of a turn reads response.completed from the
    server's messages; a turn cut off keeps what it had."""
    from fakews import WsClient

    marker = f"ws-{uuid.uuid4()}"
    headers = [("Authorization", "Bearer sk-proj-" + "k" * 40 + "wxyz"), ("session-id", marker),
               ("OpenAI-Beta", "responses_websockets=2026-02-06")]
    turn = {"type": "response.create", "model": "gpt-ws", "tools": [{"type": "function", "name": "shell"}],
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
    client = WsClient(proxy.port, f"/openai/{fake_provider.upstream}/v1/responses", headers)
    assert client.status == 101
    client.send(turn)
    events = client.events_until()
    client.abort()
    completed = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    requests_, responses = split(logged(proxy.log_dir, marker, 1))
    assert (responses[0]["model"], responses[0]["stop_reason"], responses[0]["usage"]) == (
        completed["model"], "completed", {k: v for k, v in completed["usage"].items() if v is not None})
    assert (requests_[0]["model"], requests_[0]["stream"], requests_[0]["tools_count"],
            requests_[0]["messages_count"]) == ("gpt-ws", True, 1, 1)
