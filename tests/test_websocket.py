"""WebSocket pass-through end to end: the real gunicorn proxy between a raw WebSocket client and
the fake provider's WebSocket side (tests/fakews.py)."""

import base64
import json
import resource
import sys
import time
from pathlib import Path

import pytest
import requests
from fakeloki import FakeLoki
from fakews import WsClient, open_many
from proxyproc import jsonl_lines, wait_until

from llmproxy.record.transcript import render

KEY = "sk-proj-" + "k" * 40 + "wxyz"


def handshake(session: str = "ws-session-1", **fake: str) -> list[tuple[str, str]]:
    """Headers as the Codex CLI sends them, plus ``x-fake-*`` options for the fake provider."""
    return [("Authorization", f"Bearer {KEY}"), ("OpenAI-Beta", "responses_websockets=2026-02-06"),
            ("session-id", session), ("x-client-request-id", "req-1"),
            *((f"x-fake-{name.replace('_', '-')}", value) for name, value in fake.items())]


def entries(log_dir):
    return [json.loads(line) for path in sorted(log_dir.glob("*/*/*.jsonl"))
            for line in jsonl_lines(path)]


def session_entries(log_dir, client_session_id: str) -> list[dict]:
    """The entries of the sessions the client named ``client_session_id``."""
    everything = entries(log_dir)
    sessions = {e["_meta"]["session"] for e in everything if e.get("client_session_id") == client_session_id}
    return [e for e in everything if e["_meta"]["session"] in sessions]


def create(**fields) -> dict:
    return {"type": "response.create", "model": "gpt-fake", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}], **fields}


def open_ws(server, fake, path="/v1/responses", headers=None, **kwargs) -> WsClient:
    return WsClient(server.port, f"/openai/{fake.upstream}{path}", headers or handshake(), **kwargs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    from fakeprovider import FakeProvider
    from proxyproc import ProxyServer

    fake = FakeProvider().start()
    server = ProxyServer(tmp_path_factory.mktemp("wsproxy")).start()
    yield server, fake
    server.stop()
    fake.stop()


@pytest.mark.parametrize("path", ["/v1/responses", "/backend-api/codex/responses"])
def test_a_codex_turn_goes_through_and_is_logged_as_request_and_response(shared, path):
    server, fake = shared
    session = f"ws-turn-{path.count('/')}"
    client = open_ws(server, fake, path, handshake(session))
    assert client.status == 101
    # The upgrade reached the provider as the client made it.
    upgrade = next(r for r in reversed(fake.received) if r.header("session-id") == session)
    assert upgrade.method == "GET" and upgrade.path == path
    assert upgrade.header("Authorization") == f"Bearer {KEY}"
    assert upgrade.header("Upgrade").lower() == "websocket" and upgrade.header("Sec-WebSocket-Key")
    assert upgrade.header("Sec-WebSocket-Version") == "13"
    assert upgrade.header("OpenAI-Beta") == "responses_websockets=2026-02-06"
    assert ("x-fake-ws", "1") in [(n.decode(), v.decode()) for n, v in client.headers]

    # Codex: a prewarm without generation, then the turn continuing it; then TCP closes.
    client.send(create(generate=False, input=[]))
    prewarm = client.events_until()
    assert [e["type"] for e in prewarm] == ["response.created", "response.completed"]
    assert prewarm[-1]["response"]["output"] == []
    client.send(create(previous_response_id=prewarm[0]["response"]["id"]))
    turn = client.events_until()
    assert "".join(e.get("delta", "") for e in turn) == "Hello from the fake provider."
    client.abort()

    def logged():
        found = [e for e in session_entries(server.log_dir, session) if e["type"] in ("request", "response")]
        return found if len(found) == 4 else None

    found = wait_until(logged, timeout=5, message="4 WebSocket entries")
    requests_, responses = found[0::2], found[1::2]
    assert [e["type"] for e in found] == ["request", "response", "request", "response"]
    assert len({e["_meta"]["session"] for e in found}) == 1
    assert [e["seq"] for e in requests_] == [1, 2] and [e["seq"] for e in responses] == [1, 2]
    assert json.loads(requests_[1]["body"])["previous_response_id"] == prewarm[0]["response"]["id"]
    assert all(e["transport"] == "websocket" for e in found)
    assert requests_[0]["method"] == "GET" and requests_[0]["path"] == path
    assert requests_[0]["headers"]["Authorization"] == "Bearer sk-proj-...wxyz"
    assert KEY not in json.dumps(found)
    answer = responses[1]
    assert answer["status"] == 101 and "incomplete" not in answer
    assert [json.loads(c["raw"]) for c in answer["chunks"]] == turn
    assert all(c["delta_ms"] >= 0 for c in answer["chunks"])
    assert 0 <= answer["timing"]["ttfb_ms"] <= answer["timing"]["total_ms"]
    # The session query's transcript reads the WebSocket answer like an SSE one.
    transcript = render([json.dumps(e) for e in session_entries(server.log_dir, session)])
    assert "Hello from the fake provider." in transcript


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "permessage-deflate"])
def test_bytes_relayed_both_ways_are_the_bytes_sent(shared, deflate):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake("ws-bytes", echo="1"), deflate=deflate)
    assert client.status == 101
    assert (b"Sec-WebSocket-Extensions: permessage-deflate" in client.head) is deflate
    record = fake.websockets[-1]
    messages = ["x" * 10, "ü" * 70_000, bytes(range(256)) * 300, json.dumps(create())]
    for message in messages:
        client.send(message)
        assert client.receive() == message
    client.close()
    assert record.ended == "close frame"
    assert bytes(client.head) == record.head
    assert bytes(client.sent) == bytes(record.received)
    assert bytes(client.received) == bytes(record.sent)


def test_messages_are_logged_decompressed_and_binary_ones_as_base64(shared):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake("ws-deflate", echo="1"), deflate=True)
    client.send(create(note="a" * 5000))
    client.receive()
    client.send(bytes(range(256)))
    client.receive()
    client.abort()

    def logged():
        ours = [e for e in session_entries(server.log_dir, "ws-deflate") if e.get("transport") == "websocket"]
        return ours if len(ours) == 4 else None

    found = wait_until(logged, 5, message="deflate entries")
    (request_text, request_bin), (response_text, response_bin) = (
        sorted((e for e in found if e["type"] == kind), key=lambda e: e["seq"]) for kind in ("request", "response"))
    assert b"permessage-deflate" in client.head
    assert json.loads(request_text["body"])["note"] == "a" * 5000
    assert request_bin["body_encoding"] == "base64"
    assert base64.b64decode(request_bin["body"]) == bytes(range(256))
    # An echo ends no Responses answer: both messages belong to the oldest open one, and the
    # answers end (incomplete) when the connection does.
    assert response_text["incomplete"] and "closed" in response_text["error"]
    text_echo, binary_echo = response_text["chunks"]
    assert json.loads(text_echo["raw"])["note"] == "a" * 5000
    assert binary_echo["encoding"] == "base64" and base64.b64decode(binary_echo["raw"]) == bytes(range(256))
    assert response_bin["incomplete"] and response_bin["chunks"] == []


def test_server_messages_outside_an_answer_are_logged_with_the_nearest_request(shared):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake("ws-realtime", greet="1", after="1"))
    assert json.loads(client.receive())["type"] == "session.created"
    client.send(create())
    client.events_until()
    assert json.loads(client.receive())["type"] == "rate_limits.updated"
    client.abort()

    def logged():
        found = [e for e in session_entries(server.log_dir, "ws-realtime") if e["type"] == "response"]
        return found if len(found) == 2 else None

    answer, follow_up = wait_until(logged, timeout=5, message="answer and follow-up")
    types = [json.loads(c["raw"])["type"] for c in answer["chunks"]]
    assert types[0] == "session.created" and types[1] == "response.created" and types[-1] == "response.completed"
    assert "incomplete" not in answer
    assert [json.loads(c["raw"])["type"] for c in follow_up["chunks"]] == ["rate_limits.updated"]
    assert follow_up["seq"] == answer["seq"] and follow_up["_meta"]["request_id"] == answer["_meta"]["request_id"]
    assert "incomplete" not in follow_up and "error" not in follow_up


def test_a_client_that_leaves_mid_stream_closes_the_upstream_within_a_second(shared):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake("ws-leaves", delay_ms="200", events="50"))
    record = fake.websockets[-1]
    client.send(create())
    assert json.loads(client.receive())["type"] == "response.created"
    left = time.monotonic()
    client.abort()
    wait_until(lambda: record.ended, timeout=1.0, message="upstream closed")
    assert record.ended_at - left < 1.0

    def logged():
        return [e for e in session_entries(server.log_dir, "ws-leaves") if e["type"] == "response"
                and e.get("incomplete") and "client closed" in e["error"]]

    cut = wait_until(logged, timeout=5, message="incomplete response")[0]
    assert json.loads(cut["chunks"][0]["raw"])["type"] == "response.created"


def test_an_upstream_that_breaks_off_closes_the_client_and_logs_what_it_saw(shared):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake("ws-cut", cut_after="3"))
    client.send(create())
    for _ in range(3):
        client.receive()
    assert client.wait_closed(timeout=1.0)

    def logged():
        return [e for e in session_entries(server.log_dir, "ws-cut") if e["type"] == "response"
                and e.get("incomplete") and len(e["chunks"]) == 3 and "upstream closed" in e["error"]]

    wait_until(logged, timeout=5, message="the cut answer logged")


@pytest.mark.parametrize("status", [401, 426])
def test_a_refused_upgrade_is_relayed_as_a_plain_answer(shared, status):
    server, fake = shared
    client = open_ws(server, fake, headers=handshake(status=str(status)))
    assert client.status == status
    assert json.loads(client.body)["error"]["message"] == f"fake {status}"

    def logged():
        return [e for e in entries(server.log_dir) if e["type"] == "response" and e["status"] == status]

    assert json.loads(wait_until(logged, timeout=5, message="refusal logged")[0]["body"])["error"]


@pytest.mark.parametrize("path, status, code", [
    ("/nowhere/v1/responses", 400, "unknown_provider"),
    ("/openai/evil.example.com/v1/responses", 403, "upstream_not_allowed"),
    ("/openai/127.0.0.1:9/v1/responses", 502, "upstream_unreachable"),
])
def test_an_upgrade_the_proxy_cannot_carry_gets_a_json_error(shared, path, status, code):
    server, _ = shared
    client = WsClient(server.port, path)
    assert client.status == status
    assert json.loads(client.body)["error"]["code"] == code


@pytest.mark.parametrize("method, headers, status", [
    ("PROPFIND", {}, 405),
    ("POST", {"Connection": "Upgrade", "Upgrade": "websocket"}, 405),
    ("BREW", {}, 405),
])
def test_routing_errors_are_json_never_html(shared, method, headers, status):
    server, fake = shared
    resp = requests.request(method, f"{server.url}/openai/{fake.upstream}/v1/responses", headers=headers)
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "<html" not in resp.text.lower()
    assert "GET" in resp.headers["Allow"]


@pytest.mark.parametrize("threads", ["32", "2"])
def test_50_idle_websockets_do_not_stop_plain_requests(start_proxy, fake_provider, threads):
    server = start_proxy({"LLM_PROXY_THREADS": threads, "LLM_PROXY_WORKERS": "1"})
    clients = open_many(server.port, f"/openai/{fake_provider.upstream}/v1/responses", 50)
    assert len(clients) == 50 and all(c.status == 101 for c in clients)
    started = time.monotonic()
    for _ in range(10):
        resp = requests.post(f"{server.url}/openai/{fake_provider.upstream}/v1/responses",
                             json=create(), timeout=5)
        assert resp.status_code == 200
    assert time.monotonic() - started < 5

    def gauge():
        text = requests.get(f"{server.url}/metrics", timeout=5).text
        return next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("llm_proxy_active_websockets"))

    wait_until(lambda: gauge() == 50, timeout=5, message="50 on the active-WebSockets gauge")
    # And each WebSocket still works.
    for client in clients[:: 10]:
        client.send(create())
        assert client.events_until()[-1]["type"] == "response.completed"
    for client in clients:
        client.abort()
    wait_until(lambda: sum(1 for w in fake_provider.websockets if w.ended) == 50, timeout=5,
               message="all 50 closed upstream")


def test_a_websocket_turn_reaches_loki(start_proxy, fake_provider):
    loki = FakeLoki().start()
    try:
        server = start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
                              "LLM_PROXY_LOKI_BATCH_WAIT": "200ms"})
        client = open_ws(server, fake_provider, headers=handshake("ws-loki"))
        client.send(create())
        client.events_until()
        client.abort()

        def shipped():
            lines = [json.loads(line) for line in loki.lines()]
            return [l for l in lines if l.get("transport") == "websocket"] if len(lines) >= 3 else None

        found = wait_until(lambda: (s := shipped()) and len(s) == 2 and s, timeout=10, message="in Loki")
        assert sorted(e["type"] for e in found) == ["request", "response"]
    finally:
        loki.down()


def test_stopping_the_proxy_closes_open_websockets_and_logs_their_open_answers(start_proxy, fake_provider):
    server = start_proxy()
    client = open_ws(server, fake_provider, headers=handshake("ws-stop", delay_ms="300", events="100"))
    record = fake_provider.websockets[-1]
    client.send(create())
    assert json.loads(client.receive())["type"] == "response.created"
    assert server.stop() == 0
    assert client.wait_closed(timeout=1.0)
    wait_until(lambda: record.ended, timeout=1.0, message="upstream closed")
    cut = [e for e in session_entries(server.log_dir, "ws-stop") if e["type"] == "response"]
    assert len(cut) == 1 and cut[0]["incomplete"] and "shutting down" in cut[0]["error"]


@pytest.fixture
def app_client(tmp_path):
    from llmproxy.server.app import create_app
    from llmproxy.server.runtime import Runtime
    from llmproxy.settings import load_settings

    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)})
    return create_app(settings, Runtime(settings)).test_client()


def test_an_upgrade_the_server_cannot_hand_over_is_refused_before_anything_goes_upstream(app_client, fake_provider):
    before = len(fake_provider.received)
    resp = app_client.get(f"/openai/{fake_provider.upstream}/v1/responses",
                          headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status_code == 501 and resp.json["error"]["code"] == "websocket_unsupported"
    assert len(fake_provider.received) == before


def test_a_bug_in_the_proxy_is_a_json_500_too(app_client, monkeypatch):
    from werkzeug.exceptions import InternalServerError

    from llmproxy.proxy import views as app_module

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_module, "resolve", broken)
    resp = app_client.post("/anthropic/api.anthropic.com/v1/messages", json={})
    assert resp.status_code == 500
    assert resp.json == {"type": "error", "error": {"type": "api_error",
                                                    "message": "POST /anthropic/api.anthropic.com/v1/messages: "
                                                               + InternalServerError.description}}


def test_workers_may_hold_more_websockets_than_the_usual_1024_descriptors(start_proxy):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit is {hard}")
    llm_proxy = Path(sys.executable).with_name("llm-proxy")
    server = start_proxy(command=["sh", "-c", f'ulimit -Sn 1024 && exec "{llm_proxy}" serve'])
    limits = open(f"/proc/{server.worker_pids()[0]}/limits").read()
    soft = int(next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3])
    assert soft > 1024
