"""The real Claude Code, Codex and Gemini CLIs through the real proxy, against the fake provider
(Claude Code also in its Bedrock mode, the proxy signing its calls for the fake to check).

Each scenario of tests/realclients.py runs once per module, all at the same time (each CLI run
takes seconds, mostly the client's own start-up), each with its own fake provider, so the files
under ``log_dir/127.0.0.1:PORT/`` are that scenario's alone. Where the CLIs cannot run (no
loopback-only network namespace, npm missing) the tests skip with the reason; under CI they fail.
The curl lines of README.rst and docs/clients.rst, and ``llm-proxy env``, are run with curl and the
SDKs too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import realclients
from fakeprovider import FakeProvider
from proxyproc import ProxyServer, jsonl_lines, wait_until

from llmproxy import providers
from llmproxy.record.transcript import render


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """The real proxy, signing Bedrock calls with the fake's test credentials."""
    server = ProxyServer(tmp_path_factory.mktemp("proxy"), env=realclients.PROXY_ENV)
    server.start()
    yield server
    server.stop()


def new_fake() -> FakeProvider:
    """A fake provider that, as Bedrock, refuses a call without a good signature."""
    fake = FakeProvider().start()
    fake.aws_region, fake.aws_token = realclients.AWS_REGION, realclients.fakebedrock.SESSION_TOKEN
    return fake


@pytest.fixture(scope="module")
def scenarios(proxy, tmp_path_factory):
    """``name → (future of Session, fake provider)``, every scenario started at once."""
    realclients.require()
    everything = {**realclients.SCENARIOS, **realclients.CHATGPT, **realclients.BEDROCK_API_KEY}
    fakes = {name: new_fake() for name in everything}
    pool = ThreadPoolExecutor(len(fakes))
    running = {name: (pool.submit(scenario, realclients.Client(tmp_path_factory.mktemp(name), proxy.url,
                                                               fakes[name].upstream)), fakes[name])
               for name, scenario in everything.items()}
    yield running
    pool.shutdown(wait=True, cancel_futures=True)
    for fake in fakes.values():
        fake.stop()


def logged_sessions(proxy, fake, turns: int) -> dict[str, list[dict]]:
    """The session files of one fake provider's traffic, once every logged HTTP call and at least
    ``turns`` answers (a WebSocket's are logged per message) have their response."""
    calls = max(turns, sum(1 for r in fake.received if r.method == "POST" and providers.logged(r.path.split("?")[0])))

    def complete():
        files = {p.stem: [json.loads(line) for line in jsonl_lines(p)]
                 for p in proxy.log_dir.glob(f"{fake.upstream}/*/*.jsonl")}
        responses = sum(1 for entries in files.values() for e in entries if e["type"] == "response")
        return files if responses >= calls else None

    return wait_until(complete, timeout=10, message=f"{calls} responses logged")


def check_session(name, scenarios, proxy, named: bool = True):
    """The CLI's one session is one session file, without forks; ``named``: the CLI's own id is
    its ``client_session_id`` (Gemini CLI sends none: the proxy names it by its first turn)."""
    future, fake = scenarios[name]
    session = future.result(timeout=realclients.CLIENT_TIMEOUT * 5)
    for run, expected in zip(session.runs, session.expected, strict=True):
        assert expected in run.stdout, f"{run.args}: {expected!r} not printed:\n{run.stdout}\n{run.stderr}"
    assert len(session.client_ids) == 1, f"{name}: the CLI's own sessions: {session.client_ids}"
    client_id, = session.client_ids  # the CLI kept one session of its own
    assert fake.refused == []

    files = logged_sessions(proxy, fake, len(session.runs))
    forks = [e for entries in files.values() for e in entries if e["type"] == "fork"]
    assert forks == [], f"{name}: the proxy forked a client session that never diverged: {forks}"
    assert len(files) == 1, f"{name}: one client session, {len(files)} session files"
    entries, = files.values()
    assert entries[0]["type"] == "session_start"
    assert entries[0]["client_session_id"] == client_id if named else entries[0]["client_session_id"].startswith(
        "first-turn-")
    requests = [e for e in entries if e["type"] == "request"]
    assert [e["seq"] for e in requests] == list(range(1, len(requests) + 1))
    assert_no_key_in(proxy.log_dir)
    return entries


def assert_no_key_in(log_dir):
    for path in log_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [s for s in realclients.SECRETS if s.encode() in data], f"a raw key in {path}"


def test_claude_code_four_turns_are_one_session(scenarios, proxy):
    entries = check_session("claude-4-turns", scenarios, proxy)
    last = json.loads([e for e in entries if e["type"] == "request"][-1]["body"])
    assert all(f"claude-answer-{n}" in json.dumps(last["messages"]) for n in range(1, 5))


def test_claude_code_tool_loop(scenarios, proxy):
    entries = check_session("claude-tool-loop", scenarios, proxy)
    logged = "\n".join(e.get("body", "") for e in entries if e["type"] == "request")
    assert '"tool_result"' in logged and realclients.MARKER.upper() in logged  # Bash's output went back


def test_claude_code_resume(scenarios, proxy):
    check_session("claude-resume", scenarios, proxy)


def test_codex_three_turns_exec_then_resume_last(scenarios, proxy):
    entries = check_session("codex-3-turns", scenarios, proxy)
    requests = [e for e in entries if e["type"] == "request"]
    assert len(requests) == 3
    assert requests[0]["headers"]["Authorization"] == "Bearer sk-proj-...wxyz"


def test_codex_tool_loop(scenarios, proxy):
    entries = check_session("codex-tool-loop", scenarios, proxy)
    logged = "\n".join(e.get("body", "") for e in entries if e["type"] == "request")
    assert '"function_call_output"' in logged and realclients.MARKER in logged


def test_codex_signed_in_with_chatgpt_through_openai_base_url(scenarios, proxy):
    entries = check_session("codex-chatgpt", scenarios, proxy)
    requests = [e for e in entries if e["type"] == "request"]
    assert {e.get("transport") for e in requests} == {"websocket"}
    assert requests[0]["headers"]["Chatgpt-Account-Id"] == realclients.CHATGPT_ACCOUNT
    assert requests[0]["headers"]["Authorization"].startswith("Bearer eyJ...")
    fake = scenarios["codex-chatgpt"][1]
    assert any(r.path.startswith("/v1/models?client_version=") for r in fake.received)


def test_gemini_cli_three_turns_are_one_session(scenarios, proxy):
    entries = check_session("gemini-3-turns", scenarios, proxy, named=False)
    requests = [e for e in entries if e["type"] == "request"]
    # Per turn a routing call (JSON, a small model) and the answer (SSE): one thread, one session.
    assert [(e["stream"], e["path"].split("?")[0].rsplit(":", 1)[1]) for e in requests] == [
        (False, "generateContent"), (True, "streamGenerateContent")] * 3
    assert requests[0]["headers"]["X-Goog-Api-Key"] == "AIza...gemk"
    answers = [e for e in entries if e["type"] == "response" and e.get("chunks")]
    assert [e["stop_reason"] for e in answers] == ["STOP"] * 3 and all(e["usage"]["thoughtsTokenCount"] for e in answers)
    transcript = render([json.dumps(e) for e in entries])
    assert "assistant (thinking): Weighing the question." in transcript and "assistant: gemini-answer-3" in transcript


def test_gemini_cli_tool_loop(scenarios, proxy):
    entries = check_session("gemini-tool-loop", scenarios, proxy, named=False)
    calls = [e for e in entries if e["type"] == "response" and e.get("tool_calls")]
    assert [e["tool_calls"] for e in calls] == [["read_file"]]
    logged = "\n".join(e.get("body", "") for e in entries if e["type"] == "request")
    assert '"functionResponse"' in logged and realclients.MARKER in logged  # read_file's output went back


def test_claude_code_on_bedrock_signed_by_the_proxy(scenarios, proxy):
    entries = check_session("bedrock-claude-tool-loop", scenarios, proxy)
    fake = scenarios["bedrock-claude-tool-loop"][1]
    signed = [r for r in fake.received if r.header("authorization")]
    assert len(signed) == len(fake.received) and fake.refused == []  # every call, the control plane's too
    assert {r.path.split("?")[0] for r in fake.received} >= {"/inference-profiles",
                                                            "/model/us.anthropic.claude-opus-5-5/invoke-with-response-stream"}
    requests = [e for e in entries if e["type"] == "request"]
    assert "Authorization" not in requests[0]["headers"]  # what the client sent: the signature is the proxy's
    assert requests[0]["model"] == "us.anthropic.claude-opus-5-5" and requests[0]["stream"] is True
    answers = [e for e in entries if e["type"] == "response"]
    assert answers[0]["tool_calls"] == ["Read"] and answers[0]["usage"]["input_tokens"] == 12
    assert all(e["chunks"][0]["raw"].startswith('{"type":"message_start"') for e in answers)
    logged = "\n".join(e.get("body", "") for e in requests)
    assert '"tool_result"' in logged and realclients.MARKER in logged


def test_claude_code_on_bedrock_with_an_api_key_goes_through_unsigned(scenarios, proxy):
    """With ``AWS_BEARER_TOKEN_BEDROCK`` Claude Code sends its key on every call; the proxy has
    credentials of its own, and still signs none of these calls: the client holds the key."""
    entries = check_session("bedrock-claude-api-key", scenarios, proxy)
    fake = scenarios["bedrock-claude-api-key"][1]
    assert fake.received and fake.refused == []
    assert {r.header("authorization") for r in fake.received} == {f"Bearer {realclients.fakebedrock.API_KEY}"}
    assert all(r.header("x-amz-date") is None for r in fake.received)
    requests = [e for e in entries if e["type"] == "request"]
    assert requests and all(e["headers"]["Authorization"] == "Bearer ..." + realclients.fakebedrock.API_KEY[-4:]
                            for e in requests)


ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = {"README.rst": 1, "docs/clients.rst": 3}  # where the docs show curl lines: how many


def doc_commands(doc: str, prefix: str) -> list[str]:
    """The shell commands of ``doc`` that start with ``prefix``, continuation lines joined."""
    text = (ROOT / doc).read_text()
    return [m.replace("\\\n", " ") for m in re.findall(rf"^ +({prefix} (?:.*\\\n)*.*)$", text, re.MULTILINE)]


def test_documented_curl_lines_and_llm_proxy_env_for_the_sdks_work(proxy, fake_provider, tmp_path):
    client = realclients.Client(tmp_path, proxy.url, fake_provider.upstream)
    keys = {"ANTHROPIC_API_KEY": realclients.ANTHROPIC_KEY, "OPENAI_API_KEY": realclients.OPENAI_KEY,
            "GEMINI_API_KEY": realclients.GEMINI_KEY}
    curls = []
    for doc, count in DOCUMENTED.items():
        assert len(doc_commands(doc, "curl")) == count, doc
        curls += doc_commands(doc, "curl")
        # what the docs tell a user to eval is what the SDKs below run with: llm-proxy env's output
        assert [c.split("#")[0].strip() for c in doc_commands(doc, "eval")] == ['eval "$(llm-proxy env)"'], doc
    for command in curls:
        command = command.replace("http://127.0.0.1:8080", proxy.url)
        command = re.sub(r"/(api\.anthropic\.com|api\.openai\.com|generativelanguage\.googleapis\.com)/",
                         f"/{fake_provider.upstream}/", command)
        out = subprocess.run(["bash", "-c", command], env={**os.environ, **keys}, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert "Hello" in out and " from" in out, out
    sdks = ("import anthropic, openai\nfrom google import genai\n"
            "print(anthropic.Anthropic().messages.create(model='m', max_tokens=9, messages=["
            "{'role': 'user', 'content': 'fake-reply: via-anthropic'}]).content[0].text)\n"
            "print(openai.OpenAI().responses.create(model='m', input='fake-reply: via-openai').output_text)\n"
            "gemini = genai.Client()  # kept in a name: a dropped client closes its connections\n"
            "print(gemini.models.generate_content(model='m', contents='fake-reply: via-gemini').text)\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BASE_URL")}
    out = subprocess.run(["bash", "-c", f'eval "$1"; exec "{sys.executable}" -c "$2"', "sh", client.setup(), sdks],
                         env={**env, **keys}, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["via-anthropic", "via-openai", "via-gemini"]
    assert [r.path for r in fake_provider.received][-3:] == ["/v1/messages", "/v1/responses",
                                                             "/v1/models/m:generateContent"]
