"""The real Codex CLI with its built-in OpenAI provider: the Responses API over WebSocket.

``openai_base_url`` in ``config.toml`` plus ``codex login --with-api-key`` is how a user points
the built-in provider at the proxy; Codex then opens ``GET /v1/responses`` with ``Upgrade:
websocket`` and falls back to HTTP only after failed upgrades. Runs only in a loopback-only
network namespace (tests/realclients.py), the proxy and the fake provider inside it too.
"""

import json
import subprocess

import pytest
import realclients
from fakeloki import FakeLoki
from proxyproc import jsonl_lines, wait_until


@pytest.fixture(autouse=True)
def real_clients():
    realclients.require()  # skipped with the reason where the CLIs cannot run; under CI, failed


def configure_builtin_provider(client: realclients.Client) -> None:
    """The built-in provider at the proxy, signed in with an API key, as a user would do it."""
    (client.codex_home / "config.toml").write_text(
        f'openai_base_url = "{client.proxy_url}/openai/{client.upstream}/v1"\n')
    login = subprocess.run([str(realclients.BIN / "codex"), "login", "--with-api-key"],
                           input=realclients.OPENAI_KEY, env=client.env, capture_output=True, text=True,
                           timeout=realclients.CLIENT_TIMEOUT)
    assert login.returncode == 0, login.stderr


def test_codex_builtin_provider_completes_over_websocket_and_is_logged(start_proxy, fake_provider, tmp_path):
    loki = FakeLoki().start()
    try:
        server = start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": loki.url,
                              "LLM_PROXY_LOKI_BATCH_WAIT": "200ms"})
        client = realclients.Client(tmp_path / "codex", server.url, fake_provider.upstream)
        configure_builtin_provider(client)
        first = client.run("codex", "exec", "--skip-git-repo-check",
                           "Hello over a WebSocket.\nfake-reply: ws-answer-1").check()
        second = client.run("codex", "exec", "resume", "--last", "--skip-git-repo-check",
                            "Again.\nfake-reply: ws-answer-2").check()
        assert "ws-answer-1" in first.stdout and "ws-answer-2" in second.stdout

        # Both runs went over WebSocket through the proxy; Codex never fell back to HTTP.
        upgrades = [r for r in fake_provider.received if (r.header("Upgrade") or "").lower() == "websocket"]
        assert [r.path for r in upgrades] == ["/v1/responses", "/v1/responses"]
        assert upgrades[0].header("Authorization") == f"Bearer {realclients.OPENAI_KEY}"
        assert not [r for r in fake_provider.received if r.method == "POST" and r.path.endswith("/responses")]
        assert server.output().count('/v1/responses HTTP/1.1" 101') == 2
        sent = [json.loads(m) for ws in fake_provider.websockets for m in ws.messages]
        assert sent and all(m["type"] == "response.create" for m in sent)

        # The turns are in one session file: a request per message, a response per answer.
        lines = [line for path in server.log_dir.glob("*/*/*.jsonl") for line in jsonl_lines(path)]
        found = [json.loads(line) for line in lines]
        assert {e["_meta"]["session"] for e in found} == {found[0]["_meta"]["session"]}
        assert found[0]["type"] == "session_start"
        assert found[0]["client_session_id"] == client.codex_session_ids()[0]
        requests_ = [e for e in found if e["type"] == "request"]
        responses = [e for e in found if e["type"] == "response"]
        assert len(requests_) == len(responses) == len(sent)
        assert all(e["transport"] == "websocket" for e in requests_ + responses)
        answers = ["".join(json.loads(c["raw"]).get("delta", "") for c in e["chunks"]) for e in responses]
        assert "ws-answer-1" in answers and "ws-answer-2" in answers
        assert not [e for e in responses if e.get("incomplete")]
        assert realclients.OPENAI_KEY not in "".join(lines)

        # And the same lines in Loki.
        wait_until(lambda: sorted(loki.lines()) == sorted(lines) or None, timeout=10, message="lines in Loki")
    finally:
        loki.down()
