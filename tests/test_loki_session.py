"""scripts/loki-session against the real proxy and a real Grafana Loki: a whole session back,
byte for byte."""

import io
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from fakeprovider import WORDS
from proxyproc import free_port, wait_until
from realloki import loki_entries

from llmproxy.loki.client import LokiClient
from llmproxy.record import logtree

SCRIPT = str(Path(__file__).resolve().parent.parent / "scripts" / "loki-session")


def run(env, *args):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def session(start_proxy, fake_provider, real_loki):
    """A Claude Code session of four calls (one streamed, one with a 600 KB request body shipped
    to Loki in parts), and the environment that points the script at the same Loki."""
    machine = f"loki-session-{uuid.uuid4().hex[:8]}"
    server = start_proxy({"LLM_PROXY_LOKI_ENABLED": "true", "LLM_PROXY_LOKI_URL": real_loki.url,
                          "LLM_PROXY_LOKI_BATCH_WAIT": "100ms", "LLM_PROXY_MACHINE_ID": machine})
    client_id = f"cc-{uuid.uuid4()}"
    messages = []
    for i, (stream, text) in enumerate([(False, "first question"), (True, "stream me an answer"),
                                        (False, "big " + "ü" * 300_000), (False, "last one")]):
        messages.append({"role": "user", "content": text})
        resp = requests.post(f"{server.url}/anthropic/{fake_provider.upstream}/v1/messages",
                             json={"model": "claude-test", "stream": stream, "messages": messages},
                             headers={"X-Claude-Code-Session-Id": client_id, "x-api-key": "sk-ant-" + "k" * 40},
                             timeout=10)
        assert resp.status_code == 200
        messages.append({"role": "assistant", "content": "ok"})
        # A response line is written after its last byte is on the wire; the next call waits
        # for it, so file order and timestamp order agree (what this test compares).
        wait_until(lambda: (fs := next(logtree.sessions(server.log_dir), None)) and len(
            logtree.read_session(fs).decode().splitlines()) == 3 + 2 * i, 10, message="response line written")
    files = next(logtree.sessions(server.log_dir))
    # the last response is logged once its last byte is on the wire
    lines = wait_until(lambda: (ls := logtree.read_session(files).decode().splitlines()) and len(ls) == 9 and ls,
                       10, message="9 lines in the session file")
    stored = loki_entries(lines)
    assert stored > len(lines)  # the big request went in parts
    real_loki.wait_for_count(f'{{app="llm-proxy", machine="{machine}"}}', stored, timeout=20)
    env = {**server.env, "LLM_PROXY_ENV_FILE": "/nonexistent"}
    return {"id": files.session, "client": client_id, "lines": lines, "env": env, "stored": stored}


def test_a_session_comes_back_byte_for_byte_in_order(session):
    out = run(session["env"], session["id"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == session["lines"]


def test_paging_past_the_per_query_line_limit(session, monkeypatch):
    from llmproxy.loki.session import main

    pages = []
    query_range = LokiClient.query_range

    def recorded(self, query, start_ns, end_ns, limit=5000, direction="forward"):
        pages.append((start_ns, limit, direction))
        return query_range(self, query, start_ns, end_ns, limit, direction)

    monkeypatch.setattr(LokiClient, "query_range", recorded)
    out = io.StringIO()
    assert main([session["id"], "--page-size", "3"], out=out, environ=session["env"]) == 0
    assert out.getvalue().splitlines() == session["lines"]
    assert len(pages) >= session["stored"] / 3 and {p[1:] for p in pages} == {(3, "forward")}
    starts = [p[0] for p in pages]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_a_client_session_id_and_the_files_give_the_same(session):
    by_client = run(session["env"], session["client"])
    assert by_client.returncode == 0, by_client.stderr
    assert by_client.stdout.splitlines() == session["lines"]
    files = run(session["env"], session["client"], "--from-files")
    assert files.returncode == 0 and files.stdout.splitlines() == session["lines"]
    ours = run(session["env"], session["id"], "--from-files")
    assert ours.stdout.splitlines() == session["lines"]


def test_transcript_shows_turns_joined_deltas_and_tokens(session):
    out = run(session["env"], session["id"], "--transcript")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"# session {session['id']} · anthropic · ")
    assert f"client session {session['client']}" in text.splitlines()[0]
    assert "user: first question" in text and "user: last one" in text
    assert "user: ok" not in text  # earlier turns are not repeated
    assert f"assistant: {''.join(WORDS)}" in text  # streamed deltas joined
    assert "(tokens in 12, out 6; claude-test)" in text
    assert f"tokens in 12, out {len(WORDS)}" in text
    assert "more characters]" in text  # the 300,000-character turn is cut in the transcript only


def test_exit_codes(session, tmp_path):
    missing = run(session["env"], "20200101-000000-deadbeef")
    assert missing.returncode == 1 and "no entries of 20200101-000000-deadbeef" in missing.stderr
    down = run({**session["env"], "LLM_PROXY_LOKI_URL": f"http://127.0.0.1:{free_port()}"}, session["id"])
    assert down.returncode == 3 and "cannot query" in down.stderr
    bad = run({**session["env"], "LLM_PROXY_LOKI_URL": "ftp://x"}, session["id"])
    assert bad.returncode == 2 and "LLM_PROXY_LOKI_URL" in bad.stderr
    assert run(session["env"], "--help").returncode == 0


def test_split_parts_are_joined_in_any_order():
    from llmproxy.loki.batch import LokiEntry
    from llmproxy.loki.session import join_split
    from llmproxy.loki.split import split_entry

    line = json.dumps({"type": "request", "_meta": {"session": "s"}, "body": "é" * 5000}, ensure_ascii=False)
    parts = split_entry(LokiEntry(1000, line.encode(), ()), 2048)
    assert len(parts) > 2
    rows = [(p.ts_ns, p.line.decode()) for p in reversed(parts)] + [(999, "before"), (5000, "after")]
    assert join_split(sorted(rows)) == [(999, "before"), (1000, line), (5000, "after")]


@pytest.mark.parametrize("path, stream", [("/v1/responses", True), ("/v1/responses", False),
                                          ("/v1/messages", True), ("/v1/chat/completions", True)])
def test_transcript_of_a_tool_call_and_its_result(start_proxy, fake_provider, path, stream):
    server = start_proxy({"LLM_PROXY_WORKERS": "1"})
    provider = "anthropic" if path == "/v1/messages" else "openai"
    url = f"{server.url}/{provider}/{fake_provider.upstream}{path}"
    ask = 'list files\nfake-tool: shell {"cmd": "ls"}'
    if path == "/v1/responses":
        turns = [{"input": [{"role": "user", "content": [{"type": "input_text", "text": ask}]}]},
                 {"input": [{"role": "user", "content": [{"type": "input_text", "text": ask}]},
                            {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
                            {"type": "function_call_output", "call_id": "c1", "output": "README.rst"}]}]
    elif path == "/v1/messages":
        turns = [{"messages": [{"role": "user", "content": ask}]},
                 {"messages": [{"role": "user", "content": ask},
                               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shell",
                                                                  "input": {}}]},
                               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                             "content": "README.rst"}]}]}]
    else:
        turns = [{"messages": [{"role": "user", "content": "hello there"}]}]
    headers = {"Authorization": "Bearer sk-proj-" + "k" * 40, "x-api-key": "sk-ant-" + "k" * 40,
               "session_id": "tx-1", "X-Claude-Code-Session-Id": "tx-1"}
    for body in turns:
        resp = requests.post(url, json={"model": "gpt-fake", "stream": stream, **body}, headers=headers, timeout=10)
        assert resp.status_code == 200
    files = next(logtree.sessions(server.log_dir))
    wait_until(lambda: len(logtree.read_session(files).splitlines()) == 1 + 2 * len(turns), 10)
    out = run({**server.env, "LLM_PROXY_ENV_FILE": "/nonexistent"}, files.session, "--from-files", "--transcript")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if path == "/v1/chat/completions":
        assert "user: hello there" in text and f"assistant: {''.join(WORDS)}" in text
        return
    assert "user: list files" in text
    assert "assistant: Calling shell." in text
    assert 'assistant: [tool call shell] {"cmd": "ls"}' in text
    assert "[tool result " in text and "README.rst" in text
    assert "assistant: Tool output: README.rst" in text
    assert "tokens in " in text


def test_client_sessions_in_files_reads_only_first_lines(tmp_path):
    """A session's first line decides; the rest of a compressed file is never decompressed (here
    it could not be: after the first frame come bytes that are no zstd)."""
    import zstandard

    from llmproxy.loki.session import client_sessions_in_files

    day = tmp_path / "api.anthropic.com" / "2026-11-28"
    day.mkdir(parents=True)
    start = json.dumps({"type": "session_start", "client_session_id": "cc-1"}).encode()
    rest = b"".join(b'{"type":"request","n":%d,"pad":"%s"}\n' % (i, b"x" * 1000) for i in range(2000))
    (day / "20261128-101500-aaaaaaaa.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(start + b"\n" + rest) + b"not zstd at all" * 1000)
    (day / "20261128-111500-bbbbbbbb.jsonl").write_bytes(start.replace(b"cc-1", b"cc-2") + b"\n" + rest)
    (day / "20261128-121500-cccccccc.jsonl").write_bytes(start + b"\n")
    assert client_sessions_in_files(tmp_path, "cc-1") == ["20261128-101500-aaaaaaaa", "20261128-121500-cccccccc"]
    assert client_sessions_in_files(tmp_path, "cc-2") == ["20261128-111500-bbbbbbbb"]


@pytest.mark.parametrize("args, message", [
    (["--page-size", "0"], "--page-size must be at least 1, got 0"),
    (["--page-size", "-5"], "--page-size must be at least 1, got -5"),
    (["--since", "2026-11-29", "--until", "2026-11-28"], "--since must be before --until"),
])
def test_a_bad_option_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from llmproxy.loki.session import main

    env = {"LLM_PROXY_ENV_FILE": "/nonexistent", "LLM_PROXY_LOG_DIR": str(tmp_path),
           "LLM_PROXY_LOKI_URL": "http://127.0.0.1:9"}
    assert main(["20261128-101500-aaaaaaaa", *args], environ=env) == 2
    assert capsys.readouterr().err == f"loki-session: {message}\n"


def test_a_page_over_lokis_answer_limit_is_asked_again_with_fewer_lines():
    """Loki's querier sends its answer in one gRPC message of at most 4 MiB: a page of long lines
    fails (after Loki's own retries) and is asked again smaller. Here a Loki that will not say
    beforehand how big the lines are (no metric queries), so the first page is too large."""
    from fakeloki import FakeLoki

    from llmproxy.loki.client import AnswerTooLarge
    from llmproxy.settings import LokiSettings

    loki = FakeLoki().start()
    try:
        now = time.time_ns()
        lines = [json.dumps({"type": "request", "n": i, "body": "b" * 200_000}) for i in range(30)]
        for start in range(0, 30, 10):
            requests.post(f"{loki.url}/loki/api/v1/push", json={"streams": [{"stream": {"app": "llm-proxy"},
                          "values": [[str(now + i), lines[i]] for i in range(start, start + 10)]}]}).raise_for_status()
        client = LokiClient(LokiSettings(enabled=True, url=loki.url))
        with pytest.raises(AnswerTooLarge):
            client.query_range('{app="llm-proxy"}', now, now + 100)
        assert [line for _, line in client.query_all('{app="llm-proxy"}', now, now + 100)] == lines
        limits = [int(q["limit"]) for q in loki.queries]
        assert limits[:2] == [5000, 5000] and max(limits[2:]) * 262144 < 4 * 1024 * 1024
    finally:
        loki.down()


def test_a_transcript_shows_escape_sequences_and_bidi_overrides_as_text():
    """A prompt is hostile input: printed raw, ``ESC ]`` could retitle the terminal or hide a line."""
    from llmproxy.record.transcript import render

    hostile = "red \x1b[31mtext\x1b[0m \x1b]0;owned\x07 invoice_\u202eexe.txt"
    body = {"model": "claude-x", "messages": [{"role": "user", "content": hostile}]}
    lines = [json.dumps({"type": "session_start", "provider": "anthropic", "upstream": "api.anthropic.com",
                         "_meta": {"session": "s", "ts": "2026-12-05T10:00:00Z"}}),
             json.dumps({"type": "request", "seq": 1, "method": "POST", "path": "/v1/messages",
                         "body": json.dumps(body), "_meta": {"session": "s", "ts": "2026-12-05T10:00:01Z"}})]
    text = render(lines)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "user: red ␛[31mtext␛[0m ␛]0;owned␇ invoice_⟨U+202E⟩exe.txt" in text
