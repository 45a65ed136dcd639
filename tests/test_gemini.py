"""The Gemini API through the proxy: the google-genai SDK (JSON, SSE streams, tool calls, errors)
and plain HTTP (the JSON-array stream without ``alt=sse``, countTokens, model lists), against
the fake provider. (Gemini CLI itself: tests/test_real_clients.py.)"""

from __future__ import annotations

import json

import pytest
import requests
from genai_prices import extract_usage
from google import genai
from google.genai import errors, types
from proxyproc import jsonl_lines, wait_until

from llmproxy import providers
from llmproxy.record.transcript import render

KEY = "AIzaSy" + "G3min1Test" * 3 + "qkey"


def sdk(proxy, upstream: str) -> genai.Client:
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=f"{proxy.url}/gemini/{upstream}", retry_options=types.HttpRetryOptions(attempts=1)))


def entries_of(proxy, fake, responses: int) -> list[dict]:
    def done():
        lines = [json.loads(line) for p in sorted(proxy.log_dir.glob(f"{fake.upstream}/*/*.jsonl"))
                 for line in jsonl_lines(p)]
        return lines if sum(e["type"] == "response" for e in lines) >= responses else None
    return wait_until(done, timeout=10, message=f"{responses} responses logged")


def test_google_genai_json_and_sse_stream_are_logged_with_their_summaries(proxy, fake_provider):
    client = sdk(proxy, fake_provider.upstream)
    thinking = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
    answer = client.models.generate_content(model="gemini-2.5-flash", contents="fake-reply: plain answer",
                                            config=thinking)
    assert answer.text == "plain answer" and answer.usage_metadata.thoughts_token_count == 4
    pieces = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="fake-reply: streamed answer"))
    assert "".join(p.text or "" for p in pieces) == "streamed answer"
    assert [r.path for r in fake_provider.received] == [  # google-genai's default API version
        "/v1/models/gemini-2.5-flash:generateContent", "/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse"]

    entries = entries_of(proxy, fake_provider, 2)
    requests_ = {e["model"]: e for e in entries if e["type"] == "request"}
    responses = {e["model"]: e for e in entries if e["type"] == "response"}
    assert (requests_["gemini-2.5-flash"]["stream"], requests_["gemini-2.5-pro"]["stream"]) == (False, True)
    assert requests_["gemini-2.5-flash"]["headers"]["X-Goog-Api-Key"] == "AIza...qkey"
    json_answer, stream = responses["gemini-2.5-flash"], responses["gemini-2.5-pro"]
    assert json_answer["stop_reason"] == stream["stop_reason"] == "STOP"
    assert json_answer["usage"] == {"promptTokenCount": 21, "candidatesTokenCount": 2, "thoughtsTokenCount": 4,
                                    "cachedContentTokenCount": 5, "totalTokenCount": 27}
    assert len(stream["chunks"]) == 2 and stream["usage"]["candidatesTokenCount"] == 2
    flash = [e for e in entries if e["_meta"]["session"] == json_answer["_meta"]["session"]]
    transcript = render([json.dumps(e) for e in flash])
    assert "user: fake-reply: plain answer" in transcript
    assert "assistant (thinking): Weighing the question." in transcript and "assistant: plain answer" in transcript
    assert "tokens in 21, out 6" in transcript


def test_a_function_call_is_summarised_and_shown(proxy, fake_provider):
    client = sdk(proxy, fake_provider.upstream)
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="read_file", description="Reads a file.")])
    answer = client.models.generate_content(model="gemini-2.5-flash", contents='fake-tool: read_file {"path": "a"}',
                                            config=types.GenerateContentConfig(tools=[tool]))
    assert answer.function_calls[0].name == "read_file"
    request, response = [e for e in entries_of(proxy, fake_provider, 1) if e["type"] in ("request", "response")]
    assert request["tools_count"] == 1 and response["tool_calls"] == ["read_file"]
    said = providers.said(providers.api_of_entry("gemini", "/v1/models/m:generateContent"), response)
    assert said.tools == [("read_file", '{"path": "a"}')]


def test_a_stream_without_alt_sse_is_relayed_as_sent_and_logged_element_by_element(proxy, fake_provider):
    """One JSON array whose elements come as they are made: the client gets the bytes as the
    fake sent them; the log gets each element as a chunk with its arrival time."""
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "fake-reply: one two three"}]}],
            "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}
    direct = requests.post(fake_provider.url + path, json=body).content
    through = requests.post(f"{proxy.url}/gemini/{fake_provider.upstream}{path}", json=body,
                            headers={"x-fake-delay-ms": "20"})
    assert through.status_code == 200 and through.content == direct
    elements = json.loads(through.content)

    response, = [e for e in entries_of(proxy, fake_provider, 1) if e["type"] == "response"]
    assert [json.loads(c["raw"]) for c in response["chunks"]] == elements
    assert all(c["delta_ms"] >= 15 for c in response["chunks"][1:])  # each as it came, not all at the end
    assert "body" not in response and response["stop_reason"] == "STOP" and response["model"] == "gemini-2.5-flash"
    said = providers.said(providers.api_of_entry("gemini", path), response)
    assert [(p.kind, p.text) for p in said.parts] == [("thinking", "Weighing the question."), ("text", "one two three")]


def test_count_tokens_and_model_lists_are_forwarded_not_logged(proxy, fake_provider):
    client = sdk(proxy, fake_provider.upstream)
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="how many").total_tokens > 0
    listed = requests.get(f"{proxy.url}/gemini/{fake_provider.upstream}/v1beta/models", headers={"x-goog-api-key": KEY})
    assert listed.status_code == 200 and "models" in listed.json()
    client.models.generate_content(model="gemini-2.5-flash", contents="fake-reply: logged")
    assert [r.path.split(":")[-1] for r in fake_provider.received] == ["countTokens", "/v1beta/models", "generateContent"]
    entries = entries_of(proxy, fake_provider, 1)
    assert [e["path"] for e in entries if e["type"] == "request"] == ["/v1/models/gemini-2.5-flash:generateContent"]


def test_the_key_is_masked_in_header_and_query_everywhere(proxy, fake_provider):
    """``x-goog-api-key`` and ``?key=`` reach the upstream as sent and no log line."""
    url = f"{proxy.url}/gemini/{fake_provider.upstream}/v1beta/models/gemini-2.5-flash:generateContent?key={KEY}"
    body = {"contents": [{"role": "user", "parts": [{"text": "fake-reply: keyed"}]}]}
    assert requests.post(url, json=body).status_code == 200
    assert requests.post(url + "&alt=sse", json=body, headers={"x-goog-api-key": KEY}).status_code == 200
    assert requests.post(url.replace(fake_provider.upstream, "127.0.0.1:1"), json=body).status_code == 502
    assert fake_provider.received[0].path.endswith(f"?key={KEY}")
    assert fake_provider.received[1].header("x-goog-api-key") == KEY
    entries = entries_of(proxy, fake_provider, 2)
    logged = [e for e in entries if e["type"] == "request"]
    assert logged[0]["path"].endswith("?key=AIza...qkey") and logged[1]["headers"]["X-Goog-Api-Key"] == "AIza...qkey"
    for path in [*proxy.log_dir.rglob("*"), proxy.output_path]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the key in {path}"


def test_errors_reach_google_genai_in_its_shape(proxy, fake_provider):
    client = sdk(proxy, fake_provider.upstream)
    fake_provider.defaults["status"] = "429"  # the upstream's own error passes through
    with pytest.raises(errors.ClientError) as upstream:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (upstream.value.code, upstream.value.status, upstream.value.message) == (429, "RESOURCE_EXHAUSTED", "fake 429")
    # each client kept in a name: one dropped closes its connection pool
    not_allowed, unreachable_host = sdk(proxy, "metadata.internal"), sdk(proxy, "127.0.0.1:1")
    with pytest.raises(errors.ClientError) as refused:  # the proxy's own: an upstream not allowed
        not_allowed.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (refused.value.code, refused.value.status) == (403, "PERMISSION_DENIED")
    assert "is not allowed" in refused.value.message
    with pytest.raises(errors.ServerError) as unreachable:
        unreachable_host.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert (unreachable.value.code, unreachable.value.status) == (502, "UNAVAILABLE")


GEMINI_USAGE = {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "candidatesTokenCount": 40,
                "thoughtsTokenCount": 100, "totalTokenCount": 5140}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_the_logged_cost_is_genai_prices_own_result(proxy, fake_provider, stream):
    """genai-prices reads the usage the fake sent with its own Gemini extractor and prices it:
    the entry says the same, and counts the cached tokens apart."""
    headers = {"x-fake-usage": json.dumps(GEMINI_USAGE)}
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(
        base_url=f"{proxy.url}/gemini/{fake_provider.upstream}", headers=headers))
    if stream:
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="fake-reply: priced"))
    else:
        client.models.generate_content(model="gemini-2.5-flash", contents="fake-reply: priced")
    entry, = [e for e in entries_of(proxy, fake_provider, 1) if e["type"] == "response"]
    sent = fake_provider.sent[-1]
    assert sent.usage == GEMINI_USAGE
    theirs = extract_usage({"modelVersion": sent.model, "usageMetadata": sent.usage}, provider_id="google",
                           api_flavor="default").calc_price()
    assert entry["cost"]["total"] == pytest.approx(float(theirs.total_price), rel=1e-12) and entry["cost"]["total"] > 0
    assert entry["tokens"] == {"input": 904, "output": 140, "cache_write": 0, "cache_read": 4096}
    assert entry["client"] == "google-genai-python"
