"""AWS Bedrock through the proxy: boto3's bedrock-runtime client, unsigned, against the fake
Bedrock, which checks every SigV4 signature with botocore (tests/fakebedrock.py) and answers in
the real event-stream framing. The proxy signs with the test credentials, relays the event
stream untouched and logs its events; no credential ever reaches a log line.
(Claude Code's Bedrock mode: tests/test_real_clients.py.)"""

from __future__ import annotations

import base64
import json
import os
import struct
import time

import boto3
import fakebedrock
import fakeprovider
import pytest
import realclients
import requests
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EventStreamError
from fakeprovider import FakeProvider
from genai_prices import extract_usage
from proxyproc import ProxyServer, jsonl_lines, wait_until

from llmproxy import providers
from llmproxy.common.errors import UpstreamCredentialsMissing
from llmproxy.proxy.capture import Exchange
from llmproxy.proxy.routing import resolve

MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"
BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
        "messages": [{"role": "user", "content": "fake-reply: hello from bedrock"}]}
SECRETS = (fakebedrock.SECRET_KEY, fakebedrock.SESSION_TOKEN, fakebedrock.ACCESS_KEY)


@pytest.fixture(scope="module")
def bedrock_proxy(tmp_path_factory):
    """The proxy with temporary test credentials (key, secret, session token) in its environment."""
    with ProxyServer(tmp_path_factory.mktemp("bedrock"), env=realclients.PROXY_ENV) as server:
        yield server


@pytest.fixture
def fake_bedrock():
    fake = FakeProvider().start()
    fake.aws_region, fake.aws_token = realclients.AWS_REGION, fakebedrock.SESSION_TOKEN
    yield fake
    fake.stop()


def client(proxy, fake):
    """boto3's bedrock-runtime client with the proxy as its endpoint, unsigned (the proxy signs)."""
    config = Config(retries={"total_max_attempts": 1}, signature_version=UNSIGNED)
    return boto3.client("bedrock-runtime", region_name=realclients.AWS_REGION, config=config,
                        endpoint_url=f"{proxy.url}/bedrock/{fake.upstream}")


def entries_of(proxy, fake, responses: int = 1) -> list[dict]:
    def done():
        lines = [json.loads(line) for p in sorted(proxy.log_dir.glob(f"{fake.upstream}/*/*.jsonl"))
                 for line in jsonl_lines(p)]
        return lines if sum(e["type"] == "response" for e in lines) >= responses else None
    return wait_until(done, timeout=10, message=f"{responses} responses logged")


def assert_no_credentials_in(proxy):
    for path in [*proxy.log_dir.rglob("*"), proxy.output_path]:
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in SECRETS if s.encode() in data], f"a credential in {path}"


def test_boto3_stream_is_signed_by_the_proxy_relayed_and_logged_as_anthropic_events(bedrock_proxy, fake_bedrock):
    answer = client(bedrock_proxy, fake_bedrock).invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(BODY))
    events = [json.loads(e["chunk"]["bytes"]) for e in answer["body"]]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "hello from bedrock" and events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3
    assert fake_bedrock.refused == []
    sent = fake_bedrock.last()
    assert sent.header("authorization").startswith("AWS4-HMAC-SHA256 Credential=" + fakebedrock.ACCESS_KEY)
    assert sent.header("x-amz-security-token") == fakebedrock.SESSION_TOKEN
    assert sent.path == "/model/" + MODEL.replace(":", "%3A") + "/invoke-with-response-stream"  # as boto3 spells it

    entries = entries_of(bedrock_proxy, fake_bedrock)
    request, response = [e for e in entries if e["type"] in ("request", "response")]
    assert (request["model"], request["stream"], request["messages_count"]) == (MODEL, True, 1)
    assert "Authorization" not in request["headers"]  # the client's headers: the signature is the proxy's
    assert [json.loads(c["raw"]) for c in response["chunks"]] == events
    assert all(c["ts"] and c["delta_ms"] >= 0 for c in response["chunks"])
    assert (response["model"], response["stop_reason"], response["usage"]) == (
        MODEL, "end_turn", {"input_tokens": 12, "output_tokens": 3})
    assert providers.said(providers.api_of_entry("bedrock", sent.path), response).text == ["hello from bedrock"]
    assert_no_credentials_in(bedrock_proxy)


def test_the_event_stream_reaches_the_client_byte_for_byte(bedrock_proxy, fake_bedrock):
    """Claude Code's path keeps a raw ``:`` in a model id (boto3 sends ``%3A``): signed as sent."""
    path = f"/model/{MODEL}/invoke-with-response-stream"
    body = json.dumps(BODY).encode()
    answer = fakeprovider.scripted_answer(path, BODY, body, [])
    sent = b"".join(fakeprovider.bedrock_events(answer, MODEL))  # what the fake sends for this request
    got = requests.post(f"{bedrock_proxy.url}/bedrock/{fake_bedrock.upstream}{path}", data=body,
                        headers={"x-fake-delay-ms": "5"})
    assert got.headers["Content-Type"] == "application/vnd.amazon.eventstream"
    assert got.content == sent and fake_bedrock.refused == []
    assert fake_bedrock.last().path == path


def test_boto3_invoke_converse_and_converse_stream(bedrock_proxy, fake_bedrock):
    bedrock = client(bedrock_proxy, fake_bedrock)
    body = json.loads(bedrock.invoke_model(modelId=MODEL, body=json.dumps(BODY))["body"].read())
    assert body["content"][0]["text"] == "hello from bedrock"
    messages = [{"role": "user", "content": [{"text": 'fake-tool: lookup {"q": 1}'}]}]
    tools = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}]}
    conversed = bedrock.converse(modelId="m1", messages=messages, toolConfig=tools)
    assert conversed["stopReason"] == "tool_use"
    streamed = list(bedrock.converse_stream(modelId="m1", messages=messages, toolConfig=tools)["stream"])
    assert streamed[-1]["metadata"]["usage"]["outputTokens"] == 2
    assert fake_bedrock.refused == []

    responses = [e for e in entries_of(bedrock_proxy, fake_bedrock, 3) if e["type"] == "response"]
    invoked, conversed_entry, stream_entry = sorted(responses, key=lambda e: e["_meta"]["ts"])
    assert invoked["stop_reason"] == "end_turn" and "body" in invoked
    assert (conversed_entry["stop_reason"], conversed_entry["tool_calls"], conversed_entry["usage"]["inputTokens"]) == (
        "tool_use", ["lookup"], 12)
    assert (stream_entry["stop_reason"], stream_entry["tool_calls"]) == ("tool_use", ["lookup"])
    assert json.loads(stream_entry["chunks"][0]["raw"]) == {"messageStart": {"role": "assistant"}}  # padding left out
    said = providers.said(providers.api_of_entry("bedrock", "/model/m1/converse-stream"), stream_entry)
    assert (said.text, said.tools) == (["Calling lookup."], [("lookup", '{"q": 1}')])


def test_an_error_in_the_stream_reaches_boto3_and_the_log(bedrock_proxy, fake_bedrock):
    fake_bedrock.defaults["bedrock-exception"] = "throttlingException"
    answer = client(bedrock_proxy, fake_bedrock).invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(BODY))
    with pytest.raises(EventStreamError, match="throttlingException"):
        list(answer["body"])
    response, = [e for e in entries_of(bedrock_proxy, fake_bedrock) if e["type"] == "response"]
    assert json.loads(response["chunks"][-1]["raw"]) == {"throttlingException": {"message": "fake throttlingException"}}


def test_the_fake_refuses_what_aws_would(fake_bedrock):
    """Unsigned, signed with another secret, for another region, or a body changed after signing:
    the fake Bedrock says no, as AWS would (the proxy's signatures above pass the same check)."""
    url = f"{fake_bedrock.url}/model/m/invoke"
    good = Credentials(fakebedrock.ACCESS_KEY, fakebedrock.SECRET_KEY, fakebedrock.SESSION_TOKEN)

    def signed(credentials, region=realclients.AWS_REGION, body=b"{}"):
        request = AWSRequest("POST", url, data=b"{}", headers={"Content-Type": "application/json"})
        SigV4Auth(credentials, "bedrock", region).add_auth(request)
        return requests.post(url, data=body, headers=dict(request.headers.items()))

    assert requests.post(url, data=b"{}").status_code == 403
    assert signed(Credentials(fakebedrock.ACCESS_KEY, "wrong-secret", fakebedrock.SESSION_TOKEN)).status_code == 403
    assert signed(good, region="eu-west-1").status_code == 403
    assert signed(good, body=b'{"changed": 1}').status_code == 403
    refused = [why for _, why in fake_bedrock.refused]
    assert refused[0].startswith("MissingAuthenticationTokenException")
    assert "does not match" in refused[1] and "credential scope" in refused[2] and "does not match" in refused[3]
    assert signed(good).status_code == 200


def test_a_request_the_client_signed_is_forwarded_as_signed(start_proxy, fake_bedrock, no_aws):
    """The client holds the credentials: the proxy adds nothing, and needs none of its own."""
    proxy = start_proxy(env=no_aws)
    url = f"http://{fake_bedrock.upstream}/model/m/invoke"  # signed for where it is going
    request = AWSRequest("POST", url, data=json.dumps(BODY).encode(), headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(fakebedrock.ACCESS_KEY, fakebedrock.SECRET_KEY, fakebedrock.SESSION_TOKEN), "bedrock",
              realclients.AWS_REGION).add_auth(request)
    resp = requests.post(f"{proxy.url}/bedrock/{fake_bedrock.upstream}/model/m/invoke", data=request.body,
                         headers=dict(request.headers.items()))
    assert resp.status_code == 200, resp.text
    assert fake_bedrock.last().header("authorization") == request.headers["Authorization"]
    assert fake_bedrock.refused == []
    logged = [e for e in entries_of(proxy, fake_bedrock) if e["type"] == "request"][0]
    assert logged["headers"]["Authorization"] == "..." + request.headers["Authorization"][-4:]
    assert logged["headers"]["X-Amz-Security-Token"] == "..." + fakebedrock.SESSION_TOKEN[-4:]
    assert_no_credentials_in(proxy)


def test_a_bedrock_api_key_is_forwarded_as_it_is(start_proxy, fake_bedrock, no_aws):
    """Claude Code with ``AWS_BEARER_TOKEN_BEDROCK`` sends the key as ``Authorization: Bearer``,
    unsigned (tests/test_real_clients.py): the proxy forwards it and signs nothing, with or
    without credentials of its own; the key is masked in the log."""
    proxy = start_proxy(env=no_aws)
    resp = requests.post(f"{proxy.url}/bedrock/{fake_bedrock.upstream}/model/m/invoke", data=json.dumps(BODY),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {fakebedrock.API_KEY}"})
    assert resp.status_code == 200, resp.text
    assert fake_bedrock.last().header("authorization") == f"Bearer {fakebedrock.API_KEY}"
    assert fake_bedrock.last().header("x-amz-date") is None and fake_bedrock.refused == []
    logged = [e for e in entries_of(proxy, fake_bedrock) if e["type"] == "request"][0]
    assert logged["headers"]["Authorization"] == "Bearer ..." + fakebedrock.API_KEY[-4:]
    assert fakebedrock.API_KEY not in "".join(p.read_text() for p in proxy.log_dir.rglob("*.jsonl"))
    wrong = requests.post(f"{proxy.url}/bedrock/{fake_bedrock.upstream}/model/m/invoke", data=json.dumps(BODY),
                          headers={"Content-Type": "application/json", "Authorization": "Bearer ABSKnotthekey"})
    assert wrong.status_code == 403 and wrong.headers["x-amzn-errortype"] == "UnrecognizedClientException"


@pytest.fixture
def no_aws(monkeypatch, tmp_path) -> dict[str, str]:
    """An environment in which botocore's credential chain finds nothing."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    return {"AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-creds"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def test_without_credentials_each_call_is_a_502_in_bedrocks_shape(start_proxy, fake_bedrock, no_aws):
    """Bedrock not configured and no credentials anywhere: the proxy starts, and a call gets a
    JSON 502 that boto3 shows; nothing goes upstream."""
    proxy = start_proxy(env=no_aws)
    bedrock = client(proxy, fake_bedrock)
    with pytest.raises(ClientError) as info:
        bedrock.invoke_model(modelId=MODEL, body=json.dumps(BODY))
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert error["Error"]["Code"] == "ServiceUnavailableException"
    assert "no AWS credentials to sign Bedrock calls with" in error["Error"]["Message"]
    assert fake_bedrock.received == []
    response, = [e for e in entries_of(proxy, fake_bedrock) if e["type"] == "response"]
    assert response["status"] == 502 and "no AWS credentials" in response["error"]


# --- the event stream in the log, frame by frame ---

def _exchange(pieces: list[bytes]) -> Exchange:
    route = resolve("/bedrock/127.0.0.1:9/model/m/invoke-with-response-stream", None, ("127.0.0.1",))
    exchange = Exchange(route=route, method="POST", path=route.path, request_headers=[], request_body=b"")
    content_type = "application/vnd.amazon.eventstream"
    exchange.got_headers(200, [("Content-Type", content_type)], False,
                         providers.framer(route.provider, route.path, 200, content_type))
    for piece in pieces:
        exchange.got_data(piece)
    exchange.finish()
    return exchange


def test_frames_split_anywhere_are_logged_as_their_events():
    frames = [fakebedrock.chunk({"type": "message_start", "message": {"model": "m"}}),
              fakebedrock.chunk({"type": "message_stop"})]
    data = b"".join(frames)
    exchange = _exchange([data[:5], data[5:30], data[30:]])
    assert [json.loads(c.raw) for c in exchange.chunks] == [{"type": "message_start", "message": {"model": "m"}},
                                                           {"type": "message_stop"}]
    assert exchange.decoded_body() is None


def test_a_frame_with_a_bad_checksum_keeps_the_rest_as_the_body_and_says_why():
    good, bad = fakebedrock.chunk({"type": "message_start"}), bytearray(fakebedrock.chunk({"type": "ping"}))
    bad[-1] ^= 0xFF
    exchange = _exchange([good, bytes(bad)])
    assert [json.loads(c.raw) for c in exchange.chunks] == [{"type": "message_start"}]
    kept = exchange.decoded_body()
    assert kept.data == bytes(bad) and kept.error.startswith("event stream:")


def test_a_chunk_whose_bytes_are_not_base64_keeps_the_rest_as_the_body_and_says_why():
    """A well-framed chunk of bad content is the upstream's fault like a bad checksum: the log
    keeps it as it came, and the relay (which finishes the exchange) does not break."""
    good = fakebedrock.chunk({"type": "message_start"})
    bad = fakebedrock.frame({":event-type": "chunk", ":message-type": "event"}, b'{"bytes": "abc"}')
    exchange = _exchange([good, bad])
    assert [json.loads(c.raw) for c in exchange.chunks] == [{"type": "message_start"}]
    kept = exchange.decoded_body()
    assert kept.data == bad and kept.error.startswith("event stream:")
    assert exchange.total_ms is not None


def test_frames_are_what_botocore_reads():
    frame = fakebedrock.chunk({"type": "ping"})
    total, headers = struct.unpack("!II", frame[:8])
    assert total == len(frame)
    payload = json.loads(frame[12 + headers:-4])
    assert json.loads(base64.b64decode(payload["bytes"])) == {"type": "ping"}


def test_loki_labels_bedrock_and_gemini_calls_by_their_provider(start_proxy, fake_bedrock, real_loki):
    """In the real Loki, a Bedrock call's lines have ``provider="bedrock"``, a Gemini call's
    ``provider="gemini"``; no credential is in them."""
    machine = f"bedrock-{os.getpid()}-{time.monotonic_ns()}"
    proxy = start_proxy(env={**realclients.PROXY_ENV, "LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": real_loki.url,
                             "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_MACHINE_ID": machine})
    client(proxy, fake_bedrock).invoke_model(modelId=MODEL, body=json.dumps(BODY))
    gemini = f"{proxy.url}/gemini/{fake_bedrock.upstream}/v1beta/models/gemini-2.5-flash:generateContent"
    assert requests.post(gemini, json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
                         headers={"x-goog-api-key": realclients.GEMINI_KEY}).status_code == 200
    for provider in ("bedrock", "gemini"):
        lines = real_loki.wait_for_lines(f'{{machine="{machine}", provider="{provider}"}}', 3)  # start, request, response
        assert [json.loads(line)["type"] for _, line in lines] == ["session_start", "request", "response"]
        assert not [s for s in (*SECRETS, realclients.GEMINI_KEY) for _, line in lines if s in line]


@pytest.mark.parametrize("region, url, signed_for", [
    (None, "https://bedrock-runtime.eu-west-3.amazonaws.com/model/m/invoke", "eu-west-3"),  # the host's
    ("us-west-2", "https://bedrock.ap-south-1.amazonaws.com/inference-profiles", "ap-south-1"),
    ("us-west-2", "http://127.0.0.1:9/model/m/invoke", "us-west-2"),  # LLM_PROXY_BEDROCK_REGION
    (None, "http://127.0.0.1:9/model/m/invoke", None),  # nothing names one: refused, nothing sent
])
def test_the_region_a_call_is_signed_for(monkeypatch, no_aws, region, url, signed_for):
    for name, value in {**no_aws, "AWS_ACCESS_KEY_ID": fakebedrock.ACCESS_KEY,
                        "AWS_SECRET_ACCESS_KEY": fakebedrock.SECRET_KEY}.items():
        monkeypatch.setenv(name, value)
    signer = providers.bedrock.Signer(region, None)
    if signed_for is None:
        with pytest.raises(UpstreamCredentialsMissing, match="no AWS region .* set LLM_PROXY_BEDROCK_REGION"):
            signer.sign("POST", url, [], b"{}")
        return
    headers = dict(signer.sign("POST", url, [("Content-Type", "application/json")], b"{}"))
    assert f"/{signed_for}/bedrock/aws4_request" in headers["Authorization"]
    assert "X-Amz-Security-Token" not in headers  # long-term keys: no token


PRICED_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"  # a US inference profile: regional prices
ANTHROPIC_USAGE = {"input_tokens": 7, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 48000,
                   "output_tokens": 321}
CONVERSE_USAGE = {"inputTokens": 7, "cacheWriteInputTokens": 2000, "cacheReadInputTokens": 48000,
                  "outputTokens": 321, "totalTokens": 50328}


@pytest.mark.parametrize("operation, usage, flavor", [
    ("invoke_model_with_response_stream", ANTHROPIC_USAGE, "anthropic"),
    ("converse", CONVERSE_USAGE, "default"),
], ids=["invoke-stream", "converse"])
def test_the_logged_cost_is_genai_prices_own_result(bedrock_proxy, fake_bedrock, operation, usage, flavor):
    """Priced by the model id of the path (the inference profile AWS bills), with genai-prices'
    own AWS Bedrock extractor as the judge."""
    fake_bedrock.defaults["usage"] = json.dumps(usage)
    bedrock = client(bedrock_proxy, fake_bedrock)
    if operation == "converse":
        bedrock.converse(modelId=PRICED_MODEL, messages=[{"role": "user", "content": [{"text": "fake-reply: hi"}]}])
    else:
        list(bedrock.invoke_model_with_response_stream(modelId=PRICED_MODEL, body=json.dumps(BODY))["body"])
    entry, = [e for e in entries_of(bedrock_proxy, fake_bedrock) if e["type"] == "response"]
    theirs = extract_usage({"model": PRICED_MODEL, "usage": usage}, provider_id="aws", api_flavor=flavor).calc_price()
    assert entry["model"] == PRICED_MODEL
    assert entry["cost"]["total"] == pytest.approx(float(theirs.total_price), rel=1e-12) and entry["cost"]["total"] > 0
    assert entry["tokens"] == {"input": 7, "output": 321, "cache_write": 2000, "cache_read": 48000}
    assert entry["client"] == "boto3"
