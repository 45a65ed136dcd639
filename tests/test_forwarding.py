"""Forwarding units (with ``responses`` where a socket adds nothing) and the logging seam."""

import pytest
import requests
import responses

from llmproxy.common.errors import UpstreamTimeout, UpstreamUnreachable
from llmproxy.proxy import forwarding
from llmproxy.server.app import create_app
from llmproxy.server.runtime import Runtime
from llmproxy.settings import load_settings


@pytest.mark.parametrize("exception, error, text", [
    (requests.exceptions.ConnectTimeout("timed out"), UpstreamTimeout, "connecting to api.example.com timed out"),
    (requests.exceptions.ReadTimeout("read timed out"), UpstreamTimeout, "sent no response within 2s"),
    (requests.exceptions.SSLError("certificate verify failed"), UpstreamUnreachable, "TLS error"),
    (requests.exceptions.ConnectionError("Name or service not known"), UpstreamUnreachable, "cannot reach"),
])
@responses.activate
def test_upstream_failures_become_the_proxys_errors(exception, error, text):
    responses.add(responses.POST, "https://api.example.com/v1/messages", body=exception)
    session = forwarding.new_session(4)
    with pytest.raises(error, match=text) as info:
        forwarding.open_upstream(session, "POST", "https://api.example.com/v1/messages", [], b"{}", 1, 2)
    assert info.value.status == (504 if error is UpstreamTimeout else 502)


def test_session_adds_no_headers_and_ignores_environment_proxies():
    session = forwarding.new_session(32)
    assert dict(session.headers) == {}
    assert session.trust_env is False
    assert session.get_adapter("https://x")._pool_maxsize == 32


class RecordingLogger:
    def __init__(self):
        self.calls = []

    def log_request(self, exchange):
        self.calls.append(("request", exchange))
        self.request_body = exchange.request_body  # the proxy lets go of it once logged

    def log_response(self, exchange):
        self.calls.append(("response", exchange))


@pytest.fixture
def recorded_app(tmp_path):
    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)})
    logger = RecordingLogger()
    app = create_app(settings, Runtime(settings, logger=logger))
    return app.test_client(), logger


def test_conversation_exchange_reaches_the_logger(recorded_app, fake_provider):
    client, logger = recorded_app
    resp = client.post(f"/anthropic/{fake_provider.upstream}/v1/messages?beta=true", json={"model": "m"},
                       headers={"x-api-key": "sk-ant-k"})
    assert resp.status_code == 200
    body = resp.data
    resp.close()
    assert [kind for kind, _ in logger.calls] == ["request", "response"]
    exchange = logger.calls[0][1]
    assert exchange.path == "/v1/messages?beta=true"
    assert logger.request_body == b'{"model": "m"}'
    assert ("X-Api-Key", "sk-ant-k") in exchange.request_headers
    assert exchange.status == 200 and bytes(exchange.body) == body
    assert exchange.ttfb_ms >= 0 and exchange.total_ms >= exchange.ttfb_ms
    assert not exchange.incomplete


def test_streamed_exchange_is_logged_event_by_event(recorded_app, fake_provider):
    client, logger = recorded_app
    resp = client.post(f"/openai/{fake_provider.upstream}/v1/chat/completions",
                       json={"model": "m", "stream": True}, headers={"x-fake-events": "3"})
    data = resp.data
    resp.close()
    exchange = logger.calls[-1][1]
    assert exchange.body is None
    assert [c.raw for c in exchange.chunks] == [e + b"\n\n" for e in data.split(b"\n\n") if e]
    assert exchange.chunks[-1].raw == b"data: [DONE]\n\n"
    assert all(c.delta_ms >= 0 for c in exchange.chunks)


def test_other_paths_are_proxied_but_not_logged(recorded_app, fake_provider):
    client, logger = recorded_app
    resp = client.get(f"/openai/{fake_provider.upstream}/v1/files")
    resp.close()
    assert resp.status_code == 404  # the fake has no /v1/files: passed through
    assert logger.calls == []


def test_failed_exchange_is_logged_with_the_error(recorded_app):
    client, logger = recorded_app
    resp = client.post("/anthropic/127.0.0.1:1/v1/messages", json={})
    assert resp.status_code == 502
    exchange = logger.calls[-1][1]
    assert exchange.status == 502 and "cannot reach 127.0.0.1:1" in exchange.error


def test_a_failing_logger_never_fails_the_call(tmp_path, fake_provider, caplog):
    class BrokenLogger:
        def log_request(self, exchange):
            raise KeyError("bug")

        def log_response(self, exchange):
            raise KeyError("bug")

    settings = load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)})
    client = create_app(settings, Runtime(settings, logger=BrokenLogger())).test_client()
    resp = client.post(f"/anthropic/{fake_provider.upstream}/v1/messages", json={"model": "m"})
    assert resp.status_code == 200 and resp.get_json()["type"] == "message"
    resp.close()
    assert "logging POST /v1/messages failed: KeyError('bug')" in caplog.text
