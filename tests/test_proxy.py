"""The proxy is invisible: same status, headers that matter, bytes and event timing.

Everything here goes through the real gunicorn server over real sockets to the fake provider.
"""

import gzip
import hashlib
import http.client
import json
import os
import socket
import time

import pytest
import requests
from proxyproc import http_get, wait_until


def through(proxy, fake, provider="anthropic"):
    return f"{proxy.url}/{provider}/{fake.upstream}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_is_forwarded_with_its_query_string(proxy, fake_provider, method):
    resp = requests.request(method, through(proxy, fake_provider) + "/echo/a%2Fb/c?x=1&y=%20z&x=2",
                            data=b"payload" if method not in ("GET", "OPTIONS") else None)
    assert resp.status_code == 200
    echoed = resp.json()
    assert echoed["method"] == method
    assert echoed["path"] == "/echo/a%2Fb/c?x=1&y=%20z&x=2"


def test_head_is_forwarded(proxy, fake_provider):
    resp = requests.head(through(proxy, fake_provider) + "/v1/models")
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == "1234"
    assert fake_provider.last().method == "HEAD"


@pytest.mark.parametrize("body", [
    b"",
    b"not json at all \x00\xff\xfe",
    json.dumps({"model": "m", "messages": [{"role": "user", "content": "h\u00e9llo"}]}).encode(),
    os.urandom(10 * 1024 * 1024),
], ids=["empty", "binary", "json", "10MB"])
def test_request_body_is_forwarded_byte_for_byte(proxy, fake_provider, body):
    resp = requests.post(through(proxy, fake_provider) + "/echo", data=body,
                         headers={"Content-Type": "application/octet-stream"})
    assert resp.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert fake_provider.last().body == body


def test_chunked_request_body_is_forwarded_whole(proxy, fake_provider):
    parts = [b"first,", b"second,", b"third"]
    resp = requests.post(through(proxy, fake_provider) + "/echo", data=iter(parts))
    assert resp.json()["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_headers_are_forwarded_except_hop_by_hop_and_host(proxy, fake_provider):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.putrequest("POST", f"/anthropic/{fake_provider.upstream}/echo", skip_host=True,
                    skip_accept_encoding=True)
    for name, value in [
        ("Host", f"127.0.0.1:{proxy.port}"), ("x-api-key", "sk-ant-test"), ("anthropic-version", "2023-06-01"),
        ("Connection", "keep-alive, X-Drop-Me"), ("X-Drop-Me", "1"), ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"), ("Proxy-Authorization", "Basic abc"), ("Upgrade", "h2c"),
        ("session_id", "codex-session-1"), ("X-Custom", "kept"), ("Content-Length", "2"),
        ("Expect", "100-continue"),
    ]:
        conn.putheader(name, value)
    conn.endheaders(b"{}")
    assert conn.getresponse().status == 200
    conn.close()
    received = fake_provider.last()
    names = {n.lower() for n, _ in received.headers}
    assert received.header("x-api-key") == "sk-ant-test"
    assert received.header("anthropic-version") == "2023-06-01"
    assert received.header("x-custom") == "kept"
    assert received.header("host") == fake_provider.upstream
    assert ("session_id", "codex-session-1") in received.headers
    assert not names & {"x-drop-me", "keep-alive", "te", "proxy-authorization", "upgrade", "expect"}
    assert received.header("user-agent") is None  # nothing of requests'/urllib3's own


def test_upstream_errors_pass_through_with_body_and_headers(proxy, fake_provider):
    for status in (429, 500, 529):
        resp = requests.post(through(proxy, fake_provider) + "/v1/messages", json={"model": "m"},
                             headers={"x-fake-status": str(status), "x-fake-retry-after": "7"})
        assert resp.status_code == status
        assert resp.headers["retry-after"] == "7"
        assert resp.json()["error"]["message"] == f"fake {status}"


def test_repeated_response_headers_stay_separate(proxy, fake_provider):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", f"/openai/{fake_provider.upstream}/v1/chat/completions", body=b"{}")
    resp = conn.getresponse()
    resp.read()
    assert resp.msg.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert resp.getheader("request-id") == "req_fake01"
    assert resp.getheader("Content-Type") == "application/json"
    conn.close()


def test_provider_cookies_never_reach_another_request(proxy, fake_provider):
    # The worker's upstream session is shared by all clients: it must keep no cookie jar.
    for _ in range(3):
        requests.post(through(proxy, fake_provider) + "/v1/messages", json={"model": "m"})
    assert all(r.header("cookie") is None for r in fake_provider.received)


def test_gzip_body_reaches_the_client_still_encoded(proxy, fake_provider):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("POST", f"/anthropic/{fake_provider.upstream}/v1/messages", body=b'{"model":"m"}',
                 headers={"x-fake-gzip": "1", "Accept-Encoding": "gzip"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.getheader("Content-Encoding") == "gzip"
    assert int(resp.getheader("Content-Length")) == len(raw)
    assert json.loads(gzip.decompress(raw))["content"][0]["text"] == "Hello from the fake provider."


def test_large_download_is_relayed_byte_exact(proxy, fake_provider):
    size = 30 * 1024 * 1024 + 7
    resp = requests.get(through(proxy, fake_provider) + f"/download?size={size}", stream=True)
    digest, total = hashlib.sha256(), 0
    for block in resp.iter_content(1 << 16):
        digest.update(block)
        total += len(block)
    block = bytes(range(256)) * 256
    expected = hashlib.sha256((block * (size // len(block) + 1))[:size]).hexdigest()
    assert (total, digest.hexdigest()) == (size, expected)


def read_events(resp):
    """(arrival time, event bytes) for each SSE event of a streamed response."""
    arrivals, buf = [], b""
    for data in iter(lambda: resp.raw.read1(65536), b""):
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            arrivals.append((time.monotonic(), event))
    return arrivals


def test_sse_events_arrive_as_they_are_sent(proxy, fake_provider):
    start = time.monotonic()
    with requests.post(through(proxy, fake_provider) + "/v1/messages", json={"model": "m", "stream": True},
                       headers={"x-fake-delay-ms": "500", "x-fake-events": "2"}, stream=True) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        arrivals = read_events(resp)
    times = [t - start for t, _ in arrivals]
    assert len(times) == 8
    # Relayed live: each event about 500 ms after the previous one, not all at the end.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.35, gaps
    assert times[0] < 1.0 and times[-1] > 3.5
    assert arrivals[-1][1] == b'event: message_stop\ndata: {"type": "message_stop"}'


def test_client_disconnect_closes_the_upstream_stream(proxy, fake_provider):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    body = b'{"model":"m","stream":true}'
    sock.sendall(b"POST /anthropic/%s/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"x-fake-delay-ms: 100\r\nx-fake-events: 600\r\nContent-Length: %d\r\n\r\n%s"
                 % (fake_provider.upstream.encode(), len(body), body))
    assert b"200" in sock.recv(4096)
    sock.close()
    # The proxy notices at its next write and closes the upstream; the fake sees its write fail.
    wait_until(lambda: fake_provider.disconnects, timeout=10, message="upstream closed")
    assert http_get(proxy.port, "/health")[0] == 200


def test_upstream_breaking_off_cuts_the_client_stream_too(proxy, fake_provider):
    with requests.post(through(proxy, fake_provider) + "/v1/messages", json={"model": "m", "stream": True},
                       headers={"x-fake-cut-after": "3"}, stream=True) as resp:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(resp.iter_content(None))
    assert http_get(proxy.port, "/health")[0] == 200


@pytest.mark.parametrize("raw_uri, status, provider_shape", [
    ("/nope", 400, "both"),
    ("/mistral/api.mistral.ai/v1/models", 400, "both"),
    ("/anthropic/bad_host!/v1/messages", 400, "anthropic"),
    ("/gemini/bad_host!/v1beta/models/m:generateContent", 400, "gemini"),
    ("/gemini/metadata.internal/v1beta/models/m:generateContent", 403, "gemini"),
    ("/gemini/127.0.0.1:1/v1beta/models/m:streamGenerateContent?alt=sse", 502, "gemini"),
    ("/bedrock/bad_host!/model/m/invoke", 400, "bedrock"),
    ("/bedrock/metadata.internal/model/m/invoke", 403, "bedrock"),
    ("/bedrock/127.0.0.1:1/model/m/invoke-with-response-stream", 502, "bedrock"),  # no AWS credentials here
    ("/anthropic/metadata.internal/v1/messages", 403, "anthropic"),
    ("/openai/10.0.0.1/v1/chat/completions", 403, "openai"),
    ("/anthropic/127.0.0.1:1/v1/messages", 502, "anthropic"),
    ("/openai/127.0.0.1:1/v1/chat/completions", 502, "openai"),
])
def test_proxy_errors_are_in_the_providers_shape(proxy, raw_uri, status, provider_shape):
    resp = requests.post(proxy.url + raw_uri, json={})
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/json"
    doc = resp.json()
    if provider_shape == "gemini":  # google.rpc.Status, as the genai SDKs read it
        assert set(doc["error"]) == {"code", "message", "status"} and doc["error"]["code"] == status
        assert doc["error"]["status"] == {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 502: "UNAVAILABLE"}[status]
    if provider_shape == "bedrock":  # the AWS SDKs read the type from the header, the message from the body
        assert list(doc) == ["message"] and doc["message"]
        assert resp.headers["x-amzn-errortype"] == {400: "ValidationException", 403: "AccessDeniedException",
                                                    502: "ServiceUnavailableException"}[status]
    if provider_shape in ("anthropic", "both"):
        assert doc["type"] == "error" and doc["error"]["type"] and doc["error"]["message"]
    if provider_shape in ("openai", "both"):
        assert doc["error"]["message"] and doc["error"]["type"] and doc["error"]["code"]
    message = doc["message"] if provider_shape == "bedrock" else doc["error"]["message"]
    if status == 400:
        assert "/{provider}/{upstream}/{path}" in message


def raw_answer(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client library would, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), dict(line.split(": ", 1) for line in lines), body


@pytest.mark.parametrize("request_bytes, status, provider_shape", [
    (b"post /anthropic/api.anthropic.com/v1/messages HTTP/1.1\r\nHost: x\r\n\r\n", 400, "both"),
    (b"GET /anthropic/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "both"),
    (b"GET /openai/x/v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "both"),
    (b"GET /openai/x/v1/models HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "both"),
    (b"POST /anthropic/x/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n", 400, "anthropic"),
    (b"POST /openai/x/v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     400, "openai"),
], ids=["lowercase-method", "request-line-over-limit", "header-over-limit", "header-without-colon",
        "invalid-content-length", "two-content-lengths"])
def test_requests_gunicorn_cannot_parse_get_json_never_html(proxy, request_bytes, status, provider_shape):
    """gunicorn's parser answers these before the app sees them; the worker makes that JSON in
    the provider's shape (every provider's while the request line is not parsed yet)."""
    got, headers, body = raw_answer(proxy.port, request_bytes)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body) and headers["Connection"] == "close"
    assert b"<html" not in body.lower()
    doc = json.loads(body)
    assert doc["error"]["message"] and doc["error"]["type"] == "invalid_request_error"
    assert (doc.get("type") == "error") == (provider_shape in ("anthropic", "both"))
    assert ("code" in doc["error"]) == (provider_shape in ("openai", "both"))
    warning = "Invalid request from ip=127.0.0.1: " + doc["error"]["message"].split(": ", 1)[1]
    wait_until(lambda: warning in proxy.output(), timeout=5, message="gunicorn's own warning")
    assert http_get(proxy.port, "/health")[0] == 200


def test_a_key_in_a_header_line_gunicorn_cannot_parse_is_masked_in_its_warning(proxy):
    """gunicorn's warning quotes the bad header line; a key in it must not reach the log, nor
    come back in the error."""
    key = "sk-ant-api03-" + "k" * 40 + "WXYZ"
    got, _, body = raw_answer(proxy.port, b"GET /anthropic/x/v1/models HTTP/1.1\r\nHost: x\r\n"
                                          b"Authorization Bearer " + key.encode() + b"\r\n\r\n")
    assert got == 400 and key.encode() not in body and b"sk-ant-...WXYZ" in body
    wait_until(lambda: "Invalid request from ip=127.0.0.1" in proxy.output() and "sk-ant-...WXYZ" in proxy.output(),
               timeout=5, message="gunicorn's warning, masked")
    assert key not in proxy.output()


def test_upstream_read_timeout_is_504(start_proxy, fake_provider):
    server = start_proxy({"LLM_PROXY_UPSTREAM_READ_TIMEOUT": "300ms", "LLM_PROXY_WORKERS": "1"})
    resp = requests.post(f"{server.url}/openai/{fake_provider.upstream}/v1/chat/completions",
                         json={}, headers={"x-fake-hang-ms": "1500"})
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_anthropic_sdk_sees_the_same_through_the_proxy(proxy, fake_provider):
    import anthropic

    def ask(base_url):
        client = anthropic.Anthropic(api_key="sk-ant-api03-sdk-test-key", base_url=base_url, max_retries=0)
        message = client.messages.create(model="claude-test", max_tokens=10,
                                         messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="claude-test", max_tokens=10,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            streamed = "".join(stream.text_stream)
        return message.model_dump(), streamed

    assert ask(through(proxy, fake_provider)) == ask(fake_provider.url)


def test_openai_sdk_sees_the_same_through_the_proxy(proxy, fake_provider):
    import openai

    def ask(base_url):
        client = openai.OpenAI(api_key="sk-proj-sdk-test-key", base_url=base_url, max_retries=0)
        chat = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True) if chunk.choices)
        response = client.responses.create(model="gpt-test", input="hi")
        events = [e.type for e in client.responses.create(model="gpt-test", input="hi", stream=True)]
        return chat.model_dump(), streamed, response.output_text, events

    assert ask(through(proxy, fake_provider, "openai") + "/v1") == ask(fake_provider.url + "/v1")


def test_sdk_errors_from_upstream_are_the_sdk_errors(proxy, fake_provider):
    import anthropic

    client = anthropic.Anthropic(api_key="sk-ant-x", base_url=through(proxy, fake_provider), max_retries=0,
                                 default_headers={"x-fake-status": "529"})
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 529
